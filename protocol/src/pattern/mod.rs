//! EventBridge event patterns: parsed and validated once, then matched purely and quickly.
//!
//! The semantics follow AWS's Event Ruler (the engine behind EventBridge): every field of a
//! pattern must match; a leaf is a list of matchers of which any may match; a leaf matcher
//! sees the event value's leaves (a scalar, or the scalars of an array and of the arrays in
//! it, however deep: objects are not leaves), any of which may match; a field with no leaves
//! (missing, an object, an empty array) matches only `{"exists": false}`; `anything-but`
//! needs a leaf, and any leaf it does not exclude (a non-string is never excluded by a string
//! operator); a nested pattern object matches an object, or any object in an array (however
//! deep), all its fields in that same object; `$or` takes a list of alternative sub-patterns
//! of which one must match, together with its sibling fields.

mod cidr;
mod compiled;
mod explain;
mod fold;
mod matcher;
mod parse;
mod wildcard;

use cidr::Cidr;
use fold::Folded;

pub use compiled::PatternSet;
pub use explain::Mismatch;
pub use parse::PatternError;
pub use wildcard::Wildcard;

use serde_json::{Map, Value};

/// A compiled, validated event pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    root: ObjectPattern,
    /// The pattern as written, to explain a mismatch in its own terms.
    source: Value,
}

impl Pattern {
    /// Compiles a pattern from its JSON value (an object).
    pub fn from_value(value: &Value) -> Result<Self, PatternError> {
        Ok(Pattern { root: parse::object(value, "")?, source: value.clone() })
    }

    /// Compiles a pattern from its JSON text, as the EventBridge console shows it.
    pub fn from_json(text: &str) -> Result<Self, PatternError> {
        let value: Value = serde_json::from_str(text).map_err(|e| PatternError::new("", format!("not JSON: {e}")))?;
        Self::from_value(&value)
    }

    /// Whether an event document matches the pattern.
    pub fn matches(&self, event: &Map<String, Value>) -> bool {
        matcher::object_matches(&self.root, Some(event))
    }

    /// Why an event document does not match: the first field of the pattern that fails, and
    /// how; `None` when it matches.
    pub fn explain(&self, event: &Map<String, Value>) -> Option<Mismatch> {
        (!self.matches(event)).then(|| explain::object(&self.root, &self.source, Some(event), ""))
    }
}

/// An object level of a pattern: fields that must all match, and `$or` groups of which one
/// alternative each must match.
#[derive(Debug, Clone, PartialEq)]
struct ObjectPattern {
    fields: Vec<(String, FieldPattern)>,
    any_of: Vec<Vec<ObjectPattern>>,
}

/// What one field of a pattern requires.
#[derive(Debug, Clone, PartialEq)]
enum FieldPattern {
    /// A list of matchers for a leaf value, of which any may match.
    Leaf(Vec<Matcher>),
    /// A nested object.
    Object(ObjectPattern),
}

/// One matcher of a leaf list.
#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    /// An exact string.
    Str(String),
    /// An exact string that is an IP address: also any other way of writing that address.
    Ip { text: String, hex: String },
    /// An exact number.
    Num(f64),
    /// An exact boolean.
    Bool(bool),
    /// `null`.
    Null,
    /// `{"prefix": …}`.
    Prefix(String),
    /// `{"prefix": {"equals-ignore-case": …}}`.
    PrefixIgnoreCase(Folded),
    /// `{"suffix": …}`.
    Suffix(String),
    /// `{"suffix": {"equals-ignore-case": …}}`.
    SuffixIgnoreCase(Folded),
    /// `{"equals-ignore-case": …}`.
    EqualsIgnoreCase(Folded),
    /// `{"cidr": …}`.
    Cidr(Cidr),
    /// `{"wildcard": …}`.
    Wildcard(Wildcard),
    /// `{"numeric": [op, n, (op, n)]}`.
    Numeric(Vec<(NumericOp, f64)>),
    /// `{"exists": bool}`.
    Exists(bool),
    /// `{"anything-but": …}`.
    AnythingBut(AnythingBut),
}

/// A comparison of `numeric`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum NumericOp {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

/// What `anything-but` excludes.
#[derive(Debug, Clone, PartialEq)]
enum AnythingBut {
    /// Exact strings and numbers.
    Values(Vec<Matcher>),
    /// Strings with any of these prefixes.
    Prefix(Vec<String>),
    /// Strings with any of these suffixes.
    Suffix(Vec<String>),
    /// These strings, ignoring case.
    EqualsIgnoreCase(Vec<Folded>),
    /// Strings matching any of these wildcards.
    Wildcard(Vec<Wildcard>),
}

#[cfg(test)]
mod tests;
