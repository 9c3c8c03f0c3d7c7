//! The queues and table a fleet needs, created idempotently through the ports by `opsfleet
//! setup` (and by the demo and the tests on the embedded backend).

use crate::names;
use crate::ports::{Backend, PortError, QueueSpec};
use crate::Config;
use std::time::Duration;

/// How long messages are kept: SQS's maximum, 14 days.
const RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);

/// Receives after which an event the router keeps failing on moves to the events DLQ.
pub const EVENTS_MAX_RECEIVE: u32 = 10;

/// Why setup failed: a queue or the table could not be created.
pub type SetupError = PortError;

/// Every queue of a fleet, dead-letter queues first, with their redrive policies.
pub fn queue_specs(config: &Config) -> Vec<QueueSpec> {
    let fleet = &config.fleet.name;
    let job_visibility = Duration::from_secs(u64::from(config.worker.visibility_secs));
    let max_receive = config.worker.max_receive_count.max(1);
    let spec = |name: String, visibility: Duration, dead_letter: Option<(String, u32)>| QueueSpec {
        name,
        visibility,
        retention: RETENTION,
        dead_letter,
    };
    let mut specs = vec![
        spec(names::events_dlq(fleet), Duration::from_secs(30), None),
        spec(
            names::events_queue(fleet),
            Duration::from_secs(u64::from(config.router.visibility_secs)),
            Some((names::events_dlq(fleet), EVENTS_MAX_RECEIVE)),
        ),
        spec(names::checks_dlq(fleet), Duration::from_secs(30), None),
        spec(names::checks_queue(fleet), job_visibility, Some((names::checks_dlq(fleet), max_receive))),
    ];
    for p in 0..config.fleet.partitions.get() {
        specs.push(spec(names::jobs_dlq(fleet, p), Duration::from_secs(30), None));
        specs.push(spec(names::jobs_queue(fleet, p), job_visibility, Some((names::jobs_dlq(fleet, p), max_receive))));
    }
    specs
}

/// Creates every queue and the table of a fleet; running it again changes nothing.
pub async fn setup(backend: &dyn Backend, config: &Config) -> Result<Vec<String>, SetupError> {
    let mut created = Vec::new();
    for spec in queue_specs(config) {
        backend.ensure_queue(&spec).await?;
        created.push(spec.name);
    }
    let table = names::table(&config.fleet.name);
    backend.ensure_table(&table).await?;
    created.push(table);
    Ok(created)
}
