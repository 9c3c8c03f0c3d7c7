//! Classifying SDK errors: retry later, or refused.

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// What a caller should do about an SDK error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// Transport, timeout, throttling or a server error: retry later.
    Retry(String),
    /// The resource does not exist.
    Missing(String),
    /// The conditional check failed (DynamoDB).
    ConditionFailed,
    /// Refused as invalid.
    Refused(String),
}

const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "TransactionInProgressException",
];

const MISSING: &[&str] = &["AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "ResourceNotFoundException"];

pub(crate) fn classify<E>(err: &SdkError<E, HttpResponse>) -> ErrorClass
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = DisplayErrorContext(err).to_string();
    match err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            let server_error = service.raw().status().as_u16() >= 500;
            if code == "ConditionalCheckFailedException" {
                ErrorClass::ConditionFailed
            } else if MISSING.contains(&code) {
                ErrorClass::Missing(text)
            } else if THROTTLING.contains(&code) || code.is_empty() || server_error {
                ErrorClass::Retry(text)
            } else {
                ErrorClass::Refused(text)
            }
        }
        _ => ErrorClass::Retry(text),
    }
}
