//! Completion checks: running one, scheduling the next, and taking over a job whose check
//! came after its leases lapsed.

use super::*;

impl Worker {
    pub(super) async fn run_check(&self, check: CheckMessage, token: &str) -> Result<Disposition, CallError> {
        let job = &check.job;
        let now = self.clock.now_ms();
        if check.due_ms > now + 100 {
            // Chained past SQS's 15-minute delay: wait again.
            CheckRan { job_id: &job.id, result: "early" }.emit();
            self.send_check(check.clone(), check.due_ms - now).await?;
            return Ok(Disposition::Delete);
        }
        let holding = Holding {
            lock: check.lock.clone(),
            slots: check.slots.clone(),
            locked_ms: check.locked_ms,
            started_ms: check.started_ms,
            renewed: tokio::time::Instant::now(),
        };
        for lease in holding.all() {
            if !self.leases.heartbeat(lease, self.lease).await? {
                CheckRan { job_id: &job.id, result: "stale" }.emit();
                LeaseLost { job_id: &job.id, key: &lease.key }.emit();
                return self.resume_lapsed(job, holding.lock.fence).await;
            }
        }
        let (Some(task), Some(action)) = (self.config.task(&job.task), self.actions.get(&job.action).cloned()) else {
            let body = serde_json::to_string(job).unwrap_or_default();
            self.release(&holding).await;
            return Ok(self
                .dead_letter(
                    job.partition,
                    &body,
                    "the task or action of a pending job is gone from this worker's config",
                    holding.lock.fence,
                )
                .await);
        };
        let checks = check.checks + 1;
        if !self.ledger.checked(job, holding.lock.fence, check.checks, checks, token).await? {
            // A duplicate of a check that already ran, or a job that finished meanwhile.
            CheckRan { job_id: &job.id, result: "stale" }.emit();
            return self.dead_letter_if_failed(job).await;
        }
        let started = tokio::time::Instant::now();
        let ctx = ActionContext { job, dry_run: self.dry_run, attempt: check.attempt, check: checks };
        let step = self.guarded(action.check(ctx, &check.state), &holding, &job.id).await;
        let result = match &step {
            Guarded::Step(Step::Done { .. }) => "done",
            Guarded::Step(Step::Pending { .. }) => "pending",
            Guarded::Step(Step::Failed { .. }) => "failed",
            Guarded::LeaseLost => "stale",
            Guarded::Interrupted => "interrupted",
        };
        CheckRan { job_id: &job.id, result }.emit();
        self.settle(job, task, &action, holding, check.attempt, Some((checks, &check.state)), step, started.elapsed())
            .await
    }

    /// A pending job whose leases lapsed before its check ran (the check came late, or was
    /// handed back): when the ledger still shows it pending under the lapsed fence, the job goes
    /// back to its partition, to start again under a new lock; otherwise someone else has it.
    pub(super) async fn resume_lapsed(&self, job: &Job, fence: i64) -> Result<Disposition, CallError> {
        let record = self.ledger.job(&job.id).await?;
        if !record.as_ref().is_some_and(|r| r.status == Status::Pending && r.fence == fence) {
            return self.dead_letter_if_failed(job).await;
        }
        let queue = &self.partitions[job.partition as usize % self.partitions.len()];
        let body = job.to_json().map_err(|e| QueueError::Invalid {
            queue: queue.name().to_owned(),
            operation: "SendMessageBatch",
            message: e.to_string(),
        })?;
        let message = OutgoingMessage {
            body,
            group_id: Some(job.resource.key()),
            dedup_id: Some(format!("{}-resume-{fence}", job.id)),
            ..Default::default()
        };
        queue.send_one(message).await?;
        tracing::warn!(job_id = %job.id, fence, "A pending job's leases lapsed before its check; it starts again.");
        Ok(Disposition::Delete)
    }

    /// A check that stops: when its job failed for good, make sure the job is in its DLQ (the
    /// dead-lettering may not have gone through before); otherwise nothing is left to do.
    pub(super) async fn dead_letter_if_failed(&self, job: &Job) -> Result<Disposition, CallError> {
        match self.ledger.job(&job.id).await? {
            Some(record) if record.status == Status::Failed => Ok(self.dead_letter_failed(job, record).await),
            _ => Ok(Disposition::Delete),
        }
    }

    /// Keeps the leases for the wait and sends the check that continues the job; when the
    /// check cannot be sent, the leases are released and the message comes back.
    pub(super) async fn schedule_check(
        &self,
        job: &Job,
        holding: &Holding,
        attempt: u32,
        checks: u32,
        state: serde_json::Value,
        after: Duration,
    ) -> Result<Disposition, CallError> {
        for lease in holding.all() {
            if !self.leases.heartbeat(lease, after + self.lease).await? {
                LeaseLost { job_id: &job.id, key: &lease.key }.emit();
                return Ok(Disposition::Retry(Duration::ZERO));
            }
        }
        let check = CheckMessage {
            v: CHECK_VERSION,
            job: job.clone(),
            lock: holding.lock.clone(),
            slots: holding.slots.clone(),
            state,
            due_ms: self.clock.now_ms() + after.as_millis() as u64,
            checks,
            attempt,
            locked_ms: holding.locked_ms,
            started_ms: holding.started_ms,
        };
        if let Err(e) = self.send_check(check, after.as_millis() as u64).await {
            self.release(holding).await;
            return Err(e);
        }
        Ok(Disposition::Delete)
    }

    pub(super) async fn send_check(&self, check: CheckMessage, delay_ms: u64) -> Result<(), CallError> {
        let body = serde_json::to_string(&check).map_err(|e| QueueError::Invalid {
            queue: self.checks.name().to_owned(),
            operation: "SendMessageBatch",
            message: e.to_string(),
        })?;
        // SQS delays are whole seconds: round up, so a check never arrives before it is due.
        let delay = Duration::from_secs(delay_ms.div_ceil(1000)).min(MAX_DELAY);
        let message = OutgoingMessage { body, delay: Some(delay), ..Default::default() };
        Ok(self.checks.send_one(message).await?)
    }
}
