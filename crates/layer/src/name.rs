//! Validated channel and group names, with the rules of `channels.layers` 4.3.
//!
//! Names are parsed once into [`ChannelName`] and [`GroupName`]; every layer method takes the
//! parsed type and never validates again.
//!
//! The rules mirror `BaseChannelLayer` (`channels/layers.py`):
//!
//! * a name is shorter than 100 characters (`len(name) < 100`, so 99 is the longest valid name);
//! * a group matches `^[a-zA-Z\d\-_.]+$`;
//! * a channel matches `^[a-zA-Z\d\-_.]+(\![\d\w\-_.]*)?$`: at most one `!`, never first, and the
//!   local part after it may be empty (`"a!"` is valid).
//!
//! We are **stricter than Python** in two documented ways, both in the direction of rejecting:
//! Python's `\d` and `\w` match any Unicode digit or word character (so `"chan٣"` and `"a!é"`
//! pass there), and Python's `$` also matches before a trailing `"\n"` (so `"chan\n"` passes
//! there). We accept only the ASCII characters the error message promises, and no newline. A
//! name we accept is therefore always accepted by Python, which is what matters when we send.

use std::fmt;
use std::sync::Arc;

/// A random id of 12 lowercase ASCII letters and digits (36^12, about 4.7e18 values): for the
/// local part of process-local channel names and for replica ids.
///
/// ```
/// let id = channels_layer::name::random_id();
/// assert_eq!(id.len(), 12);
/// assert!(id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
/// ```
pub fn random_id() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(12)
        .map(|b| char::from(b).to_ascii_lowercase())
        .collect()
}

/// The longest valid name is one character shorter than this (Channels' `MAX_NAME_LENGTH`).
pub const MAX_NAME_LENGTH: usize = 100;

/// What kind of name failed validation; it picks the word at the start of the error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A channel name.
    Channel,
    /// A group name.
    Group,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Channel => "Channel",
            NameKind::Group => "Group",
        })
    }
}

/// A name that Channels would reject. The `Display` texts are Channels' own `TypeError` texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty, too long, or has a character outside the allowed set.
    #[error(
        "{kind} name must be a valid unicode string with length < 100 containing only ASCII \
         alphanumerics, hyphens, underscores, or periods."
    )]
    Invalid {
        /// Channel or group.
        kind: NameKind,
    },
    /// A process-local name given to a receive call must end at the `!`.
    #[error("Specific channel names in receive() must end at the !")]
    ReceiveNotAtBang,
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
}

fn valid_group(s: &str) -> bool {
    !s.is_empty() && s.len() < MAX_NAME_LENGTH && s.bytes().all(is_name_char)
}

fn valid_channel(s: &str) -> bool {
    if s.is_empty() || s.len() >= MAX_NAME_LENGTH {
        return false;
    }
    match s.split_once('!') {
        None => s.bytes().all(is_name_char),
        // Python's local part is `[\d\w\-_.]*`: the same ASCII set, and it may be empty.
        Some((remote, local)) => {
            !remote.is_empty()
                && remote.bytes().all(is_name_char)
                && local.bytes().all(is_name_char)
        }
    }
}

/// A valid channel name such as `chat-worker` or `specific.r1!a8f3`.
///
/// A name with a `!` is *process-local*: the part up to and including the `!` names the process
/// (or replica) that owns the channel.
///
/// ```
/// use channels_layer::ChannelName;
/// let name = ChannelName::new("specific.r1!abc")?;
/// assert_eq!(name.non_local_name(), "specific.r1!");
/// assert!(ChannelName::new("a!b!c").is_err());
/// # Ok::<(), channels_layer::NameError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `name` with Channels' channel rule.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if valid_channel(name) {
            Ok(Self(name.into()))
        } else {
            Err(NameError::Invalid {
                kind: NameKind::Channel,
            })
        }
    }

    /// Validates a name given to a receive call: a process-local name must end at its `!`
    /// (Channels' `require_valid_channel_name(name, receive=True)`).
    ///
    /// ```
    /// use channels_layer::{ChannelName, NameError};
    /// assert!(ChannelName::new_receive("specific.abc!").is_ok());
    /// assert_eq!(ChannelName::new_receive("specific.abc!x"), Err(NameError::ReceiveNotAtBang));
    /// ```
    pub fn new_receive(name: &str) -> Result<Self, NameError> {
        let name = Self::new(name)?;
        if name.is_process_local() && !name.0.ends_with('!') {
            return Err(NameError::ReceiveNotAtBang);
        }
        Ok(name)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the name has a `!`, that is, whether it belongs to one process.
    pub fn is_process_local(&self) -> bool {
        self.0.contains('!')
    }

    /// The text up to and including the `!`, or the whole name (Channels' `non_local_name`).
    pub fn non_local_name(&self) -> &str {
        match self.0.find('!') {
            Some(i) => &self.0[..=i],
            None => &self.0,
        }
    }
}

