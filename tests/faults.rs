//! Fault tests: Redis going away, its pub/sub connections killed, a replica partitioned from it
//! by a fault-injecting proxy, connection churn, and message order under load across replicas.
//! Each test names the goal of `reliability-security.md` it checks (R-xx) and asserts its pass
//! criterion.
//!
//! Every test starts its own `redis-server` and replica processes on free loopback ports, and
//! runs a [`Load`]: members of one group on every replica, reading everything, and publishers
//! sending numbered messages, so that loss, duplicates and reordering are counted, not guessed.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

#[path = "support/fault_proxy.rs"]
mod fault_proxy;
use test_support::redis_server;
#[path = "support/replica.rs"]
mod replica;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fault_proxy::FaultProxy;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use redis_server::RedisServer;
use replica::{Client, Replica, eventually, metrics, wait_readyz};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "组内主动推送消息:";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Replica flags for load: publishers here send faster than the default per-connection limit.
const LOAD_ARGS: [&str; 2] = ["--max-messages-per-second", "0"];

async fn start_replica(name: &str, redis_url: &str) -> Replica {
    let mut args = vec!["--redis-url", redis_url];
    args.extend(LOAD_ARGS);
    Replica::start(name, &args, &[]).await
}

/// Replicas `a`, `b` and `c` on `redis`.
async fn three_replicas(redis: &RedisServer) -> [Replica; 3] {
    let url = redis.url();
    [
        start_replica("a", &url).await,
        start_replica("b", &url).await,
        start_replica("c", &url).await,
    ]
}

/// One delivery as a member saw it: publisher `p` sent it as its `seq`-th message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Seen {
    publisher: usize,
    seq: usize,
}

/// Everything one member received, in arrival order, and how its connection ended.
#[derive(Debug)]
struct Member {
    replica: String,
    /// When its handshake completed (it was in the group from then on).
    joined: Instant,
    seen: Vec<Seen>,
    /// The server's close code, if the server closed the connection during the run.
    closed: Option<(u16, Instant)>,
}

impl Member {
    /// The sequence numbers from `publisher`, checked to be strictly increasing (no duplicate,
    /// no reordering).
    fn from(&self, publisher: usize) -> Vec<usize> {
        let seqs: Vec<usize> = self
            .seen
            .iter()
            .filter(|s| s.publisher == publisher)
            .map(|s| s.seq)
            .collect();
        for pair in seqs.windows(2) {
            assert!(
                pair[0] < pair[1],
                "member on {} got p{publisher}'s {} after {}: duplicate or reordered",
                self.replica,
                pair[1],
                pair[0]
            );
        }
        seqs
    }

    /// The messages of `sent` this member never received, in send order (those sent before
    /// it joined or after the server closed its connection do not count).
    fn missing(&self, sent: &Sent) -> Vec<usize> {
        let got: HashSet<usize> = self.from(sent.id).into_iter().collect();
        let open = |seq: &usize| {
            let at = sent.at[*seq];
            at > self.joined && self.closed.is_none_or(|(_, closed)| at < closed)
        };
        (0..sent.at.len())
            .filter(|s| !got.contains(s) && open(s))
            .collect()
    }
}

/// What one publisher sent: `at[seq]` is when it sent its `seq`-th message.
#[derive(Debug)]
struct Sent {
    id: usize,
    at: Vec<Instant>,
}

/// How a publisher paces itself.
#[derive(Clone, Copy)]
enum Pace {
    /// One message every `Duration`, until the load stops.
    Every(Duration),
    /// `n` messages as fast as the server takes them.
    Burst(usize),
}

/// Members of one group on several replicas plus publishers that are members too.
struct Load {
    group: String,
    /// Publishers wait for this before their first message.
    go: CancellationToken,
    stop_publishing: CancellationToken,
    stop_reading: CancellationToken,
    members: Vec<JoinHandle<Member>>,
    publishers: Vec<JoinHandle<Sent>>,
}

impl Load {
    /// `members` lists the replica of each plain member.
    async fn start(group: &str, members: &[&Replica]) -> Load {
        let mut load = Load {
            group: group.to_owned(),
            go: CancellationToken::new(),
            stop_publishing: CancellationToken::new(),
            stop_reading: CancellationToken::new(),
            members: Vec::new(),
            publishers: Vec::new(),
        };
        for replica in members {
            // A plain member never sends: its sink is dropped, the socket stays open.
            let _sink = load.join(replica).await;
        }
        load
    }

