//! `ami-create`: an AMI of an instance, without a reboot by default; done when the image is
//! `available`, then older AMIs this task made of the instance are deregistered beyond
//! `retain`, with their snapshots.
//!
//! Idempotent by job: before creating, it looks for an image tagged with the job's id.

use super::ec2::{failed, filter, made_tags, not_found, opted_out, spec, JOB_TAG, SOURCE_TAG, TASK_TAG};
use super::{default_check_after_secs, parse_params, Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_ec2::types::{Image, ImageState, ResourceType as Ec2Type};
use aws_sdk_ec2::Client;
use opsfleet_protocol::ResourceType;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The params of `ami-create`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmiCreateParams {
    /// Image the instance without rebooting it (a crash-consistent image).
    #[serde(default = "yes")]
    pub no_reboot: bool,
    /// The image's name (a template; unique per account and region).
    #[serde(default = "default_name")]
    pub name: String,
    /// Keep the newest this many images this task made of the instance; deregister older ones
    /// and delete their snapshots.
    #[serde(default)]
    pub retain: Option<u32>,
    /// More tags on the image and its snapshots (values are templates).
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

/// The `ami-create` action.
pub struct AmiCreate;

impl AmiCreate {
    fn params(ctx: &ActionContext<'_>) -> Result<AmiCreateParams, Step> {
        parse_params(&ctx.job.params).map_err(|error| Step::Failed { retryable: false, error })
    }
}

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
    fn name(&self) -> &'static str {
        "ami-create"
    }

    fn targets(&self) -> &'static [ResourceType] {
        &[ResourceType::Instance]
    }

    fn describe(&self, ctx: ActionContext<'_>) -> String {
        match Self::params(&ctx) {
            Ok(p) => format!(
                "would image {} as `{}`{}{}",
                ctx.job.resource.id,
                image_name(&ctx.render(&p.name)),
                if p.no_reboot { " without a reboot" } else { " with a reboot" },
                p.retain.map(|n| format!(" and keep the newest {n} this task made")).unwrap_or_default()
            ),
            Err(_) => format!("would image {}", ctx.job.resource.id),
        }
    }

    fn iam_actions(&self) -> &'static [&'static str] {
        &[
            "ec2:DescribeInstances",
            "ec2:DescribeImages",
            "ec2:CreateImage",
            "ec2:CreateTags",
            "ec2:DeregisterImage",
            "ec2:DeleteSnapshot",
        ]
    }

    fn iam_statements(&self, params: &Value) -> Vec<Value> {
        use super::iam::*;
        let mut out = vec![
            allow(&["ec2:DescribeInstances", "ec2:DescribeImages"], &["*"]),
            allow(&["ec2:CreateImage"], &[INSTANCES, IMAGES, SNAPSHOTS]),
            allow_if(&["ec2:CreateTags"], &[IMAGES], on_create(&["CreateImage"])),
            allow_if(&["ec2:CreateTags"], &[SNAPSHOTS], tagged_by_opsfleet()),
        ];
        if parse_params::<AmiCreateParams>(params).is_ok_and(|p| p.retain.is_some()) {
            out.push(allow_if(&["ec2:DeregisterImage"], &[IMAGES], made_by_opsfleet()));
            out.push(allow_if(&["ec2:DeleteSnapshot"], &[SNAPSHOTS], made_by_opsfleet()));
        }
        out
    }

    fn params_help(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("no_reboot", "image without rebooting the instance (default true)"),
            ("name", "the image name, a template (default \"{task}-{id}-{datetime}\")"),
            ("retain", "keep the newest N images this task made of the instance; deregister older ones and delete their snapshots (default: keep all)"),
            ("tags", "more tags on the image and its snapshots, values are templates (default none)"),
            ("check_after_secs", "seconds until the first completion check (default 15)"),
        ]
    }

    fn templates(&self, params: &Value) -> Vec<(String, String)> {
        let Ok(p) = parse_params::<AmiCreateParams>(params) else { return Vec::new() };
        let mut out = vec![("name".to_owned(), p.name)];
        out.extend(p.tags.into_iter().map(|(k, v)| (format!("tags.{k}"), v)));
        out
    }

    fn check_params(&self, params: &Value) -> Result<(), String> {
        parse_params::<AmiCreateParams>(params).map(|_| ())
    }

    async fn start(&self, ctx: ActionContext<'_>) -> Step {
        let p = or_step!(Self::params(&ctx));
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
        let state = json!({ "image": image });
        self.check(ctx, &state).await.checked_after(Duration::from_secs(p.check_after_secs))
    }

    async fn check(&self, ctx: ActionContext<'_>, state: &Value) -> Step {
        let p = or_step!(Self::params(&ctx));
        let ec2 = or_step!(ctx.ec2().await);
        let image = state["image"].as_str().unwrap_or_default();
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
            Some(_) => {
                return Step::Pending { check_after: Duration::from_secs(p.check_after_secs), state: state.clone() }
            }
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
