//! The actions this build knows, by name.

use super::any::Typed;
use super::{
    Action, AmiCreate, AnyAction, DynamodbBackup, DynamodbCapacity, EbsSnapshot, ImageCopy, ImageLifecycle,
    InstancePower, InstanceResize, Noop, Notify, RdsSnapshot, RunCommand, Runbook, SchedulePower, SnapshotCopy,
    SnapshotRetention, Tag,
};
use opsfleet_protocol::config::{ActionCatalog, ActionInfo};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Actions by name; also the catalog `opsfleet validate` checks tasks against, and the one list
/// of the actions this build ships (`opsfleet actions`, `iam-policy` and the docs' checks read
/// it).
#[derive(Clone, Default)]
pub struct ActionRegistry {
    actions: BTreeMap<&'static str, Arc<dyn AnyAction>>,
}

impl ActionRegistry {
    /// Every action this build ships: the single actions, and `runbook`, whose steps run them.
    pub fn builtin() -> Self {
        let single = Self::single();
        single.clone().with(Runbook::new(single))
    }

    /// Every action this build ships but `runbook`.
    fn single() -> Self {
        ActionRegistry::default()
            .with(Noop)
            .with(EbsSnapshot)
            .with(SnapshotCopy)
            .with(AmiCreate)
            .with(ImageCopy)
            .with(ImageLifecycle)
            .with(InstancePower)
            .with(InstanceResize)
            .with(Tag)
            .with(SnapshotRetention)
            .with(Notify)
            .with(DynamodbBackup)
            .with(DynamodbCapacity)
            .with(RdsSnapshot)
            .with(SchedulePower)
            .with(RunCommand)
    }

    /// The same registry with an action added (replacing one of the same name).
    pub fn with<A: Action>(mut self, action: A) -> Self {
        self.actions.insert(A::NAME, Arc::new(Typed(action)));
        self
    }

    /// The action of a name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn AnyAction>> {
        self.actions.get(name)
    }

    /// Every action, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn AnyAction>> {
        self.actions.values()
    }

    /// The names of every action, in order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.actions.keys().copied()
    }
}

impl ActionCatalog for ActionRegistry {
    fn check(&self, action: &str, params: &Value) -> Result<ActionInfo, String> {
        let found = self.actions.get(action).ok_or_else(|| {
            let known: Vec<&str> = self.actions.keys().copied().collect();
            format!("unknown action `{action}`; known: {}", known.join(", "))
        })?;
        let templates = found.check_params(params)?;
        Ok(ActionInfo { targets: found.targets_for(params), limit: found.limit(), templates })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_actions_and_params_are_named() {
        let registry = ActionRegistry::builtin();
        assert!(registry.check("noop", &json!({"sleep_ms": 5})).is_ok());
        let err = registry.check("nop", &json!({})).unwrap_err();
        assert!(
            err.contains("unknown action `nop`; known: ami-create, dynamodb-backup, dynamodb-capacity, ebs-snapshot, image-copy, image-lifecycle, instance-power, instance-resize, noop, notify, rds-snapshot, run-command, runbook"),
            "{err}"
        );
        let err = registry.check("noop", &json!({"sleep": 5})).unwrap_err();
        assert!(err.contains("unknown field `sleep`"), "{err}");
        let err = registry.check("noop", &json!({"fail_rate": 2.0})).unwrap_err();
        assert!(err.contains("fail_rate 2 is not between 0 and 1"), "{err}");
    }
}