    /// Connects a member to `replica` and starts reading; returns the sink of its socket.
    async fn join(&mut self, replica: &Replica) -> SplitSink<Ws, Message> {
        let client = replica.ws(&format!("/group/{}/", self.group)).await;
        let (sink, stream) = client.0.split();
        self.members.push(tokio::spawn(read(
            replica.name.clone(),
            Instant::now(),
            stream,
            self.stop_reading.clone(),
        )));
        sink
    }

    /// Adds a publisher on `replica` (a member too), with the next publisher id. It starts
    /// at [`Load::go`], or at once if that has been called.
    async fn publish(&mut self, replica: &Replica, pace: Pace) -> usize {
        let id = self.publishers.len();
        let sink = self.join(replica).await;
        let (go, stop) = (self.go.clone(), self.stop_publishing.clone());
        self.publishers.push(tokio::spawn(async move {
            go.cancelled().await;
            publish(id, sink, pace, stop).await
        }));
        id
    }

    /// Starts the publishers.
    fn go(&self) {
        self.go.cancel();
    }

    /// Waits for the burst publishers to finish (or stops the paced ones), lets the last
    /// messages arrive, and collects what everyone saw.
    async fn finish(self) -> Report {
        let mut sent = Vec::new();
        self.go.cancel();
        self.stop_publishing.cancel();
        for p in self.publishers {
            sent.push(p.await.unwrap());
        }
        self.stop_reading.cancel();
        let mut members = Vec::new();
        for m in self.members {
            members.push(m.await.unwrap());
        }
        Report { members, sent }
    }
}

/// Reads one member's socket until the load stops, then until it has been quiet for a second.
async fn read(
    replica: String,
    joined: Instant,
    mut stream: SplitStream<Ws>,
    stop: CancellationToken,
) -> Member {
    let mut member = Member {
        replica,
        joined,
        seen: Vec::new(),
        closed: None,
    };
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = stop.cancelled() => break,
        };
        if !member.record(next) {
            return member;
        }
    }
    while let Ok(next) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
        if !member.record(next) {
            break;
        }
    }
    member
}

impl Member {
    /// Records one frame; false once the connection has ended.
    fn record(
        &mut self,
        next: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> bool {
        match next {
            Some(Ok(Message::Text(text))) => {
                let body = text
                    .as_str()
                    .strip_prefix(PREFIX)
                    .unwrap_or_else(|| panic!("unexpected frame {text}"));
                let (publisher, seq) = body[1..].split_once('-').unwrap();
                self.seen.push(Seen {
                    publisher: publisher.parse().unwrap(),
                    seq: seq.parse().unwrap(),
                });
                true
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                self.closed = Some((code, Instant::now()));
                false
            }
            Some(Ok(_)) => true,
            None | Some(Err(_)) => false,
        }
    }
}

async fn publish(
    id: usize,
    mut sink: SplitSink<Ws, Message>,
    pace: Pace,
    stop: CancellationToken,
) -> Sent {
    let mut sent = Sent { id, at: Vec::new() };
    let (mut ticker, count) = match pace {
        Pace::Every(period) => (Some(tokio::time::interval(period)), usize::MAX),
        Pace::Burst(n) => (None, n),
    };
    for seq in 0..count {
        if let Some(ticker) = ticker.as_mut() {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => break,
            }
        }
        let at = Instant::now();
        if sink
            .send(Message::text(format!("p{id}-{seq}")))
            .await
            .is_err()
        {
            break;
        }
        sent.at.push(at);
    }
    sent
}

/// How long a message may be on its way (client, replica, Redis, replica) when a fault hits it:
/// such a message may be lost although it was sent just before the fault.
const IN_FLIGHT: Duration = Duration::from_millis(200);

/// What a load run saw.
struct Report {
    members: Vec<Member>,
    sent: Vec<Sent>,
}

