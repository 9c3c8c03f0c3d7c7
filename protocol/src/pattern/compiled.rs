//! Many patterns compiled into one index, so that matching an event costs about the same
//! whatever the number of patterns: each distinct pattern is anchored on one of its fields
//! whose matchers are all exact values, prefixes, suffixes, ASCII ignore-case texts or
//! wildcards (by a literal run inside them, found in one pass of an Aho-Corasick automaton
//! over all such runs, or by their literal start) — the most selective such field, by how many
//! patterns share its values; an event looks up its values at the anchored paths, and only the patterns
//! found (and the few with no anchor) are matched in full. The simple matcher stays the
//! reference: the index only picks candidates, and a property test checks that the set
//! matches exactly what the patterns match one by one.

use super::{FieldPattern, Matcher, NumericOp, ObjectPattern, Pattern};
use aho_corasick::AhoCorasick;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// An exact leaf value, as the index keys it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Str(String),
    Num(u64),
    Bool(bool),
    Null,
}

/// A number's key: its bits, with -0 as 0.
fn number_key(n: f64) -> Key {
    Key::Num(if n == 0.0 { 0 } else { n.to_bits() })
}

/// What an anchor looks up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Probe {
    Exact(Key),
    Prefix(String),
    Suffix(String),
    Lower(String),
    PrefixLower(String),
    SuffixLower(String),
    /// A literal run the value contains (a wildcard's).
    Contains(String),
    /// A numeric range: the bits of its lowest and highest bound (infinities when open).
    Range(u64, u64),
}

/// The probe of a matcher, when it has one.
fn probe(matcher: &Matcher) -> Option<Probe> {
    match matcher {
        Matcher::Str(s) => Some(Probe::Exact(Key::Str(s.clone()))),
        Matcher::Num(n) => Some(Probe::Exact(number_key(*n))),
        Matcher::Bool(b) => Some(Probe::Exact(Key::Bool(*b))),
        Matcher::Null => Some(Probe::Exact(Key::Null)),
        Matcher::Prefix(t) if !t.is_empty() => Some(Probe::Prefix(t.clone())),
        Matcher::Suffix(t) if !t.is_empty() => Some(Probe::Suffix(t.clone())),
        Matcher::EqualsIgnoreCase(f) => f.ascii_lower().map(|t| Probe::Lower(t.to_owned())),
        Matcher::PrefixIgnoreCase(f) => {
            f.ascii_lower().filter(|t| !t.is_empty()).map(|t| Probe::PrefixLower(t.to_owned()))
        }
        Matcher::SuffixIgnoreCase(f) => {
            f.ascii_lower().filter(|t| !t.is_empty()).map(|t| Probe::SuffixLower(t.to_owned()))
        }
        Matcher::Wildcard(w) => match w.inner_literal() {
            Some(run) => Some(Probe::Contains(run.to_owned())),
            None => w.literal_prefix().map(|t| Probe::Prefix(t.to_owned())),
        },
        Matcher::Numeric(conditions) => {
            let (mut low, mut high) = (f64::NEG_INFINITY, f64::INFINITY);
            for (op, n) in conditions {
                match op {
                    NumericOp::Gt | NumericOp::Ge => low = low.max(*n),
                    NumericOp::Lt | NumericOp::Le => high = high.min(*n),
                    NumericOp::Eq => (low, high) = (low.max(*n), high.min(*n)),
                }
            }
            Some(Probe::Range(low.to_bits(), high.to_bits()))
        }
        _ => None,
    }
}

/// A field a pattern can be found by: its path and the probes of its matchers (one of which
/// an event's value there must hit for the pattern to match).
#[derive(Debug, Clone)]
struct Anchor {
    path: Vec<String>,
    probes: Vec<Probe>,
}

/// What a pattern offers to be found by: its fields' anchors, and for each of its `$or`s, the
/// anchors of each alternative.
type Offers = (Vec<Anchor>, Vec<Vec<Vec<Anchor>>>);

