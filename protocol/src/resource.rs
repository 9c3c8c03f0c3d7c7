//! Resources jobs act on, and parsing them out of ARNs.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The kinds of resource opsfleet acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ResourceType {
    /// An EC2 instance (`i-…`).
    #[serde(rename = "ec2:instance")]
    Instance,
    /// An EBS volume (`vol-…`).
    #[serde(rename = "ec2:volume")]
    Volume,
    /// An EBS snapshot (`snap-…`).
    #[serde(rename = "ec2:snapshot")]
    Snapshot,
    /// An AMI (`ami-…`).
    #[serde(rename = "ec2:image")]
    Image,
    /// A DynamoDB table, by name.
    #[serde(rename = "dynamodb:table")]
    DynamoTable,
    /// An RDS DB instance, by identifier.
    #[serde(rename = "rds:db")]
    RdsInstance,
    /// An Aurora or Multi-AZ DB cluster, by identifier.
    #[serde(rename = "rds:cluster")]
    RdsCluster,
    /// An EC2 Auto Scaling group, by name.
    #[serde(rename = "autoscaling:group")]
    AutoScalingGroup,
}

impl ResourceType {
    /// Every resource type, in a stable order.
    pub const ALL: [ResourceType; 8] = [
        Self::Instance,
        Self::Volume,
        Self::Snapshot,
        Self::Image,
        Self::DynamoTable,
        Self::RdsInstance,
        Self::RdsCluster,
        Self::AutoScalingGroup,
    ];

    /// The EC2 types.
    pub const EC2: [ResourceType; 4] = [Self::Instance, Self::Volume, Self::Snapshot, Self::Image];

    /// The name used in config and job JSON, such as `ec2:instance`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Instance => "ec2:instance",
            Self::Volume => "ec2:volume",
            Self::Snapshot => "ec2:snapshot",
            Self::Image => "ec2:image",
            Self::DynamoTable => "dynamodb:table",
            Self::RdsInstance => "rds:db",
            Self::RdsCluster => "rds:cluster",
            Self::AutoScalingGroup => "autoscaling:group",
        }
    }

    /// Whether resources of this type live in EC2 (and are found with EC2's describes).
    pub fn is_ec2(self) -> bool {
        matches!(self, Self::Instance | Self::Volume | Self::Snapshot | Self::Image)
    }

    /// The id prefix of an EC2 type (`i-`, `vol-`, `snap-`, `ami-`); other types are named.
    pub fn id_prefix(self) -> Option<&'static str> {
        match self {
            Self::Instance => Some("i-"),
            Self::Volume => Some("vol-"),
            Self::Snapshot => Some("snap-"),
            Self::Image => Some("ami-"),
            _ => None,
        }
    }

    /// The resource type of an EC2 ARN's resource part (`instance`, `volume`, …).
    pub fn from_arn_kind(kind: &str) -> Option<Self> {
        match kind {
            "instance" => Some(Self::Instance),
            "volume" => Some(Self::Volume),
            "snapshot" => Some(Self::Snapshot),
            "image" => Some(Self::Image),
            _ => None,
        }
    }

    /// The resource type an id's prefix implies (`i-`, `vol-`, `snap-`, `ami-`).
    pub fn from_id(id: &str) -> Option<Self> {
        let (prefix, _) = id.split_once('-')?;
        match prefix {
            "i" => Some(Self::Instance),
            "vol" => Some(Self::Volume),
            "snap" => Some(Self::Snapshot),
            "ami" => Some(Self::Image),
            _ => None,
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One resource in one account and region: what a job acts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// The 12-digit account id that owns the resource.
    pub account: String,
    /// The region the resource lives in.
    pub region: String,
    /// The resource type.
    #[serde(rename = "type")]
    pub kind: ResourceType,
    /// The resource id, such as `i-0123456789abcdef0`.
    pub id: String,
}

/// The longest resource id accepted (real EC2 ids are a prefix and 8 or 17 hex digits).
pub const MAX_ID_LEN: usize = 64;

impl Resource {
    /// The stable key of the resource: `account/region/type/id`. It names the FIFO message
    /// group, the default lock and the partition.
    pub fn key(&self) -> String {
        format!("{}/{}/{}/{}", self.account, self.region, self.kind, self.id)
    }

    /// Checks that the resource can be acted on and its key used as a FIFO group id (at most
    /// 128 of SQS's characters) and a lock: a 12-digit account, a region's shape, and an id
    /// of its type's prefix followed by letters and digits. The error is a one-line reason.
    pub fn check(&self) -> Result<(), String> {
        let shown: String = self.id.chars().take(MAX_ID_LEN).collect();
        if !is_account_id(&self.account) {
            return Err(format!("resource {shown}: account `{}` is not a 12-digit account id", clip(&self.account)));
        }
        if !looks_like_region(&self.region) {
            return Err(format!("resource {shown}: `{}` is not a region", clip(&self.region)));
        }
        let Some(prefix) = self.kind.id_prefix() else {
            return check_name(self.kind, &self.id);
        };
        let rest = self.id.strip_prefix(prefix).unwrap_or_default();
        if self.id.len() > MAX_ID_LEN || rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!(
                "resource id `{}` is not a {} id (`{prefix}` and up to {} letters and digits)",
                clip(&self.id),
                self.kind,
                MAX_ID_LEN - prefix.len()
            ));
        }
        Ok(())
    }
}

