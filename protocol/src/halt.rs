//! Halts: a task whose jobs must not start now. A task halts while one of its
//! `halt_on_alarms` (its own or the fleet's) is in ALARM, as the alarm's state-change events
//! tell the router, and while an operator has halted it by hand (`opsfleet halt TASK`, until
//! `opsfleet resume TASK`). Its jobs wait for the halt to end without holding a worker.
//!
//! Every halt lives in the fleet's table under one partition, `halts`, one item per (task,
//! cause): `<task>#alarm#<alarm name>` with the alarm's last state, and `<task>#hand` with the
//! last halt or resume by hand. Alarm state changes can arrive out of order (the events queue
//! is a standard queue, and SNS retries): an item keeps the time of the change it records, and
//! an older change never overwrites a newer one.

use crate::ports::{AttrValue, Cond, Item, Key, Store, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The partition key of every halt item.
pub const HALTS_PK: &str = "halts";

/// The alarm state that halts.
pub const ALARM: &str = "ALARM";

/// One halt in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt {
    /// The halted task.
    pub task: String,
    /// `alarm NAME` or `by hand`.
    pub cause: String,
    /// Who halted it by hand (the caller's ARN), or the alarm's reason.
    pub detail: String,
    /// When the halt began (the alarm's state change, or the command), in Unix ms.
    pub since_ms: u64,
}

impl Halt {
    /// The halt as one line: `task deploy halted: alarm api-5xx (Threshold crossed) since …`.
    pub fn line(&self) -> String {
        format!(
            "{} halted by {} since {} ({})",
            self.task,
            self.cause,
            crate::template::iso(self.since_ms),
            self.detail
        )
    }
}

/// The halts of one fleet's tasks, in its table.
#[derive(Clone)]
pub struct Halts {
    store: Arc<dyn Store>,
}

impl Halts {
    /// The halts kept in a fleet's table.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Halts { store }
    }

    /// Records that `alarm` went to `state` at `at_ms` (the change's own time), for each of
    /// `tasks` it halts. A change older than the one recorded for a task is ignored.
    pub async fn alarm_changed(
        &self,
        tasks: &[&str],
        alarm: &str,
        state: &str,
        at_ms: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        for task in tasks {
            let key = Key::new(HALTS_PK, format!("{task}#alarm#{alarm}"));
            let attrs = BTreeMap::from([
                ("state".to_owned(), AttrValue::from(state)),
                ("at_ms".to_owned(), AttrValue::from(at_ms as i64)),
                ("detail".to_owned(), AttrValue::from(reason.chars().take(300).collect::<String>())),
            ]);
            let newer = Cond::Or(vec![Cond::Lacks("at_ms".into()), Cond::lt("at_ms", at_ms as i64)]);
            match self.store.put(Item { key, attrs }, newer).await {
                Ok(()) | Err(StoreError::ConditionFailed { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Halts a task by hand (`halted`) or resumes it, as `by`, at `now_ms`. Resuming by hand
    /// ends the halt by hand only: a task whose alarm is in ALARM stays halted until it is OK.
    pub async fn set_by_hand(&self, task: &str, halted: bool, by: &str, now_ms: u64) -> Result<(), StoreError> {
        let key = Key::new(HALTS_PK, format!("{task}#hand"));
        let attrs = BTreeMap::from([
            ("state".to_owned(), AttrValue::from(if halted { "HALTED" } else { "RESUMED" })),
            ("at_ms".to_owned(), AttrValue::from(now_ms as i64)),
            ("detail".to_owned(), AttrValue::from(by)),
        ]);
        self.store.put(Item { key, attrs }, Cond::Always).await
    }

    /// The halts of one task in force now (eventually consistent: a change of the last second
    /// may be missing).
    pub async fn of_task(&self, task: &str) -> Result<Vec<Halt>, StoreError> {
        let items = self.store.peek_prefix(HALTS_PK, &format!("{task}#")).await?;
        Ok(items.iter().filter_map(in_force).collect())
    }

    /// Every halt in force now, of every task (eventually consistent, as [`Halts::of_task`]).
    pub async fn all(&self) -> Result<Vec<Halt>, StoreError> {
        let items = self.store.peek_prefix(HALTS_PK, "").await?;
        Ok(items.iter().filter_map(in_force).collect())
    }
}

/// The halt an item records, when it is in force.
fn in_force(item: &Item) -> Option<Halt> {
    let (task, cause) = item.key.sk.split_once('#')?;
    let state = item.str("state")?;
    let cause = match cause.strip_prefix("alarm#") {
        Some(alarm) if state == ALARM => format!("alarm {alarm}"),
        None if cause == "hand" && state == "HALTED" => "hand".to_owned(),
        _ => return None,
    };
    Some(Halt {
        task: task.to_owned(),
        cause,
        detail: item.str("detail").unwrap_or_default().to_owned(),
        since_ms: item.int("at_ms").unwrap_or(0).max(0) as u64,
    })
}

/// A UTC time as CloudWatch writes it (`2026-12-05T02:00:00.123+0000`, `…Z`), in Unix ms.
pub fn parse_utc_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> { text.get(from..from + len)?.parse().ok() };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, m, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hh, mm, ss) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let millis = match b.get(19) {
        Some(b'.') => {
            let digits: String = text[20..].chars().take_while(char::is_ascii_digit).take(3).collect();
            format!("{digits:0<3}").parse::<i64>().ok()?
        }
        _ => 0,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + millis).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudwatch_times_parse_to_unix_ms() {
        assert_eq!(parse_utc_ms("2025-11-25T18:30:05Z"), Some(1_764_095_405_000));
        assert_eq!(parse_utc_ms("2025-11-25T18:30:05.120+0000"), Some(1_764_095_405_120));
        assert_eq!(parse_utc_ms("2000-02-29T00:00:00.5Z"), Some(951_782_400_500));
        assert_eq!(parse_utc_ms("yesterday"), None);
    }
}
