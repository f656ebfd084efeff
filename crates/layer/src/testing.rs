//! The conformance suite: one set of cases that every backend runs.
//!
//! The cases port the scenarios of Channels' and channels_redis' own tests
//! (`test_inmemorychannel.py`, `test_core.py`, `test_pubsub.py`): send and receive, FIFO order,
//! capacity, groups, group capacity, expiry, group expiry, flush, several receivers, and
//! per-publisher order. A backend's test file expands them into `#[tokio::test]`s:
//!
//! ```text
//! fn make(config: LayerConfig) -> LayerFuture {
//!     Box::pin(async move { Arc::new(InMemoryChannelLayer::new(config)) as Arc<dyn ChannelLayer> })
//! }
//! channels_layer::conformance_suite!(make);
//! ```
//!
//! Every receive has a timeout, so a broken backend fails instead of hanging.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    ChannelCapacity, ChannelLayer, ChannelName, GroupName, Inbox, LayerConfig, LayerError, Map,
    Message, PresenceMember, Since, Value,
};

/// A backend under test, built from a configuration.
pub type LayerFuture = Pin<Box<dyn Future<Output = Arc<dyn ChannelLayer>> + Send>>;

/// How long a case waits for a message that must arrive.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a case waits to be sure a message does not arrive.
pub const ABSENCE_WAIT: Duration = Duration::from_millis(200);

/// Expands every case of the suite into a `#[tokio::test]` that builds its layer with `$make`
/// (a `fn(LayerConfig) -> LayerFuture`). `conformance_suite!(make, without_history)` leaves out
/// the cases that turn history on, for a layer that refuses it (the Redis Cluster layer).
#[macro_export]
macro_rules! conformance_suite {
    ($make:path) => {
        $crate::conformance_suite!(@common $make;
            history_positions_group_messages,
            history_keeps_the_last_n,
            history_offsets_follow_delivery_order,
            history_expires_after_its_ttl,
            send_futures_are_small_with_history
        );
    };
    ($make:path, without_history) => {
        $crate::conformance_suite!(@common $make;);
    };
    (@common $make:path; $($extra:ident),*) => {
        $crate::conformance_suite!(@cases $make;
            send_receive,
            multi_send_receive_is_fifo,
            new_channel_names_are_process_local_and_unique,
            send_capacity,
            send_specific_capacity,
            groups_basic,
            groups_channel_full_never_errors,
            groups_same_prefix,
            group_drops_are_counted,
            discard_before_add_is_fine,
            group_add_needs_a_local_channel,
            dropping_an_inbox_leaves_its_groups,
            open_channel_has_one_reader,
            send_to_a_channel_without_inbox_is_lost_not_an_error,
            message_expiry,
            group_expiry,
            group_add_refreshes_membership,
            flush_ends_inboxes_and_groups,
            several_receivers,
            per_publisher_order,
            messages_keep_every_python_type,
            oversized_messages_are_refused_and_counted,
            close_refuses_further_calls,
            history_is_off_by_default,
            presence_follows_joins_and_leaves,
            presence_reports_an_expired_member_once,
            presence_adds_many_at_once,
            send_futures_are_small
            $(, $extra)*
        );
    };
    (@cases $make:path; $($case:ident),*) => {
        $(
            #[tokio::test]
            async fn $case() {
                $crate::testing::$case($make).await;
            }
        )*
    };
}

type Make = fn(LayerConfig) -> LayerFuture;

fn group(name: &str) -> GroupName {
    GroupName::new(name).expect("test group names are valid")
}

fn channel(name: &str) -> ChannelName {
    ChannelName::new(name).expect("test channel names are valid")
}

fn msg(n: i64) -> Message {
    Message::new("test.message").with("n", n)
}

fn n_of(m: &Message) -> i64 {
    m.get("n")
        .and_then(Value::as_i64)
        .expect("test messages carry an int n")
}

/// Receives one message or panics after [`RECEIVE_TIMEOUT`].
pub async fn recv(inbox: &mut Inbox) -> Message {
    match tokio::time::timeout(RECEIVE_TIMEOUT, inbox.recv()).await {
        Ok(Some(m)) => m,
        Ok(None) => panic!("inbox {} ended while a message was expected", inbox.name()),
        Err(_) => panic!("no message on {} within {RECEIVE_TIMEOUT:?}", inbox.name()),
    }
}

