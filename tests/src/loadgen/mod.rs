//! The load generator: N WebSocket connections in G groups over several replicas, P publishers
//! per group at R messages/s each. It counts every delivery (loss, duplicates, per-publisher
//! order), measures one-way latency in an HDR histogram (publisher and receivers share this
//! process's clock), and reports connect time, its own CPU share, and the CPU and memory of the
//! server processes it is told about.
//!
//! Modes: [`fanout`] (also the big-group scenario), [`idle`] (hold N connections, for memory per
//! connection), [`echo`] (request/response round trips).

pub mod proto;
mod sample;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use proto::{Incoming, Protocol, Sender, Stream};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub use sample::{CpuSample, Latency, ProcessReport};

/// Connection settings shared by every mode.
#[derive(Debug, Clone)]
pub struct Target {
    /// `ws://host:port` of each replica; connections are spread over them round-robin.
    pub urls: Vec<String>,
    /// The protocol they speak.
    pub protocol: Protocol,
    /// Handshakes in flight at once.
    pub connect_concurrency: usize,
    /// Spread source addresses over 127.0.0.1 ..= 127.0.0.N (past ~28k ports per address pair).
    pub source_ips: u8,
    /// Server processes whose CPU and memory to report.
    pub pids: Vec<u32>,
    /// Makes group names unique to this run.
    pub tag: String,
    /// A query string for every handshake URL (without `?`), e.g. a connection token.
    pub query: Option<String>,
    /// Request headers for every handshake, e.g. a session cookie.
    pub headers: Vec<(String, String)>,
}

/// How the connect phase went.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    /// Connections opened.
    pub connections: usize,
    /// Wall time of the whole phase.
    pub seconds: f64,
    /// Connections (handshake, and for the seed protocol the group join) per second.
    pub per_second: f64,
    /// Handshake latency.
    pub handshake_ms: Latency,
}

async fn connect_all(
    target: &Target,
    plan: &[(usize, String)],
    echo: bool,
) -> anyhow::Result<(Vec<(Sender, Stream)>, ConnectReport)> {
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(target.connect_concurrency.max(1)));
    let hist = Arc::new(sample::Recorder::new());
    let mut tasks = Vec::with_capacity(plan.len());
    for (i, (url_index, group)) in plan.iter().enumerate() {
        let url = target.urls[*url_index % target.urls.len()].clone();
        let group = group.clone();
        let protocol = target.protocol;
        let source = (target.source_ips > 1).then(|| {
            let n = u8::try_from(i % usize::from(target.source_ips)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, n + 1))
        });
        let gate = Arc::clone(&gate);
        let hist = Arc::clone(&hist);
        let extra = proto::Extra {
            query: target.query.clone(),
            headers: target.headers.clone(),
        };
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let t = Instant::now();
            let conn = proto::connect(&url, protocol, &group, echo, source, &extra)
                .await
                .with_context(|| format!("connecting to {url} for {group}"))?;
            hist.record(t.elapsed());
            anyhow::Ok(conn)
        }));
    }
    let mut conns = Vec::with_capacity(tasks.len());
    for task in tasks {
        conns.push(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    let report = ConnectReport {
        connections: conns.len(),
        seconds,
        per_second: conns.len() as f64 / seconds.max(1e-9),
        handshake_ms: hist.latency_ms(),
    };
    Ok((conns, report))
}

/// Fan-out settings.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// Groups.
    pub groups: usize,
    /// Members per group (publishers included).
    pub members: usize,
    /// Publishers per group.
    pub publishers: usize,
    /// Messages per second per publisher.
    pub rate: f64,
    /// Measured publishing time.
    pub duration: Duration,
    /// Time after publishing stops for in-flight messages to arrive.
    pub drain: Duration,
    /// Padding added to each message, in bytes.
    pub payload_bytes: usize,
}

/// What a fan-out run measured.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// The protocol.
    pub protocol: Protocol,
    /// Connections.
    pub connections: usize,
    /// Groups and members per group.
    pub groups: usize,
    /// Members per group.
    pub members: usize,
    /// Publishers per group.
    pub publishers: usize,
    /// Offered publish rate, all publishers together.
    pub offered_publishes_per_sec: f64,
    /// Messages published.
    pub published: u64,
    /// Deliveries expected (each published message times its group's members).
    pub expected: u64,
    /// Deliveries that arrived (distinct).
    pub delivered: u64,
    /// Deliveries that never arrived.
    pub lost: u64,
    /// Deliveries that arrived twice or out of their publisher's order.
    pub duplicated_or_reordered: u64,
    /// Delivered messages per second over the publishing time.
    pub delivered_per_sec: f64,
    /// One-way latency, publish to receive.
    pub latency_ms: Latency,
    /// The connect phase.
    pub connect: ConnectReport,
    /// This load generator's CPU share during publishing (100 = one core).
    pub loadgen_cpu_percent: f64,
    /// The servers' CPU and memory during publishing.
    pub servers: Vec<ProcessReport>,
}

