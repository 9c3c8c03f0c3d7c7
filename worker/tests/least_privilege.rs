//! Least privilege that holds: the statements every action generates, walked with a small IAM
//! evaluator. Whatever sequence of allowed calls a holder of the role makes, it cannot delete,
//! deregister, stop, start, reboot or re-tag a resource opsfleet did not make, unless a task
//! asks for exactly that (instance-power, snapshot-copy's `delete_source`, the tag action's
//! own keys), and never one that opted out (`opsfleet:skip = true`).
//!
//! The reasoning the walk checks: deletes and deregistrations are allowed only on resources
//! carrying `opsfleet:job` (`aws:ResourceTag`); `opsfleet:job` gets onto a resource only in the
//! call that creates it (`ec2:CreateAction`), never onto an existing one; and no allowed call
//! removes or changes `opsfleet:skip`.

use opsfleet_worker::actions::ActionRegistry;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Every action with params that use all it can do.
fn param_sets() -> Vec<(&'static str, Value)> {
    vec![
        ("ebs-snapshot", json!({ "retain": 7 })),
        ("ebs-snapshot", json!({})),
        ("snapshot-copy", json!({ "destination_region": "eu-west-1", "retain": 3, "kms_key_id": "alias/backup" })),
        ("snapshot-copy", json!({ "destination_region": "eu-west-1", "delete_source": true })),
        ("ami-create", json!({ "retain": 3 })),
        ("image-copy", json!({ "destination_region": "eu-west-1", "retain": 3, "kms_key_id": "alias/backup" })),
        ("image-lifecycle", json!({ "deprecate_after_days": 7, "deregister_after_days": 30 })),
        ("instance-power", json!({ "operation": "stop", "force": true })),
        ("instance-power", json!({ "operation": "start" })),
        ("instance-power", json!({ "operation": "reboot" })),
        ("instance-resize", json!({ "step": "up", "ladder": ["t3.small", "t3.medium"], "fallback": ["m5.large"] })),
        ("tag", json!({ "add": { "Owner": "ops" }, "remove": ["Old"] })),
        ("snapshot-retention", json!({ "keep": 1, "max_age_days": 30 })),
        ("notify", json!({ "topic_arn": "arn:aws:sns:us-east-1:111122223333:ops" })),
        ("dynamodb-backup", json!({ "retain": 7 })),
        ("dynamodb-capacity", json!({ "multiply": 2, "max_read": 100 })),
        ("dynamodb-capacity", json!({ "billing_mode": "PAY_PER_REQUEST" })),
        ("rds-snapshot", json!({ "copy_to": [{ "region": "us-west-2", "kms_key_id": "alias/dr" }], "retain": 7 })),
        ("schedule-power", json!({ "periods": { "office": { "begin": "08:00", "end": "18:00" } }, "hibernate": true })),
        ("run-command", json!({ "commands": ["uptime"] })),
        // A runbook's statements are its steps'.
        (
            "runbook",
            json!({ "steps": [
            { "name": "snapshot", "action": "ebs-snapshot", "params": { "retain": 7 } },
            { "name": "tell", "action": "notify", "params": { "topic_arn": "arn:aws:sns:us-east-1:111122223333:ops" } },
        ] }),
        ),
    ]
}

fn statements(sets: &[(&str, Value)]) -> Vec<Value> {
    let registry = ActionRegistry::builtin();
    sets.iter()
        .flat_map(|(name, params)| {
            let action = registry.get(name).expect("a registered action");
            action.iam_statements(params).expect("statements")
        })
        .collect()
}

/// One call, as IAM sees it.
#[derive(Debug, Clone)]
struct Call<'a> {
    action: &'a str,
    arn: String,
    resource_tags: &'a BTreeMap<String, String>,
    request_tags: BTreeMap<String, String>,
    create_action: Option<&'a str>,
}

fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.starts_with(head) && (0..=text.len() - head.len()).any(|i| glob(tail, &text[head.len() + i..]))
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
        Value::String(s) => vec![s.clone()],
        other => vec![other.to_string()],
    }
}

