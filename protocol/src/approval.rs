//! Approvals: a run of a task with `approve = { topic_arn, timeout_mins }` waits, its jobs
//! holding no worker, until an operator approves it (`opsfleet approve RUN`) or denies it
//! (`opsfleet deny RUN`); past its timeout nobody can, and its jobs are cancelled with the
//! reason (dead-lettered, so `opsfleet dlq redrive` can still run them).
//!
//! The router asks for an approval when it plans the run, before any of its jobs go out: one
//! item per run under the partition `approvals`, naming the task, what it does and to which
//! resources. The first worker to meet a job of the run publishes the SNS notice. Who decided
//! is the caller's identity from STS, kept on the item with the decision.

use crate::ports::{AttrValue, Cond, Item, Key, Store, StoreError, Update};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The partition key of every approval item.
pub const APPROVALS_PK: &str = "approvals";

/// The most resources an approval names (the count is always whole).
pub const MAX_NAMED_TARGETS: usize = 50;

/// Where a run's approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nobody has decided yet.
    Waiting,
    /// Approved: the run's jobs go ahead.
    Approved,
    /// Denied: the run's jobs are cancelled.
    Denied,
    /// Nobody decided in time: the run's jobs are cancelled.
    TimedOut,
}

impl Decision {
    /// The decision as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Waiting => "WAITING",
            Decision::Approved => "APPROVED",
            Decision::Denied => "DENIED",
            Decision::TimedOut => "TIMED_OUT",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Decision::Waiting, Decision::Approved, Decision::Denied, Decision::TimedOut]
            .into_iter()
            .find(|d| d.as_str() == text)
    }
}

/// One run's approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The run.
    pub run: String,
    /// Its task.
    pub task: String,
    /// The event it came from.
    pub event_id: String,
    /// What the run does to each resource (the action, or the runbook's steps).
    pub what: String,
    /// The resources it acts on, up to [`MAX_NAMED_TARGETS`].
    pub targets: Vec<String>,
    /// How many resources it acts on.
    pub count: u32,
    /// The SNS topic the notice goes to.
    pub topic_arn: String,
    /// When it was asked for, in Unix ms.
    pub requested_ms: u64,
    /// When it times out, in Unix ms.
    pub expires_ms: u64,
    /// Where it stands.
    pub decision: Decision,
    /// Who decided (the caller's ARN), or why it timed out.
    pub decided_by: Option<String>,
    /// When it was decided.
    pub decided_ms: Option<u64>,
    /// Whether its notice went out (or is going out).
    pub noticed: bool,
}

/// What an approval request asks: which run, of which task and event, to do what, on which
/// resources.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The run (or `RUN.STEP` for a runbook's approval step).
    pub run: String,
    /// Its task.
    pub task: &'a str,
    /// Its event.
    pub event_id: &'a str,
    /// What it will do to each resource.
    pub what: String,
    /// The resources (the first [`MAX_NAMED_TARGETS`] are named).
    pub targets: Vec<String>,
    /// How many resources.
    pub count: u32,
}

impl Approval {
    /// The request waiting for a decision from `now_ms`, with the task's `approve` settings.
    pub fn waiting(request: Request<'_>, settings: &crate::config::ApproveSettings, now_ms: u64) -> Self {
        Approval {
            run: request.run,
            task: request.task.to_owned(),
            event_id: request.event_id.to_owned(),
            what: request.what,
            targets: request.targets.into_iter().take(MAX_NAMED_TARGETS).collect(),
            count: request.count,
            topic_arn: settings.topic_arn.clone(),
            requested_ms: now_ms,
            expires_ms: now_ms + u64::from(settings.timeout_mins.get()) * 60_000,
            decision: Decision::Waiting,
            decided_by: None,
            decided_ms: None,
            noticed: false,
        }
    }

    /// The decision at `now_ms`: a waiting approval past its timeout has timed out.
    pub fn decision_at(&self, now_ms: u64) -> Decision {
        match self.decision {
            Decision::Waiting if now_ms >= self.expires_ms => Decision::TimedOut,
            other => other,
        }
    }

    /// The reason the run's jobs are cancelled with, when it was denied or timed out.
    pub fn cancel_reason(&self, now_ms: u64) -> Option<String> {
        match self.decision_at(now_ms) {
            Decision::Denied => Some(format!("approval denied by {}", self.decided_by.as_deref().unwrap_or("someone"))),
            Decision::TimedOut => Some(format!(
                "approval timed out: nobody approved run {} by {}",
                self.run,
                crate::template::iso(self.expires_ms)
            )),
            Decision::Waiting | Decision::Approved => None,
        }
    }

    /// The notice's text: what will be done to which resources, and how to decide.
    pub fn notice(&self, fleet: &str) -> String {
        let more = self.count as usize - self.targets.len().min(self.count as usize);
        let mut lines = vec![
            format!("Run {} of task {} (event {}) waits for approval.", self.run, self.task, self.event_id),
            format!("It will {} on {} resources:", self.what, self.count),
        ];
        lines.extend(self.targets.iter().map(|t| format!("  {t}")));
        if more > 0 {
            lines.push(format!("  and {more} more"));
        }
        lines.push(format!(
            "Approve: opsfleet approve {} --config FILE   Deny: opsfleet deny {} --config FILE   (fleet {fleet}; \
             it times out at {}, cancelling its jobs)",
            self.run,
            self.run,
            crate::template::iso(self.expires_ms)
        ));
        lines.join("\n")
    }

