//! Hibernation, which the emulator takes at launch and then forgets: instances launched with
//! `HibernationOptions.Configured = true` show it in describes, a hibernating stop of one is
//! counted (`hibernated`), and a hibernating stop of any other answers
//! `UnsupportedHibernationConfiguration`, as EC2 answers it.

use super::{lock, QueryRequest, Shared};

/// Remembers the instances a launch made able to hibernate.
pub(super) fn launched(shared: &Shared, request: &QueryRequest, made: &[String]) {
    if request.params.get("HibernationOptions.Configured").is_some_and(|v| v == "true") {
        lock(&shared.seen).hibernating.extend(made.iter().cloned());
    }
}

/// The refusal of a hibernating stop of an instance that cannot hibernate, if any.
pub(super) fn refused(shared: &Shared, request: &QueryRequest, count: &impl Fn(&'static str)) -> Option<String> {
    if request.action() != "StopInstances" || request.params.get("Hibernate").is_none_or(|v| v != "true") {
        return None;
    }
    let seen = lock(&shared.seen);
    let ids = request.list("InstanceId");
    if let Some(id) = ids.iter().find(|id| !seen.hibernating.contains(*id)) {
        return Some(format!("Instance {id} is not enabled for hibernation"));
    }
    count("hibernated");
    None
}

/// A describe's answer with the hibernation option of the instances that have it.
pub(super) fn shown(shared: &Shared, text: String) -> String {
    let seen = lock(&shared.seen);
    let mut text = text;
    for id in &seen.hibernating {
        let at = format!("<instanceId>{id}</instanceId>");
        text = text.replacen(
            &at,
            &format!("{at}<hibernationOptions><configured>true</configured></hibernationOptions>"),
            1,
        );
    }
    text
}
