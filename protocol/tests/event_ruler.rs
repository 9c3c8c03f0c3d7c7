//! Differential cases labelled by AWS's Event Ruler (the engine behind EventBridge; see
//! tests/data/README.md): where opsfleet follows Event Ruler today, it accepts, refuses and
//! matches every case exactly as Event Ruler does. The categories not listed here
//! (`cidr`, Java-style case folding, numbers beyond a double's precision, validation) and the
//! named cases below are the known differences still open.

use opsfleet_protocol::Pattern;
use serde_json::Value;

/// Categories (the case name's prefix) in which every case must agree.
const AGREED: &[&str] = &[
    "exact-types",
    "string-ops",
    "wildcard",
    "wildcard (refused)",
    "cidr (refused)",
    "anything-but",
    "exists",
    "nested-arrays",
];

/// Cases of those categories that still differ, each for a reason named here.
const OPEN: &[(&str, &str)] = &[
    ("anything-but: anything-but number vs event 5.0000000000000001", "numbers compared by their text"),
    ("anything-but: anything-but equals-ignore-case emoji", "Java's per-UTF-16-unit case folding"),
    ("anything-but: anything-but equals-ignore-case sharp s", "Java's per-UTF-16-unit case folding"),
    ("exists: parent array of objects, one has a", "exists:false over every element of an array"),
    ("exists: exists false nested arrays of objects", "exists:false over every element of an array"),
    ("exists: exists on dotted key", "dotted keys name nested fields"),
    ("nested-arrays: {\"a\":[{\"cidr\"", "cidr"),
];

/// Whether an event is matched, or the pattern refused, as Event Ruler labelled the case.
fn agrees(case: &Value) -> bool {
    let compiled = Pattern::from_value(&case["pattern"]);
    if case["valid"] == false {
        return compiled.is_err();
    }
    let empty = serde_json::Map::new();
    compiled.is_ok_and(|p| p.matches(case["event"].as_object().unwrap_or(&empty)) == (case["matches"] == true))
}

#[test]
fn patterns_match_as_event_ruler_does() {
    let mut checked = 0;
    let mut differ = Vec::new();
    for line in include_str!("data/event_ruler_cases.jsonl").lines() {
        // A few cases hold numbers beyond a double (1e400), which serde_json refuses.
        let Ok(case) = serde_json::from_str::<Value>(line) else { continue };
        let name = case["name"].as_str().unwrap_or_default();
        let category = name.split(':').next().unwrap_or_default();
        if !AGREED.contains(&category) || OPEN.iter().any(|(open, _)| name.starts_with(open)) {
            continue;
        }
        checked += 1;
        if !agrees(&case) {
            differ.push(format!("{name}: pattern {} event {}", case["pattern"], case["event"]));
        }
    }
    assert!(checked > 800, "the cases were read ({checked})");
    assert!(differ.is_empty(), "{} cases differ from Event Ruler:\n{}", differ.len(), differ.join("\n"));
}
