//! The seed's two chats over real sockets.

mod support;

use channels_layer::{ChannelLayer, GroupName, Map, Message, Value};
use support::{SILENCE, eventually, spawn};
use tokio_tungstenite::tungstenite::Message as Frame;

#[tokio::test]
async fn echo_chat_replies_with_the_seed_prefix() {
    let server = spawn().await;
    let mut ws = server.ws("/room/123/").await;
    ws.send_text("hello").await;
    assert_eq!(ws.recv_text().await, "服务端主动推送消息:hello");
    ws.send_text("你好 <b>").await;
    assert_eq!(ws.recv_text().await, "服务端主动推送消息:你好 <b>");
    ws.close().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn exit_makes_the_server_close_with_1000() {
    let server = spawn().await;
    let mut ws = server.ws("/room/123/").await;
    ws.send_text("exit").await;
    assert_eq!(ws.expect_close().await.0, 1000);
    drop(ws);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn binary_frame_to_the_echo_chat_closes_with_1003() {
    let server = spawn().await;
    let mut ws = server.ws("/room/1/").await;
    ws.send_binary(b"\x00\x01").await;
    assert_eq!(ws.expect_close().await.0, 1003);
    drop(ws);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn three_group_members_each_get_every_message_in_order() {
    let server = spawn().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.ws("/group/g1/").await);
    }
    eventually("three members", || server.layer.stats().channels == 3).await;
    for round in 0..5 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send_text(&format!("c{i}-{round}")).await;
        }
    }
    for c in &mut clients {
        let mut next = [0; 3];
        for _ in 0..15 {
            let text = c.recv_text().await;
            let body = text.strip_prefix("组内主动推送消息:").expect("seed prefix");
            let (sender, round) = body[1..].split_once('-').unwrap();
            let sender: usize = sender.parse().unwrap();
            assert_eq!(
                round.parse::<usize>().unwrap(),
                next[sender],
                "order from c{sender}"
            );
            next[sender] += 1;
        }
        c.expect_silence(SILENCE).await;
    }
    drop(clients);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_member_that_left_stops_receiving() {
    let server = spawn().await;
    let mut a = server.ws("/group/lobby/").await;
    let b = server.ws("/group/lobby/").await;
    eventually("two members", || server.layer.stats().channels == 2).await;
    b.close().await;
    eventually("b's channel gone", || server.layer.stats().channels == 1).await;
    let mut c = server.ws("/group/lobby/").await;
    eventually("c joined", || server.layer.stats().channels == 2).await;
    a.send_text("after").await;
    assert_eq!(a.recv_text().await, "组内主动推送消息:after");
    assert_eq!(c.recv_text().await, "组内主动推送消息:after");
    assert_eq!(server.layer.stats().dropped_no_receiver, 0);
    // Only a and c were delivered to: b's membership ended with its connection.
    assert_eq!(server.layer.stats().delivered, 2);
    drop((a, c));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn groups_are_separate() {
    let server = spawn().await;
    let mut one = server.ws("/group/1/").await;
    let mut two = server.ws("/group/2/").await;
    one.send_text("x").await;
    assert_eq!(one.recv_text().await, "组内主动推送消息:x");
    two.expect_silence(SILENCE).await;
    drop((one, two));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn binary_frames_go_to_the_group_as_bytes() {
    let server = spawn().await;
    let mut a = server.ws("/group/bin/").await;
    let mut b = server.ws("/group/bin/").await;
    eventually("two members", || server.layer.stats().channels == 2).await;
    a.send_binary(&[0, 159, 255]).await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv().await, Frame::binary(vec![0, 159, 255]));
    }
    drop((a, b));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_send_msg_event_from_another_process_reaches_the_browser() {
    // The exact shape the seed's Django consumer group_sends.
    let server = spawn().await;
    let mut ws = server.ws("/group/django/").await;
    eventually("member", || server.layer.stats().channels == 1).await;
    let receive: Map = [
        ("type", Value::from("websocket.receive")),
        ("text", Value::from("从Django")),
    ]
    .into_iter()
    .collect();
    let event = Message::new("send_msg").with("message", receive);
    let group = GroupName::new("django").unwrap();
    server.layer.group_send(&group, event).await.unwrap();
    assert_eq!(ws.recv_text().await, "组内主动推送消息:从Django");
    // Unknown types and malformed events are ignored; the connection stays up.
    server
        .layer
        .group_send(&group, Message::new("nobody.handles"))
        .await
        .unwrap();
    server
        .layer
        .group_send(&group, Message::new("_private"))
        .await
        .unwrap();
    server
        .layer
        .group_send(&group, Message::new("send_msg"))
        .await
        .unwrap();
    ws.send_text("still here").await;
    assert_eq!(ws.recv_text().await, "组内主动推送消息:still here");
    drop(ws);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_group_ids_close_with_4400() {
    let server = spawn().await;
    // 组 routes (\w is Unicode, as in Python) but is not a valid Channels group name.
    for path in [
        "/group/%E7%BB%84/".to_owned(),
        format!("/group/{}/", "a".repeat(100)),
    ] {
        let mut ws = server.ws(&path).await;
        let (code, reason) = ws.expect_close().await;
        assert_eq!(
            (code, reason.as_str()),
            (4400, "invalid group name"),
            "{path}"
        );
    }
    // 99 characters is the longest valid name.
    let mut ws = server.ws(&format!("/group/{}/", "a".repeat(99))).await;
    ws.send_text("ok").await;
    assert_eq!(ws.recv_text().await, "组内主动推送消息:ok");
    assert_eq!(server.layer.stats().groups, 1);
    drop(ws);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_paths_get_404_before_the_upgrade() {
    let server = spawn().await;
    for path in ["/nowhere/", "/group/1", "/group/a-b/", "/"] {
        assert_eq!(server.refused_status(path).await, 404, "{path}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009_and_others_carry_on() {
    let server = spawn().await;
    let mut big = server.ws("/room/1/").await;
    let mut other = server.ws("/room/2/").await;
    let limit = 64 * 1024;
    big.send_text(&"x".repeat(limit)).await;
    assert!(
        big.recv_text().await.ends_with('x'),
        "a message at the limit is fine"
    );
    big.send_text(&"x".repeat(limit + 1)).await;
    assert_eq!(big.expect_close().await.0, 1009);
    other.send_text("fine").await;
    assert_eq!(other.recv_text().await, "服务端主动推送消息:fine");
    drop((big, other));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_close_gets_the_servers_close_reply() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let server = spawn().await;
    let mut ws = server.ws("/group/closing/").await;
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    ws.0.send(Frame::Close(Some(frame))).await.unwrap();
    // A clean close: the server answers with its own close frame before the stream ends.
    let reply = tokio::time::timeout(std::time::Duration::from_secs(3), ws.0.next())
        .await
        .expect("no close reply within 3 s");
    match reply {
        Some(Ok(Frame::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1000),
        other => panic!("expected the server's close frame, got {other:?}"),
    }
    server.stop().await.unwrap();
}

/// A member that sends without pause still gets every group message, its own echoes included:
/// handling its frames must not starve its inbox (whose capacity is 100) until it overflows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_sends_without_pause_still_gets_every_group_message() {
    use futures_util::{SinkExt, StreamExt};
    const COUNT: usize = 2_000;
    let mut config = channels_server::Config::default();
    config.max_messages_per_second = 0;
    let server = support::spawn_with(config, channels_server::tutorial::routes()).await;
    let client = server.ws("/group/busy/").await;
    let (mut sink, mut stream) = client.0.split();
    let sender = tokio::spawn(async move {
        for seq in 0..COUNT {
            sink.send(Frame::text(format!("{seq}"))).await.unwrap();
        }
        sink
    });
    for seq in 0..COUNT {
        let frame = tokio::time::timeout(support::TIMEOUT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("echo {seq} of {COUNT} never came"))
            .unwrap()
            .unwrap();
        assert_eq!(
            frame.into_text().unwrap().as_str(),
            format!("组内主动推送消息:{seq}")
        );
    }
    let _sink = sender.await.unwrap();
    assert_eq!(server.layer.stats().dropped_full, 0);
}
