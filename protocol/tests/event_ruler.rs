//! Differential cases labelled by AWS's Event Ruler (the engine behind EventBridge; see
//! tests/data/README.md): opsfleet accepts, refuses and matches every case exactly as Event
//! Ruler does, but for three known differences, each recognised below: numbers beyond a
//! double's precision (Event Ruler compares their text), dotted keys (`"a.b"` naming a nested
//! field), and malformed `$or` that only Event Ruler's legacy compiler accepts.

use opsfleet_protocol::Pattern;
use serde_json::Value;

/// Whether an event is matched, or the pattern refused, as Event Ruler labelled the case.
fn agrees(case: &Value) -> bool {
    let compiled = Pattern::from_value(&case["pattern"]);
    if case["valid"] == false {
        return compiled.is_err();
    }
    let empty = serde_json::Map::new();
    compiled.is_ok_and(|p| p.matches(case["event"].as_object().unwrap_or(&empty)) == (case["matches"] == true))
}

/// The number literals of a JSON text.
fn numbers(line: &str) -> Vec<&str> {
    let bytes = line.as_bytes();
    let (mut out, mut i, mut in_string) = (Vec::new(), 0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'-' | b'0'..=b'9' if !in_string => {
                let start = i;
                while i + 1 < bytes.len() && matches!(bytes[i + 1], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                    i += 1;
                }
                out.push(&line[start..=i]);
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Whether a number literal is beyond what a double holds: its decimal value is not that of
/// the double it reads as (written shortest), as Event Ruler judges numbers by their text.
fn beyond_double(literal: &str) -> bool {
    let value = literal.parse::<f64>().unwrap_or(f64::INFINITY);
    !value.is_finite() || decimal(literal) != decimal(&format!("{value:e}"))
}

/// A number's decimal value as (negative, significant digits, exponent of the first digit).
fn decimal(text: &str) -> (bool, String, i64) {
    let negative = text.starts_with('-');
    let text = text.trim_start_matches(['-', '+']);
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().unwrap_or(0)),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    let leading = digits.len() - digits.trim_start_matches('0').len();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').to_owned();
    if significant.is_empty() {
        return (false, String::new(), 0);
    }
    (negative, significant, exponent + whole.len() as i64 - leading as i64)
}

/// Which known difference a case falls under, if any.
fn known_difference(line: &str, case: &Value) -> Option<&'static str> {
    let name = case["name"].as_str().unwrap_or_default();
    if numbers(line).into_iter().any(beyond_double) {
        return Some("numbers beyond a double");
    }
    if name.contains("dotted key") || name.contains("\"a.b\"") || line.contains("\"a.b\"") {
        return Some("dotted keys");
    }
    name.contains("legacy rule compiler").then_some("legacy `$or`")
}

#[test]
fn patterns_match_as_event_ruler_does() {
    let (mut checked, mut known) = (0, 0);
    let mut differ = Vec::new();
    for line in include_str!("data/event_ruler_cases.jsonl").lines() {
        // A few cases hold numbers beyond a double's range (1e400), which serde_json refuses.
        let Ok(case) = serde_json::from_str::<Value>(line) else { continue };
        if known_difference(line, &case).is_some() {
            known += 1;
            continue;
        }
        checked += 1;
        if !agrees(&case) {
            differ.push(format!("{}: pattern {} event {}", case["name"], case["pattern"], case["event"]));
        }
    }
    assert!(checked > 1500 && known < 90, "the cases were read ({checked} checked, {known} known differences)");
    assert!(differ.is_empty(), "{} cases differ from Event Ruler:\n{}", differ.len(), differ.join("\n"));
}

#[test]
fn the_known_differences_are_recognised() {
    assert!(beyond_double("5.0000000000000001") && beyond_double("9007199254740993") && beyond_double("1e-400"));
    assert!(beyond_double("0.30000000000000001") && beyond_double("2.5e-324"));
    for exact in ["300.0", "3e2", "-1.5", "0", "-0", "0.1", "5.000000000000001", "1.7976931348623157e308"] {
        assert!(!beyond_double(exact), "{exact}");
    }
    assert_eq!(numbers(r#"{"a":[{"numeric":[">",-5e-324]}],"b":"x1"}"#), ["-5e-324"]);
}