impl Report {
    fn on<'a>(&'a self, replica: &'a str) -> impl Iterator<Item = &'a Member> + 'a {
        self.members.iter().filter(move |m| m.replica == replica)
    }

    /// Every member got every message of every publisher, in each publisher's order.
    fn assert_complete<'a>(&self, members: impl IntoIterator<Item = &'a Member>) {
        for member in members {
            for sent in &self.sent {
                let missing = member.missing(sent);
                assert!(
                    missing.is_empty(),
                    "member on {} missed {} of p{}'s {} messages (first {:?})",
                    member.replica,
                    missing.len(),
                    sent.id,
                    sent.at.len(),
                    &missing[..missing.len().min(5)]
                );
            }
        }
    }

    /// Every message a member of `members` missed was sent inside `window`, or in flight when
    /// it opened (up to [`IN_FLIGHT`] before); returns how many deliveries were lost.
    fn assert_losses_within<'a>(
        &self,
        members: impl IntoIterator<Item = &'a Member>,
        window: (Instant, Instant),
    ) -> usize {
        let window = (window.0 - IN_FLIGHT, window.1);
        let mut lost = 0;
        for member in members {
            for sent in &self.sent {
                for seq in member.missing(sent) {
                    let at = sent.at[seq];
                    assert!(
                        at >= window.0 && at <= window.1,
                        "member on {} missed p{}'s {seq}, sent outside the fault window \
                         ({:?} after it opened; it lasted {:?})",
                        member.replica,
                        sent.id,
                        at.checked_duration_since(window.0),
                        window.1 - window.0
                    );
                    lost += 1;
                }
            }
        }
        lost
    }
}

/// `PUBSUB NUMSUB` of the load's group channel.
fn group_subscribers(redis: &RedisServer, group: &str) -> i64 {
    redis.numsub(&[&format!("asgi__group__{group}")])[0]
}

/// The steady load of the fault tests: `members` join `group`, one publisher on `publisher`
/// sends 50 messages/s, and the load runs until every member's replica is subscribed and
/// `warmup` has passed.
async fn steady_load(
    redis: &RedisServer,
    group: &str,
    members: &[&Replica],
    publisher: &Replica,
    warmup: Duration,
) -> Load {
    let mut load = Load::start(group, members).await;
    load.publish(publisher, Pace::Every(Duration::from_millis(20)))
        .await;
    load.go();
    let replicas: HashSet<&str> = members
        .iter()
        .chain([&publisher])
        .map(|r| r.name.as_str())
        .collect();
    eventually("subscribed", Duration::from_secs(5), || {
        group_subscribers(redis, group) == replicas.len() as i64
    })
    .await;
    tokio::time::sleep(warmup).await;
    load
}

/// R-01 `redis_restart_resubscribes`: Redis goes away for 5 s under load and comes back on the
/// same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load_fails_fast_and_resubscribes() {
    let mut redis = RedisServer::start();
    let replicas = three_replicas(&redis).await;
    let [a, b, c] = &replicas;
    let mut load = steady_load(
        &redis,
        "phoenix",
        &[a, a, b, b, c, c],
        b,
        Duration::from_millis(500),
    )
    .await;

    let stopping = Instant::now();
    redis.stop();
    let killed = Instant::now();
    // Every replica says "layer disconnected" (readiness 503) about at once.
    for replica in &replicas {
        wait_readyz(replica, 503, Duration::from_secs(2)).await;
    }
    let detected = killed.elapsed();
    println!("three replicas not ready {detected:?} after redis stopped");
    assert!(detected < Duration::from_millis(1500), "{detected:?}");
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(killed.elapsed())).await;

    redis.restart();
    let back = Instant::now();
    for replica in &replicas {
        wait_readyz(replica, 200, Duration::from_secs(3)).await;
    }
    eventually("resubscribed", Duration::from_secs(3), || {
        group_subscribers(&redis, "phoenix") == 3
    })
    .await;
    let recovered = back.elapsed();
    println!("three replicas subscribed again {recovered:?} after redis restarted");
    assert!(recovered < Duration::from_secs(2), "{recovered:?}");

    // Messages published from now on reach every member.
    load.publish(c, Pace::Burst(200)).await;
    let report = load.finish().await;

    // The publisher on b learnt of the outage from its next send: close 1013 within a second
    // (a group_send during the outage fails fast; it never hangs or reports success).
    let publisher = report
        .members
        .iter()
        .find(|m| m.closed.is_some())
        .expect("the publisher on b was told to retry later");
    let (code, at) = publisher.closed.unwrap();
    assert_eq!(code, 1013);
    let told = at.saturating_duration_since(stopping);
    println!("publisher closed with 1013 {told:?} after redis stopped");
    assert!(told < Duration::from_millis(1500), "{told:?}");
    let after = &report.sent[1];
    assert_eq!(after.at.len(), 200);
    for member in report.members.iter().filter(|m| m.closed.is_none()) {
        assert!(member.missing(after).is_empty(), "{}", member.replica);
    }
    // Before the outage nothing was lost; what was lost was sent while Redis was away.
    let lost = report.assert_losses_within(&report.members, (stopping, back + recovered));
    println!("{lost} deliveries lost during the outage");
}

