use super::*;

const CONTRACT_EXAMPLE: &str = r#"
[fleet]
name = "opsfleet"
partitions = 4
allowed_accounts = ["123456789012"]
member_role = "arn:aws:iam::{account}:role/OpsFleetMember"
external_id = "opsfleet"

[limits.snapshot-copy]
max = 5
pool = "{params.destination_region}"

[[tasks]]
name = "snapshot-stopped-instance"
pattern = { source = ["aws.ec2"], "detail-type" = ["EC2 Instance State-change Notification"], detail = { state = ["stopped"] } }
targets = "event"
action = "ebs-snapshot"
params = { retain = 7 }

[[tasks]]
name = "nightly-volume-backup"
pattern = { "detail-type" = ["Scheduled Event"], resources = [{ suffix = "rule/nightly" }] }
targets = { type = "ec2:volume", tags = { Backup = "nightly" }, regions = ["us-east-1", "us-west-2"] }
action = "ebs-snapshot"
max_concurrency = 50
max_errors = 5
"#;

#[test]
fn design_example_loads() {
    let config = super::super::Config::parse(CONTRACT_EXAMPLE, None).expect("the config contract example is valid");
    assert_eq!(config.fleet.partitions.get(), 4);
    assert_eq!(config.tasks.len(), 2);
    assert_eq!(config.tasks[1].max_errors, Some(5));
    assert_eq!(config.tasks[0].line, 13);
    match &config.tasks[1].targets {
        Targets::Discover(q) => {
            assert_eq!(q.kind, ResourceType::Volume);
            assert_eq!(q.tags.get("Backup").map(String::as_str), Some("nightly"));
        }
        other => panic!("expected discovery, got {other:?}"),
    }
    assert_eq!(config.limits["snapshot-copy"].max, 5);
}

#[test]
fn unknown_keys_are_errors_with_a_line() {
    let text = CONTRACT_EXAMPLE.replace("max_errors = 5", "max_errorz = 5");
    let err = super::super::Config::parse(&text, None).expect_err("the config is invalid");
    assert_eq!(err.problems.len(), 1);
    assert!(err.problems[0].message.contains("unknown field `max_errorz`"), "{err}");
    assert_eq!(err.problems[0].line, Some(26));
}

#[test]
fn every_semantic_problem_is_reported_with_its_place() {
    let text = r#"
[fleet]
name = "f"
allowed_accounts = ["12345"]

[[tasks]]
name = "a"
pattern = { source = "aws.ec2" }
targets = "event"
action = "noop"
lock = "{nope}"

[[tasks]]
name = "dated"
pattern = { source = ["aws.ec2"] }
targets = "event"
action = "noop"
lock = "{resource}-{date}"

[[tasks]]
name = "a"
pattern = '''{"detail": {"x": [null]}}'''
targets = { type = "ec2:volume", regions = ["mars"] }
action = "noop"
limit = "missing"
"#;
    let err = super::super::Config::parse(text, None).expect_err("the config is invalid");
    let lines: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    let expect = [
        "fleet.allowed_accounts: `12345` is not a 12-digit account id",
        "line 6: tasks[0] \"a\".pattern: at `source`: a pattern value must be an array",
        "line 6: tasks[0] \"a\".lock: unknown placeholder `{nope}`",
        "line 13: tasks[1] \"dated\".lock: a lock must name the same item at every attempt: `{resource}-{date}` reads the clock",
        "line 20: tasks[2] \"a\".name: another task has the same name",
        "line 20: tasks[2] \"a\".targets.regions: `mars` is not a region name",
        "line 20: tasks[2] \"a\".limit: no [limits.missing] is configured",
    ];
    for e in expect {
        assert!(lines.iter().any(|l| l.contains(e)), "missing `{e}` in {lines:#?}");
    }
    assert_eq!(lines.len(), expect.len(), "{lines:#?}");
}

