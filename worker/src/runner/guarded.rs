//! Running an action step under heartbeats and a deadline.

use super::held::Held;
use crate::actions::Step;
use crate::lease::Leases;
use crate::telemetry::{LeaseLost, WorkerCallFailed};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How an action step ended, seen from the worker.
pub(super) enum Guarded {
    /// The step came to this.
    Step(Step),
    /// A lease lapsed and was taken over: stop, write nothing.
    LeaseLost,
    /// The shutdown grace ran out.
    Interrupted,
}

impl Guarded {
    /// A bounded label of how the step ended.
    pub(super) fn result(&self) -> &'static str {
        match self {
            Guarded::Step(Step::Done { .. }) => "done",
            Guarded::Step(Step::Pending { .. }) => "pending",
            Guarded::Step(Step::Failed { .. }) => "failed",
            Guarded::Step(Step::Skipped { .. }) => "skipped",
            Guarded::LeaseLost => "lease_lost",
            Guarded::Interrupted => "interrupted",
        }
    }
}

/// Runs action steps while heartbeating the leases their jobs hold.
pub(super) struct StepGuard {
    leases: Leases,
    lease: Duration,
    hard_stop: CancellationToken,
}

impl StepGuard {
    /// A guard renewing leases of `lease` in `leases`; `hard_stop` ends the shutdown grace.
    pub(super) fn new(leases: Leases, lease: Duration, hard_stop: CancellationToken) -> Self {
        StepGuard { leases, lease, hard_stop }
    }

    /// Runs an action step while heartbeating every lease held; stops when one is lost, when
    /// the shutdown grace runs out, or when `timeout` passes (a retryable failure: the job's
    /// group moves on instead of waiting on a hung call).
    pub(super) async fn run(
        &self,
        step: impl Future<Output = Step>,
        held: &Held,
        job_id: &str,
        timeout: Duration,
    ) -> Guarded {
        tokio::select! {
            step = tokio::time::timeout(timeout, step) => Guarded::Step(step.unwrap_or_else(|_| Step::Failed {
                retryable: true,
                error: format!("the step did not finish within timeout_secs = {}", timeout.as_secs()),
            })),
            () = self.heartbeat(held, job_id) => Guarded::LeaseLost,
            () = self.hard_stop.cancelled() => Guarded::Interrupted,
        }
    }

    /// Renews every lease a third of the way through its lease; when renewals keep failing
    /// (or hang), returns two thirds of the way, before the leases can lapse unseen. Returns
    /// only when a lease is lost.
    async fn heartbeat(&self, held: &Held, job_id: &str) {
        let mut renewed = held.renewed;
        loop {
            let give_up = renewed + self.lease * 2 / 3;
            tokio::time::sleep_until(renewed + self.lease / 3).await;
            let sent = tokio::time::Instant::now();
            let renew = async {
                let mut all_ok = true;
                for lease in held.all() {
                    match self.leases.heartbeat(lease, self.lease, false).await {
                        Ok(true) => {}
                        Ok(false) => return Err(lease.name()),
                        Err(e) => {
                            all_ok = false;
                            WorkerCallFailed { what: "heartbeat", error: &e.to_string() }.emit();
                        }
                    }
                }
                Ok(all_ok)
            };
            match tokio::time::timeout_at(give_up, renew).await {
                Ok(Ok(true)) => renewed = sent,
                Ok(Ok(false)) => {
                    // Try again soon, until the deadline.
                    if tokio::time::Instant::now() >= give_up {
                        LeaseLost { job_id, key: &held.lock().name() }.emit();
                        return;
                    }
                    tokio::time::sleep((self.lease / 20).max(Duration::from_millis(100))).await;
                }
                Ok(Err(key)) => {
                    LeaseLost { job_id, key: &key }.emit();
                    return;
                }
                Err(_) => {
                    LeaseLost { job_id, key: &held.lock().name() }.emit();
                    return;
                }
            }
        }
    }
}