/// The anchors an object level offers: its leaf fields whose matchers all have probes, and
/// those of its nested objects.
fn anchors(object: &ObjectPattern, path: &[String], out: &mut Vec<Anchor>) {
    for (key, field) in &object.fields {
        let mut here = path.to_vec();
        here.push(key.clone());
        match field {
            FieldPattern::Leaf(matchers) => {
                let probes: Option<Vec<Probe>> = matchers.iter().map(probe).collect();
                if let Some(probes) = probes {
                    out.push(Anchor { path: here, probes });
                }
            }
            FieldPattern::Object(inner) => anchors(inner, &here, out),
        }
    }
}

/// The index of one path: each kind of probe, with the lengths of its prefixes and suffixes.
#[derive(Debug, Default)]
struct PathIndex {
    /// Exact texts, looked up without copying the event's text.
    exact_text: HashMap<String, Vec<u32>>,
    /// Exact numbers, booleans and nulls.
    exact: HashMap<Key, Vec<u32>>,
    prefix: HashMap<String, Vec<u32>>,
    suffix: HashMap<String, Vec<u32>>,
    lower: HashMap<String, Vec<u32>>,
    prefix_lower: HashMap<String, Vec<u32>>,
    suffix_lower: HashMap<String, Vec<u32>>,
    prefix_lengths: Vec<usize>,
    suffix_lengths: Vec<usize>,
    prefix_lower_lengths: Vec<usize>,
    suffix_lower_lengths: Vec<usize>,
    /// Numeric ranges (closed; the full test follows), sorted by their lowest bound.
    ranges: Vec<(f64, f64, u32)>,
    /// Literal runs the value must contain, and the automaton that finds them all at once
    /// (built by [`PathIndex::finish`]; its pattern numbers index `runs`).
    contains: HashMap<String, Vec<u32>>,
    runs: Vec<String>,
    finder: Option<AhoCorasick>,
}

impl PathIndex {
    fn add(&mut self, probe: &Probe, id: u32) {
        let (map, lengths, text) = match probe {
            Probe::Exact(Key::Str(text)) => {
                self.exact_text.entry(text.clone()).or_default().push(id);
                return;
            }
            Probe::Exact(key) => {
                self.exact.entry(key.clone()).or_default().push(id);
                return;
            }
            Probe::Lower(t) => {
                self.lower.entry(t.clone()).or_default().push(id);
                return;
            }
            Probe::Range(low, high) => {
                let (low, high) = (f64::from_bits(*low), f64::from_bits(*high));
                let at = self.ranges.partition_point(|r| r.0 <= low);
                self.ranges.insert(at, (low, high, id));
                return;
            }
            Probe::Contains(t) => {
                self.contains.entry(t.clone()).or_default().push(id);
                return;
            }
            Probe::Prefix(t) => (&mut self.prefix, &mut self.prefix_lengths, t),
            Probe::Suffix(t) => (&mut self.suffix, &mut self.suffix_lengths, t),
            Probe::PrefixLower(t) => (&mut self.prefix_lower, &mut self.prefix_lower_lengths, t),
            Probe::SuffixLower(t) => (&mut self.suffix_lower, &mut self.suffix_lower_lengths, t),
        };
        map.entry(text.clone()).or_default().push(id);
        if !lengths.contains(&text.len()) {
            lengths.push(text.len());
        }
    }

    /// Builds the automaton of the literal runs, once every probe was added. Without one (an
    /// automaton that cannot be built), every pattern anchored on a run is a candidate.
    fn finish(&mut self) {
        self.runs = self.contains.keys().cloned().collect();
        self.finder = if self.runs.is_empty() {
            None
        } else {
            // A DFA: the fastest search, and the runs are few and short.
            AhoCorasick::builder().kind(Some(aho_corasick::AhoCorasickKind::DFA)).build(&self.runs).ok()
        };
    }

