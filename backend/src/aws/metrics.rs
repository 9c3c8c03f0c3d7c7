//! Every AWS call the fleet makes, counted by one SDK interceptor installed on every client
//! (SQS, DynamoDB, EC2, SNS, STS): each attempt, retries included, with its outcome and its
//! duration. Labels are the service, the operation and the outcome, never a resource.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use metrics::{counter, histogram};
use std::time::Instant;

/// The interceptor that counts every attempt of every AWS call.
#[derive(Debug, Clone, Copy, Default)]
pub struct AwsMetrics;

#[derive(Debug, Clone)]
struct AttemptStarted(Instant);

impl Storable for AttemptStarted {
    type Storer = StoreReplace<Self>;
}

/// Error codes AWS services answer when a caller is throttled.
const THROTTLED: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "SlowDown",
];

/// How an attempt came out: `ok`, `throttled`, `client_error`, `server_error`, `timeout`.
fn outcome(context: &FinalizerInterceptorContextRef<'_>) -> &'static str {
    match context.response() {
        Some(response) => {
            let status = response.status().as_u16();
            if (200..300).contains(&status) {
                return "ok";
            }
            let body = response.body().bytes().unwrap_or_default();
            let text = String::from_utf8_lossy(&body[..body.len().min(2048)]);
            if status == 429 || THROTTLED.iter().any(|code| text.contains(code)) {
                "throttled"
            } else if status >= 500 {
                "server_error"
            } else {
                "client_error"
            }
        }
        // No response: the connection failed or the attempt timed out.
        None => match context.output_or_error() {
            Some(Err(e)) if e.is_timeout_error() => "timeout",
            _ => "server_error",
        },
    }
}

impl Intercept for AwsMetrics {
    fn name(&self) -> &'static str {
        "OpsfleetAwsMetrics"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(AttemptStarted(Instant::now()));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (service, operation) = cfg
            .load::<Metadata>()
            .map(|m| (m.service().to_owned(), m.name().to_owned()))
            .unwrap_or_else(|| ("unknown".to_owned(), "unknown".to_owned()));
        let outcome = outcome(context);
        counter!("opsfleet_aws_requests_total", "service" => service.clone(), "operation" => operation.clone(), "outcome" => outcome)
            .increment(1);
        if let Some(started) = cfg.load::<AttemptStarted>() {
            histogram!("opsfleet_aws_request_duration_seconds", "service" => service.clone(), "operation" => operation.clone())
                .record(started.0.elapsed().as_secs_f64());
        }
        if outcome == "throttled" {
            tracing::debug!(service = %service, operation = %operation, "AWS throttled a call; the SDK retries it.");
        }
        Ok(())
    }
}
