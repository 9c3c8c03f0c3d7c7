//! Fuzzing the two parsers that take input from outside, for a bounded number of cases each
//! (`PROPTEST_CASES` raises it): `normalize` (every message body the router receives) and the
//! pattern compiler (every task pattern an operator writes). Neither may panic on anything,
//! and what they accept must be usable: a normalized event plans, a compiled pattern matches.

use opsfleet_protocol::event::{named_resources, normalize};
use opsfleet_protocol::pattern::Pattern;
use opsfleet_protocol::{Config, Planner};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// The real bodies the fuzzer starts from.
fn seeds() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/events");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .expect("examples/events")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    out.sort();
    assert!(out.len() >= 10, "seed bodies: {}", out.len());
    out
}

fn planner() -> Planner {
    let config = Config::parse(
        r#"
[fleet]
name = "fuzz"

[[tasks]]
name = "everything"
pattern = { "detail-type" = [{ "prefix" = "" }] }
targets = "event"
action = "noop"
"#,
        None,
    )
    .expect("config");
    Planner::new(config)
}

/// JSON values of any shape, with the keys and values events and patterns use most.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("source".to_owned()),
        Just("detail-type".to_owned()),
        Just("detail".to_owned()),
        Just("resources".to_owned()),
        Just("account".to_owned()),
        Just("region".to_owned()),
        Just("id".to_owned()),
        Just("Type".to_owned()),
        Just("Message".to_owned()),
        Just("AlarmName".to_owned()),
        Just("NewStateValue".to_owned()),
        Just("Trigger".to_owned()),
        Just("prefix".to_owned()),
        Just("suffix".to_owned()),
        Just("anything-but".to_owned()),
        Just("numeric".to_owned()),
        Just("exists".to_owned()),
        Just("wildcard".to_owned()),
        Just("equals-ignore-case".to_owned()),
        Just("cidr".to_owned()),
        Just("$or".to_owned()),
        "[a-zA-Z$-]{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        "[ -~]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("<"),
            Just(">="),
            Just("="),
            Just("*"),
            Just("i-0123*"),
            Just("arn:aws:ec2:us-east-1:123456789012:instance/i-1")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn normalize_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = normalize(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn normalize_takes_real_bodies_with_their_bytes_changed(
        seed in 0usize..64,
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..12),
    ) {
        let seeds = seeds();
        let mut body = seeds[seed % seeds.len()].clone().into_bytes();
        for (at, byte, how) in edits {
            let at = at % (body.len() + 1);
            match how {
                0 if at < body.len() => body[at] = byte,
                1 => body.insert(at, byte),
                _ if at < body.len() => { body.remove(at); }
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&body);
        if let Ok(event) = normalize(&text) {
            // What normalizes can be planned (or refused with a reason), never panics.
            let _ = named_resources(&event);
            let _ = planner().plan(&event, 0);
        }
    }

    #[test]
    fn normalize_and_plan_take_any_json(value in json_value()) {
        if let Ok(event) = normalize(&value.to_string()) {
            let _ = named_resources(&event);
            let _ = planner().plan(&event, 0);
        }
        // The same value as an SNS notification's message.
        let wrapped = json!({"Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
            "Message": value.to_string()});
        if let Ok(event) = normalize(&wrapped.to_string()) {
            let _ = planner().plan(&event, 0);
        }
    }

    #[test]
    fn the_pattern_compiler_takes_any_json_and_what_it_accepts_matches(pattern in json_value(), event in json_value()) {
        if let Ok(compiled) = Pattern::from_value(&pattern) {
            let event = match event {
                Value::Object(map) => map,
                other => Map::from_iter([("detail".to_owned(), other)]),
            };
            let _ = compiled.matches(&event);
        }
    }

    #[test]
    fn the_pattern_compiler_takes_any_text(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Pattern::from_json(&String::from_utf8_lossy(&bytes));
    }
}