/// The values of a condition key for a call (none when absent).
fn values(call: &Call<'_>, key: &str) -> Vec<String> {
    if let Some(tag) = key.strip_prefix("aws:ResourceTag/") {
        return call.resource_tags.get(tag).cloned().into_iter().collect();
    }
    if let Some(tag) = key.strip_prefix("ssm:resourceTag/") {
        return call.resource_tags.get(tag).cloned().into_iter().collect();
    }
    if let Some(tag) = key.strip_prefix("aws:RequestTag/") {
        return call.request_tags.get(tag).cloned().into_iter().collect();
    }
    match key {
        "ec2:CreateAction" => call.create_action.map(str::to_owned).into_iter().collect(),
        "aws:TagKeys" => call.request_tags.keys().cloned().collect(),
        k if k.starts_with("kms:") => Vec::new(),
        k => panic!("the evaluator does not know condition key {k}"),
    }
}

fn condition_holds(call: &Call<'_>, operator: &str, key: &str, wanted: &[String]) -> bool {
    let have = values(call, key);
    match operator {
        "StringEquals" => have.iter().any(|h| wanted.contains(h)),
        "StringLike" => have.iter().any(|h| wanted.iter().any(|w| glob(w, h))),
        // True when the key is absent, as IAM has it.
        "StringNotEquals" => have.iter().all(|h| !wanted.contains(h)),
        "ForAllValues:StringEquals" => have.iter().all(|h| wanted.contains(h)),
        "ForAnyValue:StringEquals" => have.iter().any(|h| wanted.contains(h)),
        "Bool" => have.iter().any(|h| wanted.contains(h)),
        other => panic!("the evaluator does not know condition operator {other}"),
    }
}

fn allowed(policy: &[Value], call: &Call<'_>) -> bool {
    policy.iter().any(|s| {
        assert_eq!(s["Effect"], "Allow", "only Allow statements are generated: {s}");
        strings(&s["Action"]).iter().any(|a| a == call.action)
            && strings(&s["Resource"]).iter().any(|r| glob(r, &call.arn))
            && s["Condition"].as_object().is_none_or(|conditions| {
                conditions.iter().all(|(operator, keys)| {
                    keys.as_object()
                        .expect("condition keys")
                        .iter()
                        .all(|(key, wanted)| condition_holds(call, operator, key, &strings(wanted)))
                })
            })
    })
}

const KINDS: &[(&str, &str)] = &[
    ("snapshot", "arn:aws:ec2:us-east-1::snapshot/snap-0theirs"),
    ("image", "arn:aws:ec2:us-east-1::image/ami-0theirs"),
    ("instance", "arn:aws:ec2:us-east-1:111122223333:instance/i-0theirs"),
    ("volume", "arn:aws:ec2:us-east-1:111122223333:volume/vol-0theirs"),
];

/// The tags anyone holding the role could give an existing resource, starting from `start`:
/// every state reachable through allowed CreateTags and DeleteTags calls.
fn reachable(policy: &[Value], arn: &str, start: BTreeMap<String, String>) -> Vec<BTreeMap<String, String>> {
    let keys = [
        "opsfleet:job",
        "opsfleet:task",
        "opsfleet:source",
        "opsfleet:skip",
        "opsfleet:rebooted-by",
        "opsfleet:resize",
        "Owner",
        "Old",
    ];
    let mut seen: BTreeSet<BTreeMap<String, String>> = BTreeSet::from([start.clone()]);
    let mut todo = vec![start];
    while let Some(tags) = todo.pop() {
        for key in keys {
            for value in ["x", "true", "false"] {
                let request_tags = BTreeMap::from([(key.to_owned(), value.to_owned())]);
                let call = |action| Call {
                    action,
                    arn: arn.to_owned(),
                    resource_tags: &tags,
                    request_tags: request_tags.clone(),
                    create_action: None,
                };
                let mut next = Vec::new();
                if allowed(policy, &call("ec2:CreateTags")) {
                    let mut t = tags.clone();
                    t.insert(key.to_owned(), value.to_owned());
                    next.push(t);
                }
                if tags.contains_key(key) && allowed(policy, &call("ec2:DeleteTags")) {
                    let mut t = tags.clone();
                    t.remove(key);
                    next.push(t);
                }
                for t in next {
                    if seen.insert(t.clone()) {
                        todo.push(t);
                    }
                }
            }
        }
    }
    seen.into_iter().collect()
}

fn destructive_allowed(policy: &[Value], arn: &str, tags: &BTreeMap<String, String>) -> Vec<&'static str> {
    let destructive = [
        "ec2:DeleteSnapshot",
        "ec2:DeregisterImage",
        "ec2:StopInstances",
        "ec2:StartInstances",
        "ec2:RebootInstances",
        "ec2:ModifyInstanceAttribute",
        "ec2:TerminateInstances",
        "ec2:DeleteVolume",
    ];
    destructive
        .into_iter()
        .filter(|action| {
            allowed(
                policy,
                &Call {
                    action,
                    arn: arn.to_owned(),
                    resource_tags: tags,
                    request_tags: BTreeMap::new(),
                    create_action: None,
                },
            )
        })
        .collect()
}

