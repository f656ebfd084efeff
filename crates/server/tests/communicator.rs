//! Consumers driven by the test harness ([`Communicator`]): no socket, no HTTP, the real
//! connection loop. The cases no socket test covers: a `connect` that denies, a close during
//! `connect`, `disconnect` called once after the groups were left, a handler error becoming its
//! close code.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use channels_layer::{ChannelLayer, GroupName, InMemoryChannelLayer, Message};
use channels_server::consumer::{ClientMessage, Close, Consumer, Context};
use channels_server::testing::{Communicator, Output};
use channels_server::tutorial::{GroupChatConsumer, INVALID_GROUP};

/// What a [`Probe`] saw, in order.
type Calls = Arc<Mutex<Vec<String>>>;

/// A consumer that records its calls and does what its first text says.
struct Probe {
    calls: Calls,
    deny: Option<Close>,
    close_in_connect: Option<Close>,
}

impl Probe {
    fn new(calls: &Calls) -> Self {
        Self {
            calls: Arc::clone(calls),
            deny: None,
            close_in_connect: None,
        }
    }

    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

impl Consumer for Probe {
    async fn connect(&mut self, cx: &mut Context) -> Result<(), Close> {
        self.record("connect".to_owned());
        if let Some(close) = self.deny.clone() {
            return Err(close);
        }
        cx.group_add(&GroupName::new("probe").unwrap())
            .await
            .map_err(|e| Close::from(&e))?;
        if let Some(close) = self.close_in_connect.clone() {
            cx.close(close);
        }
        Ok(())
    }

    async fn receive(&mut self, cx: &mut Context, msg: ClientMessage) -> Result<(), Close> {
        let ClientMessage::Text(text) = msg else {
            return Err(Close::UNSUPPORTED);
        };
        self.record(format!("receive {text}"));
        match text.as_str() {
            "fail" => Err(Close::new(4321, "handler failed")),
            _ => cx.send_text(format!("echo {text}")),
        }
    }

    async fn event(&mut self, cx: &mut Context, event: Message) -> Result<(), Close> {
        self.record(format!("event {}", event.message_type().unwrap_or("?")));
        cx.send_text("event")
    }

