//! The actions this build knows, by name.

use super::{Action, AmiCreate, EbsSnapshot, InstancePower, Noop, Notify, SnapshotCopy, SnapshotRetention, Tag};
use opsfleet_protocol::config::{ActionCatalog, ActionInfo};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Actions by name; also the catalog `opsfleet validate` checks tasks against.
#[derive(Clone)]
pub struct ActionRegistry {
    actions: BTreeMap<&'static str, Arc<dyn Action>>,
}

impl ActionRegistry {
    /// Every action this build ships.
    pub fn builtin() -> Self {
        let mut registry = ActionRegistry { actions: BTreeMap::new() };
        registry.register(Arc::new(Noop));
        registry.register(Arc::new(EbsSnapshot));
        registry.register(Arc::new(SnapshotCopy));
        registry.register(Arc::new(AmiCreate));
        registry.register(Arc::new(InstancePower));
        registry.register(Arc::new(Tag));
        registry.register(Arc::new(SnapshotRetention));
        registry.register(Arc::new(Notify));
        registry
    }

    /// Adds an action (replacing one of the same name).
    pub fn register(&mut self, action: Arc<dyn Action>) {
        self.actions.insert(action.name(), action);
    }

    /// The action of a name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Action>> {
        self.actions.get(name)
    }

    /// Every action, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Action>> {
        self.actions.values()
    }
}

impl ActionCatalog for ActionRegistry {
    fn check(&self, action: &str, params: &Value) -> Result<ActionInfo, String> {
        let found = self.actions.get(action).ok_or_else(|| {
            let known: Vec<&str> = self.actions.keys().copied().collect();
            format!("unknown action `{action}`; known: {}", known.join(", "))
        })?;
        found.check_params(params)?;
        Ok(ActionInfo { targets: found.targets().to_vec(), limit: found.limit(), templates: found.templates(params) })
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
            err.contains("unknown action `nop`; known: ami-create, ebs-snapshot, instance-power, noop, notify"),
            "{err}"
        );
        let err = registry.check("noop", &json!({"sleep": 5})).unwrap_err();
        assert!(err.contains("unknown field `sleep`"), "{err}");
        let err = registry.check("noop", &json!({"fail_rate": 2.0})).unwrap_err();
        assert!(err.contains("fail_rate 2 is not between 0 and 1"), "{err}");
    }
}
