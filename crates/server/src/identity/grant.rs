//! Which groups a connection may join: exact names, or prefixes ending in `*`.

/// The groups an identity may join and post into, as the connect hook or a token's `groups`
/// claim lists them: `"chat_1"` allows exactly that group, `"team_*"` every group whose name
/// starts with `team_`, and `"*"` every group. An empty grant allows none.
///
/// ```
/// use channels_server::identity::GroupGrant;
/// let grant = GroupGrant::new(["chat_1", "team_*"]);
/// assert!(grant.allows("chat_1"));
/// assert!(grant.allows("team_red"));
/// assert!(!grant.allows("chat_10"));
/// assert!(!GroupGrant::default().allows("chat_1"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupGrant {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl GroupGrant {
    /// A grant of these patterns (a trailing `*` makes a prefix; any other `*` is literal).
    pub fn new<S: AsRef<str>>(patterns: impl IntoIterator<Item = S>) -> Self {
        let mut grant = Self::default();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            match pattern.strip_suffix('*') {
                Some(prefix) => grant.prefixes.push(prefix.to_owned()),
                None => grant.exact.push(pattern.to_owned()),
            }
        }
        grant
    }

    /// Whether the group named `group` is allowed.
    pub fn allows(&self, group: &str) -> bool {
        self.exact.iter().any(|g| g == group)
            || self.prefixes.iter().any(|p| group.starts_with(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_prefix_and_everything() {
        let grant = GroupGrant::new(["a", "b_*"]);
        assert!(grant.allows("a"));
        assert!(!grant.allows("ab"));
        assert!(grant.allows("b_"));
        assert!(grant.allows("b_1"));
        assert!(!grant.allows("b"));
        assert!(GroupGrant::new(["*"]).allows("anything"));
        assert!(
            !GroupGrant::new(["a*b"]).allows("axb"),
            "only a trailing * is a wildcard"
        );
        assert!(GroupGrant::new(["a*b"]).allows("a*b"));
    }
}
