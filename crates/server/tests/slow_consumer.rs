//! a client that stops reading is closed with 4008 once more than its queue budget waits
//! for it; the other members of its group lose nothing, and the replica's memory stays bounded.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod support;

use std::time::{Duration, Instant};

use channels_layer::{ChannelLayer, GroupName, Map, Message, Value};
use channels_server::Config;
use support::{Client, eventually, metric, raw_handshake, spawn_with};
use tokio::io::AsyncReadExt;

const MESSAGES: usize = 1000;
/// 16 KiB a message: 16 MiB in all, far more than the 1 MiB budget plus what the kernel's socket
/// buffers take before the server's writes block.
const SIZE: usize = 16 * 1024;

/// This process's resident set size (VmRSS), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn group_message(seq: usize) -> Message {
    let mut text = format!("{seq:06}-");
    text.extend(std::iter::repeat_n('x', SIZE - text.len()));
    Message::new("send_msg").with(
        "message",
        Map::from_iter([
            ("type", Value::from("websocket.receive")),
            ("text", Value::Str(text)),
        ]),
    )
}

/// Receives every message in order; returns how many arrived.
async fn read_all(client: &mut Client) -> usize {
    for seq in 0..MESSAGES {
        let text = client.recv_text().await;
        let body = text.strip_prefix("组内主动推送消息:").unwrap();
        assert_eq!(&body[..6], format!("{seq:06}"), "gap or reorder");
        assert_eq!(body.len(), SIZE);
    }
    MESSAGES
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_the_others_lose_nothing() {
    let server = spawn_with(Config::default(), channels_server::chat::routes()).await;
    assert_eq!(Config::default().max_queued_bytes, 1024 * 1024);
    // The slow member: a raw WebSocket client that completes the handshake and never reads.
    let (status, mut slow) = raw_handshake(server.addr, "/group/r08/", "x", b"").await;
    assert_eq!(status, 101);
    let mut a = server.ws("/group/r08/").await;
    let mut b = server.ws("/group/r08/").await;
    eventually("three members", || server.layer.stats().channels == 3).await;
    let rss_before = rss_kib();

    let group = GroupName::new("r08").unwrap();
    let layer = std::sync::Arc::clone(&server.layer);
    let publisher = tokio::spawn(async move {
        // 1,000 messages a second, in steps of 10 every 10 ms.
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for seq in 0..MESSAGES {
            if seq % 10 == 0 {
                tick.tick().await;
            }
            layer.group_send(&group, group_message(seq)).await.unwrap();
        }
        Instant::now()
    });
    let slow_closed = async {
        let deadline = Instant::now() + Duration::from_secs(15);
        while metric(
            server.addr,
            "channels_closes_total{by=\"server\",code=\"4008\"}",
        )
        .await
            < 1.0
        {
            assert!(Instant::now() < deadline, "the slow client was not closed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Instant::now()
    };
    let (got_a, got_b, closed_at) = tokio::join!(read_all(&mut a), read_all(&mut b), slow_closed);
    let published_at = publisher.await.unwrap();
    assert_eq!(
        (got_a, got_b),
        (MESSAGES, MESSAGES),
        "no loss for the readers"
    );
    // The budget was passed during the publishing (16 MiB were sent to it); the close came
    // within 5 s of that, at the latest 5 s after the last message.
    assert!(
        closed_at < published_at + Duration::from_secs(5),
        "closed {:?} after the last message",
        closed_at.saturating_duration_since(published_at)
    );
    assert_eq!(
        server.layer.stats().dropped_full,
        0,
        "no reader's inbox overflowed"
    );
    let growth_mib = rss_kib().saturating_sub(rss_before) / 1024;
    assert!(growth_mib < 50, "RSS grew by {growth_mib} MiB");

    // The slow client's connection is closed: reading what the kernel buffered ends in EOF
    // (after the 4008 close frame, if it fit behind the unread data).
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("the slow client's socket is still open after {total} bytes"),
        }
    }
    assert!(
        total < MESSAGES * SIZE,
        "it did not get everything: {total}"
    );
    // The readers are still members and still served.
    a.send_text("after").await;
    assert!(a.recv_text().await.ends_with("after"));
    assert!(b.recv_text().await.ends_with("after"));
    server.stop().await.unwrap();
}

/// The other rule: a client that reads nothing while less than the byte budget waits for it is
/// closed once a write has been blocked for the write timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_blocked_past_the_write_timeout_closes_with_4008() {
    let mut config = Config::default();
    config.write_timeout_secs = 1;
    config.max_queued_bytes = 16 * 1024 * 1024;
    let server = spawn_with(config, channels_server::chat::routes()).await;
    let (status, _slow) = raw_handshake(server.addr, "/group/stuck/", "x", b"").await;
    assert_eq!(status, 101);
    eventually("one member", || server.layer.stats().channels == 1).await;
    let group = GroupName::new("stuck").unwrap();
    // 8 MiB at once fill the socket buffers; then a trickle keeps the queue far under its
    // 16 MiB budget, so only the write timeout can close it.
    for seq in 0..512 {
        server
            .layer
            .group_send(&group, group_message(seq))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let mut seq = 512;
    while metric(
        server.addr,
        "channels_closes_total{by=\"server\",code=\"4008\"}",
    )
    .await
        < 1.0
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not closed after {seq} messages"
        );
        let _ = server.layer.group_send(&group, group_message(seq)).await;
        seq += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Closed about a second after the writes blocked, long before the budget.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    server.stop().await.unwrap();
}
