//! The local registry: this process's channels, their bounded queues, and group membership.
//!
//! Every backend keeps its local state here and differs only in how messages travel between
//! processes: the in-memory layer delivers straight into the registry, and the Redis layers
//! deliver what arrives from Redis. The registry is the source of truth for which groups have
//! local members (a Redis backend subscribes to exactly those).
//!
//! Locking: one `std::sync::Mutex` for the maps and one per queue. No lock is held across an
//! `.await`, and no queue lock is taken while the map lock is held, so the two never nest.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::capacity::capacity_for;
use crate::config::{LayerConfig, LayerStats};
use crate::error::LayerError;
use crate::inbox::{Inbox, Owner, Push, Queue};
use crate::message::Message;
use crate::name::{ChannelName, GroupName};
use crate::sync::lock;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    delivered: AtomicU64,
    dropped_full: AtomicU64,
    dropped_no_receiver: AtomicU64,
    expired: AtomicU64,
    oversized: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What a single-channel delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Queued for the channel's inbox.
    Queued,
    /// No inbox in this process has that name; the message is gone (at-most-once).
    NoReceiver,
}

#[derive(Debug)]
pub(crate) struct Registry {
    state: Mutex<State>,
    config: LayerConfig,
    counters: Counters,
    /// Woken whenever the set of groups with local members, or of channels, changes.
    membership_changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    closed: bool,
    channels: HashMap<ChannelName, Slot>,
    /// group -> member -> time of its latest `group_add`, and the member's queue (so that a
    /// group delivery looks nothing else up).
    groups: HashMap<GroupName, HashMap<ChannelName, Member>>,
}

#[derive(Debug)]
struct Member {
    joined: Instant,
    queue: Arc<Queue>,
}

#[derive(Debug)]
struct Slot {
    queue: Arc<Queue>,
    groups: GroupSet,
}

/// The groups of one channel. A list while it is short: most channels are in one or two
/// groups, and a `HashSet` allocates room for several (about 80 bytes for one) for as long as
/// the connection lives; past [`GroupSet::SPILL`] groups, a set, so that joining many stays
/// cheap.
#[derive(Debug)]
#[expect(
    clippy::box_collection,
    reason = "boxed, the set would make every channel's slot twice the size of the list"
)]
enum GroupSet {
    Few(Vec<GroupName>),
    Many(Box<HashSet<GroupName>>),
}

impl GroupSet {
    /// The most groups kept as a list.
    const SPILL: usize = 8;

    fn insert(&mut self, group: &GroupName) {
        match self {
            Self::Few(list) if list.contains(group) => {}
            Self::Few(list) if list.len() < Self::SPILL => {
                // One slot at a time: the list stays exactly as long as it is.
                list.reserve_exact(1);
                list.push(group.clone());
            }
            Self::Few(list) => {
                let mut set: HashSet<GroupName> = list.drain(..).collect();
                set.insert(group.clone());
                *self = Self::Many(Box::new(set));
            }
            Self::Many(set) => {
                set.insert(group.clone());
            }
        }
    }

