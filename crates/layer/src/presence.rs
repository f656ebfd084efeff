//! Presence: who is in a group, across every process sharing the layer.
//!
//! Each member is a [`PresenceMember`] kept under its channel name with an expiry. Its process
//! refreshes it while the connection lives and removes it when the connection leaves; if the
//! process dies, the entry expires and the next [`presence`](crate::ChannelLayer::presence)
//! read removes it and reports it as expired, so that exactly one reader can announce the
//! departure.
//!
//! In Redis (both layers), for group `g` with pub/sub channel `asgi__group__g`, on that
//! channel's shard (the group's shard for the core layer):
//!
//! * `asgi:presence:{asgi__group__g}`: a hash, channel name → the member as JSON
//!   (`{"user", "name", "channel", "replica", "joined_at"}`, `joined_at` in Unix seconds);
//! * `asgi:presence-exp:{asgi__group__g}`: a sorted set, channel name → expiry (whole Unix
//!   seconds).
//!
//! A reader such as Django takes the hash's values whose expiry in the sorted set is in the
//! future.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::name::{ChannelName, GroupName};
use crate::sync::lock;

/// One connection in a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceMember {
    /// The user (from the connection's identity; the channel name for anonymous connections).
    pub user: String,
    /// The display name (the user when there is none).
    pub name: String,
    /// The connection's channel name.
    pub channel: String,
    /// The replica that holds the connection.
    pub replica: String,
    /// When it joined, in Unix seconds.
    pub joined_at: f64,
}

/// A presence read: the members now, and those whose entries had expired (their process
/// stopped refreshing them) and were removed by this read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Presence {
    /// The members, in no particular order.
    pub members: Vec<PresenceMember>,
    /// Entries this read found expired and removed.
    pub expired: Vec<PresenceMember>,
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A group's members by channel name, each with its expiry in Unix seconds.
type Members = HashMap<String, (PresenceMember, f64)>;

/// The in-process presence of the in-memory layer.
#[derive(Debug, Default)]
pub(crate) struct MemoryPresence {
    groups: Mutex<HashMap<GroupName, Members>>,
}

impl MemoryPresence {
    pub(crate) fn add(&self, group: &GroupName, member: &PresenceMember, ttl: Duration) {
        let expires = unix_now() + ttl.as_secs_f64();
        lock(&self.groups)
            .entry(group.clone())
            .or_default()
            .insert(member.channel.clone(), (member.clone(), expires));
    }

    pub(crate) fn remove(&self, group: &GroupName, channel: &ChannelName) -> bool {
        let mut groups = lock(&self.groups);
        let Some(members) = groups.get_mut(group) else {
            return false;
        };
        let removed = members.remove(channel.as_str()).is_some();
        if members.is_empty() {
            groups.remove(group);
        }
        removed
    }

    pub(crate) fn read(&self, group: &GroupName) -> Presence {
        let now = unix_now();
        let mut groups = lock(&self.groups);
        let Some(members) = groups.get_mut(group) else {
            return Presence::default();
        };
        let mut presence = Presence::default();
        members.retain(|_, (member, expires)| {
            if *expires > now {
                presence.members.push(member.clone());
                true
            } else {
                presence.expired.push(member.clone());
                false
            }
        });
        if members.is_empty() {
            groups.remove(group);
        }
        presence
    }

    pub(crate) fn clear(&self) {
        lock(&self.groups).clear();
    }
}
