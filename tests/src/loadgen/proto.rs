//! The wire protocols the load generator speaks: the seed tutorial's (this server and the
//! Django app), and Socket.IO 4 (engine.io v4 over a WebSocket) for the Node peer.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The group chat reply prefix of the seed protocol.
pub const GROUP_PREFIX: &str = "组内主动推送消息:";
/// The echo reply prefix of the seed protocol.
pub const ECHO_PREFIX: &str = "服务端主动推送消息:";

/// Which protocol a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `/group/<G>/` and `/room/<x>/` with the tutorial's texts (this server, Django).
    Seed,
    /// Socket.IO 4: `/socket.io/?EIO=4&transport=websocket&room=<G>`, events `msg` and `echo`.
    Socketio,
    /// The seed's paths in recovery mode (history on, `recover=1` in the query): frames are
    /// JSON `{"type": "message", "text": ..., "offset": ..., "epoch": ...}`.
    SeedRecover,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The receiving half of a connection.
pub type Stream = SplitStream<Ws>;

/// The sending half of a connection.
pub struct Sender {
    sink: SplitSink<Ws, Message>,
    protocol: Protocol,
}

/// What a handshake carries besides the path: a query string and request headers (a token, a
/// session cookie).
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Appended to the URL after `?` (or `&` when it has a query).
    pub query: Option<String>,
    /// Added to the request.
    pub headers: Vec<(String, String)>,
}

/// Connects to `base` (`ws://host:port`) for group `group` (or an echo room when `echo`).
/// `source` binds the local address first, to spread connections over 127.0.0.x.
pub async fn connect(
    base: &str,
    protocol: Protocol,
    group: &str,
    echo: bool,
    source: Option<IpAddr>,
    extra: &Extra,
) -> anyhow::Result<(Sender, Stream)> {
    let url = match (protocol, echo) {
        (Protocol::Seed | Protocol::SeedRecover, false) => format!("{base}/group/{group}/"),
        (Protocol::Seed | Protocol::SeedRecover, true) => format!("{base}/room/{group}/"),
        (Protocol::Socketio, _) => {
            format!("{base}/socket.io/?EIO=4&transport=websocket&room={group}")
        }
    };
    let url = match &extra.query {
        Some(query) if url.contains('?') => format!("{url}&{query}"),
        Some(query) => format!("{url}?{query}"),
        None => url,
    };
    let mut request = url.as_str().into_client_request()?;
    for (name, value) in &extra.headers {
        request.headers_mut().append(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())?,
            value.parse()?,
        );
    }
    let host = request.uri().host().context("url without host")?.to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .context("host did not resolve")?;
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        // Without IP_BIND_ADDRESS_NO_PORT, bind() reserves a port of the ephemeral range for
        // this address whatever the destination, TIME_WAIT included: after a few scenarios of
        // tens of thousands of connections the range runs dry and every bind searches it,
        // which slowed later connect phases twentyfold. With it the port is picked at
        // connect() and only the 4-tuple has to be unique.
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        )
        .context("setsockopt IP_BIND_ADDRESS_NO_PORT")?;
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    // tungstenite zero-fills up to `read_buffer_size` bytes before every read (128 KiB by
    // default): with the default, that memset was over half of this load generator's CPU.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        request,
        MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await?;
    let (mut sink, mut stream) = ws.split();
    if protocol == Protocol::Socketio {
        // engine.io open packet, then connect to the default namespace.
        let open = next_text(&mut stream).await?;
        if !open.starts_with('0') {
            bail!("expected an engine.io open packet, got {open:?}");
        }
        sink.send(Message::text("40")).await?;
        loop {
            let reply = next_text(&mut stream).await?;
            if reply.starts_with("40") {
                break;
            }
            if reply == "2" {
                sink.send(Message::text("3")).await?;
                continue;
            }
            bail!("expected a namespace connect reply, got {reply:?}");
        }
    }
    Ok((Sender { sink, protocol }, stream))
}

