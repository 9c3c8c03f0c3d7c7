//! `opsfleet actions` and `opsfleet iam-policy`: what the actions are, and what the fleet needs.

use opsfleet_protocol::config::Targets;
use opsfleet_protocol::setup::queue_specs;
use opsfleet_protocol::{Config, ResourceType};
use opsfleet_worker::ActionRegistry;
use serde_json::{json, Value};
use std::path::Path;
use std::process::ExitCode;

/// Prints every action this build ships: targets, limit, whether it changes AWS, IAM actions
/// and params.
pub fn actions() -> anyhow::Result<ExitCode> {
    for action in ActionRegistry::builtin().iter() {
        let targets: Vec<&str> = action.targets().iter().map(|t| t.as_str()).collect();
        println!("{}", action.name());
        println!("  targets:  {}", targets.join(", "));
        match action.limit() {
            Some(limit) => println!("  limit:    {} (default max {}, pool {})", limit.name, limit.max, limit.pool),
            None => println!("  limit:    none"),
        }
        println!("  changes AWS: {}", if action.mutates() { "yes (plan mode records instead)" } else { "no" });
        let iam = action.iam_actions();
        println!("  IAM:      {}", if iam.is_empty() { "none".to_owned() } else { iam.join(", ") });
        for param in action.params() {
            println!("  param {}: {}", param.name, param.line());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The SQS actions the router and workers use.
const SQS_RUN: &[&str] = &[
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:ReceiveMessage",
    "sqs:SendMessage",
];

/// The DynamoDB actions the workers use.
const DYNAMODB_RUN: &[&str] = &[
    "dynamodb:DeleteItem",
    "dynamodb:DescribeTable",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
];

/// Prints the least-privilege IAM policy of a config: its own queues and table, what the
/// actions its tasks use need (scoped to resource ARNs and tag conditions where EC2 allows),
/// the describes its discoveries need, and the member role when one is set. `setup` adds what
/// `opsfleet setup` needs. With `member_of` (the fleet role's ARN), prints instead the policy of
/// the role in member accounts and its trust policy.
pub fn iam_policy(path: &Path, setup: bool, member_of: Option<String>, router: bool) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    let out = match member_of {
        Some(fleet_role) => json!({
            "RoleName": config.fleet.member_role.as_deref().and_then(|r| r.rsplit('/').next()).unwrap_or("OpsFleetMember"),
            "Policy": member_policy(&config),
            "TrustPolicy": trust_policy(&config, &fleet_role),
        }),
        None if router => router_policy(&config),
        None => policy(&config, setup),
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// The read a task's discovery makes: EC2's describe of its type, or the Tagging API's.
fn discovery_statement(task: &opsfleet_protocol::config::Task) -> Option<Value> {
    let Targets::Discover(query) = &task.targets else { return None };
    let describe = match query.kind {
        ResourceType::Instance => "ec2:DescribeInstances",
        ResourceType::Volume => "ec2:DescribeVolumes",
        ResourceType::Snapshot => "ec2:DescribeSnapshots",
        ResourceType::Image => "ec2:DescribeImages",
        ResourceType::AutoScalingGroup => "autoscaling:DescribeAutoScalingGroups",
        // The other types are found with the Tagging API.
        _ => "tag:GetResources",
    };
    Some(json!({ "Effect": "Allow", "Action": [describe], "Resource": ["*"] }))
}

/// What the tasks' discoveries need, merged.
fn discovery_statements(config: &Config) -> Vec<Value> {
    let mut statements: Vec<Value> = Vec::new();
    for statement in config.tasks.iter().filter_map(discovery_statement) {
        if !statements.contains(&statement) {
            statements.push(statement);
        }
    }
    merged(statements)
}

/// What the tasks' actions and discoveries need, each statement once.
fn action_statements(config: &Config) -> Vec<Value> {
    let registry = ActionRegistry::builtin();
    let mut statements: Vec<Value> = Vec::new();
    let mut add = |statement: Value| {
        if !statements.contains(&statement) {
            statements.push(statement);
        }
    };
    for task in &config.tasks {
        if let Some(action) = registry.get(&task.action) {
            // An action that calls nothing (noop) needs no statement: IAM refuses empty ones.
            for statement in action.iam_statements(&task.params).unwrap_or_default() {
                if statement["Action"].as_array().is_none_or(|a| !a.is_empty()) {
                    add(statement);
                }
            }
        }
        if let Some(statement) = discovery_statement(task) {
            add(statement);
        }
    }
    merged(statements)
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            s["Sid"] = json!(format!("Actions{i}"));
            s
        })
        .collect()
}

/// Statements with the same effect, resources and condition as one, their actions together
/// (sorted, each once): the policy stays small as tasks are added.
fn merged(statements: Vec<Value>) -> Vec<Value> {
    let as_list = |v: &Value| match v {
        Value::Array(items) => items.clone(),
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    };
    let mut out: Vec<Value> = Vec::new();
    for statement in statements {
        let key = |s: &Value| (s["Effect"].clone(), as_list(&s["Resource"]), s["Condition"].clone());
        match out.iter_mut().find(|o| key(o) == key(&statement)) {
            Some(same) => {
                let mut actions: Vec<String> = as_list(&same["Action"])
                    .into_iter()
                    .chain(as_list(&statement["Action"]))
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect();
                actions.sort();
                actions.dedup();
                same["Action"] = json!(actions);
            }
            None => out.push(statement),
        }
    }
    out
}

/// IAM's limit on a managed policy's size, in characters without whitespace.
pub const MAX_MANAGED_POLICY_CHARS: usize = 6_144;

/// IAM's default limit on the managed policies attached to one role.
pub const MAX_MANAGED_POLICIES_PER_ROLE: usize = 10;

/// Refuses a config whose role policies IAM would refuse even split over several managed
/// policies, naming the sizes.
pub fn check_policy_sizes(config: &Config) -> anyhow::Result<()> {
    for (what, policy) in [
        ("the fleet's role policy", policy(config, false)),
        ("the routers' role policy", router_policy(config)),
        ("the member role policy", member_policy(config)),
    ] {
        let parts = split_policy(&policy).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        if parts.len() > MAX_MANAGED_POLICIES_PER_ROLE {
            anyhow::bail!(
                "{what} would be {} characters, {} managed policies of at most {MAX_MANAGED_POLICY_CHARS}: over the \
                 {MAX_MANAGED_POLICIES_PER_ROLE} IAM attaches to a role; give tasks of one action the same params \
                 where they can share statements",
                policy_chars(&policy),
                parts.len()
            );
        }
    }
    Ok(())
}

/// A policy as managed policies IAM accepts: its statements packed in order, each policy
/// within [`MAX_MANAGED_POLICY_CHARS`]; a statement too large alone is cut along its
/// resources. One policy when it fits.
pub fn split_policy(policy: &Value) -> Result<Vec<Value>, String> {
    let document = |statements: Vec<Value>| json!({ "Version": "2012-10-17", "Statement": statements });
    let fits = |statements: &[Value]| policy_chars(&document(statements.to_vec())) <= MAX_MANAGED_POLICY_CHARS;
    let mut pieces = Vec::new();
    for statement in policy["Statement"].as_array().cloned().unwrap_or_default() {
        if fits(std::slice::from_ref(&statement)) {
            pieces.push(statement);
            continue;
        }
        let resources = statement["Resource"].as_array().cloned().unwrap_or_default();
        let mut chunk: Vec<Value> = Vec::new();
        for resource in resources {
            let mut with = statement.clone();
            chunk.push(resource);
            with["Resource"] = json!(chunk);
            if !fits(std::slice::from_ref(&with)) {
                let last = chunk.pop().unwrap_or_default();
                if chunk.is_empty() {
                    return Err(format!(
                        "a statement with resource {last} is over {MAX_MANAGED_POLICY_CHARS} characters alone"
                    ));
                }
                let mut part = statement.clone();
                part["Resource"] = json!(std::mem::take(&mut chunk));
                pieces.push(part);
                chunk.push(last);
            }
        }
        if chunk.is_empty() {
            return Err(format!(
                "a statement of {} characters cannot be cut along its resources",
                policy_chars(&statement)
            ));
        }
        let mut part = statement.clone();
        part["Resource"] = json!(chunk);
        pieces.push(part);
    }
    let mut policies: Vec<Vec<Value>> = vec![Vec::new()];
    for piece in pieces {
        let current = policies.last_mut().expect("one policy at least");
        current.push(piece);
        if !fits(current) {
            let piece = current.pop().expect("just pushed");
            policies.push(vec![piece]);
        }
    }
    Ok(policies.into_iter().filter(|p| !p.is_empty()).map(document).collect())
}

/// The size IAM counts of a policy: its JSON without whitespace.
pub fn policy_chars(policy: &Value) -> usize {
    policy.to_string().chars().filter(|c| !c.is_whitespace()).count()
}

/// The policy of the fleet's own role.
pub fn policy(config: &Config, setup: bool) -> Value {
    let fleet = &config.fleet.name;
    let mut statements = fleet_statements(config, setup);
    // On ECS, a worker keeps its task out of scale-ins while it runs jobs (the rendered
    // service stack names its cluster after the fleet).
    statements.push(json!({ "Sid": "ScaleInProtection", "Effect": "Allow", "Action": ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"],
        "Resource": format!("arn:aws:ecs:*:*:task/{fleet}/*") }));
    statements.extend(action_statements(config));
    statements.extend(member_accounts(config));
    in_partition(json!({ "Version": "2012-10-17", "Statement": statements }), &config.fleet.partition)
}

/// The policy of the routers' own role when they run apart from the workers: the fleet's
/// queues and table, the describes its discoveries make, and the member roles; none of the
/// actions' writes.
pub fn router_policy(config: &Config) -> Value {
    let mut statements = fleet_statements(config, false);
    statements.extend(discovery_statements(config));
    statements.extend(member_accounts(config));
    in_partition(json!({ "Version": "2012-10-17", "Statement": statements }), &config.fleet.partition)
}

/// The fleet's queues (each by name: a prefix would also match another fleet's, `ops-*`
/// matching `ops-prod-events`), its table and its indexes, and its own identity.
fn fleet_statements(config: &Config, setup: bool) -> Vec<Value> {
    let fleet = &config.fleet.name;
    let mut sqs: Vec<&str> = SQS_RUN.to_vec();
    let mut dynamodb: Vec<&str> = DYNAMODB_RUN.to_vec();
    if setup {
        sqs.extend(["sqs:CreateQueue", "sqs:SetQueueAttributes"]);
        // What `setup` calls beyond a running fleet's needs: creating the queues and the table,
        // turning on its TTL, and adding the audit indexes to a table made by an older version.
        dynamodb.extend([
            "dynamodb:CreateTable",
            "dynamodb:DescribeTimeToLive",
            "dynamodb:UpdateTable",
            "dynamodb:UpdateTimeToLive",
        ]);
    }
    vec![
        json!({ "Sid": "FleetQueues", "Effect": "Allow", "Action": sqs, "Resource": queue_specs(config)
            .iter()
            .map(|q| format!("arn:aws:sqs:*:*:{}", q.name))
            .collect::<Vec<_>>() }),
        json!({ "Sid": "FleetTable", "Effect": "Allow", "Action": dynamodb,
            "Resource": [format!("arn:aws:dynamodb:*:*:table/{fleet}"), format!("arn:aws:dynamodb:*:*:table/{fleet}/index/*")] }),
        json!({ "Sid": "FleetIdentity", "Effect": "Allow", "Action": ["sts:GetCallerIdentity"], "Resource": "*" }),
    ]
}

/// The member role in the allowed accounts only, when the fleet names them.
fn member_accounts(config: &Config) -> Option<Value> {
    let role = config.fleet.member_role.as_ref()?;
    Some(json!({
        "Sid": "MemberAccounts",
        "Effect": "Allow",
        "Action": "sts:AssumeRole",
        "Resource": if config.fleet.allowed_accounts.is_empty() {
            json!(role.replace("{account}", "*"))
        } else {
            json!(config.fleet.allowed_accounts.iter().map(|a| role.replace("{account}", a)).collect::<Vec<_>>())
        },
    }))
}

/// The policy of the role in member accounts: what the actions and discoveries need there.
pub fn member_policy(config: &Config) -> Value {
    in_partition(json!({ "Version": "2012-10-17", "Statement": action_statements(config) }), &config.fleet.partition)
}

/// A policy with every ARN in `partition`: the catalog writes them in `aws`.
fn in_partition(policy: Value, partition: &str) -> Value {
    if partition == "aws" {
        return policy;
    }
    match policy {
        Value::String(s) => match s.strip_prefix("arn:aws:") {
            Some(rest) => Value::String(format!("arn:{partition}:{rest}")),
            None => Value::String(s),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(|v| in_partition(v, partition)).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, in_partition(v, partition))).collect()),
        other => other,
    }
}