#[test]
fn tables_and_databases_are_discovered_by_tags_alone() {
    let text = r#"
[fleet]
name = "f"

[[tasks]]
name = "tables"
pattern = { source = ["aws.events"] }
targets = { type = "dynamodb:table", state = ["ACTIVE"] }
action = "noop"

[[tasks]]
name = "databases"
pattern = { source = ["aws.events"] }
targets = { type = "rds:db", tags = { backup = "nightly" } }
action = "noop"
"#;
    let err = super::super::Config::parse(text, None).expect_err("the config is invalid");
    let lines: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].contains("\"tables\".targets.state: dynamodb:table is found by its tags only"), "{lines:#?}");
    assert!(
        lines[1].contains("\"tables\".targets.tags: dynamodb:table is found by its tags: give at least one"),
        "{lines:#?}"
    );
}

#[test]
fn bad_targets_keyword_is_named() {
    let text = CONTRACT_EXAMPLE.replace("targets = \"event\"", "targets = \"events\"");
    let err = super::super::Config::parse(&text, None).expect_err("the config is invalid").to_string();
    assert!(err.contains("targets must be \"event\""), "{err}");
}

struct Catalog;

impl ActionCatalog for Catalog {
    fn check(&self, action: &str, params: &Value) -> Result<ActionInfo, String> {
        match action {
            "ebs-snapshot" => {
                if params.get("bogus").is_some() {
                    return Err("unknown param `bogus`".into());
                }
                let templates = params
                    .get("description")
                    .and_then(Value::as_str)
                    .map(|d| vec![("description".to_owned(), d.to_owned())])
                    .unwrap_or_default();
                Ok(ActionInfo { targets: vec![ResourceType::Instance], limit: None, templates })
            }
            "copy" => Ok(ActionInfo {
                targets: vec![ResourceType::Snapshot],
                limit: Some(LimitDefault {
                    name: "snapshot-copy".into(),
                    max: 20,
                    pool: "{params.destination_region}".into(),
                }),
                templates: vec![],
            }),
            other => Err(format!("unknown action `{other}`")),
        }
    }
}

#[test]
fn catalog_checks_actions_params_and_target_types() {
    let text = CONTRACT_EXAMPLE.replace("params = { retain = 7 }", "params = { bogus = 1 }");
    let err = super::super::Config::parse(&text, Some(&Catalog)).expect_err("the config is invalid").to_string();
    assert!(err.contains("tasks[0] \"snapshot-stopped-instance\".action: unknown param `bogus`"), "{err}");
    assert!(
        err.contains("tasks[1] \"nightly-volume-backup\".targets: action `ebs-snapshot` does not act on ec2:volume"),
        "{err}"
    );
}

#[test]
fn action_limits_get_defaults_and_pool_params_are_required() {
    let text = r#"
[fleet]
name = "f"
[[tasks]]
name = "c"
pattern = { source = ["x"] }
targets = "event"
action = "copy"
"#;
    let err = super::super::Config::parse(text, Some(&Catalog)).expect_err("the config is invalid").to_string();
    assert!(err.contains("limit `snapshot-copy` pools by `params.destination_region`"), "{err}");
    let ok = text.replace("action = \"copy\"", "action = \"copy\"\nparams = { destination_region = \"eu-west-1\" }");
    let config = super::super::Config::parse(&ok, Some(&Catalog)).expect("the config is valid");
    assert_eq!(config.tasks[0].limit.as_deref(), Some("snapshot-copy"));
    assert_eq!(config.limits["snapshot-copy"].max, 20);
}

#[test]
fn action_param_templates_are_checked_and_their_event_fields_kept() {
    let text = r#"
[fleet]
name = "f"

[[tasks]]
name = "good"
pattern = { source = ["aws.ec2"] }
targets = "event"
action = "ebs-snapshot"
params = { description = "{task} {date} {event.detail.state} {event.detail.instance-id}" }
delay_secs = 30

[[tasks]]
name = "bad"
pattern = { source = ["aws.ec2"] }
targets = "event"
action = "ebs-snapshot"
params = { description = "{when}" }
"#;
    let err = Config::parse(text, Some(&Catalog)).expect_err("an unknown placeholder");
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].path, "tasks[1] \"bad\".params.description");
    assert!(err.problems[0].message.contains("unknown placeholder `{when}`"), "{err}");
    let config = Config::parse(&text.replace("{when}", "{datetime}"), Some(&Catalog)).expect("config");
    let good = config.task("good").expect("task");
    assert_eq!(good.event_fields, ["detail.instance-id", "detail.state"]);
    assert_eq!(good.delay, std::time::Duration::from_secs(30));
}

