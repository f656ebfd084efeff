//! What a consumer sees of its connection: the scope, its channel, and the calls it can make.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::HeaderMap;
use channels_layer::{
    ChannelLayer, ChannelName, GroupName, LayerError, Message, Position, PresenceMember,
};

use super::close::Close;
use super::headers::CompactHeaders;
use super::recovery::{Admit, Recovery};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::presence::Service;

/// The captures of the matched route (Channels' `scope["url_route"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlRoute {
    /// Positional captures, when the pattern has no named group.
    pub args: Vec<String>,
    /// Named captures, `(name, value)` in the pattern's order (a pattern's names are unique).
    /// A list, not a map: routes have one or two captures, and a `BTreeMap` allocates a node of
    /// eleven slots (about 530 bytes) for the first, for as long as the connection lives.
    pub kwargs: Vec<(String, String)>,
}

impl UrlRoute {
    /// The named capture `name`.
    pub fn kwarg(&self, name: &str) -> Option<&str> {
        self.kwargs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The connection's scope, as Channels' ASGI `scope` for a WebSocket.
#[derive(Debug, Clone)]
pub struct Scope {
    pub(crate) path: String,
    pub(crate) query_string: String,
    pub(crate) headers: CompactHeaders,
    pub(crate) client: Option<SocketAddr>,
    pub(crate) url_route: UrlRoute,
    pub(crate) identity: Option<Arc<Identity>>,
}

impl Scope {
    /// The percent-decoded path, e.g. `/group/1/` (ASGI `path`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string without the `?` (ASGI `query_string`).
    pub fn query_string(&self) -> &str {
        &self.query_string
    }

    /// The handshake's request headers (kept compact, and made into a map on the first call).
    pub fn headers(&self) -> &HeaderMap {
        self.headers.map()
    }

    /// The peer address, as the server saw it (ASGI `client`).
    pub fn client(&self) -> Option<SocketAddr> {
        self.client
    }

    /// The route's captures (Channels' `scope["url_route"]`).
    pub fn url_route(&self) -> &UrlRoute {
        &self.url_route
    }

    /// Who is connected, when tokens or a connect hook are configured (Channels'
    /// `scope["user"]`); `None` for an anonymous connection.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_deref()
    }
}

/// Why a group call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The connection's identity does not allow this group
    /// ([`GroupGrant`](crate::identity::GroupGrant)).
    #[error("group {0} is not among the groups this connection may join")]
    Forbidden(GroupName),
    /// The channel layer failed.
    #[error(transparent)]
    Layer(#[from] LayerError),
}

/// A frame from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// A text frame (ASGI `text`).
    Text(String),
    /// A binary frame (ASGI `bytes`).
    Bytes(Vec<u8>),
}

/// A frame for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outgoing {
    Text(String),
    Bytes(Vec<u8>),
}

/// The consumer's handle on its connection, passed to every handler.
///
/// Frames sent with [`send_text`](Self::send_text) are written when the handler returns, in
/// order. Groups joined with [`group_add`](Self::group_add) are left by the runtime when the
/// connection ends, as Channels does for a consumer's `groups`.
#[derive(Debug)]
pub struct Context {
    scope: Arc<Scope>,
    channel: ChannelName,
    layer: Arc<dyn ChannelLayer>,
    metrics: Arc<Metrics>,
    groups: Vec<GroupName>,
    pub(crate) outgoing: VecDeque<Outgoing>,
    /// Payload bytes in `outgoing`.
    outgoing_bytes: usize,
    max_outgoing: usize,
    pub(crate) close: Option<Close>,
    /// History and recovery, when the client asked for it (`?recover=1`, `?history=K`,
    /// `?since=...&epoch=...`) and the layer keeps history.
    /// Boxed: 120 bytes that most connections would carry unused in their task.
    recovery: Option<Box<Recovery>>,
    /// Presence and the control channel, when on.
    service: Option<Arc<Service>>,
    /// The client asked for presence events (`?presence=1`, presence on).
    presence_events: bool,
}

impl Context {
    pub(crate) fn new(
        scope: Arc<Scope>,
        channel: ChannelName,
        layer: Arc<dyn ChannelLayer>,
        metrics: Arc<Metrics>,
        max_outgoing: usize,
    ) -> Self {
        Self {
            scope,
            channel,
            max_outgoing,
            layer,
            metrics,
            groups: Vec::new(),
            outgoing: VecDeque::new(),
            outgoing_bytes: 0,
            close: None,
            recovery: None,
            service: None,
            presence_events: false,
        }
    }

    /// Presence for this connection (presence or the API on), and whether the client asked
    /// for events.
    pub(crate) fn set_service(&mut self, service: Arc<Service>, events: bool) {
        self.presence_events = events && service.presence;
        self.service = Some(service);
    }

