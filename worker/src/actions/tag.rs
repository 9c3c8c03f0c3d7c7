//! `tag`: adds and removes tags on any EC2 resource; done once the tags read back as asked.
//! Idempotent by nature: setting a tag to its value, or removing a missing one, changes
//! nothing.

use super::ec2::{failed, filter, opted_out, tag};
use super::{Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_ec2::types::Tag as Ec2Tag;
use opsfleet_protocol::ResourceType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The longest tag key EC2 takes.
const MAX_KEY: usize = 128;

/// The longest tag value EC2 takes.
const MAX_VALUE: usize = 256;

/// The params of `tag`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagParams {
    /// Tags to set, values are templates.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Tag keys to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The `tag` action.
pub struct Tag;

/// The tags of a resource (any EC2 type), by `DescribeTags`.
async fn tags_of(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<BTreeMap<String, String>, Step> {
    let out =
        ec2.describe_tags().filters(filter("resource-id", id)).send().await.map_err(|e| failed("DescribeTags", &e))?;
    Ok(out
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
        .collect())
}

#[async_trait]
impl Action for Tag {
    const NAME: &'static str = "tag";
    type Params = TagParams;
    type State = ();

    fn targets(&self) -> &'static [ResourceType] {
        &ResourceType::EC2
    }

    fn examples(&self) -> Vec<TagParams> {
        vec![TagParams { add: BTreeMap::from([("Backup".into(), "{date}".into())]), remove: vec!["Stale".into()] }]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &TagParams) -> String {
        let add: Vec<String> = p.add.iter().map(|(k, v)| format!("{k}={}", ctx.render(v))).collect();
        let mut what = Vec::new();
        if !add.is_empty() {
            what.push(format!("set {}", add.join(", ")));
        }
        if !p.remove.is_empty() {
            what.push(format!("remove {}", p.remove.join(", ")));
        }
        format!("would {} on {}", what.join(" and "), ctx.job.resource.id)
    }

    fn statements(&self, p: &TagParams) -> Vec<Value> {
        use super::iam::*;
        let keys: Vec<&String> = p.add.keys().chain(&p.remove).collect();
        // Only these keys (never opsfleet's own: validate refuses them), never on a resource
        // that opted out.
        let only_these = serde_json::json!({
            "ForAllValues:StringEquals": { "aws:TagKeys": keys },
            "StringNotEquals": { "aws:ResourceTag/opsfleet:skip": "true" },
        });
        let mut actions = Vec::new();
        if !p.add.is_empty() {
            actions.push("ec2:CreateTags");
        }
        if !p.remove.is_empty() {
            actions.push("ec2:DeleteTags");
        }
        vec![
            allow(&["ec2:DescribeTags"], &["*"]),
            allow_if(&actions, &[INSTANCES, VOLUMES, SNAPSHOTS, IMAGES], only_these),
        ]
    }

    fn templates(&self, p: &TagParams) -> Vec<(String, String)> {
        p.add.iter().map(|(k, v)| (format!("add.{k}"), v.clone())).collect()
    }

    fn validate(&self, p: &TagParams) -> Result<(), String> {
        if p.add.is_empty() && p.remove.is_empty() {
            return Err("params: give tags to `add` or `remove`".into());
        }
        let keys = || p.add.keys().chain(&p.remove);
        if let Some(key) = keys().find(|k| k.to_ascii_lowercase().starts_with("aws:")) {
            return Err(format!("params: tag keys starting with `aws:` (any case) are AWS's own: `{key}`"));
        }
        // opsfleet's own tags say what it made, and what it may delete: a task never sets them.
        if let Some(key) = keys().find(|k| k.to_ascii_lowercase().starts_with("opsfleet:")) {
            return Err(format!("params: tag keys starting with `opsfleet:` are opsfleet's own: `{key}`"));
        }
        if let Some(key) = keys().find(|k| k.is_empty() || k.chars().count() > MAX_KEY) {
            return Err(format!("params: tag key `{key}` is not 1 to {MAX_KEY} characters"));
        }
        if let Some((key, _)) = p.add.iter().find(|(_, v)| v.chars().count() > MAX_VALUE) {
            return Err(format!("params: the value of tag `{key}` is over {MAX_VALUE} characters"));
        }
        Ok(())
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &TagParams) -> Step {
        let ec2 = or_step!(ctx.ec2().await);
        let id = ctx.job.resource.id.as_str();
        let before = or_step!(tags_of(&ec2, id).await);
        let as_tags: Vec<Ec2Tag> = before.iter().map(|(k, v)| tag(k, v)).collect();
        if let Some(skip) = opted_out(id, &as_tags) {
            return skip;
        }
        let add: BTreeMap<String, String> = p.add.iter().map(|(k, v)| (k.clone(), ctx.render(v))).collect();
        if !add.is_empty() {
            let tags: Vec<Ec2Tag> = add.iter().map(|(k, v)| tag(k, v)).collect();
            if let Err(e) = ec2.create_tags().resources(id).set_tags(Some(tags)).send().await {
                return failed("CreateTags", &e);
            }
        }
        let remove: Vec<Ec2Tag> =
            p.remove.iter().filter(|k| before.contains_key(*k)).map(|k| Ec2Tag::builder().key(k).build()).collect();
        if !remove.is_empty() {
            if let Err(e) = ec2.delete_tags().resources(id).set_tags(Some(remove)).send().await {
                return failed("DeleteTags", &e);
            }
        }
        self.verify(&ec2, id, &add, p).await
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &TagParams, _state: ()) -> Step {
        // Tags a read does not show yet are waited for; every tenth check sets them again (a
        // change made meanwhile by someone else).
        if ctx.check.checked_rem(RESET_EVERY) == Some(0) {
            return self.start(ctx, p).await;
        }
        let ec2 = or_step!(ctx.ec2().await);
        let add: BTreeMap<String, String> = p.add.iter().map(|(k, v)| (k.clone(), ctx.render(v))).collect();
        self.verify(&ec2, &ctx.job.resource.id, &add, p).await
    }
}

/// Every this many checks, a tag job whose tags still do not read back sets them again.
const RESET_EVERY: u32 = 10;

impl Tag {
    /// Done once the tags read back as asked; pending while a lagging read does not show them,
    /// which spends no retry.
    async fn verify(&self, ec2: &aws_sdk_ec2::Client, id: &str, add: &BTreeMap<String, String>, p: &TagParams) -> Step {
        let after = or_step!(tags_of(ec2, id).await);
        let missing: Vec<&String> = add.iter().filter(|(k, v)| after.get(*k) != Some(v)).map(|(k, _)| k).collect();
        let left: Vec<&String> = p.remove.iter().filter(|k| after.contains_key(*k)).collect();
        if !missing.is_empty() || !left.is_empty() {
            return Step::pending(std::time::Duration::from_secs(2), &());
        }
        Step::Done { summary: format!("{id}: {} tags set, {} removed", add.len(), p.remove.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(add: &[(&str, &str)], remove: &[&str]) -> TagParams {
        TagParams {
            add: add.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
            remove: remove.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    #[test]
    fn reserved_keys_and_oversized_tags_are_refused() {
        let t = Tag;
        assert!(t.validate(&params(&[("Team", "ops")], &[])).is_ok());
        for (add, remove, says) in [
            (vec![("AWS:cloudformation", "x")], vec![], "`aws:` (any case)"),
            (vec![("opsfleet:job", "forged")], vec![], "`opsfleet:` are opsfleet's own"),
            (vec![], vec!["OpsFleet:skip"], "`opsfleet:` are opsfleet's own"),
        ] {
            let err = t.validate(&params(&add, &remove)).expect_err("refused");
            assert!(err.contains(says), "{err}");
        }
        let long_key = "k".repeat(MAX_KEY + 1);
        assert!(t.validate(&params(&[(&long_key, "v")], &[])).is_err());
        let long_value = "v".repeat(MAX_VALUE + 1);
        assert!(t.validate(&params(&[("k", &long_value)], &[])).is_err());
    }
}
