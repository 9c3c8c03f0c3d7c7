use super::Pattern;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("test event must be an object"),
    }
}

fn m(pattern: Value, event: Value) -> bool {
    Pattern::from_value(&pattern).expect("valid pattern").matches(&obj(event))
}

#[test]
fn exact_values_of_every_type() {
    let ev = json!({"source": "aws.ec2", "detail": {"n": 5, "b": true, "z": null}});
    assert!(m(json!({"source": ["aws.ec2"]}), ev.clone()));
    assert!(!m(json!({"source": ["aws.s3"]}), ev.clone()));
    assert!(m(json!({"detail": {"n": [5]}}), ev.clone()));
    assert!(m(json!({"detail": {"n": [5.0]}}), ev.clone()));
    assert!(!m(json!({"detail": {"n": ["5"]}}), ev.clone()));
    assert!(m(json!({"detail": {"b": [true]}}), ev.clone()));
    assert!(!m(json!({"detail": {"b": [false]}}), ev.clone()));
    assert!(m(json!({"detail": {"z": [null]}}), ev.clone()));
    // null does not match a missing field
    assert!(!m(json!({"detail": {"missing": [null]}}), ev));
}

#[test]
fn arrays_in_events_match_any_element() {
    let ev = json!({"resources": ["arn:a", "arn:b"]});
    assert!(m(json!({"resources": ["arn:b"]}), ev.clone()));
    assert!(!m(json!({"resources": ["arn:c"]}), ev.clone()));
    let ev = json!({"detail": {"items": [{"name": "x"}, {"name": "y"}]}});
    assert!(m(json!({"detail": {"items": {"name": ["y"]}}}), ev));
}

#[test]
fn prefix_suffix_and_ignore_case() {
    let ev = json!({"time": "2024-01-01T00:00:00Z", "name": "MyInstance.log"});
    assert!(m(json!({"time": [{"prefix": "2024-"}]}), ev.clone()));
    assert!(!m(json!({"time": [{"prefix": "2023-"}]}), ev.clone()));
    assert!(m(json!({"name": [{"suffix": ".log"}]}), ev.clone()));
    assert!(m(json!({"name": [{"prefix": {"equals-ignore-case": "myinst"}}]}), ev.clone()));
    assert!(m(json!({"name": [{"suffix": {"equals-ignore-case": ".LOG"}}]}), ev.clone()));
    assert!(m(json!({"name": [{"equals-ignore-case": "myinstance.LOG"}]}), ev.clone()));
    assert!(!m(json!({"name": [{"equals-ignore-case": "other"}]}), ev));
    assert!(!m(json!({"n": [{"prefix": "1"}]}), json!({"n": 12})));
}

#[test]
fn anything_but_forms() {
    let ev = json!({"state": "running", "code": 16});
    assert!(m(json!({"state": [{"anything-but": "stopped"}]}), ev.clone()));
    assert!(!m(json!({"state": [{"anything-but": ["running", "stopped"]}]}), ev.clone()));
    assert!(!m(json!({"code": [{"anything-but": 16}]}), ev.clone()));
    assert!(m(json!({"code": [{"anything-but": [80, 48]}]}), ev.clone()));
    assert!(!m(json!({"state": [{"anything-but": {"prefix": "run"}}]}), ev.clone()));
    assert!(m(json!({"state": [{"anything-but": {"suffix": "ped"}}]}), ev.clone()));
    assert!(!m(json!({"state": [{"anything-but": {"equals-ignore-case": ["RUNNING"]}}]}), ev.clone()));
    assert!(!m(json!({"state": [{"anything-but": {"wildcard": "r*g"}}]}), ev.clone()));
    // a missing field does not match anything-but
    assert!(!m(json!({"other": [{"anything-but": "x"}]}), ev));
}

#[test]
fn numeric_comparisons_and_ranges() {
    let ev = json!({"c": 5, "s": "5"});
    for (p, expect) in [
        (json!([">", 0]), true),
        (json!([">", 5]), false),
        (json!([">=", 5]), true),
        (json!(["<", 5]), false),
        (json!(["<=", 5]), true),
        (json!(["=", 5]), true),
        (json!([">", 0, "<=", 5]), true),
        (json!([">", 0, "<", 5]), false),
    ] {
        assert_eq!(m(json!({"c": [{"numeric": p.clone()}]}), ev.clone()), expect, "numeric {p}");
    }
    // strings are not numbers
    assert!(!m(json!({"s": [{"numeric": [">", 0]}]}), ev));
}

#[test]
fn exists_true_and_false() {
    let ev = json!({"detail": {"a": 1, "o": {"x": 1}}});
    assert!(m(json!({"detail": {"a": [{"exists": true}]}}), ev.clone()));
    assert!(!m(json!({"detail": {"a": [{"exists": false}]}}), ev.clone()));
    assert!(m(json!({"detail": {"b": [{"exists": false}]}}), ev.clone()));
    assert!(!m(json!({"detail": {"b": [{"exists": true}]}}), ev.clone()));
    // exists works on leaves only
    assert!(!m(json!({"detail": {"o": [{"exists": true}]}}), ev.clone()));
    // a missing parent: the leaf does not exist either
    assert!(m(json!({"nothing": {"b": [{"exists": false}]}}), ev));
}

#[test]
fn wildcard_matcher() {
    let ev = json!({"resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-1"]});
    assert!(m(json!({"resources": [{"wildcard": "arn:aws:ec2:*:instance/*"}]}), ev.clone()));
    assert!(!m(json!({"resources": [{"wildcard": "arn:aws:s3:*"}]}), ev));
}

