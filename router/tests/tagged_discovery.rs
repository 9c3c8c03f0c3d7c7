//! Discovery of DynamoDB tables with the Tagging API against the emulator behind the realism
//! layer: tagged tables in two accounts (the second through the member role) and two regions
//! at once, a table tagged moments ago found by a later run once the Tagging API shows it, and
//! a place that refuses the call, which holds back none of the others.

use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, Tag};
use opsfleet_backend::aws::budget::Ec2Budget;
use opsfleet_backend::aws::AwsAccounts;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::config::DiscoveryQuery;
use opsfleet_protocol::plan::Discovery;
use opsfleet_protocol::{Config, Resource, ResourceType};
use opsfleet_router::{AwsDiscovery, Discover};
use opsfleet_testkit::{Ec2Plan, Ec2Realism, FailingPlace};
use std::sync::Arc;
use std::time::Duration;

const OWN: &str = "123456789012";
const MEMBER: &str = "222222222222";

async fn table(dynamodb: &aws_sdk_dynamodb::Client, name: &str, tags: &[(&str, &str)]) -> String {
    let mut request = dynamodb
        .create_table()
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attr"),
        )
        .key_schema(KeySchemaElement::builder().attribute_name("pk").key_type(KeyType::Hash).build().expect("key"))
        .billing_mode(BillingMode::PayPerRequest);
    for (k, v) in tags {
        request = request.tags(Tag::builder().key(*k).value(*v).build().expect("tag"));
    }
    let out = request.send().await.expect("create table");
    out.table_description().and_then(|t| t.table_arn()).expect("arn").to_owned()
}

#[tokio::test]
async fn tables_are_found_by_their_tags_in_every_account_and_region_once_the_tagging_api_shows_them() {
    let emulator = std::env::var("AWS_ENDPOINT_URL").expect("run with tests/run.sh: it starts the emulator");
    let layer = Ec2Realism::start(&emulator, Ec2Plan::aws()).await.expect("the realism layer");
    let config = Config::parse(
        "[fleet]\nname = \"d\"\nmember_role = \"arn:aws:iam::{account}:role/OpsFleetMember\"\nexternal_id = \"opsfleet-test\"\n",
        None,
    )
    .expect("config");
    let accounts = Arc::new(AwsAccounts::new(
        layer.sdk_config(&AwsBackend::sdk_config().await),
        &config.fleet,
        Ec2Budget::new(config.ec2_budget),
    ));
    let marker = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
    );
    let mut expected = Vec::new();
    for account in [OWN, MEMBER] {
        for region in ["us-east-1", "us-west-2"] {
            let dynamodb = accounts.dynamodb(account, region).await.expect("client");
            let wanted = format!("orders-{marker}");
            table(&dynamodb, &wanted, &[("Backup", &marker)]).await;
            table(&dynamodb, &format!("other-{marker}"), &[("Backup", "other")]).await;
            expected.push(Resource {
                account: account.into(),
                region: region.into(),
                kind: ResourceType::DynamoTable,
                id: wanted,
            });
        }
    }
    let discovery = Discovery {
        task: 0,
        task_name: "nightly-tables".into(),
        query: DiscoveryQuery {
            kind: ResourceType::DynamoTable,
            tags: [("Backup".to_owned(), marker.clone())].into(),
            state: vec![],
            regions: vec![],
            accounts: vec![],
        },
        accounts: vec![OWN.into(), MEMBER.into()],
        regions: vec!["us-east-1".into(), "us-west-2".into()],
    };
    let discover = AwsDiscovery::new(accounts.clone());
    let mut found = discover.discover(&discovery).await.expect("discover");
    found.sort();
    expected.sort();
    assert_eq!(found, expected, "each account and region's tagged table, nothing else");

    // A table tagged just now: the Tagging API does not show it yet; a later run finds it.
    let own = accounts.dynamodb(OWN, "us-east-1").await.expect("client");
    let late = format!("late-{marker}");
    let arn = table(&own, &late, &[]).await;
    let tag = Tag::builder().key("Backup").value(&marker).build().expect("tag");
    own.tag_resource().resource_arn(&arn).tags(tag).send().await.expect("tag resource");
    let now = discover.discover(&discovery).await.expect("discover");
    assert!(!now.iter().any(|r| r.id == late), "not shown yet: {now:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = discover.discover(&discovery).await.expect("discover");
    assert!(later.iter().any(|r| r.id == late && r.account == OWN), "found once shown: {later:?}");
    assert!(layer.counts().get("hidden").copied().unwrap_or(0) > 0, "{:?}", layer.counts());

    // A place that refuses the Tagging API: the others' tables are found, that place named.
    layer.change(|p| {
        p.failing.push(FailingPlace {
            account: MEMBER.into(),
            region: "us-west-2".into(),
            code: "AccessDeniedException".into(),
        })
    });
    let found = discover.discover_places(&discovery).await.expect("discover");
    assert_eq!(found.failed.len(), 1, "{:?}", found.failed);
    assert_eq!((found.failed[0].account.as_str(), found.failed[0].region.as_str()), (MEMBER, "us-west-2"));
    assert!(found.failed[0].error.contains("AccessDeniedException"), "{:?}", found.failed);
    assert_eq!(found.resources.len(), 4, "three places' tables and the late one: {:?}", found.resources);
}

#[tokio::test]
async fn auto_scaling_groups_are_found_by_a_tags_value_or_by_its_key_alone() {
    let emulator = std::env::var("AWS_ENDPOINT_URL").expect("run with tests/run.sh: it starts the emulator");
    let layer = Ec2Realism::start(&emulator, Ec2Plan::aws()).await.expect("the realism layer");
    let config = Config::parse("[fleet]\nname = \"d\"\n", None).expect("config");
    let accounts = Arc::new(AwsAccounts::new(
        layer.sdk_config(&AwsBackend::sdk_config().await),
        &config.fleet,
        Ec2Budget::new(config.ec2_budget),
    ));
    let asg = accounts.autoscaling(OWN, "us-east-1").await.expect("client");
    let marker = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
    );
    asg.create_launch_configuration()
        .launch_configuration_name(format!("lc-{marker}"))
        .image_id("ami-03cf127a")
        .instance_type("t3.micro")
        .send()
        .await
        .expect("launch configuration");
    for (name, value) in [("office", "office-hours"), ("batch", "nights")] {
        let name = format!("{name}-{marker}");
        let tag = aws_sdk_autoscaling::types::Tag::builder()
            .resource_id(&name)
            .resource_type("auto-scaling-group")
            .key(format!("Schedule-{marker}"))
            .value(value)
            .build();
        asg.create_auto_scaling_group()
            .auto_scaling_group_name(&name)
            .launch_configuration_name(format!("lc-{marker}"))
            .min_size(0)
            .max_size(1)
            .availability_zones("us-east-1a")
            .tags(tag)
            .send()
            .await
            .expect("group");
    }
    let query = |value: &str| Discovery {
        task: 0,
        task_name: "office-hours".into(),
        query: DiscoveryQuery {
            kind: ResourceType::AutoScalingGroup,
            tags: [(format!("Schedule-{marker}"), value.to_owned())].into(),
            state: vec![],
            regions: vec![],
            accounts: vec![],
        },
        accounts: vec![OWN.into()],
        regions: vec!["us-east-1".into()],
    };
    let discover = AwsDiscovery::new(accounts);
    let one = discover.discover(&query("office-hours")).await.expect("discover");
    assert_eq!(one.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [format!("office-{marker}")]);
    let any = discover.discover(&query("*")).await.expect("discover");
    assert_eq!(any.len(), 2, "both groups carry the key: {any:?}");
}