    /// The user this connection counts as: its identity's, else its channel name.
    pub(crate) fn user(&self) -> String {
        self.scope
            .identity()
            .map_or_else(|| self.channel.as_str().to_owned(), |i| i.user().to_owned())
    }

    pub(crate) fn service(&self) -> Option<&Arc<Service>> {
        self.service.as_ref()
    }

    /// Whether the client gets presence events.
    pub(crate) fn wants_presence(&self) -> bool {
        self.presence_events
    }

    /// Queues a frame as is (the runtime's own JSON frames).
    pub(crate) fn push_raw(&mut self, text: String) -> Result<(), Close> {
        self.push(Outgoing::Text(text))
    }

    /// Who is in `group` now, on every replica (presence on, `--presence`).
    pub async fn presence(&self, group: &GroupName) -> Result<Vec<PresenceMember>, LayerError> {
        Ok(self.layer.presence(group).await?.members)
    }

    /// How many are in `group` now (presence on).
    pub async fn presence_count(&self, group: &GroupName) -> Result<usize, LayerError> {
        Ok(self.presence(group).await?.len())
    }

    /// Turns recovery on for this connection (the client asked, and history is on).
    pub(crate) fn set_recovery(&mut self, recovery: Recovery) {
        self.recovery = Some(Box::new(recovery));
    }

    /// Whether the client asked for history and recovery.
    pub fn is_recovering(&self) -> bool {
        self.recovery.is_some()
    }

    /// Judges a live layer message in recovery mode ([`Recovery::admit`]).
    pub(crate) fn admit(&mut self, msg: &Message) -> Result<Admit, Close> {
        match &mut self.recovery {
            Some(recovery) => recovery.admit(msg),
            None => Ok(Admit::Deliver),
        }
    }

    /// The position of the group message being handled: frames sent meanwhile carry it.
    pub(crate) fn set_current(&mut self, position: Option<Position>) {
        if let Some(recovery) = &mut self.recovery {
            recovery.current = position;
        }
    }