#[test]
fn opsfleet_job_gets_onto_a_resource_only_in_the_call_that_creates_it() {
    let policy = statements(&param_sets());
    let none = BTreeMap::new();
    for (kind, arn) in KINDS {
        let tag = |create_action| Call {
            action: "ec2:CreateTags",
            arn: arn.to_string(),
            resource_tags: &none,
            request_tags: BTreeMap::from([("opsfleet:job".to_owned(), "x".to_owned())]),
            create_action,
        };
        assert!(!allowed(&policy, &tag(None)), "an existing {kind} can be tagged opsfleet:job");
        for (i, state) in reachable(&policy, arn, BTreeMap::new()).iter().enumerate() {
            assert!(!state.contains_key("opsfleet:job"), "{kind}: state {i} reachable with opsfleet:job: {state:?}");
        }
    }
    // What a snapshot create tags, it tags as it creates.
    let made = Call {
        action: "ec2:CreateTags",
        arn: KINDS[0].1.to_owned(),
        resource_tags: &none,
        request_tags: BTreeMap::from([("opsfleet:job".to_owned(), "x".to_owned())]),
        create_action: Some("CreateSnapshot"),
    };
    assert!(allowed(&policy, &made), "a snapshot is tagged as it is made");
}

#[test]
fn no_sequence_of_allowed_calls_deletes_or_deregisters_what_opsfleet_did_not_make() {
    // Every action that deletes or deregisters only what opsfleet made, with all the tagging
    // the other actions may do (not those that act on any instance that has not opted out).
    let sets: Vec<(&str, Value)> = param_sets()
        .into_iter()
        .filter(|(name, params)| {
            !name.starts_with("instance-") && *name != "schedule-power" && params.get("delete_source").is_none()
        })
        .collect();
    let policy = statements(&sets);
    for (kind, arn) in KINDS {
        for start in [BTreeMap::new(), BTreeMap::from([("opsfleet:skip".to_owned(), "true".to_owned())])] {
            for tags in reachable(&policy, arn, start) {
                let found = destructive_allowed(&policy, arn, &tags);
                assert!(found.is_empty(), "{kind} not made by opsfleet, tagged {tags:?}: {found:?} allowed");
            }
        }
    }
    // And what opsfleet made, its retention may delete.
    let made = BTreeMap::from([("opsfleet:job".to_owned(), "j".to_owned())]);
    assert_eq!(destructive_allowed(&policy, KINDS[0].1, &made), vec!["ec2:DeleteSnapshot"]);
    assert_eq!(destructive_allowed(&policy, KINDS[1].1, &made), vec!["ec2:DeregisterImage"]);
}

#[test]
fn what_a_task_targets_it_may_change_but_never_once_it_opted_out_and_the_opt_out_stays() {
    let policy = statements(&param_sets());
    let skip = BTreeMap::from([("opsfleet:skip".to_owned(), "true".to_owned())]);
    for (kind, arn) in KINDS {
        for tags in reachable(&policy, arn, skip.clone()) {
            assert_eq!(tags.get("opsfleet:skip").map(String::as_str), Some("true"), "{kind}: the opt-out was removed");
            let found = destructive_allowed(&policy, arn, &tags);
            assert!(found.is_empty(), "{kind} opted out, tagged {tags:?}: {found:?} allowed");
            let retag = Call {
                action: "ec2:CreateTags",
                arn: arn.to_string(),
                resource_tags: &tags,
                request_tags: BTreeMap::from([("Owner".to_owned(), "x".to_owned())]),
                create_action: None,
            };
            assert!(!allowed(&policy, &retag), "{kind} opted out can be re-tagged");
        }
    }
    // Not opted out: the targeted changes the tasks ask for, and nothing else.
    let none = BTreeMap::new();
    assert_eq!(
        destructive_allowed(&policy, KINDS[2].1, &none),
        vec!["ec2:StopInstances", "ec2:StartInstances", "ec2:RebootInstances", "ec2:ModifyInstanceAttribute"]
    );
    assert_eq!(destructive_allowed(&policy, KINDS[0].1, &none), vec!["ec2:DeleteSnapshot"], "delete_source");
    assert!(destructive_allowed(&policy, KINDS[3].1, &none).is_empty(), "volumes are never deleted");
}

