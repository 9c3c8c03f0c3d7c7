//! The conformance suite against the embedded backend and against SQS/DynamoDB on the
//! emulator that `tests/run.sh` starts.

use opsfleet_backend::{conformance, AwsBackend, EmbeddedBackend};

fn unique(prefix: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

async fn aws() -> AwsBackend {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        "the emulator tests need AWS_ENDPOINT_URL: run them with tests/run.sh"
    );
    AwsBackend::from_env().await
}

/// SQS on fauxqs and DynamoDB on DynamoDB Local, the fast emulators `tests/run.sh` starts.
async fn fast() -> AwsBackend {
    let (Ok(sqs), Ok(dynamodb)) =
        (std::env::var("OPSFLEET_TEST_FAST_SQS"), std::env::var("OPSFLEET_TEST_FAST_DYNAMODB"))
    else {
        panic!("the fast emulator tests need OPSFLEET_TEST_FAST_SQS and OPSFLEET_TEST_FAST_DYNAMODB: run them with tests/run.sh");
    };
    AwsBackend::with_endpoints(&AwsBackend::sdk_config().await, &sqs, &dynamodb)
}

macro_rules! every {
    ($embedded:ident, $aws:ident, $fast:ident, $check:path) => {
        #[tokio::test]
        async fn $embedded() {
            $check(&EmbeddedBackend::new(), &unique("emb")).await;
        }

        #[tokio::test]
        async fn $aws() {
            $check(&aws().await, &unique("aws")).await;
        }

        #[tokio::test]
        async fn $fast() {
            $check(&fast().await, &unique("fast")).await;
        }
    };
}

every!(embedded_queue_basics, aws_queue_basics, fast_queue_basics, conformance::queue_basics);
every!(embedded_queue_redrive, aws_queue_redrive, fast_queue_redrive, conformance::queue_redrive);
every!(embedded_queue_fifo, aws_queue_fifo, fast_queue_fifo, conformance::queue_fifo);
every!(embedded_queue_delay, aws_queue_delay, fast_queue_delay, conformance::queue_delay);
every!(embedded_store_semantics, aws_store_semantics, fast_store_semantics, conformance::store_semantics);