    /// The patterns a leaf value hits.
    fn hits(&self, leaf: &Value, out: &mut Vec<u32>) {
        let key = match leaf {
            Value::String(s) => {
                if let Some(ids) = self.exact_text.get(s.as_str()) {
                    out.extend_from_slice(ids);
                }
                None
            }
            Value::Number(n) => match n.as_f64() {
                Some(f) => Some(number_key(f)),
                None => return,
            },
            Value::Bool(b) => Some(Key::Bool(*b)),
            Value::Null => Some(Key::Null),
            _ => return,
        };
        if let Some(ids) = key.as_ref().and_then(|k| self.exact.get(k)) {
            out.extend_from_slice(ids);
        }
        if let (Some(Key::Num(_)), Some(v)) = (&key, leaf.as_f64()) {
            let below = self.ranges.partition_point(|r| r.0 <= v);
            out.extend(self.ranges[..below].iter().filter(|r| v <= r.1).map(|r| r.2));
        }
        let Value::String(v) = leaf else { return };
        match &self.finder {
            Some(finder) => {
                for found in finder.find_overlapping_iter(v.as_str()) {
                    if let Some(ids) = self.runs.get(found.pattern().as_usize()).and_then(|r| self.contains.get(r)) {
                        out.extend_from_slice(ids);
                    }
                }
            }
            None => self.contains.values().for_each(|ids| out.extend_from_slice(ids)),
        }
        let ends =
            |map: &HashMap<String, Vec<u32>>, lengths: &[usize], text: &str, out: &mut Vec<u32>, from_start: bool| {
                for &l in lengths {
                    if l > text.len() {
                        continue;
                    }
                    let at = if from_start { l } else { text.len() - l };
                    if !text.is_char_boundary(at) {
                        continue;
                    }
                    let part = if from_start { &text[..at] } else { &text[at..] };
                    if let Some(ids) = map.get(part) {
                        out.extend_from_slice(ids);
                    }
                }
            };
        ends(&self.prefix, &self.prefix_lengths, v, out, true);
        ends(&self.suffix, &self.suffix_lengths, v, out, false);
        let folded = !(self.lower.is_empty() && self.prefix_lower.is_empty() && self.suffix_lower.is_empty());
        if folded && v.is_ascii() {
            let lower = v.to_ascii_lowercase();
            if let Some(ids) = self.lower.get(&lower) {
                out.extend_from_slice(ids);
            }
            ends(&self.prefix_lower, &self.prefix_lower_lengths, &lower, out, true);
            ends(&self.suffix_lower, &self.suffix_lower_lengths, &lower, out, false);
        }
    }
}

/// The leaves of an event at a path: through nested objects, and through every element of
/// the arrays on the way.
fn leaves_at<'a>(value: &'a Value, path: &[String], out: &mut Vec<&'a Value>) {
    match (value, path.split_first()) {
        (Value::Array(items), _) => items.iter().for_each(|item| leaves_at(item, path, out)),
        (Value::Object(o), Some((first, rest))) => {
            if let Some(inner) = o.get(first) {
                leaves_at(inner, rest, out);
            }
        }
        (Value::Object(_), None) => {}
        (_, None) => out.push(value),
        (_, Some(_)) => {}
    }
}

/// Patterns compiled together: which of them an event matches, at a cost that does not grow
/// with their number.
#[derive(Debug)]
pub struct PatternSet {
    /// The distinct patterns.
    unique: Vec<Pattern>,
    /// The indexes (into the patterns given) of each distinct pattern.
    owners: Vec<Vec<usize>>,
    /// The anchored paths and their indexes.
    paths: Vec<(Vec<String>, PathIndex)>,
    /// The distinct patterns with no anchor: matched against every event.
    unanchored: Vec<u32>,
}

