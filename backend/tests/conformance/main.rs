//! The conformance suite against the embedded backend and against SQS/DynamoDB on the
//! emulator that `tests/run.sh` starts.

mod suite;

use opsfleet_backend::{AwsBackend, EmbeddedBackend};
use opsfleet_protocol::ports::Backend;

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

every!(embedded_queue_basics, aws_queue_basics, fast_queue_basics, suite::queue_basics);
every!(embedded_queue_redrive, aws_queue_redrive, fast_queue_redrive, suite::queue_redrive);
every!(embedded_queue_fifo, aws_queue_fifo, fast_queue_fifo, suite::queue_fifo);
every!(embedded_queue_delay, aws_queue_delay, fast_queue_delay, suite::queue_delay);
every!(embedded_queue_fifo_in_order, aws_queue_fifo_in_order, fast_queue_fifo_in_order, suite::queue_fifo_in_order);
every!(embedded_store_semantics, aws_store_semantics, fast_store_semantics, suite::store_semantics);
every!(embedded_store_indexes, aws_store_indexes, fast_store_indexes, suite::store_indexes);

/// An endpoint that accepts connections and never answers: every call still ends, with a
/// retryable error, within the fleet's operation timeout.
#[tokio::test]
async fn a_silent_endpoint_fails_calls_within_the_operation_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let config = AwsBackend::sdk_config().await;
    let backend = AwsBackend::with_endpoints(&config, &url, &url);
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(std::time::Duration::from_secs(120), backend.store("never")).await;
    let took = started.elapsed();
    silent.abort();
    let Ok(result) = result else { panic!("a call to a silent endpoint hung past 120 s") };
    assert!(matches!(result, Err(opsfleet_protocol::ports::StoreError::Unavailable { .. })), "{:?}", result.err());
    let limit = opsfleet_backend::aws::timeouts::OPERATION + std::time::Duration::from_secs(5);
    assert!(took <= limit, "the call took {took:?}, over the {limit:?} operation timeout");
}

/// `setup` makes the job partitions high-throughput FIFO queues.
#[tokio::test]
async fn setup_makes_high_throughput_fifo_partitions() {
    let backend = fast().await;
    let fleet = unique("ht");
    let config = opsfleet_protocol::Config::parse(&format!("[fleet]\nname = \"{fleet}\"\npartitions = 1\n"), None)
        .expect("config");
    opsfleet_protocol::setup::setup(&backend, &config).await.expect("setup");
    let url = backend
        .sqs()
        .get_queue_url()
        .queue_name(format!("{fleet}-jobs-0.fifo"))
        .send()
        .await
        .expect("url")
        .queue_url
        .expect("url");
    let attrs = backend
        .sqs()
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .expect("attributes")
        .attributes
        .unwrap_or_default();
    use aws_sdk_sqs::types::QueueAttributeName as A;
    assert_eq!(attrs.get(&A::DeduplicationScope).map(String::as_str), Some("messageGroup"), "{attrs:?}");
    assert_eq!(attrs.get(&A::FifoThroughputLimit).map(String::as_str), Some("perMessageGroupId"), "{attrs:?}");
}

/// `setup` on a table made before the indexes existed adds them, one at a time. On moto:
/// DynamoDB Local sometimes leaves an index added to an existing table CREATING for good.
#[tokio::test]
async fn setup_adds_the_indexes_a_table_lacks() {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") else {
        panic!("the emulator tests need AWS_ENDPOINT_URL: run them with tests/run.sh");
    };
    let config = AwsBackend::sdk_config().await;
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&config).endpoint_url(&endpoint).build(),
    );
    let table = unique("legacy");
    let attr = |name: &str| {
        AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build().expect("a")
    };
    let key = |name: &str, kind| KeySchemaElement::builder().attribute_name(name).key_type(kind).build().expect("k");
    client
        .create_table()
        .table_name(&table)
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create a table without indexes");
    let backend = aws().await;
    backend.ensure_table(&table).await.expect("add the indexes");
    let described = client.describe_table().table_name(&table).send().await.expect("describe");
    let mut names: Vec<String> = described
        .table
        .and_then(|t| t.global_secondary_indexes)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.index_name)
        .collect();
    names.sort();
    let mut expected: Vec<&str> = opsfleet_protocol::ports::INDEXES.iter().map(|i| i.name).collect();
    expected.sort();
    assert_eq!(names, expected);
}
