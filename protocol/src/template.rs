//! Key templates such as a task's lock key (`{resource}`) or a limit's pool
//! (`{params.destination_region}`).

use crate::resource::Resource;
use crate::Job;
use serde_json::Value;
use std::collections::BTreeMap;

/// A parsed template: literal text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    Resource,
    Account,
    Region,
    Type,
    Id,
    Task,
    Param(String),
    Date,
    DateTime,
    Event(String),
    /// `{steps.NAME.FIELD}`: an output of an earlier step of a runbook, put in by the runbook
    /// before its step runs; anywhere else it renders empty.
    Step(String),
}

/// The values a template is rendered with.
#[derive(Debug, Clone, Copy)]
pub struct TemplateInput<'a> {
    /// The job's resource.
    pub resource: &'a Resource,
    /// The job's task name.
    pub task: &'a str,
    /// The job's params.
    pub params: &'a Value,
    /// Now, in Unix ms (`{date}`, `{datetime}`, UTC).
    pub now_ms: u64,
    /// The event's fields the task's templates read, by path (`detail.state`).
    pub event: &'a BTreeMap<String, String>,
}

impl<'a> TemplateInput<'a> {
    /// The input of a job's templates, at `now_ms`.
    pub fn of(job: &'a Job, now_ms: u64) -> Self {
        TemplateInput {
            resource: &job.resource,
            task: &job.task,
            params: &job.params,
            now_ms,
            event: &job.event_fields,
        }
    }
}

/// The placeholders a template may use, for error messages.
pub const PLACEHOLDERS: &str = "{resource}, {account}, {region}, {type}, {id}, {task}, {params.NAME}, {date}, \
     {datetime}, {event.FIELD}, {steps.STEP.FIELD} (in a runbook's steps)";

impl Template {
    /// Parses a template, naming the first unknown placeholder or unbalanced brace.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| format!("unclosed `{{` in `{text}`"))?;
            let name = &after[..close];
            let var = match name {
                "resource" => Var::Resource,
                "account" | "resource.account" => Var::Account,
                "region" | "resource.region" => Var::Region,
                "type" | "resource.type" => Var::Type,
                "id" | "resource.id" => Var::Id,
                "task" => Var::Task,
                "date" => Var::Date,
                "datetime" => Var::DateTime,
                _ => match (name.strip_prefix("params."), name.strip_prefix("event."), name.strip_prefix("steps.")) {
                    (Some(p), _, _) if !p.is_empty() => Var::Param(p.to_owned()),
                    (_, Some(path), _) if !path.is_empty() && path.split('.').all(|s| !s.is_empty()) => {
                        Var::Event(path.to_owned())
                    }
                    (_, _, Some(path)) if path.split('.').count() == 2 && path.split('.').all(|s| !s.is_empty()) => {
                        Var::Step(path.to_owned())
                    }
                    _ => return Err(format!("unknown placeholder `{{{name}}}`; use {PLACEHOLDERS}")),
                },
            };
            parts.push(Part::Var(var));
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("unbalanced `}}` in `{text}`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err("a template must not be empty".into());
        }
        Ok(Template { text: text.to_owned(), parts })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The param names the template reads.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(Var::Param(name)) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Whether the template reads the clock (`{date}`, `{datetime}`): rendered at two moments,
    /// it may give two answers.
    pub fn reads_the_clock(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Var(Var::Date | Var::DateTime)))
    }

    /// The event fields the template reads, as paths (`detail.state` for `{event.detail.state}`).
    pub fn event_fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(Var::Event(path)) => Some(path.as_str()),
            _ => None,
        })
    }

    /// The runbook step outputs the template reads, as `STEP.FIELD` paths (`snapshot.ids` for
    /// `{steps.snapshot.ids}`).
    pub fn step_outputs(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(Var::Step(path)) => Some(path.as_str()),
            _ => None,
        })
    }

    /// Renders the template; a missing param or event field renders as an empty string.
    pub fn render(&self, input: TemplateInput<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(Var::Resource) => out.push_str(&input.resource.key()),
                Part::Var(Var::Account) => out.push_str(&input.resource.account),
                Part::Var(Var::Region) => out.push_str(&input.resource.region),
                Part::Var(Var::Type) => out.push_str(input.resource.kind.as_str()),
                Part::Var(Var::Id) => out.push_str(&input.resource.id),
                Part::Var(Var::Task) => out.push_str(input.task),
                Part::Var(Var::Param(name)) => match input.params.get(name) {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(Value::Null) | None => {}
                    Some(other) => out.push_str(&other.to_string()),
                },
                Part::Var(Var::Date) => out.push_str(&utc(input.now_ms).0),
                Part::Var(Var::DateTime) => out.push_str(&utc(input.now_ms).1),
                Part::Var(Var::Event(path)) => out.push_str(input.event.get(path).map_or("", String::as_str)),
                Part::Var(Var::Step(_)) => {}
            }
        }
        out
    }
}