    fn item(&self) -> Item {
        let attrs = BTreeMap::from([
            ("task".to_owned(), AttrValue::from(self.task.as_str())),
            ("event_id".to_owned(), AttrValue::from(self.event_id.as_str())),
            ("what".to_owned(), AttrValue::from(self.what.as_str())),
            ("targets".to_owned(), AttrValue::from(self.targets.join("\n"))),
            ("count".to_owned(), AttrValue::from(i64::from(self.count))),
            ("topic_arn".to_owned(), AttrValue::from(self.topic_arn.as_str())),
            ("requested_ms".to_owned(), AttrValue::from(self.requested_ms as i64)),
            ("expires_ms".to_owned(), AttrValue::from(self.expires_ms as i64)),
            ("decision".to_owned(), AttrValue::from(self.decision.as_str())),
            // Kept a week past its timeout, for the audit.
            ("expires_at".to_owned(), AttrValue::from((self.expires_ms / 1000 + 7 * 86_400) as i64)),
        ]);
        Item { key: key(&self.run), attrs }
    }

    fn of(item: &Item) -> Option<Approval> {
        let int = |name: &str| item.int(name).unwrap_or(0).max(0) as u64;
        Some(Approval {
            run: item.key.sk.clone(),
            task: item.str("task")?.to_owned(),
            event_id: item.str("event_id").unwrap_or_default().to_owned(),
            what: item.str("what").unwrap_or_default().to_owned(),
            targets: item.str("targets").unwrap_or_default().lines().map(str::to_owned).collect(),
            count: int("count") as u32,
            topic_arn: item.str("topic_arn").unwrap_or_default().to_owned(),
            requested_ms: int("requested_ms"),
            expires_ms: int("expires_ms"),
            decision: Decision::parse(item.str("decision")?)?,
            decided_by: item.str("decided_by").map(str::to_owned),
            decided_ms: item.int("decided_ms").map(|n| n.max(0) as u64),
            noticed: item.attrs.contains_key("noticed"),
        })
    }
}

fn key(run: &str) -> Key {
    Key::new(APPROVALS_PK, run)
}

/// What deciding an approval came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// The decision was recorded.
    Recorded,
    /// No run of that id waits for approval.
    Unknown,
    /// It was decided before (or timed out): as it stands.
    Already(Box<Approval>),
}

/// The approvals of one fleet, in its table.
#[derive(Clone)]
pub struct Approvals {
    store: Arc<dyn Store>,
}

impl Approvals {
    /// The approvals kept in a fleet's table.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Approvals { store }
    }

    /// Asks for a run's approval, once: a second ask (the event delivered again, a discovery's
    /// retry) leaves the first as it is.
    pub async fn request(&self, approval: &Approval) -> Result<(), StoreError> {
        match self.store.put(approval.item(), Cond::NotExists).await {
            Ok(()) | Err(StoreError::ConditionFailed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A run's approval, read strongly (`fresh`) or eventually consistently.
    pub async fn get(&self, run: &str, fresh: bool) -> Result<Option<Approval>, StoreError> {
        let item = if fresh { self.store.get(&key(run)).await? } else { self.store.peek(&key(run)).await? };
        Ok(item.as_ref().and_then(Approval::of))
    }

    /// Every approval kept (waiting ones, and decided ones for a week), oldest first.
    pub async fn list(&self) -> Result<Vec<Approval>, StoreError> {
        let mut all: Vec<Approval> =
            self.store.query_prefix(APPROVALS_PK, "").await?.iter().filter_map(Approval::of).collect();
        all.sort_by_key(|a| a.requested_ms);
        Ok(all)
    }

    /// Approves (`approve`) or denies a waiting run as `by`, at `now_ms`; a run past its timeout
    /// can no longer be approved.
    pub async fn decide(&self, run: &str, approve: bool, by: &str, now_ms: u64) -> Result<Decided, StoreError> {
        let decision = if approve { Decision::Approved } else { Decision::Denied };
        let update =
            Update::default().set("decision", decision.as_str()).set("decided_by", by).set("decided_ms", now_ms as i64);
        match self.get(run, true).await? {
            None => return Ok(Decided::Unknown),
            Some(found) if found.decision_at(now_ms) != Decision::Waiting => {
                return Ok(Decided::Already(Box::new(Approval { decision: found.decision_at(now_ms), ..found })))
            }
            Some(_) => {}
        }
        match self.store.update(&key(run), update, Cond::eq("decision", Decision::Waiting.as_str())).await {
            Ok(_) => Ok(Decided::Recorded),
            Err(StoreError::ConditionFailed { current, .. }) => Ok(match current.as_deref().and_then(Approval::of) {
                Some(found) => Decided::Already(Box::new(found)),
                None => Decided::Unknown,
            }),
            Err(e) => Err(e),
        }
    }

    /// Records that a waiting run timed out (once), with the reason.
    pub async fn time_out(&self, run: &str, reason: &str, now_ms: u64) -> Result<(), StoreError> {
        let update = Update::default()
            .set("decision", Decision::TimedOut.as_str())
            .set("decided_by", reason)
            .set("decided_ms", now_ms as i64);
        match self.store.update(&key(run), update, Cond::eq("decision", Decision::Waiting.as_str())).await {
            Ok(_) | Err(StoreError::ConditionFailed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Claims the sending of a run's notice: true for the one caller that gets it.
    pub async fn claim_notice(&self, run: &str) -> Result<bool, StoreError> {
        let update = Update::default().set("noticed", true);
        match self.store.update(&key(run), update, Cond::And(vec![Cond::Exists, Cond::Lacks("noticed".into())])).await {
            Ok(_) => Ok(true),
            Err(StoreError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives a claimed notice back (its publish failed), for another try.
    pub async fn release_notice(&self, run: &str) -> Result<(), StoreError> {
        self.store.update(&key(run), Update::default().remove("noticed"), Cond::Exists).await.map(|_| ())
    }
}
