//! Testing consumers without a socket or HTTP: [`Communicator`], Channels'
//! `WebsocketCommunicator` in Rust.
//!
//! A communicator runs one consumer exactly as the server does (the same handshake steps and the
//! same connection loop, so close codes, group membership, rate limits and `disconnect` behave
//! as in production), but the WebSocket travels through an in-memory pipe and the channel layer
//! is an in-memory one unless you give it another.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use channels_server::testing::{Communicator, Output};
//! use channels_server::tutorial::ChatConsumer;
//!
//! let mut chat = Communicator::connect(ChatConsumer, "/room/1/").await.expect("accepted");
//! chat.send_text("hi").await;
//! assert_eq!(chat.receive().await?, Output::Text("服务端主动推送消息:hi".into()));
//! chat.send_text("exit").await;
//! assert_eq!(chat.receive().await?, Output::Closed { code: 1000, reason: String::new() });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use channels_layer::{ChannelLayer, ChannelName, InMemoryChannelLayer};
use futures_util::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tungstenite::Message as Frame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::connection::driver;
use crate::connection::meter::FrameMeter;
use crate::consumer::{Close, CompactHeaders, Consumer, Context, Scope};
use crate::hub::Hub;
use crate::identity::Identity;
use crate::routing::{RePath, UrlRoute};
use crate::server_config::ServerConfig;

/// What the consumer sent to its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Bytes(Vec<u8>),
    /// The server closed the connection with this code and reason.
    Closed {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
}

/// Nothing arrived within the communicator's timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("nothing arrived from the consumer within {0:?}")]
pub struct TimedOut(pub Duration);

/// Settings of a [`Communicator`] before it connects.
#[derive(Debug)]
#[must_use]
pub struct CommunicatorBuilder {
    path: String,
    query_string: String,
    headers: HeaderMap,
    client: Option<SocketAddr>,
    identity: Option<Identity>,
    route: Option<RePath>,
    layer: Option<Arc<dyn ChannelLayer>>,
    config: ServerConfig,
    timeout: Duration,
}

impl CommunicatorBuilder {
    /// The `re_path` pattern of the consumer's route, for its `url_route` captures (as the
    /// server would match it against the path).
    pub fn route(mut self, pattern: &str) -> Result<Self, regex::Error> {
        self.route = Some(RePath::new(pattern)?);
        Ok(self)
    }

    /// The query string (without `?`).
    pub fn query_string(mut self, query: &str) -> Self {
        query.clone_into(&mut self.query_string);
        self
    }

    /// A request header of the handshake.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The client's address in the scope.
    pub fn client(mut self, addr: SocketAddr) -> Self {
        self.client = Some(addr);
        self
    }

    /// The connection's identity, as a token or the connect hook would give it (default:
    /// anonymous). Its groups limit `group_add` and `group_send`; its expiry closes the
    /// connection with 4401.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The channel layer (default: a fresh in-memory one). Give two communicators the same
    /// layer to test a group.
    pub fn layer(mut self, layer: Arc<dyn ChannelLayer>) -> Self {
        self.layer = Some(layer);
        self
    }

    /// The server settings (limits, rate, pings); default: [`ServerConfig::default`].
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// How long [`Communicator::receive`] waits (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the consumer's `connect`. `Err` is the close it denied the handshake with (the
    /// server answers HTTP 403). `Ok` is an open connection: if `connect` accepted and then
    /// closed, [`Communicator::receive`] returns that close.
    pub async fn connect<C: Consumer>(self, mut consumer: C) -> Result<Communicator, Close> {
        let layer = self
            .layer
            .unwrap_or_else(|| Arc::new(InMemoryChannelLayer::default()));
        let limits = self.config.limits();
        let hub = Arc::new(Hub::new(
            Arc::clone(&layer),
            limits,
            self.config.replica_id.clone(),
            None,
            None,
        ));
        let path = self.path.trim_start_matches('/');
        let url_route = match &self.route {
            Some(route) => route.matches(path).unwrap_or_default(),
            None => UrlRoute::default(),
        };
        let scope = Scope {
            path: self.path.clone(),
            query_string: self.query_string,
            headers: CompactHeaders::new(&self.headers),
            client: self.client,
            url_route,
            identity: self.identity.map(Arc::new),
        };
        let inbox = layer.new_channel().await.map_err(|e| Close::from(&e))?;
        let channel = inbox.name().clone();
        let mut cx = Context::new(
            Arc::new(scope),
            channel.clone(),
            Arc::clone(&layer),
            Arc::clone(hub.metrics()),
            limits.max_outgoing_frames,
        );
        consumer.connect(&mut cx).await?;
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let config = WebSocketConfig::default()
            .max_message_size(Some(limits.max_message_size))
            .max_frame_size(Some(limits.max_message_size));
        let server = WebSocketStream::from_raw_socket(
            FrameMeter::new(server_io, limits.max_messages_per_second),
            Role::Server,
            Some(config),
        )
        .await;
        let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let task = tokio::spawn(async move {
            driver::run(server, consumer, cx, inbox, &hub, false).await;
        });
        Ok(Communicator {
            client,
            task,
            layer,
            channel,
            timeout: self.timeout,
        })
    }
}