/// The trust policy of the role in member accounts: the fleet's role may assume it, with the
/// fleet's external id.
pub fn trust_policy(config: &Config, fleet_role: &str) -> Value {
    let mut statement = json!({ "Effect": "Allow", "Principal": { "AWS": fleet_role }, "Action": "sts:AssumeRole" });
    if let Some(external_id) = &config.fleet.external_id {
        statement["Condition"] = json!({ "StringEquals": { "sts:ExternalId": external_id } });
    }
    json!({ "Version": "2012-10-17", "Statement": [statement] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_of_many_tasks_merge_and_stay_within_iams_size() {
        let mut text = String::from("[fleet]\nname = \"ops\"\n");
        for n in 0..25 {
            text.push_str(&format!(
                "\n[[tasks]]\nname = \"t{n}\"\nschedule = \"rate(1 day)\"\ntargets = {{ type = \"ec2:volume\", tags = {{ Team = \"t{n}\" }} }}\naction = \"ebs-snapshot\"\nparams = {{ retain = {n} }}\n"
            ));
        }
        let config = Config::parse(&text, Some(&ActionRegistry::builtin())).expect("config");
        let p = policy(&config, false);
        let statements = p["Statement"].as_array().expect("statements");
        let describes = statements
            .iter()
            .filter(|s| s["Action"].as_array().is_some_and(|a| a.contains(&json!("ec2:DescribeVolumes"))))
            .count();
        assert_eq!(describes, 1, "the describes of 25 tasks are one statement: {p}");
        assert!(policy_chars(&p) < MAX_MANAGED_POLICY_CHARS, "{} characters", policy_chars(&p));
    }

    /// A fleet of `tasks` notify tasks, each to its own topic: a policy that grows with them.
    fn notifying(tasks: usize) -> Config {
        let mut text = String::from("[fleet]\nname = \"ops\"\n");
        for n in 0..tasks {
            text.push_str(&format!(
                "\n[[tasks]]\nname = \"t{n}\"\npattern = {{ source = [\"x\"] }}\ntargets = \"event\"\naction = \"notify\"\nparams = {{ topic_arn = \"arn:aws:sns:us-east-1:123456789012:team-{n:03}-alarms\" }}\n"
            ));
        }
        Config::parse(&text, Some(&ActionRegistry::builtin())).expect("config")
    }

    #[test]
    fn a_policy_over_iams_size_is_split_into_managed_policies_that_each_fit_and_together_grant_the_same() {
        let config = notifying(150);
        let whole = policy(&config, false);
        assert!(policy_chars(&whole) > MAX_MANAGED_POLICY_CHARS, "{} characters", policy_chars(&whole));
        let parts = split_policy(&whole).expect("split");
        assert!(parts.len() >= 2, "{} parts", parts.len());
        assert!(parts.iter().all(|p| policy_chars(p) <= MAX_MANAGED_POLICY_CHARS));
        // Together they grant each (action, resource) the whole grants, and nothing else.
        let grants = |policies: &[Value]| {
            let mut all = std::collections::BTreeSet::new();
            for statement in policies.iter().flat_map(|p| p["Statement"].as_array().cloned().unwrap_or_default()) {
                let resources = match &statement["Resource"] {
                    Value::Array(r) => r.clone(),
                    one => vec![one.clone()],
                };
                for resource in resources {
                    all.insert((
                        statement["Action"].to_string(),
                        statement["Condition"].to_string(),
                        resource.to_string(),
                    ));
                }
            }
            all
        };
        assert_eq!(grants(&parts), grants(std::slice::from_ref(&whole)));
        assert!(check_policy_sizes(&config).is_ok());
        // So many that ten policies cannot hold them: refused with the figures.
        let config = notifying(1000);
        let err = check_policy_sizes(&config).expect_err("too large").to_string();
        assert!(
            err.starts_with("the fleet's role policy would be ") && err.contains("over the 10 IAM attaches to a role"),
            "{err}"
        );
    }

    #[test]
    fn every_arn_of_the_policies_is_in_the_fleets_partition() {
        let text = "[fleet]\nname = \"ops\"\npartition = \"aws-us-gov\"\nmember_role = \"arn:aws-us-gov:iam::{account}:role/M\"\nexternal_id = \"e\"\n\n[[tasks]]\nname = \"t\"\npattern = { source = [\"x\"] }\ntargets = { type = \"ec2:volume\", tags = { B = \"y\" } }\naction = \"ebs-snapshot\"\nparams = { retain = 2 }\n";
        let config = Config::parse(text, Some(&ActionRegistry::builtin())).expect("config");
        for p in [policy(&config, false), member_policy(&config)] {
            let text = p.to_string();
            assert!(!text.contains("\"arn:aws:"), "{text}");
            assert!(text.contains("\"arn:aws-us-gov:ec2:"), "{text}");
        }
        let bad = Config::parse(&text.replace("aws-us-gov\"\nmember", "aws-moon\"\nmember"), None).expect_err("bad");
        assert!(bad.to_string().contains("fleet.partition: `aws-moon` is not an AWS partition"), "{bad}");
    }

    #[test]
    fn policy_names_the_fleets_own_queues_table_and_member_role() {
        let text = "[fleet]\nname = \"ops\"\nmember_role = \"arn:aws:iam::{account}:role/Member\"\nexternal_id = \"e\"\n\n[[tasks]]\nname = \"t\"\npattern = { source = [\"x\"] }\ntargets = \"event\"\naction = \"noop\"\n";
        let config = Config::parse(text, Some(&ActionRegistry::builtin())).expect("config");
        let p = policy(&config, false);
        let statements = p["Statement"].as_array().expect("statements");
        let queues = statements[0]["Resource"].as_array().expect("the queues");
        assert!(queues.contains(&json!("arn:aws:sqs:*:*:ops-events")), "{queues:?}");
        assert!(
            queues.iter().all(|q| !q.as_str().unwrap_or_default().ends_with('*')),
            "no prefix matches another fleet's queues"
        );
        assert_eq!(statements[1]["Resource"][0], "arn:aws:dynamodb:*:*:table/ops");
        assert!(!statements[0]["Action"].as_array().expect("actions").contains(&json!("sqs:CreateQueue")));
        assert_eq!(statements[3]["Resource"], "arn:aws:ecs:*:*:task/ops/*");
        assert_eq!(statements.len(), 5, "noop calls nothing and needs no statement: {statements:?}");
        assert!(statements.iter().all(|s| s["Action"] != json!([])), "IAM refuses empty statements");
        assert_eq!(statements[4]["Resource"], "arn:aws:iam::*:role/Member");
        let allowed = Config::parse(
            &text.replace(
                "external_id = \"e\"\n",
                "external_id = \"e\"\nallowed_accounts = [\"111122223333\", \"444455556666\"]\n",
            ),
            Some(&ActionRegistry::builtin()),
        )
        .expect("config");
        let statements = policy(&allowed, false)["Statement"].as_array().cloned().unwrap_or_default();
        let member = statements.iter().find(|s| s["Sid"] == "MemberAccounts").expect("member statement");
        assert_eq!(
            member["Resource"],
            json!(["arn:aws:iam::111122223333:role/Member", "arn:aws:iam::444455556666:role/Member"]),
            "only the allowed accounts' member roles"
        );
        let with_setup = policy(&config, true);
        assert!(with_setup["Statement"][0]["Action"].as_array().expect("actions").contains(&json!("sqs:CreateQueue")));
        let table = with_setup["Statement"][1]["Action"].as_array().expect("actions");
        for setup_calls in
            ["dynamodb:CreateTable", "dynamodb:DescribeTimeToLive", "dynamodb:UpdateTable", "dynamodb:UpdateTimeToLive"]
        {
            assert!(table.contains(&json!(setup_calls)), "{setup_calls} missing from the setup policy: {table:?}");
        }
    }

    #[test]
    fn actions_are_scoped_to_what_opsfleet_made_and_member_roles_trust_the_fleet_with_its_external_id() {
        let text = r#"
[fleet]
name = "ops"
external_id = "secret-id"
member_role = "arn:aws:iam::{account}:role/OpsFleetMember"

[[tasks]]
name = "backup"
pattern = { source = ["x"] }
targets = { type = "ec2:volume", tags = { Backup = "yes" }, regions = ["us-east-1"] }
action = "ebs-snapshot"
params = { retain = 3 }

[[tasks]]
name = "page"
pattern = { source = ["x"] }
targets = "event"
action = "notify"
params = { topic_arn = "arn:aws:sns:us-east-1:123456789012:ops" }
"#;
        let config = Config::parse(text, Some(&ActionRegistry::builtin())).expect("config");
        let p = policy(&config, false).to_string();
        assert!(
            p.contains(
                r#""Action":["ec2:DeleteSnapshot"],"Condition":{"StringLike":{"aws:ResourceTag/opsfleet:job":"*"}}"#
            ),
            "{p}"
        );
        assert!(p.contains(r#""ec2:CreateAction":["CreateSnapshot","CreateSnapshots"]"#), "{p}");
        assert!(
            p.contains(
                r#""Action":["sns:Publish"],"Effect":"Allow","Resource":"arn:aws:sns:us-east-1:123456789012:ops""#
            ),
            "{p}"
        );
        let member = member_policy(&config).to_string();
        assert!(member.contains("ec2:CreateSnapshot") && !member.contains("sqs:"), "{member}");
        let trust = trust_policy(&config, "arn:aws:iam::111111111111:role/ops-fleet");
        assert_eq!(trust["Statement"][0]["Principal"]["AWS"], "arn:aws:iam::111111111111:role/ops-fleet");
        assert_eq!(trust["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"], "secret-id");
    }
}
