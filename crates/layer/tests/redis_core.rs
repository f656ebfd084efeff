//! The conformance suite, and the core layer's own behaviour (keys, sorted-set contents,
//! sharding, capacity per key, membership clean-up, outages), against a real redis-server.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use channels_layer::redis::fernet::Fernet;
use channels_layer::redis::shard::consistent_hash;
use channels_layer::testing::{LayerFuture, assert_empty, burst, recv};
use channels_layer::{
    ChannelLayer, ChannelName, GroupName, LayerConfig, LayerError, Message, RedisChannelLayer,
    RedisCoreConfig, Value,
};
use test_support::eventually;
use test_support::redis_server::{RedisServer, server, unique_prefix};

fn make(local: LayerConfig) -> LayerFuture {
    let mut config = RedisCoreConfig::new(vec![server().url()]);
    config.prefix = unique_prefix();
    config.local = local;
    // The suite checks that membership ends group_expiry after the latest group_add, as in
    // Python; refreshing deliberately extends that and has its own test below.
    config.refresh_memberships = false;
    Box::pin(async move {
        Arc::new(RedisChannelLayer::connect(config).await.unwrap()) as Arc<dyn ChannelLayer>
    })
}

channels_layer::conformance_suite!(make);

// ===== the core layer's own behaviour =====

fn config(hosts: Vec<String>, prefix: &str) -> RedisCoreConfig {
    let mut config = RedisCoreConfig::new(hosts);
    config.prefix = prefix.to_owned();
    config
}

async fn layer_with(config: RedisCoreConfig) -> RedisChannelLayer {
    let layer = RedisChannelLayer::connect(config).await.unwrap();
    assert!(layer.is_ready(), "the layer connected within its timeout");
    layer
}

/// Two replicas of one deployment on `server`: the same prefix, each its own client prefix.
async fn two_replicas(server: &RedisServer) -> (RedisChannelLayer, RedisChannelLayer, String) {
    let prefix = unique_prefix();
    let a = layer_with(config(vec![server.url()], &prefix)).await;
    let b = layer_with(config(vec![server.url()], &prefix)).await;
    (a, b, prefix)
}

fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

