//! Redis Cluster: replicas given `redis+cluster://` use sharded pub/sub (`SSUBSCRIBE` and
//! `SPUBLISH` by slot) and follow a reshard and a master failover inside the cluster.
//!
//! The test starts its own cluster (three masters, three replicas, `redis-cli --cluster
//! create`, `cluster-node-timeout 2000`) and three server replicas on free loopback ports,
//! puts 30 members in 10 groups whose channels spread over the three masters (one member of
//! each group on each replica) with one publisher per group at 10 messages/s, then
//! (1) moves the slot of one busy group to another master with `redis-cli --cluster reshard`
//! under load, and (2) kills (SIGKILL) a master that owns groups, whose replica the cluster
//! promotes. Every message sent outside those two windows reaches every member exactly once
//! and in order; what was lost was sent inside a window. It prints the times it measured.

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a failed unwrap is a failed test; the measured times are printed"
)]

#[path = "support/group_load.rs"]
mod group_load;
#[path = "support/replica.rs"]
mod replica;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use group_load::Load;
use replica::{Replica, metrics};
use test_support::redis_ha::Cluster;

/// How soon after a fault ends group messages must flow again.
const RECOVERY: Duration = Duration::from_secs(5);

/// `t3394` hashes to slot 0 (`asgi__group__t3394`), the first slot a reshard of its master
/// moves; nine more groups, picked so that every master owns some.
fn groups(cluster: &Cluster) -> Vec<(String, u16)> {
    let mut groups = vec![("t3394".to_owned(), cluster.keyslot("asgi__group__t3394"))];
    assert_eq!(groups[0].1, 0, "asgi__group__t3394 is in slot 0");
    let mut per_master: HashMap<u16, usize> = HashMap::new();
    per_master.insert(cluster.owner(0), 1);
    for i in 0.. {
        if groups.len() == 10 {
            break;
        }
        let name = format!("room{i}");
        let slot = cluster.keyslot(&format!("asgi__group__{name}"));
        let owner = cluster.owner(slot);
        let count = per_master.entry(owner).or_default();
        if *count < 4 {
            *count += 1;
            groups.push((name, slot));
        }
    }
    assert_eq!(
        per_master.len(),
        3,
        "the groups spread over the three masters"
    );
    groups
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_replicas_follow_a_reshard_and_a_failover_under_load() {
    let mut cluster = Cluster::start();
    let url = cluster.url();
    let args = ["--redis-url", &url, "--max-messages-per-second", "0"];
    let replicas = [
        Replica::start("a", &args, &[]).await,
        Replica::start("b", &args, &[]).await,
        Replica::start("c", &args, &[]).await,
    ];
    let groups = groups(&cluster);
    let mut load = Load::new();
    for (name, _) in &groups {
        for r in &replicas {
            load.member(&r.name, r.port, name).await;
        }
    }
    for (i, (name, _)) in groups.iter().enumerate() {
        load.publisher(replicas[i % 3].port, name, Duration::from_millis(100));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // (1) The slot of the busiest group (slot 0) moves to another master under load.
    let from = cluster.owner(0);
    let to = *cluster.masters().iter().find(|p| **p != from).unwrap();
    let reshard_start = Instant::now();
    let output = tokio::task::block_in_place(|| cluster.reshard(from, to, 1));
    let reshard_end = Instant::now();
    assert_eq!(cluster.owner(0), to, "slot 0 moved:\n{output}");
    println!(
        "reshard of slot 0 from :{from} to :{to} took {:?}",
        reshard_end - reshard_start
    );
    tokio::time::sleep(RECOVERY + Duration::from_secs(1)).await;

    // (2) A master that owns groups dies; the cluster promotes its replica.
    let victim = *cluster
        .masters()
        .iter()
        .find(|p| **p != to && groups.iter().any(|(_, s)| cluster.owner(*s) == **p))
        .unwrap();
    let victim_slots: Vec<u16> = groups
        .iter()
        .map(|(_, s)| *s)
        .filter(|s| cluster.owner(*s) == victim)
        .collect();
    let killed = Instant::now();
    cluster.node_mut(victim).kill();
    let deadline = killed + Duration::from_secs(30);
    while tokio::task::block_in_place(|| cluster.owner(victim_slots[0])) == victim {
        assert!(
            Instant::now() < deadline,
            "the cluster never promoted a replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = Instant::now();
    tokio::task::block_in_place(|| cluster.wait_ok());
    let ok = Instant::now();
    println!(
        "master :{victim} killed: replica promoted after {:?}, cluster_state ok after {:?}",
        promoted - killed,
        ok - killed
    );
    tokio::time::sleep(RECOVERY + Duration::from_secs(2)).await;
    let report = load.finish().await;

    let windows = [
        (reshard_start, reshard_end + RECOVERY),
        (killed, ok + RECOVERY),
    ];
    let lost = report.assert_losses_within(&windows);
    let sent = report.sent_total();
    println!(
        "{lost} deliveries lost of {} ({sent} messages sent)",
        sent * 3
    );
    for (name, (open, close)) in ["reshard", "failover"].iter().zip(windows) {
        let lost: Vec<Instant> = report
            .members
            .iter()
            .flat_map(|m| {
                report
                    .sent
                    .iter()
                    .flat_map(move |s| m.missing(s).into_iter().map(|seq| s.at[seq]))
            })
            .filter(|at| *at >= open - group_load::IN_FLIGHT && *at <= close)
            .collect();
        match lost.iter().max() {
            Some(last) => println!(
                "{name}: {} deliveries lost; the last lost message was sent {:?} after the \
                 window opened",
                lost.len(),
                last.saturating_duration_since(open)
            ),
            None => println!("{name}: nothing lost"),
        }
    }
    let mut moves = 0.0;
    for r in &replicas {
        moves += metrics(r.port)
            .await
            .get("channels_layer_redis_master_switches_total")
            .copied()
            .unwrap_or_default();
    }
    println!("channels resubscribed on another node, all replicas: {moves}");
    assert!(
        moves >= 6.0,
        "every replica followed the moved slot and the failed-over master"
    );
}
