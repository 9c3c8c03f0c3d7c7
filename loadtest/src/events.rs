//! The load: EventBridge `CloudWatch Alarm State Change` events whose metrics name a number
//! of distinct instances each, the fleet config that routes them to `noop`, and the job ids
//! the router will give them.

use opsfleet_protocol::job::job_id;
use opsfleet_protocol::{Resource, ResourceType};
use serde_json::{json, Value};

/// The account every event and resource is in.
pub const ACCOUNT: &str = "123456789012";

/// The region every event and resource is in.
pub const REGION: &str = "us-east-1";

/// The fleet name on the embedded backend: queues `loadtest-events`, `loadtest-jobs-N.fifo`,
/// table `loadtest`. On AWS each run names a fleet of its own.
pub const FLEET: &str = "loadtest";

/// The one task of the config.
pub const TASK: &str = "recover-alarmed-instance";

/// The settings of the generated fleet config.
#[derive(Debug, Clone, Copy)]
pub struct FleetShape<'a> {
    /// The fleet's name.
    pub fleet: &'a str,
    /// Job queue partitions.
    pub partitions: u32,
    /// Router long-poll loops (`[router] pollers`).
    pub routers: u32,
    /// Jobs in flight per worker (`[worker] max_in_flight`).
    pub max_in_flight: u32,
    /// The `noop` action's `sleep_ms`.
    pub sleep_ms: u64,
    /// Jobs per event, to raise `max_jobs_per_event` when needed.
    pub resources_per_event: usize,
}

/// The fleet config text: one task that matches the generated alarm events and runs `noop`
/// on every instance they name.
pub fn config_text(shape: &FleetShape<'_>) -> String {
    let FleetShape { fleet, partitions, routers, max_in_flight, sleep_ms, resources_per_event } = *shape;
    let cap = resources_per_event.max(10_000);
    format!(
        r#"[fleet]
name = "{fleet}"
partitions = {partitions}
allowed_accounts = ["{ACCOUNT}"]
max_jobs_per_event = {cap}

[router]
pollers = {routers}

[worker]
max_in_flight = {max_in_flight}

[[tasks]]
name = "{TASK}"
pattern = {{ source = ["aws.cloudwatch"], "detail-type" = ["CloudWatch Alarm State Change"], detail = {{ state = {{ value = ["ALARM"] }} }} }}
targets = "event"
action = "noop"
params = {{ sleep_ms = {sleep_ms} }}
"#
    )
}

/// One generated event.
#[derive(Debug, Clone)]
pub struct LoadEvent {
    /// The event id (unique in the run).
    pub id: String,
    /// The event JSON, as EventBridge delivers it to SQS.
    pub body: String,
    /// The resource keys the event names, one job each.
    pub resource_keys: Vec<String>,
}

impl LoadEvent {
    /// The ids of the jobs the router makes of this event.
    pub fn job_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.resource_keys.iter().map(|key| job_id(&self.id, TASK, key))
    }
}

/// The id of the `resource`-th instance of the `event`-th event: distinct across the run, so
/// every job has its own FIFO message group and lock.
fn instance_id(event: usize, resource: usize, per_event: usize) -> String {
    format!("i-{:017x}", event * per_event + resource)
}

/// The `index`-th event: an alarm going from OK to ALARM whose `per_event` metrics each name
/// one instance in their `InstanceId` dimension.
pub fn alarm_event(index: usize, per_event: usize) -> LoadEvent {
    let id = format!("00000000-0000-4000-8000-{index:012x}");
    let alarm = format!("loadtest-{index}-cpu-high");
    let instances: Vec<String> = (0..per_event).map(|r| instance_id(index, r, per_event)).collect();
    let metrics: Vec<Value> = instances
        .iter()
        .enumerate()
        .map(|(r, instance)| {
            json!({
                "id": format!("m{r}"),
                "metricStat": {
                    "metric": {
                        "dimensions": { "InstanceId": instance },
                        "name": "CPUUtilization",
                        "namespace": "AWS/EC2"
                    },
                    "period": 300,
                    "stat": "Average"
                },
                "returnData": r == 0
            })
        })
        .collect();
    let body = json!({
        "version": "0",
        "id": id,
        "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch",
        "account": ACCOUNT,
        "time": "2024-05-15T17:04:40Z",
        "region": REGION,
        "resources": [format!("arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{alarm}")],
        "detail": {
            "alarmName": alarm,
            "configuration": { "description": "load test", "metrics": metrics },
            "previousState": { "reason": "Threshold Crossed", "timestamp": "2024-05-15T16:59:40.985+0000", "value": "OK" },
            "state": { "reason": "Threshold Crossed", "timestamp": "2024-05-15T17:04:40.989+0000", "value": "ALARM" }
        }
    })
    .to_string();
    let resource_keys = instances
        .into_iter()
        .map(|id| {
            Resource { account: ACCOUNT.to_owned(), region: REGION.to_owned(), kind: ResourceType::Instance, id }.key()
        })
        .collect();
    LoadEvent { id, body, resource_keys }
}

/// `count` events of `per_event` instances each.
pub fn alarm_events(count: usize, per_event: usize) -> Vec<LoadEvent> {
    (0..count).map(|i| alarm_event(i, per_event)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsfleet_protocol::event::normalize;
    use opsfleet_protocol::{Config, Planner};
    use opsfleet_worker::ActionRegistry;

    #[test]
    fn the_planner_makes_the_expected_jobs_of_every_event() {
        let shape = FleetShape {
            fleet: FLEET,
            partitions: 4,
            routers: 2,
            max_in_flight: 64,
            sleep_ms: 5,
            resources_per_event: 3,
        };
        let config = Config::parse(&config_text(&shape), Some(&ActionRegistry::builtin())).expect("valid config");
        let planner = Planner::new(config);
        let events = alarm_events(2, 3);
        assert_ne!(events[0].id, events[1].id);
        for event in &events {
            let plan = planner.plan(&normalize(&event.body).expect("an event"), 0).expect("a plan");
            let planned: Vec<String> = plan.jobs.iter().map(|j| j.id.clone()).collect();
            let expected: Vec<String> = event.job_ids().collect();
            assert_eq!(planned.len(), 3);
            assert_eq!(planned, expected);
        }
    }
}
