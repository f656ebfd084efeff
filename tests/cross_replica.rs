//! Several `channels-server` processes on one Redis share their groups.
//!
//! Each test starts its own `redis-server` on a free port and real replica processes.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use test_support::redis_server;
#[path = "support/replica.rs"]
mod replica;

use std::collections::HashMap;
use std::time::Duration;

use redis_server::RedisServer;
use replica::{Client, Replica, eventually};

const PREFIX: &str = "组内主动推送消息:";

async fn replicas(redis: &RedisServer, n: usize) -> Vec<Replica> {
    let url = redis.url();
    let mut replicas = Vec::new();
    for i in 0..n {
        // Both runtimes: r0 on one thread (`--workers 1`: tokio's current-thread runtime), the
        // others on two workers.
        let workers = if i == 0 { "1" } else { "2" };
        let args = ["--redis-url", &url, "--workers", workers];
        replicas.push(Replica::start(&format!("r{i}"), &args, &[]).await);
    }
    replicas
}

/// Every member receives `count` messages from each sender in `senders`, exactly once and in
/// each sender's order; nothing else arrives.
async fn expect_from_each(client: &mut Client, senders: &[usize], count: usize) {
    let mut next: HashMap<usize, usize> = senders.iter().map(|s| (*s, 0)).collect();
    for _ in 0..senders.len() * count {
        let text = client.recv_text().await;
        let body = text
            .strip_prefix(PREFIX)
            .unwrap_or_else(|| panic!("{text}"));
        let (sender, seq) = body.split_once('-').unwrap();
        let sender: usize = sender[1..].parse().unwrap();
        let seq: usize = seq.parse().unwrap();
        let expected = next
            .get_mut(&sender)
            .unwrap_or_else(|| panic!("{text} from outside"));
        assert_eq!(seq, *expected, "c{sender}: duplicate, gap or reorder");
        *expected += 1;
    }
}

/// Nothing more arrives at any of `clients` (checked concurrently).
async fn expect_all_silent<'a>(clients: impl IntoIterator<Item = &'a mut Client>) {
    futures_util::future::join_all(
        clients
            .into_iter()
            .map(|c| c.expect_silence(Duration::from_millis(300))),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_clients_in_three_groups_over_three_replicas() {
    let redis = RedisServer::start();
    let replicas = replicas(&redis, 3).await;
    // Client i sits on replica i % 3 and in group i % 3... shifted, so every group spans every
    // replica: group = (i / 3) % 3.
    let mut clients = Vec::new();
    for i in 0..30 {
        let group = (i / 3) % 3;
        let client = replicas[i % 3].ws(&format!("/group/g{group}/")).await;
        clients.push((group, client));
    }
    for g in 0..3 {
        let channel = format!("asgi__group__g{g}");
        eventually(
            "one subscription per replica",
            Duration::from_secs(5),
            || redis.numsub(&[&channel]) == [3],
        )
        .await;
    }
    const ROUNDS: usize = 5;
    for round in 0..ROUNDS {
        for (i, (_, client)) in clients.iter_mut().enumerate() {
            client.send_text(&format!("c{i}-{round}")).await;
        }
    }
    let members: Vec<Vec<usize>> = (0..3)
        .map(|g| (0..30).filter(|i| (i / 3) % 3 == g).collect())
        .collect();
    for (group, client) in &mut clients {
        expect_from_each(client, &members[*group], ROUNDS).await;
    }
    expect_all_silent(clients.iter_mut().map(|(_, c)| c)).await;

    // The members of g0 on replica r0 leave: r0 unsubscribes, the others keep delivering.
    let (leaving, staying): (Vec<_>, Vec<_>) = clients
        .into_iter()
        .enumerate()
        .partition(|(i, (g, _))| *g == 0 && i % 3 == 0);
    for (_, (_, client)) in leaving {
        client.close().await;
    }
    eventually("r0 left g0", Duration::from_secs(5), || {
        redis.numsub(&["asgi__group__g0"]) == [2]
    })
    .await;
    let mut staying: Vec<(usize, (usize, Client))> = staying;
    let sender = staying.iter().position(|(_, (g, _))| *g == 0).unwrap();
    let sender_index = staying[sender].0;
    staying[sender]
        .1
        .1
        .send_text(&format!("c{sender_index}-0"))
        .await;
    for (_, (group, client)) in &mut staying {
        if *group == 0 {
            expect_from_each(client, &[sender_index], 1).await;
        }
    }
    expect_all_silent(staying.iter_mut().map(|(_, (_, c))| c)).await;

    // Everyone leaves: no subscription is left behind.
    for (_, (_, client)) in staying {
        client.close().await;
    }
    eventually("no subscriptions", Duration::from_secs(5), || {
        redis.numsub(&["asgi__group__g0", "asgi__group__g1", "asgi__group__g2"]) == [0, 0, 0]
    })
    .await;
    // One pattern per replica for its own channels.
    let numpat: i64 = redis.query(redis::cmd("PUBSUB").arg("NUMPAT"));
    assert_eq!(numpat, 3);
}
