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

/// The EventBridge rule of a task (its pattern's, or its schedule's): `{fleet}.{task}`, cut
/// to EventBridge's 64 characters with a digest of the whole name when longer. A fleet's name
/// has no dot, so `{fleet}.` starts the rules of that fleet and of no other.
pub fn rule(fleet: &str, task: &str) -> String {
    let name = format!("{fleet}.{task}");
    if name.len() <= 64 {
        return name;
    }
    let digest = crate::job::digest(&[&name], 4);
    let mut cut = 64 - digest.len() - 1;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{digest}", &name[..cut])
}

/// The pattern of the events a schedule rule sends: EventBridge's `Scheduled Event`, whose
/// `resources` name the rule's ARN.
pub fn schedule_pattern(rule: &str) -> serde_json::Value {
    serde_json::json!({
        "source": ["aws.events"],
        "detail-type": ["Scheduled Event"],
        "resources": [{ "suffix": format!(":rule/{rule}") }],
    })
}