/// One consumer's connection, driven from a test. See the [module docs](self).
#[derive(Debug)]
pub struct Communicator {
    client: WebSocketStream<DuplexStream>,
    task: JoinHandle<()>,
    layer: Arc<dyn ChannelLayer>,
    channel: ChannelName,
    timeout: Duration,
}

impl Communicator {
    /// Settings for a connection to `path` (`/room/1/`).
    pub fn builder(path: &str) -> CommunicatorBuilder {
        CommunicatorBuilder {
            path: path.to_owned(),
            query_string: String::new(),
            headers: HeaderMap::new(),
            client: Some(SocketAddr::from(([127, 0, 0, 1], 50_000))),
            identity: None,
            route: None,
            layer: None,
            config: ServerConfig::default(),
            timeout: Duration::from_secs(1),
        }
    }

    /// Connects `consumer` at `path` with the default settings; see
    /// [`CommunicatorBuilder::connect`].
    pub async fn connect<C: Consumer>(consumer: C, path: &str) -> Result<Communicator, Close> {
        Self::builder(path).connect(consumer).await
    }

    /// The connection's channel name (to `send` to it through the layer).
    pub fn channel_name(&self) -> &ChannelName {
        &self.channel
    }

    /// The channel layer the consumer uses.
    pub fn layer(&self) -> &Arc<dyn ChannelLayer> {
        &self.layer
    }

    /// Sends a text frame as the client. A connection the server already closed ignores it.
    pub async fn send_text(&mut self, text: &str) {
        let _ = self.client.send(Frame::text(text)).await;
    }

    /// Sends a binary frame as the client.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.client.send(Frame::binary(bytes.to_vec())).await;
    }

    /// The next frame the consumer sent, or its close, within the timeout.
    pub async fn receive(&mut self) -> Result<Output, TimedOut> {
        let timeout = self.timeout;
        let next = async {
            loop {
                match self.client.next().await {
                    Some(Ok(Frame::Text(text))) => return Output::Text(text.as_str().to_owned()),
                    Some(Ok(Frame::Binary(bytes))) => return Output::Bytes(bytes.to_vec()),
                    Some(Ok(Frame::Close(frame))) => {
                        return Output::Closed {
                            code: frame.as_ref().map_or(1005, |f| u16::from(f.code)),
                            reason: frame
                                .map(|f| f.reason.as_str().to_owned())
                                .unwrap_or_default(),
                        };
                    }
                    Some(Ok(_)) => {}
                    // The pipe ended without a close frame.
                    Some(Err(_)) | None => {
                        return Output::Closed {
                            code: 1006,
                            reason: String::new(),
                        };
                    }
                }
            }
        };
        tokio::time::timeout(timeout, next)
            .await
            .map_err(|_| TimedOut(timeout))
    }

    /// Whether nothing arrives for `wait` (Channels' `receive_nothing`).
    pub async fn receive_nothing(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.client.next())
            .await
            .is_err()
    }

    /// Closes from the client's side with `code` and waits (within the timeout) until the
    /// connection has ended: its groups were left and the consumer's `disconnect` has returned.
    pub async fn disconnect(mut self, code: u16) -> Result<(), TimedOut> {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        let _ = self.client.close(Some(frame)).await;
        let timeout = self.timeout;
        let finish = async {
            while let Some(Ok(_)) = self.client.next().await {}
            let _ = (&mut self.task).await;
        };
        tokio::time::timeout(timeout, finish)
            .await
            .map_err(|_| TimedOut(timeout))
    }

    /// Waits (within the timeout) until the connection has ended on its own (the consumer
    /// closed it, or the server did).
    pub async fn wait_closed(mut self) -> Result<(), TimedOut> {
        let timeout = self.timeout;
        let finish = async {
            while let Some(Ok(_)) = self.client.next().await {}
            let _ = (&mut self.task).await;
        };
        tokio::time::timeout(timeout, finish)
            .await
            .map_err(|_| TimedOut(timeout))
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        // A test that ends without disconnecting leaves no task behind.
        self.task.abort();
    }
}
