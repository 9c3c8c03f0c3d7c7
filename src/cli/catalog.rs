//! `opsfleet actions` and `opsfleet iam-policy`: what the actions are, and what the fleet needs.

use opsfleet_protocol::Config;
use opsfleet_worker::ActionRegistry;
use serde_json::{json, Value};
use std::collections::BTreeSet;
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
        for (name, help) in action.params_help() {
            println!("  param {name}: {help}");
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

/// Prints the least-privilege IAM policy of a config: its own queues and table, the IAM
/// actions of the actions its tasks use, and the member role when one is set. `setup` adds
/// what `opsfleet setup` needs to create the queues and table.
pub fn iam_policy(path: &Path, setup: bool) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    println!("{}", serde_json::to_string_pretty(&policy(&config, setup))?);
    Ok(ExitCode::SUCCESS)
}

fn policy(config: &Config, setup: bool) -> Value {
    let fleet = &config.fleet.name;
    let mut sqs: Vec<&str> = SQS_RUN.to_vec();
    let mut dynamodb: Vec<&str> = DYNAMODB_RUN.to_vec();
    if setup {
        sqs.extend(["sqs:CreateQueue", "sqs:SetQueueAttributes"]);
        dynamodb.extend(["dynamodb:CreateTable", "dynamodb:UpdateTimeToLive"]);
    }
    let mut statements = vec![
        json!({ "Sid": "FleetQueues", "Effect": "Allow", "Action": sqs, "Resource": format!("arn:aws:sqs:*:*:{fleet}-*") }),
        json!({ "Sid": "FleetTable", "Effect": "Allow", "Action": dynamodb, "Resource": format!("arn:aws:dynamodb:*:*:table/{fleet}") }),
    ];
    let registry = ActionRegistry::builtin();
    let used: BTreeSet<&str> = config
        .tasks
        .iter()
        .filter_map(|t| registry.get(&t.action))
        .flat_map(|a| a.iam_actions().iter().copied())
        .collect();
    if !used.is_empty() {
        statements.push(json!({ "Sid": "Actions", "Effect": "Allow", "Action": used, "Resource": "*" }));
    }
    if let Some(role) = &config.fleet.member_role {
        statements.push(json!({
            "Sid": "MemberAccounts",
            "Effect": "Allow",
            "Action": "sts:AssumeRole",
            "Resource": role.replace("{account}", "*"),
        }));
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_the_fleets_own_queues_table_and_member_role() {
        let text = "[fleet]\nname = \"ops\"\nmember_role = \"arn:aws:iam::{account}:role/Member\"\n\n[[tasks]]\nname = \"t\"\npattern = { source = [\"x\"] }\ntargets = \"event\"\naction = \"noop\"\n";
        let config = Config::parse(text, Some(&ActionRegistry::builtin())).expect("config");
        let p = policy(&config, false);
        let statements = p["Statement"].as_array().expect("statements");
        assert_eq!(statements[0]["Resource"], "arn:aws:sqs:*:*:ops-*");
        assert_eq!(statements[1]["Resource"], "arn:aws:dynamodb:*:*:table/ops");
        assert!(!statements[0]["Action"].as_array().expect("actions").contains(&json!("sqs:CreateQueue")));
        assert_eq!(statements.len(), 3, "noop needs no IAM action: {statements:?}");
        assert_eq!(statements[2]["Resource"], "arn:aws:iam::*:role/Member");
        let with_setup = policy(&config, true);
        assert!(with_setup["Statement"][0]["Action"].as_array().expect("actions").contains(&json!("sqs:CreateQueue")));
        assert!(with_setup["Statement"][1]["Action"]
            .as_array()
            .expect("actions")
            .contains(&json!("dynamodb:CreateTable")));
    }
}