/// Per-group readiness and results.
struct Shared {
    epoch: Instant,
    /// Per group: members that saw a probe.
    ready: Vec<AtomicUsize>,
    published: Vec<AtomicU64>,
    delivered: AtomicU64,
    disordered: AtomicU64,
    latency: sample::Recorder,
    failed: AtomicBool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Warmup,
    Measure,
    Stop,
}

/// Runs the fan-out scenario.
pub async fn fanout(target: &Target, opts: &FanoutOptions) -> anyhow::Result<FanoutReport> {
    if opts.publishers == 0 || opts.publishers > opts.members || opts.rate <= 0.0 {
        bail!("need 1 <= publishers <= members and a positive rate");
    }
    // Member j of group g connects to replica (g * members + j + g) % replicas: every group
    // spans every replica, and the groups' publishers (their first members) alternate too.
    let plan: Vec<(usize, String)> = (0..opts.groups * opts.members)
        .map(|i| {
            let group = i / opts.members;
            (i + group, format!("{}g{group}", target.tag))
        })
        .collect();
    let (conns, connect) = connect_all(target, &plan, false).await?;
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        ready: (0..opts.groups).map(|_| AtomicUsize::new(0)).collect(),
        published: (0..opts.groups * opts.publishers)
            .map(|_| AtomicU64::new(0))
            .collect(),
        delivered: AtomicU64::new(0),
        disordered: AtomicU64::new(0),
        latency: sample::Recorder::new(),
        failed: AtomicBool::new(false),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Warmup);
    let padding = "x".repeat(opts.payload_bytes);
    let mut tasks = Vec::with_capacity(conns.len());
    for (i, (sender, stream)) in conns.into_iter().enumerate() {
        let group = i / opts.members;
        let member = Member {
            // Publishers start spread over one period, not all on the same tick.
            phase: Duration::from_secs_f64(group as f64 / opts.groups as f64 / opts.rate),
            group,
            publisher: (i % opts.members < opts.publishers).then_some(i % opts.members),
            publishers: opts.publishers,
            period: Duration::from_secs_f64(1.0 / opts.rate),
            protocol: target.protocol,
            padding: padding.clone(),
        };
        let shared = Arc::clone(&shared);
        let phase = phase_rx.clone();
        tasks.push(tokio::spawn(member.run(sender, stream, shared, phase)));
    }
    // Warm-up: the first publisher of each group probes until every member has heard it, so
    // that every join has completed before anything is measured.
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared
        .ready
        .iter()
        .any(|r| r.load(Ordering::Relaxed) < opts.members)
    {
        if Instant::now() > deadline || shared.failed.load(Ordering::Relaxed) {
            bail!("groups did not become ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = CpuSample::take(&target.pids);
    let started = Instant::now();
    phase_tx.send_replace(Phase::Measure);
    tokio::time::sleep(opts.duration).await;
    let publishing = started.elapsed();
    let cpu_report = cpu.finish(&target.pids, publishing);
    phase_tx.send_replace(Phase::Stop);
    tokio::time::sleep(opts.drain).await;
    for task in tasks {
        task.abort();
    }
    let published: u64 = shared
        .published
        .iter()
        .map(|p| p.load(Ordering::Relaxed))
        .sum();
    let expected = published * opts.members as u64;
    let delivered = shared.delivered.load(Ordering::Relaxed);
    Ok(FanoutReport {
        protocol: target.protocol,
        connections: connect.connections,
        groups: opts.groups,
        members: opts.members,
        publishers: opts.publishers,
        offered_publishes_per_sec: (opts.groups * opts.publishers) as f64 * opts.rate,
        published,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicated_or_reordered: shared.disordered.load(Ordering::Relaxed),
        delivered_per_sec: delivered as f64 / publishing.as_secs_f64(),
        latency_ms: shared.latency.latency_ms(),
        connect,
        loadgen_cpu_percent: cpu_report.0,
        servers: cpu_report.1,
    })
}

struct Member {
    phase: Duration,
    group: usize,
    publisher: Option<usize>,
    publishers: usize,
    period: Duration,
    protocol: Protocol,
    padding: String,
}

impl Member {
    async fn run(
        self,
        mut sender: Sender,
        mut stream: Stream,
        shared: Arc<Shared>,
        mut phase: watch::Receiver<Phase>,
    ) {
        let mut next = vec![0u64; self.publishers];
        let mut ready = false;
        let mut seq = 0u64;
        let is_prober = self.publisher == Some(0);
        let mut ticker = tokio::time::interval(if is_prober && *phase.borrow() == Phase::Warmup {
            Duration::from_millis(100)
        } else {
            self.period
        });
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut current = *phase.borrow();
        loop {
            let publishing = match current {
                Phase::Warmup => is_prober,
                Phase::Measure => self.publisher.is_some(),
                Phase::Stop => false,
            };
            tokio::select! {
                changed = phase.changed() => {
                    if changed.is_err() { return; }
                    current = *phase.borrow();
                    if current == Phase::Measure {
                        ticker = tokio::time::interval_at(Instant::now() + self.phase, self.period);
                        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
                    }
                }
                _ = ticker.tick(), if publishing => {
                    let Some(p) = self.publisher else { continue };
                    let now = shared.epoch.elapsed().as_micros();
                    let text = if current == Phase::Warmup {
                        format!("probe:{now}")
                    } else {
                        let global = self.group * self.publishers + p;
                        shared.published[global].fetch_add(1, Ordering::Relaxed);
                        seq += 1;
                        format!("{p}:{}:{now}:{}", seq - 1, self.padding)
                    };
                    if sender.send(&text, false).await.is_err() {
                        shared.failed.store(true, Ordering::Relaxed);
                        return;
                    }
                }
                incoming = proto::recv(&mut stream, self.protocol) => match incoming {
                    Incoming::Chat(body) => {
                        if let Some(rest) = body.strip_prefix("probe:") {
                            let _ = rest;
                            if !ready {
                                ready = true;
                                shared.ready[self.group].fetch_add(1, Ordering::Relaxed);
                            }
                            continue;
                        }
                        self.record(&body, &mut next, &shared);
                    }
                    Incoming::Ping => {
                        if sender.pong().await.is_err() { return; }
                    }
                    Incoming::Other => {}
                    Incoming::Closed => {
                        if current != Phase::Stop {
                            shared.failed.store(true, Ordering::Relaxed);
                        }
                        return;
                    }
                }
            }
        }
    }

    fn record(&self, body: &str, next: &mut [u64], shared: &Shared) {
        let mut parts = body.splitn(4, ':');
        let (Some(p), Some(seq), Some(sent)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let (Ok(p), Ok(seq), Ok(sent)) =
            (p.parse::<usize>(), seq.parse::<u64>(), sent.parse::<u128>())
        else {
            return;
        };
        let Some(expected) = next.get_mut(p) else {
            return;
        };
        if seq < *expected {
            shared.disordered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *expected = seq + 1;
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        let now = shared.epoch.elapsed().as_micros();
        shared.latency.record(Duration::from_micros(
            u64::try_from(now.saturating_sub(sent)).unwrap_or(u64::MAX),
        ));
    }
}

/// Idle settings.
#[derive(Debug, Clone)]
pub struct IdleOptions {
    /// Connections to hold.
    pub connections: usize,
    /// Groups they join (round-robin).
    pub groups: usize,
    /// How long to hold them while measuring idle CPU.
    pub hold: Duration,
}

/// What an idle run measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// The connect phase.
    pub connect: ConnectReport,
    /// Server resident memory before connecting, KiB, per process.
    pub rss_before_kib: Vec<u64>,
    /// Server resident memory while holding the connections, KiB, per process.
    pub rss_after_kib: Vec<u64>,
    /// Added resident memory per connection, bytes (all servers together).
    pub rss_per_connection_bytes: f64,
    /// The servers' CPU while the connections sit idle.
    pub idle: Vec<ProcessReport>,
    /// This load generator's CPU share while idle.
    pub loadgen_cpu_percent: f64,
}

/// Opens and holds idle connections; measures memory per connection and idle CPU.
pub async fn idle(target: &Target, opts: &IdleOptions) -> anyhow::Result<IdleReport> {
    let before: Vec<u64> = target.pids.iter().map(|p| sample::rss_kib(*p)).collect();
    let plan: Vec<(usize, String)> = (0..opts.connections)
        .map(|i| (i, format!("{}idle{}", target.tag, i % opts.groups.max(1))))
        .collect();
    let (conns, connect) = connect_all(target, &plan, false).await?;
    // Let the server settle (joins, allocator) before reading memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = CpuSample::take(&target.pids);
    tokio::time::sleep(opts.hold).await;
    let (loadgen_cpu_percent, idle) = cpu.finish(&target.pids, opts.hold);
    let after: Vec<u64> = target.pids.iter().map(|p| sample::rss_kib(*p)).collect();
    let added: u64 = after
        .iter()
        .sum::<u64>()
        .saturating_sub(before.iter().sum());
    drop(conns);
    Ok(IdleReport {
        rss_per_connection_bytes: (added * 1024) as f64 / opts.connections.max(1) as f64,
        connect,
        rss_before_kib: before,
        rss_after_kib: after,
        idle,
        loadgen_cpu_percent,
    })
}

/// What an echo run measured.
#[derive(Debug, Clone, Serialize)]
pub struct EchoReport {
    /// Connections, each with one request in flight.
    pub connections: usize,
    /// Round trips completed per second.
    pub round_trips_per_sec: f64,
    /// Round-trip latency.
    pub latency_ms: Latency,
    /// This load generator's CPU share.
    pub loadgen_cpu_percent: f64,
    /// The servers' CPU and memory.
    pub servers: Vec<ProcessReport>,
}

/// Request/response round trips on `connections` echo connections for `duration`.
pub async fn echo(
    target: &Target,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<EchoReport> {
    let plan: Vec<(usize, String)> = (0..connections).map(|i| (i, format!("e{i}"))).collect();
    let (conns, _) = connect_all(target, &plan, true).await?;
    let latency = Arc::new(sample::Recorder::new());
    let count = Arc::new(AtomicU64::new(0));
    let cpu = CpuSample::take(&target.pids);
    let started = Instant::now();
    let end = started + duration;
    let protocol = target.protocol;
    let mut tasks = Vec::new();
    for (mut sender, mut stream) in conns {
        let latency = Arc::clone(&latency);
        let count = Arc::clone(&count);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let t = Instant::now();
                if sender.send("ping", true).await.is_err() {
                    return;
                }
                loop {
                    match proto::recv(&mut stream, protocol).await {
                        Incoming::Chat(_) => break,
                        Incoming::Ping => {
                            if sender.pong().await.is_err() {
                                return;
                            }
                        }
                        Incoming::Other => {}
                        Incoming::Closed => return,
                    }
                }
                latency.record(t.elapsed());
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    let (loadgen_cpu_percent, servers) = cpu.finish(&target.pids, elapsed);
    Ok(EchoReport {
        connections,
        round_trips_per_sec: count.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        latency_ms: latency.latency_ms(),
        loadgen_cpu_percent,
        servers,
    })
}

/// Reconnect-storm settings (history on, recovery mode).
#[derive(Debug, Clone)]
pub struct StormOptions {
    /// Members of the one group.
    pub connections: usize,
    /// Messages published while every member is away.
    pub missed: usize,
    /// How long a member may take to recover before it counts as failed.
    pub timeout: Duration,
}

/// How a reconnect storm went.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    /// Members that joined, then left together.
    pub connections: usize,
    /// Messages published while they were away.
    pub missed: usize,
    /// Members that reconnected, were told `recovered: true` with `missed` messages and got
    /// exactly those.
    pub recovered: usize,
    /// Members that did not (refused, not recovered, wrong messages, or timed out), with the
    /// first reason.
    pub failed: usize,
    /// The first failure, if any.
    pub first_failure: Option<String>,
    /// From the moment every member starts reconnecting at once until the last one has every
    /// missed message.
    pub all_recovered_seconds: f64,
    /// Each member's time from the start of the storm to its last missed message.
    pub recover_ms: Latency,
    /// The servers' CPU and memory during the storm.
    pub servers: Vec<ProcessReport>,
}

/// Reads recovery-mode frames until a group message; returns its text and position.
async fn next_message(stream: &mut Stream) -> anyhow::Result<(String, Option<(u64, String)>)> {
    loop {
        match stream.next().await {
            Some(Ok(WsMessage::Text(text))) => {
                if let Some(proto::RecoverFrame::Message { text, position }) =
                    proto::RecoverFrame::parse(&text)
                {
                    return Ok((text, position));
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection closed"),
        }
    }
}

/// A reconnect storm: `connections` members join one group in recovery mode and take a few
/// messages, all leave, `missed` messages are published, and all come back at once with
/// `since` and `epoch`. Every member must be told `recovered: true` and get exactly the missed
/// messages; the report says how long the last one took.
pub async fn storm(target: &Target, opts: &StormOptions) -> anyhow::Result<StormReport> {
    const BEFORE: usize = 3;
    let group = format!("storm{}", target.tag);
    let plan: Vec<(usize, String)> = (0..opts.connections).map(|i| (i, group.clone())).collect();
    let recovering = Target {
        protocol: Protocol::SeedRecover,
        query: Some("recover=1".to_owned()),
        ..target.clone()
    };
    let (members, _) = connect_all(&recovering, &plan, false).await?;
    let (mut publisher, mut own) = proto::connect(
        &target.urls[0],
        Protocol::SeedRecover,
        &group,
        false,
        None,
        &proto::Extra {
            query: Some("recover=1".to_owned()),
            headers: Vec::new(),
        },
    )
    .await?;
    // Let every join settle before the first message.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let publish = |n: usize, prefix: &'static str| (0..n).map(move |i| format!("{prefix}{i}"));
    for text in publish(BEFORE, "before") {
        publisher.send(&text, false).await?;
        next_message(&mut own).await?;
    }
    // Every member's position after the messages before.
    let mut positions = Vec::with_capacity(members.len());
    let mut tasks = Vec::new();
    for (sender, mut stream) in members {
        tasks.push(tokio::spawn(async move {
            let mut last = None;
            for _ in 0..BEFORE {
                last = next_message(&mut stream).await?.1;
            }
            sender.close().await;
            last.context("group messages carry a position")
        }));
    }
    for task in tasks {
        positions.push(
            tokio::time::timeout(opts.timeout, task)
                .await
                .context("a member did not get the first messages")???,
        );
    }
    let expected: Vec<String> = publish(opts.missed, "missed")
        .map(|t| format!("{}{t}", proto::GROUP_PREFIX))
        .collect();
    for text in publish(opts.missed, "missed") {
        publisher.send(&text, false).await?;
        next_message(&mut own).await?;
    }
    let cpu = CpuSample::take(&target.pids);
    let started = Instant::now();
    let hist = Arc::new(sample::Recorder::new());
    let expected = Arc::new(expected);
    let mut tasks = Vec::with_capacity(positions.len());
    for (i, (offset, epoch)) in positions.into_iter().enumerate() {
        let url = target.urls[i % target.urls.len()].clone();
        let group = group.clone();
        let source = (target.source_ips > 1).then(|| {
            let n = u8::try_from(i % usize::from(target.source_ips)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, n + 1))
        });
        let hist = Arc::clone(&hist);
        let expected = Arc::clone(&expected);
        let timeout = opts.timeout;
        tasks.push(tokio::spawn(async move {
            let resume = async {
                let extra = proto::Extra {
                    query: Some(format!("since={offset}&epoch={epoch}")),
                    headers: Vec::new(),
                };
                let (_sender, mut stream) =
                    proto::connect(&url, Protocol::SeedRecover, &group, false, source, &extra)
                        .await?;
                let first = loop {
                    match stream.next().await {
                        Some(Ok(WsMessage::Text(text))) => break text.as_str().to_owned(),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e.into()),
                        None => bail!("closed before the recovery frame"),
                    }
                };
                match proto::RecoverFrame::parse(&first) {
                    Some(proto::RecoverFrame::Recovery {
                        recovered: true,
                        missed,
                    }) if missed == expected.len() as u64 => {}
                    other => bail!(
                        "expected a recovery of {} messages, got {other:?}",
                        expected.len()
                    ),
                }
                for want in expected.iter() {
                    let (text, _) = next_message(&mut stream).await?;
                    anyhow::ensure!(&text == want, "expected {want:?}, got {text:?}");
                }
                hist.record(started.elapsed());
                anyhow::Ok(())
            };
            tokio::time::timeout(timeout, resume)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("not recovered within {timeout:?}")))
        }));
    }
    let (mut recovered, mut failed, mut first_failure) = (0, 0, None);
    for task in tasks {
        match task.await? {
            Ok(()) => recovered += 1,
            Err(error) => {
                failed += 1;
                first_failure.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    let elapsed = started.elapsed();
    let (_, servers) = cpu.finish(&target.pids, elapsed);
    publisher.close().await;
    Ok(StormReport {
        connections: opts.connections,
        missed: opts.missed,
        recovered,
        failed,
        first_failure,
        all_recovered_seconds: elapsed.as_secs_f64(),
        recover_ms: hist.latency_ms(),
        servers,
    })
}