#[test]
fn destructive_statements_appear_only_when_a_task_asks_for_them() {
    for (name, params) in [
        ("ebs-snapshot", json!({})),
        ("ami-create", json!({})),
        ("snapshot-copy", json!({ "destination_region": "eu-west-1" })),
        ("instance-power", json!({ "operation": "start" })),
        ("image-copy", json!({ "destination_region": "eu-west-1" })),
        ("image-lifecycle", json!({ "deprecate_after_days": 7 })),
    ] {
        let policy = statements(&[(name, params)]);
        let made = BTreeMap::from([("opsfleet:job".to_owned(), "j".to_owned())]);
        for (kind, arn) in KINDS {
            let found: Vec<_> =
                destructive_allowed(&policy, arn, &made).into_iter().filter(|a| *a != "ec2:StartInstances").collect();
            assert!(found.is_empty(), "{name} without retain or delete_source allows {found:?} on a {kind}");
        }
    }
}

#[test]
fn tables_that_opted_out_are_neither_backed_up_nor_resized_and_backups_are_deleted_only_for_retain() {
    let policy = statements(&param_sets());
    let table = "arn:aws:dynamodb:us-east-1:111122223333:table/orders";
    let call = |action, tags, request_tags| Call {
        action,
        arn: table.to_owned(),
        resource_tags: tags,
        request_tags,
        create_action: None,
    };
    let none = BTreeMap::new();
    let skip = BTreeMap::from([("opsfleet:skip".to_owned(), "true".to_owned())]);
    let record = || BTreeMap::from([("opsfleet:capacity".to_owned(), "job 5 5".to_owned())]);
    for action in ["dynamodb:UpdateTable", "dynamodb:CreateBackup"] {
        assert!(allowed(&policy, &call(action, &none, BTreeMap::new())), "{action} on a table");
        assert!(!allowed(&policy, &call(action, &skip, BTreeMap::new())), "{action} on a table that opted out");
    }
    assert!(allowed(&policy, &call("dynamodb:TagResource", &none, record())), "the capacity record");
    assert!(!allowed(&policy, &call("dynamodb:TagResource", &skip, record())), "no record on a table that opted out");
    let other = BTreeMap::from([("opsfleet:skip".to_owned(), "false".to_owned())]);
    assert!(!allowed(&policy, &call("dynamodb:TagResource", &none, other)), "no other tag, the opt-out least");
    for action in ["dynamodb:UntagResource", "dynamodb:DeleteTable"] {
        assert!(!allowed(&policy, &call(action, &none, BTreeMap::new())), "{action} is never allowed");
    }
    let backup = Call {
        arn: format!("{table}/backup/01718312345678-abcdef12"),
        ..call("dynamodb:DeleteBackup", &none, BTreeMap::new())
    };
    assert!(allowed(&policy, &backup), "retain deletes backups");
    let without_retain = statements(&[("dynamodb-backup", json!({}))]);
    assert!(!allowed(&without_retain, &backup), "without retain no backup is deleted");
}

