//! `image-lifecycle`: an AMI's later life, as Data Lifecycle Manager's AMI policies have it —
//! deprecated `deprecate_after_days` after it was made (EC2 hides a deprecated image from
//! launch wizards and from other accounts' lists, and it still launches), and deregistered
//! with its snapshots `deregister_after_days` after it was made.
//!
//! Deregistration keeps opsfleet's guarantee: only an image opsfleet made (tagged
//! `opsfleet:job`), never one that is public, shared, protected, or the image of a launch
//! template's default or latest version (the next launch from it would fail). Deprecation
//! changes nothing that cannot be undone and applies to any image that has not opted out; an
//! image deprecated earlier than this task would is left as it is.
//!
//! Idempotent by nature: the deprecation time is computed from the image's creation date, so
//! every attempt sets the same one; an image already gone counts as deregistered. Each effect
//! is read back before the job is done (the deprecation time shows in describes a moment
//! after it is set; a deregistered image a moment after its call).

use super::ami_create::in_use_elsewhere;
use super::ec2::{failed, not_found, opted_out, JOB_TAG};
use super::{Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_ec2::primitives::{DateTime, DateTimeFormat};
use aws_sdk_ec2::types::{Image, ImageState};
use opsfleet_protocol::ResourceType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

const DAY_MS: u64 = 86_400_000;

/// The most days either age takes: ten years, EC2's furthest deprecation time.
pub const MAX_DAYS: u32 = 3_650;

/// The params of `image-lifecycle`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageLifecycleParams {
    /// Deprecate the image this many days after it was made (none: never).
    #[serde(default)]
    pub deprecate_after_days: Option<u32>,
    /// Deregister the image, with its snapshots, this many days after it was made; only
    /// images opsfleet made (none: never).
    #[serde(default)]
    pub deregister_after_days: Option<u32>,
    /// Seconds between the checks that read the effect back.
    #[serde(default = "default_check_secs")]
    pub check_after_secs: u64,
}

fn default_check_secs() -> u64 {
    5
}

/// What a pending `image-lifecycle` reads back.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// A deprecation was set.
    Deprecating {
        /// The time set, as sent (RFC 3339).
        at: String,
        /// What else the job found, for its summary (an image kept, and why).
        #[serde(default)]
        notes: Vec<String>,
    },
    /// The image was deregistered.
    Deregistering,
}

/// The `image-lifecycle` action.
pub struct ImageLifecycle;

async fn describe(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<Option<Image>, Step> {
    match ec2.describe_images().image_ids(id).send().await {
        Ok(out) => Ok(out.images().first().cloned()),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(failed("DescribeImages", &e)),
    }
}

fn millis(text: &str) -> Option<u64> {
    DateTime::from_str(text, DateTimeFormat::DateTime).ok().and_then(|t| u64::try_from(t.to_millis().ok()?).ok())
}

fn rfc3339(ms: u64) -> String {
    DateTime::from_millis(i64::try_from(ms).unwrap_or(i64::MAX)).fmt(DateTimeFormat::DateTime).unwrap_or_default()
}

/// When an image made at `made_ms` deprecates: `days` later, but no earlier than the next
/// whole minute after now (EC2 takes no time in the past and rounds to the minute).
pub fn deprecation_ms(made_ms: u64, days: u32, now_ms: u64) -> u64 {
    let due = made_ms.saturating_add(u64::from(days) * DAY_MS);
    let soonest = (now_ms / 60_000 + 2) * 60_000;
    due.max(soonest) / 60_000 * 60_000
}

/// The launch template whose default or latest version launches `image`, if any.
async fn launch_template_using(ec2: &aws_sdk_ec2::Client, image: &str) -> Result<Option<String>, Step> {
    let mut pages = ec2.describe_launch_templates().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| failed("DescribeLaunchTemplates", &e))?;
        for template in page.launch_templates() {
            let id = template.launch_template_id().unwrap_or_default();
            let versions = ec2
                .describe_launch_template_versions()
                .launch_template_id(id)
                .versions("$Latest")
                .versions("$Default")
                .send()
                .await
                .map_err(|e| failed("DescribeLaunchTemplateVersions", &e))?;
            let using = versions
                .launch_template_versions()
                .iter()
                .find(|v| v.launch_template_data().and_then(|d| d.image_id()) == Some(image));
            if let Some(v) = using {
                let name = template.launch_template_name().unwrap_or(id);
                return Ok(Some(format!("launch template {name} version {}", v.version_number().unwrap_or_default())));
            }
        }
    }
    Ok(None)
}

