//! Per-channel capacities by glob pattern, as `channel_capacity` in Channels.
//!
//! Patterns use `fnmatch` syntax (`*`, `?`, `[seq]`, `[!seq]`) and must match the whole channel
//! name; the first matching pattern wins, otherwise the default capacity applies. Unlike
//! upstream's `InMemoryChannelLayer`, which never compiles its `channel_capacity` and then fails
//! on every `send`, patterns here are compiled once when the configuration is built.

use regex::Regex;

/// One `channel_capacity` entry: a glob and the capacity of the channels it matches.
///
/// ```
/// use channels_layer::ChannelCapacity;
/// let rule = ChannelCapacity::new("http.response*", 10)?;
/// assert!(rule.matches("http.response!abc"));
/// assert!(!rule.matches("websocket.send"));
/// # Ok::<(), channels_layer::InvalidPattern>(())
/// ```
#[derive(Debug, Clone)]
pub struct ChannelCapacity {
    glob: String,
    regex: Regex,
    capacity: usize,
}

/// A glob that cannot be compiled (for example an unclosed `[` with invalid contents).
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid channel capacity pattern {glob:?}: {reason}")]
pub struct InvalidPattern {
    glob: String,
    reason: String,
}

impl ChannelCapacity {
    /// Compiles `glob`.
    pub fn new(glob: &str, capacity: usize) -> Result<Self, InvalidPattern> {
        let regex = Regex::new(&translate(glob)).map_err(|e| InvalidPattern {
            glob: glob.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            glob: glob.to_owned(),
            regex,
            capacity,
        })
    }

    /// A regular expression rule, as a compiled `re.Pattern` key of channels_redis'
    /// `channel_capacity`: it matches a channel name from its start (Python's
    /// `pattern.match(name)`), not necessarily to its end.
    ///
    /// ```
    /// use channels_layer::ChannelCapacity;
    /// let rule = ChannelCapacity::regex(r"asgi__group__team_\d+", 500)?;
    /// assert!(rule.matches("asgi__group__team_42"));
    /// assert!(!rule.matches("x_asgi__group__team_42"));
    /// # Ok::<(), channels_layer::InvalidPattern>(())
    /// ```
    pub fn regex(pattern: &str, capacity: usize) -> Result<Self, InvalidPattern> {
        let regex = Regex::new(&format!("^(?:{pattern})")).map_err(|e| InvalidPattern {
            glob: pattern.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            glob: format!("re:{pattern}"),
            regex,
            capacity,
        })
    }

    /// Parses a command-line rule `PATTERN=N`: a glob, or `re:REGEX` for a regular expression.
    ///
    /// ```
    /// use channels_layer::ChannelCapacity;
    /// let rule = ChannelCapacity::parse("worker-*=1000")?;
    /// assert_eq!((rule.glob(), rule.capacity()), ("worker-*", 1000));
    /// assert!(ChannelCapacity::parse("re:^http\\.=5")?.matches("http.response"));
    /// assert!(ChannelCapacity::parse("no-capacity").is_err());
    /// # Ok::<(), channels_layer::InvalidPattern>(())
    /// ```
    pub fn parse(rule: &str) -> Result<Self, InvalidPattern> {
        let invalid = |reason: &str| InvalidPattern {
            glob: rule.to_owned(),
            reason: reason.to_owned(),
        };
        let (pattern, capacity) = rule.rsplit_once('=').ok_or_else(|| {
            invalid("write PATTERN=N, for example worker-*=1000 or re:^http\\.=50")
        })?;
        let capacity = capacity
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                invalid("the capacity after '=' must be a whole number of at least 1")
            })?;
        match pattern.strip_prefix("re:") {
            Some(regex) => Self::regex(regex, capacity),
            None => Self::new(pattern, capacity),
        }
    }

    /// Whether the rule matches `channel` (a glob: all of it; a regex: from its start).
    pub fn matches(&self, channel: &str) -> bool {
        self.regex.is_match(channel)
    }

    /// The pattern as given (`re:` before a regular expression).
    pub fn glob(&self) -> &str {
        &self.glob
    }

    /// The capacity of matching channels.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// The capacity of `channel`: the first matching rule's, else `default`.
pub(crate) fn capacity_for(rules: &[ChannelCapacity], default: usize, channel: &str) -> usize {
    rules
        .iter()
        .find(|r| r.matches(channel))
        .map_or(default, ChannelCapacity::capacity)
}

/// Python's `fnmatch.translate`, anchored at both ends.
fn translate(glob: &str) -> String {
    let chars: Vec<char> = glob.chars().collect();
    let mut out = String::from("^(?s:");
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => {
                // Consecutive stars mean the same as one.
                while chars.get(i) == Some(&'*') {
                    i += 1;
                }
                out.push_str(".*");
            }
            '?' => out.push('.'),
            '[' => match class_end(&chars, i) {
                None => out.push_str("\\["),
                Some(end) => {
                    let mut body: String = chars[i..end].iter().collect();
                    i = end + 1;
                    let negate = body.starts_with('!');
                    if negate {
                        body.remove(0);
                    }
                    out.push('[');
                    if negate {
                        out.push('^');
                    }
                    for ch in body.chars() {
                        // Inside a class only these are special to the regex crate.
                        if matches!(ch, '\\' | '[' | ']' | '^' | '&' | '~') {
                            out.push('\\');
                        }
                        out.push(ch);
                    }
                    out.push(']');
                }
            },
            other => out.push_str(&regex::escape(&other.to_string())),
        }
    }
    out.push_str(")$");
    out
}

/// The index of the `]` closing a class that starts at `start` (just after the `[`), where a
/// leading `!` and a `]` right after it (or at the start) belong to the class, as in fnmatch.
fn class_end(chars: &[char], start: usize) -> Option<usize> {
    let mut j = start;
    if chars.get(j) == Some(&'!') {
        j += 1;
    }
    if chars.get(j) == Some(&']') {
        j += 1;
    }
    while j < chars.len() && chars[j] != ']' {
        j += 1;
    }
    (j < chars.len()).then_some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(glob: &str, name: &str) -> bool {
        ChannelCapacity::new(glob, 1).unwrap().matches(name)
    }

    #[test]
    fn globs_match_whole_names_like_fnmatch() {
        assert!(m("one", "one"));
        assert!(!m("one", "one-two"), "anchored at the end");
        assert!(!m("one", "a-one"), "anchored at the start");
        assert!(m("http.*", "http.response!x"));
        assert!(!m("http.*", "httpXresponse"), "the dot is literal");
        assert!(m("a?c", "abc"));
        assert!(m("[ab]x", "bx"));
        assert!(!m("[!ab]x", "ax"));
        assert!(m("[!ab]x", "cx"));
        assert!(m("[", "["), "an unclosed bracket is literal");
        assert!(m("a]b", "a]b"));
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = vec![
            ChannelCapacity::new("one", 1).unwrap(),
            ChannelCapacity::new("o*", 5).unwrap(),
        ];
        assert_eq!(capacity_for(&rules, 100, "one"), 1);
        assert_eq!(capacity_for(&rules, 100, "other"), 5);
        assert_eq!(capacity_for(&rules, 100, "two"), 100);
    }
}