fn channel(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

fn zrange(server: &RedisServer, key: &str) -> Vec<Vec<u8>> {
    server.query(redis::cmd("ZRANGE").arg(key).arg(0).arg(-1))
}

fn zrange_strings(server: &RedisServer, key: &str) -> Vec<String> {
    let mut members: Vec<String> = zrange(server, key)
        .into_iter()
        .map(|m| String::from_utf8(m).unwrap())
        .collect();
    members.sort();
    members
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// What Python's serializer stores: 12 random bytes, then msgpack.
fn python_payload(msg: &Message) -> Vec<u8> {
    let mut payload = b"\xc5\xee\xd7\x08\xd8\xa0\xdd\xbd\x5f\xd2\xf6\x4b".to_vec();
    payload.extend(msg.to_msgpack());
    payload
}

fn zadd(server: &RedisServer, key: &str, score: f64, member: &[u8]) {
    let _: i64 = server.query(redis::cmd("ZADD").arg(key).arg(score).arg(member));
}

#[tokio::test]
async fn channel_names_and_inbox_key_are_pythons() {
    let prefix = unique_prefix();
    let layer = layer_with(config(vec![server().url()], &prefix)).await;
    let client = layer.client_prefix().to_owned();
    assert_eq!(client.len(), 32);
    assert!(client.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(layer.inbox_key(), format!("{prefix}specific.{client}!"));
    let inbox = layer.new_channel().await.unwrap();
    let name = inbox.name().as_str();
    assert_eq!(name.len(), 74, "{name}");
    let (head, id) = name.split_once('!').unwrap();
    assert_eq!(head, format!("specific.{client}"));
    assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()));
    let other = RedisChannelLayer::connect(config(vec![server().url()], &prefix))
        .await
        .unwrap();
    assert_ne!(other.client_prefix(), client, "random per layer instance");
}

#[tokio::test]
async fn groups_and_messages_in_redis_are_what_python_writes() {
    let redis = server();
    let prefix = unique_prefix();
    let layer = layer_with(config(vec![redis.url()], &prefix)).await;
    let g = group("g1");
    let inbox = layer.new_channel().await.unwrap();
    let before = unix_now();
    layer.group_add(&g, inbox.name()).await.unwrap();
    let group_key = format!("{prefix}:group:g1");
    assert_eq!(zrange_strings(redis, &group_key), [inbox.name().as_str()]);
    let score: f64 = redis.query(
        redis::cmd("ZSCORE")
            .arg(&group_key)
            .arg(inbox.name().as_str()),
    );
    assert!(
        score >= before - 1.0 && score <= unix_now() + 1.0,
        "{score}"
    );
    let ttl: i64 = redis.query(redis::cmd("TTL").arg(&group_key));
    assert!((86_300..=86_400).contains(&ttl), "group_expiry TTL {ttl}");

    // A member of another process that is not reading: its key keeps what we write.
    let foreign = "specific.3d79e405545f4b83876955816d75a561!3775267ba03349dea0bccf0740306bc9";
    zadd(redis, &group_key, unix_now(), foreign.as_bytes());
    let msg = Message::new("chat.message").with("text", "hi");
    layer.group_send(&g, msg.clone()).await.unwrap();
    let key = format!("{prefix}specific.3d79e405545f4b83876955816d75a561!");
    let stored = zrange(redis, &key);
    assert_eq!(stored.len(), 1);
    // Spec §4.1: 12 random bytes, map(3), ..., "__asgi_channel__", array(1), str8(74).
    let body = &stored[0][12..];
    let mut expected = b"\x83\xa4type\xacchat.message\xa4text\xa2hi".to_vec();
    expected.extend(b"\xb0__asgi_channel__\x91\xd9\x4a");
    expected.extend(foreign.as_bytes());
    assert_eq!(body, &expected[..]);
    let ttl: i64 = redis.query(redis::cmd("TTL").arg(&key));
    assert!((55..=60).contains(&ttl), "expiry TTL {ttl}");

    // A direct send puts the name as a bare str.
    layer.send(&channel(foreign), msg).await.unwrap();
    let stored = zrange(redis, &key);
    assert_eq!(stored.len(), 2);
    // After the 44 bytes of the map(3) header, type, text and the key: str8 or array.
    let direct: Vec<_> = stored.iter().filter(|m| m[12 + 44] == 0xd9).collect();
    assert_eq!(direct.len(), 1, "one member with a str __asgi_channel__");
    // Scores are Unix times with a fraction, like Python's time.time().
    let scored: Vec<(Vec<u8>, f64)> = redis.query(
        redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES"),
    );
    for (_, score) in scored {
        assert!(
            (score - unix_now()).abs() < 5.0 && score.fract() != 0.0,
            "{score}"
        );
    }

    // Our own inbox key is popped at once by the receive loop.
    assert!(zrange(redis, layer.inbox_key()).is_empty());
}

#[tokio::test]
async fn two_replicas_exchange_group_messages_one_copy_per_replica() {
    let redis = server();
    let (a, b, prefix) = two_replicas(redis).await;
    let g = group("room");
    let mut inboxes = Vec::new();
    for layer in [&a, &a, &a, &b, &b] {
        let inbox = layer.new_channel().await.unwrap();
        layer.group_add(&g, inbox.name()).await.unwrap();
        inboxes.push(inbox);
    }
    assert_eq!(zrange(redis, &format!("{prefix}:group:room")).len(), 5);
    b.group_send(&g, Message::new("chat.message").with("text", "from b"))
        .await
        .unwrap();
    a.group_send(&g, Message::new("chat.message").with("text", "from a"))
        .await
        .unwrap();
    for inbox in &mut inboxes {
        assert_eq!(
            recv(inbox).await.get("text").unwrap().as_str(),
            Some("from b")
        );
        assert_eq!(
            recv(inbox).await.get("text").unwrap().as_str(),
            Some("from a")
        );
        assert_empty(inbox).await;
    }
    // Two group sends, one message per replica key each: the loop popped 2 per replica.
    assert_eq!(a.stats().delivered, 6);
    assert_eq!(b.stats().delivered, 4);
    // A direct send across replicas.
    a.send(inboxes[4].name(), Message::new("direct"))
        .await
        .unwrap();
    assert_eq!(recv(&mut inboxes[4]).await.message_type(), Some("direct"));
}

#[tokio::test]
async fn group_send_checks_capacity_per_key() {
    let redis = server();
    let prefix = unique_prefix();
    let mut c = config(vec![redis.url()], &prefix);
    c.local.capacity = 2;
    let layer = layer_with(c).await;
    let g = group("capped");
    let group_key = format!("{prefix}:group:capped");
    // Two members share the key of process f1; process f2's key is full.
    for member in ["specific.f1!a", "specific.f1!b", "specific.f2!c"] {
        zadd(redis, &group_key, unix_now(), member.as_bytes());
    }
    for n in 0..2 {
        layer
            .send(
                &channel("specific.f2!c"),
                Message::new("fill").with("n", i64::from(n)),
            )
            .await
            .unwrap();
    }
    let err = layer
        .send(&channel("specific.f2!c"), Message::new("fill"))
        .await;
    assert!(matches!(err, Err(LayerError::ChannelFull(_))), "{err:?}");
    let before = layer.stats().dropped_full;

    layer.group_send(&g, Message::new("g")).await.unwrap();
    let f1 = zrange(redis, &format!("{prefix}specific.f1!"));
    assert_eq!(f1.len(), 1, "one copy for the two members sharing the key");
    let copy = Message::from_msgpack(&f1[0][12..]).unwrap();
    assert_eq!(
        copy.get("__asgi_channel__"),
        Some(&Value::List(vec![
            "specific.f1!a".into(),
            "specific.f1!b".into()
        ]))
    );
    assert_eq!(zrange(redis, &format!("{prefix}specific.f2!")).len(), 2);
    assert_eq!(
        layer.stats().dropped_full,
        before + 1,
        "c missed it, counted"
    );
}

#[tokio::test]
async fn memberships_leave_redis_when_inboxes_drop_and_on_close() {
    let redis = server();
    let prefix = unique_prefix();
    let layer = layer_with(config(vec![redis.url()], &prefix)).await;
    let key = format!("{prefix}:group:leaving");
    let g = group("leaving");
    let a = layer.new_channel().await.unwrap();
    let b = layer.new_channel().await.unwrap();
    layer.group_add(&g, a.name()).await.unwrap();
    layer.group_add(&g, b.name()).await.unwrap();
    layer.group_add(&group("other"), b.name()).await.unwrap();
    assert_eq!(zrange(redis, &key).len(), 2);
    let b_name = b.name().as_str().to_owned();
    drop(a);
    eventually("a left", || {
        zrange_strings(redis, &key) == [b_name.as_str()]
    })
    .await;
    layer
        .group_discard(&group("other"), &channel(&b_name))
        .await
        .unwrap();
    assert!(zrange(redis, &format!("{prefix}:group:other")).is_empty());
    layer.close().await.unwrap();
    assert!(zrange(redis, &key).is_empty(), "close leaves every group");
    drop(b);
}

#[tokio::test]
async fn flush_deletes_every_key_under_the_prefix_and_nothing_else() {
    let redis = server();
    let prefix = unique_prefix();
    let layer = layer_with(config(vec![redis.url()], &prefix)).await;
    let inbox = layer.new_channel().await.unwrap();
    layer.group_add(&group("g"), inbox.name()).await.unwrap();
    layer
        .send(&channel("specific.other!x"), Message::new("m"))
        .await
        .unwrap();
    // 2500 more keys, so that SCAN needs several rounds; and a key of another prefix.
    let () = redis.query(
        redis::cmd("EVAL")
            .arg("for i = 1, 2500 do redis.call('SET', ARGV[1] .. i, 1) end")
            .arg(0)
            .arg(format!("{prefix}junk")),
    );
    let () = redis.query(redis::cmd("SET").arg(format!("x{prefix}")).arg(1));
    let count = |pattern: &str| {
        let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg(pattern));
        keys.len()
    };
    assert_eq!(count(&format!("{prefix}*")), 2502);
    layer.flush().await.unwrap();
    assert_eq!(count(&format!("{prefix}*")), 0);
    assert_eq!(
        count(&format!("x{prefix}")),
        1,
        "another prefix's key stays"
    );
    assert_eq!(layer.stats().channels, 0);
}

