//! The compiled pattern set matches exactly what the patterns match one by one (the simple
//! matcher is the reference), on random patterns and events.

use opsfleet_protocol::{Pattern, PatternSet};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// A leaf of an event.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec!["x", "xy", "yx", "XY", "y", "", "10.0.0.1", "arn:a:b"]).prop_map(|s| json!(s)),
        (0i64..4).prop_map(|n| json!(n)),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ]
}

/// A small object of leaves.
fn leaf_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(vec!["c", "d"]), leaf(), 0..3)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// An event value: a leaf, an array of leaves (or of arrays), an object, or an array of objects.
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => leaf(),
        2 => prop::collection::vec(leaf(), 0..3).prop_map(Value::Array),
        1 => prop::collection::vec(prop::collection::vec(leaf(), 0..2).prop_map(Value::Array), 0..2).prop_map(Value::Array),
        2 => leaf_object(),
        1 => prop::collection::vec(leaf_object(), 0..3).prop_map(Value::Array),
    ]
}

fn event() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(prop::sample::select(vec!["a", "b", "n"]), value(), 0..4)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// One matcher of a pattern, of every kind.
fn matcher() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec!["x", "xy", "y", "", "10.0.0.1"]).prop_map(|s| json!(s)),
        (0i64..4).prop_map(|n| json!(n)),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        prop::sample::select(vec!["x", "y", "ar"]).prop_map(|s| json!({ "prefix": s })),
        prop::sample::select(vec!["x", "y", "b"]).prop_map(|s| json!({ "suffix": s })),
        prop::sample::select(vec!["X", "xy"]).prop_map(|s| json!({ "equals-ignore-case": s })),
        prop::sample::select(vec!["X", "y"]).prop_map(|s| json!({ "prefix": { "equals-ignore-case": s } })),
        prop::sample::select(vec!["x*", "*y", "a*:b"]).prop_map(|s| json!({ "wildcard": s })),
        prop::sample::select(vec!["x", "y"]).prop_map(|s| json!({ "anything-but": s })),
        any::<bool>().prop_map(|b| json!({ "exists": b })),
        (0i64..3).prop_map(|n| json!({ "numeric": [">", n] })),
        Just(json!({ "cidr": "10.0.0.0/8" })),
    ]
}

fn matcher_list() -> impl Strategy<Value = Value> {
    prop::collection::vec(matcher(), 1..3).prop_map(Value::Array)
}

/// A pattern field: a matcher list, or a nested object of them.
fn field() -> impl Strategy<Value = Value> {
    let nested = prop::collection::btree_map(prop::sample::select(vec!["c", "d"]), matcher_list(), 1..3)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    prop_oneof![3 => matcher_list(), 1 => nested]
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(prop::sample::select(vec!["a", "b", "n"]), field(), 1..3)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn pattern() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => object().prop_map(Value::Object),
        1 => (object(), object(), object()).prop_map(|(mut base, a, b)| {
            base.insert("$or".into(), json!([a, b]));
            Value::Object(base)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn the_set_matches_what_each_pattern_matches(patterns in prop::collection::vec(pattern(), 1..12), events in prop::collection::vec(event(), 1..6)) {
        let compiled: Vec<Pattern> = patterns.iter().filter_map(|p| Pattern::from_value(p).ok()).collect();
        prop_assume!(!compiled.is_empty());
        let set = PatternSet::new(&compiled);
        for event in &events {
            let one_by_one: Vec<usize> = (0..compiled.len()).filter(|&i| compiled[i].matches(event)).collect();
            prop_assert_eq!(set.matching(event), one_by_one, "event {:?}", event);
        }
    }
}

#[test]
fn patterns_with_a_selective_field_are_anchored_and_duplicates_share_one() {
    let texts = [
        json!({"source": ["aws.ec2"], "detail": {"state": ["stopped"]}}),
        json!({"source": ["aws.ec2"], "detail": {"state": ["stopped"]}}),
        json!({"detail-type": [{"prefix": "EBS "}]}),
        json!({"detail": {"state": [{"anything-but": "running"}]}}),
    ];
    let patterns: Vec<Pattern> = texts.iter().map(|t| Pattern::from_value(t).expect("valid")).collect();
    let set = PatternSet::new(&patterns);
    assert_eq!(set.unanchored(), 1, "only the anything-but pattern has no anchor");
    let event = json!({"source": "aws.ec2", "detail-type": "EBS Volume Notification", "detail": {"state": "stopped"}});
    assert_eq!(set.matching(event.as_object().expect("object")), [0, 1, 2, 3]);
}