/// Checks the name of a named resource: a DynamoDB table (3 to 64 of letters, digits, `_`,
/// `-`, `.`: DynamoDB takes up to 255, opsfleet keys and locks take 64), an RDS instance or
/// cluster identifier (1 to 63 letters, digits and single hyphens, a letter first, no hyphen
/// last).
fn check_name(kind: ResourceType, id: &str) -> Result<(), String> {
    let ok = match kind {
        ResourceType::AutoScalingGroup => {
            (1..=MAX_ID_LEN).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        }
        ResourceType::DynamoTable => {
            (3..=MAX_ID_LEN).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        }
        _ => {
            (1..=63).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && id.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                && !id.ends_with('-')
                && !id.contains("--")
        }
    };
    if ok {
        return Ok(());
    }
    let rule = match kind {
        ResourceType::DynamoTable => "3 to 64 letters, digits, `_`, `-` and `.`",
        ResourceType::AutoScalingGroup => "1 to 64 letters, digits, `_`, `-` and `.`",
        _ => "1 to 63 letters, digits and single hyphens, starting with a letter",
    };
    Err(format!("resource id `{}` is not a {kind} name ({rule})", clip(id)))
}

/// At most 64 characters of a text from outside, with control characters shown escaped.
fn clip(text: &str) -> String {
    let clipped: String = text.chars().take(64).collect();
    let clipped = clipped.escape_debug().to_string();
    if text.chars().count() > 64 {
        format!("{clipped}…")
    } else {
        clipped
    }
}

/// The parts of an ARN: `arn:partition:service:region:account:resource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arn<'a> {
    /// `aws`, `aws-cn`, `aws-us-gov`.
    pub partition: &'a str,
    /// The service, such as `ec2`.
    pub service: &'a str,
    /// The region; empty for global resources.
    pub region: &'a str,
    /// The account; empty where the ARN names none.
    pub account: &'a str,
    /// The resource part, such as `instance/i-0123`.
    pub resource: &'a str,
}

impl<'a> Arn<'a> {
    /// Splits an ARN into its parts, or `None` when the text is not an ARN.
    pub fn parse(text: &'a str) -> Option<Self> {
        let mut parts = text.splitn(6, ':');
        if parts.next()? != "arn" {
            return None;
        }
        let arn = Arn {
            partition: parts.next()?,
            service: parts.next()?,
            region: parts.next()?,
            account: parts.next()?,
            resource: parts.next()?,
        };
        (!arn.partition.is_empty() && !arn.service.is_empty()).then_some(arn)
    }

