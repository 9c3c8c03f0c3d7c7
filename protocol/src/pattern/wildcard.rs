//! EventBridge `wildcard` patterns: `*` matches any run of characters, `\*` a literal star and
//! `\\` a literal backslash.

/// A compiled wildcard: literal segments between unescaped stars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wildcard {
    segments: Vec<String>,
    leading_star: bool,
    trailing_star: bool,
}

impl Wildcard {
    /// Compiles a wildcard, rejecting consecutive stars (EventBridge does too) and dangling
    /// escapes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut segments = vec![String::new()];
        let mut chars = text.chars().peekable();
        let mut previous_was_star = false;
        let mut leading_star = false;
        let mut trailing_star = false;
        let mut first = true;
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if previous_was_star {
                        return Err("consecutive `*` are not allowed".into());
                    }
                    if first {
                        leading_star = true;
                    } else {
                        segments.push(String::new());
                    }
                    previous_was_star = true;
                    trailing_star = chars.peek().is_none();
                }
                '\\' => match chars.next() {
                    Some(e @ ('*' | '\\')) => {
                        push(&mut segments, e);
                        previous_was_star = false;
                    }
                    _ => return Err("`\\` must be followed by `*` or `\\`".into()),
                },
                other => {
                    push(&mut segments, other);
                    previous_was_star = false;
                }
            }
            first = false;
        }
        if leading_star && segments.len() > 1 && segments[0].is_empty() {
            segments.remove(0);
        }
        if trailing_star && segments.last().is_some_and(String::is_empty) {
            segments.pop();
        }
        Ok(Wildcard { segments, leading_star, trailing_star })
    }

    /// The literal text every match starts with, when the wildcard starts with one.
    pub fn literal_prefix(&self) -> Option<&str> {
        (!self.leading_star).then(|| self.segments.first().map(String::as_str)).flatten().filter(|s| !s.is_empty())
    }

    /// The longest literal run every match contains after its start (none when the wildcard is
    /// one literal run, or its inner runs are shorter than three characters): distinctive where
    /// many wildcards share their literal start, as ARNs do.
    pub fn inner_literal(&self) -> Option<&str> {
        let skip = usize::from(!self.leading_star);
        self.segments.iter().skip(skip).map(String::as_str).filter(|s| s.len() >= 3).max_by_key(|s| s.len())
    }

    /// Whether a text matches the wildcard.
    pub fn matches(&self, text: &str) -> bool {
        let mut rest = text;
        let n = self.segments.len();
        if n == 0 {
            return self.leading_star || text.is_empty();
        }
        for (i, segment) in self.segments.iter().enumerate() {
            let is_first = i == 0;
            let is_last = i == n - 1;
            if is_first && !self.leading_star {
                if is_last && !self.trailing_star {
                    return rest == segment;
                }
                match rest.strip_prefix(segment.as_str()) {
                    Some(r) => rest = r,
                    None => return false,
                }
            } else if is_last && !self.trailing_star {
                return rest.ends_with(segment.as_str());
            } else {
                match rest.find(segment.as_str()) {
                    Some(at) => rest = &rest[at + segment.len()..],
                    None => return false,
                }
            }
        }
        true
    }
}

fn push(segments: &mut [String], c: char) {
    if let Some(last) = segments.last_mut() {
        last.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::Wildcard;

    fn m(p: &str, t: &str) -> bool {
        Wildcard::parse(p).unwrap().matches(t)
    }

    #[test]
    fn stars_match_runs() {
        assert!(m("arn:aws:ec2:*:instance/*", "arn:aws:ec2:us-east-1:instance/i-1"));
        assert!(!m("arn:aws:ec2:*:instance/*", "arn:aws:s3:::bucket"));
        assert!(m("*.png", "a.png"));
        assert!(!m("*.png", "a.png.txt"));
        assert!(m("a*", "a"));
        assert!(m("*", ""));
        assert!(m("abc", "abc"));
        assert!(!m("abc", "abcd"));
        assert!(m("a*b*c", "aXbYc"));
        assert!(!m("a*b*c", "aXcYb"));
        assert!(!m("ab*ba", "aba"));
        assert!(m("ab*ba", "abba"));
    }

    #[test]
    fn escapes_and_errors() {
        assert!(m(r"a\*b", "a*b"));
        assert!(!m(r"a\*b", "axb"));
        assert!(m(r"a\\b", r"a\b"));
        assert!(Wildcard::parse("a**b").is_err());
        assert!(Wildcard::parse(r"a\x").is_err());
    }
}