/// R-02 `pubsub_client_kill`: `CLIENT KILL TYPE pubsub` under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pubsub_connections_come_back_and_lose_only_the_reconnect_window() {
    let redis = RedisServer::start();
    let replicas = three_replicas(&redis).await;
    let [a, b, c] = &replicas;
    let load = steady_load(
        &redis,
        "kill",
        &[a, a, b, b, c, c],
        b,
        Duration::from_millis(500),
    )
    .await;

    let killed_at = Instant::now();
    let killed: i64 = redis.query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"));
    assert_eq!(killed, 3, "one subscriber connection per replica");
    eventually("resubscribed", Duration::from_secs(2), || {
        group_subscribers(&redis, "kill") == 3
    })
    .await;
    let resubscribed = killed_at.elapsed();
    println!("subscribed again {resubscribed:?} after CLIENT KILL");
    for replica in &replicas {
        wait_readyz(replica, 200, Duration::from_secs(3)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.finish().await;

    // Nobody was closed; loss (if any) is limited to the reconnect window, and it is reported:
    // every replica counted the disconnect.
    assert!(report.members.iter().all(|m| m.closed.is_none()));
    let window = (
        killed_at,
        killed_at + resubscribed + Duration::from_millis(100),
    );
    let lost = report.assert_losses_within(&report.members, window);
    println!("{lost} deliveries lost in the reconnect window");
    for replica in &replicas {
        let m = metrics(replica.port).await;
        assert!(
            m["channels_layer_disconnects_total"] >= 1.0,
            "{} did not report the disconnect",
            replica.name
        );
    }
}

/// R-03 `partition_one_replica`: the proxy black-holes replica A's Redis link for 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_replica_is_detected_and_recovers_and_the_others_lose_nothing() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.port()).await;
    let a = start_replica("a", &proxy.redis_url()).await;
    let b = start_replica("b", &redis.url()).await;
    let c = start_replica("c", &redis.url()).await;
    let load = steady_load(
        &redis,
        "island",
        &[&a, &a, &a, &b, &b, &c, &c],
        &b,
        Duration::from_millis(500),
    )
    .await;

    proxy.blackhole();
    let cut = Instant::now();
    let detected = wait_readyz(&a, 503, Duration::from_secs(5)).await;
    println!("a detected the partition after {detected:?}");
    for other in [&b, &c] {
        assert_eq!(replica::http_status(other.port, "/readyz").await, Some(200));
    }
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(cut.elapsed())).await;

    proxy.heal();
    let healed = Instant::now();
    let recovered = wait_readyz(&a, 200, Duration::from_secs(5)).await;
    println!("a ready again {recovered:?} after the partition healed");
    assert!(recovered < Duration::from_secs(2), "{recovered:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.finish().await;

    assert!(report.members.iter().all(|m| m.closed.is_none()));
    report.assert_complete(report.on("b").chain(report.on("c")));
    // A's members lose at most what was published while the link was down, and everything
    // after A recovered reaches them.
    let lost = report.assert_losses_within(report.on("a"), (cut, healed + recovered));
    println!("a's members lost {lost} deliveries in the partition");
    let m = metrics(a.port).await;
    assert!(m["channels_layer_disconnects_total"] >= 1.0);
}

/// Replica `a` behind a fault proxy and `b` straight on Redis, with a warmed-up steady load on
/// `group`: two members on `a`, one on `b`, which also publishes.
struct Starvable {
    redis: RedisServer,
    proxy: FaultProxy,
    a: Replica,
    b: Replica,
    load: Load,
}

