//! Key templates such as a task's lock key (`{resource}`) or a limit's pool
//! (`{params.destination_region}`).

use crate::resource::Resource;
use serde_json::Value;

/// A parsed template: literal text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
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
}

/// The placeholders a template may use, for error messages.
pub const PLACEHOLDERS: &str = "{resource}, {account}, {region}, {type}, {id}, {task}, {params.NAME}";

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
                _ => match name.strip_prefix("params.") {
                    Some(p) if !p.is_empty() => Var::Param(p.to_owned()),
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
        Ok(Template { parts })
    }

    /// The param names the template reads.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(Var::Param(name)) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Renders the template; a missing param renders as an empty string.
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
            }
        }
        out
    }
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
        let input = TemplateInput { resource: &r, task: "t", params: &params };
        assert_eq!(Template::parse("{resource}").unwrap().render(input), "123456789012/us-east-1/ec2:volume/vol-1");
        assert_eq!(
            Template::parse("copy-{params.destination_region}-{params.n}").unwrap().render(input),
            "copy-eu-west-1-3"
        );
        assert_eq!(Template::parse("{task}:{id}@{region}").unwrap().render(input), "t:vol-1@us-east-1");
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(Template::parse("{nope}").unwrap_err().contains("unknown placeholder `{nope}`"));
        assert!(Template::parse("{resource").is_err());
        assert!(Template::parse("a}").is_err());
        assert!(Template::parse("").is_err());
    }
}
