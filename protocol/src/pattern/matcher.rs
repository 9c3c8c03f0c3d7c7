//! Matching events against compiled patterns.

use super::{AnythingBut, FieldPattern, Matcher, NumericOp, ObjectPattern};
use serde_json::{Map, Value};

pub(super) fn object_matches(pattern: &ObjectPattern, object: Option<&Map<String, Value>>) -> bool {
    pattern.fields.iter().all(|(key, field)| field_matches(field, object.and_then(|o| o.get(key))))
        && pattern.any_of.iter().all(|alternatives| alternatives.iter().any(|alt| object_matches(alt, object)))
}

/// Whether one field of a pattern matches the event's value there.
pub(super) fn field_matches(field: &FieldPattern, value: Option<&Value>) -> bool {
    {
        match field {
            FieldPattern::Leaf(matchers) => leaf_matches(matchers, value),
            FieldPattern::Object(inner) => match value {
                Some(Value::Object(o)) => object_matches(inner, Some(o)),
                // As Event Ruler: a nested pattern that only requires fields to be absent
                // holds when no element has them; one that requires values matches one
                // element, all its fields (absent ones too) in that element.
                Some(Value::Array(items)) if holds_object(items) => {
                    if inner.any_of.is_empty()
                        && inner.fields.iter().all(|(_, f)| matches!(f, FieldPattern::Leaf(m) if absent_only(m)))
                    {
                        absent_everywhere(inner, items)
                    } else {
                        any_object_matches(inner, items)
                    }
                }
                // A value that holds no object has none of the nested fields.
                _ => object_matches(inner, None),
            },
        }
    }
}

/// Whether a field's matchers only require it to be absent.
fn absent_only(matchers: &[Matcher]) -> bool {
    matchers.iter().all(|m| *m == Matcher::Exists(false))
}

/// Whether no object in an array (however deep) has a leaf for the fields that must be absent.
fn absent_everywhere(inner: &ObjectPattern, items: &[Value]) -> bool {
    inner.fields.iter().all(|(key, _)| objects(items).all(|o| leaf_matches(&[Matcher::Exists(false)], o.get(key))))
}

/// The objects in an array and in the arrays in it.
fn objects(items: &[Value]) -> Box<dyn Iterator<Item = &Map<String, Value>> + '_> {
    Box::new(items.iter().flat_map(|item| -> Box<dyn Iterator<Item = &Map<String, Value>> + '_> {
        match item {
            Value::Object(o) => Box::new(std::iter::once(o)),
            Value::Array(nested) => objects(nested),
            _ => Box::new(std::iter::empty()),
        }
    }))
}

/// Whether an array, or an array in it, holds an object.
pub(super) fn holds_object(items: &[Value]) -> bool {
    items.iter().any(|item| match item {
        Value::Object(_) => true,
        Value::Array(nested) => holds_object(nested),
        _ => false,
    })
}

/// Whether any object in an array, or in the arrays in it, matches the nested pattern.
fn any_object_matches(inner: &ObjectPattern, items: &[Value]) -> bool {
    objects(items).any(|o| object_matches(inner, Some(o)))
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
        Matcher::Ip { text, hex } => {
            value.as_str().is_some_and(|v| v == text || super::cidr::ip_hex(v).as_deref() == Some(hex.as_str()))
        }
        Matcher::Num(n) => value.as_f64() == Some(*n),
        Matcher::Bool(b) => value.as_bool() == Some(*b),
        Matcher::Null => value.is_null(),
        Matcher::Exists(present) => *present,
        Matcher::Prefix(text) => value.as_str().is_some_and(|v| v.starts_with(text.as_str())),
        Matcher::PrefixIgnoreCase(folded) => value.as_str().is_some_and(|v| folded.prefix_of(v)),
        Matcher::Suffix(text) => value.as_str().is_some_and(|v| v.ends_with(text.as_str())),
        Matcher::SuffixIgnoreCase(folded) => value.as_str().is_some_and(|v| folded.suffix_of(v)),
        Matcher::EqualsIgnoreCase(folded) => value.as_str().is_some_and(|v| folded.equals(v)),
        // Event Ruler compares numbers and addresses in one ordered space, where only a range
        // of everything (`/0`) holds numbers.
        Matcher::Cidr(range) => match value {
            Value::String(v) => super::cidr::ip_hex(v).is_some_and(|hex| range.contains_hex(&hex)),
            Value::Number(_) => range.is_everything(),
            _ => false,
        },
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
            AnythingBut::EqualsIgnoreCase(list) => value.as_str().is_none_or(|v| !list.iter().any(|f| f.equals(v))),
            AnythingBut::Wildcard(list) => value.as_str().is_none_or(|v| !list.iter().any(|w| w.matches(v))),
        },
    }
}