/// A valid group name such as `room-42`.
///
/// ```
/// use channels_layer::GroupName;
/// assert!(GroupName::new("room-42").is_ok());
/// assert!(GroupName::new("群").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(Arc<str>);

impl GroupName {
    /// Validates `name` with Channels' group rule.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if valid_group(name) {
            Ok(Self(name.into()))
        } else {
            Err(NameError::Invalid {
                kind: NameKind::Group,
            })
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! name_traits {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        /// Hashes and compares as its text (derived from `Arc<str>`), so maps keyed by names
        /// can be looked up with a `&str`.
        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl std::str::FromStr for $t {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
    };
}
name_traits!(ChannelName);
name_traits!(GroupName);

#[cfg(test)]
mod tests {
    use super::*;

    const CHANNEL_ERROR: &str = "Channel name must be a valid unicode string with length < 100 \
                                 containing only ASCII alphanumerics, hyphens, underscores, or \
                                 periods.";
    const GROUP_ERROR: &str = "Group name must be a valid unicode string with length < 100 \
                               containing only ASCII alphanumerics, hyphens, underscores, or \
                               periods.";

    #[test]
    fn error_texts_are_channels_own() {
        assert_eq!(ChannelName::new("").unwrap_err().to_string(), CHANNEL_ERROR);
        assert_eq!(GroupName::new("").unwrap_err().to_string(), GROUP_ERROR);
    }

    #[test]
    fn ninety_nine_characters_is_the_longest_valid_name() {
        assert!(GroupName::new(&"a".repeat(99)).is_ok());
        assert!(ChannelName::new(&"a".repeat(99)).is_ok());
        assert!(GroupName::new(&"a".repeat(100)).is_err());
        assert!(ChannelName::new(&"a".repeat(100)).is_err());
        // channels tests/test_layers.py: "a" * 101 gets the exact message.
        assert_eq!(
            ChannelName::new(&"a".repeat(101)).unwrap_err().to_string(),
            CHANNEL_ERROR
        );
        // "chat" * 100 is rejected.
        assert!(GroupName::new(&"chat".repeat(100)).is_err());
    }

    #[test]
    fn empty_names_are_rejected() {
        assert!(ChannelName::new("").is_err());
        assert!(GroupName::new("").is_err());
    }

    #[test]
    fn allowed_characters_are_ascii_alphanumerics_hyphen_underscore_period() {
        for ok in ["abc", "A-b_c.9", "...", "-", "_", "0"] {
            assert!(GroupName::new(ok).is_ok(), "{ok}");
            assert!(ChannelName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a b", "a:b", "a*", "a?", "a[b]", "{a}", "a/b", "a\tb", "a\u{0}b",
        ] {
            assert!(GroupName::new(bad).is_err(), "{bad:?}");
            assert!(ChannelName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shrug_is_rejected() {
        // channels tests/test_layers.py
        assert!(ChannelName::new("¯\\_(ツ)_/¯").is_err());
        assert!(GroupName::new("¯\\_(ツ)_/¯").is_err());
    }

    #[test]
    fn unicode_digits_and_word_characters_are_rejected_unlike_python() {
        // Python's \d and \w accept these; we document that we do not.
        assert!(ChannelName::new("chan٣").is_err());
        assert!(ChannelName::new("a!é").is_err());
        assert!(GroupName::new("组").is_err());
    }

    #[test]
    fn trailing_newline_is_rejected_unlike_python() {
        assert!(ChannelName::new("chan\n").is_err());
        assert!(GroupName::new("chan\n").is_err());
    }

    #[test]
    fn channel_bang_rules() {
        assert!(ChannelName::new("a!").is_ok(), "empty local part is valid");
        assert!(ChannelName::new("specific.abc!def_0-.").is_ok());
        assert!(ChannelName::new("!abc").is_err(), "cannot start with !");
        assert!(ChannelName::new("a!b!c").is_err(), "at most one !");
        assert!(
            ChannelName::new("=+135!").is_err(),
            "channels_redis reject_bad_channel"
        );
    }

    #[test]
    fn groups_cannot_contain_bang() {
        assert!(GroupName::new("a!b").is_err());
        assert!(GroupName::new("a!").is_err());
    }

    #[test]
    fn non_local_name_ends_at_the_first_bang() {
        let n = ChannelName::new("specific.x!y").unwrap();
        assert_eq!(n.non_local_name(), "specific.x!");
        assert!(n.is_process_local());
        let n = ChannelName::new("worker").unwrap();
        assert_eq!(n.non_local_name(), "worker");
        assert!(!n.is_process_local());
    }

    #[test]
    fn receive_names_must_end_at_the_bang() {
        assert!(ChannelName::new_receive("specific.x!").is_ok());
        assert!(ChannelName::new_receive("worker").is_ok());
        let err = ChannelName::new_receive("specific.x!y").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Specific channel names in receive() must end at the !"
        );
    }
}
