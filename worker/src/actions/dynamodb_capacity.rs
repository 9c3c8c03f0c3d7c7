//! `dynamodb-capacity`: sets a table's provisioned read and write capacity, multiplies it
//! (within caps), or switches its billing mode, as Ops Automator's `DynamodbSetCapacity` does;
//! done when DynamoDB reads the table `ACTIVE` with the new settings.
//!
//! Absolute settings are idempotent by nature. A `multiply` is made idempotent by a record:
//! before its `UpdateTable` the action tags the table `opsfleet:capacity = <job> <read>
//! <write>` with the capacity it started from, and a later attempt of the same job multiplies
//! that, not what the first attempt already raised. DynamoDB allows only a few capacity
//! decreases and billing-mode switches a day: the `LimitExceededException` it answers past
//! them fails the job without retries, with DynamoDB's reason.

use super::dynamodb::{arn_unless_opted_out, describe_table, failed, iam::TABLES, table_tags};
use super::ec2::waited_to_look_again;
use super::{check_after_in_range, Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{BillingMode, ProvisionedThroughput, TableDescription, TableStatus, Tag};
use opsfleet_protocol::ResourceType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// The tag a `multiply` records the capacity it started from in.
pub const CAPACITY_TAG: &str = "opsfleet:capacity";

/// How a table is billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Billing {
    /// Provisioned read and write capacity units.
    #[serde(rename = "PROVISIONED")]
    Provisioned,
    /// On demand.
    #[serde(rename = "PAY_PER_REQUEST")]
    PayPerRequest,
}

/// The params of `dynamodb-capacity`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DynamodbCapacityParams {
    /// Switch the table to this billing mode (`PROVISIONED` or `PAY_PER_REQUEST`).
    #[serde(default)]
    pub billing_mode: Option<Billing>,
    /// Provisioned read capacity units to set.
    #[serde(default)]
    pub read: Option<i64>,
    /// Provisioned write capacity units to set.
    #[serde(default)]
    pub write: Option<i64>,
    /// Multiply the table's provisioned read and write capacity by this (rounded up).
    #[serde(default)]
    pub multiply: Option<f64>,
    /// The most read capacity units a `multiply` sets.
    #[serde(default)]
    pub max_read: Option<i64>,
    /// The most write capacity units a `multiply` sets.
    #[serde(default)]
    pub max_write: Option<i64>,
    /// Seconds until the first completion check.
    #[serde(default = "default_check_after_secs")]
    pub check_after_secs: u64,
}

fn default_check_after_secs() -> u64 {
    10
}

/// What the table is to read when the job is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct Settings {
    /// The billing mode.
    pub billing: Billing,
    /// Provisioned read units (0 on demand).
    pub read: i64,
    /// Provisioned write units (0 on demand).
    pub write: i64,
}

impl Settings {
    fn of(table: &TableDescription) -> Settings {
        let on_demand =
            table.billing_mode_summary().and_then(|b| b.billing_mode()) == Some(&BillingMode::PayPerRequest);
        let units = table.provisioned_throughput();
        if on_demand {
            return Settings { billing: Billing::PayPerRequest, read: 0, write: 0 };
        }
        Settings {
            billing: Billing::Provisioned,
            read: units.and_then(|u| u.read_capacity_units()).unwrap_or(0),
            write: units.and_then(|u| u.write_capacity_units()).unwrap_or(0),
        }
    }

    fn text(&self) -> String {
        match self.billing {
            Billing::PayPerRequest => "on demand".into(),
            Billing::Provisioned => format!("{} read / {} write units", self.read, self.write),
        }
    }
}

/// The settings the params ask for, from the table's `base` settings.
fn target(p: &DynamodbCapacityParams, base: Settings, table: &str) -> Result<Settings, Step> {
    let refuse = |error: String| Step::Failed { retryable: false, error };
    if p.multiply.is_some() && base.billing == Billing::PayPerRequest {
        return Err(refuse(format!("table {table} is on demand: it has no provisioned capacity to multiply")));
    }
    if p.billing_mode.is_none() && base.billing == Billing::PayPerRequest && (p.read.is_some() || p.write.is_some()) {
        return Err(refuse(format!(
            "table {table} is on demand: give `billing_mode = \"PROVISIONED\"` to set its capacity"
        )));
    }
    let billing = p.billing_mode.unwrap_or(base.billing);
    if billing == Billing::PayPerRequest {
        return Ok(Settings { billing, read: 0, write: 0 });
    }
    if let Some(factor) = p.multiply {
        let times = |units: i64, max: Option<i64>| {
            let raised = ((units as f64) * factor).ceil().max(1.0) as i64;
            max.map_or(raised, |m| raised.min(m))
        };
        return Ok(Settings { billing, read: times(base.read, p.max_read), write: times(base.write, p.max_write) });
    }
    let from_demand = base.billing == Billing::PayPerRequest;
    let read = p.read.or((!from_demand).then_some(base.read));
    let write = p.write.or((!from_demand).then_some(base.write));
    match (read, write) {
        (Some(read), Some(write)) => Ok(Settings { billing, read, write }),
        _ => Err(refuse(format!(
            "table {table} is on demand: switching it to PROVISIONED takes both `read` and `write`"
        ))),
    }
}