async fn next_text(stream: &mut SplitStream<Ws>) -> anyhow::Result<String> {
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => bail!("unexpected frame {other:?}"),
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection closed during the handshake"),
        }
    }
}

impl Sender {
    /// Sends one chat message (or an echo request).
    pub async fn send(&mut self, text: &str, echo: bool) -> anyhow::Result<()> {
        let frame = match self.protocol {
            Protocol::Seed | Protocol::SeedRecover => text.to_owned(),
            Protocol::Socketio => {
                let event = if echo { "echo" } else { "msg" };
                format!("42{}", serde_json::to_string(&(event, text))?)
            }
        };
        self.sink.send(Message::text(frame)).await?;
        Ok(())
    }

    /// Answers a Socket.IO ping.
    pub async fn pong(&mut self) -> anyhow::Result<()> {
        self.sink.send(Message::text("3")).await?;
        Ok(())
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.sink.close().await;
    }
}

/// What a received frame means.
#[derive(Debug)]
pub enum Incoming {
    /// A chat or echo reply: the text after the protocol's prefix.
    Chat(String),
    /// A Socket.IO ping to answer.
    Ping,
    /// Anything else (ignored).
    Other,
    /// The connection ended.
    Closed,
}

/// Reads the next frame and decodes it for `protocol`.
pub async fn recv(stream: &mut SplitStream<Ws>, protocol: Protocol) -> Incoming {
    let text = match stream.next().await {
        Some(Ok(Message::Text(t))) => t,
        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Incoming::Closed,
        Some(Ok(_)) => return Incoming::Other,
    };
    let text = text.as_str();
    match protocol {
        Protocol::Seed => strip(text).map_or(Incoming::Other, Incoming::Chat),
        Protocol::SeedRecover => match RecoverFrame::parse(text) {
            Some(RecoverFrame::Message { text, .. }) => {
                strip(&text).map_or(Incoming::Other, Incoming::Chat)
            }
            _ => Incoming::Other,
        },
        Protocol::Socketio => {
            if text == "2" {
                return Incoming::Ping;
            }
            let Some(json) = text.strip_prefix("42") else {
                return Incoming::Other;
            };
            match serde_json::from_str::<(String, String)>(json) {
                Ok((_, body)) => strip(&body).map_or(Incoming::Other, Incoming::Chat),
                Err(_) => Incoming::Other,
            }
        }
    }
}

/// A frame of the recovery mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoverFrame {
    /// A message; `position` is `(offset, epoch)` for a group message from history.
    Message {
        /// The consumer's frame.
        text: String,
        /// Its position.
        position: Option<(u64, String)>,
    },
    /// The answer to `since`: recovered (with the number of missed messages) or not.
    Recovery {
        /// Whether every missed message follows.
        recovered: bool,
        /// How many.
        missed: u64,
    },
}

impl RecoverFrame {
    /// Parses a recovery-mode frame; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let frame: serde_json::Value = serde_json::from_str(text).ok()?;
        match frame.get("type")?.as_str()? {
            "message" => Some(Self::Message {
                text: frame.get("text")?.as_str()?.to_owned(),
                position: frame.get("offset").and_then(serde_json::Value::as_u64).zip(
                    frame
                        .get("epoch")
                        .and_then(|e| e.as_str())
                        .map(str::to_owned),
                ),
            }),
            "recovery" => Some(Self::Recovery {
                recovered: frame.get("recovered")?.as_bool()?,
                missed: frame
                    .get("missed")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
            }),
            _ => None,
        }
    }
}

fn strip(text: &str) -> Option<String> {
    text.strip_prefix(GROUP_PREFIX)
        .or_else(|| text.strip_prefix(ECHO_PREFIX))
        .map(str::to_owned)
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("protocol", &self.protocol)
            .finish()
    }
}
