//! The attempts of a job: attributes of its record (`attempt#NNNN#fence`, one JSON object
//! each), written with the write that records the attempt's outcome, so the audit trail costs
//! no write of its own.

use super::{job_key, Attempt, Ledger, Status};
use crate::table;
use opsfleet_protocol::ports::{Cond, Item, StoreError, Update};
use serde_json::json;

/// The record's attribute holding an attempt.
pub(crate) fn attempt_attribute(attempt: &Attempt) -> String {
    format!("attempt#{:04}#{}", attempt.number, attempt.fence)
}

/// An attempt as the JSON text the record holds.
pub(crate) fn attempt_json(attempt: &Attempt) -> String {
    json!({
        "number": attempt.number,
        "owner": attempt.owner,
        "fence": attempt.fence,
        "locked_ms": attempt.locked_ms,
        "started_ms": attempt.started_ms,
        "released_ms": attempt.released_ms,
        "outcome": attempt.outcome,
        "error": attempt.error,
    })
    .to_string()
}

/// An attempt whose outcome was never recorded, as a lock keeps it for the job's next run:
/// its JSON, and whether the job's `attempts` counted it already (it was begun).
pub(crate) fn remembered_json(attempt: &Attempt, counted: bool) -> String {
    let mut value: serde_json::Value = serde_json::from_str(&attempt_json(attempt)).unwrap_or_default();
    value["counted"] = counted.into();
    value.to_string()
}

/// An attempt a lock kept (see [`remembered_json`]), and whether it was counted.
pub(crate) fn remembered(text: &str) -> Option<(Attempt, bool)> {
    let counted = serde_json::from_str::<serde_json::Value>(text).ok()?.get("counted")?.as_bool()?;
    Some((parse(text)?, counted))
}

fn parse(text: &str) -> Option<Attempt> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let num = |name: &str| v.get(name).and_then(serde_json::Value::as_u64).unwrap_or(0);
    Some(Attempt {
        number: num("number") as u32,
        owner: v.get("owner")?.as_str()?.to_owned(),
        fence: v.get("fence").and_then(serde_json::Value::as_i64).unwrap_or(0),
        locked_ms: num("locked_ms"),
        started_ms: num("started_ms"),
        released_ms: num("released_ms"),
        outcome: v.get("outcome")?.as_str()?.to_owned(),
        error: v.get("error").and_then(serde_json::Value::as_str).map(str::to_owned),
    })
}

/// An attempt item of the layout before attempts moved into the job's record.
fn from_item(number: u32, item: &Item) -> Attempt {
    Attempt {
        number,
        owner: item.str("owner").unwrap_or_default().to_owned(),
        fence: item.int("fence").unwrap_or(0),
        locked_ms: item.int("locked_ms").unwrap_or(0).max(0) as u64,
        started_ms: item.int("started_ms").unwrap_or(0).max(0) as u64,
        released_ms: item.int("released_ms").unwrap_or(0).max(0) as u64,
        outcome: item.str("outcome").unwrap_or_default().to_owned(),
        error: item.str("error").map(str::to_owned),
    }
}

impl Ledger {
    /// Every attempt of a job, in order of its lock's fences: those its record holds, and
    /// the attempt items of tables written before attempts moved into the record.
    pub async fn attempts(&self, job_id: &str) -> Result<Vec<Attempt>, StoreError> {
        let mut attempts: Vec<Attempt> = match self.store.get(&job_key(job_id)).await? {
            Some(item) => item
                .attrs
                .iter()
                .filter(|(name, _)| name.starts_with("attempt#"))
                .filter_map(|(name, _)| item.str(name).and_then(parse))
                .collect(),
            None => Vec::new(),
        };
        for item in self.store.query_prefix(&table::job(job_id).pk, table::ATTEMPT_PREFIX).await? {
            let number = item.key.sk.split('#').nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
            attempts.push(from_item(number, &item));
        }
        attempts.sort_by_key(|a| (a.fence, a.number));
        Ok(attempts)
    }

    /// Records the attempt of a holder whose lease lapsed and was taken over (it crashed or
    /// hung), as found by the taker: only while the job is unfinished under that holder's
    /// fence or an older one, so that a holder that finished and only failed to release is not
    /// marked lapsed. An attempt its holder never got to write is counted in `attempts` here;
    /// one it began was counted then. A job with no record yet gets one, in progress under
    /// the lapsed fence and dated when the lapse was found, so that the `by-status` index lists
    /// it until the job's own message comes back and writes the rest.
    pub async fn lapsed(&self, job_id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        let update = Update::default()
            .set(&attempt_attribute(attempt), attempt_json(attempt))
            .set("expires_at", self.expires_at());
        let in_progress = |fence: Cond| Cond::And(vec![Cond::eq("status", Status::InProgress.as_str()), fence]);
        // Counted once: an SDK retry of these writes finds the attempt there and counts nothing.
        let counted_once = |cond: Cond| Cond::And(vec![Cond::Lacks(attempt_attribute(attempt)), cond]);
        let new = super::with_status(update.clone().add("attempts", 1), Status::InProgress)
            .set("fence", attempt.fence)
            .set("received_ms", self.now());
        let tries = [
            (new, counted_once(Cond::Lacks("status".into()))),
            (update.clone().add("attempts", 1), counted_once(in_progress(Cond::lt("fence", attempt.fence)))),
        ];
        for (update, cond) in tries {
            match self.store.update(&job_key(job_id), update, cond).await {
                Ok(_) => return Ok(()),
                Err(StoreError::ConditionFailed { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        match self.store.update(&job_key(job_id), update, in_progress(Cond::eq("fence", attempt.fence))).await {
            Ok(_) | Err(StoreError::ConditionFailed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
