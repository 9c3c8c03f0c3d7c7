//! Where a job of a task with `approve` stands: its run approved (it goes ahead), waiting (it
//! waits, holding no worker), or denied or timed out (its run is cancelled with the reason).
//! The first worker to meet a waiting run publishes its notice. Reads are eventually
//! consistent and shared per run for [`READ_EVERY`]; an approved run is remembered.

use crate::telemetry::ApprovalNotice;
use opsfleet_backend::aws::AwsClients;
use opsfleet_protocol::approval::{Approval, Approvals, Decision, Request};
use opsfleet_protocol::config::ApproveSettings;
use opsfleet_protocol::ports::{Store, StoreError};
use opsfleet_protocol::resource::Arn;
use opsfleet_protocol::Job;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How long one read of a run's approval is taken as current.
pub const READ_EVERY: Duration = Duration::from_secs(2);

/// The most runs whose reads are remembered; past it, the memory starts again.
const REMEMBERED_RUNS: usize = 10_000;

/// Where a job's run stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Standing {
    /// Approved: the job goes ahead.
    Go,
    /// Nobody has decided yet: the job waits.
    Wait,
    /// Denied, timed out, or never asked for: the run is cancelled with this reason.
    Cancel(String),
}

/// The approvals of the fleet's runs, as this process last read them.
pub(super) struct ApprovalWatch {
    approvals: Approvals,
    fleet: String,
    aws: Option<Arc<dyn AwsClients>>,
    read: Mutex<HashMap<String, (Instant, Option<Approval>)>>,
}

impl ApprovalWatch {
    pub(super) fn new(store: Arc<dyn Store>, fleet: &str) -> Self {
        ApprovalWatch { approvals: Approvals::new(store), fleet: fleet.to_owned(), aws: None, read: Mutex::default() }
    }

    /// The same watch publishing notices with these clients (none: notices are logged).
    pub(super) fn set_aws(&mut self, aws: Arc<dyn AwsClients>) {
        self.aws = Some(aws);
    }

    /// Where the run of `job` stands at `now_ms`.
    pub(super) async fn standing(&self, job: &Job, now_ms: u64) -> Result<Standing, StoreError> {
        let run = job.run_id();
        let Some(approval) = self.fresh(&run).await? else {
            return Ok(Standing::Cancel(format!(
                "run {run} of task {} has no approval request: its jobs were routed before the task asked for \
                 approval",
                job.task
            )));
        };
        self.decided(approval, now_ms).await
    }

    /// Where a runbook's approval step `step` stands for the run of `job`: the first job of the
    /// run to reach the step asks for it.
    pub(super) async fn step_standing(
        &self,
        job: &Job,
        step: &str,
        settings: &ApproveSettings,
        now_ms: u64,
    ) -> Result<Standing, StoreError> {
        let id = format!("{}.{step}", job.run_id());
        let approval = match self.fresh(&id).await? {
            Some(approval) => approval,
            None => {
                let request = Request {
                    run: id.clone(),
                    task: &job.task,
                    event_id: &job.event_id,
                    what: format!("continue its runbook past the approval step `{step}`"),
                    targets: vec![job.resource.key()],
                    count: job.run_size.unwrap_or(1),
                };
                let asked = Approval::waiting(request, settings, now_ms);
                self.approvals.request(&asked).await?;
                match self.approvals.get(&id, true).await? {
                    Some(approval) => approval,
                    None => return Ok(Standing::Wait),
                }
            }
        };
        self.decided(approval, now_ms).await
    }

    /// An approval, read eventually consistently and, when that misses it, strongly.
    async fn fresh(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        match self.read(id).await? {
            Some(approval) => Ok(Some(approval)),
            None => self.approvals.get(id, true).await,
        }
    }

    /// What an approval's decision means for a job at `now_ms`.
    async fn decided(&self, approval: Approval, now_ms: u64) -> Result<Standing, StoreError> {
        let run = approval.run.clone();
        match approval.decision_at(now_ms) {
            Decision::Approved => Ok(Standing::Go),
            Decision::Waiting => {
                self.notice(&approval).await?;
                Ok(Standing::Wait)
            }
            decision => {
                let reason = approval.cancel_reason(now_ms).unwrap_or_default();
                if decision == Decision::TimedOut {
                    self.approvals.time_out(&run, &reason, now_ms).await?;
                }
                Ok(Standing::Cancel(reason))
            }
        }
    }

    async fn read(&self, run: &str) -> Result<Option<Approval>, StoreError> {
        {
            let read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, approval)) = read.get(run) {
                let approved = approval.as_ref().is_some_and(|a| a.decision == Decision::Approved);
                if approved || at.elapsed() < READ_EVERY {
                    return Ok(approval.clone());
                }
            }
        }
        let approval = self.approvals.get(run, false).await?;
        let mut read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        if read.len() >= REMEMBERED_RUNS {
            read.clear();
        }
        read.insert(run.to_owned(), (Instant::now(), approval.clone()));
        Ok(approval)
    }

    /// Publishes a waiting run's notice, once for the fleet: the worker that claims it sends
    /// it, and gives the claim back when the publish fails.
    async fn notice(&self, approval: &Approval) -> Result<(), StoreError> {
        if approval.noticed || !self.approvals.claim_notice(&approval.run).await? {
            return Ok(());
        }
        let text = approval.notice(&self.fleet);
        let Some(aws) = &self.aws else {
            ApprovalNotice { run: &approval.run, outcome: "logged", detail: &text }.emit();
            return Ok(());
        };
        let published = async {
            let arn =
                Arn::parse(&approval.topic_arn).ok_or_else(|| format!("`{}` is not an ARN", approval.topic_arn))?;
            let sns = aws.sns(arn.account, arn.region).await.map_err(|e| e.to_string())?;
            let subject = format!("opsfleet: approve run {} of {}?", approval.run, approval.task);
            sns.publish()
                .topic_arn(&approval.topic_arn)
                .subject(subject.chars().take(99).collect::<String>())
                .message(&text)
                .send()
                .await
                .map_err(|e| aws_sdk_sns::error::DisplayErrorContext(&e).to_string())
        };
        match published.await {
            Ok(_) => ApprovalNotice { run: &approval.run, outcome: "published", detail: &approval.topic_arn }.emit(),
            Err(error) => {
                ApprovalNotice { run: &approval.run, outcome: "failed", detail: &error }.emit();
                self.approvals.release_notice(&approval.run).await?;
            }
        }
        Ok(())
    }
}
