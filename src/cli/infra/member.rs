//! `member-role.yaml`: what a member account needs for the fleet: the role the fleet assumes in
//! it, and rules forwarding the events its tasks match to the fleet's event bus. It names no
//! account, so one template serves every member account and region, deployed alone or as a
//! StackSet (the role, which IAM holds once per account, only where `CreateMemberRole` is
//! `true`).

use super::core::rules;
use super::logical_id;
use crate::cli::catalog;
use opsfleet_protocol::Config;
use serde_json::{json, Value};

/// The member role's name and path from `fleet.member_role`
/// (`arn:aws:iam::{account}:role/ops/OpsFleetMember` → `OpsFleetMember`, `/ops/`).
pub fn role_name_and_path(config: &Config) -> (String, String) {
    let role = config.fleet.member_role.as_deref().unwrap_or("arn:aws:iam::{account}:role/OpsFleetMember");
    let after = role.split_once(":role/").map(|(_, r)| r).unwrap_or("OpsFleetMember");
    match after.rsplit_once('/') {
        Some((path, name)) => (name.to_owned(), format!("/{path}/")),
        None => (after.to_owned(), "/".to_owned()),
    }
}

/// The member-role stack of a config: its trust of the fleet's role (with the external id)
/// and exactly the policy `opsfleet iam-policy --member` prints.
pub fn member_template(config: &Config) -> Value {
    let (name, path) = role_name_and_path(config);
    let mut trust = json!({
        "Effect": "Allow",
        "Principal": { "AWS": { "Ref": "FleetRoleArn" } },
        "Action": "sts:AssumeRole",
    });
    let mut parameters = json!({
        "FleetRoleArn": {
            "Type": "String",
            "AllowedPattern": "arn:aws[a-z-]*:iam::[0-9]{12}:role/.+",
            "Description": "The fleet's role (the core stack's TaskRoleArn output)",
        },
    });
    if let Some(external_id) = &config.fleet.external_id {
        // The external id is the config's; it is passed at deploy, never written in a template.
        let _ = external_id;
        parameters["ExternalId"] = json!({ "Type": "String", "NoEcho": true, "MinLength": 2,
            "Description": "The external id the fleet passes: the config's fleet.external_id" });
        trust["Condition"] = json!({ "StringEquals": { "sts:ExternalId": { "Ref": "ExternalId" } } });
    }
    parameters["FleetEventBusArn"] = json!({
        "Type": "String",
        "AllowedPattern": "arn:aws[a-z-]*:events:[a-z0-9-]+:[0-9]{12}:event-bus/.+",
        "Description": "The fleet's event bus (the core stack's EventBusArn output): this account's matching events go there",
    });
    parameters["CreateMemberRole"] = json!({
        "Type": "String", "AllowedValues": ["true", "false"], "Default": "true",
        "Description": "Whether this stack creates the member role: true in one region of each account (IAM is global), \
                        false in the others, which only forward events",
    });
    // What `opsfleet iam-policy --member` prints, as one managed policy or, past IAM's size,
    // several.
    let parts = catalog::split_policy(&catalog::member_policy(config)).unwrap_or_default();
    let policy_id = |n: usize| if n == 0 { "MemberPolicy".to_owned() } else { format!("MemberPolicy{}", n + 1) };
    let mut resources = json!({
        "MemberRole": { "Type": "AWS::IAM::Role", "Condition": "CreateRole", "Properties": {
            "RoleName": name,
            "Path": path,
            "AssumeRolePolicyDocument": { "Version": "2012-10-17", "Statement": [trust] },
            "ManagedPolicyArns": (0..parts.len()).map(|n| json!({ "Ref": policy_id(n) })).collect::<Vec<_>>(),
        }},
    });
    for (n, document) in parts.into_iter().enumerate() {
        resources[policy_id(n)] = json!({ "Type": "AWS::IAM::ManagedPolicy", "Condition": "CreateRole", "Properties": {
            "Description": format!("opsfleet {}: the member role's permissions", config.fleet.name),
            "PolicyDocument": document,
        }});
    }
    let forwarded = forwarding_rules(config);
    if !forwarded.is_empty() {
        resources["ForwardRole"] = json!({ "Type": "AWS::IAM::Role", "Condition": "Forward", "Properties": {
            "Description": format!("opsfleet {}: EventBridge forwards this account's events to the fleet's bus", config.fleet.name),
            "AssumeRolePolicyDocument": { "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": { "Service": "events.amazonaws.com" }, "Action": "sts:AssumeRole",
            }]},
            "Policies": [{ "PolicyName": "forward-events", "PolicyDocument": { "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "events:PutEvents", "Resource": { "Ref": "FleetEventBusArn" },
            }]}}],
        }});
        for (id, rule) in forwarded {
            resources[id] = rule;
        }
    }
    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!(
            "opsfleet {}: the role the fleet assumes in a member account and the rules forwarding its events \
             (rendered by `opsfleet infra render`; StackSets-ready)",
            config.fleet.name
        ),
        "Parameters": parameters,
        "Conditions": {
            "CreateRole": { "Fn::Equals": [{ "Ref": "CreateMemberRole" }, "true"] },
            // The fleet's own account has its rules already: forwarding there would loop.
            "Forward": { "Fn::Not": [{ "Fn::Equals": [
                { "Ref": "AWS::AccountId" },
                { "Fn::Select": [4, { "Fn::Split": [":", { "Ref": "FleetEventBusArn" }] }] },
            ]}]},
        },
        "Resources": resources,
        "Outputs": { "MemberRoleArn": { "Condition": "CreateRole", "Value": { "Fn::GetAtt": ["MemberRole", "Arn"] } } },
    })
}

/// One rule per distinct event pattern of the config (schedules fire in the fleet's account),
/// named as the fleet's own, sending what it matches to the fleet's bus, where the fleet's
/// rules match it again.
fn forwarding_rules(config: &Config) -> Vec<(String, Value)> {
    rules(config)
        .into_iter()
        .filter_map(|rule| {
            let pattern = rule.pattern.clone()?;
            let properties = json!({
                "Name": rule.name,
                "Description": format!("opsfleet {}: forwards {}", config.fleet.name, rule.tasks.join(", ")),
                "State": "ENABLED",
                "EventPattern": pattern,
                "Targets": [{
                    "Arn": { "Ref": "FleetEventBusArn" },
                    "Id": "opsfleet-fleet-bus",
                    "RoleArn": { "Fn::GetAtt": ["ForwardRole", "Arn"] },
                    "RetryPolicy": { "MaximumRetryAttempts": 185, "MaximumEventAgeInSeconds": 86_400 },
                }],
            });
            let rule_id = format!("{}Forward", logical_id(&rule.name));
            Some((rule_id, json!({ "Type": "AWS::Events::Rule", "Condition": "Forward", "Properties": properties })))
        })
        .collect()
}
