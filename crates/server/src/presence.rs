//! Presence and the replicas' control channel (`--presence`, `--api-bind`).
//!
//! Every replica that runs this joins the control group [`CONTROL_GROUP`] with a channel of its
//! own. What goes through it, as layer messages (so every backend carries them, and no Python
//! process ever joins the group):
//!
//! * `{"type": "channels.presence", "events": [[E, G, C, M], ...]}`: connections joined
//!   (`E` = `"join"`) or left (`"leave"`) group `G` (or their replica died and their entries
//!   expired); `C` is the connection's channel and `M` the member as JSON, as Redis keeps it
//!   (decoded only where someone wants the event). Each replica hands each event to its own
//!   connections in G that asked for presence events (`?presence=1`), as a
//!   `channels.presence.event` message that the runtime turns into a frame and never shows
//!   the consumer;
//! * `{"type": "channels.disconnect", "user": U}`: the server API's disconnect; each replica
//!   closes its connections of user U with [`Close::DISCONNECTED`](crate::consumer::Close).
//!
//! Presence entries live in the layer ([`channels_layer::presence`]) with a [`TTL`]; the replica
//! refreshes its own every [`REFRESH`], and on the same tick reads each group it has members in,
//! which removes the entries of a dead replica and announces their departure (once: the read is
//! atomic). A killed replica's members therefore vanish from every list within [`TTL`] and their
//! `leave` events follow within [`TTL`] + [`REFRESH`]; a drained one's leave at once.
//!
//! Joins and events are combined: while one Redis call (or one control message) is in flight,
//! the joins (events) that arrive wait and then go together in the next, at most [`BATCH`] at a
//! time. A lone join costs what it did; a burst of connections costs a few calls, not two per
//! connection.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use channels_layer::{
    ChannelLayer, ChannelName, GroupName, Inbox, LayerError, Map, Message, PresenceMember, Value,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// The group every replica's control channel joins.
pub const CONTROL_GROUP: &str = "channels.control";
/// How long a presence entry lives without a refresh.
pub const TTL: Duration = Duration::from_secs(20);
/// How often a replica refreshes its entries and sweeps expired ones.
pub const REFRESH: Duration = Duration::from_secs(5);
/// At most this many joins per Redis call, and events per control message.
pub const BATCH: usize = 256;
/// Events waiting for a control message beyond this are dropped (and logged): presence
/// events are at most once, like every message.
const MAX_PENDING_EVENTS: usize = 65_536;

/// The message type the runtime turns into a presence frame for the client.
pub(crate) const EVENT_TYPE: &str = "channels.presence.event";
/// The message type the runtime answers by closing the connection.
pub(crate) const DISCONNECT_TYPE: &str = "channels.disconnect";

/// One replica's presence and control state.
#[derive(Debug)]
pub(crate) struct Service {
    layer: Arc<dyn ChannelLayer>,
    replica: String,
    /// Whether presence is on (`--presence`); the control channel also runs for the API.
    pub(crate) presence: bool,
    index: Mutex<Index>,
    /// Stores and removals waiting for their Redis call, in the order they were asked for.
    ops: Combiner<(GroupName, Op)>,
    /// Events waiting for their control message.
    events: Combiner<Value>,
}

/// A change to a group's presence in Redis.
#[derive(Debug)]
enum Op {
    /// Store (or refresh) the member; announce its join once stored if `announce`.
    Add {
        member: PresenceMember,
        announce: bool,
    },
    /// Remove the member with this channel.
    Remove(ChannelName),
}

/// What waits for a combined call: the item and, if someone awaits it, where its result goes.
type Waiting<T> = (T, Option<oneshot::Sender<Result<(), LayerError>>>);

/// Items that go out together: the first to arrive while nothing is in flight starts a task
/// that sends what is pending, [`BATCH`] at a time, until nothing is.
#[derive(Debug)]
struct Combiner<T> {
    pending: Mutex<(Vec<Waiting<T>>, bool)>,
}

impl<T> Default for Combiner<T> {
    fn default() -> Self {
        Self {
            pending: Mutex::new((Vec::new(), false)),
        }
    }
}

