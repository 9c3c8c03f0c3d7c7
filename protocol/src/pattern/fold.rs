//! Ignore-case matching as Event Ruler does it: the pattern's text is folded one character at
//! a time, to the character's lower and upper case (full mappings: `ß` to `SS`, `İ` to `i̇`,
//! never the character itself unless it is one of them); the event's text is not folded at
//! all. So `straße` matches `STRASSE` but `STRASSE` does not match `straße`, and a
//! character outside the Basic Multilingual Plane (an emoji) stands for two UTF-16 units that
//! each fold to `?`, as in Event Ruler.

/// A pattern text folded for ignore-case matching.
#[derive(Debug, Clone, PartialEq)]
pub struct Folded {
    /// The lower-cased text when it is ASCII: the fast path.
    ascii: Option<String>,
    /// For each unit of the text, the strings an event may have there.
    units: Vec<(String, String)>,
}

impl Folded {
    /// Folds a pattern's text.
    pub fn new(text: &str) -> Self {
        let ascii = text.is_ascii().then(|| text.to_ascii_lowercase());
        let mut units = Vec::with_capacity(text.len());
        for c in text.chars() {
            if c.len_utf16() == 2 {
                units.push(("?".to_owned(), "?".to_owned()));
                units.push(("?".to_owned(), "?".to_owned()));
                continue;
            }
            units.push((c.to_lowercase().collect(), c.to_uppercase().collect()));
        }
        Folded { ascii, units }
    }

    /// The lower-cased text when it is ASCII (then ignoring case is ASCII's).
    pub fn ascii_lower(&self) -> Option<&str> {
        self.ascii.as_deref()
    }

    /// Whether `value` is the folded text.
    pub fn equals(&self, value: &str) -> bool {
        match &self.ascii {
            Some(lower) => value.len() == lower.len() && value.eq_ignore_ascii_case(lower),
            None => self.forward(value).contains(&value.len()),
        }
    }

    /// Whether `value` starts with the folded text.
    pub fn prefix_of(&self, value: &str) -> bool {
        match &self.ascii {
            Some(lower) => {
                value.len() >= lower.len() && value.as_bytes()[..lower.len()].eq_ignore_ascii_case(lower.as_bytes())
            }
            None => !self.forward(value).is_empty(),
        }
    }

    /// Whether `value` ends with the folded text.
    pub fn suffix_of(&self, value: &str) -> bool {
        match &self.ascii {
            Some(lower) => {
                value.len() >= lower.len()
                    && value.as_bytes()[value.len() - lower.len()..].eq_ignore_ascii_case(lower.as_bytes())
            }
            None => {
                let mut ends = vec![value.len()];
                for (lower, upper) in self.units.iter().rev() {
                    let mut next = Vec::with_capacity(2);
                    for &end in &ends {
                        for alt in [lower, upper] {
                            if value[..end].ends_with(alt.as_str()) && !next.contains(&(end - alt.len())) {
                                next.push(end - alt.len());
                            }
                        }
                    }
                    if next.is_empty() {
                        return false;
                    }
                    ends = next;
                }
                true
            }
        }
    }

    /// The byte offsets of `value` at which the whole folded text can end, read from the start.
    fn forward(&self, value: &str) -> Vec<usize> {
        let mut starts = vec![0];
        for (lower, upper) in &self.units {
            let mut next = Vec::with_capacity(2);
            for &start in &starts {
                for alt in [lower, upper] {
                    if value[start..].starts_with(alt.as_str()) && !next.contains(&(start + alt.len())) {
                        next.push(start + alt.len());
                    }
                }
            }
            if next.is_empty() {
                return next;
            }
            starts = next;
        }
        starts
    }
}

#[cfg(test)]
mod tests {
    use super::Folded;

    #[test]
    fn the_pattern_folds_and_the_event_does_not() {
        assert!(Folded::new("straße").equals("STRASSE"));
        assert!(!Folded::new("STRASSE").equals("straße"));
        assert!(Folded::new("ǰ").equals("J\u{30C}"));
        assert!(!Folded::new("ǅ").equals("ǅ") && Folded::new("ǅ").equals("ǆ") && Folded::new("ǅ").equals("Ǆ"));
        assert!(Folded::new("ẞ").equals("ß") && !Folded::new("ẞ").equals("SS"));
        assert!(Folded::new("İstanbul").equals("İSTANBUL") && Folded::new("İstanbul").equals("i\u{307}stanbul"));
        assert!(!Folded::new("\u{212A}").equals("K") && Folded::new("\u{212A}").equals("k"));
        assert!(Folded::new("µ").equals("Μ") && !Folded::new("µ").equals("μ"));
        assert!(Folded::new("ΣΊΣΥΦΟΣ").equals("σίσυφοσ") && !Folded::new("ΣΊΣΥΦΟΣ").equals("σίσυφος"));
        assert!(Folded::new("😀ABC").equals("??abc") && !Folded::new("😀ABC").equals("😀abc"));
        assert!(Folded::new("ﬁ").prefix_of("FIle"));
        assert!(Folded::new("ΟΣ").suffix_of("λόγοσ") && !Folded::new("ΟΣ").suffix_of("λόγος"));
        assert!(
            Folded::new("Abc").equals("aBC")
                && Folded::new("ab").prefix_of("ABc")
                && Folded::new("bc").suffix_of("ABC")
        );
    }
}