#[test]
fn a_scheduled_task_matches_its_own_rule_events() {
    let text = r#"
[fleet]
name = "ops"
alarm_topics = ["arn:aws:sns:us-east-1:123456789012:ops-alarms"]

[[tasks]]
name = "nightly"
schedule = "cron(0 3 * * ? *)"
targets = { type = "ec2:volume", tags = { Backup = "nightly" } }
action = "noop"
"#;
    let config = super::super::Config::parse(text, None).expect("valid");
    let task = &config.tasks[0];
    let schedule = task.schedule.as_ref().expect("a schedule");
    assert_eq!((schedule.name.as_str(), schedule.expression.as_str()), ("ops.nightly", "cron(0 3 * * ? *)"));
    assert_eq!(schedule.timezone, None);
    assert_eq!(config.fleet.alarm_topics, ["arn:aws:sns:us-east-1:123456789012:ops-alarms"]);
    let event = |rule: &str| {
        serde_json::json!({ "source": "aws.events", "detail-type": "Scheduled Event",
            "resources": [format!("arn:aws:events:us-east-1:123456789012:rule/{rule}")] })
    };
    let doc = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
    assert!(task.pattern.matches(&doc(event("ops.nightly"))));
    assert!(!task.pattern.matches(&doc(event("ops.weekly"))));
    assert!(!task.pattern.matches(&doc(event("xops.nightly"))), "the rule's whole name must match");
}

#[test]
fn schedules_and_alarm_topics_are_checked() {
    let with = |fleet: &str, task: &str| {
        let text = format!(
            "[fleet]\nname = \"ops\"\n{fleet}\n[[tasks]]\nname = \"t\"\n{task}\ntargets = {{ type = \"ec2:volume\" }}\naction = \"noop\"\n"
        );
        super::super::Config::parse(&text, None).err().map(|e| e.to_string()).unwrap_or_default()
    };
    for (schedule, why) in [
        ("rate(0 days)", "at least 1"),
        ("rate(1 days)", "singular unit"),
        ("rate(2 day)", "plural unit"),
        ("rate(5 weeks)", "minutes, hours or days"),
        ("cron(0 3 * * ?)", "six fields"),
        ("every day", "`rate(...)` or `cron(...)`"),
    ] {
        let err = with("", &format!("schedule = \"{schedule}\""));
        assert!(err.contains("tasks[0] \"t\".schedule") && err.contains(why), "{schedule}: {err}");
    }
    for good in ["rate(1 hour)", "rate(15 minutes)", "cron(0/5 8-17 ? * MON-FRI *)"] {
        assert_eq!(with("", &format!("schedule = \"{good}\"")), "", "{good}");
    }
    let both = with("", "schedule = \"rate(1 day)\"\npattern = { source = [\"aws.ec2\"] }");
    assert!(both.contains("a pattern or a schedule, not both"), "{both}");
    assert!(with("", "").contains("needs a pattern or a schedule"));
    let topic = with("alarm_topics = [\"arn:aws:sqs:us-east-1:123456789012:q\"]", "schedule = \"rate(1 day)\"");
    assert!(topic.contains("fleet.alarm_topics") && topic.contains("not an SNS topic ARN"), "{topic}");
}

#[test]
fn a_scheduled_task_needs_resources_to_find() {
    let text = "[fleet]\nname = \"ops\"\n[[tasks]]\nname = \"t\"\nschedule = \"rate(1 day)\"\ntargets = \"event\"\naction = \"noop\"\n";
    let err = super::super::Config::parse(text, None).expect_err("invalid").to_string();
    assert!(err.contains("tasks[0] \"t\".targets: a scheduled event names no resources"), "{err}");
}

