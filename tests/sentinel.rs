//! Redis Sentinel: replicas given `redis+sentinel://` follow a master failover.
//!
//! Each test starts its own Sentinel set (a master, a replica, three sentinels with
//! `down-after-milliseconds 1000`) and two server replicas on free loopback ports, runs a group
//! chat at 50 messages/s, kills the master (SIGKILL), and checks that group messages flow again
//! within 5 s of the sentinels' promotion, that every lost delivery was sent between the kill
//! and that bound, that nothing was duplicated or reordered, and that `/readyz` and
//! `/metrics` saw the switch. It prints the times it measured.

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a failed unwrap is a failed test; the measured times are printed"
)]

#[path = "support/group_load.rs"]
mod group_load;
#[path = "support/python.rs"]
mod python;
#[path = "support/replica.rs"]
mod replica;

use std::time::{Duration, Instant};

use group_load::Load;
use python::{SeedLayer, layer_tool};
use replica::{Replica, eventually, http_get, metrics, wait_readyz};
use test_support::redis_ha::SentinelSet;

/// How soon after the promotion group messages must flow again (the issue's bound).
const RECOVERY: Duration = Duration::from_secs(5);

async fn failover_under_load(layer: &str) {
    let mut set = SentinelSet::start();
    let url = set.url();
    let args = [
        "--layer",
        layer,
        "--redis-url",
        &url,
        "--max-messages-per-second",
        "0",
    ];
    let a = Replica::start("a", &args, &[]).await;
    let b = Replica::start("b", &args, &[]).await;
    let group = "failover";
    let mut load = Load::new();
    for replica in [&a, &a, &b, &b] {
        load.member(&replica.name, replica.port, group).await;
    }
    load.publisher(a.port, group, Duration::from_millis(20));
    if layer == "redis-pubsub" {
        let channel = format!("asgi__group__{group}");
        eventually("both replicas subscribed", Duration::from_secs(5), || {
            set.master
                .query::<Vec<(String, i64)>>(redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel))
                == [(channel.clone(), 2)]
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let replica_port = set.replica.port;
    let killed = Instant::now();
    set.master.kill();
    wait_readyz(&a, 503, Duration::from_secs(5)).await;
    let unready = killed.elapsed();
    let (_, reason) = http_get(a.port, "/readyz").await.unwrap();
    println!(
        "{layer}: replica a not ready {unready:?} after the kill: {}",
        reason.trim()
    );
    let deadline = killed + Duration::from_secs(30);
    while set.master_port() != Some(replica_port) {
        assert!(
            Instant::now() < deadline,
            "the sentinels never promoted the replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let promoted = Instant::now();
    println!(
        "{layer}: sentinels promoted the replica {:?} after the kill",
        promoted - killed
    );
    for replica in [&a, &b] {
        let ready = wait_readyz(replica, 200, RECOVERY).await;
        println!(
            "{layer}: replica {} ready {ready:?} after the promotion",
            replica.name
        );
    }
    // Run on long enough after the bound to see delivery complete again.
    tokio::time::sleep(
        (promoted + RECOVERY + Duration::from_secs(2)).saturating_duration_since(Instant::now()),
    )
    .await;
    let report = load.finish().await;

    let lost = report.assert_losses_within(&[(killed, promoted + RECOVERY)]);
    let sent = report.sent_total();
    let reconnects: usize = report.sent.iter().map(|s| s.reconnects).sum();
    match report.last_loss() {
        Some(last) => println!(
            "{layer}: {lost} deliveries lost of {} ({sent} sent, publisher reconnected {reconnects} \
             times); the last lost message was sent {:?} after the kill, {:?} after the promotion",
            sent * 4,
            last.saturating_duration_since(killed),
            last.saturating_duration_since(promoted)
        ),
        None => println!("{layer}: nothing lost of {} deliveries", sent * 4),
    }
    for replica in [&a, &b] {
        let m = metrics(replica.port).await;
        assert_eq!(
            m.get("channels_layer_redis_master_switches_total"),
            Some(&1.0),
            "replica {} counted the master switch",
            replica.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_replicas_follow_a_sentinel_failover_under_load() {
    failover_under_load("redis-pubsub").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_replicas_follow_a_sentinel_failover_under_load() {
    failover_under_load("redis-core").await;
}

/// A Sentinel set and a plain Redis as the two shards of one deployment, as channels_redis
/// allows: each group lives on the shard channels_redis' CRC32 rule picks, and both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_shard_sits_beside_a_plain_one() {
    use channels_layer::redis::shard::consistent_hash;
    let set = SentinelSet::start();
    let plain = test_support::redis_server::RedisServer::start();
    let urls = format!("{},{}", set.url(), plain.url());
    let args = ["--redis-url", &urls];
    let a = Replica::start("a", &args, &[]).await;
    let b = Replica::start("b", &args, &[]).await;
    // One group on each shard.
    let pick = |shard: usize| {
        (0..)
            .map(|i| format!("mixed{i}"))
            .find(|g| consistent_hash(&format!("asgi__group__{g}"), 2) == shard)
            .unwrap()
    };
    for (shard, group) in [(0, pick(0)), (1, pick(1))] {
        let path = format!("/group/{group}/");
        let mut on_a = a.ws(&path).await;
        let mut on_b = b.ws(&path).await;
        let channel = format!("asgi__group__{group}");
        let numsub = || {
            let mut cmd = redis::cmd("PUBSUB");
            cmd.arg("NUMSUB").arg(&channel);
            let reply: Vec<(String, i64)> = if shard == 0 {
                set.master.query(&cmd)
            } else {
                plain.query(&cmd)
            };
            reply
        };
        eventually(
            "both replicas subscribed on the group's shard",
            Duration::from_secs(5),
            || numsub() == [(channel.clone(), 2)],
        )
        .await;
        on_a.send_text("hello").await;
        assert_eq!(on_b.recv_text().await, "组内主动推送消息:hello");
        assert_eq!(on_a.recv_text().await, "组内主动推送消息:hello");
        println!("group {group} on shard {shard}: delivered across replicas");
    }
}

/// Django (channels_redis with a `sentinels` + `master_name` hosts entry) and a Rust replica on
/// `redis+sentinel://` share a group, before and after a failover, on both Redis layers.
async fn django_reaches_rust_through_sentinel(layer: &str) {
    let mut set = SentinelSet::start();
    let a = Replica::start("a", &["--layer", layer, "--redis-url", &set.url()], &[]).await;
    let sentinels: Vec<String> = set.sentinels.iter().map(|s| s.addr()).collect();
    let entry = format!("sentinel://{}/{}", sentinels.join(";"), SentinelSet::MASTER);
    let django = if layer == "redis-core" {
        SeedLayer::core(&entry)
    } else {
        SeedLayer::pubsub(&entry)
    };
    let mut member = a.ws("/group/djs/").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let send = |text: &str| {
        format!(
            r#"{{"type": "send_msg", "message": {{"type": "websocket.receive", "text": "{text}"}}}}"#
        )
    };
    let reply = layer_tool(
        &django,
        &["group-send", "djs", "--message", &send("before")],
    )
    .await;
    assert_eq!(reply, serde_json::json!({"ok": true}));
    assert_eq!(member.recv_text().await, "组内主动推送消息:before");

    let replica_port = set.replica.port;
    let killed = Instant::now();
    set.master.kill();
    while set.master_port() != Some(replica_port) {
        assert!(killed.elapsed() < Duration::from_secs(30), "no promotion");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = wait_readyz(&a, 200, RECOVERY).await;
    println!(
        "{layer}: promoted {:?} after the kill, replica ready {ready:?} later",
        killed.elapsed() - ready
    );
    let reply = layer_tool(&django, &["group-send", "djs", "--message", &send("after")]).await;
    assert_eq!(reply, serde_json::json!({"ok": true}));
    assert_eq!(member.recv_text().await, "组内主动推送消息:after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_pubsub_on_sentinel_reaches_rust_before_and_after_a_failover() {
    django_reaches_rust_through_sentinel("redis-pubsub").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_core_on_sentinel_reaches_rust_before_and_after_a_failover() {
    django_reaches_rust_through_sentinel("redis-core").await;
}