impl Starvable {
    async fn start(group: &str) -> Starvable {
        let redis = RedisServer::start();
        let proxy = FaultProxy::start(redis.port()).await;
        let a = start_replica("a", &proxy.redis_url()).await;
        let b = start_replica("b", &redis.url()).await;
        let load = steady_load(
            &redis,
            group,
            &[&a, &a, &b],
            &b,
            Duration::from_millis(1500),
        )
        .await;
        Starvable {
            redis,
            proxy,
            a,
            b,
            load,
        }
    }
}

/// R-04 `silent_starvation_probe`: replica A's subscriber connection stops getting messages
/// while it still answers pings. A's liveness probe (one `PUBLISH` to its own pattern per 1 s
/// ping interval) notices within three intervals, the connection is replaced, and delivery
/// resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_hears_nothing_is_replaced_and_delivery_resumes() {
    let Starvable {
        redis: _redis,
        proxy,
        a,
        b: _b,
        load,
    } = Starvable::start("deaf").await;
    let disconnects =
        |m: std::collections::HashMap<String, f64>| m["channels_layer_disconnects_total"];
    let before = disconnects(metrics(a.port).await);

    proxy.starve();
    let starved = Instant::now();
    while disconnects(metrics(a.port).await) == before {
        assert!(
            starved.elapsed() < Duration::from_secs(6),
            "a never noticed that its subscriber hears nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let detected = starved.elapsed();
    println!("a replaced its deaf subscriber {detected:?} after it went deaf");
    assert!(detected < Duration::from_millis(3500), "{detected:?}");
    let recovered = wait_readyz(&a, 200, Duration::from_secs(3)).await;
    println!("a ready again {recovered:?} later");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.finish().await;

    assert!(report.members.iter().all(|m| m.closed.is_none()));
    report.assert_complete(report.on("b"));
    let lost =
        report.assert_losses_within(report.on("a"), (starved, starved + detected + recovered));
    println!("a's members lost {lost} deliveries while it was deaf");
    assert!(lost > 0, "the proxy did not starve a's subscriber");
}

/// R-09 `per_publisher_order` and R-10 `total_order_concurrent`: members on three replicas see
/// each publisher's messages in order with no gap, and all see the same interleaving of
/// concurrent publishers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_sees_each_publisher_in_order_and_all_see_one_interleaving() {
    let redis = RedisServer::start();
    let replicas = three_replicas(&redis).await;
    let [a, b, c] = &replicas;

    // one publisher, 10,000 messages as fast as the server takes them.
    let mut load = Load::start("order", &[a, b, b, c, c]).await;
    eventually("subscribed", Duration::from_secs(5), || {
        group_subscribers(&redis, "order") == 3
    })
    .await;
    load.publish(a, Pace::Burst(10_000)).await;
    let report = load.finish().await;
    assert_eq!(report.sent[0].at.len(), 10_000);
    report.assert_complete(&report.members);

    // three publishers on three replicas at once.
    let mut load = Load::start("interleave", &[a, b, c]).await;
    eventually("subscribed", Duration::from_secs(5), || {
        group_subscribers(&redis, "interleave") == 3
    })
    .await;
    for replica in &replicas {
        load.publish(replica, Pace::Burst(1_000)).await;
    }
    load.go();
    let report = load.finish().await;
    report.assert_complete(&report.members);
    let first = &report.members[0].seen;
    assert_eq!(first.len(), 3_000);
    let switches = first
        .windows(2)
        .filter(|w| w[0].publisher != w[1].publisher)
        .count();
    println!("the publishers interleaved {switches} times");
    for member in &report.members {
        assert!(
            member.seen == *first,
            "a member on {} saw another interleaving than one on {}",
            member.replica,
            report.members[0].replica
        );
    }
}

/// `INFO clients`' `connected_clients`, without the connection asking.
fn redis_clients(redis: &RedisServer) -> usize {
    let info: String = redis.query(redis::cmd("INFO").arg("clients"));
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap();
    line.trim().parse::<usize>().unwrap() - 1
}

