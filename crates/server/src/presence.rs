//! Presence and the replicas' control channel (`--presence`, `--api-bind`).
//!
//! Every replica that runs this joins the control group [`CONTROL_GROUP`] with a channel of its
//! own. What goes through it, as layer messages (so every backend carries them, and no Python
//! process ever joins the group):
//!
//! * `{"type": "channels.presence", "event": "join" | "leave", "group": G, "member": {...}}`: a
//!   connection joined or left group G (or its replica died and its entry expired). Each
//!   replica hands it to its own connections in G that asked for presence events
//!   (`?presence=1`), as a `channels.presence.event` message that the runtime turns into a
//!   frame and never shows the consumer;
//! * `{"type": "channels.disconnect", "user": U}`: the server API's disconnect; each replica
//!   closes its connections of user U with [`Close::DISCONNECTED`](crate::consumer::Close).
//!
//! Presence entries live in the layer ([`channels_layer::presence`]) with a [`TTL`]; the replica
//! refreshes its own every [`REFRESH`], and on the same tick reads each group it has members in,
//! which removes the entries of a dead replica and announces their departure (once: the read is
//! atomic). A killed replica's members therefore vanish from every list within [`TTL`] and their
//! `leave` events follow within [`TTL`] + [`REFRESH`]; a drained one's leave at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use channels_layer::{
    ChannelLayer, ChannelName, GroupName, Inbox, LayerError, Map, Message, PresenceMember, Value,
};
use tokio_util::sync::CancellationToken;

/// The group every replica's control channel joins.
pub const CONTROL_GROUP: &str = "channels.control";
/// How long a presence entry lives without a refresh.
pub const TTL: Duration = Duration::from_secs(20);
/// How often a replica refreshes its entries and sweeps expired ones.
pub const REFRESH: Duration = Duration::from_secs(5);

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

/// The member in a control message, if it has every field.
fn member_of(value: Option<&Value>) -> Option<PresenceMember> {
    let map = value?.as_map()?;
    let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
    Some(PresenceMember {
        user: text("user")?,
        name: text("name")?,
        channel: text("channel")?,
        replica: text("replica")?,
        joined_at: match map.get("joined_at")? {
            Value::Float(f) => *f,
            other => other.as_i64()? as f64,
        },
    })
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

    /// `member` joined `group`: stored, indexed, announced.
    pub(crate) async fn join(
        &self,
        group: &GroupName,
        member: PresenceMember,
        channel: &ChannelName,
        events: bool,
    ) -> Result<(), LayerError> {
        self.layer.presence_add(group, &member, TTL).await?;
        self.index()
            .groups
            .entry(group.clone())
            .or_default()
            .insert(channel.clone(), (member.clone(), events));
        self.announce(group, "join", &member).await;
        Ok(())
    }

    /// The connection with `channel` left `group`: removed and announced.
    pub(crate) async fn leave(&self, group: &GroupName, channel: &ChannelName) {
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
        match self.layer.presence_remove(group, channel).await {
            Ok(_) => self.announce(group, "leave", &member).await,
            Err(error) => {
                // It expires within the TTL; the sweep announces it then.
                channels_layer::log_limited!(warn, %error, %group, "presence removal failed");
            }
        }
    }

    async fn announce(&self, group: &GroupName, event: &str, member: &PresenceMember) {
        let msg = Message::new("channels.presence")
            .with("event", event)
            .with("group", group.as_str())
            .with("member", member_value(member));
        if let Err(error) = self.layer.group_send(&control_group(), msg).await {
            channels_layer::log_limited!(warn, %error, %group, "presence event not sent");
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
                let group = msg
                    .get("group")
                    .and_then(Value::as_str)
                    .and_then(|g| GroupName::new(g).ok());
                let event = msg.get("event").and_then(Value::as_str);
                let member = member_of(msg.get("member"));
                let (Some(group), Some(event @ ("join" | "leave")), Some(member)) =
                    (group, event, member)
                else {
                    channels_layer::log_limited!(warn, "malformed presence event ignored");
                    return;
                };
                let targets: Vec<ChannelName> = self
                    .index()
                    .groups
                    .get(&group)
                    .map(|members| {
                        members
                            .iter()
                            .filter(|(channel, (_, events))| {
                                *events && channel.as_str() != member.channel
                            })
                            .map(|(channel, _)| channel.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                let local = Message::new(EVENT_TYPE)
                    .with("event", event)
                    .with("member", member_value(&member));
                for channel in targets {
                    let _ = self.layer.send(&channel, local.clone()).await;
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

    /// Refreshes this replica's entries and sweeps the groups it has members in, announcing
    /// the departure of expired entries (another replica died).
    async fn refresh(&self) {
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
        let mut groups = HashSet::new();
        for (group, member) in entries {
            if let Err(error) = self.layer.presence_add(&group, &member, TTL).await {
                channels_layer::log_limited!(warn, %error, %group, "presence refresh failed");
            }
            groups.insert(group);
        }
        for group in groups {
            match self.layer.presence(&group).await {
                Ok(read) => {
                    for member in read.expired {
                        self.announce(&group, "leave", &member).await;
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
