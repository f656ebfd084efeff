//! A WebSocket test client with a timeout ([`TIMEOUT`]) on every handshake and receive.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::TIMEOUT;

/// The replica that answered a handshake: its `X-Channels-Replica` header, empty when there is
/// none.
pub fn replica_of(
    response: &tokio_tungstenite::tungstenite::handshake::client::Response,
) -> String {
    response
        .headers()
        .get("x-channels-replica")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A WebSocket client with timeouts on every receive.
#[derive(Debug)]
pub struct Client(pub WebSocketStream<MaybeTlsStream<TcpStream>>);

impl Client {
    /// Connects to `url` (`ws://...`).
    pub async fn connect(url: &str) -> Client {
        Self::connect_to_replica(url).await.0
    }

    /// Connects and returns the replica that answered (its `X-Channels-Replica` header, empty
    /// when there is none).
    pub async fn connect_to_replica(url: &str) -> (Client, String) {
        let (stream, response) =
            tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
                .await
                .expect("handshake timed out")
                .unwrap_or_else(|e| panic!("handshake to {url} failed: {e}"));
        (Client(stream), replica_of(&response))
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.0.send(Message::text(text)).await.unwrap();
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.0.send(Message::binary(bytes.to_vec())).await.unwrap();
    }

    /// The next data frame (pings and pongs skipped).
    pub async fn recv(&mut self) -> Message {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.0.next())
                .await
                .expect("no frame within the timeout")
                .expect("stream ended")
                .expect("read failed");
            if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
                return msg;
            }
        }
    }

    /// The next frame, which must be a text frame.
    pub async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Message::Text(t) => t.as_str().to_owned(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    /// Waits for the server's close frame; returns its code and reason. Reads on to the end
    /// of the stream, which sends our close reply and completes the handshake.
    pub async fn expect_close(&mut self) -> (u16, String) {
        let close = match self.recv().await {
            Message::Close(Some(CloseFrame { code, reason })) => {
                (u16::from(code), reason.as_str().to_owned())
            }
            other => panic!("expected a close frame, got {other:?}"),
        };
        self.read_to_end().await;
        close
    }

    /// Asserts that no data frame arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(Some(Ok(msg))) = tokio::time::timeout(wait, self.0.next()).await {
            panic!("expected nothing, got {msg:?}");
        }
    }

    /// Closes with 1000, as a browser's `close()` does, and completes the handshake.
    pub async fn close(mut self) {
        let normal = CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "".into(),
        };
        let _ = self.0.close(Some(normal)).await;
        self.read_to_end().await;
    }

    /// Reads until the stream ends, errs or stays quiet for `TIMEOUT`.
    async fn read_to_end(&mut self) {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(TIMEOUT, self.0.next()).await {}
    }
}
