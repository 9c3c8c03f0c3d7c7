//! `member-role.yaml`: the role the fleet assumes in other accounts. It names no account, so
//! one template serves every member account, deployed alone or as a StackSet.

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
    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!(
            "opsfleet {}: the role the fleet assumes in a member account (rendered by `opsfleet infra render`; StackSets-ready)",
            config.fleet.name
        ),
        "Parameters": parameters,
        "Resources": {
            "MemberRole": { "Type": "AWS::IAM::Role", "Properties": {
                "RoleName": name,
                "Path": path,
                "AssumeRolePolicyDocument": { "Version": "2012-10-17", "Statement": [trust] },
                "Policies": [{ "PolicyName": "opsfleet-member", "PolicyDocument": catalog::member_policy(config) }],
            }},
        },
        "Outputs": { "MemberRoleArn": { "Value": { "Fn::GetAtt": ["MemberRole", "Arn"] } } },
    })
}
