//! The Rust port and the real Python stack (channels 4.3.2, channels_redis 4.3.0, daphne) share
//! one `RedisChannelLayer` (channels_redis core: sorted sets) on the wire.
//!
//! The core-layer twin of `interop.rs`: each test starts its own `redis-server`; the Python side
//! runs from the project venv with `SEED_LAYER=core` (`tests/python/layer_tool.py` as a Django
//! process on the layer, daphne serving the seed's Django app with its production layer), and
//! the Rust replicas run with `--layer redis-core`. Messages cross in both directions with every
//! msgpack type Python produces, and the group chat works between Django and Rust, in clear and
//! encrypted.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

#[path = "support/interop_data.rs"]
mod interop_data;
#[path = "support/python.rs"]
mod python;
use test_support::redis_server;
#[path = "support/replica.rs"]
mod replica;

use std::time::Duration;

use channels_layer::redis::shard::consistent_hash;
use channels_layer::{ChannelLayer, ChannelName, GroupName, RedisChannelLayer, RedisCoreConfig};
use interop_data::{
    RICH_JSON, TEXT, all_receive, all_silent, assert_rich_json, assert_same_message, recv,
    rich_message,
};
use python::{Daphne, PyReceiver, SeedLayer, layer_tool};
use redis_server::RedisServer;
use replica::{Client, Replica, eventually};

/// An in-process Rust core layer on `redis` (prefix `asgi`), with `keys` as encryption keys.
async fn rust_layer(redis: &RedisServer, keys: &[&str]) -> RedisChannelLayer {
    let mut config = RedisCoreConfig::new(vec![redis.url()]);
    config.encryption_keys = keys.iter().map(|k| (*k).to_owned()).collect();
    let layer = RedisChannelLayer::connect(config).await.unwrap();
    assert!(layer.is_ready());
    layer
}

/// `--layer redis-core --redis-url <url>`
fn core_args(url: &str) -> [&str; 4] {
    ["--layer", "redis-core", "--redis-url", url]
}

