//! `image-copy`: a copy of an AMI in another region; done when the copy is `available`, then
//! older copies this task made of the same image there are deregistered beyond `retain`, with
//! their snapshots. Takes a slot of the `image-copy` limit, pooled by account and destination
//! region (EC2 runs a bounded number of concurrent AMI copies into a region).
//!
//! Idempotent by job twice over: `CopyImage` carries a client token derived from the job's id,
//! so a copy sent again (a lost reply, a retry) is answered with the first copy; and before
//! copying it looks in the destination for an image tagged with the job's id (again after
//! EC2's consistency window on a later attempt). The copy and its snapshots are tagged as they
//! are made. A copy not found right after it was made is waited for, not failed.

use super::ami_create::{images, retire_images};
use super::ec2::{create_failed, failed, look_before_making, made_tags, not_found, not_visible, opted_out, spec};
use super::snapshot_copy::kms_statements;
use super::{default_check_after_secs, Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_ec2::types::{ImageState, ResourceType as Ec2Type};
use opsfleet_protocol::config::LimitDefault;
use opsfleet_protocol::resource::looks_like_region;
use opsfleet_protocol::ResourceType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The params of `image-copy`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageCopyParams {
    /// The region to copy into.
    pub destination_region: String,
    /// A KMS key of the destination to encrypt the copy's snapshots with (none: encrypted as
    /// the source).
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// The copy's name, a template (unique per account and region).
    #[serde(default = "default_name")]
    pub name: String,
    /// The copy's description, a template.
    #[serde(default = "default_description")]
    pub description: String,
    /// More tags on the copy and its snapshots, values are templates.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Keep the newest N copies this task made of the source image in the destination;
    /// deregister older ones with their snapshots (none: keep all).
    #[serde(default)]
    pub retain: Option<u32>,
    /// Seconds until the first completion check.
    #[serde(default = "default_check_after_secs")]
    pub check_after_secs: u64,
}

fn default_name() -> String {
    "{task}-{id}-{datetime}".into()
}

fn default_description() -> String {
    "opsfleet {task}: copy of {id} from {region}".into()
}

/// The copy a pending `image-copy` waits for.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ImageCopying {
    /// The copy; none while the source is not available yet.
    #[serde(default)]
    pub copy: Option<String>,
    /// When the copy was made, Unix ms.
    #[serde(default)]
    pub made_ms: u64,
}

/// The `image-copy` action.
pub struct ImageCopy;

/// The `CopyImage` client token of a job: the same for every attempt, at most the 64
/// characters EC2 takes (a job id is 32 hex digits).
pub fn client_token(job_id: &str) -> String {
    format!("opsfleet-{job_id}").chars().take(64).collect()
}

#[async_trait]
impl Action for ImageCopy {
    const NAME: &'static str = "image-copy";
    type Params = ImageCopyParams;
    type State = ImageCopying;