#[test]
fn or_combines_with_siblings() {
    let p = json!({"source": ["aws.ec2"], "$or": [{"detail": {"state": ["stopped"]}}, {"detail": {"code": [{"numeric": [">", 10]}]}}]});
    assert!(m(p.clone(), json!({"source": "aws.ec2", "detail": {"state": "stopped"}})));
    assert!(m(p.clone(), json!({"source": "aws.ec2", "detail": {"code": 11}})));
    assert!(!m(p.clone(), json!({"source": "aws.ec2", "detail": {"state": "running", "code": 1}})));
    assert!(!m(p, json!({"source": "aws.s3", "detail": {"state": "stopped"}})));
}

#[test]
fn invalid_patterns_are_rejected_with_their_place() {
    let cases = [
        (json!("x"), "a pattern must be an object"),
        (json!({"source": "aws.ec2"}), "at `source`: a pattern value must be an array"),
        (json!({"source": []}), "at `source`: a matcher list must not be empty"),
        (json!({"detail": {"s": [{"prefx": "a"}]}}), "at `detail.s[0]`: unknown operator `prefx`"),
        (json!({"a": [{"numeric": ["<", 5, ">", 1]}]}), "a range is a lower bound"),
        (json!({"a": [{"numeric": [">", 9, "<", 1]}]}), "lower bound must be below the upper bound"),
        (json!({"a": [{"numeric": ["~", 1]}]}), "unknown operator"),
        (json!({"a": [{"exists": "yes"}]}), "`exists` takes true or false"),
        (json!({"a": [{"wildcard": "a**"}]}), "consecutive"),
        (json!({"a": [{"anything-but": []}]}), "must not be empty"),
        (json!({"a": [{"prefix": "a", "suffix": "b"}]}), "exactly one operator"),
        (json!({"$or": [{"a": ["x"]}]}), "at least two"),
    ];
    for (pattern, expected) in cases {
        let err = Pattern::from_value(&pattern).expect_err(&pattern.to_string()).to_string();
        assert!(err.contains(expected), "{pattern}: got `{err}`, want `{expected}`");
    }
}

#[test]
fn json_text_patterns_can_match_null() {
    let p = Pattern::from_json(r#"{"detail": {"reason": [null]}}"#).unwrap();
    assert!(p.matches(&obj(json!({"detail": {"reason": null}}))));
    assert!(!p.matches(&obj(json!({"detail": {"reason": "x"}}))));
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z]{0,8}".prop_map(Value::String),
        (-1000i64..1000).prop_map(|n| json!(n)),
        any::<bool>().prop_map(Value::Bool),
    ]
}

proptest! {
    /// A pattern made of an event's own values matches the event.
    #[test]
    fn event_matches_pattern_of_its_own_values(fields in proptest::collection::btree_map("[a-z]{1,6}", scalar(), 1..6)) {
        let event: Map<String, Value> = fields.clone().into_iter().collect();
        let pattern: Map<String, Value> = fields.into_iter().map(|(k, v)| (k, json!([v]))).collect();
        prop_assert!(Pattern::from_value(&Value::Object(pattern)).unwrap().matches(&event));
    }

    /// `anything-but x` never matches x, and always matches a different string.
    #[test]
    fn anything_but_excludes_exactly(x in "[a-z]{1,8}", y in "[a-z]{1,8}") {
        let p = Pattern::from_value(&json!({"f": [{"anything-but": x.clone()}]})).unwrap();
        let same = p.matches(&obj(json!({"f": x.clone()})));
        prop_assert!(!same);
        prop_assert_eq!(p.matches(&obj(json!({"f": y.clone()}))), x != y);
    }

    /// Every prefix of a string matches it as `prefix`; `equals-ignore-case` ignores case.
    #[test]
    fn prefixes_and_case(s in "[a-zA-Z]{0,12}", cut in 0usize..12) {
        let cut = cut.min(s.len());
        let event = obj(json!({"f": s.clone()}));
        let prefix = Pattern::from_value(&json!({"f": [{"prefix": &s[..cut]}]})).unwrap().matches(&event);
        let suffix = Pattern::from_value(&json!({"f": [{"suffix": &s[cut..]}]})).unwrap().matches(&event);
        let upper = Pattern::from_value(&json!({"f": [{"equals-ignore-case": s.to_uppercase()}]})).unwrap().matches(&event);
        prop_assert!(prefix && suffix && upper);
    }

    /// `$or` of two patterns matches exactly when one of them does.
    #[test]
    fn or_is_disjunction(a in scalar(), b in scalar(), v in scalar()) {
        let event = obj(json!({"f": v}));
        let pa = json!({"f": [a]});
        let pb = json!({"f": [b]});
        let either = Pattern::from_value(&json!({"$or": [pa.clone(), pb.clone()]})).unwrap().matches(&event);
        let one = Pattern::from_value(&pa).unwrap().matches(&event) || Pattern::from_value(&pb).unwrap().matches(&event);
        prop_assert_eq!(either, one);
    }

    /// A numeric range matches exactly the numbers inside it.
    #[test]
    fn numeric_range_is_interval(lo in -100i64..100, span in 1i64..100, v in -300i64..300) {
        let hi = lo + span;
        let p = Pattern::from_value(&json!({"f": [{"numeric": [">=", lo, "<", hi]}]})).unwrap();
        prop_assert_eq!(p.matches(&obj(json!({"f": v}))), v >= lo && v < hi);
    }
}