/// R-11 `membership_cleanup`: 1,000 connect/join/send/leave cycles per replica leave no
/// member, group, subscription or Redis connection behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_no_member_subscription_or_connection_behind() {
    const CYCLES: usize = 1_000;
    const CONCURRENCY: usize = 20;
    const GROUPS: usize = 25;
    let redis = RedisServer::start();
    let url = redis.url();
    let replicas = [
        start_replica("a", &url).await,
        start_replica("b", &url).await,
    ];
    let started = Instant::now();
    let mut workers = Vec::new();
    for replica in &replicas {
        for worker in 0..CONCURRENCY {
            let url = replica.ws_url("");
            workers.push(tokio::spawn(async move {
                for cycle in (worker..CYCLES).step_by(CONCURRENCY) {
                    let group = cycle % GROUPS;
                    let mut client = Client::connect(&format!("{url}/group/churn{group}/")).await;
                    // Every third cycle also talks, and waits to hear itself through Redis.
                    if cycle % 3 == 0 {
                        let text = format!("{url}-{cycle}");
                        client.send_text(&text).await;
                        while client.recv_text().await != format!("{PREFIX}{text}") {}
                    }
                    client.close().await;
                }
            }));
        }
    }
    for worker in workers {
        worker.await.unwrap();
    }
    println!(
        "{} cycles on {} replicas in {:?}",
        CYCLES,
        replicas.len(),
        started.elapsed()
    );

    let groups: Vec<String> = (0..GROUPS)
        .map(|g| format!("asgi__group__churn{g}"))
        .collect();
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    eventually("no subscription left", Duration::from_secs(5), || {
        redis.numsub(&groups).iter().all(|n| *n == 0)
    })
    .await;
    assert!(redis.channels("asgi__group__*").is_empty());
    for replica in &replicas {
        let m = metrics(replica.port).await;
        assert_eq!(m["channels_connections_open"], 0.0, "{}", replica.name);
        assert_eq!(m["channels_layer_groups"], 0.0, "{}", replica.name);
        assert_eq!(m["channels_layer_channels"], 0.0, "{}", replica.name);
        assert_eq!(
            m["channels_connections_total"], CYCLES as f64,
            "{}",
            replica.name
        );
    }
    // Per replica: one subscriber plus at most the publisher pool (16). A leak of one
    // connection per thousand cycles would show.
    let clients = redis_clients(&redis);
    println!("{clients} redis connections after the churn");
    assert!(
        clients <= replicas.len() * 17,
        "{clients} redis connections"
    );
}

/// Sends a WebSocket handshake for `path` to the replica on `port`, waits `after`, and resets
/// the connection (SO_LINGER 0) without reading the answer: a client that gives up while the
/// server is still running `connect`.
async fn handshake_then_reset(port: u16, path: &str, after: Duration) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    if !after.is_zero() {
        tokio::time::sleep(after).await;
    }
    stream.set_zero_linger().unwrap();
    drop(stream);
}

