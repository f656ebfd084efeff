//! The Rust port and the real Python stack (channels 4.3.2, channels_redis 4.3.0, daphne) share
//! one `RedisPubSubChannelLayer` on the wire.
//!
//! Each test starts its own `redis-server`, and the Python side runs from the project venv
//! (`scripts/python-venv.sh`): `tests/python/layer_tool.py` acts as a Django process on the
//! layer, and daphne serves the seed tutorial's Django app. Messages cross in both directions
//! with every msgpack type Python produces, and the group chat works between a Django server
//! and a Rust replica, in clear and encrypted.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

#[path = "support/interop_data.rs"]
mod interop_data;
#[path = "support/python.rs"]
mod python;
use test_support::redis_server;
#[path = "support/replica.rs"]
mod replica;

use std::time::Duration;

use channels_layer::{
    ChannelLayer, ChannelName, GroupName, RedisPubSubChannelLayer, RedisPubSubConfig,
};
use interop_data::{
    RICH_JSON, TEXT, all_receive, all_silent, assert_rich_json, assert_same_message, recv,
    rich_message,
};
use python::{Daphne, PyReceiver, SeedLayer, layer_tool};
use redis::{PushInfo, PushKind};
use redis_server::RedisServer;
use replica::{Client, Replica, TIMEOUT, eventually};

/// An in-process Rust layer on `redis`, with `keys` as its encryption keys.
async fn rust_layer(redis: &RedisServer, keys: &[&str]) -> RedisPubSubChannelLayer {
    let mut config = RedisPubSubConfig::new(vec![redis.url()]);
    config.encryption_keys = keys.iter().map(|k| (*k).to_owned()).collect();
    RedisPubSubChannelLayer::connect(config).await.unwrap()
}

