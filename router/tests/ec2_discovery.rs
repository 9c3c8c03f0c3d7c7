//! Discovery on EC2 against the emulator (moto) behind the EC2 realism layer: tagged volumes in
//! two accounts (the second through the member role and its external id) and two regions, at
//! once; and a region that refuses one account, which holds back none of the others.

use aws_sdk_ec2::types::{ResourceType as Ec2Type, Tag, TagSpecification};
use opsfleet_backend::aws::budget::Ec2Budget;
use opsfleet_backend::aws::AwsAccounts;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::config::DiscoveryQuery;
use opsfleet_protocol::plan::Discovery;
use opsfleet_protocol::{Config, Resource, ResourceType};
use opsfleet_router::{Discover, Ec2Discovery};
use opsfleet_testkit::{Ec2Plan, Ec2Realism, FailingPlace};
use std::sync::Arc;

const OWN: &str = "123456789012";
const MEMBER: &str = "222222222222";

#[tokio::test]
async fn discovery_finds_tagged_resources_in_two_accounts_and_two_regions() {
    let emulator = std::env::var("AWS_ENDPOINT_URL").expect("run with tests/run.sh: it starts the emulator");
    let layer = Ec2Realism::start(&emulator, Ec2Plan::aws()).await.expect("the EC2 realism layer");
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
            let ec2 = accounts.ec2(account, region).await.expect("client");
            for (value, wanted) in [(marker.as_str(), true), ("other", false)] {
                let tags = TagSpecification::builder()
                    .resource_type(Ec2Type::Volume)
                    .tags(Tag::builder().key("Backup").value(value).build())
                    .build();
                let out = ec2
                    .create_volume()
                    .availability_zone(format!("{region}a"))
                    .size(1)
                    .tag_specifications(tags)
                    .send()
                    .await
                    .expect("create volume");
                if wanted {
                    expected.push(Resource {
                        account: account.into(),
                        region: region.into(),
                        kind: ResourceType::Volume,
                        id: out.volume_id().expect("id").into(),
                    });
                }
            }
        }
    }
    layer.settle().await;
    let discovery = Discovery {
        task: 0,
        task_name: "nightly".into(),
        query: DiscoveryQuery {
            kind: ResourceType::Volume,
            tags: [("Backup".to_owned(), marker.clone())].into(),
            state: vec!["available".into()],
            regions: vec![],
            accounts: vec![],
        },
        accounts: vec![OWN.into(), MEMBER.into()],
        regions: vec!["us-east-1".into(), "us-west-2".into()],
    };
    let mut found = Ec2Discovery::new(accounts.clone()).discover(&discovery).await.expect("discover");
    found.sort();
    expected.sort();
    assert_eq!(found, expected, "each account and region's tagged volume, nothing else");
    assert_eq!(accounts.own_account().await.expect("own"), OWN);

    // A state filter leaves out what is not in that state.
    let mut in_use = discovery.clone();
    in_use.query.state = vec!["in-use".into()];
    assert!(Ec2Discovery::new(accounts.clone()).discover(&in_use).await.expect("discover").is_empty());

    // A region the member account has not opted in to: the other places' volumes are found,
    // and that place is named with its reason.
    layer.change(|p| {
        p.failing.push(FailingPlace {
            account: MEMBER.into(),
            region: "us-west-2".into(),
            code: "OptInRequired".into(),
        })
    });
    let found = Ec2Discovery::new(accounts.clone()).discover_places(&discovery).await.expect("discover");
    let others: Vec<Resource> =
        expected.iter().filter(|r| !(r.account == MEMBER && r.region == "us-west-2")).cloned().collect();
    assert_eq!(found.resources, others, "every other place's volumes");
    assert_eq!(found.failed.len(), 1, "{:?}", found.failed);
    assert_eq!((found.failed[0].account.as_str(), found.failed[0].region.as_str()), (MEMBER, "us-west-2"));
    assert!(found.failed[0].error.contains("OptInRequired"), "{:?}", found.failed);
    assert!(Ec2Discovery::new(accounts).discover(&discovery).await.is_err(), "the whole search fails as one");
}