/// Issue 11: clients that send the handshake of a group and reset the connection before reading
/// the 101, mixed with normal joins, leave no Redis subscription behind, not even after the
/// subscriber reconnects (`CLIENT KILL TYPE pubsub`) and resubscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_reset_before_the_101_leave_no_subscription_behind() {
    const CYCLES: usize = 1_500;
    const CONCURRENCY: usize = 16;
    const GROUPS: usize = 100;
    let redis = RedisServer::start();
    // One address opens them all: the per-address caps would refuse some (reset connections
    // hold their places until the server notices).
    let url = redis.url();
    let args = [
        "--redis-url",
        &url,
        "--max-connections-per-ip",
        "0",
        "--max-http-connections-per-ip",
        "0",
    ];
    let a = Replica::start("a", &args, &[]).await;
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..CONCURRENCY {
        let (port, url) = (a.port, a.ws_url(""));
        workers.push(tokio::spawn(async move {
            for cycle in (worker..CYCLES).step_by(CONCURRENCY) {
                let path = format!("/group/reset{}/", cycle % GROUPS);
                if cycle % 5 == 0 {
                    Client::connect(&format!("{url}{path}")).await.close().await;
                } else {
                    // Resets at 0 to 3 ms after the request: before, during and after `connect`.
                    let after = Duration::from_micros((cycle as u64 * 397) % 3_000);
                    handshake_then_reset(port, &path, after).await;
                }
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    println!("{CYCLES} handshake cycles in {:?}", started.elapsed());

    let groups: Vec<String> = (0..GROUPS)
        .map(|g| format!("asgi__group__reset{g}"))
        .collect();
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    // The replica has no member left (a handshake it is still handling ends soon)...
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(a.port).await;
        let (groups, open) = (m["channels_layer_groups"], m["channels_connections_open"]);
        if groups == 0.0 && open == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{groups} groups and {open} connections still open"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // ...so Redis must have no subscription of it left.
    let left = redis
        .channels_left("asgi__group__*", Duration::from_secs(5))
        .await;
    assert!(
        left.is_empty(),
        "{} groups left subscribed: {left:?}",
        left.len()
    );
    assert!(redis.numsub(&groups).iter().all(|n| *n == 0));

    // A reconnect replays what the connection was subscribed to: nothing comes back.
    let killed: i64 = redis.query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"));
    assert_eq!(killed, 1, "one subscriber connection");
    eventually("the pattern resubscribed", Duration::from_secs(5), || {
        redis.query::<i64>(redis::cmd("PUBSUB").arg("NUMPAT")) == 1
    })
    .await;
    wait_readyz(&a, 200, Duration::from_secs(5)).await;
    let left = redis.channels("asgi__group__*");
    assert!(left.is_empty(), "after the resubscribe: {left:?}");
}

/// Issue 11, R-04 under attack: anyone who can publish to Redis can address a replica's
/// liveness probe channel (`asgispecific.<replica>!~probe`, the replica id being in every
/// `X-Channels-Replica` header). Forged probes published before and during the starvation
/// (the number that made the old counter wrap, other huge and negative numbers, garbage, a
/// replayed real probe and its tag on a later number) do not keep a deaf subscriber in place:
/// it is replaced, `/readyz` goes 503 and then 200 again, and the forgeries are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_probes_do_not_keep_a_deaf_subscriber_in_place() {
    let Starvable {
        redis,
        proxy,
        a,
        b: _b,
        load,
    } = Starvable::start("forged").await;
    let (_client, replica) = Client::connect_to_replica(&a.ws_url("/room/")).await;
    assert_eq!(replica, "a");
    let probe = format!("asgispecific.{replica}!~probe");

    // A real probe, as whoever watches Redis sees it.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut sniffer = client.get_async_pubsub().await.unwrap();
    sniffer.subscribe(&probe).await.unwrap();
    let real = tokio::time::timeout(Duration::from_secs(3), sniffer.on_message().next())
        .await
        .expect("no liveness probe within 3 s")
        .unwrap()
        .get_payload_bytes()
        .to_vec();
    drop(sniffer);
    let text = String::from_utf8(real.clone()).unwrap();
    let (n, tag) = text.split_once(':').unwrap_or((&text, ""));
    let n: u64 = n.parse().unwrap();
    let forged: Vec<Vec<u8>> = vec![
        b"18446744073709551615".to_vec(),
        b"99999999999999999999999999".to_vec(),
        b"-1".to_vec(),
        b"-9223372036854775808".to_vec(),
        b"garbage \xc1\xff".to_vec(),
        (n + 1).to_string().into_bytes(),
        format!("{}:{tag}", n + 2).into_bytes(),
        real,
    ];
    let mut publisher = client.get_multiplexed_async_connection().await.unwrap();
    let forging = CancellationToken::new();
    let forger = tokio::spawn({
        let forging = forging.clone();
        async move {
            while !forging.is_cancelled() {
                for payload in &forged {
                    let _: i64 = redis::cmd("PUBLISH")
                        .arg(&probe)
                        .arg(payload)
                        .query_async(&mut publisher)
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    // The forgeries reach a's healthy subscriber for a while, then it goes deaf.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = metrics(a.port).await["channels_layer_disconnects_total"];
    proxy.starve();
    let starved = Instant::now();
    let detected = wait_readyz(&a, 503, Duration::from_secs(6)).await;
    println!("a replaced its deaf subscriber {detected:?} after it went deaf, despite forgeries");
    let recovered = wait_readyz(&a, 200, Duration::from_secs(3)).await;
    println!("a ready again {recovered:?} later");
    tokio::time::sleep(Duration::from_secs(1)).await;
    forging.cancel();
    forger.await.unwrap();
    let report = load.finish().await;

    let m = metrics(a.port).await;
    assert!(m["channels_layer_disconnects_total"] > before);
    assert!(
        m["channels_layer_undecodable_total"] > 0.0,
        "the forged probes were not counted"
    );
    assert!(report.members.iter().all(|m| m.closed.is_none()));
    report.assert_complete(report.on("b"));
    let lost =
        report.assert_losses_within(report.on("a"), (starved, starved + detected + recovered));
    println!("a's members lost {lost} deliveries while it was deaf");
}