    fn remove(&mut self, group: &GroupName) {
        match self {
            Self::Few(list) => {
                if let Some(at) = list.iter().position(|g| g == group) {
                    list.swap_remove(at);
                }
            }
            Self::Many(set) => {
                set.remove(group);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &GroupName> {
        let (few, many) = match self {
            Self::Few(list) => (Some(list.iter()), None),
            Self::Many(set) => (None, Some(set.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

impl Registry {
    pub(crate) fn new(config: LayerConfig) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            config,
            counters: Counters::default(),
            membership_changed: Notify::new(),
        })
    }

    pub(crate) fn config(&self) -> &LayerConfig {
        &self.config
    }

    /// Refuses a message to send that is over the configured size limit, counting it. The
    /// caller of a `send` or `group_send` gets the error and reports it.
    pub(crate) fn check_message(&self, msg: &Message) -> Result<(), LayerError> {
        if self.config.max_message_size == 0 {
            return Ok(());
        }
        self.check_size(msg.encoded_len())
    }

    fn check_size(&self, size: usize) -> Result<(), LayerError> {
        self.config.check_size(size).inspect_err(|_| {
            Counters::add(&self.counters.oversized, 1);
        })
    }

    /// Whether a message of `size` bytes that arrived for `channel` (a group's or a channel's
    /// Redis channel) may be delivered; one over the limit is counted and logged (rate-limited)
    /// here, once for the whole process, before any member gets a copy.
    pub(crate) fn accept_size(&self, channel: &str, size: usize) -> bool {
        match self.check_size(size) {
            Ok(()) => true,
            Err(error) => {
                crate::log_limited!(warn, %channel, %error, "oversized layer message dropped");
                false
            }
        }
    }

    /// Creates the inbox of `name`.
    pub(crate) fn open(self: &Arc<Self>, name: ChannelName) -> Result<Inbox, LayerError> {
        let capacity = capacity_for(
            &self.config.channel_capacity,
            self.config.capacity,
            name.as_str(),
        );
        let queue = Arc::new(Queue::new(capacity));
        let mut state = lock(&self.state);
        if state.closed {
            return Err(LayerError::Closed);
        }
        match state.channels.entry(name.clone()) {
            Entry::Occupied(_) => return Err(LayerError::ChannelInUse(name)),
            Entry::Vacant(v) => {
                v.insert(Slot {
                    queue: Arc::clone(&queue),
                    groups: GroupSet::Few(Vec::new()),
                });
            }
        }
        drop(state);
        Ok(Inbox::new(name, queue, Arc::clone(self) as Arc<dyn Owner>))
    }

    /// Creates the inbox of a fresh process-local channel: `{prefix}{random}` with a new random
    /// part (`random()`) until one is free. Collisions are as good as impossible, but retrying
    /// costs nothing.
    pub(crate) fn open_new(
        self: &Arc<Self>,
        prefix: &str,
        random: impl Fn() -> String,
    ) -> Result<Inbox, LayerError> {
        loop {
            match self.open(ChannelName::new(&format!("{prefix}{}", random()))?) {
                Err(LayerError::ChannelInUse(_)) => continue,
                other => return other,
            }
        }
    }

    /// Queues `msg` for the local channel `name`.
    pub(crate) fn send(&self, name: &ChannelName, msg: Message) -> Result<Delivery, LayerError> {
        self.send_until(name, msg, Instant::now() + self.config.expiry)
    }

    /// Queues `msg` for the local channel `name`, to expire at `deadline` (a backend that knows
    /// when the message was sent passes what is left of its expiry).
    pub(crate) fn send_until(
        &self,
        name: &ChannelName,
        msg: Message,
        deadline: Instant,
    ) -> Result<Delivery, LayerError> {
        let queue = {
            let state = lock(&self.state);
            if state.closed {
                return Err(LayerError::Closed);
            }
            state.channels.get(name).map(|s| Arc::clone(&s.queue))
        };
        let Some(queue) = queue else {
            Counters::add(&self.counters.dropped_no_receiver, 1);
            tracing::debug!(channel = %name, "send to a channel with no local inbox dropped");
            return Ok(Delivery::NoReceiver);
        };
        match self.push(&queue, msg, deadline) {
            Push::Queued => {
                Counters::add(&self.counters.delivered, 1);
                Ok(Delivery::Queued)
            }
            Push::Full => {
                Counters::add(&self.counters.dropped_full, 1);
                Err(LayerError::ChannelFull(name.clone()))
            }
            Push::Closed => {
                Counters::add(&self.counters.dropped_no_receiver, 1);
                Ok(Delivery::NoReceiver)
            }
        }
    }

    /// Adds the local channel `channel` to `group`; returns true if the group had no local
    /// member before.
    pub(crate) fn group_add(
        &self,
        group: &GroupName,
        channel: &ChannelName,
    ) -> Result<bool, LayerError> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err(LayerError::Closed);
        }
        let Some(slot) = state.channels.get_mut(channel) else {
            return Err(LayerError::NotLocal(channel.clone()));
        };
        slot.groups.insert(group);
        let queue = Arc::clone(&slot.queue);
        let members = state.groups.entry(group.clone()).or_default();
        let first = members.is_empty();
        members.insert(
            channel.clone(),
            Member {
                joined: Instant::now(),
                queue,
            },
        );
        drop(state);
        if first {
            self.membership_changed.notify_one();
        }
        Ok(first)
    }

    /// Removes `channel` from `group`; returns true if that left the group with no local member.
    /// Discarding a channel that is not a member does nothing, as in Channels.
    pub(crate) fn group_discard(&self, group: &GroupName, channel: &ChannelName) -> bool {
        let mut state = lock(&self.state);
        if let Some(slot) = state.channels.get_mut(channel) {
            slot.groups.remove(group);
        }
        let emptied = remove_member(&mut state.groups, group, channel);
        drop(state);
        if emptied {
            self.membership_changed.notify_one();
        }
        emptied
    }

    /// Delivers `msg` to every local member of `group`. Full queues drop the message (Channels:
    /// group sends never raise `ChannelFull`); drops are counted and logged.
    pub(crate) fn deliver_group(&self, group: &GroupName, msg: &Message) -> GroupDelivery {
        let now = Instant::now();
        let (queues, expired_members) = {
            let mut state = lock(&self.state);
            let Some(members) = state.groups.get_mut(group) else {
                return GroupDelivery::default();
            };
            let group_expiry = self.config.group_expiry;
            let mut expired = Vec::new();
            let mut queues = Vec::with_capacity(members.len());
            members.retain(|ch, member| {
                let keep = now.saturating_duration_since(member.joined) < group_expiry;
                if keep {
                    queues.push(Arc::clone(&member.queue));
                } else {
                    expired.push(ch.clone());
                }
                keep
            });
            if members.is_empty() {
                state.groups.remove(group);
            }
            for ch in &expired {
                if let Some(slot) = state.channels.get_mut(ch) {
                    slot.groups.remove(group);
                }
            }
            (queues, expired.len())
        };
        if expired_members > 0 {
            tracing::debug!(%group, count = expired_members, "group memberships expired");
            self.membership_changed.notify_one();
        }
        let deadline = now + self.config.expiry;
        let mut result = GroupDelivery {
            members: queues.len(),
            ..GroupDelivery::default()
        };
        for queue in &queues {
            match self.push(queue, msg.clone(), deadline) {
                Push::Queued => result.delivered += 1,
                Push::Full | Push::Closed => result.dropped += 1,
            }
        }
        Counters::add(&self.counters.delivered, result.delivered as u64);
        if result.dropped > 0 {
            Counters::add(&self.counters.dropped_full, result.dropped as u64);
            // Channels logs the same fact at INFO: "%s of %s channels over capacity in group %s".
            crate::log_limited!(
                warn,
                %group,
                dropped = result.dropped,
                members = result.members,
                "channels over capacity in group: message dropped for them"
            );
        }
        result
    }

    /// Whether `close()` was called.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Whether `name` has an inbox in this process.
    pub(crate) fn has_channel(&self, name: &ChannelName) -> bool {
        lock(&self.state).channels.contains_key(name)
    }

    /// The groups with a local member, and the local channels, now.
    pub(crate) fn snapshot(&self) -> (Vec<GroupName>, Vec<ChannelName>) {
        let state = lock(&self.state);
        (
            state.groups.keys().cloned().collect(),
            state.channels.keys().cloned().collect(),
        )
    }

    /// Every (group, local member) pair now.
    pub(crate) fn memberships(&self) -> HashSet<(GroupName, ChannelName)> {
        let state = lock(&self.state);
        state
            .groups
            .iter()
            .flat_map(|(g, members)| members.keys().map(move |c| (g.clone(), c.clone())))
            .collect()
    }

    /// Whether the local channel `channel` is a member of `group` now.
    pub(crate) fn is_member(&self, group: &GroupName, channel: &ChannelName) -> bool {
        lock(&self.state)
            .groups
            .get(group)
            .is_some_and(|members| members.contains_key(channel))
    }

    /// Resolves after group membership or the set of channels changed (one waiter).
    pub(crate) async fn changed(&self) {
        self.membership_changed.notified().await;
    }

    /// Drops every channel and group; open inboxes see the end of their stream.
    pub(crate) fn flush(&self) {
        let channels = {
            let mut state = lock(&self.state);
            state.groups.clear();
            std::mem::take(&mut state.channels)
        };
        for slot in channels.values() {
            slot.queue.close();
        }
        self.membership_changed.notify_one();
    }

    /// Refuses all further calls, then flushes.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.flush();
    }

    pub(crate) fn stats(&self) -> LayerStats {
        let state = lock(&self.state);
        let c = &self.counters;
        LayerStats {
            channels: state.channels.len(),
            groups: state.groups.len(),
            delivered: c.delivered.load(Ordering::Relaxed),
            dropped_full: c.dropped_full.load(Ordering::Relaxed),
            dropped_no_receiver: c.dropped_no_receiver.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            oversized: c.oversized.load(Ordering::Relaxed),
            ..LayerStats::default()
        }
    }

    /// Queues `msg` on `queue`, counting what expired there meanwhile.
    fn push(&self, queue: &Queue, msg: Message, deadline: Instant) -> Push {
        let (push, expired) = queue.push(msg, deadline);
        if expired > 0 {
            Counters::add(&self.counters.expired, expired);
        }
        push
    }
}

impl Owner for Registry {
    fn expired(&self, n: u64) {
        Counters::add(&self.counters.expired, n);
    }

    /// Removes `name` and its memberships, if `queue` is still the one registered under it.
    fn release(&self, name: &ChannelName, queue: &Arc<Queue>) {
        let mut state = lock(&self.state);
        let owned = state
            .channels
            .get(name)
            .is_some_and(|s| Arc::ptr_eq(&s.queue, queue));
        if !owned {
            return;
        }
        let Some(slot) = state.channels.remove(name) else {
            return;
        };
        for group in slot.groups.iter() {
            remove_member(&mut state.groups, group, name);
        }
        drop(state);
        // A Redis backend unsubscribes from emptied groups and from the channel's own name.
        self.membership_changed.notify_one();
    }
}

fn remove_member(
    groups: &mut HashMap<GroupName, HashMap<ChannelName, Member>>,
    group: &GroupName,
    channel: &ChannelName,
) -> bool {
    let Some(members) = groups.get_mut(group) else {
        return false;
    };
    if members.remove(channel).is_none() {
        return false;
    }
    if members.is_empty() {
        groups.remove(group);
        return true;
    }
    false
}

/// What a group delivery did in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GroupDelivery {
    pub(crate) members: usize,
    pub(crate) delivered: usize,
    pub(crate) dropped: usize,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn group(i: u8) -> GroupName {
        GroupName::new(&format!("g{i}")).expect("a valid group name")
    }

    fn contents(set: &GroupSet) -> HashSet<GroupName> {
        set.iter().cloned().collect()
    }

    #[test]
    fn a_short_list_until_it_spills_into_a_set() {
        let mut set = GroupSet::Few(Vec::new());
        set.insert(&group(1));
        set.insert(&group(1));
        match &set {
            GroupSet::Few(list) => assert_eq!((list.len(), list.capacity()), (1, 1)),
            GroupSet::Many(_) => panic!("one group is a list"),
        }
        for i in 0..=GroupSet::SPILL as u8 {
            set.insert(&group(i));
        }
        assert!(matches!(set, GroupSet::Many(_)));
        assert_eq!(contents(&set).len(), GroupSet::SPILL + 1);
        set.remove(&group(0));
        assert!(!contents(&set).contains(&group(0)));
    }

    proptest! {
        /// Any sequence of joins and leaves leaves the same groups as a `HashSet` would.
        #[test]
        fn same_groups_as_a_set(ops in proptest::collection::vec((any::<bool>(), 0u8..20), 0..80)) {
            let mut set = GroupSet::Few(Vec::new());
            let mut model = HashSet::new();
            for (join, i) in ops {
                if join {
                    set.insert(&group(i));
                    model.insert(group(i));
                } else {
                    set.remove(&group(i));
                    model.remove(&group(i));
                }
                prop_assert_eq!(contents(&set), model.clone());
                prop_assert_eq!(set.iter().count(), model.len());
            }
        }
    }
}
