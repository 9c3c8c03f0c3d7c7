//! Matching events against compiled patterns.

use super::{AnythingBut, FieldPattern, Matcher, NumericOp, ObjectPattern};
use serde_json::{Map, Value};

pub(super) fn object_matches(pattern: &ObjectPattern, object: Option<&Map<String, Value>>) -> bool {
    pattern.fields.iter().all(|(key, field)| {
        let value = object.and_then(|o| o.get(key));
        match field {
            FieldPattern::Leaf(matchers) => leaf_matches(matchers, value),
            FieldPattern::Object(inner) => match value {
                Some(Value::Object(o)) => object_matches(inner, Some(o)),
                Some(Value::Array(items)) if holds_object(items) => any_object_matches(inner, items),
                // A value that holds no object has none of the nested fields.
                _ => object_matches(inner, None),
            },
        }
    }) && pattern.any_of.iter().all(|alternatives| alternatives.iter().any(|alt| object_matches(alt, object)))
}

/// Whether an array, or an array in it, holds an object.
fn holds_object(items: &[Value]) -> bool {
    items.iter().any(|item| match item {
        Value::Object(_) => true,
        Value::Array(nested) => holds_object(nested),
        _ => false,
    })
}

/// Whether any object in an array, or in the arrays in it, matches the nested pattern.
fn any_object_matches(inner: &ObjectPattern, items: &[Value]) -> bool {
    items.iter().any(|item| match item {
        Value::Object(o) => object_matches(inner, Some(o)),
        Value::Array(nested) => any_object_matches(inner, nested),
        _ => false,
    })
}

fn leaf_matches(matchers: &[Matcher], value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Object(_)) => matchers.contains(&Matcher::Exists(false)),
        Some(Value::Array(items)) => {
            let mut leaves = Vec::new();
            collect_leaves(items, &mut leaves);
            if leaves.is_empty() {
                return matchers.contains(&Matcher::Exists(false));
            }
            matchers.iter().any(|m| match m {
                Matcher::Exists(present) => *present,
                _ => leaves.iter().any(|leaf| scalar_matches(m, leaf)),
            })
        }
        Some(scalar) => matchers.iter().any(|m| scalar_matches(m, scalar)),
    }
}

/// The scalars of an array and of the arrays in it; objects are not leaves.
fn collect_leaves<'a>(items: &'a [Value], out: &mut Vec<&'a Value>) {
    for item in items {
        match item {
            Value::Array(nested) => collect_leaves(nested, out),
            Value::Object(_) => {}
            scalar => out.push(scalar),
        }
    }
}

fn scalar_matches(matcher: &Matcher, value: &Value) -> bool {
    match matcher {
        Matcher::Str(s) => value.as_str() == Some(s.as_str()),
        Matcher::Num(n) => value.as_f64() == Some(*n),
        Matcher::Bool(b) => value.as_bool() == Some(*b),
        Matcher::Null => value.is_null(),
        Matcher::Exists(present) => *present,
        Matcher::Prefix { text, ignore_case } => value.as_str().is_some_and(|v| {
            if *ignore_case {
                starts_with_ignore_case(v, text)
            } else {
                v.starts_with(text.as_str())
            }
        }),
        Matcher::Suffix { text, ignore_case } => value.as_str().is_some_and(|v| {
            if *ignore_case {
                v.to_lowercase().ends_with(text.as_str())
            } else {
                v.ends_with(text.as_str())
            }
        }),
        Matcher::EqualsIgnoreCase(text) => value.as_str().is_some_and(|v| eq_ignore_case(v, text)),
        Matcher::Wildcard(w) => value.as_str().is_some_and(|v| w.matches(v)),
        Matcher::Numeric(conditions) => value.as_f64().is_some_and(|v| {
            value.is_number()
                && conditions.iter().all(|(op, n)| match op {
                    NumericOp::Lt => v < *n,
                    NumericOp::Le => v <= *n,
                    NumericOp::Eq => v == *n,
                    NumericOp::Ge => v >= *n,
                    NumericOp::Gt => v > *n,
                })
        }),
        Matcher::AnythingBut(but) => match but {
            // A value a string operator cannot test (a number, a boolean, null) is not excluded.
            AnythingBut::Values(excluded) => !excluded.iter().any(|m| scalar_matches(m, value)),
            AnythingBut::Prefix(list) => value.as_str().is_none_or(|v| !list.iter().any(|p| v.starts_with(p.as_str()))),
            AnythingBut::Suffix(list) => value.as_str().is_none_or(|v| !list.iter().any(|s| v.ends_with(s.as_str()))),
            AnythingBut::EqualsIgnoreCase(list) => {
                value.as_str().is_none_or(|v| !list.iter().any(|t| eq_ignore_case(v, t)))
            }
            AnythingBut::Wildcard(list) => value.as_str().is_none_or(|v| !list.iter().any(|w| w.matches(v))),
        },
    }
}

/// `lower` is already lowercase.
fn eq_ignore_case(value: &str, lower: &str) -> bool {
    if value.is_ascii() && lower.is_ascii() {
        value.eq_ignore_ascii_case(lower)
    } else {
        value.to_lowercase() == lower
    }
}

/// `lower` is already lowercase.
fn starts_with_ignore_case(value: &str, lower: &str) -> bool {
    if value.is_ascii() && lower.is_ascii() {
        value.len() >= lower.len() && value.as_bytes()[..lower.len()].eq_ignore_ascii_case(lower.as_bytes())
    } else {
        value.to_lowercase().starts_with(lower)
    }
}