impl<T> Combiner<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<Waiting<T>>, bool)> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `item`. Returns whether the caller must start the sending task (nothing is in
    /// flight), or `None` if `item` was refused (more than `max` pending).
    fn push(
        &self,
        item: T,
        done: Option<oneshot::Sender<Result<(), LayerError>>>,
        max: usize,
    ) -> Option<bool> {
        let mut pending = self.lock();
        if pending.0.len() >= max {
            return None;
        }
        pending.0.push((item, done));
        let start = !pending.1;
        pending.1 = true;
        Some(start)
    }

    /// Whether nothing is pending or in flight.
    fn idle(&self) -> bool {
        let pending = self.lock();
        pending.0.is_empty() && !pending.1
    }

    /// The next items to send, or `None` (and the sending task ends) when there are none.
    fn next(&self) -> Option<Vec<Waiting<T>>> {
        let mut pending = self.lock();
        if pending.0.is_empty() {
            pending.1 = false;
            return None;
        }
        let n = pending.0.len().min(BATCH);
        Some(pending.0.drain(..n).collect())
    }
}

/// Hands `result` to everyone who waits for it.
fn reply(
    waiting: Vec<Option<oneshot::Sender<Result<(), LayerError>>>>,
    result: &Result<(), LayerError>,
) {
    for done in waiting.into_iter().flatten() {
        let _ = done.send(result.clone());
    }
}

#[derive(Debug, Default)]
struct Index {
    /// This replica's presence members per group, and whether each wants events.
    groups: HashMap<GroupName, HashMap<ChannelName, (PresenceMember, bool)>>,
    /// This replica's connections per user.
    users: HashMap<String, HashSet<ChannelName>>,
}

fn control_group() -> GroupName {
    GroupName::new(CONTROL_GROUP).unwrap_or_else(|_| unreachable!("a valid group name"))
}

fn member_value(member: &PresenceMember) -> Value {
    Value::Map(Map::from_iter([
        ("user", Value::from(member.user.as_str())),
        ("name", Value::from(member.name.as_str())),
        ("channel", Value::from(member.channel.as_str())),
        ("replica", Value::from(member.replica.as_str())),
        ("joined_at", Value::Float(member.joined_at)),
    ]))
}

/// The JSON object of a member, as frames and the server API show it.
pub(crate) fn member_json(member: &PresenceMember) -> serde_json::Value {
    serde_json::json!({
        "user": member.user,
        "name": member.name,
        "channel": member.channel,
        "replica": member.replica,
        "joined_at": member.joined_at,
    })
}

