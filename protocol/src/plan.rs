//! Planning: what jobs an event expands to. Pure, so `opsfleet plan`, the router and the
//! benchmarks share it.

use crate::config::{Config, DiscoveryQuery, Targets};
use crate::event::{named_resources, Event, TargetError};
use crate::job::{Job, JobError, JobOrigin};
use crate::resource::Resource;

/// What an event expands to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The jobs of tasks that act on the resources the event names.
    pub jobs: Vec<Job>,
    /// Tasks that matched and find their resources by discovery, to be run by the caller.
    pub discoveries: Vec<Discovery>,
    /// Names of the tasks that matched.
    pub matched: Vec<String>,
}

/// A discovery a matched task asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The task's index in the config.
    pub task: usize,
    /// The task's name.
    pub task_name: String,
    /// The query.
    pub query: DiscoveryQuery,
    /// The accounts to search (the query's, else the event's).
    pub accounts: Vec<String>,
    /// The regions to search (the query's, else the event's).
    pub regions: Vec<String>,
}

/// Why an event cannot be planned. Each is a one-line reason for the DLQ.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The event comes from an account that is not allowed.
    #[error("account {account} is not in fleet.allowed_accounts")]
    AccountNotAllowed {
        /// The account.
        account: String,
    },
    /// `allowed_accounts` is set and the event names no account.
    #[error("event names no account and fleet.allowed_accounts is set")]
    NoAccount,
    /// A resource is in an account that is not allowed.
    #[error("task {task}: resource {resource} is in account {account}, which is not in fleet.allowed_accounts")]
    ResourceAccountNotAllowed {
        /// The task.
        task: String,
        /// The resource key.
        resource: String,
        /// The account.
        account: String,
    },
    /// The resources an event names cannot be made out.
    #[error("task {task}: {error}")]
    Targets {
        /// The task.
        task: String,
        /// What is wrong.
        error: TargetError,
    },
    /// The event expands to more jobs than the cap allows.
    #[error("event expands to {count} jobs, over fleet.max_jobs_per_event = {cap}")]
    TooManyJobs {
        /// How many jobs.
        count: usize,
        /// The cap.
        cap: u32,
    },
    /// A job cannot be made (checked when the job is serialized, by the caller).
    #[error(transparent)]
    Job(#[from] JobError),
}

/// Expands events into jobs for one config.
#[derive(Debug, Clone)]
pub struct Planner {
    config: Config,
    /// The tasks' patterns compiled together.
    patterns: std::sync::Arc<crate::PatternSet>,
}

impl Planner {
    /// A planner for a config.
    pub fn new(config: Config) -> Self {
        let patterns = std::sync::Arc::new(crate::PatternSet::new(config.tasks.iter().map(|t| &t.pattern)));
        Planner { config, patterns }
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Checks the event's account, matches every task, and expands the tasks that act on the
    /// event's own resources into jobs. Discovery tasks are returned for the caller to run
    /// and pass to [`Planner::jobs_for`].
    pub fn plan(&self, event: &Event, received_ms: u64) -> Result<Plan, PlanError> {
        self.check_account(event)?;
        let mut plan = Plan::default();
        let mut named: Option<Vec<Resource>> = None;
        for index in self.patterns.matching(&event.document) {
            let Some(task) = self.config.tasks.get(index) else { continue };
            plan.matched.push(task.name.clone());
            match &task.targets {
                Targets::Event => {
                    if named.is_none() {
                        named = Some(
                            named_resources(event)
                                .map_err(|error| PlanError::Targets { task: task.name.clone(), error })?,
                        );
                    }
                    let resources = named.as_deref().unwrap_or_default();
                    self.check_cap(plan.jobs.len() + resources.len())?;
                    let jobs = self.jobs_for(event, index, resources, received_ms)?;
                    plan.jobs.extend(jobs);
                }
                Targets::Discover(query) => plan.discoveries.push(Discovery {
                    task: index,
                    task_name: task.name.clone(),
                    query: query.clone(),
                    accounts: if query.accounts.is_empty() {
                        event.account.iter().cloned().collect()
                    } else {
                        query.accounts.clone()
                    },
                    regions: if query.regions.is_empty() {
                        event.region.iter().cloned().collect()
                    } else {
                        query.regions.clone()
                    },
                }),
            }
        }
        Ok(plan)
    }

    /// Fails when `count` jobs are over the per-event cap.
    pub fn check_cap(&self, count: usize) -> Result<(), PlanError> {
        let cap = self.config.fleet.max_jobs_per_event.get();
        if count > cap as usize {
            return Err(PlanError::TooManyJobs { count, cap });
        }
        Ok(())
    }

    /// The jobs of task `task` (an index into the config) for the given resources.
    pub fn jobs_for(
        &self,
        event: &Event,
        task: usize,
        resources: &[Resource],
        received_ms: u64,
    ) -> Result<Vec<Job>, PlanError> {
        let Some(task) = self.config.tasks.get(task) else {
            return Ok(Vec::new());
        };
        let partitions = self.config.fleet.partitions.get();
        let allowed = &self.config.fleet.allowed_accounts;
        let mut jobs = Vec::with_capacity(resources.len());
        for resource in resources.iter().filter(|r| task.acts_on.is_empty() || task.acts_on.contains(&r.kind)) {
            resource
                .check()
                .map_err(|e| PlanError::Targets { task: task.name.clone(), error: TargetError::Invalid(e) })?;
            if !allowed.is_empty() && !allowed.contains(&resource.account) {
                return Err(PlanError::ResourceAccountNotAllowed {
                    task: task.name.clone(),
                    resource: resource.key(),
                    account: resource.account.clone(),
                });
            }
            let origin = JobOrigin {
                event_id: &event.id,
                event_time: event.time.as_deref(),
                received_ms,
                task: &task.name,
                action: &task.action,
                params: &task.params,
            };
            let mut job = Job::new(origin, resource.clone(), partitions);
            for path in &task.event_fields {
                if let Some(value) = crate::template::event_field(&event.document, path) {
                    job.event_fields.insert(path.clone(), value);
                }
            }
            jobs.push(job);
        }
        Ok(jobs)
    }

    fn check_account(&self, event: &Event) -> Result<(), PlanError> {
        let allowed = &self.config.fleet.allowed_accounts;
        if allowed.is_empty() {
            return Ok(());
        }
        match &event.account {
            None => Err(PlanError::NoAccount),
            Some(account) if !allowed.contains(account) => {
                Err(PlanError::AccountNotAllowed { account: account.clone() })
            }
            Some(_) => Ok(()),
        }
    }
}