/// Waits until `PUBSUB NUMSUB channel` is `count`.
async fn wait_numsub(redis: &RedisServer, channel: &str, count: i64) {
    eventually(
        &format!("{count} subscribers of {channel}"),
        Duration::from_secs(5),
        || redis.numsub(&[channel]) == [count],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_group_send_reaches_rust_websocket_clients_with_every_field_intact() {
    let redis = RedisServer::start();
    let url = redis.url();
    let args = ["--redis-url", url.as_str()];
    let (r0, r1) = tokio::join!(
        Replica::start("r0", &args, &[]),
        Replica::start("r1", &args, &[]),
    );
    let mut c0 = r0.ws("/group/interop/").await;
    let mut c1 = r1.ws("/group/interop/").await;
    let layer = rust_layer(&redis, &[]).await;
    let mut inbox = layer.new_channel().await.unwrap();
    let group = GroupName::new("interop").unwrap();
    layer.group_add(&group, inbox.name()).await.unwrap();
    wait_numsub(&redis, "asgi__group__interop", 3).await;

    let reply = layer_tool(
        &SeedLayer::pubsub(&url),
        &["group-send", "interop", "--message", RICH_JSON],
    )
    .await;
    assert_eq!(reply, serde_json::json!({"ok": true}));

    all_receive(&mut [&mut c0, &mut c1], TEXT).await;
    assert_same_message(&recv(&mut inbox).await, &rich_message());
    all_silent(&mut [&mut c0, &mut c1]).await;
    assert!(inbox.try_recv().is_none(), "a second message arrived");
    layer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_group_send_reaches_python_receive_unchanged() {
    let redis = RedisServer::start();
    let layer = rust_layer(&redis, &[]).await;
    let python = SeedLayer::pubsub(&redis.url());
    // It prints its channel once Redis has confirmed its group subscription.
    let receiver = PyReceiver::start(&python, &["receive", "--group", "g", "--timeout", "5"]).await;

    let group = GroupName::new("g").unwrap();
    layer.group_send(&group, rich_message()).await.unwrap();

    assert_rich_json(&receiver.message_line().await);
    layer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_send_reaches_a_rust_channel() {
    let redis = RedisServer::start();
    let layer = rust_layer(&redis, &[]).await;
    let python = SeedLayer::pubsub(&redis.url());

    // Python to Rust: the Rust channel is covered by the layer's one pattern subscription.
    let mut inbox = layer.new_channel().await.unwrap();
    eventually("the layer's pattern subscription", TIMEOUT, || {
        redis.query::<i64>(redis::cmd("PUBSUB").arg("NUMPAT")) == 1
    })
    .await;
    let name = inbox.name().as_str().to_owned();
    let reply = layer_tool(&python, &["send", &name, "--message", RICH_JSON]).await;
    assert_eq!(reply, serde_json::json!({"ok": true}));
    assert_same_message(&recv(&mut inbox).await, &rich_message());

    // Rust to Python: a Python channel name is `asgispecific.<uuid4 hex>`, without `!`.
    let receiver = PyReceiver::start(&python, &["receive-channel", "--timeout", "5"]).await;
    let hex = receiver
        .channel
        .strip_prefix("asgispecific.")
        .unwrap_or_else(|| panic!("unexpected Python channel {}", receiver.channel));
    assert!(
        hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{hex}"
    );
    let channel = ChannelName::new(&receiver.channel).unwrap();
    layer.send(&channel, rich_message()).await.unwrap();
    assert_rich_json(&receiver.message_line().await);

    assert!(inbox.try_recv().is_none(), "a second message arrived");
    layer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_seed_app_and_rust_replica_share_a_group_chat() {
    let redis = RedisServer::start();
    let url = redis.url();
    let python = SeedLayer::pubsub(&url);
    let args = ["--redis-url", url.as_str()];
    let (daphne, replica) =
        tokio::join!(Daphne::start(&python), Replica::start("rust", &args, &[]));
    let mut django = Client::connect(&daphne.ws_url("/group/1/")).await;
    let mut rust = replica.ws("/group/1/").await;
    // The seed consumer joins the group only after accepting: wait for both processes.
    wait_numsub(&redis, "asgi__group__1", 2).await;

    django.send_text("来自Django").await;
    all_receive(&mut [&mut django, &mut rust], "来自Django").await;
    rust.send_text("来自Rust").await;
    all_receive(&mut [&mut django, &mut rust], "来自Rust").await;
    all_silent(&mut [&mut django, &mut rust]).await;
}

/// A plain Redis subscriber that sees the raw payloads published on one channel.
struct Sniffer {
    _connection: redis::aio::MultiplexedConnection,
    pushes: tokio::sync::mpsc::Receiver<PushInfo>,
}

impl Sniffer {
    async fn subscribe(redis: &RedisServer, channel: &str) -> Self {
        let (tx, pushes) = tokio::sync::mpsc::channel(64);
        // Pushes need RESP3; the sender must not block the connection, hence try_send.
        let client = redis::Client::open(format!("{}?protocol=resp3", redis.url())).unwrap();
        let config =
            redis::AsyncConnectionConfig::new().set_push_sender(move |push| tx.try_send(push));
        let mut connection = tokio::time::timeout(
            TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .expect("sniffer connection timed out")
        .unwrap();
        tokio::time::timeout(TIMEOUT, connection.subscribe(channel))
            .await
            .expect("SUBSCRIBE timed out")
            .unwrap();
        Self {
            _connection: connection,
            pushes,
        }
    }

    /// The payload of the next published message.
    async fn next_payload(&mut self) -> Vec<u8> {
        loop {
            let push = tokio::time::timeout(TIMEOUT, self.pushes.recv())
                .await
                .expect("the sniffer saw no message within the timeout")
                .expect("the sniffer connection closed");
            if push.kind != PushKind::Message {
                continue;
            }
            match push.data.as_slice() {
                [_, redis::Value::BulkString(payload)] => return payload.clone(),
                other => panic!("unexpected message push {other:?}"),
            }
        }
    }

    /// No further message was published.
    fn assert_no_more(&mut self) {
        while let Ok(push) = self.pushes.try_recv() {
            assert_ne!(push.kind, PushKind::Message, "unexpected {push:?}");
        }
    }
}

/// A Fernet token (base64 of version byte 0x80 and a timestamp) that does not show `plaintext`.
fn assert_encrypted(payload: &[u8], plaintext: &str) {
    assert!(
        payload.starts_with(b"gAAAAA"),
        "not a Fernet token: {:?}",
        String::from_utf8_lossy(payload)
    );
    let shows = |needle: &[u8]| payload.windows(needle.len()).any(|w| w == needle);
    assert!(!shows(plaintext.as_bytes()), "the plaintext is on the wire");
    assert!(!shows(b"send_msg"), "the message type is on the wire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_group_chat_between_django_and_rust() {
    let redis = RedisServer::start();
    let url = redis.url();
    let python = SeedLayer::pubsub(&url).with_keys("k1");
    let args = ["--redis-url", url.as_str()];
    let (daphne, replica, stranger) = tokio::join!(
        Daphne::start(&python),
        Replica::start("rust-k1", &args, &[("CHANNELS_ENCRYPTION_KEYS", "k1")]),
        Replica::start("rust-k2", &args, &[("CHANNELS_ENCRYPTION_KEYS", "k2")]),
    );
    let mut wire = Sniffer::subscribe(&redis, "asgi__group__1").await;
    // The stranger's layer, in process, to read its counters: it holds the other key too.
    let layer = rust_layer(&redis, &["k2"]).await;
    let inbox = layer.new_channel().await.unwrap();
    layer
        .group_add(&GroupName::new("1").unwrap(), inbox.name())
        .await
        .unwrap();
    let mut django = Client::connect(&daphne.ws_url("/group/1/")).await;
    let mut rust = replica.ws("/group/1/").await;
    let mut outsider = stranger.ws("/group/1/").await;
    // daphne, both replicas, the sniffer and the in-process layer.
    wait_numsub(&redis, "asgi__group__1", 5).await;

    django.send_text("来自Django").await;
    all_receive(&mut [&mut django, &mut rust], "来自Django").await;
    assert_encrypted(&wire.next_payload().await, "来自Django");
    rust.send_text("来自Rust").await;
    all_receive(&mut [&mut django, &mut rust], "来自Rust").await;
    assert_encrypted(&wire.next_payload().await, "来自Rust");

    // The replica with the other key dropped both as undecodable: its client got nothing.
    all_silent(&mut [&mut django, &mut rust, &mut outsider]).await;
    wire.assert_no_more();
    eventually("two undecodable messages", TIMEOUT, || {
        layer.stats().undecodable == 2
    })
    .await;
    assert_eq!(layer.stats().delivered, 0);
    layer.close().await.unwrap();
}

/// With history on, the seed's Django consumer still chats with Rust replicas: it gets the
/// payload channels_redis would publish, byte for byte (the position travels on a side channel
/// Python does not read). Django's own `group_send` reaches Rust members live, without a
/// position, and never enters the history, so it is never replayed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_and_a_rust_replica_with_history_share_a_group_chat() {
    let redis = RedisServer::start();
    let url = redis.url();
    let python = SeedLayer::pubsub(&url);
    let args = ["--redis-url", url.as_str(), "--history-size", "10"];
    let (daphne, replica) =
        tokio::join!(Daphne::start(&python), Replica::start("rust", &args, &[]));
    let mut django = Client::connect(&daphne.ws_url("/group/h/")).await;
    let mut rust = replica.ws("/group/h/").await;
    let mut recovering = replica.ws("/group/h/?recover=1").await;
    wait_numsub(&redis, "asgi__group__h", 2).await;
    let mut sniffer = Sniffer::subscribe(&redis, "asgi__group__h").await;

    rust.send_text("来自Rust").await;
    all_receive(&mut [&mut django, &mut rust], "来自Rust").await;
    let frame: serde_json::Value = serde_json::from_str(&recovering.recv_text().await).unwrap();
    assert_eq!(frame["text"], format!("{TEXT_PREFIX}来自Rust"));
    assert_eq!(frame["offset"], 1);
    // Byte for byte what a plain channels_redis publish of the tutorial's event carries.
    let receive = channels_layer::Map::from_iter([
        ("type", channels_layer::Value::from("websocket.receive")),
        ("text", channels_layer::Value::from("来自Rust")),
    ]);
    let event = channels_layer::Message::new("send_msg").with("message", receive);
    assert_eq!(sniffer.next_payload().await, event.to_msgpack());

    django.send_text("来自Django").await;
    all_receive(&mut [&mut django, &mut rust], "来自Django").await;
    let frame: serde_json::Value = serde_json::from_str(&recovering.recv_text().await).unwrap();
    assert_eq!(
        frame,
        serde_json::json!({"type": "message", "text": format!("{TEXT_PREFIX}来自Django")}),
        "Django's message is live only"
    );
    all_silent(&mut [&mut django, &mut rust]).await;

    // The history holds the Rust message once, and not Django's.
    let mut late = replica.ws("/group/h/?history=10").await;
    let frame: serde_json::Value = serde_json::from_str(&late.recv_text().await).unwrap();
    assert_eq!(
        (frame["offset"].as_u64(), frame["text"].as_str()),
        (Some(1), Some(&*format!("{TEXT_PREFIX}来自Rust")))
    );
    all_silent(&mut [&mut late]).await;
    let metrics = replica::metrics(replica.port).await;
    assert_eq!(metrics["channels_layer_unpositioned_total"], 1.0);
}

const TEXT_PREFIX: &str = "组内主动推送消息:";