impl Service {
    pub(crate) fn new(layer: Arc<dyn ChannelLayer>, replica: String, presence: bool) -> Self {
        Self {
            layer,
            replica,
            presence,
            index: Mutex::default(),
            ops: Combiner::default(),
            events: Combiner::default(),
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection of `user` opened (for disconnects by user).
    pub(crate) fn connected(&self, user: &str, channel: &ChannelName) {
        self.index()
            .users
            .entry(user.to_owned())
            .or_default()
            .insert(channel.clone());
    }

    /// The connection of `user` ended.
    pub(crate) fn disconnected(&self, user: &str, channel: &ChannelName) {
        let mut index = self.index();
        if let Some(channels) = index.users.get_mut(user) {
            channels.remove(channel);
            if channels.is_empty() {
                index.users.remove(user);
            }
        }
    }

    /// The member a connection is in presence lists.
    pub(crate) fn member(&self, user: &str, name: &str, channel: &ChannelName) -> PresenceMember {
        PresenceMember {
            user: user.to_owned(),
            name: name.to_owned(),
            channel: channel.as_str().to_owned(),
            replica: self.replica.clone(),
            joined_at: channels_layer::presence::unix_now(),
        }
    }

    /// `member` joined `group`: indexed at once, then stored (with the joins of the same
    /// moment) and announced once stored. Only a connection that asked for events waits for
    /// the store (its first frame lists the group, itself included); the others are in the
    /// list a Redis round trip later, and a failed store is retried by the next refresh.
    pub(crate) async fn join(
        self: &Arc<Self>,
        group: &GroupName,
        member: PresenceMember,
        channel: &ChannelName,
        events: bool,
    ) -> Result<(), LayerError> {
        self.index()
            .groups
            .entry(group.clone())
            .or_default()
            .insert(channel.clone(), (member.clone(), events));
        let op = Op::Add {
            member,
            announce: true,
        };
        if !events {
            self.queue(group.clone(), op, None);
            return Ok(());
        }
        let (done, result) = oneshot::channel();
        self.queue(group.clone(), op, Some(done));
        result.await.unwrap_or(Err(LayerError::Closed))
    }

    /// Queues `op`; starts the task that sends the queue if none runs. The queue is bounded
    /// by the connections: each has at most one join or leave in it, and the refresh adds
    /// the members it finds only when nothing else is queued.
    fn queue(
        self: &Arc<Self>,
        group: GroupName,
        op: Op,
        done: Option<oneshot::Sender<Result<(), LayerError>>>,
    ) {
        if self.ops.push((group, op), done, usize::MAX) == Some(true) {
            let service = Arc::clone(self);
            tokio::spawn(async move { service.send_ops().await });
        }
    }

    /// Sends the queued stores and removals in order, [`BATCH`] at a time, until none are
    /// left: each run of stores in one call, then the joins among them announced.
    async fn send_ops(self: Arc<Self>) {
        while let Some(batch) = self.ops.next() {
            let mut batch = batch.into_iter().peekable();
            while let Some(((group, op), done)) = batch.next() {
                match op {
                    Op::Remove(channel) => {
                        let result = self.layer.presence_remove(&group, &channel).await;
                        reply(vec![done], &result.map(|_| ()));
                    }
                    Op::Add { member, announce } => {
                        let mut adds = vec![((group, member, announce), done)];
                        while let Some(((group, Op::Add { member, announce }), done)) =
                            batch.next_if(|((_, op), _)| matches!(op, Op::Add { .. }))
                        {
                            adds.push(((group, member, announce), done));
                        }
                        self.store(adds).await;
                    }
                }
            }
        }
    }

    /// Stores a run of members in one call, then announces the joins among them.
    async fn store(self: &Arc<Self>, adds: Vec<Waiting<(GroupName, PresenceMember, bool)>>) {
        let (adds, waiting): (Vec<_>, Vec<_>) = adds.into_iter().unzip();
        let (entries, announced): (Vec<_>, Vec<_>) = adds
            .into_iter()
            .map(|(group, member, announce)| ((group, member), announce))
            .unzip();
        let result = self.layer.presence_add_many(&entries, TTL).await;
        reply(waiting, &result);
        if let Err(error) = result {
            // The members are in the index: the next refresh stores them.
            channels_layer::log_limited!(warn, %error, "presence store failed: the refresh retries it");
            return;
        }
        for ((group, member), announce) in entries.iter().zip(announced) {
            if announce {
                self.announce(group, "join", member, false).await;
            }
        }
    }

    /// The connection with `channel` left `group`: removed (after its join's store, if that
    /// is still queued) and announced.
    pub(crate) async fn leave(self: &Arc<Self>, group: &GroupName, channel: &ChannelName) {
        let member = {
            let mut index = self.index();
            let Some(members) = index.groups.get_mut(group) else {
                return;
            };
            let member = members.remove(channel);
            if members.is_empty() {
                index.groups.remove(group);
            }
            member
        };
        let Some((member, _)) = member else { return };
        let (done, result) = oneshot::channel();
        self.queue(group.clone(), Op::Remove(channel.clone()), Some(done));
        match result.await.unwrap_or(Err(LayerError::Closed)) {
            // Waits for the event to go out, so that a drained replica's leaves are announced
            // before it stops.
            Ok(()) => self.announce(group, "leave", &member, true).await,
            Err(error) => {
                // It expires within the TTL; the sweep announces it then.
                channels_layer::log_limited!(warn, %error, %group, "presence removal failed");
            }
        }
    }

    /// Queues the event for the next control message; waits until it is sent if `wait`.
    async fn announce(
        self: &Arc<Self>,
        group: &GroupName,
        event: &str,
        member: &PresenceMember,
        wait: bool,
    ) {
        let json = match serde_json::to_string(member) {
            Ok(json) => json,
            Err(error) => {
                channels_layer::log_limited!(warn, %error, %group, "presence event not encoded: dropped");
                return;
            }
        };
        // `[event, group, channel, member JSON]`: every replica reads the group and the
        // channel of every event, and decodes the member only where someone wants it.
        let value = Value::List(vec![
            Value::from(event),
            Value::from(group.as_str()),
            Value::from(member.channel.as_str()),
            Value::Str(json),
        ]);
        let (done, sent) = oneshot::channel();
        match self
            .events
            .push(value, wait.then_some(done), MAX_PENDING_EVENTS)
        {
            None => {
                channels_layer::log_limited!(warn, %group, "presence events backlog full: event dropped");
                return;
            }
            Some(true) => {
                let service = Arc::clone(self);
                tokio::spawn(async move { service.send_events().await });
            }
            Some(false) => {}
        }
        if wait {
            let _ = sent.await;
        }
    }

    /// Sends the pending events, [`BATCH`] per control message, until there are none.
    async fn send_events(&self) {
        while let Some(batch) = self.events.next() {
            let (events, waiting): (Vec<Value>, Vec<_>) = batch.into_iter().unzip();
            let msg = Message::new("channels.presence").with("events", Value::List(events));
            let result = self.layer.group_send(&control_group(), msg).await;
            if let Err(error) = &result {
                channels_layer::log_limited!(warn, %error, "presence events not sent");
            }
            reply(waiting, &result);
        }
    }

    /// Sends the server API's disconnect of `user` to every replica.
    pub(crate) async fn disconnect_user(&self, user: &str) -> Result<(), LayerError> {
        let msg = Message::new(DISCONNECT_TYPE).with("user", user);
        self.layer.group_send(&control_group(), msg).await
    }

    /// Handles one control message: hands presence events to this replica's connections that
    /// asked for them, and disconnects to the user's connections.
    async fn on_control(&self, msg: &Message) {
        match msg.message_type() {
            Some("channels.presence") => {
                let Some(Value::List(events)) = msg.get("events") else {
                    channels_layer::log_limited!(warn, "malformed presence events ignored");
                    return;
                };
                for event in events {
                    self.on_event(event).await;
                }
            }
            Some(DISCONNECT_TYPE) => {
                let Some(user) = msg.get("user").and_then(Value::as_str) else {
                    return;
                };
                let targets: Vec<ChannelName> = self
                    .index()
                    .users
                    .get(user)
                    .map(|c| c.iter().cloned().collect())
                    .unwrap_or_default();
                for channel in targets {
                    let _ = self
                        .layer
                        .send(&channel, Message::new(DISCONNECT_TYPE))
                        .await;
                }
            }
            _ => channels_layer::log_limited!(warn, "unknown control message ignored"),
        }
    }

    /// Hands one presence event to this replica's connections in its group that asked for
    /// events (not to the one it is about).
    async fn on_event(&self, event: &Value) {
        let field = |i: usize| match event {
            Value::List(fields) => fields.get(i).and_then(Value::as_str),
            _ => None,
        };
        let (Some(kind @ ("join" | "leave")), Some(group), Some(about), Some(json)) =
            (field(0), field(1), field(2), field(3))
        else {
            channels_layer::log_limited!(warn, "malformed presence event ignored");
            return;
        };
        // Most events concern groups where nobody here asked for events: nothing more to do.
        let targets: Vec<ChannelName> = {
            let index = self.index();
            let Some(members) = index.groups.get(group) else {
                return;
            };
            members
                .iter()
                .filter(|(channel, (_, events))| *events && channel.as_str() != about)
                .map(|(channel, _)| channel.clone())
                .collect()
        };
        if targets.is_empty() {
            return;
        }
        let member: PresenceMember = match serde_json::from_str(json) {
            Ok(member) => member,
            Err(error) => {
                channels_layer::log_limited!(warn, %error, "malformed presence event ignored");
                return;
            }
        };
        let local = Message::new(EVENT_TYPE)
            .with("event", kind)
            .with("member", member_value(&member));
        for channel in targets {
            let _ = self.layer.send(&channel, local.clone()).await;
        }
    }

    /// Refreshes this replica's entries and sweeps the groups it has members in, announcing
    /// the departure of expired entries (another replica died).
    async fn refresh(self: &Arc<Self>) {
        let entries: Vec<(GroupName, PresenceMember)> = self
            .index()
            .groups
            .iter()
            .flat_map(|(group, members)| {
                members
                    .values()
                    .map(move |(member, _)| (group.clone(), member.clone()))
            })
            .collect();
        let groups: HashSet<GroupName> = entries.iter().map(|(group, _)| group.clone()).collect();
        // Through the queue, so that a leave queued after the refresh read the index is
        // applied after the refresh's store of that member, never before it. Not while
        // earlier changes still wait (Redis is slow or away): the queue stays bounded by the
        // connections, and the next tick tries again.
        if self.ops.idle() {
            for (group, member) in entries {
                let op = Op::Add {
                    member,
                    announce: false,
                };
                self.queue(group, op, None);
            }
        } else {
            channels_layer::log_limited!(
                warn,
                "presence refresh skipped: earlier changes are still waiting for Redis"
            );
        }
        for group in groups {
            match self.layer.presence(&group).await {
                Ok(read) => {
                    for member in read.expired {
                        self.announce(&group, "leave", &member, false).await;
                    }
                }
                Err(error) => {
                    channels_layer::log_limited!(warn, %error, %group, "presence sweep failed");
                }
            }
        }
    }

    /// Joins the control group and runs until `shutdown`: control messages, and the refresh.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut inbox: Option<Inbox> = None;
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if inbox.is_none() {
                inbox = self.join_control().await;
            }
            let next = async {
                match inbox.as_mut() {
                    Some(inbox) => inbox.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                msg = next => match msg {
                    Some(msg) => self.on_control(&msg).await,
                    None => inbox = None,
                },
                _ = tick.tick() => {
                    if inbox.is_none() {
                        continue;
                    }
                    if self.presence {
                        self.refresh().await;
                    }
                }
            }
        }
    }

    async fn join_control(&self) -> Option<Inbox> {
        let inbox = match self.layer.new_channel().await {
            Ok(inbox) => inbox,
            Err(error) => {
                channels_layer::log_limited!(warn, %error, "control channel: retrying");
                return None;
            }
        };
        match self.layer.group_add(&control_group(), inbox.name()).await {
            Ok(()) => Some(inbox),
            Err(error) => {
                channels_layer::log_limited!(warn, %error, "control group join: retrying");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use channels_layer::InMemoryChannelLayer;

    #[test]
    fn a_combiner_hands_out_what_is_pending_a_batch_at_a_time() {
        let combiner = Combiner::default();
        assert_eq!(
            combiner.push(0, None, 1000),
            Some(true),
            "the first starts the task"
        );
        for i in 1..600 {
            assert_eq!(combiner.push(i, None, 1000), Some(false));
        }
        assert_eq!(
            combiner.push(600, None, 600),
            None,
            "over the bound: refused"
        );
        let sizes: Vec<usize> = std::iter::from_fn(|| combiner.next().map(|b| b.len())).collect();
        assert_eq!(sizes, [BATCH, BATCH, 600 - 2 * BATCH]);
        assert_eq!(
            combiner.push(0, None, 1000),
            Some(true),
            "the task ended: a new one"
        );
    }

    /// An in-memory layer, a channel in the control group, and a replica's service on them.
    async fn setup() -> (Arc<dyn ChannelLayer>, Inbox, Arc<Service>) {
        let layer: Arc<dyn ChannelLayer> = Arc::new(InMemoryChannelLayer::default());
        let control = layer.new_channel().await.unwrap();
        layer
            .group_add(&control_group(), control.name())
            .await
            .unwrap();
        let service = Arc::new(Service::new(Arc::clone(&layer), "r1".to_owned(), true));
        (layer, control, service)
    }

    #[tokio::test]
    async fn joins_of_one_moment_go_out_together_and_every_one_is_announced() {
        let (layer, mut control, service) = setup().await;
        let group = GroupName::new("room").unwrap();
        let joins = (0..500).map(|i| {
            let service = Arc::clone(&service);
            let group = group.clone();
            async move {
                let channel = ChannelName::new(&format!("specific.r1!c{i}")).unwrap();
                let member = service.member(&format!("u{i}"), "n", &channel);
                service.join(&group, member, &channel, false).await
            }
        });
        for result in futures_util::future::join_all(joins).await {
            result.unwrap();
        }
        let (mut events, mut messages) = (0, 0);
        while events < 500 {
            let msg = tokio::time::timeout(Duration::from_secs(5), control.recv())
                .await
                .expect("every join announced")
                .unwrap();
            let Some(Value::List(list)) = msg.get("events") else {
                panic!("{msg:?}");
            };
            events += list.len();
            messages += 1;
        }
        assert_eq!(events, 500);
        assert!(messages < 10, "{messages} control messages for 500 joins");
        // A join is announced once stored.
        assert_eq!(layer.presence(&group).await.unwrap().members.len(), 500);
    }

    #[tokio::test]
    async fn a_leave_right_after_a_join_that_did_not_wait_leaves_no_entry_behind() {
        let (layer, mut control, service) = setup().await;
        let group = GroupName::new("room").unwrap();
        for i in 0..50 {
            let channel = ChannelName::new(&format!("specific.r1!c{i}")).unwrap();
            let member = service.member("u", "n", &channel);
            service.join(&group, member, &channel, false).await.unwrap();
            service.leave(&group, &channel).await;
        }
        assert_eq!(layer.presence(&group).await.unwrap(), Default::default());
        let mut kinds = Vec::new();
        while kinds.len() < 100 {
            let msg = tokio::time::timeout(Duration::from_secs(5), control.recv())
                .await
                .expect("every join and leave announced")
                .unwrap();
            let Some(Value::List(list)) = msg.get("events") else {
                panic!("{msg:?}");
            };
            for event in list {
                let Value::List(fields) = event else {
                    panic!("{event:?}")
                };
                kinds.push(fields[0].as_str().unwrap().to_owned());
            }
        }
        let expected: Vec<&str> = (0..50).flat_map(|_| ["join", "leave"]).collect();
        assert_eq!(kinds, expected, "each join announced before its leave");
    }
}
