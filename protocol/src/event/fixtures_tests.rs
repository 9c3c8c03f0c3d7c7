//! The sample bodies in `protocol/fixtures/`, shaped as AWS documents them: each normalizes to
//! the expected fields, names the expected resources and survives a serde_json round trip; the
//! bodies in `fixtures/invalid/` give the expected [`EventError`].

use super::{named_resources, normalize, Event, EventError};
use crate::pattern::Pattern;
use crate::resource::{Resource, ResourceType};

const ACCOUNT: &str = "123456789012";

/// A fixture's file name and text.
macro_rules! fixture {
    ($name:literal) => {
        ($name, include_str!(concat!("../../fixtures/", $name)))
    };
}

/// What one valid fixture must normalize to.
struct Expect {
    file: (&'static str, &'static str),
    id: &'static str,
    source: &'static str,
    detail_type: &'static str,
    account: &'static str,
    region: &'static str,
    /// `(account, region, type, id)` of each named resource, in order.
    resources: &'static [(&'static str, &'static str, ResourceType, &'static str)],
}

const ALARM: &str = "CloudWatch Alarm State Change";

const VALID: &[Expect] = &[
    Expect {
        file: fixture!("ec2-instance-state-change.json"),
        id: "7bf73129-1428-4cd3-a780-95db273d1602",
        source: "aws.ec2",
        detail_type: "EC2 Instance State-change Notification",
        account: ACCOUNT,
        region: "us-east-1",
        resources: &[(ACCOUNT, "us-east-1", ResourceType::Instance, "i-0a1b2c3d4e5f60718")],
    },
    Expect {
        // The snapshot ARN is `arn:aws:ec2::us-west-2:snapshot/…`: region from the ARN's
        // account field, account from the event.
        file: fixture!("ebs-snapshot-notification.json"),
        id: "3e6f9d2a-5b1c-4e8f-9a7d-0c2b4f6e8a10",
        source: "aws.ec2",
        detail_type: "EBS Snapshot Notification",
        account: ACCOUNT,
        region: "us-east-1",
        resources: &[(ACCOUNT, "us-west-2", ResourceType::Snapshot, "snap-0b1c2d3e4f5a60718")],
    },
    Expect {
        file: fixture!("ebs-volume-notification.json"),
        id: "9a4c1f0e-2d7b-4b8e-8f3a-6e5d4c3b2a19",
        source: "aws.ec2",
        detail_type: "EBS Volume Notification",
        account: ACCOUNT,
        region: "us-east-1",
        resources: &[(ACCOUNT, "us-east-1", ResourceType::Volume, "vol-0123456789abcdef0")],
    },
    Expect {
        file: fixture!("cloudwatch-alarm-state-change.json"),
        id: "c4c1c1c9-6542-e61b-6ef0-8c4d36933a92",
        source: "aws.cloudwatch",
        detail_type: ALARM,
        account: ACCOUNT,
        region: "us-east-1",
        resources: &[(ACCOUNT, "us-east-1", ResourceType::Instance, "i-0123456789abcdef0")],
    },
    Expect {
        file: fixture!("cloudwatch-alarm-metric-math.json"),
        id: "2dde0eb1-528b-d2d5-9ca6-6d590caf2329",
        source: "aws.cloudwatch",
        detail_type: ALARM,
        account: ACCOUNT,
        region: "us-east-1",
        resources: &[
            (ACCOUNT, "us-east-1", ResourceType::Instance, "i-0fedcba9876543210"),
            (ACCOUNT, "us-east-1", ResourceType::Volume, "vol-0a9b8c7d6e5f40312"),
        ],
    },
    Expect {
        file: fixture!("cloudwatch-composite-alarm.json"),
        id: "d3dfc86d-384d-24c8-0345-9f7986db0b80",
        source: "aws.cloudwatch",
        detail_type: ALARM,
        account: ACCOUNT,
        region: "us-east-1",
        resources: &[],
    },
    Expect {
        // The id is the SNS MessageId; the region comes from AlarmArn, not from
        // "Region": "US East (N. Virginia)".
        file: fixture!("sns-classic-alarm.json"),
        id: "5f2b1c9e-8d3a-5e71-b0c4-2a6f9e1d7c35",
        source: "aws.cloudwatch",
        detail_type: ALARM,
        account: ACCOUNT,
        region: "us-east-1",
        resources: &[(ACCOUNT, "us-east-1", ResourceType::Instance, "i-0abcdef1234567890")],
    },
    Expect {
        // Two metrics of one instance name it once.
        file: fixture!("sns-classic-alarm-metric-math.json"),
        id: "a81d3f52-6c0e-5b9a-94e7-1f2d3c4b5a69",
        source: "aws.cloudwatch",
        detail_type: ALARM,
        account: ACCOUNT,
        region: "eu-west-1",
        resources: &[(ACCOUNT, "eu-west-1", ResourceType::Instance, "i-0a0b0c0d0e0f01234")],
    },
    Expect {
        // The inner event keeps its own id.
        file: fixture!("sns-eventbridge-event.json"),
        id: "e6a4f3b2-0c1d-4e5f-a6b7-c8d9e0f1a2b3",
        source: "aws.ec2",
        detail_type: "EC2 Instance State-change Notification",
        account: ACCOUNT,
        region: "us-west-2",
        resources: &[(ACCOUNT, "us-west-2", ResourceType::Instance, "i-0b1c2d3e4f5a6b7c8")],
    },
    Expect {
        file: fixture!("tag-change-on-resource.json"),
        id: "ffd8a6fe-32f8-ef66-c85c-2b7c1e9d4a05",
        source: "aws.tag",
        detail_type: "Tag Change on Resource",
        account: ACCOUNT,
        region: "us-east-1",
        resources: &[(ACCOUNT, "us-east-1", ResourceType::Volume, "vol-0123456789abcdef0")],
    },
    Expect {
        // A table named by its alarm's `TableName` dimension.
        file: fixture!("cloudwatch-alarm-dynamodb-throttles.json"),
        id: "0b9e7c4a-51d2-4f0e-9a3b-7d6c5e4f3a21",
        source: "aws.cloudwatch",
        detail_type: ALARM,
        account: ACCOUNT,
        region: "eu-west-1",
        resources: &[(ACCOUNT, "eu-west-1", ResourceType::DynamoTable, "orders")],
    },
    Expect {
        // An Auto Scaling event names its group and the instance it launched, by ARN.
        file: fixture!("autoscaling-instance-launch.json"),
        id: "3e3c153a-8339-4e30-8c35-687ebef853fe",
        source: "aws.autoscaling",
        detail_type: "EC2 Instance Launch Successful",
        account: ACCOUNT,
        region: "us-east-1",
        resources: &[
            (ACCOUNT, "us-east-1", ResourceType::AutoScalingGroup, "web-asg"),
            (ACCOUNT, "us-east-1", ResourceType::Instance, "i-0b2c3d4e5f6a7b8c9"),
        ],
    },
    Expect {
        // An RDS event notification names its instance by ARN.
        file: fixture!("rds-db-instance-event.json"),
        id: "68f6e973-1a0c-d37b-f2f2-94a7f62ffd4e",
        source: "aws.rds",
        detail_type: "RDS DB Instance Event",
        account: ACCOUNT,
        region: "us-east-1",
        resources: &[(ACCOUNT, "us-east-1", ResourceType::RdsInstance, "billing-1")],
    },
    Expect {
        // The rule ARN is not an EC2 resource.
        file: fixture!("scheduled-event.json"),
        id: "89d1a02d-5ec7-412e-82f5-13505f849b41",
        source: "aws.events",
        detail_type: "Scheduled Event",
        account: ACCOUNT,
        region: "us-east-1",
        resources: &[],
    },
];