#[tokio::test]
async fn live_memberships_are_refreshed_past_group_expiry() {
    let redis = server();
    let prefix = unique_prefix();
    let mut c = config(vec![redis.url()], &prefix);
    c.local.group_expiry = Duration::from_millis(600);
    let layer = layer_with(c).await;
    let g = group("long-lived");
    let mut inbox = layer.new_channel().await.unwrap();
    layer.group_add(&g, inbox.name()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    layer
        .group_send(&g, Message::new("still.here"))
        .await
        .unwrap();
    assert_eq!(recv(&mut inbox).await.message_type(), Some("still.here"));
}

#[tokio::test]
async fn general_channels_are_read_from_redis() {
    let redis = server();
    let (a, b, prefix) = two_replicas(redis).await;
    let name = channel("worker-task");
    let mut worker = a.open_channel(&name).await.unwrap();
    // From another replica, and as Python writes it (no __asgi_channel__).
    b.send(&name, Message::new("do.it").with("n", 1_i64))
        .await
        .unwrap();
    assert_eq!(recv(&mut worker).await.get("n").unwrap().as_i64(), Some(1));
    let payload = python_payload(&Message::new("do.it").with("n", 2_i64));
    zadd(redis, &format!("{prefix}worker-task"), unix_now(), &payload);
    assert_eq!(recv(&mut worker).await.get("n").unwrap().as_i64(), Some(2));
    // A group with a general channel in it.
    let g = group("workers");
    a.group_add(&g, &name).await.unwrap();
    b.group_send(&g, Message::new("do.it").with("n", 3_i64))
        .await
        .unwrap();
    let got = recv(&mut worker).await;
    assert_eq!(got.get("n").unwrap().as_i64(), Some(3));
    assert!(got.get("__asgi_channel__").is_none());
    drop(worker);
    // Nobody reads the key any more: messages stay for another reader.
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.send(&name, Message::new("later")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(zrange(redis, &format!("{prefix}worker-task")).len(), 1);
}

#[tokio::test]
async fn keys_land_on_the_shard_the_hash_names() {
    let one = RedisServer::start();
    let two = RedisServer::start();
    let servers = [&one, &two];
    let prefix = unique_prefix();
    let hosts = vec![one.url(), two.url()];
    // Replicas until two have their inbox keys on different shards.
    let mut layers: Vec<RedisChannelLayer> = Vec::new();
    while layers.len() < 2 {
        let layer = layer_with(config(hosts.clone(), &prefix)).await;
        let shard = consistent_hash(&format!("specific.{}!", layer.client_prefix()), 2);
        if layers
            .iter()
            .all(|l| consistent_hash(&format!("specific.{}!", l.client_prefix()), 2) != shard)
        {
            layers.push(layer);
        }
    }
    let mut inboxes = Vec::new();
    let words = ["lobby", "kitchen", "garden", "attic", "cellar", "porch"];
    let mut seen = [0, 0];
    for word in words {
        let g = group(word);
        let shard = consistent_hash(word, 2);
        seen[shard] += 1;
        for layer in &layers {
            let inbox = layer.new_channel().await.unwrap();
            layer.group_add(&g, inbox.name()).await.unwrap();
            inboxes.push(inbox);
        }
        let key = format!("{prefix}:group:{word}");
        assert_eq!(
            zrange(servers[shard], &key).len(),
            2,
            "{key} on shard {shard}"
        );
        assert!(zrange(servers[1 - shard], &key).is_empty());
        layers[0].group_send(&g, Message::new(word)).await.unwrap();
        let n = inboxes.len();
        for inbox in &mut inboxes[n - 2..] {
            assert_eq!(recv(inbox).await.message_type(), Some(word));
        }
    }
    assert!(seen[0] > 0 && seen[1] > 0, "both shards used: {seen:?}");

    // A send to another process's channel lands where readers look: the hash of the non-local
    // part, not of the full name (Python's send bug, spec §3.9).
    let (name, right) = (0..)
        .map(|i| format!("specific.proc{i}!x"))
        .map(|n| (consistent_hash(&n, 2), n))
        .find_map(|(full, n)| {
            let right = consistent_hash(&n[..=n.find('!').unwrap()], 2);
            (full != right).then_some((n, right))
        })
        .unwrap();
    layers[0]
        .send(&channel(&name), Message::new("m"))
        .await
        .unwrap();
    let key = format!("{prefix}{}", &name[..=name.find('!').unwrap()]);
    assert_eq!(zrange(servers[right], &key).len(), 1);
    assert!(zrange(servers[1 - right], &key).is_empty());
    // And between replicas on different shards.
    layers[1]
        .send(inboxes[0].name(), Message::new("across"))
        .await
        .unwrap();
    assert_eq!(recv(&mut inboxes[0]).await.message_type(), Some("across"));
}

#[tokio::test]
async fn undecodable_payloads_are_dropped_and_counted() {
    let redis = server();
    let layer = layer_with(config(vec![redis.url()], &unique_prefix())).await;
    let mut inbox = layer.new_channel().await.unwrap();
    let key = layer.inbox_key().to_owned();
    let now = unix_now();
    let garbage: [&[u8]; 5] = [
        b"short",
        b"twelve bytes\xc1 not msgpack",
        b"twelve bytes\x81\x01\x02",      // an int map key
        b"twelve bytes\x81\xa4type\xa1x", // no __asgi_channel__
        b"twelve bytes\x82\xa4type\xa1x\xb0__asgi_channel__\x01", // not a str or list
    ];
    for payload in garbage {
        zadd(redis, &key, now, payload);
    }
    let msg = Message::new("chat.message").with("text", "hi");
    let routed = msg.clone().with("__asgi_channel__", inbox.name().as_str());
    zadd(redis, &key, now + 0.001, &python_payload(&routed));
    assert_eq!(recv(&mut inbox).await, msg);
    assert_eq!(layer.stats().undecodable, 5);
    assert_empty(&mut inbox).await;
    // Old messages are expired, not delivered.
    zadd(redis, &key, now - 120.0, &python_payload(&routed));
    assert_empty(&mut inbox).await;
    assert_eq!(layer.stats().expired, 1);
}

#[tokio::test]
async fn encrypted_messages_are_opaque_and_older_tokens_than_70_s_are_refused() {
    let redis = server();
    let prefix = unique_prefix();
    let mut c = config(vec![redis.url()], &prefix);
    c.encryption_keys = vec!["new-key".to_owned(), "old-key".to_owned()];
    let layer = layer_with(c).await;
    let mut inbox = layer.new_channel().await.unwrap();
    // Written with the old key, as a not yet rotated Python process does.
    let old = Fernet::new(["old-key"]).unwrap();
    let msg = Message::new("secret").with("text", "plaintext-marker");
    let routed = msg.clone().with("__asgi_channel__", inbox.name().as_str());
    let token = |age: u64| {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - age;
        let mut payload = vec![7; 12];
        payload.extend(old.encrypt_at(&routed.to_msgpack(), at, [9; 16]));
        payload
    };
    zadd(redis, layer.inbox_key(), unix_now(), &token(50));
    assert_eq!(
        recv(&mut inbox).await,
        msg,
        "a 50 s old token is within 70 s"
    );
    zadd(redis, layer.inbox_key(), unix_now(), &token(80));
    assert_empty(&mut inbox).await;
    assert_eq!(layer.stats().undecodable, 1, "an 80 s old token is refused");

    // What we write is a token too, behind the 12 bytes.
    let foreign = "specific.f!x";
    layer.send(&channel(foreign), msg).await.unwrap();
    let stored = zrange(redis, &format!("{prefix}specific.f!"));
    assert!(stored[0][12..].starts_with(b"gAAAAA"));
    assert!(!stored[0].windows(16).any(|w| w == b"plaintext-marker"));
}

#[tokio::test]
async fn a_message_left_in_flight_is_delivered_after_a_reconnect() {
    let redis = RedisServer::start();
    let layer = layer_with(config(vec![redis.url()], &unique_prefix())).await;
    let mut inbox = layer.new_channel().await.unwrap();
    // Delivered messages leave no backup behind.
    layer
        .send(inbox.name(), Message::new("warm-up"))
        .await
        .unwrap();
    recv(&mut inbox).await;
    let inflight = format!("{}$inflight", layer.inbox_key());
    // As if a pop moved it to the backup and its reply was lost.
    let routed = Message::new("in.flight").with("__asgi_channel__", inbox.name().as_str());
    zadd(&redis, &inflight, unix_now(), &python_payload(&routed));
    let killed: i64 = redis.query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal"));
    assert!(killed >= 1);
    assert_eq!(recv(&mut inbox).await.message_type(), Some("in.flight"));
    assert_empty(&mut inbox).await;
    // The next batch acknowledges it.
    let other = layer.new_channel().await.unwrap();
    let routed = Message::new("next").with("__asgi_channel__", other.name().as_str());
    zadd(
        &redis,
        layer.inbox_key(),
        unix_now(),
        &python_payload(&routed),
    );
    eventually("the backup acknowledged", || {
        redis.query::<i64>(redis::cmd("EXISTS").arg(&inflight)) == 0
    })
    .await;
    assert!(layer.stats().disconnects >= 1);
}

#[tokio::test]
async fn an_outage_fails_fast_and_delivery_resumes_with_memberships_restored() {
    let mut redis = RedisServer::start();
    let (a, b, _) = two_replicas(&redis).await;
    let g = group("survivor");
    let mut on_a = a.new_channel().await.unwrap();
    let mut on_b = b.new_channel().await.unwrap();
    a.group_add(&g, on_a.name()).await.unwrap();
    b.group_add(&g, on_b.name()).await.unwrap();

    redis.stop();
    let started = Instant::now();
    let err = a.group_send(&g, Message::new("lost")).await.unwrap_err();
    let failed = started.elapsed();
    assert!(failed < Duration::from_millis(1500), "took {failed:?}");
    assert!(matches!(err, LayerError::Unavailable { .. }), "{err}");
    let err = a.send(on_b.name(), Message::new("lost")).await.unwrap_err();
    assert!(matches!(err, LayerError::Unavailable { .. }), "{err}");
    eventually("a not ready", || !a.is_ready()).await;

    // The restarted server is empty: the replicas write their memberships again.
    redis.restart();
    let back = Instant::now();
    eventually("a ready", || a.is_ready()).await;
    eventually("b ready", || b.is_ready()).await;
    let recovered = back.elapsed();
    println!("core layer recovered {recovered:?} after redis came back");
    assert!(
        recovered < Duration::from_secs(3),
        "recovery took {recovered:?}"
    );
    a.group_send(&g, Message::new("after")).await.unwrap();
    for inbox in [&mut on_a, &mut on_b] {
        assert_eq!(recv(inbox).await.message_type(), Some("after"));
        assert_empty(inbox).await;
    }
    assert!(a.stats().disconnects >= 1 && a.stats().publish_errors >= 1);
}

/// Review defect 4, from Redis: a message over the receiving replica's limit (here sent by a
/// replica without one) is dropped once, counted, and the next message still arrives.
#[tokio::test]
async fn an_oversized_payload_from_redis_is_dropped_and_counted() {
    let redis = server();
    let prefix = unique_prefix();
    let mut limited = config(vec![redis.url()], &prefix);
    limited.local.max_message_size = 1000;
    let limited = layer_with(limited).await;
    let open = layer_with(config(vec![redis.url()], &prefix)).await;
    let g = group("oversized");
    let mut inbox = limited.new_channel().await.unwrap();
    limited.group_add(&g, inbox.name()).await.unwrap();
    open.group_send(&g, Message::new("big").with("text", "x".repeat(100_000)))
        .await
        .unwrap();
    open.group_send(&g, Message::new("small")).await.unwrap();
    assert_eq!(recv(&mut inbox).await.message_type(), Some("small"));
    assert_eq!(limited.stats().oversized, 1);
    assert_empty(&mut inbox).await;
}

/// History with the core layer takes one Redis host: storing and writing members' keys are one
/// script on one Redis. Several hosts are refused with a message that says what to do.
#[tokio::test]
async fn history_on_several_core_hosts_is_refused() {
    let url = server().url();
    let mut config = config(vec![url.clone(), url], &unique_prefix());
    config.local.history_size = 10;
    let error = RedisChannelLayer::connect(config).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("single Redis host") && text.contains("redis-pubsub"),
        "{text}"
    );
}

/// Sends made together share one connection (written in one go, answered in one read): a
/// burst of concurrent group and channel sends opens no connection, where a pool would open
/// one for each send in flight, up to its size.
#[tokio::test]
async fn concurrent_sends_share_one_connection() {
    let redis = RedisServer::start();
    let a = Arc::new(layer_with(config(vec![redis.url()], &unique_prefix())).await);
    let g = group("burst");
    let mut member = a.new_channel().await.unwrap();
    a.group_add(&g, member.name()).await.unwrap();
    a.group_send(&g, Message::new("first")).await.unwrap();
    a.send(member.name(), Message::new("first")).await.unwrap();
    for _ in 0..2 {
        assert_eq!(recv(&mut member).await.message_type(), Some("first"));
    }
    let before = redis.plain_clients();
    burst(&a, &g, &mut member, 64, true, "burst").await;
    assert_eq!(
        redis.plain_clients(),
        before,
        "the burst opened connections"
    );
}

/// Redis restarts right after a send: once the layer has seen the link drop and is ready
/// again, the next sends go out on new connections instead of failing on the dead ones the
/// sends used ("broken pipe"), though those were used less than the two seconds after which
/// an idle connection is checked.
#[tokio::test]
async fn after_a_restart_sends_do_not_fail_on_dead_connections() {
    let mut redis = RedisServer::start();
    let a = Arc::new(layer_with(config(vec![redis.url()], &unique_prefix())).await);
    let g = group("restarted");
    let mut member = a.new_channel().await.unwrap();
    a.group_add(&g, member.name()).await.unwrap();
    burst(&a, &g, &mut member, 8, false, "before").await;

    redis.restart();
    eventually("the link loss seen", || a.stats().disconnects >= 1).await;
    eventually("ready again", || a.is_ready()).await;
    a.group_send(&g, Message::new("after")).await.unwrap();
    a.send(member.name(), Message::new("after")).await.unwrap();
    for _ in 0..2 {
        assert_eq!(recv(&mut member).await.message_type(), Some("after"));
    }
}

/// A group of thousands: its members' names (a `ZRANGE` reply of 3,000 elements, over 100 KB,
/// read in pieces) come back on the senders' shared connection, and the message reaches every
/// member.
#[tokio::test]
async fn a_group_of_thousands_is_read_whole_and_reached() {
    let layer = layer_with(config(vec![server().url()], &unique_prefix())).await;
    let g = group("crowd");
    let mut inboxes = Vec::new();
    for _ in 0..3_000 {
        let inbox = layer.new_channel().await.unwrap();
        layer.group_add(&g, inbox.name()).await.unwrap();
        inboxes.push(inbox);
    }
    layer.group_send(&g, Message::new("hello")).await.unwrap();
    for inbox in &mut inboxes {
        assert_eq!(recv(inbox).await.message_type(), Some("hello"));
    }
}

/// A TLS host (`rediss://`): the core layer's sends (redis-rs' multiplexed connection there)
/// and blocking reads reach the other replica's members.
#[tokio::test]
async fn group_messages_cross_replicas_through_a_tls_redis() {
    let redis = RedisServer::start_tls();
    let (a, b, _) = two_replicas(&redis).await;
    let g = group("secure");
    let mut on_a = a.new_channel().await.unwrap();
    let mut on_b = b.new_channel().await.unwrap();
    a.group_add(&g, on_a.name()).await.unwrap();
    b.group_add(&g, on_b.name()).await.unwrap();
    b.group_send(&g, Message::new("sealed")).await.unwrap();
    for inbox in [&mut on_a, &mut on_b] {
        assert_eq!(recv(inbox).await.message_type(), Some("sealed"));
    }
}