/// Waits until the group's sorted set `asgi:group:{group}` has `count` members: every process
/// has joined (consumers join only after accepting the socket).
async fn wait_members(redis: &RedisServer, group: &str, count: i64) {
    let key = format!("asgi:group:{group}");
    eventually(
        &format!("{count} members in {key}"),
        Duration::from_secs(5),
        || redis.query::<i64>(redis::cmd("ZCARD").arg(&key)) == count,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_group_send_reaches_rust_websocket_clients_with_every_field_intact() {
    let redis = RedisServer::start();
    let url = redis.url();
    let args = core_args(&url);
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
    wait_members(&redis, "interop", 3).await;

    let reply = layer_tool(
        &SeedLayer::core(&url),
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
    let python = SeedLayer::core(&redis.url());
    // The core layer's group_add is one ZADD: the channel is in the group once printed.
    let receiver = PyReceiver::start(&python, &["receive", "--group", "g", "--timeout", "5"]).await;
    wait_members(&redis, "g", 1).await;

    let group = GroupName::new("g").unwrap();
    layer.group_send(&group, rich_message()).await.unwrap();

    assert_rich_json(&receiver.message_line().await);
    // The Python receiver left the group on its way out.
    wait_members(&redis, "g", 0).await;
    layer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_send_reaches_a_rust_channel_and_back() {
    let redis = RedisServer::start();
    let layer = rust_layer(&redis, &[]).await;
    let python = SeedLayer::core(&redis.url());

    // Python to Rust: ZADD on our inbox key, found by the one receive loop.
    let mut inbox = layer.new_channel().await.unwrap();
    let name = inbox.name().as_str().to_owned();
    let reply = layer_tool(&python, &["send", &name, "--message", RICH_JSON]).await;
    assert_eq!(reply, serde_json::json!({"ok": true}));
    assert_same_message(&recv(&mut inbox).await, &rich_message());

    // Rust to Python: a Python core channel is `specific.<uuid4 hex>!<uuid4 hex>`.
    let receiver = PyReceiver::start(&python, &["receive-channel", "--timeout", "5"]).await;
    let (head, id) = receiver
        .channel
        .strip_prefix("specific.")
        .and_then(|rest| rest.split_once('!'))
        .unwrap_or_else(|| panic!("unexpected Python channel {}", receiver.channel));
    assert!(
        [head, id]
            .iter()
            .all(|h| h.len() == 32 && h.chars().all(|c| c.is_ascii_hexdigit())),
        "{}",
        receiver.channel
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
    let python = SeedLayer::core(&url);
    let args = core_args(&url);
    let (daphne, replica) =
        tokio::join!(Daphne::start(&python), Replica::start("rust", &args, &[]));
    let mut django = Client::connect(&daphne.ws_url("/group/1/")).await;
    let mut rust = replica.ws("/group/1/").await;
    // The seed consumer joins the group only after accepting: wait for both processes.
    wait_members(&redis, "1", 2).await;

    django.send_text("来自Django").await;
    all_receive(&mut [&mut django, &mut rust], "来自Django").await;
    rust.send_text("来自Rust").await;
    all_receive(&mut [&mut django, &mut rust], "来自Rust").await;
    all_silent(&mut [&mut django, &mut rust]).await;

    // Leaving works both ways: the sockets' channels leave the group's sorted set.
    django.close().await;
    rust.close().await;
    wait_members(&redis, "1", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_group_chat_between_django_and_rust() {
    let redis = RedisServer::start();
    let url = redis.url();
    let python = SeedLayer::core(&url).with_keys("k1");
    let args = core_args(&url);
    let (daphne, replica, stranger) = tokio::join!(
        Daphne::start(&python),
        Replica::start("rust-k1", &args, &[("CHANNELS_ENCRYPTION_KEYS", "k1")]),
        Replica::start("rust-k2", &args, &[("CHANNELS_ENCRYPTION_KEYS", "k2")]),
    );
    let mut django = Client::connect(&daphne.ws_url("/group/1/")).await;
    let mut rust = replica.ws("/group/1/").await;
    let mut outsider = stranger.ws("/group/1/").await;
    wait_members(&redis, "1", 3).await;

    django.send_text("来自Django").await;
    all_receive(&mut [&mut django, &mut rust], "来自Django").await;
    rust.send_text("来自Rust").await;
    all_receive(&mut [&mut django, &mut rust], "来自Rust").await;
    // The replica with the other key could not decrypt either: its client got nothing.
    all_silent(&mut [&mut django, &mut rust, &mut outsider]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_shards_rust_writes_where_python_reads() {
    let one = RedisServer::start();
    let two = RedisServer::start();
    let mut config = RedisCoreConfig::new(vec![one.url(), two.url()]);
    config.prefix = "asgi".to_owned();
    let layer = RedisChannelLayer::connect(config).await.unwrap();
    assert!(layer.is_ready());
    let python = SeedLayer::core(&format!("{},{}", one.url(), two.url()));

    // Rust group_send to a Python member: the group key and the member's key are found on the
    // shards Python hashes them to.
    let receiver = PyReceiver::start(&python, &["receive", "--group", "g", "--timeout", "5"]).await;
    let group = GroupName::new("g").unwrap();
    layer.group_send(&group, rich_message()).await.unwrap();
    assert_rich_json(&receiver.message_line().await);

    // Rust send to a Python channel: stored on the hash of its non-local part, where Python's
    // receive looks (Python's own send would hash the full name and miss, spec §3.9).
    // Take a Python channel whose two hashes differ, so that the wrong one would fail.
    let mut attempts = 0;
    let receiver = loop {
        let receiver = PyReceiver::start(&python, &["receive-channel", "--timeout", "5"]).await;
        let name = receiver.channel.as_str();
        let non_local = &name[..=name.find('!').unwrap()];
        if consistent_hash(name, 2) != consistent_hash(non_local, 2) {
            break receiver;
        }
        attempts += 1;
        assert!(attempts < 20, "20 Python channels hashed alike both ways");
    };
    let channel = ChannelName::new(&receiver.channel).unwrap();
    layer.send(&channel, rich_message()).await.unwrap();
    assert_rich_json(&receiver.message_line().await);

    // Python group_send to a Rust member.
    let mut inbox = layer.new_channel().await.unwrap();
    layer.group_add(&group, inbox.name()).await.unwrap();
    let reply = layer_tool(&python, &["group-send", "g", "--message", RICH_JSON]).await;
    assert_eq!(reply, serde_json::json!({"ok": true}));
    assert_same_message(&recv(&mut inbox).await, &rich_message());
    layer.close().await.unwrap();
}

/// A Django side that trims group members after a short `group_expiry` (channels_redis'
/// `group_send` drops members older than its own setting): with the same `--group-expiry`, the
/// Rust replica re-adds its live members well within it, so Django's `group_send` still reaches
/// them three expiries later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_with_a_short_group_expiry_keeps_reaching_rust_members() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut args = core_args(&url).to_vec();
    args.extend(["--group-expiry", "5"]);
    let replica = Replica::start("r0", &args, &[]).await;
    let mut client = replica.ws("/group/short/").await;
    wait_members(&redis, "short", 1).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let django = SeedLayer::core(&url).with_group_expiry(5);
    let message =
        r#"{"type": "send_msg", "message": {"type": "websocket.receive", "text": "still here"}}"#;
    layer_tool(&django, &["group-send", "short", "--message", message]).await;
    assert_eq!(client.recv_text().await, "组内主动推送消息:still here");
    // Without the refresh the member would be older than 5 s by now and trimmed away.
    wait_members(&redis, "short", 1).await;
}

/// With history on (one Redis), the seed's Django consumer still reads what a Rust replica
/// writes: the position sits in the 12 prefix bytes that channels_redis drops unread. Django's
/// `group_send` reaches the Rust members live, without a position, and stays out of history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_and_a_rust_replica_with_history_share_a_group_chat() {
    let redis = RedisServer::start();
    let url = redis.url();
    let python = SeedLayer::core(&url);
    let mut args = core_args(&url).to_vec();
    args.extend(["--history-size", "10"]);
    let (daphne, replica) =
        tokio::join!(Daphne::start(&python), Replica::start("rust", &args, &[]));
    let mut django = Client::connect(&daphne.ws_url("/group/h/")).await;
    let mut rust = replica.ws("/group/h/").await;
    let mut recovering = replica.ws("/group/h/?recover=1").await;
    wait_members(&redis, "h", 3).await;

    rust.send_text("来自Rust").await;
    all_receive(&mut [&mut django, &mut rust], "来自Rust").await;
    let frame: serde_json::Value = serde_json::from_str(&recovering.recv_text().await).unwrap();
    assert_eq!(frame["text"], "组内主动推送消息:来自Rust");
    assert_eq!(frame["offset"], 1);

    django.send_text("来自Django").await;
    all_receive(&mut [&mut django, &mut rust], "来自Django").await;
    let frame: serde_json::Value = serde_json::from_str(&recovering.recv_text().await).unwrap();
    assert_eq!(
        frame,
        serde_json::json!({"type": "message", "text": "组内主动推送消息:来自Django"})
    );
    all_silent(&mut [&mut django, &mut rust]).await;

    let mut late = replica.ws("/group/h/?history=10").await;
    let frame: serde_json::Value = serde_json::from_str(&late.recv_text().await).unwrap();
    assert_eq!(frame["offset"], 1);
    assert_eq!(frame["text"], "组内主动推送消息:来自Rust");
    all_silent(&mut [&mut late]).await;
}