/// Sends `n` messages of type `kind` from `layer` at once, each from its own task: to `group`,
/// or every other one straight to `member`'s channel when `direct`; then receives all of them
/// on `member`. For tests of how a backend spreads concurrent sends over its connections.
pub async fn burst<L: ChannelLayer + 'static>(
    layer: &Arc<L>,
    group: &GroupName,
    member: &mut Inbox,
    n: usize,
    direct: bool,
    kind: &'static str,
) {
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..n {
        let layer = Arc::clone(layer);
        let (group, to) = (group.clone(), member.name().clone());
        sends.spawn(async move {
            if direct && i % 2 == 1 {
                layer.send(&to, Message::new(kind)).await
            } else {
                layer.group_send(&group, Message::new(kind)).await
            }
        });
    }
    while let Some(sent) = sends.join_next().await {
        sent.expect("a send task panicked").expect("send");
    }
    for _ in 0..n {
        assert_eq!(recv(member).await.message_type(), Some(kind));
    }
}

/// Panics if a message arrives within [`ABSENCE_WAIT`].
pub async fn assert_empty(inbox: &mut Inbox) {
    if let Ok(Some(m)) = tokio::time::timeout(ABSENCE_WAIT, inbox.recv()).await {
        panic!("{} received {m:?}, expected nothing", inbox.name());
    }
}

/// glibc serves blocks of up to this many bytes from its per-thread cache (tcache); a larger
/// one may first consolidate its free lists.
pub const SMALL_BLOCK: usize = 1032;

/// A send's or group send's future is allocated on every call (the trait boxes it): it stays
/// within [`SMALL_BLOCK`]. Not a timing test: the size is the compiler's. Rare paths that
/// would make it large (a connection's handshake, a pool's checkout) are boxed apart; a
/// publish with them inline was 9.7 KB.
pub async fn send_futures_are_small(make: Make) {
    futures_of_sends_are_small(make, 0).await;
}

/// [`send_futures_are_small`] with history on.
pub async fn send_futures_are_small_with_history(make: Make) {
    futures_of_sends_are_small(make, 10).await;
}

async fn futures_of_sends_are_small(make: Make, history_size: usize) {
    let layer = make(LayerConfig {
        history_size,
        ..LayerConfig::default()
    })
    .await;
    let group = GroupName::new("small").expect("group name");
    let to = ChannelName::new("specific.small!x").expect("channel name");
    let group_send = layer.group_send(&group, Message::new("chat.message"));
    let send = layer.send(&to, Message::new("chat.message"));
    for (what, size) in [
        ("group_send", std::mem::size_of_val(&*group_send)),
        ("send", std::mem::size_of_val(&*send)),
    ] {
        assert!(
            size <= SMALL_BLOCK,
            "{what}'s future is {size} bytes with history_size {history_size}"
        );
    }
}

async fn layer(make: Make) -> Arc<dyn ChannelLayer> {
    make(LayerConfig::default()).await
}

async fn new_channel(layer: &Arc<dyn ChannelLayer>) -> Inbox {
    layer.new_channel().await.expect("new_channel")
}

/// test_send_receive: a message sent to a channel comes out of its inbox unchanged.
pub async fn send_receive(make: Make) {
    let layer = layer(make).await;
    let mut inbox = new_channel(&layer).await;
    let sent = Message::new("test.message").with("text", "Ahoy-hoy!");
    layer.send(inbox.name(), sent.clone()).await.expect("send");
    assert_eq!(recv(&mut inbox).await, sent);
}

/// test_multi_send_receive: three messages arrive in order.
pub async fn multi_send_receive_is_fifo(make: Make) {
    let layer = layer(make).await;
    let mut inbox = new_channel(&layer).await;
    for n in 1..=3 {
        layer.send(inbox.name(), msg(n)).await.expect("send");
    }
    for n in 1..=3 {
        assert_eq!(n_of(&recv(&mut inbox).await), n);
    }
}

/// test_process_local_send_receive and test_random_reset__channel_name.
pub async fn new_channel_names_are_process_local_and_unique(make: Make) {
    let layer = layer(make).await;
    let a = new_channel(&layer).await;
    let b = new_channel(&layer).await;
    assert!(a.name().is_process_local(), "{} has no !", a.name());
    assert_ne!(a.name(), b.name());
}