#[async_trait]
impl Action for ImageLifecycle {
    const NAME: &'static str = "image-lifecycle";
    type Params = ImageLifecycleParams;
    type State = Lifecycle;

    fn targets(&self) -> &'static [ResourceType] {
        &[ResourceType::Image]
    }

    fn examples(&self) -> Vec<ImageLifecycleParams> {
        vec![ImageLifecycleParams {
            deprecate_after_days: Some(30),
            deregister_after_days: Some(90),
            check_after_secs: default_check_secs(),
        }]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &ImageLifecycleParams) -> String {
        let mut rules = Vec::new();
        if let Some(d) = p.deprecate_after_days {
            rules.push(format!("deprecate it {d} days after it was made"));
        }
        if let Some(d) = p.deregister_after_days {
            rules.push(format!("deregister it with its snapshots {d} days after it was made, if opsfleet made it"));
        }
        format!("would {} ({})", rules.join(" and "), ctx.job.resource.id)
    }

    fn statements(&self, p: &ImageLifecycleParams) -> Vec<Value> {
        use super::iam::*;
        let mut out = vec![allow(&["ec2:DescribeImages"], &["*"])];
        if p.deprecate_after_days.is_some() {
            out.push(allow_if(&["ec2:EnableImageDeprecation"], &[IMAGES], not_opted_out()));
        }
        if p.deregister_after_days.is_some() {
            out.push(allow(
                &["ec2:DescribeImageAttribute", "ec2:DescribeLaunchTemplates", "ec2:DescribeLaunchTemplateVersions"],
                &["*"],
            ));
            out.push(allow_if(&["ec2:DeregisterImage"], &[IMAGES], made_by_opsfleet()));
            out.push(allow_if(&["ec2:DeleteSnapshot"], &[SNAPSHOTS], made_by_opsfleet()));
        }
        out
    }

    fn validate(&self, p: &ImageLifecycleParams) -> Result<(), String> {
        let (deprecate, deregister) = (p.deprecate_after_days, p.deregister_after_days);
        if deprecate.is_none() && deregister.is_none() {
            return Err("params: give `deprecate_after_days`, `deregister_after_days`, or both".into());
        }
        for (name, days) in [("deprecate_after_days", deprecate), ("deregister_after_days", deregister)] {
            if days.is_some_and(|d| d > MAX_DAYS) {
                return Err(format!("params: {name} is over {MAX_DAYS} (ten years)"));
            }
        }
        if let (Some(a), Some(b)) = (deprecate, deregister) {
            if b < a {
                return Err(format!("params: deregister_after_days {b} comes before deprecate_after_days {a}"));
            }
        }
        super::check_after_in_range(p.check_after_secs)
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &ImageLifecycleParams) -> Step {
        let ec2 = or_step!(ctx.ec2().await);
        let id = ctx.job.resource.id.as_str();
        let wait = Duration::from_secs(p.check_after_secs);
        let image = match or_step!(describe(&ec2, id).await) {
            Some(image) if image.state() != Some(&ImageState::Deregistered) => image,
            _ if p.deregister_after_days.is_some() => {
                return Step::Done { summary: format!("{id} is deregistered") };
            }
            _ => return Step::Skipped { reason: format!("image {id} does not exist") },
        };
        if let Some(skip) = opted_out(id, image.tags()) {
            return skip;
        }
        if image.state() != Some(&ImageState::Available) {
            let state = image.state().map_or("unknown", ImageState::as_str);
            return Step::Skipped { reason: format!("image {id} is {state}, not available") };
        }
        let Some(made_ms) = image.creation_date().and_then(millis) else {
            return Step::Failed { retryable: false, error: format!("image {id} has no creation date EC2 could read") };
        };
        let age_days = ctx.now_ms.saturating_sub(made_ms) / DAY_MS;
        let mut notes = Vec::new();
        if let Some(days) = p.deregister_after_days.filter(|d| age_days >= u64::from(*d)) {
            let made_by_us = image.tags().iter().any(|t| t.key() == Some(JOB_TAG));
            let spared = match (made_by_us, or_step!(in_use_elsewhere(&ec2, &image).await)) {
                (false, _) => Some("opsfleet did not make it".to_owned()),
                (true, Some(why)) => Some(format!("it is {why}")),
                (true, None) => or_step!(launch_template_using(&ec2, id).await).map(|t| format!("{t} launches it")),
            };
            match spared {
                Some(why) => notes.push(format!("{age_days} days old, past {days}, but kept: {why}")),
                None => {
                    return match ec2.deregister_image().image_id(id).delete_associated_snapshots(true).send().await {
                        Ok(_) => Step::pending(wait, &Lifecycle::Deregistering),
                        Err(e) if not_found(&e) => Step::Done { summary: format!("{id} is deregistered") },
                        Err(e) => failed("DeregisterImage", &e),
                    };
                }
            }
        }
        if let Some(days) = p.deprecate_after_days {
            let at = deprecation_ms(made_ms, days, ctx.now_ms);
            let earlier = image.deprecation_time().and_then(millis).filter(|set| *set <= at);
            if let Some(set) = earlier {
                notes.push(format!("deprecates at {} already", rfc3339(set)));
            } else {
                let when = DateTime::from_millis(i64::try_from(at).unwrap_or(i64::MAX));
                return match ec2.enable_image_deprecation().image_id(id).deprecate_at(when).send().await {
                    Ok(_) => Step::pending(wait, &Lifecycle::Deprecating { at: rfc3339(at), notes }),
                    Err(e) => failed("EnableImageDeprecation", &e),
                };
            }
        }
        if notes.is_empty() {
            notes.push(format!("{age_days} days old: nothing due"));
        }
        Step::Done { summary: format!("{id}: {}", notes.join("; ")) }
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &ImageLifecycleParams, state: Lifecycle) -> Step {
        let ec2 = or_step!(ctx.ec2().await);
        let id = ctx.job.resource.id.as_str();
        let image = or_step!(describe(&ec2, id).await);
        let pending = Step::pending(Duration::from_secs(p.check_after_secs), &state);
        match state {
            Lifecycle::Deregistering => match image {
                Some(image) if image.state() != Some(&ImageState::Deregistered) => pending,
                _ => Step::Done { summary: format!("{id} deregistered with its snapshots") },
            },
            Lifecycle::Deprecating { at, notes } => {
                let set = image.as_ref().and_then(|i| i.deprecation_time()).and_then(millis);
                match (image.as_ref(), set) {
                    (None, _) => Step::Failed { retryable: false, error: format!("image {id} is gone") },
                    (Some(_), Some(set)) if millis(&at).is_some_and(|want| set <= want) => {
                        let notes: String = notes.iter().map(|n| format!("; {n}")).collect();
                        Step::Done { summary: format!("{id} deprecates at {}{notes}", rfc3339(set)) }
                    }
                    _ => pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deprecation_is_its_age_after_creation_and_never_in_the_past() {
        let made = millis("2026-01-01T10:00:00.000Z").expect("a time");
        let now = millis("2026-01-10T12:34:56Z").expect("a time");
        assert_eq!(rfc3339(deprecation_ms(made, 30, now)), "2026-01-31T10:00:00Z");
        assert_eq!(rfc3339(deprecation_ms(made, 3, now)), "2026-01-10T12:36:00Z");
        // The same every attempt within a minute, so a retry sets what the first one did.
        assert_eq!(deprecation_ms(made, 30, now), deprecation_ms(made, 30, now + 50_000));
    }

    #[test]
    fn params_are_checked_with_a_reason() {
        let p = |a, b| ImageLifecycleParams { deprecate_after_days: a, deregister_after_days: b, check_after_secs: 5 };
        let lifecycle = ImageLifecycle;
        assert!(lifecycle.validate(&p(None, None)).unwrap_err().contains("give `deprecate_after_days`"));
        assert!(lifecycle.validate(&p(Some(30), Some(10))).unwrap_err().contains("comes before"));
        assert!(lifecycle.validate(&p(Some(4000), None)).unwrap_err().contains("over 3650"));
        assert!(lifecycle.validate(&p(Some(30), Some(90))).is_ok());
    }
}
