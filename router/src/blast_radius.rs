//! Blast-radius limits: a run (one event's jobs of one task) may act on at most `max_targets`
//! resources and, for a discovery, at most `max_targets_percent` of the population it searched
//! (every resource of its type in its places, whatever their tags and states). A run over
//! either is refused: none of its jobs go out, and the event goes to the events DLQ with the
//! reason, to be redriven once the task (or its tags) are fixed; unless the task says
//! `allow_over_max_targets`, when the run goes ahead and the excess is logged and counted.

use crate::discovery::{Discover, DiscoveryError};
use crate::telemetry::RunOverLimits;
use opsfleet_protocol::config::Task;
use opsfleet_protocol::plan::Discovery;

/// A run refused for its size: its task and the one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The task whose run was refused.
    pub task: String,
    /// Why, with the figures.
    pub reason: String,
}

/// Why a run of `task` on `targets` resources is over `max_targets`, if it is.
fn over_count(task: &Task, targets: usize) -> Option<String> {
    let max = task.max_targets? as usize;
    (targets > max).then(|| format!("task {}: a run of {targets} targets is over max_targets = {max}", task.name))
}

/// Why a run of `task` on `targets` of a population of `population` is over
/// `max_targets_percent`, if it is.
fn over_share(task: &Task, targets: usize, population: usize) -> Option<String> {
    let percent = task.max_targets_percent? as usize;
    (targets * 100 > percent * population.max(1)).then(|| {
        format!(
            "task {}: a run of {targets} targets is {:.0}% of the {population} {} searched, over max_targets_percent = {percent}",
            task.name,
            targets as f64 * 100.0 / population.max(1) as f64,
            population_kind(task),
        )
    })
}

fn population_kind(task: &Task) -> String {
    match &task.targets {
        opsfleet_protocol::config::Targets::Discover(query) => query.kind.to_string(),
        opsfleet_protocol::config::Targets::Event => "resources".into(),
    }
}

/// Whether a run of `task` on `targets` resources of the event may go ahead: `Err` with the
/// refusal when it is over `max_targets` and the task does not allow that.
pub fn check_named(task: &Task, targets: usize) -> Result<(), Refusal> {
    decide(task, over_count(task, targets))
}

/// Whether a discovery's run of `targets` resources may go ahead: over `max_targets`, or over
/// `max_targets_percent` of the population its places hold (found by a second discovery
/// without the query's tags and states).
pub async fn check_discovered(
    discover: &dyn Discover,
    discovery: &Discovery,
    task: &Task,
    targets: usize,
) -> Result<Result<(), Refusal>, DiscoveryError> {
    if let Some(reason) = over_count(task, targets) {
        return Ok(decide(task, Some(reason)));
    }
    if task.max_targets_percent.is_none() || targets == 0 {
        return Ok(Ok(()));
    }
    let mut everything = discovery.clone();
    everything.query.tags.clear();
    everything.query.state.clear();
    let population = discover.discover_places(&everything).await?.resources.len();
    Ok(decide(task, over_share(task, targets, population.max(targets))))
}

fn decide(task: &Task, over: Option<String>) -> Result<(), Refusal> {
    let Some(reason) = over else { return Ok(()) };
    RunOverLimits { task: &task.name, reason: &reason, allowed: task.allow_over_max_targets }.emit();
    match task.allow_over_max_targets {
        true => Ok(()),
        false => Err(Refusal { task: task.name.clone(), reason }),
    }
}
