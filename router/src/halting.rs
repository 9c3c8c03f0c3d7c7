//! Alarms that halt tasks: the router records each state change of an alarm some task's
//! `halt_on_alarms` names (the task's own or the fleet's) in the fleet's table, where the
//! workers read it before they start a job of the task. The event goes on to be matched like
//! any other.

use crate::telemetry::AlarmHaltChanged;
use opsfleet_protocol::halt::{parse_utc_ms, Halts};
use opsfleet_protocol::ports::{Store, StoreError};
use opsfleet_protocol::{Config, Event};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The detail type of an alarm's state change.
const ALARM_STATE_CHANGE: &str = "CloudWatch Alarm State Change";

/// The alarms that halt tasks, and where their states are kept.
pub(crate) struct AlarmHalts {
    halts: Halts,
    /// The tasks each alarm halts.
    by_alarm: BTreeMap<String, Vec<String>>,
}

impl AlarmHalts {
    /// The halting alarms of a config, kept in the fleet's table; none when no task has any.
    pub(crate) fn of(store: &Arc<dyn Store>, config: &Config) -> Option<Self> {
        let mut by_alarm: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for task in &config.tasks {
            for alarm in &task.halt_on_alarms {
                by_alarm.entry(alarm.clone()).or_default().push(task.name.clone());
            }
        }
        (!by_alarm.is_empty()).then(|| AlarmHalts { halts: Halts::new(Arc::clone(store)), by_alarm })
    }

    /// Records the state change `event` tells of, when it is one of a halting alarm.
    pub(crate) async fn record(&self, event: &Event) -> Result<(), StoreError> {
        if event.detail_type != ALARM_STATE_CHANGE {
            return Ok(());
        }
        let detail = event.detail();
        let Some(alarm) = detail.get("alarmName").and_then(Value::as_str) else { return Ok(()) };
        let Some(tasks) = self.by_alarm.get(alarm) else { return Ok(()) };
        let state = detail.get("state").and_then(Value::as_object);
        let text = |key: &str| state.and_then(|s| s.get(key)).and_then(Value::as_str).unwrap_or_default();
        let at = parse_utc_ms(text("timestamp")).or_else(|| event.time.as_deref().and_then(parse_utc_ms));
        // Without a time the change cannot be ordered against others: it counts as the newest.
        let at_ms = at.unwrap_or_else(|| opsfleet_protocol::Clock::new().now_ms());
        let tasks: Vec<&str> = tasks.iter().map(String::as_str).collect();
        self.halts.alarm_changed(&tasks, alarm, text("value"), at_ms, text("reason")).await?;
        AlarmHaltChanged { alarm, state: text("value"), tasks: &tasks }.emit();
        Ok(())
    }
}