#[test]
fn rds_snapshots_are_made_only_of_what_has_not_opted_out_and_deleted_only_when_opsfleet_made_them() {
    let policy = statements(&param_sets());
    let db = "arn:aws:rds:us-east-1:111122223333:db:billing-1";
    let ours = "arn:aws:rds:us-east-1:111122223333:snapshot:opsfleet-nightly-0123";
    let theirs = "arn:aws:rds:us-east-1:111122223333:snapshot:before-upgrade";
    let none = BTreeMap::new();
    let skip = BTreeMap::from([("opsfleet:skip".to_owned(), "true".to_owned())]);
    let made = BTreeMap::from([("opsfleet:job".to_owned(), "j".to_owned())]);
    let call = |action, arn: &str, tags, request_tags| Call {
        action,
        arn: arn.to_owned(),
        resource_tags: tags,
        request_tags,
        create_action: None,
    };
    assert!(allowed(&policy, &call("rds:CreateDBSnapshot", db, &none, BTreeMap::new())), "a snapshot of a database");
    assert!(!allowed(&policy, &call("rds:CreateDBSnapshot", db, &skip, BTreeMap::new())), "not of one that opted out");
    assert!(
        allowed(&policy, &call("rds:CreateDBSnapshot", ours, &none, BTreeMap::new())),
        "named as opsfleet names them"
    );
    assert!(!allowed(&policy, &call("rds:CreateDBSnapshot", theirs, &none, BTreeMap::new())), "not any other name");
    let job_tag = || BTreeMap::from([("opsfleet:job".to_owned(), "j".to_owned())]);
    assert!(allowed(&policy, &call("rds:AddTagsToResource", ours, &none, job_tag())), "tagged as made");
    assert!(!allowed(&policy, &call("rds:AddTagsToResource", theirs, &none, job_tag())), "opsfleet:job onto another's");
    assert!(!allowed(&policy, &call("rds:AddTagsToResource", db, &skip, BTreeMap::new())), "the opt-out stays");
    for action in ["rds:RemoveTagsFromResource", "rds:DeleteDBInstance", "rds:RebootDBInstance"] {
        assert!(!allowed(&policy, &call(action, db, &none, BTreeMap::new())), "{action} is never allowed");
    }
    // Scheduled power stops and starts databases, never one that opted out, and records only
    // its own key.
    assert!(allowed(&policy, &call("rds:StopDBInstance", db, &none, BTreeMap::new())));
    assert!(!allowed(&policy, &call("rds:StopDBInstance", db, &skip, BTreeMap::new())));
    let record = || BTreeMap::from([("opsfleet:schedule".to_owned(), "office stopped".to_owned())]);
    assert!(allowed(&policy, &call("rds:AddTagsToResource", db, &none, record())));
    assert!(!allowed(&policy, &call("rds:AddTagsToResource", db, &skip, record())));
    assert!(allowed(&policy, &call("rds:DeleteDBSnapshot", ours, &made, BTreeMap::new())), "retain deletes its own");
    assert!(!allowed(&policy, &call("rds:DeleteDBSnapshot", ours, &none, BTreeMap::new())), "not untagged ones");
    assert!(!allowed(&policy, &call("rds:DeleteDBSnapshot", theirs, &made, BTreeMap::new())), "not other names");
    let without_retain = statements(&[("rds-snapshot", json!({}))]);
    assert!(!allowed(&without_retain, &call("rds:DeleteDBSnapshot", ours, &made, BTreeMap::new())));
}

#[test]
fn commands_are_sent_only_to_instances_that_have_not_opted_out() {
    let policy = statements(&param_sets());
    let instance = "arn:aws:ec2:us-east-1:111122223333:instance/i-0theirs";
    let send = |tags| Call {
        action: "ssm:SendCommand",
        arn: instance.to_owned(),
        resource_tags: tags,
        request_tags: BTreeMap::new(),
        create_action: None,
    };
    let none = BTreeMap::new();
    assert!(allowed(&policy, &send(&none)));
    let skip = BTreeMap::from([("opsfleet:skip".to_owned(), "true".to_owned())]);
    assert!(!allowed(&policy, &send(&skip)), "an instance that opted out gets no command");
}

#[test]
fn auto_scaling_groups_are_resized_only_when_not_opted_out_and_tagged_only_with_the_schedules_keys() {
    let policy = statements(&param_sets());
    let group = "arn:aws:autoscaling:us-east-1:111122223333:autoScalingGroup:0a1b:autoScalingGroupName/web-asg";
    let call = |action, tags, request_tags| Call {
        action,
        arn: group.to_owned(),
        resource_tags: tags,
        request_tags,
        create_action: None,
    };
    let none = BTreeMap::new();
    let skip = BTreeMap::from([("opsfleet:skip".to_owned(), "true".to_owned())]);
    assert!(allowed(&policy, &call("autoscaling:UpdateAutoScalingGroup", &none, BTreeMap::new())));
    assert!(!allowed(&policy, &call("autoscaling:UpdateAutoScalingGroup", &skip, BTreeMap::new())));
    let saved = || BTreeMap::from([("opsfleet:asg-size".to_owned(), "1 3 2".to_owned())]);
    assert!(allowed(&policy, &call("autoscaling:CreateOrUpdateTags", &none, saved())));
    assert!(!allowed(&policy, &call("autoscaling:CreateOrUpdateTags", &skip, saved())));
    let other = BTreeMap::from([("opsfleet:skip".to_owned(), "false".to_owned())]);
    assert!(!allowed(&policy, &call("autoscaling:CreateOrUpdateTags", &none, other)), "the opt-out stays");
    assert!(!allowed(&policy, &call("autoscaling:DeleteAutoScalingGroup", &none, BTreeMap::new())));
}