impl PatternSet {
    /// Compiles patterns; [`PatternSet::matching`] answers with indexes into `patterns`.
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a Pattern>) -> Self {
        let mut unique: Vec<Pattern> = Vec::new();
        let mut owners: Vec<Vec<usize>> = Vec::new();
        for (index, pattern) in patterns.into_iter().enumerate() {
            match unique.iter().position(|p| p.source == pattern.source) {
                Some(same) => owners[same].push(index),
                None => {
                    unique.push(pattern.clone());
                    owners.push(vec![index]);
                }
            }
        }
        // The field anchors of each distinct pattern, and of each alternative of its `$or`s.
        let offered: Vec<Offers> = unique
            .iter()
            .map(|p| {
                let mut own = Vec::new();
                anchors(&p.root, &[], &mut own);
                let groups = p
                    .root
                    .any_of
                    .iter()
                    .map(|alternatives| {
                        alternatives
                            .iter()
                            .map(|alt| {
                                let mut out = Vec::new();
                                anchors(alt, &[], &mut out);
                                out
                            })
                            .collect()
                    })
                    .collect();
                (own, groups)
            })
            .collect();
        // How many distinct patterns each (path, probe) would find: the fewer, the better.
        let mut shared: HashMap<(&[String], &Probe), usize> = HashMap::new();
        let every = offered.iter().flat_map(|(own, groups)| own.iter().chain(groups.iter().flatten().flatten()));
        for anchor in every {
            for probe in &anchor.probes {
                *shared.entry((anchor.path.as_slice(), probe)).or_default() += 1;
            }
        }
        let cost = |a: &Anchor| a.probes.iter().map(|p| shared[&(a.path.as_slice(), p)]).sum::<usize>();
        let mut paths: Vec<(Vec<String>, PathIndex)> = Vec::new();
        let mut unanchored = Vec::new();
        for (id, (own, groups)) in offered.iter().enumerate() {
            // A field of the pattern, or an `$or` whose every alternative has one (the pattern
            // is found when any alternative's field is).
            let mut choices: Vec<Vec<&Anchor>> = own.iter().map(|a| vec![a]).collect();
            for group in groups {
                let best: Option<Vec<&Anchor>> = group.iter().map(|alt| alt.iter().min_by_key(|a| cost(a))).collect();
                choices.extend(best);
            }
            let Some(best) = choices.into_iter().min_by_key(|parts| parts.iter().map(|a| cost(a)).sum::<usize>())
            else {
                unanchored.push(id as u32);
                continue;
            };
            for anchor in best {
                let index = match paths.iter().position(|(p, _)| *p == anchor.path) {
                    Some(i) => i,
                    None => {
                        paths.push((anchor.path.clone(), PathIndex::default()));
                        paths.len() - 1
                    }
                };
                for probe in &anchor.probes {
                    paths[index].1.add(probe, id as u32);
                }
            }
        }
        for (_, index) in &mut paths {
            index.finish();
        }
        PatternSet { unique, owners, paths, unanchored }
    }

    /// The indexes of the patterns an event matches, in ascending order.
    pub fn matching(&self, event: &Map<String, Value>) -> Vec<usize> {
        let mut candidates: Vec<u32> = self.unanchored.clone();
        let mut leaves = Vec::new();
        for (path, index) in &self.paths {
            leaves.clear();
            if let Some((first, rest)) = path.split_first() {
                if let Some(value) = event.get(first) {
                    leaves_at(value, rest, &mut leaves);
                }
            }
            for leaf in &leaves {
                index.hits(leaf, &mut candidates);
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        let mut matched: Vec<usize> = Vec::new();
        for id in candidates {
            if self.unique[id as usize].matches(event) {
                matched.extend_from_slice(&self.owners[id as usize]);
            }
        }
        matched.sort_unstable();
        matched
    }

    /// How many distinct patterns have no anchor (and are matched against every event).
    pub fn unanchored(&self) -> usize {
        self.unanchored.len()
    }
}
