//! `ami-create`: an AMI of an instance, without a reboot by default; done when the image is
//! `available`, then older AMIs this task made of the instance are deregistered beyond
//! `retain`, with their snapshots.
//!
//! Idempotent by job: before creating, it looks for an image tagged with the job's id.

use super::ec2::{failed, filter, made_tags, not_found, opted_out, spec, JOB_TAG, SOURCE_TAG, TASK_TAG};
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
}

/// The `ami-create` action.
pub struct AmiCreate;

/// An AMI name from a rendered template: the characters EC2 takes, 3 to 128 of them.
fn image_name(rendered: &str) -> String {
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
async fn images(ec2: &Client, filters: &[(&str, &str)]) -> Result<Vec<Image>, Step> {
    let mut request = ec2.describe_images().owners("self");
    for (name, value) in filters {
        request = request.filters(filter(name, value));
    }
    let out = request.send().await.map_err(|e| failed("DescribeImages", &e))?;
    let mut images = out.images().to_vec();
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
            allow_if(&["ec2:CreateTags"], &[IMAGES], on_create(&["CreateImage"])),
            allow_if(&["ec2:CreateTags"], &[SNAPSHOTS], tagged_by_opsfleet()),
        ];
        if p.retain.is_some() {
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
        let existing = match images(&ec2, &[(&format!("tag:{JOB_TAG}"), &ctx.job.id)]).await {
            Ok(found) => found.first().and_then(|i| i.image_id()).map(str::to_owned),
            Err(step) => return step,
        };
        let image = match existing {
            Some(image) => image,
            None => {
                let tags = made_tags(&ctx, id, &[], &p.tags);
                let created = ec2
                    .create_image()
                    .instance_id(id)
                    .name(image_name(&ctx.render(&p.name)))
                    .no_reboot(p.no_reboot)
                    .tag_specifications(spec(Ec2Type::Image, &tags))
                    .send()
                    .await;
                match created {
                    Ok(out) => out.image_id().unwrap_or_default().to_owned(),
                    Err(e) => return failed("CreateImage", &e),
                }
            }
        };
        self.check(ctx, p, Imaging { image }).await.checked_after(Duration::from_secs(p.check_after_secs))
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &AmiCreateParams, state: Imaging) -> Step {
        let ec2 = or_step!(ctx.ec2().await);
        let image = state.image.as_str();
        let described = match ec2.describe_images().image_ids(image).send().await {
            Ok(out) => out.images().first().cloned(),
            Err(e) if not_found(&e) => None,
            Err(e) => return failed("DescribeImages", &e),
        };
        let found = described.as_ref().and_then(|i| i.state().cloned());
        match found {
            Some(ImageState::Available) => {}
            Some(ImageState::Failed | ImageState::Error | ImageState::Invalid | ImageState::Deregistered) => {
                return Step::Failed { retryable: false, error: format!("image {image} ended in state {:?}", found) }
            }
            Some(_) => return Step::pending(Duration::from_secs(p.check_after_secs), &state),
            None => return Step::Failed { retryable: true, error: format!("image {image} is not found (yet)") },
        }
        // The image's snapshots carry the job's tags too (tagged here rather than at creation,
        // where not every EC2 endpoint takes snapshot tags), so retention may delete them.
        let snapshots: Vec<String> = described
            .iter()
            .flat_map(|i| i.block_device_mappings())
            .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
            .map(str::to_owned)
            .collect();
        if !snapshots.is_empty() {
            let tags = made_tags(&ctx, &ctx.job.resource.id, &[], &p.tags);
            if let Err(e) = ec2.create_tags().set_resources(Some(snapshots)).set_tags(Some(tags)).send().await {
                return failed("CreateTags", &e);
            }
        }
        let mut deregistered = 0;
        if let Some(keep) = p.retain {
            let made = match images(
                &ec2,
                &[(&format!("tag:{TASK_TAG}"), &ctx.job.task), (&format!("tag:{SOURCE_TAG}"), &ctx.job.resource.id)],
            )
            .await
            {
                Ok(made) => made,
                Err(step) => return step,
            };
            // The image just made is one of those kept, whatever the clock says of the others.
            let older =
                made.iter().filter(|i| i.state() == Some(&ImageState::Available) && i.image_id() != Some(image));
            for old in older.skip(keep.saturating_sub(1) as usize) {
                let old_id = old.image_id().unwrap_or_default();
                match ec2.deregister_image().image_id(old_id).send().await {
                    Ok(_) => deregistered += 1,
                    Err(e) if not_found(&e) => {}
                    Err(e) => return failed("DeregisterImage", &e),
                }
                for snapshot in old.block_device_mappings().iter().filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
                {
                    match ec2.delete_snapshot().snapshot_id(snapshot).send().await {
                        Ok(_) => {}
                        Err(e) if not_found(&e) => {}
                        Err(e) => return failed("DeleteSnapshot", &e),
                    }
                }
            }
        }
        Step::Done {
            summary: match p.retain {
                Some(keep) => format!("image {image} available; {deregistered} older deregistered, newest {keep} kept"),
                None => format!("image {image} available"),
            },
        }
    }
}
