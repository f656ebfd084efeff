//! The conformance suite, and the pub/sub layer's own behaviour, against a real redis-server.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::sync::Arc;

use channels_layer::testing::LayerFuture;
use channels_layer::{ChannelLayer, LayerConfig, RedisPubSubChannelLayer, RedisPubSubConfig};
use test_support::eventually;
use test_support::redis_server::{RedisServer, server, unique_prefix};

fn config(local: LayerConfig) -> RedisPubSubConfig {
    let mut config = RedisPubSubConfig::new(vec![server().url()]);
    config.prefix = unique_prefix();
    config.local = local;
    config
}

fn make(local: LayerConfig) -> LayerFuture {
    let config = config(local);
    Box::pin(async move {
        Arc::new(RedisPubSubChannelLayer::connect(config).await.unwrap()) as Arc<dyn ChannelLayer>
    })
}

channels_layer::conformance_suite!(make);

// ===== the pub/sub layer's own behaviour =====

use std::time::{Duration, Instant};

use channels_layer::testing::{assert_empty, recv};
use channels_layer::{GroupName, LayerError, Message};

async fn layer_with(config: RedisPubSubConfig) -> RedisPubSubChannelLayer {
    RedisPubSubChannelLayer::connect(config).await.unwrap()
}

/// Two replicas of one deployment: same prefix, own replica ids.
async fn two_replicas(server: &RedisServer) -> (RedisPubSubChannelLayer, RedisPubSubChannelLayer) {
    let prefix = unique_prefix();
    let mk = |replica: &str| {
        let mut c = RedisPubSubConfig::new(vec![server.url()]);
        c.prefix = prefix.clone();
        c.replica_id = Some(replica.to_owned());
        c
    };
    (layer_with(mk("a")).await, layer_with(mk("b")).await)
}

fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

#[tokio::test]
async fn group_send_reaches_members_on_other_replicas() {
    let (a, b) = two_replicas(server()).await;
    let g = group("room");
    let mut on_a = a.new_channel().await.unwrap();
    let mut on_b = b.new_channel().await.unwrap();
    a.group_add(&g, on_a.name()).await.unwrap();
    b.group_add(&g, on_b.name()).await.unwrap();
    b.group_send(&g, Message::new("chat.message").with("text", "hi"))
        .await
        .unwrap();
    for inbox in [&mut on_a, &mut on_b] {
        assert_eq!(recv(inbox).await.get("text").unwrap().as_str(), Some("hi"));
    }
}

#[tokio::test]
async fn send_reaches_a_channel_of_another_replica() {
    let (a, b) = two_replicas(server()).await;
    let mut on_b = b.new_channel().await.unwrap();
    assert!(on_b.name().as_str().starts_with(b.channel_prefix()));
    a.send(on_b.name(), Message::new("direct")).await.unwrap();
    assert_eq!(recv(&mut on_b).await.message_type(), Some("direct"));
}

#[tokio::test]
async fn one_subscription_per_replica_per_group_and_none_after_everyone_left() {
    let redis = server();
    let (a, b) = two_replicas(redis).await;
    let g = group("counted");
    let channel = format!(
        "{}__group__counted",
        a.channel_prefix().split("specific.").next().unwrap()
    );
    let mut inboxes = Vec::new();
    for layer in [&a, &a, &a, &b, &b] {
        let inbox = layer.new_channel().await.unwrap();
        layer.group_add(&g, inbox.name()).await.unwrap();
        inboxes.push(inbox);
    }
    assert_eq!(redis.numsub(&[&channel]), [2], "one subscriber per replica");
    inboxes.truncate(2); // two of a's three members leave, and both of b's
    eventually("b unsubscribed", || redis.numsub(&[&channel]) == [1]).await;
    inboxes.clear();
    eventually("a unsubscribed", || redis.numsub(&[&channel]) == [0]).await;
}