    /// The resource of a type opsfleet acts on that this ARN names: an EC2 resource (see
    /// [`Arn::ec2_resource`]), a DynamoDB table (`table/NAME`, not its indexes, streams or
    /// backups), an RDS instance (`db:NAME`) or cluster (`cluster:NAME`).
    pub fn resource(&self) -> Option<(ResourceType, &'a str, Option<&'a str>, Option<&'a str>)> {
        let (kind, id) = match self.service {
            "ec2" => return self.ec2_resource(),
            "dynamodb" => {
                (ResourceType::DynamoTable, self.resource.strip_prefix("table/").filter(|n| !n.contains('/'))?)
            }
            "autoscaling" => (ResourceType::AutoScalingGroup, self.resource.split_once("autoScalingGroupName/")?.1),
            "rds" => match self.resource.split_once(':')? {
                ("db", id) => (ResourceType::RdsInstance, id),
                ("cluster", id) => (ResourceType::RdsCluster, id),
                _ => return None,
            },
            _ => return None,
        };
        (!id.is_empty()).then_some((kind, id, non_empty(self.account), non_empty(self.region)))
    }

    /// The EC2 resource this ARN names, with account and region filled from the given
    /// fallbacks where the ARN has none. EBS notifications write snapshot ARNs as
    /// `arn:aws:ec2::REGION:snapshot/ID`, with the region in the account field: that form is
    /// recognised. Returns `None` for ARNs of other services or resource types.
    pub fn ec2_resource(&self) -> Option<(ResourceType, &'a str, Option<&'a str>, Option<&'a str>)> {
        if self.service != "ec2" {
            return None;
        }
        let (kind, id) = self.resource.split_once('/')?;
        let kind = ResourceType::from_arn_kind(kind)?;
        if id.is_empty() {
            return None;
        }
        let (mut region, mut account) = (non_empty(self.region), non_empty(self.account));
        if region.is_none() && account.is_some_and(looks_like_region) {
            region = account.take();
        }
        Some((kind, id, account, region))
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Whether a text has the shape of an AWS region name (`us-east-1`, `eu-central-2`).
pub fn looks_like_region(s: &str) -> bool {
    let mut parts = s.split('-');
    let first_ok = parts.next().is_some_and(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_lowercase()));
    let rest: Vec<&str> = parts.collect();
    first_ok
        && rest.len() >= 2
        && rest[..rest.len() - 1].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && rest.last().is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a text is a 12-digit AWS account id.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_instance_arn() {
        let arn = Arn::parse("arn:aws:ec2:us-east-1:123456789012:instance/i-abc").unwrap();
        let (kind, id, account, region) = arn.ec2_resource().unwrap();
        assert_eq!(
            (kind, id, account, region),
            (ResourceType::Instance, "i-abc", Some("123456789012"), Some("us-east-1"))
        );
    }

    #[test]
    fn snapshot_arn_with_region_in_account_field() {
        let arn = Arn::parse("arn:aws:ec2::us-west-2:snapshot/snap-01234567").unwrap();
        let (kind, id, account, region) = arn.ec2_resource().unwrap();
        assert_eq!((kind, id, account, region), (ResourceType::Snapshot, "snap-01234567", None, Some("us-west-2")));
    }

    #[test]
    fn other_services_and_non_arns_are_not_ec2_resources() {
        assert!(Arn::parse("arn:aws:events:us-east-1:123456789012:rule/nightly").unwrap().ec2_resource().is_none());
        assert!(Arn::parse("arn:aws:ec2:us-east-1:123456789012:security-group/sg-1").unwrap().ec2_resource().is_none());
        assert!(Arn::parse("not-an-arn").is_none());
    }

    #[test]
    fn resources_that_cannot_name_a_group_or_a_lock_are_refused() {
        let good = Resource {
            account: "123456789012".into(),
            region: "us-east-1".into(),
            kind: ResourceType::Instance,
            id: "i-0123456789abcdef0".into(),
        };
        assert_eq!(good.check(), Ok(()));
        for (id, why) in [
            ("i-01 23", "a space"),
            ("i-", "no digits"),
            ("vol-0123", "another type's prefix"),
            ("i-0123\n", "a control character"),
            (&*format!("i-{}", "a".repeat(200)), "too long"),
            ("i-012é", "not ASCII"),
        ] {
            let bad = Resource { id: id.to_owned(), ..good.clone() };
            let err = bad.check().expect_err(why);
            assert!(err.contains("is not a ec2:instance id") && err.len() < 200, "{why}: {err}");
        }
        let bad = Resource { region: "us east".into(), ..good.clone() };
        assert!(bad.check().is_err());
        let bad = Resource { account: "12345".into(), ..good };
        assert!(bad.check().is_err());
    }

    #[test]
    fn tables_and_databases_are_named_by_their_arns_and_checked_by_their_services_rules() {
        let table = Arn::parse("arn:aws:dynamodb:eu-west-1:123456789012:table/orders").unwrap();
        assert_eq!(
            table.resource(),
            Some((ResourceType::DynamoTable, "orders", Some("123456789012"), Some("eu-west-1")))
        );
        let index = Arn::parse("arn:aws:dynamodb:eu-west-1:123456789012:table/orders/index/by-day").unwrap();
        assert_eq!(index.resource(), None, "an index is not its table");
        let db = Arn::parse("arn:aws:rds:us-east-1:123456789012:db:billing-1").unwrap();
        assert_eq!(db.resource().map(|r| (r.0, r.1)), Some((ResourceType::RdsInstance, "billing-1")));
        let cluster = Arn::parse("arn:aws:rds:us-east-1:123456789012:cluster:aurora-main").unwrap();
        assert_eq!(cluster.resource().map(|r| (r.0, r.1)), Some((ResourceType::RdsCluster, "aurora-main")));
        let group = Arn::parse(
            "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:8e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b:autoScalingGroupName/web-asg",
        )
        .unwrap();
        assert_eq!(group.resource().map(|r| (r.0, r.1)), Some((ResourceType::AutoScalingGroup, "web-asg")));
        let snapshot = Arn::parse("arn:aws:rds:us-east-1:123456789012:snapshot:nightly").unwrap();
        assert_eq!(snapshot.resource(), None);

        let named = |kind, id: &str| Resource {
            account: "123456789012".into(),
            region: "us-east-1".into(),
            kind,
            id: id.into(),
        };
        assert_eq!(named(ResourceType::DynamoTable, "orders.v2_eu-1").check(), Ok(()));
        assert_eq!(named(ResourceType::RdsInstance, "billing-1").check(), Ok(()));
        for (kind, id) in [
            (ResourceType::DynamoTable, "ab"),
            (ResourceType::DynamoTable, "orders/x"),
            (ResourceType::DynamoTable, &*"t".repeat(65)),
            (ResourceType::RdsInstance, "1billing"),
            (ResourceType::RdsInstance, "billing-"),
            (ResourceType::RdsCluster, "a--b"),
            (ResourceType::RdsCluster, "a_b"),
        ] {
            let err = named(kind, id).check().expect_err(id);
            assert!(err.contains(&format!("is not a {kind} name")), "{err}");
        }
    }

    #[test]
    fn region_and_account_shapes() {
        assert!(looks_like_region("us-east-1"));
        assert!(looks_like_region("us-gov-west-1"));
        assert!(!looks_like_region("123456789012"));
        assert!(!looks_like_region("us-east"));
        assert!(is_account_id("123456789012"));
        assert!(!is_account_id("12345678901a"));
    }
}
