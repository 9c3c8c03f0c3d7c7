//! Actions behind one object type: the worker, the registry and the CLI hold `dyn AnyAction`,
//! which parses a job's params (and a check's state) into the action's own types once per step
//! and calls the typed [`Action`].

use super::params::{help_of, ParamHelp};
use super::{Action, ActionContext, Step};
use async_trait::async_trait;
use opsfleet_protocol::config::LimitDefault;
use opsfleet_protocol::ResourceType;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;

/// An action of any params and state type.
#[async_trait]
pub trait AnyAction: Send + Sync {
    /// The name tasks use in `action = "…"`.
    fn name(&self) -> &'static str;

    /// The resource types it acts on.
    fn targets(&self) -> &'static [ResourceType];

    /// The resource types it acts on with these params (unparsable params: [`Self::targets`]).
    fn targets_for(&self, params: &Value) -> Vec<ResourceType>;

    /// The fleet-wide limit it takes a slot of, with defaults.
    fn limit(&self) -> Option<LimitDefault>;

    /// Whether it changes anything in AWS.
    fn mutates(&self) -> bool;

    /// Its params, from its params struct.
    fn params(&self) -> Vec<ParamHelp>;

    /// Params that use what it can do (the docs' example).
    fn example(&self) -> Value;

    /// Every IAM action its statements name for its example params.
    fn iam_actions(&self) -> Vec<String>;

    /// The IAM statements a task with these params needs.
    fn iam_statements(&self, params: &Value) -> Result<Vec<Value>, String>;

    /// Checks a task's params; its templates by name with their text, so that `opsfleet
    /// validate` checks them and the router copies the event fields they read into each job.
    fn check_params(&self, params: &Value) -> Result<Vec<(String, String)>, String>;

    /// What it would do to the job's resource, for plan mode.
    fn describe(&self, ctx: ActionContext<'_>) -> String;

    /// Starts the effect on the job's resource.
    async fn start(&self, ctx: ActionContext<'_>) -> Step;

    /// Asks how pending work started by `start` is going.
    async fn check(&self, ctx: ActionContext<'_>, state: &Value) -> Step;
}

/// A typed action as an [`AnyAction`].
pub(crate) struct Typed<A>(pub A);

/// A typed action behind the object type the worker runs.
pub fn erased<A: Action>(action: A) -> std::sync::Arc<dyn AnyAction> {
    std::sync::Arc::new(Typed(action))
}

impl<A: Action> Typed<A> {
    fn parse(params: &Value) -> Result<A::Params, String> {
        A::Params::deserialize(params).map_err(|e| format!("params: {e}"))
    }

    /// The job's params, or the failure of a step whose params do not parse (`validate`
    /// checked them; a job from an older config may not match).
    fn job_params(ctx: &ActionContext<'_>) -> Result<A::Params, Step> {
        Self::parse(&ctx.job.params).map_err(|error| Step::Failed { retryable: false, error })
    }
}

#[async_trait]
impl<A: Action> AnyAction for Typed<A> {
    fn name(&self) -> &'static str {
        A::NAME
    }

    fn targets(&self) -> &'static [ResourceType] {
        self.0.targets()
    }

    fn targets_for(&self, params: &Value) -> Vec<ResourceType> {
        match Self::parse(params) {
            Ok(params) => self.0.targets_of(&params),
            Err(_) => self.0.targets().to_vec(),
        }
    }

    fn limit(&self) -> Option<LimitDefault> {
        self.0.limit()
    }

    fn mutates(&self) -> bool {
        self.0.mutates()
    }

    fn params(&self) -> Vec<ParamHelp> {
        help_of::<A::Params>()
    }

    fn example(&self) -> Value {
        self.0.examples().first().and_then(|p| serde_json::to_value(p).ok()).unwrap_or_default()
    }

    fn iam_actions(&self) -> Vec<String> {
        let mut actions = BTreeSet::new();
        for statement in self.0.examples().iter().flat_map(|p| self.0.statements(p)) {
            let listed = statement["Action"].as_array().cloned().unwrap_or_default();
            actions.extend(listed.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        actions.into_iter().collect()
    }

    fn iam_statements(&self, params: &Value) -> Result<Vec<Value>, String> {
        Ok(self.0.statements(&Self::parse(params)?))
    }

    fn check_params(&self, params: &Value) -> Result<Vec<(String, String)>, String> {
        let params = Self::parse(params)?;
        self.0.validate(&params)?;
        Ok(self.0.templates(&params))
    }

    fn describe(&self, ctx: ActionContext<'_>) -> String {
        match Self::job_params(&ctx) {
            Ok(params) => self.0.describe(ctx, &params),
            Err(_) => format!("would run {} on {} with params {}", A::NAME, ctx.job.resource.key(), ctx.job.params),
        }
    }

    async fn start(&self, ctx: ActionContext<'_>) -> Step {
        let params = or_step!(Self::job_params(&ctx));
        self.0.start(ctx, &params).await
    }

    async fn check(&self, ctx: ActionContext<'_>, state: &Value) -> Step {
        let params = or_step!(Self::job_params(&ctx));
        let state = match A::State::deserialize(state) {
            Ok(state) => state,
            Err(e) => {
                return Step::Failed { retryable: false, error: format!("{}: unreadable check state: {e}", A::NAME) }
            }
        };
        self.0.check(ctx, &params, state).await
    }
}
