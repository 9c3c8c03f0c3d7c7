//! A finished step's outputs, and how later steps' params read them (`{steps.NAME.FIELD}`).

use super::RunbookStep;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The fields of a step's outputs a template may read.
pub const FIELDS: [&str; 5] = ["status", "summary", "ids", "error", "tries"];

/// What one finished step came to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct StepOutput {
    /// The step's name.
    pub step: String,
    /// Its action.
    pub action: String,
    /// `succeeded`, `skipped` or `failed`.
    pub status: String,
    /// What its action said: its summary, its reason to skip, or its error.
    pub summary: String,
    /// The AWS ids its summary names (snapshots, images, instances, volumes, …), in order.
    #[serde(default)]
    pub ids: Vec<String>,
    /// The calls of its action that ran to an outcome (failed ones and the last).
    pub tries: u32,
}

impl StepOutput {
    /// The outputs of `spec`, finished with `status`.
    pub(super) fn new(spec: &RunbookStep, status: &str, summary: String, tries: u32) -> Self {
        StepOutput {
            step: spec.name.clone(),
            action: spec.action.clone(),
            status: status.to_owned(),
            ids: ids_in(&summary),
            summary,
            tries,
        }
    }

    /// The step as one line of the runbook's summary.
    pub(super) fn line(&self) -> String {
        let tries = if self.tries > 1 { format!(" ({} tries)", self.tries) } else { String::new() };
        match self.status.as_str() {
            "succeeded" => format!("{}{tries}: {}", self.step, self.summary),
            status => format!("{} {status}{tries}: {}", self.step, self.summary),
        }
    }

    fn field(&self, field: &str) -> String {
        match field {
            "status" => self.status.clone(),
            "summary" => self.summary.clone(),
            "ids" => self.ids.join(", "),
            "error" if self.status == "failed" => self.summary.clone(),
            "tries" => self.tries.to_string(),
            _ => String::new(),
        }
    }
}

/// The prefixes of the AWS ids a summary may name.
const ID_PREFIXES: [&str; 6] = ["snap-", "ami-", "vol-", "i-", "eni-", "sg-"];

/// The AWS ids in a text, in order, each once.
fn ids_in(text: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
        let is_id = ID_PREFIXES.iter().any(|p| {
            word.strip_prefix(p).is_some_and(|rest| rest.len() >= 8 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        if is_id && !ids.iter().any(|i| i == word) {
            ids.push(word.to_owned());
        }
    }
    ids
}

/// `params` with every `{steps.NAME.FIELD}` in its strings replaced by that output of the last
/// run of step NAME (empty when it has not run).
pub(super) fn put_in(params: &Value, outputs: &[StepOutput]) -> Value {
    match params {
        Value::String(text) => Value::String(put_in_text(text, outputs)),
        Value::Array(items) => Value::Array(items.iter().map(|v| put_in(v, outputs)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), put_in(v, outputs))).collect()),
        other => other.clone(),
    }
}

fn put_in_text(text: &str, outputs: &[StepOutput]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{steps.") {
        out.push_str(&rest[..open]);
        let after = &rest[open + "{steps.".len()..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let (name, field) = after[..close].split_once('.').unwrap_or((&after[..close], ""));
        if let Some(output) = outputs.iter().rev().find(|o| o.step == name) {
            out.push_str(&output.field(field));
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn output(step: &str, summary: &str) -> StepOutput {
        let spec: RunbookStep = serde_json::from_value(json!({ "name": step, "action": "noop" })).unwrap();
        StepOutput::new(&spec, "succeeded", summary.to_owned(), 1)
    }

    #[test]
    fn ids_are_read_from_summaries() {
        let o = output("snapshot", "snap-0123456789abcdef0 of vol-0123456789abcdef1 completed; i-12 is up");
        assert_eq!(o.ids, ["snap-0123456789abcdef0", "vol-0123456789abcdef1"]);
    }

    #[test]
    fn later_params_read_the_last_run_of_a_step() {
        let outputs = [output("a", "first ami-11111111"), output("b", "x"), output("a", "again ami-22222222")];
        let params = json!({ "note": "{steps.a.ids} / {steps.b.status} {steps.c.ids}|{steps.a.tries}", "n": 3 });
        assert_eq!(put_in(&params, &outputs), json!({ "note": "ami-22222222 / succeeded |1", "n": 3 }));
        assert_eq!(put_in_text("{steps.a.ids", &outputs), "{steps.a.ids");
    }
}