    fn targets(&self) -> &'static [ResourceType] {
        &[ResourceType::Image]
    }

    fn limit(&self) -> Option<LimitDefault> {
        Some(LimitDefault { name: "image-copy".into(), max: 10, pool: "{account}/{params.destination_region}".into() })
    }

    fn examples(&self) -> Vec<ImageCopyParams> {
        vec![ImageCopyParams {
            destination_region: "eu-west-1".into(),
            kms_key_id: None,
            name: default_name(),
            description: default_description(),
            tags: BTreeMap::new(),
            retain: Some(3),
            check_after_secs: default_check_after_secs(),
        }]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &ImageCopyParams) -> String {
        format!(
            "would copy {} from {} to {}{}",
            ctx.job.resource.id,
            ctx.job.resource.region,
            p.destination_region,
            p.retain.map(|n| format!(" and keep the newest {n} copies this task made there")).unwrap_or_default()
        )
    }

    fn validate(&self, p: &ImageCopyParams) -> Result<(), String> {
        if !looks_like_region(&p.destination_region) {
            return Err(format!("params: destination_region `{}` is not a region", p.destination_region));
        }
        if let Some(region) =
            p.kms_key_id.as_deref().and_then(|k| k.strip_prefix("arn:aws:kms:")).and_then(|r| r.split(':').next())
        {
            if region != p.destination_region {
                return Err(format!(
                    "params: kms_key_id is in {region}, not in destination_region {} (a copy is encrypted with a key of \
                     its own region)",
                    p.destination_region
                ));
            }
        }
        super::check_after_in_range(p.check_after_secs)
    }

    fn statements(&self, p: &ImageCopyParams) -> Vec<Value> {
        use super::iam::*;
        let mut out = vec![
            allow(&["ec2:DescribeImages"], &["*"]),
            allow(&["ec2:CopyImage"], &[IMAGES, SNAPSHOTS]),
            allow_if(&["ec2:CreateTags"], &[IMAGES, SNAPSHOTS], on_create(&["CopyImage"])),
        ];
        if p.retain.is_some() {
            out.push(allow(&["ec2:DescribeImageAttribute"], &["*"]));
            out.push(allow_if(&["ec2:DeregisterImage"], &[IMAGES], made_by_opsfleet()));
            out.push(allow_if(&["ec2:DeleteSnapshot"], &[SNAPSHOTS], made_by_opsfleet()));
        }
        out.extend(kms_statements(p.kms_key_id.as_deref(), &p.destination_region));
        out
    }

    fn templates(&self, p: &ImageCopyParams) -> Vec<(String, String)> {
        let mut out = vec![("name".to_owned(), p.name.clone()), ("description".to_owned(), p.description.clone())];
        out.extend(p.tags.iter().map(|(k, v)| (format!("tags.{k}"), v.clone())));
        out
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &ImageCopyParams) -> Step {
        let r = &ctx.job.resource;
        let (source, dest) = (or_step!(ctx.ec2().await), or_step!(ctx.ec2_in(&p.destination_region).await));
        let job_tag = format!("tag:{}", super::ec2::JOB_TAG);
        let look = || async {
            let found = images(&dest, &[(&job_tag, &ctx.job.id)]).await?;
            Ok(found.first().and_then(|i| i.image_id()).map(str::to_owned))
        };
        if let Some(copy) = or_step!(look_before_making(&ctx, look).await) {
            let state = ImageCopying { copy: Some(copy), made_ms: ctx.now_ms };
            return self.check(ctx, p, state).await.checked_after(Duration::from_secs(p.check_after_secs));
        }
        let original = match source.describe_images().image_ids(&r.id).send().await {
            Ok(out) => out.images().first().cloned(),
            Err(e) if not_found(&e) => None,
            Err(e) => return failed("DescribeImages", &e),
        };
        let Some(original) = original else {
            return Step::Failed { retryable: false, error: format!("image {} does not exist in {}", r.id, r.region) };
        };
        if let Some(skip) = opted_out(&r.id, original.tags()) {
            return skip;
        }
        match original.state() {
            Some(ImageState::Available) => {}
            Some(ImageState::Pending) | None => {
                // An image copies once it is available.
                return Step::pending(Duration::from_secs(p.check_after_secs), &ImageCopying::default());
            }
            Some(other) => {
                return Step::Failed { retryable: false, error: format!("source image {} is {}", r.id, other.as_str()) }
            }
        }
        let tags = made_tags(&ctx, &r.id, original.tags(), &p.tags);
        let mut request = dest
            .copy_image()
            .source_region(&r.region)
            .source_image_id(&r.id)
            .name(super::ami_create::image_name(&ctx.render(&p.name)))
            .description(ctx.render(&p.description))
            .client_token(client_token(&ctx.job.id))
            .tag_specifications(spec(Ec2Type::Image, &tags))
            .tag_specifications(spec(Ec2Type::Snapshot, &tags));
        if let Some(key) = &p.kms_key_id {
            request = request.encrypted(true).kms_key_id(key);
        }
        // The client token makes a repeat of this call safe: the SDK may retry it.
        let copy = match request.send().await {
            Ok(out) => out.image_id().unwrap_or_default().to_owned(),
            Err(e) => return create_failed("CopyImage", &e),
        };
        let state = ImageCopying { copy: Some(copy), made_ms: ctx.now_ms };
        self.check(ctx, p, state).await.checked_after(Duration::from_secs(p.check_after_secs))
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &ImageCopyParams, state: ImageCopying) -> Step {
        let Some(copy) = state.copy.clone() else {
            // The source was not available yet: start over (finding no copy, or its own).
            return self.start(ctx, p).await;
        };
        let r = &ctx.job.resource;
        let dest = or_step!(ctx.ec2_in(&p.destination_region).await);
        let pending = || Step::pending(Duration::from_secs(p.check_after_secs), &state);
        let found = match dest.describe_images().image_ids(&copy).send().await {
            Ok(out) => out.images().first().and_then(|i| i.state().cloned()),
            // Right after the copy was made, a describe by id may not know it yet.
            Err(e) if not_found(&e) => None,
            Err(e) => return failed("DescribeImages", &e),
        };
        match found {
            Some(ImageState::Available) => {}
            Some(ImageState::Pending) => return pending(),
            Some(other) => {
                return Step::Failed {
                    retryable: false,
                    error: format!("copy {copy} ended in state {}", other.as_str()),
                }
            }
            None => return not_visible("copy", &copy, state.made_ms, &ctx, pending()),
        }
        let retired = match p.retain {
            Some(keep) => or_step!(retire_images(&dest, &ctx.job.task, &r.id, keep, &copy).await),
            None => String::new(),
        };
        Step::Done { summary: format!("{} copied to {copy} in {}{retired}", r.id, p.destination_region) }
    }
}