#[test]
fn rule_names_fit_eventbridge() {
    assert_eq!(crate::names::rule("ops", "nightly"), "ops.nightly");
    assert!(
        !crate::names::rule("ops-prod", "x").starts_with(&crate::names::rule("ops", "")),
        "fleets' rules do not share a prefix"
    );
    let long = crate::names::rule("ops", &"x".repeat(80));
    assert_eq!(long.len(), 64);
    assert_ne!(long, crate::names::rule("ops", &"x".repeat(81)), "cut names stay distinct");
}

#[test]
fn a_pool_that_reads_the_clock_is_refused() {
    let text = "[fleet]\nname = \"f\"\n\n[limits.daily]\nmax = 1\npool = \"{region}-{date}\"\n";
    let err = super::super::Config::parse(text, None).expect_err("the config is invalid");
    let lines: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    assert!(
        lines.iter().any(|l| l.contains("limits.daily.pool: a pool must name the same item at every attempt")),
        "{lines:#?}"
    );
}

#[test]
fn a_member_role_needs_an_external_id() {
    let text = "[fleet]\nname = \"f\"\nmember_role = \"arn:aws:iam::{account}:role/M\"\n";
    let err = super::super::Config::parse(text, None).expect_err("the config is invalid");
    let lines: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    assert!(lines.iter().any(|l| l.contains("fleet.external_id: is required with `member_role`")), "{lines:#?}");
    let with = format!("{text}external_id = \"e-1\"\n");
    assert!(super::super::Config::parse(&with, None).is_ok(), "with an external id it is valid");
}

#[test]
fn a_task_completes_within_an_hour_unless_it_says_otherwise() {
    let text = r#"
[fleet]
name = "f"

[[tasks]]
name = "copy"
pattern = { source = ["aws.ec2"] }
targets = "event"
action = "noop"
deadline_mins = 240
"#;
    let config = Config::parse(text, None).expect("config");
    assert_eq!(config.task("copy").expect("task").deadline, std::time::Duration::from_secs(4 * 3600));
    let default = Config::parse(&text.replace("deadline_mins = 240\n", ""), None).expect("config");
    assert_eq!(default.task("copy").expect("task").deadline, std::time::Duration::from_secs(3600));
    let err = Config::parse(&text.replace("240", "20000"), None).expect_err("over a week");
    assert_eq!(err.problems[0].path, "tasks[0] \"copy\".deadline_mins", "{err}");
}

#[test]
fn a_shutdown_grace_ecs_cannot_wait_for_is_refused() {
    let text = "[fleet]\nname = \"f\"\n\n[worker]\nshutdown_grace_secs = 200\n";
    let err = Config::parse(text, None).expect_err("past ECS's stop timeout");
    assert_eq!(err.problems[0].path, "worker.shutdown_grace_secs", "{err}");
    assert!(err.problems[0].message.contains("120 s"), "{err}");
    assert!(Config::parse(&text.replace("200", "110"), None).is_ok());
}

#[test]
fn several_accounts_without_a_member_role_are_refused() {
    let text = "[fleet]\nname = \"f\"\nallowed_accounts = [\"111122223333\", \"444455556666\"]\n";
    let err = Config::parse(text, None).expect_err("no way into the second account");
    assert_eq!(err.problems[0].path, "fleet.allowed_accounts", "{err}");
    assert!(err.problems[0].message.contains("member_role"), "{err}");
    let with_role = text.to_owned() + "member_role = \"arn:aws:iam::{account}:role/M\"\nexternal_id = \"e\"\n";
    assert!(Config::parse(&with_role, None).is_ok());
    let discovery = "[fleet]\nname = \"f\"\n\n[[tasks]]\nname = \"n\"\nschedule = \"rate(1 day)\"\n\
        targets = { type = \"ec2:volume\", accounts = [\"111122223333\", \"444455556666\"] }\naction = \"noop\"\n";
    let err = Config::parse(discovery, None).expect_err("discovery in two accounts");
    assert!(err.problems[0].path.ends_with("targets.accounts"), "{err}");
}