/// A Unix time in ms as a UTC date (`2026-11-25`) and date-time in ISO 8601's basic format
/// (`20261125T183000Z`: no `:`, which AMI names and tag keys of some tools refuse).
pub fn utc(ms: u64) -> (String, String) {
    let secs = ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    (format!("{year:04}-{month:02}-{day:02}"), format!("{year:04}{month:02}{day:02}T{h:02}{m:02}{s:02}Z"))
}

/// A Unix time in ms in ISO 8601's extended format: `2026-11-25T18:30:00Z`.
pub fn iso(ms: u64) -> String {
    let (date, basic) = utc(ms);
    format!("{date}T{}:{}:{}Z", &basic[9..11], &basic[11..13], &basic[13..15])
}

/// The value of a field of an event's document by path (`detail.state`), as text: strings as
/// they are, other values as JSON; `None` when missing.
pub fn event_field(document: &serde_json::Map<String, Value>, path: &str) -> Option<String> {
    let mut parts = path.split('.');
    let mut value = document.get(parts.next()?)?;
    for part in parts {
        value = match value {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ResourceType;
    use serde_json::json;

    #[test]
    fn renders_placeholders() {
        let r = Resource {
            account: "123456789012".into(),
            region: "us-east-1".into(),
            kind: ResourceType::Volume,
            id: "vol-1".into(),
        };
        let params = json!({"destination_region": "eu-west-1", "n": 3});
        let event = BTreeMap::from([("detail.state".to_owned(), "stopped".to_owned())]);
        // 2026-11-25T18:30:05Z
        let input =
            TemplateInput { resource: &r, task: "t", params: &params, now_ms: 1_795_631_405_000, event: &event };
        assert_eq!(Template::parse("{resource}").unwrap().render(input), "123456789012/us-east-1/ec2:volume/vol-1");
        assert_eq!(
            Template::parse("copy-{params.destination_region}-{params.n}").unwrap().render(input),
            "copy-eu-west-1-3"
        );
        assert_eq!(Template::parse("{task}:{id}@{region}").unwrap().render(input), "t:vol-1@us-east-1");
        assert_eq!(
            Template::parse("{date} {datetime} {event.detail.state}{event.detail.gone}").unwrap().render(input),
            "2026-11-25 20261125T183005Z stopped"
        );
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(utc(0), ("1970-01-01".to_owned(), "19700101T000000Z".to_owned()));
        assert_eq!(utc(951_782_400_000).0, "2000-02-29");
        assert_eq!(utc(4_102_444_799_000).1, "20991231T235959Z");
        assert_eq!(iso(1_764_095_405_000), "2025-11-25T18:30:05Z");
    }

    #[test]
    fn event_fields_are_read_by_path() {
        let doc = json!({"detail": {"state": "stopped", "n": 3, "list": ["a", "b"]}});
        let doc = doc.as_object().unwrap();
        assert_eq!(event_field(doc, "detail.state").as_deref(), Some("stopped"));
        assert_eq!(event_field(doc, "detail.n").as_deref(), Some("3"));
        assert_eq!(event_field(doc, "detail.list.1").as_deref(), Some("b"));
        assert_eq!(event_field(doc, "detail.none"), None);
        assert_eq!(
            Template::parse("{event.detail.state}").unwrap().event_fields().collect::<Vec<_>>(),
            ["detail.state"]
        );
        assert!(Template::parse("{event.}").is_err());
    }

    #[test]
    fn step_outputs_are_named_by_step_and_field() {
        let t = Template::parse("made {steps.snapshot.ids} ({steps.snapshot.status})").unwrap();
        assert_eq!(t.step_outputs().collect::<Vec<_>>(), ["snapshot.ids", "snapshot.status"]);
        assert!(Template::parse("{steps.snapshot}").is_err());
        assert!(Template::parse("{steps.a.b.c}").is_err());
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(Template::parse("{nope}").unwrap_err().contains("unknown placeholder `{nope}`"));
        assert!(Template::parse("{resource").is_err());
        assert!(Template::parse("a}").is_err());
        assert!(Template::parse("").is_err());
    }
}
