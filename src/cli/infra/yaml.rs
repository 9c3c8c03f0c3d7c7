//! JSON values written as YAML documents (CloudFormation takes either; operators read YAML).

use serde_json::Value;
use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlEmitter};

/// The YAML document of a JSON value, keys in the value's order.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    let mut emitter = YamlEmitter::new(&mut out);
    // Writing to a String cannot fail, and every JSON value is representable.
    let _ = emitter.dump(&convert(value));
    let mut text: String = out.lines().map(quote_date).collect::<Vec<_>>().join("\n");
    text.push('\n');
    text
}

/// Quotes a line's plain scalar that YAML 1.1 readers (PyYAML, CloudFormation tools) would take
/// for a date: `Version: 2012-10-17` must stay the string IAM expects.
fn quote_date(line: &str) -> String {
    let split = line
        .rfind(": ")
        .map(|i| i + 2)
        .or_else(|| line.trim_start().starts_with("- ").then(|| line.find("- ").unwrap_or(0) + 2));
    if let Some(at) = split {
        let scalar = &line[at..];
        let parts: Vec<&str> = scalar.split('-').collect();
        let date = parts.len() == 3
            && parts[0].len() == 4
            && parts[1..].iter().all(|p| (1..=2).contains(&p.len()))
            && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()));
        if date {
            return format!("{}\"{scalar}\"", &line[..at]);
        }
    }
    line.to_owned()
}

/// The YAML node of a JSON value.
fn convert(value: &Value) -> Yaml {
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(convert).collect()),
        Value::Object(map) => {
            let mut hash = Hash::new();
            for (key, value) in map {
                hash.insert(Yaml::String(key.clone()), convert(value));
            }
            Yaml::Hash(hash)
        }
    }
}

/// Reads a YAML document back as JSON (for the templates' tests).
#[cfg(test)]
pub fn from_yaml(text: &str) -> Value {
    fn back(node: &Yaml) -> Value {
        match node {
            Yaml::Null | Yaml::BadValue | Yaml::Alias(_) => Value::Null,
            Yaml::Boolean(b) => Value::Bool(*b),
            Yaml::Integer(i) => Value::from(*i),
            Yaml::Real(r) => r.parse::<f64>().map(Value::from).unwrap_or(Value::Null),
            Yaml::String(s) => Value::String(s.clone()),
            Yaml::Array(items) => Value::Array(items.iter().map(back).collect()),
            Yaml::Hash(hash) => {
                Value::Object(hash.iter().map(|(k, v)| (k.as_str().unwrap_or_default().to_owned(), back(v))).collect())
            }
        }
    }
    let docs = yaml_rust2::YamlLoader::load_from_str(text).unwrap_or_default();
    docs.first().map(back).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_json_value_survives_the_round_trip() {
        let value = json!({
            "AWSTemplateFormatVersion": "2010-09-09",
            "text": ["true", "1", "", "a: b", "- x", "#", "multi\nline", "{\"source\": [\"aws.ec2\"]}", "ü"],
            "numbers": [0, -3, 1.5, 1209600],
            "flags": [true, false, null],
            "empty": { "map": {}, "list": [] },
            "Fn::GetAtt": ["Queue", "Arn"],
        });
        assert_eq!(from_yaml(&to_yaml(&value)), value);
    }

    #[test]
    fn strings_that_look_like_dates_are_quoted() {
        let text = to_yaml(&json!({ "Version": "2012-10-17", "list": ["2010-09-09"], "not": "2012-10-17x" }));
        assert!(text.contains("Version: \"2012-10-17\"") && text.contains("- \"2010-09-09\""), "{text}");
        assert!(text.contains("not: 2012-10-17x"), "{text}");
    }
}
