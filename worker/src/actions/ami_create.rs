//! `ami-create`: an AMI of an instance, without a reboot by default; done when the image is
//! `available`, then older AMIs this task made of the instance are deregistered beyond
//! `retain`, with their snapshots.
//!
//! The image and its snapshots are tagged as they are made (`CreateImage` tag specifications):
//! the role never needs to tag an existing snapshot.
//!
//! Idempotent by job: before creating, it looks for an image tagged with the job's id (again
//! after EC2's consistency window on a later attempt). Its name renders from the job's event
//! time, so a create that lost its reply meets `InvalidAMIName.Duplicate` on the next attempt
//! and adopts the image when it carries the job's tag. Retention never deregisters an image
//! that is public, shared with other accounts or protected from deregistration, and
//! deregisters with `DeleteAssociatedSnapshots`, so no snapshot is left behind.

use super::ec2::{
    create_failed, failed, filter, look_before_making, made_tags, not_found, not_visible, opted_out, sent_once, spec,
    JOB_TAG, SOURCE_TAG, TASK_TAG,
};
use super::{default_check_after_secs, Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_ec2::types::{Image, ImageState, ResourceType as Ec2Type};
use aws_sdk_ec2::Client;
use opsfleet_protocol::ResourceType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The params of `ami-create`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmiCreateParams {
    /// Image without rebooting the instance (a crash-consistent image).
    #[serde(default = "yes")]
    pub no_reboot: bool,
    /// The image name, a template (unique per account and region).
    #[serde(default = "default_name")]
    pub name: String,
    /// Keep the newest N images this task made of the instance; deregister older ones and
    /// delete their snapshots (none: keep all).
    #[serde(default)]
    pub retain: Option<u32>,
    /// More tags on the image and its snapshots, values are templates.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Seconds until the first completion check.
    #[serde(default = "default_check_after_secs")]
    pub check_after_secs: u64,
}

fn yes() -> bool {
    true
}

fn default_name() -> String {
    "{task}-{id}-{datetime}".into()
}

/// The image a pending `ami-create` waits for.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Imaging {
    /// The image.
    #[serde(default)]
    pub image: String,
    /// When it was made, Unix ms (0 in states written before it was recorded).
    #[serde(default)]
    pub made_ms: u64,
}

/// The `ami-create` action.
pub struct AmiCreate;

/// An AMI name from a rendered template: the characters EC2 takes, 3 to 128 of them.
pub(super) fn image_name(rendered: &str) -> String {
    let mut name: String = rendered
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c) { c } else { '-' })
        .take(128)
        .collect();
    while name.len() < 3 {
        name.push('-');
    }
    name
}

/// The images this account owns tagged with a key and value, newest first.
pub(super) async fn images(ec2: &Client, filters: &[(&str, &str)]) -> Result<Vec<Image>, Step> {
    let mut request = ec2.describe_images().owners("self");
    for (name, value) in filters {
        request = request.filters(filter(name, value));
    }
    let mut pages = request.into_paginator().send();
    let mut images = Vec::new();
    while let Some(page) = pages.next().await {
        images.extend(page.map_err(|e| failed("DescribeImages", &e))?.images().iter().cloned());
    }
    images.sort_by(|a, b| b.creation_date().cmp(&a.creation_date()));
    Ok(images)
}

#[async_trait]
impl Action for AmiCreate {
    const NAME: &'static str = "ami-create";
    type Params = AmiCreateParams;
    type State = Imaging;