#[tokio::test]
async fn undecodable_payloads_are_dropped_and_counted() {
    let redis = server();
    let (a, _b) = two_replicas(redis).await;
    let g = group("garbage");
    let mut inbox = a.new_channel().await.unwrap();
    a.group_add(&g, inbox.name()).await.unwrap();
    let channel = format!(
        "{}__group__garbage",
        a.channel_prefix().split("specific.").next().unwrap()
    );
    let garbage: [&[u8]; 4] = [
        b"not msgpack at all \xc1",
        &[0x81, 0x01, 0x02],       // an int map key
        &[0x92, 0x01, 0x02],       // a list, not a map
        &[0x81, 0xa1, b'a', 0xd4], // truncated ext
    ];
    for payload in garbage {
        assert_eq!(redis.publish(&channel, payload), 1);
    }
    // What Python's msgpack.packb({"type": "chat.message", "text": "hi"}) publishes.
    let python = b"\x82\xa4type\xacchat.message\xa4text\xa2hi";
    redis.publish(&channel, python);
    let msg = recv(&mut inbox).await;
    assert_eq!(msg.get("text").unwrap().as_str(), Some("hi"));
    assert_eq!(a.stats().undecodable, 4);
    assert_empty(&mut inbox).await;
}

#[tokio::test]
async fn groups_land_on_the_shard_the_hash_names() {
    let one = RedisServer::start();
    let two = RedisServer::start();
    let hosts = vec![one.url(), two.url()];
    let prefix = unique_prefix();
    let mk = |replica: &str| {
        let mut c = RedisPubSubConfig::new(hosts.clone());
        c.prefix = prefix.clone();
        c.replica_id = Some(replica.to_owned());
        c
    };
    let a = layer_with(mk("a")).await;
    let b = layer_with(mk("b")).await;
    let servers = [&one, &two];
    let mut seen = [0, 0];
    // Names that differ only in a last digit share most CRC bits: use varied words.
    let words = [
        "lobby", "kitchen", "garden", "attic", "cellar", "porch", "study", "hall",
    ];
    for (i, word) in words.iter().enumerate() {
        let g = group(word);
        let channel = format!("{prefix}__group__{word}");
        let shard = channels_layer::redis::shard::consistent_hash(&channel, 2);
        seen[shard] += 1;
        let mut on_a = a.new_channel().await.unwrap();
        let mut on_b = b.new_channel().await.unwrap();
        a.group_add(&g, on_a.name()).await.unwrap();
        b.group_add(&g, on_b.name()).await.unwrap();
        assert_eq!(
            servers[shard].numsub(&[&channel]),
            [2],
            "{channel} on shard {shard}"
        );
        assert_eq!(servers[1 - shard].numsub(&[&channel]), [0]);
        a.group_send(&g, Message::new("m").with("i", i as i64))
            .await
            .unwrap();
        for inbox in [&mut on_a, &mut on_b] {
            assert_eq!(recv(inbox).await.get("i").unwrap().as_i64(), Some(i as i64));
            assert_empty(inbox).await;
        }
    }
    assert!(seen[0] > 0 && seen[1] > 0, "both shards used: {seen:?}");
    // Each replica's pattern is on every shard: a send to b reaches it whichever shard it hashes to.
    for server in servers {
        let numpat: i64 = server.query(redis::cmd("PUBSUB").arg("NUMPAT"));
        assert_eq!(numpat, 2);
    }
    let mut on_b = b.new_channel().await.unwrap();
    a.send(on_b.name(), Message::new("direct")).await.unwrap();
    assert_eq!(recv(&mut on_b).await.message_type(), Some("direct"));
}

/// A connection subscribed to one channel, as an admin watching Redis would be.
struct Sniffer {
    _connection: redis::aio::MultiplexedConnection,
    pushes: tokio::sync::mpsc::Receiver<redis::PushInfo>,
}

impl Sniffer {
    async fn start(redis: &RedisServer, channel: &str) -> Sniffer {
        let client = redis::Client::open(format!("{}?protocol=resp3", redis.url())).unwrap();
        let (tx, pushes) = tokio::sync::mpsc::channel(64);
        let cfg =
            redis::AsyncConnectionConfig::new().set_push_sender(move |push| tx.try_send(push));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .unwrap();
        connection.subscribe(channel).await.unwrap();
        Sniffer {
            _connection: connection,
            pushes,
        }
    }

    /// The payload of the next message published to the channel (within 2 s).
    async fn next(&mut self) -> Vec<u8> {
        loop {
            let push = tokio::time::timeout(Duration::from_secs(2), self.pushes.recv())
                .await
                .expect("no message within 2 s")
                .unwrap();
            if push.kind == redis::PushKind::Message {
                let [_, redis::Value::BulkString(payload)] = &push.data[..] else {
                    panic!("{push:?}")
                };
                return payload.clone();
            }
        }
    }
}

