//! The Redis channels of the pub/sub layer: a group's, and this replica's own.

use crate::error::LayerError;
use crate::name::{ChannelName, GroupName};

/// The Redis channel that carries `group` under `prefix`: `{prefix}__group__{group}`, as
/// channels_redis' pub/sub layer names it. (Public for the property tests and fuzz targets.)
///
/// ```
/// use channels_layer::GroupName;
/// use channels_layer::redis::group_channel;
/// assert_eq!(group_channel("asgi", &GroupName::new("g1")?), "asgi__group__g1");
/// # Ok::<(), channels_layer::NameError>(())
/// ```
pub fn group_channel(prefix: &str, group: &GroupName) -> String {
    format!("{}{group}", group_channel_prefix(prefix))
}

/// What every group's Redis channel starts with: `{prefix}__group__`.
pub(super) fn group_channel_prefix(prefix: &str) -> String {
    format!("{prefix}__group__")
}

/// The Redis channels of this replica.
#[derive(Debug)]
pub(super) struct Names {
    /// `{prefix}__group__`
    pub(super) group: String,
    /// `{prefix}__side__`: with history on, each group's positions travel on
    /// `{prefix}__side__{group}`, a channel only Rust replicas read (see
    /// [`crate::redis::history`]).
    pub(super) side: String,
    /// `{prefix}`, for the history keys.
    pub(super) prefix: String,
    /// `{prefix}specific.{replica}`, the non-`!` part of this replica's channel names.
    pub(super) specific: String,
    /// `{prefix}specific.{replica}!*`
    pub(super) pattern: String,
    /// `{prefix}specific.{replica}!~probe`: inside the pattern, never a local channel's name
    /// (`~` is not allowed in channel names). Anyone may publish to it; only this process's
    /// signed probes count.
    pub(super) probe: String,
}

impl Names {
    /// The names of replica `replica` under `prefix`; refused when they would not be valid
    /// channel names (or not safe inside a `PSUBSCRIBE` pattern: the channel-name rule
    /// guarantees both).
    pub(super) fn new(prefix: &str, replica: &str) -> Result<Self, LayerError> {
        let specific = format!("{prefix}specific.{replica}");
        ChannelName::new(&format!("{specific}!{}", "x".repeat(12))).map_err(|_| {
            LayerError::Config(format!(
                "prefix {prefix:?} and replica id {replica:?} must be ASCII letters, digits, \
                 '-', '_' or '.', and short enough for channel names under 100 characters"
            ))
        })?;
        Ok(Self {
            group: group_channel_prefix(prefix),
            side: format!("{prefix}__side__"),
            prefix: prefix.to_owned(),
            pattern: format!("{specific}!*"),
            probe: format!("{specific}!~probe"),
            specific,
        })
    }

    pub(super) fn group_channel(&self, group: &GroupName) -> String {
        format!("{}{group}", self.group)
    }

    /// The side channel of `group` (history on).
    pub(super) fn side_channel(&self, group: &GroupName) -> String {
        format!("{}{group}", self.side)
    }

    /// The history keys of `group`.
    pub(super) fn history_keys(&self, group: &GroupName) -> (String, String) {
        crate::redis::history::keys(&self.prefix, &self.group_channel(group))
    }

    pub(super) fn is_own(&self, channel: &ChannelName) -> bool {
        channel
            .as_str()
            .strip_prefix(&self.specific)
            .is_some_and(|rest| rest.starts_with('!'))
    }
}