    /// The next history message to replay to the consumer.
    pub(crate) fn next_replay(&mut self) -> Option<Message> {
        self.recovery.as_deref_mut().and_then(Recovery::next_replay)
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The connection's scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// This consumer's channel name (Channels' `self.channel_name`).
    pub fn channel_name(&self) -> &ChannelName {
        &self.channel
    }

    /// The channel layer, for calls beyond the helpers here (e.g. `send` to another channel).
    pub fn layer(&self) -> &Arc<dyn ChannelLayer> {
        &self.layer
    }

    /// The groups this connection joined.
    pub fn groups(&self) -> &[GroupName] {
        &self.groups
    }

    /// Queues a text frame. Fails with [`Close::SLOW`] when more frames are pending than the
    /// per-connection bound allows. In recovery mode the client gets it as JSON, with the
    /// position of the group message being handled ([`recovery`](super::recovery)).
    pub fn send_text(&mut self, text: impl Into<String>) -> Result<(), Close> {
        let text = match &self.recovery {
            Some(recovery) => recovery.wrap(text.into()),
            None if self.presence_events => {
                serde_json::json!({"type": "message", "text": text.into()}).to_string()
            }
            None => text.into(),
        };
        self.push(Outgoing::Text(text))
    }

    /// Queues a binary frame, with the same bound as [`send_text`](Self::send_text).
    pub fn send_bytes(&mut self, bytes: impl Into<Vec<u8>>) -> Result<(), Close> {
        self.push(Outgoing::Bytes(bytes.into()))
    }

    fn push(&mut self, frame: Outgoing) -> Result<(), Close> {
        if self.outgoing.len() >= self.max_outgoing {
            return Err(Close::SLOW);
        }
        self.outgoing_bytes += match &frame {
            Outgoing::Text(text) => text.len(),
            Outgoing::Bytes(bytes) => bytes.len(),
        };
        self.outgoing.push_back(frame);
        Ok(())
    }

    /// Payload bytes queued by handlers and not yet moved to the connection's outbox.
    pub(crate) fn outgoing_bytes(&self) -> usize {
        self.outgoing_bytes
    }

    /// The queued frames were moved to the outbox.
    pub(crate) fn clear_outgoing_bytes(&mut self) {
        self.outgoing_bytes = 0;
    }

    /// Closes the connection with `close` once the handler returns (Channels' `self.close()`).
    /// Called during `connect`, it accepts first and then closes.
    pub fn close(&mut self, close: Close) {
        self.close.get_or_insert(close);
    }

    /// Fails with [`GroupError::Forbidden`] when the connection has an identity that does not
    /// allow `group`.
    fn check_access(&self, group: &GroupName) -> Result<(), GroupError> {
        match self.scope.identity() {
            Some(identity) if !identity.groups().allows(group.as_str()) => {
                self.metrics.group_forbidden();
                Err(GroupError::Forbidden(group.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Joins `group`; the runtime leaves it when the connection ends. With an identity, only
    /// a group it allows.
    ///
    /// In recovery mode it then reads the group's history: the messages the client asked for
    /// reach [`Consumer::event`](super::Consumer::event) before live ones, and with `since` a
    /// recovery frame goes out first ([`recovery`](super::recovery)). The join comes first, so
    /// nothing published in between is lost; duplicates are skipped by offset.
    pub async fn group_add(&mut self, group: &GroupName) -> Result<(), GroupError> {
        self.check_access(group)?;
        self.layer().group_add(group, &self.channel).await?;
        if !self.groups.contains(group) {
            self.groups.push(group.clone());
        }
        if let Some(service) = self.service.clone().filter(|s| s.presence) {
            let user = self.user();
            let name = self
                .scope
                .identity()
                .and_then(|i| i.name())
                .unwrap_or(&user)
                .to_owned();
            let member = service.member(&user, &name, &self.channel);
            service
                .join(group, member, &self.channel, self.presence_events)
                .await?;
            if self.presence_events {
                let members: Vec<serde_json::Value> = self
                    .presence(group)
                    .await?
                    .iter()
                    .map(crate::presence::member_json)
                    .collect();
                let frame = serde_json::json!({"type": "presence", "members": members});
                self.push(Outgoing::Text(frame.to_string()))
                    .map_err(|_| GroupError::Layer(LayerError::Closed))?;
            }
        }
        if let Some(recovery) = &self.recovery {
            let since = recovery.wanted(self.layer.history_size());
            let read = self.layer.history(group, since).await?;
            let frame = self
                .recovery
                .as_mut()
                .and_then(|recovery| recovery.joined(group, read));
            if let Some(frame) = frame {
                self.push(Outgoing::Text(frame))
                    .map_err(|_| GroupError::Layer(LayerError::Closed))?;
            }
        }
        Ok(())
    }

    /// Leaves `group`.
    pub async fn group_discard(&mut self, group: &GroupName) -> Result<(), LayerError> {
        self.groups.retain(|g| g != group);
        if let Some(recovery) = &mut self.recovery {
            recovery.left(group);
        }
        if let Some(service) = &self.service {
            service.leave(group, &self.channel).await;
        }
        self.layer().group_discard(group, &self.channel).await
    }

    /// Sends `msg` to every member of `group` (this connection too, if it is a member).
    ///
    /// With an identity, only to a group it allows, and the message carries the sender: its
    /// `user` key is set to the user id and its `name` key to the display name (the user id
    /// when there is none), whatever the consumer put there.
    pub async fn group_send(&self, group: &GroupName, mut msg: Message) -> Result<(), GroupError> {
        self.check_access(group)?;
        if let Some(identity) = self.scope.identity() {
            msg.insert("user", identity.user());
            msg.insert("name", identity.name().unwrap_or(identity.user()));
        }
        let result = self.layer().group_send(group, msg).await;
        self.metrics.group_send(result.is_ok());
        Ok(result?)
    }

    /// Records that this consumer did not handle a layer message: counts it in
    /// `channels_events_ignored_total{reason}` and logs it, rate-limited (one message sent to a
    /// large group would otherwise log once per member). `reason` is a short fixed word such
    /// as `no_handler` or `malformed`.
    pub fn ignore_event(&self, event: &Message, reason: &'static str) {
        self.metrics.event_ignored(reason);
        channels_layer::log_limited!(
            warn,
            reason,
            msg_type = ?event.message_type().map(|t| t.chars().take(100).collect::<String>()),
            "layer message not handled: ignored"
        );
    }

    /// Leaves every joined group; used by the runtime when the connection ends.
    pub(crate) async fn discard_all_groups(&mut self) {
        for group in std::mem::take(&mut self.groups) {
            if let Some(service) = &self.service {
                service.leave(&group, &self.channel).await;
            }
            if let Err(error) = self.layer().group_discard(&group, &self.channel).await {
                channels_layer::log_limited!(
                    warn,
                    %error,
                    %group,
                    "group_discard at disconnect failed"
                );
            }
        }
    }
}

/// The close code for a failed group call: [`Close::FORBIDDEN`] (4403) for a group the
/// identity does not allow, else as for its layer error.
impl From<&GroupError> for Close {
    fn from(error: &GroupError) -> Self {
        match error {
            GroupError::Forbidden(_) => Close::FORBIDDEN,
            GroupError::Layer(error) => Close::from(error),
        }
    }
}