#[tokio::test]
async fn encrypted_payloads_are_opaque_in_redis_and_keys_rotate() {
    let redis = server();
    let prefix = unique_prefix();
    let mk = |keys: &[&str], replica: &str| {
        let mut c = RedisPubSubConfig::new(vec![redis.url()]);
        c.prefix = prefix.clone();
        c.replica_id = Some(replica.to_owned());
        c.encryption_keys = keys.iter().map(|k| (*k).to_owned()).collect();
        c
    };
    let old = layer_with(mk(&["old-key"], "old")).await;
    let rotated = layer_with(mk(&["new-key", "old-key"], "rot")).await;
    let g = group("secret");
    let mut inbox = rotated.new_channel().await.unwrap();
    rotated.group_add(&g, inbox.name()).await.unwrap();
    let mut sniffer = Sniffer::start(redis, &format!("{prefix}__group__secret")).await;

    old.group_send(
        &g,
        Message::new("chat.message").with("text", "plaintext-marker"),
    )
    .await
    .unwrap();
    let got = recv(&mut inbox).await;
    assert_eq!(
        got.get("text").unwrap().as_str(),
        Some("plaintext-marker"),
        "old key decrypts"
    );
    let payload = sniffer.next().await;
    assert!(payload.starts_with(b"gAAAAA"), "a Fernet token");
    assert!(!payload.windows(16).any(|w| w == b"plaintext-marker"));
    // An unauthenticated payload is dropped and counted, not delivered.
    redis.publish(
        &format!("{prefix}__group__secret"),
        b"\x82\xa4type\xa1x\xa4text\xa1y",
    );
    assert_empty(&mut inbox).await;
    assert_eq!(rotated.stats().undecodable, 1);
}

#[tokio::test]
async fn an_outage_fails_fast_and_recovery_restores_every_subscription() {
    let mut redis = RedisServer::start();
    let (a, b) = two_replicas(&redis).await;
    let g = group("survivor");
    let mut on_a = a.new_channel().await.unwrap();
    let mut on_b = b.new_channel().await.unwrap();
    a.group_add(&g, on_a.name()).await.unwrap();
    b.group_add(&g, on_b.name()).await.unwrap();
    assert!(a.is_ready() && b.is_ready());

    redis.stop();
    let started = Instant::now();
    let err = a.group_send(&g, Message::new("lost")).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, LayerError::Unavailable { .. }), "{err}");
    eventually("a not ready", || !a.is_ready()).await;

    redis.restart();
    let back = Instant::now();
    eventually("a ready", || a.is_ready()).await;
    eventually("b ready", || b.is_ready()).await;
    let recovered = back.elapsed();
    println!("pub/sub layer recovered {recovered:?} after redis came back");
    assert!(
        recovered < Duration::from_secs(2),
        "recovery took {recovered:?}"
    );
    let channel = format!(
        "{}__group__survivor",
        a.channel_prefix().split("specific.").next().unwrap()
    );
    assert_eq!(redis.numsub(&[&channel]), [2]);
    a.group_send(&g, Message::new("after")).await.unwrap();
    for inbox in [&mut on_a, &mut on_b] {
        assert_eq!(recv(inbox).await.message_type(), Some("after"));
    }
    assert!(a.stats().disconnects >= 1 && a.stats().publish_errors >= 1);
}

/// A layer's settings for its own `redis`, under a fresh prefix.
fn own_config(redis: &RedisServer) -> RedisPubSubConfig {
    let mut c = RedisPubSubConfig::new(vec![redis.url()]);
    c.prefix = unique_prefix();
    c
}

/// A member of `g` on `a`, after a first message (`first`) reached it.
async fn joined(a: &RedisPubSubChannelLayer, g: &GroupName, first: &str) -> channels_layer::Inbox {
    let mut member = a.new_channel().await.unwrap();
    a.group_add(g, member.name()).await.unwrap();
    a.group_send(g, Message::new(first)).await.unwrap();
    assert_eq!(recv(&mut member).await.message_type(), Some(first));
    member
}

