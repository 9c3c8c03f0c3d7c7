//! The chain of a pending job's checks in its record: which check runs, under whose claim.

use super::{at_check, fenced, job_key, Ledger, Status};
use opsfleet_protocol::ports::{Cond, StoreError, Update};
use opsfleet_protocol::Job;
use std::time::Duration;

/// One link of a pending job's chain of checks, as its handler records that it runs.
#[derive(Debug, Clone, Copy)]
pub struct CheckLink<'a> {
    /// Checks run before this one (the number in its message).
    pub previous: u32,
    /// The link's token: the same in every delivery of its message, a redriven copy's too.
    pub token: &'a str,
    /// This handling's claim: unique to one delivery being handled.
    pub claim: &'a str,
    /// How long a claim holds off other handlings: the longest a check step can run, and a
    /// lease more. A claim older than this belongs to a handler that died.
    pub hold: Duration,
}

/// What recording that a check runs came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Recorded: this handling runs the check.
    Running,
    /// Another handling of the job's checks runs now (a second delivery, or a handler that
    /// may have died): try again after this long.
    Busy(Duration),
    /// The chain moved past this link, or the job is no longer pending under the fence.
    Stale,
}

impl Ledger {
    /// Records that the check after `link.previous` runs under `fence`, claimed by this
    /// handling: only when the chain is at that check and no other handling's claim is live, or
    /// when this very link (its token) recorded it already and its claim is this handling's or
    /// lapsed (a handed-back, redelivered or redriven message goes on). A second delivery of a
    /// check never runs beside the first, and a late one never forks the chain.
    pub async fn checked(&self, job: &Job, fence: i64, link: &CheckLink<'_>) -> Result<Checked, StoreError> {
        let now = self.now();
        let lapsed_before = now - link.hold.as_millis() as i64;
        let next = link.previous + 1;
        let unclaimed = || {
            Cond::Or(vec![
                Cond::Lacks("check_claimed_ms".into()),
                Cond::lt("check_claimed_ms", lapsed_before),
                Cond::eq("check_claim", link.claim),
            ])
        };
        let this_link = Cond::And(vec![at_check(next), Cond::eq("check_token", link.token), unclaimed()]);
        let cond = Cond::And(vec![
            fenced(fence),
            Cond::Or(vec![Cond::And(vec![at_check(link.previous), unclaimed()]), this_link]),
        ]);
        let update = Update::default()
            .set("checks", i64::from(next))
            .set("check_token", link.token)
            .set("check_claim", link.claim)
            .set("check_claimed_ms", now);
        let current = match self.store.update(&job_key(&job.id), update, cond).await {
            Ok(_) => return Ok(Checked::Running),
            Err(StoreError::ConditionFailed { current, .. }) => match current {
                Some(item) => Some(*item),
                None => self.store.get(&job_key(&job.id)).await?,
            },
            Err(e) => return Err(e),
        };
        let Some(item) = current else { return Ok(Checked::Stale) };
        let checks = item.int("checks").unwrap_or(0);
        let ours = (checks == i64::from(link.previous))
            || (checks == i64::from(next) && item.str("check_token") == Some(link.token));
        let claimed = item.int("check_claimed_ms").unwrap_or(0);
        let live = item.int("fence") == Some(fence)
            && matches!(item.str("status"), Some(s) if s == Status::Pending.as_str() || s == Status::InProgress.as_str());
        Ok(if ours && live && claimed >= lapsed_before {
            Checked::Busy(Duration::from_millis((claimed - lapsed_before).max(1) as u64))
        } else {
            Checked::Stale
        })
    }
}