/// The settings an earlier attempt of this job recorded it started from, if any.
fn recorded(tags: &[(String, String)], job: &str) -> Option<Settings> {
    let value = tags.iter().find(|(k, _)| k == CAPACITY_TAG).map(|(_, v)| v)?;
    let mut parts = value.split(' ');
    if parts.next()? != job {
        return None;
    }
    let read = parts.next()?.parse().ok()?;
    let write = parts.next()?.parse().ok()?;
    Some(Settings { billing: Billing::Provisioned, read, write })
}

/// The `dynamodb-capacity` action.
pub struct DynamodbCapacity;

#[async_trait]
impl Action for DynamodbCapacity {
    const NAME: &'static str = "dynamodb-capacity";
    type Params = DynamodbCapacityParams;
    type State = Settings;

    fn targets(&self) -> &'static [ResourceType] {
        &[ResourceType::DynamoTable]
    }

    fn examples(&self) -> Vec<DynamodbCapacityParams> {
        vec![
            DynamodbCapacityParams {
                multiply: Some(2.0),
                max_read: Some(400),
                max_write: Some(400),
                check_after_secs: default_check_after_secs(),
                ..Default::default()
            },
            DynamodbCapacityParams {
                billing_mode: Some(Billing::Provisioned),
                read: Some(5),
                write: Some(5),
                check_after_secs: default_check_after_secs(),
                ..Default::default()
            },
        ]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &DynamodbCapacityParams) -> String {
        let table = &ctx.job.resource.id;
        match (p.billing_mode, p.multiply) {
            (Some(Billing::PayPerRequest), _) => format!("would switch table {table} to on demand"),
            (_, Some(factor)) => {
                let cap =
                    |name: &str, max: Option<i64>| max.map(|m| format!(", {name} at most {m}")).unwrap_or_default();
                format!(
                    "would multiply the provisioned capacity of table {table} by {factor}{}{}",
                    cap("read", p.max_read),
                    cap("write", p.max_write)
                )
            }
            _ => {
                let units = |name: &str, n: Option<i64>| n.map(|n| format!(" {name} {n}")).unwrap_or_default();
                format!(
                    "would set the provisioned capacity of table {table} to{}{}",
                    units("read", p.read),
                    units("write", p.write)
                )
            }
        }
    }

    fn statements(&self, p: &DynamodbCapacityParams) -> Vec<Value> {
        use super::iam::*;
        let mut out = vec![
            allow(&["dynamodb:DescribeTable", "dynamodb:ListTagsOfResource"], &[TABLES]),
            allow_if(&["dynamodb:UpdateTable"], &[TABLES], not_opted_out()),
        ];
        if p.multiply.is_some() {
            out.push(allow_if(
                &["dynamodb:TagResource"],
                &[TABLES],
                json!({
                    "ForAllValues:StringEquals": { "aws:TagKeys": [CAPACITY_TAG] },
                    "StringNotEquals": { "aws:ResourceTag/opsfleet:skip": "true" },
                }),
            ));
        }
        out
    }

    fn validate(&self, p: &DynamodbCapacityParams) -> Result<(), String> {
        check_after_in_range(p.check_after_secs)?;
        if p.billing_mode.is_none() && p.read.is_none() && p.write.is_none() && p.multiply.is_none() {
            return Err("params: give `billing_mode`, `read`/`write`, or `multiply`".into());
        }
        if p.multiply.is_some() && (p.read.is_some() || p.write.is_some()) {
            return Err("params: `multiply` or `read`/`write`, not both".into());
        }
        if p.multiply.is_none() && (p.max_read.is_some() || p.max_write.is_some()) {
            return Err("params: `max_read` and `max_write` cap a `multiply`; there is none".into());
        }
        if let Some(factor) = p.multiply {
            if !(factor.is_finite() && factor > 0.0 && factor <= 100.0) {
                return Err(format!("params: multiply {factor} is not above 0 and at most 100"));
            }
        }
        if p.billing_mode == Some(Billing::PayPerRequest)
            && (p.read.is_some() || p.write.is_some() || p.multiply.is_some())
        {
            return Err("params: an on-demand table has no provisioned capacity to set".into());
        }
        for (name, units) in
            [("read", p.read), ("write", p.write), ("max_read", p.max_read), ("max_write", p.max_write)]
        {
            if units.is_some_and(|n| n < 1) {
                return Err(format!("params: {name} must be at least 1 unit"));
            }
        }
        Ok(())
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &DynamodbCapacityParams) -> Step {
        let dynamodb = or_step!(ctx.dynamodb().await);
        let table = ctx.job.resource.id.as_str();
        let description = or_step!(describe_table(&dynamodb, table).await);
        let arn = or_step!(arn_unless_opted_out(&dynamodb, &description, table).await);
        if description.table_status() != Some(&TableStatus::Active) {
            let status = description.table_status().map(|s| s.as_str().to_owned()).unwrap_or_default();
            return Step::Failed { retryable: true, error: format!("table {table} is {status}, not ACTIVE") };
        }
        let now = Settings::of(&description);
        let mut base = now;
        if p.multiply.is_some() {
            let mut tags = or_step!(table_tags(&dynamodb, &arn).await);
            if recorded(&tags, &ctx.job.id).is_none() && waited_to_look_again(&ctx).await {
                tags = or_step!(table_tags(&dynamodb, &arn).await);
            }
            match recorded(&tags, &ctx.job.id) {
                Some(from) => base = from,
                None => {
                    let record = format!("{} {} {}", ctx.job.id, now.read, now.write);
                    let tag = Tag::builder().key(CAPACITY_TAG).value(record).build();
                    let tag = match tag {
                        Ok(tag) => tag,
                        Err(e) => return Step::Failed { retryable: false, error: format!("the record tag: {e}") },
                    };
                    if let Err(e) = dynamodb.tag_resource().resource_arn(&arn).tags(tag).send().await {
                        return failed("TagResource", &e);
                    }
                }
            }
        }
        let want = or_step!(target(p, base, table));
        if want == now {
            return Step::Done { summary: format!("table {table} already has {}", want.text()) };
        }
        let mut update = dynamodb.update_table().table_name(table);
        if want.billing != now.billing {
            update = update.billing_mode(match want.billing {
                Billing::Provisioned => BillingMode::Provisioned,
                Billing::PayPerRequest => BillingMode::PayPerRequest,
            });
        }
        if want.billing == Billing::Provisioned {
            let units = ProvisionedThroughput::builder()
                .read_capacity_units(want.read)
                .write_capacity_units(want.write)
                .build();
            match units {
                Ok(units) => update = update.provisioned_throughput(units),
                Err(e) => return Step::Failed { retryable: false, error: format!("the capacity: {e}") },
            }
        }
        match update.send().await {
            Ok(_) => Step::pending(Duration::from_secs(p.check_after_secs), &want),
            Err(e) => failed("UpdateTable", &e),
        }
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &DynamodbCapacityParams, want: Settings) -> Step {
        let dynamodb = or_step!(ctx.dynamodb().await);
        let table = ctx.job.resource.id.as_str();
        let description = or_step!(describe_table(&dynamodb, table).await);
        if description.table_status() != Some(&TableStatus::Active) {
            return Step::pending(Duration::from_secs(p.check_after_secs), &want);
        }
        let now = Settings::of(&description);
        if now == want {
            return Step::Done { summary: format!("table {table} has {}", want.text()) };
        }
        Step::Failed {
            retryable: true,
            error: format!("table {table} is ACTIVE with {}, not the {} asked for", now.text(), want.text()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provisioned(read: i64, write: i64) -> Settings {
        Settings { billing: Billing::Provisioned, read, write }
    }

    #[test]
    fn a_multiply_rounds_up_and_stops_at_its_caps() {
        let p = DynamodbCapacityParams { multiply: Some(1.5), max_write: Some(12), ..Default::default() };
        assert_eq!(target(&p, provisioned(5, 10), "t").ok(), Some(provisioned(8, 12)));
        let on_demand = Settings { billing: Billing::PayPerRequest, read: 0, write: 0 };
        assert!(matches!(target(&p, on_demand, "t"), Err(Step::Failed { retryable: false, .. })));
    }

    #[test]
    fn switching_to_provisioned_takes_both_units_and_the_record_names_its_job() {
        let on_demand = Settings { billing: Billing::PayPerRequest, read: 0, write: 0 };
        let p =
            DynamodbCapacityParams { billing_mode: Some(Billing::Provisioned), read: Some(5), ..Default::default() };
        assert!(matches!(target(&p, on_demand, "t"), Err(Step::Failed { retryable: false, .. })));
        let p = DynamodbCapacityParams { write: Some(7), ..Default::default() };
        assert_eq!(target(&p, provisioned(5, 10), "t").ok(), Some(provisioned(5, 7)));
        let tags = vec![(CAPACITY_TAG.to_owned(), "job-1 5 10".to_owned())];
        assert_eq!(recorded(&tags, "job-1"), Some(provisioned(5, 10)));
        assert_eq!(recorded(&tags, "job-2"), None, "another job's record is not this one's");
    }
}
