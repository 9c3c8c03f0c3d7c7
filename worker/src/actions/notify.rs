//! `notify`: publishes a JSON summary of the event, the job and the resource to an SNS topic.
//! On a FIFO topic the job's id deduplicates the message; a standard topic may deliver a
//! redelivered job's message twice (SNS offers no deduplication there).

use super::{parse_params, Action, ActionContext, Step};
use async_trait::async_trait;
use opsfleet_protocol::resource::Arn;
use opsfleet_protocol::ResourceType;
use serde::Deserialize;
use serde_json::{json, Value};

/// The params of `notify`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyParams {
    /// The topic's ARN.
    pub topic_arn: String,
    /// The subject (a template; SNS takes up to 100 characters for email).
    #[serde(default = "default_subject")]
    pub subject: String,
}

fn default_subject() -> String {
    "opsfleet {task}: {id}".into()
}

/// The `notify` action.
pub struct Notify;

impl Notify {
    fn params(ctx: &ActionContext<'_>) -> Result<NotifyParams, Step> {
        parse_params(&ctx.job.params).map_err(|error| Step::Failed { retryable: false, error })
    }
}

/// The message a job publishes.
pub fn summary(ctx: &ActionContext<'_>) -> Value {
    let job = ctx.job;
    json!({
        "source": "opsfleet",
        "task": job.task,
        "job": job.id,
        "event": { "id": job.event_id, "time": job.event_time, "fields": job.event_fields },
        "resource": job.resource,
        "attempt": ctx.attempt,
    })
}

/// A subject SNS takes: printable ASCII, at most 100 characters, not starting with a space.
fn subject(text: &str) -> String {
    let cleaned: String =
        text.chars().map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '?' }).take(100).collect();
    let trimmed = cleaned.trim_start().to_owned();
    if trimmed.is_empty() {
        "opsfleet".into()
    } else {
        trimmed
    }
}

#[async_trait]
impl Action for Notify {
    fn name(&self) -> &'static str {
        "notify"
    }

    fn targets(&self) -> &'static [ResourceType] {
        &ResourceType::ALL
    }

    fn describe(&self, ctx: ActionContext<'_>) -> String {
        match Self::params(&ctx) {
            Ok(p) => format!(
                "would publish `{}` about {} to {}",
                subject(&ctx.render(&p.subject)),
                ctx.job.resource.id,
                p.topic_arn
            ),
            Err(_) => format!("would publish about {}", ctx.job.resource.id),
        }
    }

    fn iam_actions(&self) -> &'static [&'static str] {
        &["sns:Publish"]
    }

    fn iam_statements(&self, params: &Value) -> Vec<Value> {
        match parse_params::<NotifyParams>(params) {
            Ok(p) => vec![json!({ "Effect": "Allow", "Action": ["sns:Publish"], "Resource": p.topic_arn })],
            Err(_) => Vec::new(),
        }
    }

    fn params_help(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("topic_arn", "the SNS topic's ARN (required)"),
            ("subject", "the subject, a template (default \"opsfleet {task}: {id}\")"),
        ]
    }

    fn templates(&self, params: &Value) -> Vec<(String, String)> {
        parse_params::<NotifyParams>(params).map(|p| vec![("subject".to_owned(), p.subject)]).unwrap_or_default()
    }

    fn check_params(&self, params: &Value) -> Result<(), String> {
        let p: NotifyParams = parse_params(params)?;
        match Arn::parse(&p.topic_arn) {
            Some(arn) if arn.service == "sns" && !arn.region.is_empty() && !arn.account.is_empty() => Ok(()),
            _ => Err(format!("params: topic_arn `{}` is not an SNS topic ARN", p.topic_arn)),
        }
    }

    async fn start(&self, ctx: ActionContext<'_>) -> Step {
        let p = or_step!(Self::params(&ctx));
        let Some(arn) = Arn::parse(&p.topic_arn) else {
            return Step::Failed { retryable: false, error: format!("topic_arn `{}` is not an ARN", p.topic_arn) };
        };
        let aws = or_step!(ctx.aws());
        let sns = match aws.sns(arn.account, arn.region).await {
            Ok(sns) => sns,
            Err(e) => return Step::Failed { retryable: true, error: e.to_string() },
        };
        let mut request = sns
            .publish()
            .topic_arn(&p.topic_arn)
            .subject(subject(&ctx.render(&p.subject)))
            .message(summary(&ctx).to_string());
        if p.topic_arn.ends_with(".fifo") {
            request = request.message_group_id(ctx.job.resource.key()).message_deduplication_id(&ctx.job.id);
        }
        match request.send().await {
            Ok(out) => Step::Done {
                summary: format!("published {} to {}", out.message_id().unwrap_or("a message"), p.topic_arn),
            },
            Err(e) => {
                use aws_sdk_sns::error::ProvideErrorMetadata;
                let code = e.as_service_error().and_then(|s| s.code()).unwrap_or_default().to_owned();
                let retryable =
                    !matches!(code.as_str(), "NotFound" | "InvalidParameter" | "AuthorizationError" | "KMSDisabled");
                let text = aws_sdk_sns::error::DisplayErrorContext(&e).to_string();
                Step::Failed { retryable, error: format!("Publish: {}", text.lines().next().unwrap_or_default()) }
            }
        }
    }

    async fn check(&self, ctx: ActionContext<'_>, _state: &Value) -> Step {
        self.start(ctx).await
    }
}