#[test]
fn an_organization_needs_a_well_formed_id_and_a_member_role() {
    let with = |fleet: &str| {
        let text = format!("[fleet]\nname = \"ops\"\n{fleet}\n");
        super::super::Config::parse(&text, None).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let member = "member_role = \"arn:aws:iam::{account}:role/M\"\nexternal_id = \"e\"";
    assert_eq!(with(&format!("organization_id = \"o-a1b2c3d4e5\"\n{member}")), "");
    let bad = with(&format!("organization_id = \"a1b2c3d4e5\"\n{member}"));
    assert!(bad.contains("fleet.organization_id: `a1b2c3d4e5` is not an organization id"), "{bad}");
    let alone = with("organization_id = \"o-a1b2c3d4e5\"");
    assert!(alone.contains("fleet.organization_id: is set but fleet.member_role is not"), "{alone}");
}

#[test]
fn a_member_role_may_name_its_fleet() {
    let text = "[fleet]\nname = \"ops-prod\"\nmember_role = \"arn:aws:iam::{account}:role/opsfleet-{fleet}-member\"\nexternal_id = \"e\"\n";
    let config = super::super::Config::parse(text, None).expect("valid");
    assert_eq!(config.fleet.member_role.as_deref(), Some("arn:aws:iam::{account}:role/opsfleet-ops-prod-member"));
}

#[test]
fn a_task_with_steps_runs_a_runbook_and_its_rate_controls_are_checked() {
    let text = r#"
[fleet]
name = "f"
halt_on_alarms = ["fleet-wide"]

[[tasks]]
name = "r"
pattern = { source = ["x"] }
targets = { type = "ec2:instance", tags = { Patch = "*" } }
steps = [{ name = "a", action = "noop", timeout_secs = 900 }]
halt_on_alarms = ["api-5xx"]
max_targets = 20
max_targets_percent = 25
max_errors = "10%"
"#;
    let config = super::super::Config::parse(text, None).expect("valid");
    let task = &config.tasks[0];
    assert_eq!(task.action, RUNBOOK);
    assert_eq!(task.params["steps"][0]["name"], "a");
    assert!(task.ramp_up, "runbooks ramp up by default");
    assert_eq!(task.timeout.as_secs(), 900, "the task's timeout is raised to its longest step's");
    assert_eq!(task.halt_on_alarms, ["fleet-wide", "api-5xx"]);
    assert_eq!((task.max_targets, task.max_targets_percent), (Some(20), Some(25)));
    assert_eq!((task.max_errors, task.max_errors_percent), (None, Some(10)));
    assert_eq!(task.max_errors_for(Some(35)), Some(3));
    assert_eq!(task.max_errors_for(None), None);

    let bad = r#"
[fleet]
name = "f"

[[tasks]]
name = "both"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
steps = [{ name = "a", action = "noop" }]
max_targets_percent = 120

[[tasks]]
name = "neither"
pattern = { source = ["x"] }
targets = "event"
"#;
    let problems = super::super::Config::parse(bad, None).unwrap_err().to_string();
    assert!(problems.contains("tasks[0] \"both\".steps: a task has an action or steps, not both"), "{problems}");
    assert!(problems.contains("max_targets_percent: 120 is over 100"), "{problems}");
    assert!(problems.contains("the task's targets must be a discovery table"), "{problems}");
    assert!(problems.contains("tasks[1] \"neither\".action: a task needs an action or steps"), "{problems}");
    let percent = "[fleet]\nname = \"f\"\n[[tasks]]\nname = \"t\"\npattern = { source = [\"x\"] }\ntargets = \"event\"\naction = \"noop\"\nmax_errors = \"120%\"\n";
    let problems = super::super::Config::parse(percent, None).unwrap_err().to_string();
    assert!(problems.contains("max_errors \"120%\" is not a percentage"), "{problems}");
}
