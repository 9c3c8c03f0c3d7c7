//! The names of a fleet's queues and table, all derived from `fleet.name`.

/// The queue the router reads events from.
pub fn events_queue(fleet: &str) -> String {
    format!("{fleet}-events")
}

/// Where events the router cannot accept go, with the reason as a message attribute.
pub fn events_dlq(fleet: &str) -> String {
    format!("{fleet}-events-dlq")
}

/// The FIFO job queue of one partition.
pub fn jobs_queue(fleet: &str, partition: u32) -> String {
    format!("{fleet}-jobs-{partition}.fifo")
}

/// The dead-letter queue of one job partition (FIFO, as SQS requires for a FIFO source).
pub fn jobs_dlq(fleet: &str, partition: u32) -> String {
    format!("{fleet}-jobs-{partition}-dlq.fifo")
}

/// The queue of delayed completion checks.
pub fn checks_queue(fleet: &str) -> String {
    format!("{fleet}-checks")
}

/// The dead-letter queue of the checks queue.
pub fn checks_dlq(fleet: &str) -> String {
    format!("{fleet}-checks-dlq")
}

/// The DynamoDB table of locks, limit slots and the ledger.
pub fn table(fleet: &str) -> String {
    fleet.to_owned()
}

/// The message attribute that carries the reason a message was dead-lettered.
pub const REASON_ATTRIBUTE: &str = "opsfleet-reason";
