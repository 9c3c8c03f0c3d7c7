//! An action's params are described once, on its params struct: each field's doc comment and
//! serde default, read back from the struct's JSON schema, are the help `opsfleet actions` and
//! the docs show.

use schemars::JsonSchema;
use serde_json::Value;

/// One param of an action, as `opsfleet actions` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamHelp {
    /// The param's name in `params = { … }`.
    pub name: String,
    /// What it does: the field's doc comment.
    pub help: String,
    /// Its default, when it has one (a param without one must be given).
    pub default: Option<Value>,
}

impl ParamHelp {
    /// The param's line: its help and its default, or that it is required.
    pub fn line(&self) -> String {
        let default = match &self.default {
            None => "required".to_owned(),
            Some(Value::Null) => "default none".to_owned(),
            Some(Value::Array(a)) if a.is_empty() => "default none".to_owned(),
            Some(Value::Object(o)) if o.is_empty() => "default none".to_owned(),
            Some(value) => format!("default {value}"),
        };
        format!("{} ({default})", self.help.trim_end_matches('.'))
    }
}

/// The params of a params struct, in the order of its schema (by name).
pub fn help_of<P: JsonSchema>() -> Vec<ParamHelp> {
    let schema = schemars::schema_for!(P);
    let value = schema.as_value();
    let required: Vec<&str> =
        value.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let Some(properties) = value.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, property)| {
            let help = property.get("description").and_then(Value::as_str).unwrap_or_default();
            let default = match property.get("default") {
                Some(default) => Some(default.clone()),
                // An optional field without a serde default reads as absent.
                None if !required.contains(&name.as_str()) => Some(Value::Null),
                None => None,
            };
            ParamHelp { name: name.clone(), help: one_line(help), default }
        })
        .collect()
}

/// A doc comment as one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::ebs_snapshot::EbsSnapshotParams;
    use crate::actions::snapshot_copy::SnapshotCopyParams;

    fn param<'a>(all: &'a [ParamHelp], name: &str) -> &'a ParamHelp {
        all.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no param {name} in {all:?}"))
    }

    #[test]
    fn a_param_s_help_and_default_come_from_its_field() {
        let all = help_of::<EbsSnapshotParams>();
        let check = param(&all, "check_after_secs");
        assert_eq!(check.help, "Seconds until the first completion check.");
        assert_eq!(check.line(), "Seconds until the first completion check (default 15)");
        assert_eq!(param(&all, "copy_tags").default, Some(Value::Bool(true)));
        assert_eq!(param(&all, "retain").line().rsplit(" (").next(), Some("default none)"));
        let copy = help_of::<SnapshotCopyParams>();
        assert_eq!(param(&copy, "destination_region").default, None);
        assert!(param(&copy, "destination_region").line().ends_with("(required)"));
    }
}
