//! channels_redis' configuration on a real Redis: `--channel-capacity PATTERN=N` as the
//! command line gives it to both Redis layers, and `unix://` socket URLs.
//!
//! Each test starts its own `redis-server` on a free loopback port (and socket).

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a failed unwrap is a failed test; what was measured is printed"
)]

#[path = "support/replica.rs"]
mod replica;

use std::time::Duration;

use channels_layer::{ChannelLayer, ChannelName, GroupName, Message};
use channels_server::Config;
use clap::Parser;
use replica::{Replica, eventually};
use test_support::redis_ha::{RedisProcess, TempDir};
use test_support::redis_server::{RedisServer, unique_prefix};

/// Two layers built from the same flags, as two replicas would build them.
async fn two_layers(
    flags: &[&str],
) -> (
    std::sync::Arc<dyn ChannelLayer>,
    std::sync::Arc<dyn ChannelLayer>,
) {
    let config =
        Config::try_parse_from(std::iter::once("channels-server").chain(flags.iter().copied()))
            .unwrap();
    let a = config.build_layer("capa").await.unwrap();
    let b = config.build_layer("capb").await.unwrap();
    assert!(a.is_ready() && b.is_ready(), "layers not connected");
    (a, b)
}

/// A group of a channel matching `worker-*=2` and one matching no pattern (capacity 100): five
/// messages from the other layer fill the first (two queued, three dropped and counted) and
/// all reach the second.
async fn pattern_capacity_applies(layer: &str) {
    let redis = RedisServer::start();
    let url = redis.url();
    let prefix = unique_prefix();
    let (receiver, sender) = two_layers(&[
        "--layer",
        layer,
        "--redis-url",
        &url,
        "--prefix",
        &prefix,
        "--channel-capacity",
        "worker-*=2,re:^never\\d+=1",
    ])
    .await;
    let worker = receiver
        .open_channel(&ChannelName::new("worker-1").unwrap())
        .await
        .unwrap();
    let mut other = receiver
        .open_channel(&ChannelName::new("other").unwrap())
        .await
        .unwrap();
    let group = GroupName::new("capacity").unwrap();
    receiver.group_add(&group, worker.name()).await.unwrap();
    receiver.group_add(&group, other.name()).await.unwrap();
    // The pub/sub layer subscribes on group_add; give the core layer's readers a moment too.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for n in 0..5_i64 {
        let msg = Message::new("chat.message").with("n", n);
        sender.group_send(&group, msg).await.unwrap();
    }
    eventually(
        "every message delivered or dropped",
        Duration::from_secs(5),
        || {
            let stats = receiver.stats();
            stats.delivered + stats.dropped_full >= 10
        },
    )
    .await;
    let stats = receiver.stats();
    println!(
        "{layer}: delivered {}, dropped_full {}",
        stats.delivered, stats.dropped_full
    );
    assert_eq!(
        stats.dropped_full, 3,
        "{layer}: the worker-* channel holds 2"
    );
    assert_eq!(stats.delivered, 7, "{layer}: 2 to worker-1, 5 to other");
    for n in 0..5_i64 {
        let msg = tokio::time::timeout(Duration::from_secs(1), other.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg.get("n").and_then(|v| v.as_i64()), Some(n));
    }
    drop(worker);
    receiver.close().await.unwrap();
    sender.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_capacity_pattern_fills_and_counts_on_the_pubsub_layer() {
    pattern_capacity_applies("redis-pubsub").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_capacity_pattern_fills_and_counts_on_the_core_layer() {
    pattern_capacity_applies("redis-core").await;
}

/// A replica on `unix:///…/redis.sock` and one on TCP share a group chat through the same
/// Redis, in both directions, on both Redis layers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reaches_redis_over_a_unix_socket() {
    let dir = TempDir::new("unix");
    let socket = dir.0.join("redis.sock");
    let port = test_support::free_port();
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--unixsocket",
        &socket.to_string_lossy(),
        "--unixsocketperm",
        "700",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.0.to_string_lossy(),
    ]
    .map(str::to_owned)
    .to_vec();
    let redis = RedisProcess::start(port, &args);
    let unix_url = format!("unix://{}", socket.display());
    let tcp_url = redis.url();
    for layer in ["redis-pubsub", "redis-core"] {
        let prefix = unique_prefix();
        let over_unix = Replica::start(
            "unix",
            &[
                "--layer",
                layer,
                "--redis-url",
                &unix_url,
                "--prefix",
                &prefix,
            ],
            &[],
        )
        .await;
        let over_tcp = Replica::start(
            "tcp",
            &[
                "--layer",
                layer,
                "--redis-url",
                &tcp_url,
                "--prefix",
                &prefix,
            ],
            &[],
        )
        .await;
        let mut u = over_unix.ws("/group/sock/").await;
        let mut t = over_tcp.ws("/group/sock/").await;
        // Both joined before either speaks: each member's handshake returns after its join.
        tokio::time::sleep(Duration::from_millis(200)).await;
        u.send_text("from-unix").await;
        for client in [&mut u, &mut t] {
            assert_eq!(
                client.recv_text().await,
                "组内主动推送消息:from-unix",
                "{layer}"
            );
        }
        t.send_text("from-tcp").await;
        for client in [&mut u, &mut t] {
            assert_eq!(
                client.recv_text().await,
                "组内主动推送消息:from-tcp",
                "{layer}"
            );
        }
        println!("{layer}: a group chat across unix:// and redis:// replicas works");
    }
}