/// Publishes made together share one connection (written in one go, answered in one read):
/// a burst of concurrent group sends opens no more than that one, where a pool would open a
/// connection for each send in flight, up to its size.
#[tokio::test]
async fn concurrent_publishes_share_one_connection() {
    let redis = RedisServer::start();
    let c = own_config(&redis);
    let a = Arc::new(layer_with(c).await);
    let g = group("burst");
    let mut member = joined(&a, &g, "first").await;
    let before = redis.plain_clients();
    channels_layer::testing::burst(&a, &g, &mut member, 64, false, "burst").await;
    assert_eq!(
        redis.plain_clients(),
        before,
        "the burst opened connections"
    );
}

/// Redis restarts while nothing is published: the first publish afterwards does not go to the
/// dead connection (one unused for a while is checked first), so it is not lost. (The liveness
/// probe, a publish every `ping_interval`, would find the dead connection too: it is slowed
/// down here so that the check is what is tested.)
#[tokio::test]
async fn the_first_publish_after_a_quiet_restart_is_delivered() {
    let mut redis = RedisServer::start();
    let mut c = own_config(&redis);
    c.ping_interval = Duration::from_secs(3600);
    let a = layer_with(c).await;
    let g = group("quiet");
    let mut member = joined(&a, &g, "before").await;
    let sent = Instant::now();

    redis.restart();
    eventually("a ready again", || a.is_ready()).await;
    // Past the idle check (2 s) since the last publish.
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(sent.elapsed())).await;
    a.group_send(&g, Message::new("after")).await.unwrap();
    assert_eq!(recv(&mut member).await.message_type(), Some("after"));
    assert_eq!(a.stats().publish_errors, 0);
}

/// Redis restarts right after a command went over a pooled connection (well inside the idle
/// check's two seconds): once the subscriber has found its link dropped, the pool's
/// connections are made anew, so the next command does not fail on a dead one.
#[tokio::test]
async fn after_a_restart_pooled_commands_do_not_fail_on_dead_connections() {
    let mut redis = RedisServer::start();
    let c = own_config(&redis);
    let a = layer_with(c).await;
    let g = group("room");
    let member = channels_layer::PresenceMember {
        user: "u".to_owned(),
        name: "U".to_owned(),
        channel: "specific.x!y".to_owned(),
        replica: "a".to_owned(),
        joined_at: channels_layer::presence::unix_now(),
    };
    let ttl = Duration::from_secs(60);
    a.presence_add(&g, &member, ttl).await.unwrap();
    assert_eq!(a.presence(&g).await.unwrap().members.len(), 1);

    redis.restart();
    eventually("the link loss seen", || a.stats().disconnects >= 1).await;
    eventually("a ready again", || a.is_ready()).await;
    // The restarted Redis has no data: the read answers, with nobody.
    assert_eq!(a.presence(&g).await.unwrap().members.len(), 0);
    a.presence_add(&g, &member, ttl).await.unwrap();
    assert_eq!(a.presence(&g).await.unwrap().members.len(), 1);
}

