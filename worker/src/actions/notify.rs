//! `notify`: publishes a JSON summary of the event, the job and the resource to an SNS topic.
//! On a FIFO topic the job's id deduplicates the message; a standard topic may deliver a
//! redelivered job's message twice (SNS offers no deduplication there).

use super::{Action, ActionContext, Step};
use async_trait::async_trait;
use opsfleet_protocol::resource::Arn;
use opsfleet_protocol::ResourceType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The params of `notify`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyParams {
    /// The SNS topic's ARN.
    pub topic_arn: String,
    /// The subject, a template (SNS takes up to 100 characters for email).
    #[serde(default = "default_subject")]
    pub subject: String,
    /// A line for the message's `note`, a template: in a runbook, earlier steps' outputs such
    /// as `{steps.snapshot.ids}`.
    #[serde(default)]
    pub note: Option<String>,
}

fn default_subject() -> String {
    "opsfleet {task}: {id}".into()
}

/// The `notify` action.
pub struct Notify;

/// The message a job publishes.
pub fn summary(ctx: &ActionContext<'_>, note: Option<&str>) -> Value {
    let job = ctx.job;
    let mut message = json!({
        "source": "opsfleet",
        "task": job.task,
        "job": job.id,
        "event": { "id": job.event_id, "time": job.event_time, "fields": job.event_fields },
        "resource": job.resource,
        "attempt": ctx.attempt,
    });
    if let Some(note) = note {
        message["note"] = Value::String(ctx.render(note));
    }
    message
}

/// A subject SNS takes: printable ASCII, under 100 characters, not starting with a space.
fn subject(text: &str) -> String {
    let cleaned: String =
        text.chars().map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '?' }).take(99).collect();
    let trimmed = cleaned.trim_start().to_owned();
    if trimmed.is_empty() {
        "opsfleet".into()
    } else {
        trimmed
    }
}

#[async_trait]
impl Action for Notify {
    const NAME: &'static str = "notify";
    type Params = NotifyParams;
    type State = ();

    fn targets(&self) -> &'static [ResourceType] {
        &ResourceType::ALL
    }

    fn examples(&self) -> Vec<NotifyParams> {
        vec![NotifyParams {
            topic_arn: "arn:aws:sns:us-east-1:111122223333:ops".into(),
            subject: default_subject(),
            note: None,
        }]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &NotifyParams) -> String {
        format!("would publish `{}` about {} to {}", subject(&ctx.render(&p.subject)), ctx.job.resource.id, p.topic_arn)
    }

    fn statements(&self, p: &NotifyParams) -> Vec<Value> {
        let region = Arn::parse(&p.topic_arn).map(|a| a.region.to_owned()).unwrap_or_else(|| "*".into());
        vec![
            json!({ "Effect": "Allow", "Action": ["sns:Publish"], "Resource": p.topic_arn }),
            // A topic encrypted with a customer-managed key: publishing uses the key through SNS.
            json!({
                "Effect": "Allow",
                "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                "Resource": "arn:aws:kms:*:*:key/*",
                "Condition": { "StringEquals": { "kms:ViaService": format!("sns.{region}.amazonaws.com") } },
            }),
        ]
    }

    fn templates(&self, p: &NotifyParams) -> Vec<(String, String)> {
        let mut templates = vec![("subject".to_owned(), p.subject.clone())];
        templates.extend(p.note.iter().map(|note| ("note".to_owned(), note.clone())));
        templates
    }

    fn validate(&self, p: &NotifyParams) -> Result<(), String> {
        match Arn::parse(&p.topic_arn) {
            Some(arn) if arn.service == "sns" && !arn.region.is_empty() && !arn.account.is_empty() => Ok(()),
            _ => Err(format!("params: topic_arn `{}` is not an SNS topic ARN", p.topic_arn)),
        }
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &NotifyParams) -> Step {
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
            .message(summary(&ctx, p.note.as_deref()).to_string());
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
                // What the request or the topic's setup got wrong does not pass by trying again;
                // a KMS key that is throttled or briefly unavailable does.
                let permanent = matches!(
                    code.as_str(),
                    "NotFound"
                        | "InvalidParameter"
                        | "ParameterValueInvalid"
                        | "AuthorizationError"
                        | "KMSDisabled"
                        | "KMSAccessDenied"
                        | "KMSInvalidState"
                        | "KMSNotFound"
                        | "KMSOptInRequired"
                        | "InvalidSecurity"
                );
                let retryable = !permanent;
                let text = aws_sdk_sns::error::DisplayErrorContext(&e).to_string();
                Step::Failed { retryable, error: format!("Publish: {}", text.lines().next().unwrap_or_default()) }
            }
        }
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &NotifyParams, _state: ()) -> Step {
        self.start(ctx, p).await
    }
}

#[cfg(test)]
mod tests {
    use super::subject;

    #[test]
    fn a_subject_is_under_100_printable_characters_and_never_empty() {
        let long = subject(&"é".repeat(150));
        assert_eq!((long.len(), long.starts_with('?')), (99, true));
        assert_eq!(subject("   "), "opsfleet");
        assert_eq!(subject(" on i-1\n"), "on i-1?");
    }
}