/// test_send_capacity: with capacity 3 the fourth send fails with ChannelFull.
pub async fn send_capacity(make: Make) {
    let layer = make(LayerConfig {
        capacity: 3,
        ..LayerConfig::default()
    })
    .await;
    let mut inbox = new_channel(&layer).await;
    for n in 0..3 {
        layer.send(inbox.name(), msg(n)).await.expect("send");
    }
    let err = layer.send(inbox.name(), msg(3)).await;
    assert!(matches!(err, Err(LayerError::ChannelFull(_))), "{err:?}");
    for n in 0..3 {
        assert_eq!(n_of(&recv(&mut inbox).await), n);
    }
    assert_empty(&mut inbox).await;
}

/// test_send_specific_capacity: `channel_capacity={"one": 1}` caps only the channel `one`.
pub async fn send_specific_capacity(make: Make) {
    let layer = make(LayerConfig {
        capacity: 3,
        channel_capacity: vec![ChannelCapacity::new("one", 1).expect("glob")],
        ..LayerConfig::default()
    })
    .await;
    let _one = layer.open_channel(&channel("one")).await.expect("open one");
    let _two = layer.open_channel(&channel("two")).await.expect("open two");
    layer.send(&channel("one"), msg(0)).await.expect("send");
    let err = layer.send(&channel("one"), msg(1)).await;
    assert!(matches!(err, Err(LayerError::ChannelFull(_))), "{err:?}");
    for n in 0..3 {
        layer
            .send(&channel("two"), msg(n))
            .await
            .expect("two has capacity 3");
    }
}

/// test_groups_basic: add three channels, discard one; the discarded one gets nothing.
pub async fn groups_basic(make: Make) {
    let layer = layer(make).await;
    let g = group("test-group");
    let mut inboxes = Vec::new();
    for _ in 0..3 {
        let inbox = new_channel(&layer).await;
        layer.group_add(&g, inbox.name()).await.expect("group_add");
        inboxes.push(inbox);
    }
    layer
        .group_discard(&g, inboxes[1].name())
        .await
        .expect("group_discard");
    layer.group_send(&g, msg(1)).await.expect("group_send");
    assert_eq!(n_of(&recv(&mut inboxes[0]).await), 1);
    assert_eq!(n_of(&recv(&mut inboxes[2]).await), 1);
    assert_empty(&mut inboxes[1]).await;
}

/// test_groups_channel_full: group sends to a full channel never raise; it keeps capacity.
pub async fn groups_channel_full_never_errors(make: Make) {
    let layer = make(LayerConfig {
        capacity: 3,
        ..LayerConfig::default()
    })
    .await;
    let g = group("test-group");
    let mut inbox = new_channel(&layer).await;
    layer.group_add(&g, inbox.name()).await.expect("group_add");
    for n in 0..5 {
        layer
            .group_send(&g, msg(n))
            .await
            .expect("group_send never fails");
    }
    for n in 0..3 {
        assert_eq!(n_of(&recv(&mut inbox).await), n);
    }
    assert_empty(&mut inbox).await;
}

/// test_groups_same_prefix: several channels of one process in one group all receive.
pub async fn groups_same_prefix(make: Make) {
    let layer = layer(make).await;
    let g = group("test-group");
    let mut inboxes = Vec::new();
    for _ in 0..3 {
        let inbox = new_channel(&layer).await;
        layer.group_add(&g, inbox.name()).await.expect("group_add");
        inboxes.push(inbox);
    }
    layer.group_send(&g, msg(7)).await.expect("group_send");
    for inbox in &mut inboxes {
        assert_eq!(n_of(&recv(inbox).await), 7);
    }
}