    async fn disconnect(&mut self, cx: &mut Context, code: Option<u16>) {
        // Channels' order: the groups are left before `disconnect` runs.
        let still_member = !cx.groups().is_empty();
        self.record(format!("disconnect {code:?} member={still_member}"));
    }
}

fn calls(calls: &Calls) -> Vec<String> {
    calls.lock().unwrap().clone()
}

#[tokio::test]
async fn a_connect_that_denies_is_refused_with_its_close() {
    let log = Calls::default();
    let mut probe = Probe::new(&log);
    probe.deny = Some(Close::POLICY);
    let denied = Communicator::connect(probe, "/p/").await.unwrap_err();
    assert_eq!(
        denied,
        Close::POLICY,
        "the server answers this with HTTP 403"
    );
    assert_eq!(calls(&log), ["connect"], "no other handler runs");
}

#[tokio::test]
async fn a_close_during_connect_accepts_then_closes_and_leaves_the_group() {
    let log = Calls::default();
    let layer: Arc<dyn ChannelLayer> = Arc::new(InMemoryChannelLayer::default());
    let mut probe = Probe::new(&log);
    probe.close_in_connect = Some(Close::new(4000, "bye"));
    let mut comm = Communicator::builder("/p/")
        .layer(Arc::clone(&layer))
        .connect(probe)
        .await
        .unwrap();
    assert_eq!(
        comm.receive().await.unwrap(),
        Output::Closed {
            code: 4000,
            reason: "bye".to_owned()
        }
    );
    comm.wait_closed().await.unwrap();
    assert_eq!(calls(&log), ["connect", "disconnect None member=false"]);
    assert_eq!(layer.stats().groups, 0, "the group was left");
}

#[tokio::test]
async fn disconnect_runs_once_after_the_groups_were_left() {
    let log = Calls::default();
    let layer: Arc<dyn ChannelLayer> = Arc::new(InMemoryChannelLayer::default());
    let mut comm = Communicator::builder("/p/")
        .layer(Arc::clone(&layer))
        .connect(Probe::new(&log))
        .await
        .unwrap();
    comm.send_text("hi").await;
    assert_eq!(
        comm.receive().await.unwrap(),
        Output::Text("echo hi".to_owned())
    );
    // A group message reaches the consumer's `event`.
    let group = GroupName::new("probe").unwrap();
    layer
        .group_send(&group, Message::new("ping"))
        .await
        .unwrap();
    assert_eq!(
        comm.receive().await.unwrap(),
        Output::Text("event".to_owned())
    );
    assert_eq!(layer.stats().groups, 1);
    comm.disconnect(1000).await.unwrap();
    assert_eq!(
        calls(&log),
        [
            "connect",
            "receive hi",
            "event ping",
            "disconnect Some(1000) member=false"
        ]
    );
    assert_eq!(layer.stats().groups, 0);
    assert_eq!(layer.stats().channels, 0, "the inbox is gone");
}

#[tokio::test]
async fn a_handler_error_becomes_its_close_code() {
    let log = Calls::default();
    let mut comm = Communicator::connect(Probe::new(&log), "/p/")
        .await
        .unwrap();
    comm.send_text("fail").await;
    assert_eq!(
        comm.receive().await.unwrap(),
        Output::Closed {
            code: 4321,
            reason: "handler failed".to_owned()
        }
    );
    comm.send_bytes(b"ignored after the close").await;
    comm.wait_closed().await.unwrap();
    assert_eq!(
        calls(&log),
        ["connect", "receive fail", "disconnect None member=false"]
    );
}

#[tokio::test]
async fn two_group_chat_members_on_one_layer_chat_and_an_invalid_group_is_closed() {
    let layer: Arc<dyn ChannelLayer> = Arc::new(InMemoryChannelLayer::default());
    let member = |path: &str| {
        Communicator::builder(path)
            .route(r"group/(?P<groupID>\w+)/$")
            .unwrap()
            .layer(Arc::clone(&layer))
            .connect(GroupChatConsumer::default())
    };
    let mut a = member("/group/7/").await.unwrap();
    let mut b = member("/group/7/").await.unwrap();
    a.send_text("hello").await;
    for comm in [&mut a, &mut b] {
        assert_eq!(
            comm.receive().await.unwrap(),
            Output::Text("组内主动推送消息:hello".to_owned())
        );
    }
    assert!(b.receive_nothing(Duration::from_millis(100)).await);
    let long = format!("/group/{}/", "x".repeat(120));
    let mut invalid = member(&long).await.unwrap();
    assert_eq!(
        invalid.receive().await.unwrap(),
        Output::Closed {
            code: INVALID_GROUP.code,
            reason: INVALID_GROUP.reason.to_string()
        }
    );
}

/// Posts every text it receives as `to:<group>` into that group, closing with the group call's
/// close code when it fails.
struct Poster;

impl Consumer for Poster {
    async fn receive(&mut self, cx: &mut Context, msg: ClientMessage) -> Result<(), Close> {
        let ClientMessage::Text(text) = msg else {
            return Ok(());
        };
        let group = GroupName::new(text.trim_start_matches("to:")).unwrap();
        // A forged sender: the framework overwrites it with the identity's.
        let msg = Message::new("note")
            .with("user", "forged")
            .with("name", "Forged");
        cx.group_send(&group, msg)
            .await
            .map_err(|error| Close::from(&error))
    }

    async fn event(&mut self, _cx: &mut Context, _event: Message) -> Result<(), Close> {
        Ok(())
    }
}

#[tokio::test]
async fn an_identity_posts_only_into_its_groups_and_every_message_names_it() {
    use channels_server::identity::{GroupGrant, Identity};
    let layer = Arc::new(InMemoryChannelLayer::default());
    let mut member = layer.new_channel().await.unwrap();
    layer
        .group_add(&GroupName::new("team_a").unwrap(), member.name())
        .await
        .unwrap();
    let identity = Identity::new("7").with_groups(GroupGrant::new(["team_*"]));
    let mut comm = Communicator::builder("/post/")
        .layer(Arc::clone(&layer) as Arc<dyn ChannelLayer>)
        .identity(identity)
        .connect(Poster)
        .await
        .unwrap();
    comm.send_text("to:team_a").await;
    let got = tokio::time::timeout(Duration::from_secs(1), member.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.get("user").and_then(|v| v.as_str()), Some("7"));
    assert_eq!(
        got.get("name").and_then(|v| v.as_str()),
        Some("7"),
        "no name: the user id"
    );
    comm.send_text("to:other").await;
    assert_eq!(
        comm.receive().await.unwrap(),
        Output::Closed {
            code: 4403,
            reason: "forbidden".to_owned()
        }
    );
}

#[tokio::test]
async fn an_identity_that_expires_is_closed_with_4401() {
    use channels_server::identity::Identity;
    let identity =
        Identity::new("7").with_expiry(std::time::SystemTime::now() + Duration::from_millis(300));
    let mut comm = Communicator::builder("/post/")
        .identity(identity)
        .timeout(Duration::from_secs(3))
        .connect(Poster)
        .await
        .unwrap();
    assert_eq!(
        comm.receive().await.unwrap(),
        Output::Closed {
            code: 4401,
            reason: "token expired".to_owned()
        }
    );
}
