//! The handshake's headers as a consumer sees them through a real connection: every value of a
//! repeated header in order, and bytes outside ASCII as sent. (Sensitivity, which no client can
//! set, is checked by the unit tests of `consumer/headers.rs`.)

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod support;

use channels_layer::Message;
use channels_server::Config;
use channels_server::consumer::{ClientMessage, Close, Consumer, Context};
use channels_server::routing::WsRouter;
use support::{raw_handshake, spawn_with};
use tokio::io::AsyncReadExt;

/// Sends back what it sees of the headers, as JSON, on connect.
#[derive(Clone, Default)]
struct Echo;

impl Consumer for Echo {
    async fn connect(&mut self, cx: &mut Context) -> Result<(), Close> {
        let headers = cx.scope().headers();
        let many: Vec<_> = headers
            .get_all("x-many")
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .collect();
        let seen = serde_json::json!({
            "many": many,
            "bytes": headers.get("x-bytes").map(|v| v.as_bytes().to_vec()),
            "host": headers.get("host").and_then(|v| v.to_str().ok()),
            "count": headers.len(),
        });
        cx.send_text(seen.to_string())
    }

    async fn receive(&mut self, _cx: &mut Context, _msg: ClientMessage) -> Result<(), Close> {
        Ok(())
    }

    async fn event(&mut self, _cx: &mut Context, _event: Message) -> Result<(), Close> {
        Ok(())
    }
}

#[tokio::test]
async fn a_consumer_sees_every_header_as_sent() {
    let routes = WsRouter::new().route("echo/$", || Echo).unwrap();
    let server = spawn_with(Config::default(), routes).await;
    let (status, mut stream) = raw_handshake(
        server.addr,
        "/echo/",
        "localhost",
        b"X-Many: 1\r\nX-Bytes: caf\xc3\xa9 \x80\r\nX-Many: 2\r\n",
    )
    .await;
    assert_eq!(status, 101);
    // One unmasked text frame of under 126 bytes.
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 0x81);
    let mut payload = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut payload).await.unwrap();
    let seen: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(seen["many"], serde_json::json!(["1", "2"]));
    assert_eq!(
        seen["bytes"],
        serde_json::json!(b"caf\xc3\xa9 \x80".to_vec())
    );
    assert_eq!(seen["host"], "localhost");
    // Host, Upgrade, Connection, Sec-WebSocket-Key, Sec-WebSocket-Version and the three above.
    assert_eq!(seen["count"], 8);
    drop(stream);
    server.stop().await.unwrap();
}
