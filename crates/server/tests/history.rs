//! History and recovery on the group chat, over real sockets (in-memory layer): the query
//! parameters, the JSON frames, recovery after a reconnect, and what happens without history.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod support;

use channels_layer::ChannelLayer;
use channels_server::Config;
use serde_json::Value;
use support::{Client, SILENCE, eventually, spawn_with};

fn with_history(size: usize) -> Config {
    let mut config = Config::default();
    config.history_size = size;
    config
}

async fn server(size: usize) -> support::TestServer {
    spawn_with(with_history(size), channels_server::tutorial::routes()).await
}

async fn json(ws: &mut Client) -> Value {
    let text = ws.recv_text().await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The text and offset of a message frame.
async fn message(ws: &mut Client) -> (String, u64, String) {
    let frame = json(ws).await;
    assert_eq!(frame["type"], "message", "{frame}");
    (
        frame["text"].as_str().unwrap().to_owned(),
        frame["offset"].as_u64().unwrap(),
        frame["epoch"].as_str().unwrap().to_owned(),
    )
}

/// Sends `n` lines into group `g` from a plain member, and waits until they went through.
async fn say(server: &support::TestServer, g: &str, lines: &[&str]) {
    let mut sender = server.ws(&format!("/group/{g}/")).await;
    for line in lines {
        sender.send_text(line).await;
        // The sender is a member too: its own copy proves the message went through.
        assert_eq!(sender.recv_text().await, format!("组内主动推送消息:{line}"));
    }
    sender.close().await;
}

#[tokio::test]
async fn without_history_the_parameters_change_nothing() {
    let server = spawn_with(Config::default(), channels_server::tutorial::routes()).await;
    let mut ws = server.ws("/group/plain/?recover=1&history=5").await;
    eventually("member", || server.layer.stats().channels == 1).await;
    ws.send_text("hi").await;
    assert_eq!(ws.recv_text().await, "组内主动推送消息:hi");
    // Malformed ones are not even read.
    let mut odd = server.ws("/group/plain/?since=x").await;
    odd.send_text("still").await;
    assert_eq!(odd.recv_text().await, "组内主动推送消息:still");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn with_history_a_client_that_does_not_ask_gets_todays_frames() {
    let server = server(10).await;
    let mut ws = server.ws("/group/g/").await;
    ws.send_text("hi").await;
    assert_eq!(ws.recv_text().await, "组内主动推送消息:hi");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn recover_mode_frames_carry_offsets_in_order() {
    let server = server(10).await;
    let mut ws = server.ws("/group/r/?recover=1").await;
    eventually("member", || server.layer.stats().channels == 1).await;
    for (i, line) in ["a", "b", "c"].iter().enumerate() {
        ws.send_text(line).await;
        let (text, offset, epoch) = message(&mut ws).await;
        assert_eq!(text, format!("组内主动推送消息:{line}"));
        assert_eq!(offset, i as u64 + 1);
        assert_eq!(epoch.len(), 8);
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_new_page_gets_the_recent_history_first() {
    let server = server(5).await;
    say(&server, "h", &["1", "2", "3", "4", "5", "6", "7"]).await;
    let mut ws = server.ws("/group/h/?history=3").await;
    for (line, offset) in [("5", 5), ("6", 6), ("7", 7)] {
        let (text, got, _) = message(&mut ws).await;
        assert_eq!(
            (text.as_str(), got),
            (&*format!("组内主动推送消息:{line}"), offset)
        );
    }
    ws.expect_silence(SILENCE).await;
    // More than the history holds: what it holds.
    let mut all = server.ws("/group/h/?history=100").await;
    let mut offsets = Vec::new();
    for _ in 0..5 {
        offsets.push(message(&mut all).await.1);
    }
    assert_eq!(offsets, [3, 4, 5, 6, 7]);
    all.expect_silence(SILENCE).await;
    // Then live ones, after the history.
    ws.send_text("8").await;
    assert_eq!(message(&mut ws).await.1, 8);
    assert_eq!(message(&mut all).await.1, 8);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_reconnect_with_since_gets_exactly_what_it_missed() {
    let server = server(10).await;
    let mut ws = server.ws("/group/s/?recover=1").await;
    eventually("member", || server.layer.stats().channels == 1).await;
    ws.send_text("before").await;
    let (_, offset, epoch) = message(&mut ws).await;
    ws.close().await;
    say(&server, "s", &["m1", "m2", "m3"]).await;
    let mut back = server
        .ws(&format!("/group/s/?since={offset}&epoch={epoch}"))
        .await;
    let recovery = json(&mut back).await;
    assert_eq!(
        recovery,
        serde_json::json!({"type": "recovery", "recovered": true, "missed": 3})
    );
    for (line, expected) in ["m1", "m2", "m3"].iter().zip(offset + 1..) {
        let (text, got, e) = message(&mut back).await;
        assert_eq!(text, format!("组内主动推送消息:{line}"));
        assert_eq!((got, e.as_str()), (expected, epoch.as_str()));
    }
    back.expect_silence(SILENCE).await;
    back.send_text("after").await;
    assert_eq!(message(&mut back).await.1, offset + 4);
    // Nothing missed: recovered, nothing replayed.
    let mut again = server
        .ws(&format!("/group/s/?since={}&epoch={epoch}", offset + 4))
        .await;
    assert_eq!(json(&mut again).await["missed"], 0);
    again.expect_silence(SILENCE).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_lost_position_says_why_and_goes_on_live() {
    let server = server(3).await;
    say(&server, "w", &["1", "2", "3", "4", "5", "6"]).await;
    let mut ws = server.ws("/group/w/?recover=1").await;
    ws.send_text("7").await;
    let (_, _, epoch) = message(&mut ws).await;
    // Offset 1 fell out of the last three messages.
    let mut old = server.ws(&format!("/group/w/?since=1&epoch={epoch}")).await;
    assert_eq!(
        json(&mut old).await,
        serde_json::json!({"type": "recovery", "recovered": false, "reason": "window"})
    );
    old.expect_silence(SILENCE).await;
    // Another epoch: the history restarted since.
    let other = if epoch == "00000000" {
        "00000001"
    } else {
        "00000000"
    };
    let mut stale = server.ws(&format!("/group/w/?since=7&epoch={other}")).await;
    assert_eq!(
        json(&mut stale).await,
        serde_json::json!({"type": "recovery", "recovered": false, "reason": "epoch"})
    );
    stale.expect_silence(SILENCE).await;
    // Both go on live.
    ws.send_text("8").await;
    for client in [&mut ws, &mut old, &mut stale] {
        assert_eq!(message(client).await.1, 8);
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_recovery_parameters_are_refused_before_the_upgrade() {
    let server = server(10).await;
    for query in [
        "recover=yes",
        "history=-1",
        "since=5",
        "since=5&epoch=xyz",
        "since=a&epoch=00000000",
    ] {
        assert_eq!(
            server.refused_status(&format!("/group/g/?{query}")).await,
            400,
            "{query}"
        );
    }
    assert_eq!(server.layer.stats().channels, 0, "nothing was created");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_echo_chat_is_unchanged_with_history_on() {
    let server = server(10).await;
    let mut ws = server.ws("/room/?recover=1").await;
    ws.send_text("hi").await;
    let text = ws.recv_text().await;
    let frame: Value = serde_json::from_str(&text).unwrap();
    // Its frames are the consumer's text in the envelope, with no position: nothing of it is
    // a group message.
    assert_eq!(
        frame,
        serde_json::json!({"type": "message", "text": "服务端主动推送消息:hi"})
    );
    let mut plain = server.ws("/room/").await;
    plain.send_text("hi").await;
    assert_eq!(plain.recv_text().await, "服务端主动推送消息:hi");
    server.stop().await.unwrap();
}

/// A recovering client that falls behind until its queue overflows is closed with 4010 at the
/// first gap, after every message before it; reconnecting with `since` gets the rest, so it
/// loses nothing.
#[tokio::test]
async fn a_client_whose_queue_overflowed_closes_with_4010_and_recovers_the_rest() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as Frame;
    const SENT: usize = 400;
    let mut config = with_history(1000);
    config.capacity = 2;
    config.max_queued_bytes = 64 * 1024;
    config.max_messages_per_second = 0;
    config.write_timeout_secs = 60;
    let server = spawn_with(config, channels_server::tutorial::routes()).await;
    // A small receive window, so that the server's queue fills before the kernels' buffers
    // take everything.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(server.url("/group/o/?recover=1"), stream)
        .await
        .unwrap();
    let mut slow = Client(ws);
    let mut sender = server.ws("/group/o/").await;
    eventually("members", || server.layer.stats().channels == 2).await;
    let pad = "x".repeat(30_000);
    for i in 0..SENT {
        sender.send_text(&format!("{i:03}{pad}")).await;
        // The sender reads its own copies; `slow` reads nothing yet.
        let _ = sender.recv_text().await;
    }
    // Now `slow` reads: messages in order with consecutive offsets, then 4010 at the gap.
    let mut last = None;
    let code = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), slow.0.next()).await {
            Ok(Some(Ok(Frame::Text(text)))) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                let offset = frame["offset"].as_u64().unwrap();
                if let Some((before, _)) = last {
                    assert_eq!(offset, before + 1, "in order, no gap before the close");
                }
                let text = frame["text"].as_str().unwrap();
                assert_eq!(
                    text[GROUP_PREFIX.len()..][..3],
                    format!("{:03}", offset - 1)
                );
                last = Some((offset, frame["epoch"].as_str().unwrap().to_owned()));
            }
            Ok(Some(Ok(Frame::Close(Some(close))))) => break u16::from(close.code),
            Ok(Some(Ok(_))) => {}
            other => panic!("expected frames and a close, got {other:?} after {last:?}"),
        }
    };
    assert_eq!(code, 4010);
    let (offset, epoch) = last.expect("some messages arrived before the gap");
    assert!(offset < SENT as u64, "the queue overflowed");
    println!("4010 after offset {offset} of {SENT}");
    let mut back = server
        .ws(&format!("/group/o/?since={offset}&epoch={epoch}"))
        .await;
    let recovery = json(&mut back).await;
    assert_eq!(recovery["recovered"], true, "{recovery}");
    assert_eq!(recovery["missed"], SENT as u64 - offset);
    for expected in offset + 1..=SENT as u64 {
        assert_eq!(message(&mut back).await.1, expected);
    }
    server.stop().await.unwrap();
}

const GROUP_PREFIX: &str = "组内主动推送消息:";