fn error_of(body: &str) -> EventError {
    normalize(body).expect_err("an invalid fixture must not normalize")
}

/// Each invalid fixture and the error it gives.
fn invalid() -> Vec<((&'static str, &'static str), EventError)> {
    vec![
        (
            fixture!("invalid/missing-detail-type.json"),
            EventError::Field { field: "detail-type", problem: "is missing" },
        ),
        (
            fixture!("invalid/sns-non-json-message.json"),
            EventError::SnsMessage {
                message_id: "7d9f1b3c-5e2a-5c4d-a6f8-0b1c2d3e4f5a".into(),
                reason: "not JSON".into(),
            },
        ),
        (fixture!("invalid/s3-test-event.json"), EventError::Unrecognized),
    ]
}

fn event(body: &str, name: &str) -> Event {
    normalize(body).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn resources(list: &[(&str, &str, ResourceType, &str)]) -> Vec<Resource> {
    list.iter()
        .map(|&(account, region, kind, id)| Resource {
            account: account.into(),
            region: region.into(),
            kind,
            id: id.into(),
        })
        .collect()
}

#[test]
fn every_fixture_normalizes_to_its_fields() {
    for expect in VALID {
        let (name, body) = expect.file;
        let event = event(body, name);
        assert_eq!(event.id, expect.id, "{name}: id");
        assert_eq!(event.source, expect.source, "{name}: source");
        assert_eq!(event.detail_type, expect.detail_type, "{name}: detail-type");
        assert_eq!(event.account.as_deref(), Some(expect.account), "{name}: account");
        assert_eq!(event.region.as_deref(), Some(expect.region), "{name}: region");
        assert!(event.time.is_some(), "{name}: time");
        assert_eq!(event.document["id"], expect.id, "{name}: the document carries the id");
    }
}

#[test]
fn every_fixture_names_its_resources() {
    for expect in VALID {
        let (name, body) = expect.file;
        let named = named_resources(&event(body, name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(named, resources(expect.resources), "{name}: resources");
    }
}

#[test]
fn every_fixture_round_trips_through_serde_json() {
    for expect in VALID {
        let (name, body) = expect.file;
        let original = event(body, name);
        let value: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: {e}"));
        for text in [
            serde_json::to_string(&value).expect("a Value serializes"),
            serde_json::to_string_pretty(&value).expect("a Value serializes"),
        ] {
            assert_eq!(event(&text, name), original, "{name}: re-serialized body");
        }
        // A normalized document is itself an event that normalizes to the same thing, so the
        // router can forward or re-read it (SNS envelopes and classic alarms included).
        let document = serde_json::to_string(&original.document).expect("a Map serializes");
        assert_eq!(event(&document, name), original, "{name}: normalized document");
    }
}

#[test]
fn invalid_fixtures_give_their_errors() {
    let (name, body) = fixture!("invalid/not-json.txt");
    assert!(matches!(error_of(body), EventError::NotJson(_)), "{name}");
    for ((name, body), expected) in invalid() {
        assert_eq!(error_of(body), expected, "{name}");
        // Re-serializing does not change the verdict.
        let value: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = serde_json::to_string(&value).expect("a Value serializes");
        assert_eq!(error_of(&text), expected, "{name}: re-serialized");
    }
}

#[test]
fn every_file_in_fixtures_is_tested() {
    let mut tested: Vec<String> = VALID.iter().map(|e| e.file.0.to_owned()).collect();
    tested.extend(invalid().into_iter().map(|((name, _), _)| name.to_owned()));
    tested.push("invalid/not-json.txt".to_owned());
    tested.sort();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut on_disk = Vec::new();
    for dir in ["", "invalid/"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("fixtures folder is readable") {
            let entry = entry.expect("fixtures entry is readable");
            if entry.file_type().expect("file type is readable").is_file() {
                on_disk.push(format!("{dir}{}", entry.file_name().to_string_lossy()));
            }
        }
    }
    on_disk.sort();
    assert_eq!(tested, on_disk, "a fixture without a test, or a test without its fixture");
}

#[test]
fn one_pattern_matches_eventbridge_and_classic_sns_alarms() {
    let pattern = Pattern::from_json(
        r#"{"detail-type": ["CloudWatch Alarm State Change"], "detail": {"state": {"value": ["ALARM"]}}}"#,
    )
    .expect("the pattern is valid");
    for (name, body) in [
        fixture!("cloudwatch-alarm-state-change.json"),
        fixture!("cloudwatch-alarm-metric-math.json"),
        fixture!("sns-classic-alarm.json"),
        fixture!("sns-classic-alarm-metric-math.json"),
    ] {
        assert!(pattern.matches(&event(body, name).document), "{name} should match");
    }
    for (name, body) in [fixture!("ec2-instance-state-change.json"), fixture!("sns-eventbridge-event.json")] {
        assert!(!pattern.matches(&event(body, name).document), "{name} should not match");
    }
}

#[test]
fn classic_alarm_is_reshaped_like_the_eventbridge_alarm() {
    let (name, body) = fixture!("sns-classic-alarm.json");
    let classic = event(body, name);
    let detail = classic.detail();
    assert_eq!(detail["alarmName"], "web-2-cpu-high");
    assert_eq!(detail["state"]["value"], "ALARM");
    assert_eq!(detail["previousState"]["value"], "OK");
    let metric = &detail["configuration"]["metrics"][0]["metricStat"]["metric"];
    assert_eq!(metric["dimensions"]["InstanceId"], "i-0abcdef1234567890");
    assert_eq!(metric["name"], "CPUUtilization");
    assert_eq!(metric["namespace"], "AWS/EC2");
    assert_eq!(
        classic.resources().collect::<Vec<_>>(),
        ["arn:aws:cloudwatch:us-east-1:123456789012:alarm:web-2-cpu-high"]
    );
    assert_eq!(classic.time.as_deref(), Some("2024-05-15T18:10:12.734+0000"));
}
