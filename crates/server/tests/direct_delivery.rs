//! The fan-out's fast path (`--direct-delivery`, issue 18): group messages written to idle
//! members' sockets by the task that received them. Clients must see exactly the frames, in
//! exactly the order, that the members' own tasks would send: text and binary messages
//! interleaved (binary ones take the slow path), large frames that the socket takes only in
//! part, a member that stops reading for a while, and the server's pings in between.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod support;

use std::time::Duration;

use channels_layer::{ChannelLayer, GroupName, Map, Message, Value};
use channels_server::Config;
use support::{Client, TestServer, eventually, metric, spawn_with};
use tokio_tungstenite::tungstenite::Message as Frame;

const DIRECT: &str = "channels_messages_sent_direct_total";

/// The seed's group event for message `seq`: every seventh one binary (not a shared text, so
/// it goes through the member's task), the others text padded to `size` bytes.
fn event(seq: usize, size: usize) -> Message {
    let receive = if seq % 7 == 3 {
        Map::from_iter([
            ("type", Value::from("websocket.receive")),
            ("bytes", Value::Bytes(seq.to_be_bytes().to_vec())),
        ])
    } else {
        let mut text = format!("{seq:06}-");
        text.extend(std::iter::repeat_n('x', size.saturating_sub(text.len())));
        Map::from_iter([
            ("type", Value::from("websocket.receive")),
            ("text", Value::Str(text)),
        ])
    };
    Message::new("send_msg").with("message", receive)
}

/// Reads `count` data frames and checks each is the frame for its sequence number, in order.
async fn expect_in_order(client: &mut Client, count: usize, size: usize) {
    for seq in 0..count {
        match (client.recv().await, seq % 7 == 3) {
            (Frame::Binary(bytes), true) => assert_eq!(&bytes[..], seq.to_be_bytes(), "#{seq}"),
            (Frame::Text(text), false) => {
                let text = text.as_str();
                let body = text
                    .strip_prefix("组内主动推送消息:")
                    .unwrap_or_else(|| panic!("#{seq}: not the seed's text: {text:.40}"));
                assert!(
                    body.starts_with(&format!("{seq:06}-")),
                    "#{seq}: got {body:.20}"
                );
                assert_eq!(body.len(), size.max(7), "#{seq}");
            }
            (other, _) => panic!("#{seq}: unexpected frame {other:?}"),
        }
    }
}

async fn members(server: &TestServer, group: &str, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(server.ws(&format!("/group/{group}/")).await);
    }
    eventually("members joined", || server.layer.stats().channels == n).await;
    clients
}

async fn publish(server: &TestServer, group: &str, count: usize, size: usize) {
    let group = GroupName::new(group).unwrap();
    for seq in 0..count {
        server
            .layer
            .group_send(&group, event(seq, size))
            .await
            .unwrap();
        if seq % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The default: shared texts go straight to the sockets, binary ones through the members, and
/// every member gets every frame in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_texts_take_the_fast_path_and_keep_their_order() {
    let server = spawn_with(Config::default(), channels_server::tutorial::routes()).await;
    let mut clients = members(&server, "fast", 5).await;
    publish(&server, "fast", 500, 40).await;
    for client in &mut clients {
        expect_in_order(client, 500, 40).await;
    }
    let direct = metric(server.addr, DIRECT).await;
    let sent = metric(server.addr, "channels_messages_sent_total").await;
    assert_eq!(sent, 2500.0, "every frame counted once");
    assert!(direct > 0.0, "the fast path was never taken");
    // Binary messages (72 of 500 per member) are not shared texts.
    assert!(direct <= 5.0 * (500.0 - 72.0), "{direct} direct writes");
    server.stop().await.unwrap();
}

/// `--direct-delivery false`: the same frames, all through the members' tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turned_off_every_message_goes_through_the_member() {
    let mut config = Config::default();
    config.direct_delivery = false;
    let server = spawn_with(config, channels_server::tutorial::routes()).await;
    let mut clients = members(&server, "slowpath", 3).await;
    publish(&server, "slowpath", 300, 40).await;
    for client in &mut clients {
        expect_in_order(client, 300, 40).await;
    }
    assert_eq!(metric(server.addr, DIRECT).await, 0.0);
    assert_eq!(
        metric(server.addr, "channels_messages_sent_total").await,
        900.0
    );
    server.stop().await.unwrap();
}

/// 16 KiB frames to a member that stops reading for a second: the socket fills, direct writes
/// are taken in part and finished by the member's task, later messages queue behind them, and
/// once it reads again it gets everything, whole and in order, as the member that kept reading
/// does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_pauses_gets_whole_frames_in_order() {
    const COUNT: usize = 300;
    const SIZE: usize = 16 * 1024;
    let mut config = Config::default();
    // Room for everything that waits while it does not read: nothing may be dropped here.
    config.capacity = COUNT;
    let server = spawn_with(config, channels_server::tutorial::routes()).await;
    let mut clients = members(&server, "pause", 2).await;
    let (mut reader, mut paused) = {
        let paused = clients.pop().unwrap();
        (clients.pop().unwrap(), paused)
    };
    let publishing = publish(&server, "pause", COUNT, SIZE);
    let reading = expect_in_order(&mut reader, COUNT, SIZE);
    let pausing = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        expect_in_order(&mut paused, COUNT, SIZE).await;
    };
    tokio::join!(publishing, reading, pausing);
    assert!(metric(server.addr, DIRECT).await > 0.0);
    assert_eq!(server.layer.stats().dropped_full, 0);
    server.stop().await.unwrap();
}

/// The server's pings (written by the member's task) and direct writes (by the delivering task)
/// share one socket: every frame arrives whole, and the connection stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_direct_writes_share_the_socket() {
    let mut config = Config::default();
    config.ping_interval_secs = 1;
    let server = spawn_with(config, channels_server::tutorial::routes()).await;
    let mut clients = members(&server, "pings", 3).await;
    let group = GroupName::new("pings").unwrap();
    let layer = std::sync::Arc::clone(&server.layer);
    // 2.5 s of messages: at least two pings to each (silent) client meanwhile.
    let publisher = tokio::spawn(async move {
        for seq in 0..250 {
            layer.group_send(&group, event(seq, 2000)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    for client in &mut clients {
        expect_in_order(client, 250, 2000).await;
    }
    publisher.await.unwrap();
    assert!(metric(server.addr, DIRECT).await > 0.0);
    assert_eq!(
        metric(server.addr, "channels_connections_open").await,
        3.0,
        "no connection closed"
    );
    server.stop().await.unwrap();
}