/// test_group_send_capacity: a dropped group message is counted, not silent.
pub async fn group_drops_are_counted(make: Make) {
    let layer = make(LayerConfig {
        capacity: 1,
        ..LayerConfig::default()
    })
    .await;
    let g = group("test-group");
    let full = new_channel(&layer).await;
    let mut ok = new_channel(&layer).await;
    layer.group_add(&g, full.name()).await.expect("group_add");
    layer.group_add(&g, ok.name()).await.expect("group_add");
    layer.send(full.name(), msg(0)).await.expect("fill");
    let before = layer.stats().dropped_full;
    layer.group_send(&g, msg(1)).await.expect("group_send");
    assert_eq!(n_of(&recv(&mut ok).await), 1);
    // A Redis backend delivers asynchronously: wait for the count.
    let deadline = tokio::time::Instant::now() + RECEIVE_TIMEOUT;
    while layer.stats().dropped_full != before + 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "drop not counted: {:?}",
            layer.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// test_discard_before_add: discarding a non-member is not an error.
pub async fn discard_before_add_is_fine(make: Make) {
    let layer = layer(make).await;
    let inbox = new_channel(&layer).await;
    layer
        .group_discard(&group("never-joined"), inbox.name())
        .await
        .expect("discard of a non-member");
    layer
        .group_discard(&group("never-joined"), &channel("nobody!x"))
        .await
        .expect("discard of an unknown channel");
}

/// Only channels with an inbox in this process can join a group (channels_redis pub/sub's
/// rule, which we apply to every backend).
pub async fn group_add_needs_a_local_channel(make: Make) {
    let layer = layer(make).await;
    let err = layer.group_add(&group("g"), &channel("elsewhere!x")).await;
    assert!(matches!(err, Err(LayerError::NotLocal(_))), "{err:?}");
}

/// Dropping an inbox leaves its groups (what Channels does by cancelling `receive`).
pub async fn dropping_an_inbox_leaves_its_groups(make: Make) {
    let layer = layer(make).await;
    let g = group("g");
    let a = new_channel(&layer).await;
    let mut b = new_channel(&layer).await;
    layer.group_add(&g, a.name()).await.expect("group_add");
    layer.group_add(&g, b.name()).await.expect("group_add");
    let before = layer.stats();
    drop(a);
    let after = layer.stats();
    assert_eq!(after.channels + 1, before.channels);
    layer.group_send(&g, msg(1)).await.expect("group_send");
    assert_eq!(n_of(&recv(&mut b).await), 1);
    drop(b);
    assert_eq!(layer.stats().groups, 0, "no local member left");
}

/// A channel has one reader; the name is free again once the inbox is dropped.
pub async fn open_channel_has_one_reader(make: Make) {
    let layer = layer(make).await;
    let name = channel("worker-task");
    let first = layer.open_channel(&name).await.expect("open");
    let err = layer.open_channel(&name).await;
    assert!(matches!(err, Err(LayerError::ChannelInUse(_))), "{err:?}");
    drop(first);
    let mut again = layer.open_channel(&name).await.expect("reopen");
    layer.send(&name, msg(5)).await.expect("send");
    assert_eq!(n_of(&recv(&mut again).await), 5);
}

/// At-most-once: a message to a channel nobody reads is lost, and that is not an error.
pub async fn send_to_a_channel_without_inbox_is_lost_not_an_error(make: Make) {
    let layer = layer(make).await;
    layer
        .send(&channel("nobody.listens"), msg(1))
        .await
        .expect("send to a missing channel");
}

/// test_message_expiry / test_expiry_single: a message older than `expiry` is not delivered.
pub async fn message_expiry(make: Make) {
    let layer = make(LayerConfig {
        expiry: Duration::from_millis(300),
        ..LayerConfig::default()
    })
    .await;
    let mut inbox = new_channel(&layer).await;
    layer.send(inbox.name(), msg(1)).await.expect("send");
    tokio::time::sleep(Duration::from_millis(450)).await;
    layer.send(inbox.name(), msg(2)).await.expect("send");
    assert_eq!(
        n_of(&recv(&mut inbox).await),
        2,
        "the first message expired"
    );
    assert_empty(&mut inbox).await;
}

/// Group membership ends `group_expiry` after the latest `group_add`.
pub async fn group_expiry(make: Make) {
    let layer = make(LayerConfig {
        group_expiry: Duration::from_millis(300),
        ..LayerConfig::default()
    })
    .await;
    let g = group("g");
    let mut inbox = new_channel(&layer).await;
    layer.group_add(&g, inbox.name()).await.expect("group_add");
    tokio::time::sleep(Duration::from_millis(450)).await;
    layer.group_send(&g, msg(1)).await.expect("group_send");
    assert_empty(&mut inbox).await;
}

/// A repeated `group_add` restarts the membership's expiry.
pub async fn group_add_refreshes_membership(make: Make) {
    let layer = make(LayerConfig {
        group_expiry: Duration::from_millis(400),
        ..LayerConfig::default()
    })
    .await;
    let g = group("g");
    let mut inbox = new_channel(&layer).await;
    layer.group_add(&g, inbox.name()).await.expect("group_add");
    tokio::time::sleep(Duration::from_millis(250)).await;
    layer
        .group_add(&g, inbox.name())
        .await
        .expect("group_add again");
    tokio::time::sleep(Duration::from_millis(250)).await;
    layer.group_send(&g, msg(1)).await.expect("group_send");
    assert_eq!(n_of(&recv(&mut inbox).await), 1);
}

/// flush() drops every channel and group; open inboxes end.
pub async fn flush_ends_inboxes_and_groups(make: Make) {
    let layer = layer(make).await;
    let g = group("g");
    let mut inbox = new_channel(&layer).await;
    layer.group_add(&g, inbox.name()).await.expect("group_add");
    layer.send(inbox.name(), msg(1)).await.expect("send");
    layer.flush().await.expect("flush");
    let next = tokio::time::timeout(RECEIVE_TIMEOUT, inbox.recv()).await;
    assert!(
        matches!(next, Ok(None)),
        "inbox should end after flush: {next:?}"
    );
    let stats = layer.stats();
    assert_eq!((stats.channels, stats.groups), (0, 0));
    // The layer stays usable.
    let mut fresh = new_channel(&layer).await;
    layer.send(fresh.name(), msg(2)).await.expect("send");
    assert_eq!(n_of(&recv(&mut fresh).await), 2);
}

/// Several receivers: each gets its own messages, and every one gets the group's.
pub async fn several_receivers(make: Make) {
    let layer = layer(make).await;
    let g = group("g");
    let mut inboxes = Vec::new();
    for _ in 0..5 {
        let inbox = new_channel(&layer).await;
        layer.group_add(&g, inbox.name()).await.expect("group_add");
        inboxes.push(inbox);
    }
    for (i, inbox) in inboxes.iter().enumerate() {
        layer.send(inbox.name(), msg(i as i64)).await.expect("send");
    }
    layer.group_send(&g, msg(100)).await.expect("group_send");
    for (i, inbox) in inboxes.iter_mut().enumerate() {
        assert_eq!(n_of(&recv(inbox).await), i as i64);
        assert_eq!(n_of(&recv(inbox).await), 100);
    }
}

/// Two concurrent publishers: every member sees each publisher's messages in order.
pub async fn per_publisher_order(make: Make) {
    const PER_PUBLISHER: i64 = 50;
    let layer = layer(make).await;
    let g = group("ordered");
    let mut inboxes = Vec::new();
    for _ in 0..3 {
        let inbox = new_channel(&layer).await;
        layer.group_add(&g, inbox.name()).await.expect("group_add");
        inboxes.push(inbox);
    }
    let publishers: Vec<_> = (0..2)
        .map(|p: i64| {
            let layer = Arc::clone(&layer);
            let g = g.clone();
            tokio::spawn(async move {
                for seq in 0..PER_PUBLISHER {
                    let m = Message::new("seq").with("p", p).with("n", seq);
                    layer.group_send(&g, m).await.expect("group_send");
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher task");
    }
    for inbox in &mut inboxes {
        let mut next = [0i64; 2];
        for _ in 0..2 * PER_PUBLISHER {
            let m = recv(inbox).await;
            let p = m.get("p").and_then(Value::as_i64).expect("p");
            let p = usize::try_from(p).expect("publisher index");
            assert_eq!(n_of(&m), next[p], "publisher {p} out of order");
            next[p] += 1;
        }
    }
}

/// A message with every Python type arrives equal, through `send` and `group_send`.
pub async fn messages_keep_every_python_type(make: Make) {
    let layer = layer(make).await;
    let nested: Map = [
        ("none", Value::Nil),
        (
            "list",
            Value::List(vec![Value::Int(-1), Value::Bool(false)]),
        ),
    ]
    .into_iter()
    .collect();
    let sent = Message::new("types.check")
        .with("str", "组内 <b>")
        .with("bytes", Value::Bytes(vec![0, 255, 16]))
        .with("int", i64::MIN)
        .with("big", u64::MAX)
        .with("float", 1.5)
        .with("bool", true)
        .with("map", nested);
    let mut inbox = new_channel(&layer).await;
    layer.send(inbox.name(), sent.clone()).await.expect("send");
    assert_eq!(recv(&mut inbox).await, sent);
    let g = group("types");
    layer.group_add(&g, inbox.name()).await.expect("group_add");
    layer
        .group_send(&g, sent.clone())
        .await
        .expect("group_send");
    assert_eq!(recv(&mut inbox).await, sent);
}

/// With `max_message_size` set, a larger `send` or `group_send` fails with `TooLarge`,
/// delivers nothing and is counted; a message of exactly the limit goes through.
pub async fn oversized_messages_are_refused_and_counted(make: Make) {
    let small = msg(1);
    let limit = small.encoded_len() + 100;
    let layer = make(LayerConfig {
        max_message_size: limit,
        ..LayerConfig::default()
    })
    .await;
    let mut inbox = new_channel(&layer).await;
    let g = group("big");
    layer.group_add(&g, inbox.name()).await.expect("group_add");
    // Exactly at the limit: a str of the right length.
    let base = msg(1).with("pad", "");
    let exact = msg(1).with("pad", "x".repeat(limit - base.encoded_len() - 1));
    assert_eq!(exact.encoded_len(), limit);
    layer.group_send(&g, exact).await.expect("at the limit");
    assert_eq!(n_of(&recv(&mut inbox).await), 1);
    let big = msg(2).with("pad", "x".repeat(limit));
    assert!(matches!(
        layer.group_send(&g, big.clone()).await,
        Err(LayerError::TooLarge { .. })
    ));
    assert!(matches!(
        layer.send(inbox.name(), big).await,
        Err(LayerError::TooLarge { .. })
    ));
    assert_empty(&mut inbox).await;
    assert_eq!(layer.stats().oversized, 2);
}

/// close() is idempotent and every later call fails with Closed.
pub async fn close_refuses_further_calls(make: Make) {
    let layer = layer(make).await;
    let inbox = new_channel(&layer).await;
    layer.close().await.expect("close");
    layer.close().await.expect("close again");
    assert!(matches!(layer.new_channel().await, Err(LayerError::Closed)));
    assert!(matches!(
        layer.send(inbox.name(), msg(1)).await,
        Err(LayerError::Closed)
    ));
    assert!(matches!(
        layer.group_send(&group("g"), msg(1)).await,
        Err(LayerError::Closed)
    ));
}

fn history_config(size: usize) -> LayerConfig {
    LayerConfig {
        history_size: size,
        ..LayerConfig::default()
    }
}

fn offsets(messages: &[Message]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| {
            m.position()
                .expect("history messages have a position")
                .offset
        })
        .collect()
}

/// Without a history size, nothing is stored and nothing carries a position.
pub async fn history_is_off_by_default(make: Make) {
    let layer = layer(make).await;
    assert_eq!(layer.history_size(), 0);
    let g = group("nohistory");
    assert!(matches!(
        layer.history(&g, Since::Latest(1)).await,
        Err(LayerError::HistoryOff)
    ));
    let mut inbox = new_channel(&layer).await;
    layer.group_add(&g, inbox.name()).await.expect("group_add");
    layer.group_send(&g, msg(1)).await.expect("group_send");
    assert_eq!(recv(&mut inbox).await.position(), None);
}

/// With history on, group messages arrive with offsets 1, 2, 3 in one epoch (the one a read
/// before the first message saw), direct sends without, and the history returns what was sent
/// after an offset, equal and positioned.
pub async fn history_positions_group_messages(make: Make) {
    let layer = make(history_config(5)).await;
    assert_eq!(layer.history_size(), 5);
    let g = group("positioned");
    let before = layer.history(&g, Since::After(0)).await.expect("history");
    assert_eq!((before.top, before.messages.len()), (0, 0));
    assert!(before.is_complete_after(0));
    let mut inbox = new_channel(&layer).await;
    layer.group_add(&g, inbox.name()).await.expect("group_add");
    let typed = Message::new("types.check")
        .with("str", "组内 <b>")
        .with("bytes", Value::Bytes(vec![0, 255]))
        .with("big", u64::MAX);
    layer.group_send(&g, msg(1)).await.expect("group_send");
    layer
        .group_send(&g, typed.clone())
        .await
        .expect("group_send");
    layer.group_send(&g, msg(3)).await.expect("group_send");
    layer.send(inbox.name(), msg(4)).await.expect("send");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(recv(&mut inbox).await);
    }
    assert_eq!(offsets(&got), [1, 2, 3]);
    assert!(
        got.iter()
            .all(|m| m.position().map(|p| p.epoch) == Some(before.epoch))
    );
    assert_eq!(recv(&mut inbox).await.position(), None, "a direct send");
    let read = layer.history(&g, Since::After(1)).await.expect("history");
    assert_eq!((read.epoch, read.top), (before.epoch, 3));
    assert_eq!(offsets(&read.messages), [2, 3]);
    assert_eq!(read.messages[0], typed);
    assert!(read.is_complete_after(1));
    let other = layer
        .history(&group("other"), Since::Latest(5))
        .await
        .expect("history");
    assert_eq!(
        (other.top, other.messages.len()),
        (0, 0),
        "history is per group"
    );
}

/// The history holds the last `history_size` messages: recovery from before them is not
/// complete, and `Latest(n)` gives the newest n, oldest first.
pub async fn history_keeps_the_last_n(make: Make) {
    let layer = make(history_config(5)).await;
    let g = group("window");
    for n in 1..=8 {
        layer.group_send(&g, msg(n)).await.expect("group_send");
    }
    let read = layer.history(&g, Since::After(0)).await.expect("history");
    assert_eq!(read.top, 8);
    assert_eq!(offsets(&read.messages), [4, 5, 6, 7, 8]);
    assert!(!read.is_complete_after(0), "1..3 fell out of the window");
    assert!(!read.is_complete_after(2));
    let read = layer.history(&g, Since::After(3)).await.expect("history");
    assert!(read.is_complete_after(3));
    let latest = layer.history(&g, Since::Latest(3)).await.expect("history");
    assert_eq!(offsets(&latest.messages), [6, 7, 8]);
    assert_eq!(
        latest.messages.iter().map(n_of).collect::<Vec<_>>(),
        [6, 7, 8]
    );
    let all = layer
        .history(&g, Since::Latest(100))
        .await
        .expect("history");
    assert_eq!(offsets(&all.messages), [4, 5, 6, 7, 8]);
}

/// Two concurrent publishers: every member sees offsets 1, 2, 3, ... with no gap and no
/// reordering, which is what lets a client detect a loss.
pub async fn history_offsets_follow_delivery_order(make: Make) {
    const PER_PUBLISHER: i64 = 40;
    let layer = make(history_config(100)).await;
    let g = group("ordered");
    let mut inboxes = Vec::new();
    for _ in 0..2 {
        let inbox = new_channel(&layer).await;
        layer.group_add(&g, inbox.name()).await.expect("group_add");
        inboxes.push(inbox);
    }
    let publishers: Vec<_> = (0..2)
        .map(|p: i64| {
            let layer = Arc::clone(&layer);
            let g = g.clone();
            tokio::spawn(async move {
                for seq in 0..PER_PUBLISHER {
                    let m = Message::new("seq").with("p", p).with("n", seq);
                    layer.group_send(&g, m).await.expect("group_send");
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher task");
    }
    for inbox in &mut inboxes {
        let mut got = Vec::new();
        for _ in 0..2 * PER_PUBLISHER {
            got.push(recv(inbox).await);
        }
        let expected: Vec<u64> = (1..=2 * PER_PUBLISHER as u64).collect();
        assert_eq!(offsets(&got), expected);
    }
    let read = layer.history(&g, Since::After(0)).await.expect("history");
    assert_eq!(read.messages.len(), 2 * PER_PUBLISHER as usize);
}

/// The messages are kept `history_ttl` after the group's latest one; its epoch and top offset
/// outlive them, so a client that was away longer learns it missed messages.
pub async fn history_expires_after_its_ttl(make: Make) {
    let layer = make(LayerConfig {
        history_size: 10,
        history_ttl: Duration::from_secs(1),
        ..LayerConfig::default()
    })
    .await;
    let g = group("ttl");
    layer.group_send(&g, msg(1)).await.expect("group_send");
    layer.group_send(&g, msg(2)).await.expect("group_send");
    let before = layer.history(&g, Since::After(0)).await.expect("history");
    assert_eq!(offsets(&before.messages), [1, 2]);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let after = layer.history(&g, Since::After(0)).await.expect("history");
    assert_eq!((after.epoch, after.top), (before.epoch, 2));
    assert!(after.messages.is_empty());
    assert!(!after.is_complete_after(0));
    assert!(after.is_complete_after(2), "nothing was missed");
    layer.group_send(&g, msg(3)).await.expect("group_send");
    let next = layer.history(&g, Since::After(2)).await.expect("history");
    assert_eq!(
        (next.epoch, offsets(&next.messages)),
        (before.epoch, vec![3])
    );
}

fn member(user: &str, channel: &str) -> PresenceMember {
    PresenceMember {
        user: user.to_owned(),
        name: format!("{user} name"),
        channel: channel.to_owned(),
        replica: "r1".to_owned(),
        joined_at: 1_700_000_000.5,
    }
}

fn users(members: &[PresenceMember]) -> Vec<String> {
    let mut users: Vec<String> = members.iter().map(|m| m.user.clone()).collect();
    users.sort();
    users
}

/// Presence holds what was added, per group, until it is removed.
pub async fn presence_follows_joins_and_leaves(make: Make) {
    let layer = layer(make).await;
    let g = group("present");
    let ttl = Duration::from_secs(30);
    let (a, b) = (
        member("alice", "specific.x!a"),
        member("bob", "specific.x!b"),
    );
    layer.presence_add(&g, &a, ttl).await.expect("presence_add");
    layer.presence_add(&g, &b, ttl).await.expect("presence_add");
    layer.presence_add(&g, &b, ttl).await.expect("a refresh");
    let read = layer.presence(&g).await.expect("presence");
    assert_eq!(users(&read.members), ["alice", "bob"]);
    assert!(read.expired.is_empty());
    assert!(read.members.contains(&a), "every field kept: {read:?}");
    assert!(
        layer
            .presence_remove(&g, &channel("specific.x!a"))
            .await
            .expect("remove")
    );
    assert!(
        !layer
            .presence_remove(&g, &channel("specific.x!a"))
            .await
            .expect("remove")
    );
    assert_eq!(
        users(&layer.presence(&g).await.expect("presence").members),
        ["bob"]
    );
    let other = layer.presence(&group("elsewhere")).await.expect("presence");
    assert!(other.members.is_empty() && other.expired.is_empty());
}

/// A member whose process stopped refreshing it expires; the first read after that removes it
/// and reports it, and no later read does again.
pub async fn presence_reports_an_expired_member_once(make: Make) {
    let layer = layer(make).await;
    let g = group("expiring");
    layer
        .presence_add(
            &g,
            &member("gone", "specific.x!g"),
            Duration::from_millis(500),
        )
        .await
        .expect("presence_add");
    layer
        .presence_add(
            &g,
            &member("stays", "specific.x!s"),
            Duration::from_secs(30),
        )
        .await
        .expect("presence_add");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let read = layer.presence(&g).await.expect("presence");
    assert_eq!(users(&read.members), ["stays"]);
    assert_eq!(users(&read.expired), ["gone"]);
    let again = layer.presence(&g).await.expect("presence");
    assert!(again.expired.is_empty(), "reported once: {again:?}");
}

/// `presence_add_many` adds every member to its own group, across more members than one Redis
/// call takes, and refreshes members already there.
pub async fn presence_adds_many_at_once(make: Make) {
    let layer = layer(make).await;
    let ttl = Duration::from_secs(30);
    let groups = [group("many-a"), group("many-b"), group("many-c")];
    let entries: Vec<(GroupName, PresenceMember)> = (0..600)
        .map(|i| {
            let g = groups[i % groups.len()].clone();
            (g, member(&format!("user{i}"), &format!("specific.x!m{i}")))
        })
        .collect();
    layer
        .presence_add_many(&entries, ttl)
        .await
        .expect("presence_add_many");
    layer
        .presence_add_many(&entries[..10], ttl)
        .await
        .expect("a refresh");
    for g in &groups {
        let read = layer.presence(g).await.expect("presence");
        let mut want: Vec<String> = entries
            .iter()
            .filter(|(eg, _)| eg == g)
            .map(|(_, m)| m.user.clone())
            .collect();
        want.sort();
        assert_eq!(users(&read.members), want, "{g}");
        assert!(read.expired.is_empty());
    }
    let read = layer.presence(&groups[1]).await.expect("presence");
    assert!(
        read.members.contains(&entries[1].1),
        "every field kept: {read:?}"
    );
    layer
        .presence_add_many(&[], ttl)
        .await
        .expect("nothing to add");
}