/// A command waits as long as the layer's configured deadline, not redis-rs' default response
/// timeout (500 ms): a publish held up 700 ms by a busy Redis still goes through (the deadline
/// is 1 s).
#[tokio::test]
async fn a_slow_redis_gets_the_configured_deadline() {
    let redis = Arc::new(RedisServer::start());
    let c = own_config(&redis);
    assert_eq!(c.timeout, Duration::from_secs(1));
    let a = layer_with(c).await;
    let g = group("patience");
    let mut member = joined(&a, &g, "warm").await;

    // Redis runs one script at a time: this one keeps it busy for 700 ms.
    let busy = {
        let redis = Arc::clone(&redis);
        tokio::task::spawn_blocking(move || {
            let script = "local s = redis.call('TIME') \
                local t0 = tonumber(s[1]) + tonumber(s[2]) / 1e6 \
                while true do \
                    local n = redis.call('TIME') \
                    if tonumber(n[1]) + tonumber(n[2]) / 1e6 - t0 > 0.7 then return 1 end \
                end";
            let _: i64 = redis.query(redis::cmd("EVAL").arg(script).arg(0));
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    a.group_send(&g, Message::new("late")).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_millis(500),
        "Redis was not busy: {waited:?}"
    );
    assert_eq!(recv(&mut member).await.message_type(), Some("late"));
    busy.await.unwrap();
}

/// Review defect 4, from Redis: a payload over the receiving replica's limit (here published by
/// a replica without one) is dropped once for that replica, before any member gets a copy, and
/// counted; the members stay subscribed and get the next message.
#[tokio::test]
async fn an_oversized_payload_from_redis_is_dropped_once_and_counted() {
    let redis = server();
    let prefix = unique_prefix();
    let mut limited = RedisPubSubConfig::new(vec![redis.url()]);
    limited.prefix.clone_from(&prefix);
    limited.local.max_message_size = 1000;
    let limited = layer_with(limited).await;
    let mut open = RedisPubSubConfig::new(vec![redis.url()]);
    open.prefix = prefix;
    let open = layer_with(open).await;
    let g = group("oversized");
    let mut members = Vec::new();
    for _ in 0..20 {
        let inbox = limited.new_channel().await.unwrap();
        limited.group_add(&g, inbox.name()).await.unwrap();
        members.push(inbox);
    }
    open.group_send(&g, Message::new("big").with("text", "x".repeat(100_000)))
        .await
        .unwrap();
    open.group_send(&g, Message::new("small")).await.unwrap();
    for inbox in &mut members {
        assert_eq!(recv(inbox).await.message_type(), Some("small"));
    }
    assert_eq!(
        limited.stats().oversized,
        1,
        "once for the replica, not per member"
    );
    assert_eq!(limited.stats().undecodable, 0);
}

/// Polls `fut` at most `polls` times, letting the other tasks run after each poll; `None` if it
/// had not finished by then (it is dropped: a cancellation at a chosen point).
async fn polled<F: std::future::Future>(fut: F, polls: usize) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    for _ in 0..polls {
        let poll = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
        if let std::task::Poll::Ready(out) = poll {
            return Some(out);
        }
        tokio::task::yield_now().await;
    }
    None
}

/// Issue 11: a `group_add` cancelled at any point (before, while or after Redis runs its
/// `SUBSCRIBE`) leaves no subscription behind once its inbox is gone, not even after the
/// subscriber reconnects and redis-rs replays what Redis had confirmed. Single-threaded, so
/// nothing runs between a cancelled join and the drop of its inbox.
#[tokio::test]
async fn cancelled_joins_leave_no_subscription_behind() {
    const ROUNDS: usize = 9;
    const GROUPS: usize = 20;
    const PAUSE: Duration = Duration::from_millis(250);
    // Its own server: CLIENT PAUSE holds every client of it.
    let redis = RedisServer::start();
    let mut config = RedisPubSubConfig::new(vec![redis.url()]);
    config.prefix = unique_prefix();
    let prefix = config.prefix.clone();
    let layer = layer_with(config).await;
    let (mut cancelled, mut cancelled_while_paused) = (0, 0);
    for round in 0..ROUNDS {
        // Two rounds in three, Redis holds what it gets for a while and runs it afterwards: a
        // join cancelled then has sent a SUBSCRIBE that Redis runs after the join is gone.
        let paused = round % 3 != 2;
        if paused {
            let millis = PAUSE.as_millis() as u64;
            let () = redis.query(redis::cmd("CLIENT").arg("PAUSE").arg(millis).arg("ALL"));
        }
        let started = Instant::now();
        for g in 0..GROUPS {
            let inbox = layer.new_channel().await.unwrap();
            // Dropped after 1 to 6 polls, with the other tasks (redis-rs' writer, the
            // reconciler) run in between: before its SUBSCRIBE is written, after, or done.
            let polls = 1 + (round * GROUPS + g) % 6;
            // A group of its own: a later join of the same group would clean up after it.
            let g = group(&format!("c{round}x{g}"));
            if polled(layer.group_add(&g, inbox.name()), polls)
                .await
                .is_none()
            {
                cancelled += 1;
                if paused && polls > 1 && started.elapsed() < PAUSE {
                    cancelled_while_paused += 1;
                }
            }
            drop(inbox);
        }
        if paused {
            // The next round starts with Redis answering again.
            tokio::time::sleep(PAUSE.saturating_sub(started.elapsed()) + PAUSE / 5).await;
        }
    }
    println!("{cancelled} joins cancelled, {cancelled_while_paused} while Redis was paused");
    assert!(
        cancelled_while_paused > 0,
        "no join was cancelled while Redis held its commands"
    );
    let pattern = format!("{prefix}__group__*");
    let left = redis.channels_left(&pattern, Duration::from_secs(3)).await;
    assert!(
        left.is_empty(),
        "{} groups left subscribed: {left:?}",
        left.len()
    );
    assert_eq!(layer.stats().groups, 0);

    // The reconnect replays what Redis had confirmed: nothing of the groups comes back.
    let killed: i64 = redis.query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"));
    assert_eq!(killed, 1);
    eventually("the pattern resubscribed", || {
        redis.query::<i64>(redis::cmd("PUBSUB").arg("NUMPAT")) == 1 && layer.is_ready()
    })
    .await;
    let left = redis.channels(&pattern);
    assert!(left.is_empty(), "after the resubscribe: {left:?}");
}

/// Issue 11: anyone who can publish to Redis can address a replica's probe channel (its replica
/// id is in every handshake answer), so a probe counts only if this process signed it. Forged
/// ones (the old format's huge number, a negative one, garbage, a real probe's tag on another
/// number, a Fernet token under the shared keys) are dropped and counted, a replayed real one
/// changes nothing, and the liveness checks keep running, with and without encryption keys.
#[tokio::test]
async fn forged_liveness_probes_are_dropped_and_counted() {
    // Its own server: CLIENT KILL reaches every pub/sub client of it.
    let redis = RedisServer::start();
    for keys in [vec![], vec!["shared-key".to_owned()]] {
        let mut config = RedisPubSubConfig::new(vec![redis.url()]);
        config.prefix = unique_prefix();
        config.replica_id = Some("a".to_owned());
        config.encryption_keys = keys.clone();
        let layer = layer_with(config).await;
        let probe = format!("{}!~probe", layer.channel_prefix());
        let mut sniffer = Sniffer::start(&redis, &probe).await;
        let real = sniffer.next().await;
        let text = String::from_utf8(real.clone()).unwrap();
        // `<number>:<tag>` (a bare number before issue 11).
        let (n, tag) = text.split_once(':').unwrap_or((&text, ""));
        let n: u64 = n.parse().unwrap();
        let mut forged: Vec<Vec<u8>> = vec![
            u64::MAX.to_string().into_bytes(),
            b"-1".to_vec(),
            (n + 1).to_string().into_bytes(),
            b"\x00garbage".to_vec(),
            format!("{}:{tag}", n + 1).into_bytes(),
            format!("{}:{tag}", u64::MAX).into_bytes(),
        ];
        if let Some(key) = keys.first() {
            let fernet = channels_layer::redis::fernet::Fernet::new([key]).unwrap();
            forged.push(fernet.encrypt(u64::MAX.to_string().as_bytes()));
            forged.push(fernet.encrypt(&real));
        }
        let before = layer.stats();
        for payload in &forged {
            redis.publish(&probe, payload);
        }
        // A replay of the real probe is ours, but old: it counts for nothing.
        redis.publish(&probe, &real);
        let expected = before.undecodable + forged.len() as u64;
        eventually("every forged probe counted", || {
            layer.stats().undecodable == expected
        })
        .await;

        // The ping loop survived them: a killed subscriber is noticed and replaced.
        let killed: i64 = redis.query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"));
        assert!(killed >= 1);
        eventually("the disconnect noticed", || {
            layer.stats().disconnects > before.disconnects
        })
        .await;
        eventually("ready again", || layer.is_ready()).await;
        assert_eq!(layer.stats().undecodable, expected);
    }
}

/// A subscription Redis refused is retried without waiting for a registry change (which may
/// never come): the reconciler's periodic pass takes it as soon as Redis allows it, here after
/// an ACL grant.
#[tokio::test]
async fn a_refused_subscription_is_retried_until_redis_takes_it() {
    let redis = RedisServer::start();
    let prefix = unique_prefix();
    let grant = |rules: &[&str]| {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg("layer").arg(rules);
        let () = redis.query(&cmd);
    };
    // Everything but the group's channel (PSUBSCRIBE needs its exact pattern).
    grant(&["on", ">pw", "+@all", "resetchannels"]);
    grant(&[&format!("&{prefix}specific.a!*")]);
    let mut config = RedisPubSubConfig::new(vec![format!(
        "redis://layer:pw@127.0.0.1:{}/0",
        redis.port()
    )]);
    config.prefix = prefix.clone();
    config.replica_id = Some("a".to_owned());
    let layer = layer_with(config).await;
    // Once a liveness probe went out, the ping loop's first round (a full resubscribe, which
    // would retry a refusal by itself) is over.
    let probe = format!("{}!~probe", layer.channel_prefix());
    Sniffer::start(&redis, &probe).await.next().await;
    let g = group("later");
    let mut inbox = layer.new_channel().await.unwrap();
    let err = layer.group_add(&g, inbox.name()).await.unwrap_err();
    assert!(matches!(err, LayerError::Unavailable { .. }), "{err}");
    // The reconciler's own attempt, woken by the join, is refused too.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let channel = format!("{prefix}__group__later");
    grant(&[&format!("&{channel}")]);
    eventually("subscribed after the grant", || {
        redis.numsub(&[&channel]) == [1]
    })
    .await;
    layer.group_send(&g, Message::new("late")).await.unwrap();
    assert_eq!(recv(&mut inbox).await.message_type(), Some("late"));
}

/// With history on: a forged or garbled position on a group's side channel is dropped and
/// counted; a position only applies to the very next message, and only if it is for that
/// group; a plain `PUBLISH` (a Python `group_send`) is delivered without a position, counted.
#[tokio::test]
async fn side_channel_garbage_never_positions_a_message() {
    let redis = server();
    let mut config = config(LayerConfig {
        history_size: 10,
        ..LayerConfig::default()
    });
    config.replica_id = Some("side".to_owned());
    let prefix = config.prefix.clone();
    let layer = layer_with(config).await;
    let g = group("sided");
    let mut inbox = layer.new_channel().await.unwrap();
    layer.group_add(&g, inbox.name()).await.unwrap();
    let channel = format!("{prefix}__group__sided");
    let side = format!("{prefix}__side__sided");
    assert_eq!(
        redis.numsub(&[&channel, &side]),
        [1, 1],
        "one SUBSCRIBE for both"
    );
    let python = b"\x82\xa4type\xacchat.message\xa4text\xa2hi";
    for garbage in [
        &b"no colon"[..],
        b"zzzzzzzz:1",
        b"0000000a:-1",
        b"0000000a:x",
        b"",
    ] {
        redis.publish(&side, garbage);
    }
    redis.publish(&channel, python);
    assert_eq!(recv(&mut inbox).await.position(), None);
    assert_eq!(layer.stats().undecodable, 5);
    assert_eq!(layer.stats().unpositioned, 1);
    // A valid position followed by something else first (a direct message to this
    // replica): it does not carry over to the group's next message.
    redis.publish(&side, b"0000000a:7");
    redis.publish(inbox.name().as_str(), python);
    redis.publish(&channel, python);
    assert_eq!(
        recv(&mut inbox).await.position(),
        None,
        "the direct message"
    );
    assert_eq!(recv(&mut inbox).await.position(), None, "the group message");
    // Back to back, as the history script publishes them: positioned.
    layer.group_send(&g, Message::new("real")).await.unwrap();
    let real = recv(&mut inbox).await;
    assert_eq!(real.message_type(), Some("real"));
    assert_eq!(real.position().map(|p| p.offset), Some(1));
    assert_empty(&mut inbox).await;
}

/// A TLS host (`rediss://`) keeps redis-rs' connections (the subscriber's connection manager,
/// the publishers' multiplexed connection): group messages and channel sends cross replicas
/// through it, and the replicas report ready.
#[tokio::test]
async fn messages_cross_replicas_through_a_tls_redis() {
    let redis = RedisServer::start_tls();
    let (a, b) = two_replicas(&redis).await;
    eventually("both ready", || a.is_ready() && b.is_ready()).await;
    let g = group("secure");
    let mut on_a = a.new_channel().await.unwrap();
    let mut on_b = b.new_channel().await.unwrap();
    a.group_add(&g, on_a.name()).await.unwrap();
    b.group_add(&g, on_b.name()).await.unwrap();
    a.group_send(&g, Message::new("sealed")).await.unwrap();
    for inbox in [&mut on_a, &mut on_b] {
        assert_eq!(recv(inbox).await.message_type(), Some("sealed"));
    }
    a.send(on_b.name(), Message::new("direct")).await.unwrap();
    assert_eq!(recv(&mut on_b).await.message_type(), Some("direct"));
}
