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

macro_rules! both {
    ($embedded:ident, $aws:ident, $check:path) => {
        #[tokio::test]
        async fn $embedded() {
            $check(&EmbeddedBackend::new(), &unique("emb")).await;
        }

        #[tokio::test]
        async fn $aws() {
            $check(&aws().await, &unique("aws")).await;
        }
    };
}

both!(embedded_queue_basics, aws_queue_basics, conformance::queue_basics);
both!(embedded_queue_redrive, aws_queue_redrive, conformance::queue_redrive);
both!(embedded_queue_fifo, aws_queue_fifo, conformance::queue_fifo);
both!(embedded_queue_delay, aws_queue_delay, conformance::queue_delay);
both!(embedded_store_semantics, aws_store_semantics, conformance::store_semantics);
