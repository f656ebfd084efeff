//! Presence frames and the server API, over real sockets (in-memory layer, one server).

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use channels_layer::{ChannelLayer, InMemoryChannelLayer};
use channels_server::{Config, Server};
use serde_json::{Value, json};
use support::{Client, SILENCE, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const KEY: &str = "a-test-key-of-32-bytes-0123456789";

struct Running {
    addr: SocketAddr,
    api: SocketAddr,
    layer: Arc<InMemoryChannelLayer>,
    shutdown: CancellationToken,
}

impl Running {
    async fn ws(&self, path: &str) -> Client {
        Client::connect(&format!("ws://{}{path}", self.addr)).await
    }
}

async fn start(presence: bool, history: usize) -> Running {
    let mut config = Config::default();
    config.presence = presence;
    config.history_size = history;
    config.max_messages_per_second = 0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, api) = (
        listener.local_addr().unwrap(),
        api_listener.local_addr().unwrap(),
    );
    let layer = Arc::new(InMemoryChannelLayer::new(config.layer_config()));
    let server = Server::builder(config.server_config())
        .layer(Arc::clone(&layer) as Arc<dyn ChannelLayer>)
        .routes(channels_server::tutorial::routes())
        .api_listener(api_listener, KEY.as_bytes(), 1024)
        .build();
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(server.serve(listener, async move { signal.cancelled().await }));
    Running {
        addr,
        api,
        layer,
        shutdown,
    }
}

/// One HTTP/1.1 request; returns the status and the body as JSON (or a string).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &[u8],
) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(key) = key {
        req.push_str(&format!("X-API-Key: {key}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    (status, body)
}

async fn json_frame(ws: &mut Client) -> Value {
    let text = ws.recv_text().await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn members_see_the_list_then_joins_and_leaves() {
    let s = start(true, 0).await;
    let mut a = s.ws("/group/p/?presence=1").await;
    let first = json_frame(&mut a).await;
    assert_eq!(first["type"], "presence");
    assert_eq!(first["members"].as_array().unwrap().len(), 1, "{first}");
    let me = first["members"][0]["channel"].as_str().unwrap().to_owned();
    assert_eq!(
        first["members"][0]["user"],
        json!(me),
        "anonymous: the channel name"
    );
    let b = s.ws("/group/p/").await;
    let join = json_frame(&mut a).await;
    assert_eq!(join["type"], "join", "{join}");
    let b_channel = join["channel"].as_str().unwrap().to_owned();
    assert_ne!(b_channel, me);
    assert!(join["joined_at"].as_f64().unwrap() > 1.7e9);
    let (status, presence) = http(s.api, "GET", "/api/groups/p/presence", Some(KEY), b"").await;
    assert_eq!((status, presence["count"].clone()), (200, json!(2)));
    b.close().await;
    let leave = json_frame(&mut a).await;
    assert_eq!(
        (leave["type"].as_str(), leave["channel"].as_str()),
        (Some("leave"), Some(&*b_channel))
    );
    // Its own chat frames come in the JSON envelope.
    a.send_text("hi").await;
    assert_eq!(
        json_frame(&mut a).await,
        json!({"type": "message", "text": "组内主动推送消息:hi"})
    );
    a.expect_silence(SILENCE).await;
    s.shutdown.cancel();
}

#[tokio::test]
async fn without_presence_nothing_changes() {
    let s = start(false, 0).await;
    let mut a = s.ws("/group/q/?presence=1").await;
    eventually("member", || s.layer.stats().channels >= 1).await;
    a.send_text("hi").await;
    assert_eq!(a.recv_text().await, "组内主动推送消息:hi");
    let (status, presence) = http(s.api, "GET", "/api/groups/q/presence", Some(KEY), b"").await;
    assert_eq!(
        (status, presence["count"].clone()),
        (200, json!(0)),
        "nobody is recorded"
    );
    s.shutdown.cancel();
}

#[tokio::test]
async fn the_api_refuses_what_it_should_with_its_error() {
    let s = start(true, 0).await;
    let send = "/api/groups/g/send";
    let good = br#"{"type": "send_msg", "message": {"text": "from the api"}}"#;
    for (key, label) in [
        (None, "no key"),
        (Some("wrong-key-wrong-key-wrong-key-00"), "wrong"),
        (Some(""), "empty"),
    ] {
        let (status, body) = http(s.api, "POST", send, key, good).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{label}"
        );
    }
    let cases: [(&str, &[u8], u16, &str); 6] = [
        (send, b"not json", 400, "bad_json"),
        (send, b"[1]", 400, "bad_json"),
        (send, br#"{"text": "no type"}"#, 400, "bad_json"),
        ("/api/groups/bad%20name/send", good, 400, "invalid_group"),
        ("/api/channels/!bad/send", good, 400, "invalid_channel"),
        ("/api/nothing", b"", 404, "not_found"),
    ];
    for (path, body, status, code) in cases {
        let (got, answer) = http(s.api, "POST", path, Some(KEY), body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let big = format!(r#"{{"type": "x", "pad": "{}"}}"#, "x".repeat(2000));
    let (status, answer) = http(s.api, "POST", send, Some(KEY), big.as_bytes()).await;
    assert_eq!(status, 413, "{answer}");
    let (status, answer) = http(s.api, "GET", "/api/groups/g/history", Some(KEY), b"").await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (404, Some("history_off"))
    );
    // The document needs no key.
    let (status, doc) = http(s.api, "GET", "/api/openapi.json", None, b"").await;
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.0.3")));
    s.shutdown.cancel();
}

#[tokio::test]
async fn the_api_publishes_reads_history_and_disconnects() {
    let s = start(true, 10).await;
    let mut a = s.ws("/group/g/").await;
    let mut b = s.ws("/group/g/").await;
    eventually("members", || s.layer.stats().channels >= 3).await;
    let body = br#"{"type": "send_msg", "message": {"text": "from the api"}}"#;
    let (status, answer) = http(s.api, "POST", "/api/groups/g/send", Some(KEY), body).await;
    assert_eq!((status, answer), (202, json!({})));
    for ws in [&mut a, &mut b] {
        assert_eq!(ws.recv_text().await, "组内主动推送消息:from the api");
    }
    let (status, history) = http(
        s.api,
        "GET",
        "/api/groups/g/history?limit=5",
        Some(KEY),
        b"",
    )
    .await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["messages"][0]["offset"], 1);
    assert_eq!(
        history["messages"][0]["message"]["message"]["text"],
        "from the api"
    );
    assert_eq!(history["epoch"].as_str().unwrap().len(), 8);
    let (status, _) = http(
        s.api,
        "GET",
        "/api/groups/g/history?limit=x",
        Some(KEY),
        b"",
    )
    .await;
    assert_eq!(status, 400);
    // Disconnect the user of `a` (anonymous: its channel name, as presence shows it).
    let (_, presence) = http(s.api, "GET", "/api/groups/g/presence", Some(KEY), b"").await;
    let users: Vec<String> = presence["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(users.len(), 2);
    let (status, _) = http(
        s.api,
        "POST",
        &format!("/api/users/{}/disconnect", users[0]),
        Some(KEY),
        b"",
    )
    .await;
    assert_eq!(status, 202);
    let mut codes = Vec::new();
    for ws in [&mut a, &mut b] {
        if let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame))))) =
            tokio::time::timeout(
                Duration::from_secs(2),
                futures_util::StreamExt::next(&mut ws.0),
            )
            .await
        {
            codes.push(u16::from(frame.code));
        }
    }
    assert_eq!(codes, [4000], "exactly the one user's socket closed");
    s.shutdown.cancel();
}
