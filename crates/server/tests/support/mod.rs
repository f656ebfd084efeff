//! Test support: a server on 127.0.0.1:0 and a WebSocket client with timeouts.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "test support: each test file uses part of it, and a failed unwrap is a failed test"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use channels_layer::{ChannelLayer, InMemoryChannelLayer};
use channels_server::routing::WsRouter;
use channels_server::{Config, Server, ServerError};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use test_support::ws::Client;
#[allow(unused_imports, reason = "each test binary uses part of it")]
pub use test_support::{TIMEOUT, eventually};

/// How long [`Client::expect_silence`] waits in these tests.
pub const SILENCE: Duration = Duration::from_millis(300);

pub struct TestServer {
    pub addr: SocketAddr,
    pub layer: Arc<InMemoryChannelLayer>,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), ServerError>>,
}

/// The seed's chat server with default settings.
pub async fn spawn() -> TestServer {
    spawn_with(Config::default(), channels_server::tutorial::routes()).await
}

pub async fn spawn_with(config: Config, routes: WsRouter) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = Arc::new(InMemoryChannelLayer::new(config.layer_config()));
    // The tutorial's pages too, as the `channels-server` binary serves them.
    let mut builder = Server::builder(config.server_config())
        .layer(Arc::clone(&layer) as Arc<dyn ChannelLayer>)
        .routes(routes)
        .http_routes(channels_web::router());
    // Tokens and the connect hook, as `channels_server::serve` sets them from the flags.
    if let Some(auth) = config.authenticator().unwrap() {
        builder = builder.authenticator(auth);
    }
    let server = builder.build();
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    let handle = tokio::spawn(server.serve(listener, async move { signal.cancelled().await }));
    TestServer {
        addr,
        layer,
        shutdown,
        handle,
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub async fn ws(&self, path: &str) -> Client {
        Client::connect(&self.url(path)).await
    }

    /// The HTTP status of a handshake that the server refuses.
    pub async fn refused_status(&self, path: &str) -> u16 {
        match tokio_tungstenite::connect_async(self.url(path)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                response.status().as_u16()
            }
            Err(other) => panic!("expected an HTTP refusal for {path}, got {other}"),
            Ok(_) => panic!("expected {path} to be refused, but it upgraded"),
        }
    }

    /// Starts the shutdown and returns the server task's result.
    pub async fn stop(self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("server did not stop in time")
            .expect("server task panicked")
    }

    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }
}

/// `GET /metrics`, parsed into `name{labels}` -> value.
pub async fn metrics(addr: SocketAddr) -> std::collections::HashMap<String, f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (_, body) = raw.split_once("\r\n\r\n").unwrap();
    test_support::metrics_text::parse(body)
}

/// A metric's value, 0 when it has no sample yet.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    metrics(addr).await.get(name).copied().unwrap_or(0.0)
}

/// A raw WebSocket handshake to `path` with `extra` header lines (each ending in `\r\n`, any
/// bytes) and the given Host; returns the status code and the open stream.
pub async fn raw_handshake(
    addr: SocketAddr,
    path: &str,
    host: &str,
    extra: &[u8],
) -> (u16, TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    .into_bytes();
    req.extend_from_slice(extra);
    req.extend_from_slice(b"\r\n");
    stream.write_all(&req).await.unwrap();
    // Read the response head byte by byte, so nothing after it is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(TIMEOUT, stream.read(&mut byte))
            .await
            .expect("no response in time")
            .unwrap();
        assert_eq!(n, 1, "connection closed before a response: {head:?}");
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (status, stream)
}