    fn targets(&self) -> &'static [ResourceType] {
        &[ResourceType::Instance]
    }

    fn examples(&self) -> Vec<AmiCreateParams> {
        vec![AmiCreateParams {
            no_reboot: true,
            name: default_name(),
            retain: Some(3),
            tags: BTreeMap::from([("Backup".into(), "{task}".into())]),
            check_after_secs: default_check_after_secs(),
        }]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &AmiCreateParams) -> String {
        format!(
            "would image {} as `{}`{}{}",
            ctx.job.resource.id,
            image_name(&ctx.render(&p.name)),
            if p.no_reboot { " without a reboot" } else { " with a reboot" },
            p.retain.map(|n| format!(" and keep the newest {n} this task made")).unwrap_or_default()
        )
    }

    fn validate(&self, p: &AmiCreateParams) -> Result<(), String> {
        super::check_after_in_range(p.check_after_secs)
    }

    fn statements(&self, p: &AmiCreateParams) -> Vec<Value> {
        use super::iam::*;
        let mut out = vec![
            allow(&["ec2:DescribeInstances", "ec2:DescribeImages"], &["*"]),
            allow(&["ec2:CreateImage"], &[INSTANCES, IMAGES, SNAPSHOTS]),
            allow_if(&["ec2:CreateTags"], &[IMAGES, SNAPSHOTS], on_create(&["CreateImage"])),
        ];
        if p.retain.is_some() {
            out.push(allow(&["ec2:DescribeImageAttribute"], &["*"]));
            out.push(allow_if(&["ec2:DeregisterImage"], &[IMAGES], made_by_opsfleet()));
            out.push(allow_if(&["ec2:DeleteSnapshot"], &[SNAPSHOTS], made_by_opsfleet()));
        }
        out
    }

    fn templates(&self, p: &AmiCreateParams) -> Vec<(String, String)> {
        let mut out = vec![("name".to_owned(), p.name.clone())];
        out.extend(p.tags.iter().map(|(k, v)| (format!("tags.{k}"), v.clone())));
        out
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &AmiCreateParams) -> Step {
        let ec2 = or_step!(ctx.ec2().await);
        let id = &ctx.job.resource.id;
        let instance = match ec2.describe_instances().instance_ids(id).send().await {
            Ok(out) => out.reservations().iter().flat_map(|r| r.instances()).next().cloned(),
            Err(e) if not_found(&e) => None,
            Err(e) => return failed("DescribeInstances", &e),
        };
        let Some(instance) = instance else {
            return Step::Failed { retryable: false, error: format!("instance {id} does not exist") };
        };
        if let Some(skip) = opted_out(id, instance.tags()) {
            return skip;
        }
        let job_tag = format!("tag:{JOB_TAG}");
        let look = || async {
            let found = images(&ec2, &[(&job_tag, &ctx.job.id)]).await?;
            Ok(found.first().and_then(|i| i.image_id()).map(str::to_owned))
        };
        let image = match or_step!(look_before_making(&ctx, look).await) {
            Some(image) => image,
            None => or_step!(make(&ec2, &ctx, p).await),
        };
        let state = Imaging { image, made_ms: ctx.now_ms };
        self.check(ctx, p, state).await.checked_after(Duration::from_secs(p.check_after_secs))
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &AmiCreateParams, state: Imaging) -> Step {
        let ec2 = or_step!(ctx.ec2().await);
        let image = state.image.as_str();
        let described = match ec2.describe_images().image_ids(image).send().await {
            Ok(out) => out.images().first().cloned(),
            // Right after its create, a describe by id may not know the image yet.
            Err(e) if not_found(&e) => None,
            Err(e) => return failed("DescribeImages", &e),
        };
        let found = described.as_ref().and_then(|i| i.state().cloned());
        let pending = || Step::pending(Duration::from_secs(p.check_after_secs), &state);
        match found {
            Some(ImageState::Available) => {}
            Some(ImageState::Failed | ImageState::Error | ImageState::Invalid | ImageState::Deregistered) => {
                return Step::Failed { retryable: false, error: format!("image {image} ended in state {:?}", found) }
            }
            Some(_) => return pending(),
            None => return not_visible("image", image, state.made_ms, &ctx, pending()),
        }
        let retired = match p.retain {
            Some(keep) => or_step!(retire_images(&ec2, &ctx.job.task, &ctx.job.resource.id, keep, image).await),
            None => String::new(),
        };
        Step::Done { summary: format!("image {image} available{retired}") }
    }
}

