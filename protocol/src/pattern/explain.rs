//! Why an event does not match a pattern, in the pattern's own terms: the first field that
//! fails, and what the event has there.

use super::matcher::{field_matches, holds_object, object_matches};
use super::{FieldPattern, ObjectPattern};
use serde_json::{Map, Value};

/// The first field of a pattern that an event fails, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The field's path in the event, such as `detail.state`.
    pub field: String,
    /// What the event has there against what the pattern asks.
    pub why: String,
}

/// How long a value is shown at most.
const SHOWN: usize = 120;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A value as JSON, cut to [`SHOWN`] characters.
fn show(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The first failing field of an object level (which does not match).
pub(super) fn object(
    pattern: &ObjectPattern,
    source: &Value,
    object_value: Option<&Map<String, Value>>,
    path: &str,
) -> Mismatch {
    for (key, field) in &pattern.fields {
        let value = object_value.and_then(|o| o.get(key));
        if field_matches(field, value) {
            continue;
        }
        let here = join(path, key);
        let asked = &source[key.as_str()];
        return match (field, value) {
            (FieldPattern::Leaf(_), None) => Mismatch {
                field: here,
                why: format!("the event has no value here; the pattern asks for {}", show(asked)),
            },
            (FieldPattern::Leaf(_), Some(v)) => {
                Mismatch { field: here, why: format!("{} matches none of {}", show(v), show(asked)) }
            }
            (FieldPattern::Object(inner), Some(Value::Object(o))) => object(inner, asked, Some(o), &here),
            (FieldPattern::Object(inner), Some(Value::Array(items))) if holds_object(items) => {
                let first = items.iter().find_map(Value::as_object);
                let inside = object(inner, asked, first, &here);
                Mismatch {
                    field: here,
                    why: format!("no element matches; the first: {}: {}", inside.field, inside.why),
                }
            }
            (FieldPattern::Object(inner), _) => object(inner, asked, None, &here),
        };
    }
    for (n, alternatives) in pattern.any_of.iter().enumerate() {
        if alternatives.iter().any(|alt| object_matches(alt, object_value)) {
            continue;
        }
        let sources = source["$or"].as_array().map(Vec::as_slice).unwrap_or_default();
        let reasons: Vec<String> = alternatives
            .iter()
            .enumerate()
            .map(|(i, alt)| {
                let m = object(alt, sources.get(i).unwrap_or(&Value::Null), object_value, path);
                format!("{}: {}", m.field, m.why)
            })
            .collect();
        let field = if path.is_empty() { format!("$or[{n}]") } else { format!("{path}.$or[{n}]") };
        return Mismatch { field, why: format!("no alternative matches ({})", reasons.join("; ")) };
    }
    Mismatch { field: path.to_owned(), why: "does not match".into() }
}

#[cfg(test)]
mod tests {
    use crate::Pattern;
    use serde_json::json;

    #[test]
    fn the_first_failing_field_is_named_with_what_the_event_has() {
        let p = Pattern::from_value(&json!({"source": ["aws.ec2"], "detail": {"state": ["stopped"]}})).expect("valid");
        let event = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        assert_eq!(p.explain(&event(json!({"source": "aws.ec2", "detail": {"state": "stopped"}}))), None);
        let m = p.explain(&event(json!({"source": "aws.ec2", "detail": {"state": "running"}}))).expect("mismatch");
        assert_eq!((m.field.as_str(), m.why.as_str()), ("detail.state", "\"running\" matches none of [\"stopped\"]"));
        let m = p.explain(&event(json!({"detail": {"state": "stopped"}}))).expect("mismatch");
        assert_eq!(m.field, "source");
        assert!(m.why.starts_with("the event has no value here"), "{}", m.why);
        let or = Pattern::from_value(&json!({"$or": [{"a": [1]}, {"b": [2]}]})).expect("valid");
        let m = or.explain(&event(json!({"a": 3}))).expect("mismatch");
        assert_eq!(m.field, "$or[0]");
        assert!(m.why.contains("a: 3 matches none of [1]") && m.why.contains("b: the event has no value"), "{}", m.why);
    }
}
