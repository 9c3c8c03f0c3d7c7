//! Parsing and validating patterns.

use super::{AnythingBut, Cidr, FieldPattern, Folded, Matcher, NumericOp, ObjectPattern, Wildcard};
use serde_json::{Map, Value};

/// Why a pattern is invalid, with the path inside the pattern where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", if path.is_empty() { String::new() } else { format!("at `{path}`: ") })]
pub struct PatternError {
    /// The place inside the pattern, such as `detail.state[0]`.
    pub path: String,
    /// What is wrong there.
    pub reason: String,
}

impl PatternError {
    pub(super) fn new(path: &str, reason: impl Into<String>) -> Self {
        PatternError { path: path.to_owned(), reason: reason.into() }
    }
}

/// The operators of a matcher object, which `$or` alternatives may not use as field names.
const OPERATORS: [&str; 9] =
    ["prefix", "suffix", "equals-ignore-case", "wildcard", "exists", "numeric", "anything-but", "cidr", "exactly"];

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn object(value: &Value, path: &str) -> Result<ObjectPattern, PatternError> {
    let Value::Object(map) = value else {
        return Err(PatternError::new(path, "a pattern must be an object"));
    };
    object_map(map, path)
}

fn object_map(map: &Map<String, Value>, path: &str) -> Result<ObjectPattern, PatternError> {
    if map.is_empty() {
        return Err(PatternError::new(path, "an object in a pattern must not be empty (EventBridge refuses `{}`)"));
    }
    let mut fields = Vec::with_capacity(map.len());
    let mut any_of = Vec::new();
    for (key, value) in map {
        let here = join(path, key);
        if key == "$or" {
            let Value::Array(alternatives) = value else {
                return Err(PatternError::new(&here, "`$or` takes an array of patterns"));
            };
            if alternatives.len() < 2 {
                return Err(PatternError::new(&here, "`$or` needs at least two alternatives"));
            }
            for (i, alt) in alternatives.iter().enumerate() {
                if let Some(reserved) = alt.as_object().and_then(|a| a.keys().find(|k| OPERATORS.contains(&k.as_str())))
                {
                    return Err(PatternError::new(
                        &format!("{here}[{i}]"),
                        format!("`{reserved}` is an operator, not a field name, inside `$or`"),
                    ));
                }
            }
            let group = alternatives
                .iter()
                .enumerate()
                .map(|(i, alt)| object(alt, &format!("{here}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            any_of.push(group);
            continue;
        }
        let field = match value {
            Value::Object(inner) => FieldPattern::Object(object_map(inner, &here)?),
            Value::Array(items) => FieldPattern::Leaf(leaf(items, &here)?),
            _ => return Err(PatternError::new(&here, "a pattern value must be an array of matchers or an object")),
        };
        fields.push((key.clone(), field));
    }
    Ok(ObjectPattern { fields, any_of })
}

fn leaf(items: &[Value], path: &str) -> Result<Vec<Matcher>, PatternError> {
    if items.is_empty() {
        return Err(PatternError::new(path, "a matcher list must not be empty"));
    }
    items.iter().enumerate().map(|(i, item)| matcher(item, &format!("{path}[{i}]"))).collect()
}

fn matcher(item: &Value, path: &str) -> Result<Matcher, PatternError> {
    match item {
        Value::String(s) => Ok(match super::cidr::ip_hex(s) {
            Some(hex) => Matcher::Ip { text: s.clone(), hex },
            None => Matcher::Str(s.clone()),
        }),
        Value::Number(n) => Ok(Matcher::Num(number(n, path)?)),
        Value::Bool(b) => Ok(Matcher::Bool(*b)),
        Value::Null => Ok(Matcher::Null),
        Value::Array(_) => Err(PatternError::new(path, "a matcher cannot be an array")),
        Value::Object(map) => {
            let mut entries = map.iter();
            let (Some((op, arg)), None) = (entries.next(), entries.next()) else {
                return Err(PatternError::new(path, "a matcher object must have exactly one operator"));
            };
            operator(op, arg, path)
        }
    }
}

fn number(n: &serde_json::Number, path: &str) -> Result<f64, PatternError> {
    n.as_f64().ok_or_else(|| PatternError::new(path, "number out of range"))
}

/// A number that `numeric` and `anything-but` can compare: as in Event Ruler, not a subnormal
/// double (closer to zero than about 2.2e-308, but zero).
fn comparable(n: &serde_json::Number, path: &str) -> Result<f64, PatternError> {
    let value = number(n, path)?;
    if value != 0.0 && !value.is_normal() {
        return Err(PatternError::new(path, format!("{n} is too close to zero to compare")));
    }
    Ok(value)
}

fn string<'a>(arg: &'a Value, path: &str, op: &str) -> Result<&'a str, PatternError> {
    arg.as_str().ok_or_else(|| PatternError::new(path, format!("`{op}` takes a string")))
}

fn operator(op: &str, arg: &Value, path: &str) -> Result<Matcher, PatternError> {
    match op {
        "prefix" | "suffix" => match arg {
            Value::String(s) if op == "prefix" => Ok(Matcher::Prefix(s.clone())),
            Value::String(s) => Ok(Matcher::Suffix(s.clone())),
            Value::Object(inner) if inner.len() == 1 && inner.contains_key("equals-ignore-case") => {
                let folded = Folded::new(string(&inner["equals-ignore-case"], path, "equals-ignore-case")?);
                Ok(if op == "prefix" { Matcher::PrefixIgnoreCase(folded) } else { Matcher::SuffixIgnoreCase(folded) })
            }
            _ => Err(PatternError::new(path, format!("`{op}` takes a string or {{\"equals-ignore-case\": string}}"))),
        },
        "equals-ignore-case" => Ok(Matcher::EqualsIgnoreCase(Folded::new(string(arg, path, op)?))),
        "exactly" => Ok(Matcher::Str(string(arg, path, op)?.to_owned())),
        "wildcard" => {
            let text = string(arg, path, op)?;
            Wildcard::parse(text)
                .map(Matcher::Wildcard)
                .map_err(|e| PatternError::new(path, format!("`wildcard`: {e}")))
        }
        "exists" => match arg {
            Value::Bool(b) => Ok(Matcher::Exists(*b)),
            _ => Err(PatternError::new(path, "`exists` takes true or false")),
        },
        "numeric" => numeric(arg, path),
        "anything-but" => anything_but(arg, path).map(Matcher::AnythingBut),
        "cidr" => Cidr::parse(string(arg, path, op)?)
            .map(Matcher::Cidr)
            .map_err(|e| PatternError::new(path, format!("`cidr`: {e}"))),
        other => Err(PatternError::new(path, format!("unknown operator `{other}`"))),
    }
}

fn numeric(arg: &Value, path: &str) -> Result<Matcher, PatternError> {
    let err = |reason: &str| PatternError::new(path, format!("`numeric`: {reason}"));
    let Value::Array(items) = arg else {
        return Err(err("takes an array such as [\">\", 0, \"<=\", 5]"));
    };
    if items.is_empty() || items.len() % 2 != 0 || items.len() > 4 {
        return Err(err("takes one or two (operator, number) pairs"));
    }
    let mut conditions = Vec::with_capacity(items.len() / 2);
    for pair in items.chunks(2) {
        let op = match pair[0].as_str() {
            Some("<") => NumericOp::Lt,
            Some("<=") => NumericOp::Le,
            Some("=") => NumericOp::Eq,
            Some(">=") => NumericOp::Ge,
            Some(">") => NumericOp::Gt,
            _ => return Err(err(&format!("unknown operator {}", pair[0]))),
        };
        let Value::Number(n) = &pair[1] else {
            return Err(err(&format!("{} is not a number", pair[1])));
        };
        conditions.push((op, comparable(n, path)?));
    }
    if let [(lower, low), (upper, high)] = conditions[..] {
        let is_lower = matches!(lower, NumericOp::Gt | NumericOp::Ge);
        let is_upper = matches!(upper, NumericOp::Lt | NumericOp::Le);
        if !is_lower || !is_upper {
            return Err(err("a range is a lower bound (> or >=) followed by an upper bound (< or <=)"));
        }
        if low >= high {
            return Err(err("the lower bound must be below the upper bound"));
        }
    }
    Ok(Matcher::Numeric(conditions))
}

fn anything_but(arg: &Value, path: &str) -> Result<AnythingBut, PatternError> {
    let err = |reason: &str| PatternError::new(path, format!("`anything-but`: {reason}"));
    let scalar = |v: &Value| match v {
        Value::String(s) => Ok(Matcher::Str(s.clone())),
        Value::Number(n) => Ok(Matcher::Num(comparable(n, path)?)),
        _ => Err(err("values must be strings or numbers")),
    };
    match arg {
        Value::String(_) | Value::Number(_) => Ok(AnythingBut::Values(vec![scalar(arg)?])),
        Value::Array(items) if !items.is_empty() => {
            if items.iter().any(Value::is_string) && items.iter().any(Value::is_number) {
                return Err(err("a list mixes numbers and strings"));
            }
            Ok(AnythingBut::Values(items.iter().map(scalar).collect::<Result<_, _>>()?))
        }
        Value::Array(_) => Err(err("the list must not be empty")),
        Value::Object(map) if map.len() == 1 => {
            let (op, inner) = map.iter().next().ok_or_else(|| err("empty object"))?;
            let strings = |v: &Value| -> Result<Vec<String>, PatternError> {
                match v {
                    Value::String(s) => Ok(vec![s.clone()]),
                    Value::Array(items) if !items.is_empty() => items
                        .iter()
                        .map(|i| i.as_str().map(str::to_owned).ok_or_else(|| err(&format!("`{op}` takes strings"))))
                        .collect(),
                    _ => Err(err(&format!("`{op}` takes a string or a non-empty list of strings"))),
                }
            };
            match op.as_str() {
                "prefix" | "suffix" => {
                    let texts = strings(inner)?;
                    if texts.iter().any(String::is_empty) {
                        return Err(err(&format!("`{op}` must not be empty")));
                    }
                    Ok(if op == "prefix" { AnythingBut::Prefix(texts) } else { AnythingBut::Suffix(texts) })
                }
                "equals-ignore-case" => {
                    Ok(AnythingBut::EqualsIgnoreCase(strings(inner)?.iter().map(|s| Folded::new(s)).collect()))
                }
                "wildcard" => Ok(AnythingBut::Wildcard(
                    strings(inner)?
                        .iter()
                        .map(|s| Wildcard::parse(s).map_err(|e| err(&format!("`wildcard`: {e}"))))
                        .collect::<Result<_, _>>()?,
                )),
                other => Err(err(&format!("unknown operator `{other}`"))),
            }
        }
        _ => Err(err("takes a value, a list of values, or one of prefix, suffix, equals-ignore-case, wildcard")),
    }
}