/// Deregisters, with their snapshots, the available images this task made of `source` beyond
/// the newest `keep` (never `current`, nor one in use elsewhere); says what it did.
pub(super) async fn retire_images(
    ec2: &Client,
    task: &str,
    source: &str,
    keep: u32,
    current: &str,
) -> Result<String, Step> {
    let made = images(ec2, &[(&format!("tag:{TASK_TAG}"), task), (&format!("tag:{SOURCE_TAG}"), source)]).await?;
    // The image just made is one of those kept, whatever the clock says of the others.
    let older = made.iter().filter(|i| i.state() == Some(&ImageState::Available) && i.image_id() != Some(current));
    let (mut deregistered, mut spared) = (0, Vec::new());
    for old in older.skip(keep.saturating_sub(1) as usize) {
        let old_id = old.image_id().unwrap_or_default();
        if let Some(why) = in_use_elsewhere(ec2, old).await? {
            spared.push(format!("{old_id} ({why})"));
            continue;
        }
        match ec2.deregister_image().image_id(old_id).delete_associated_snapshots(true).send().await {
            Ok(_) => deregistered += 1,
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(failed("DeregisterImage", &e)),
        }
    }
    let spared =
        if spared.is_empty() { String::new() } else { format!("; kept as in use elsewhere: {}", spared.join(", ")) };
    Ok(format!("; {deregistered} older deregistered, newest {keep} kept{spared}"))
}

/// Makes the image, tagging it and its snapshots as they are made. A name taken by an image
/// carrying this job's tag (a create whose reply was lost) is that image.
async fn make(ec2: &Client, ctx: &ActionContext<'_>, p: &AmiCreateParams) -> Result<String, Step> {
    let id = &ctx.job.resource.id;
    let name = image_name(&ctx.render(&p.name));
    let tags = made_tags(ctx, id, &[], &p.tags);
    let created = ec2
        .create_image()
        .instance_id(id)
        .name(&name)
        .no_reboot(p.no_reboot)
        .tag_specifications(spec(Ec2Type::Image, &tags))
        .tag_specifications(spec(Ec2Type::Snapshot, &tags))
        .customize()
        .config_override(sent_once())
        .send()
        .await;
    match created {
        Ok(out) => Ok(out.image_id().unwrap_or_default().to_owned()),
        Err(e) if e.as_service_error().and_then(|s| s.meta().code()) == Some("InvalidAMIName.Duplicate") => {
            let named = images(ec2, &[("name", &name)]).await?;
            let mine = named
                .iter()
                .find(|i| i.tags().iter().any(|t| t.key() == Some(JOB_TAG) && t.value() == Some(ctx.job.id.as_str())));
            match mine {
                Some(image) => Ok(image.image_id().unwrap_or_default().to_owned()),
                // The name is taken and no describe shows the image yet: this job's own, made
                // moments ago, or another's; the next attempt finds out.
                None if named.is_empty() => Err(Step::Failed {
                    retryable: true,
                    error: format!(
                        "CreateImage: InvalidAMIName.Duplicate: an image named `{name}` exists that no \
                                    describe shows yet"
                    ),
                }),
                None => Err(Step::Failed {
                    retryable: false,
                    error: format!(
                        "an image named `{name}` exists and was not made by this job; give `name` a \
                                    placeholder that differs per job, such as {{datetime}}"
                    ),
                }),
            }
        }
        Err(e) => Err(create_failed("CreateImage", &e)),
    }
}

/// Why an image must not be deregistered though retention would: public, shared with other
/// accounts, or protected from deregistration.
pub(super) async fn in_use_elsewhere(ec2: &Client, image: &Image) -> Result<Option<&'static str>, Step> {
    if image.public() == Some(true) {
        return Ok(Some("public"));
    }
    if image.deregistration_protection().is_some_and(|p| p.starts_with("enabled")) {
        return Ok(Some("deregistration protection"));
    }
    let id = image.image_id().unwrap_or_default();
    let attribute = ec2
        .describe_image_attribute()
        .image_id(id)
        .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
        .send()
        .await;
    match attribute {
        Ok(out) if !out.launch_permissions().is_empty() => Ok(Some("shared")),
        Ok(_) => Ok(None),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(failed("DescribeImageAttribute", &e)),
    }
}
