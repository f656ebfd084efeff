//! Layer micro-benchmarks (criterion): `group_send` and local fan-out, in memory and through
//! Redis, and the msgpack codec.
//!
//! `cargo bench -p channels-layer` runs them all in about a minute (each benchmark: 1 s warm-up,
//! 3 s measurement, 20 samples; override with criterion's flags after `--`). The Redis benchmarks
//! start a `redis-server` of their own on a free loopback port (Debian package `redis-server`).
//!
//! * `memory/group_send_fanout/N`: one `group_send` to a group of N local members, then one
//!   `try_recv` on every member: the local fan-out cost per message; throughput in deliveries.
//! * `memory/send`: one `send` and one `recv` on one channel.
//! * `codec/encode`, `codec/decode`: the seed's `send_msg` event to and from msgpack.
//! * `redis/group_send_roundtrip/N`: `group_send` until every one of N local members received
//!   it (PUBLISH, Redis, the subscriber connection, the local fan-out); throughput in deliveries.
//! * `redis/publish_pipelined`: 100 concurrent `group_send`s (one task, joined) to a group of one
//!   member, until all 100 arrived: what concurrency buys through the publisher pool.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "a benchmark: a failed unwrap is a failed run; criterion's macros make public fns"
)]

use test_support::redis_server;

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use channels_layer::{
    ChannelLayer, GroupName, InMemoryChannelLayer, Inbox, LayerConfig, Map, Message,
    RedisPubSubChannelLayer, RedisPubSubConfig,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use redis_server::RedisServer;

/// How long a Redis delivery may take before the run fails instead of hanging.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages in flight at once in `redis/publish_pipelined`.
const PIPELINED: usize = 100;

/// The seed's group-chat event: what `/group/N/` sends to the group for a text frame.
fn send_msg() -> Message {
    let mut inner = Map::new();
    inner.insert("type", "websocket.receive");
    // 13 characters, 39 bytes of UTF-8.
    inner.insert("text", "大家好，今晚七点三楼开会见");
    Message::new("send_msg").with("message", inner)
}

/// The runtime the server uses: multi-thread, one worker per core of the 2-core machine.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

/// `n` new channels of `layer`, all members of `group`. Behind an async mutex so that the
/// benchmark futures can borrow them mutably (uncontended: one lock per iteration).
async fn members(
    layer: &dyn ChannelLayer,
    group: &GroupName,
    n: usize,
) -> tokio::sync::Mutex<Vec<Inbox>> {
    let mut inboxes = Vec::with_capacity(n);
    for _ in 0..n {
        let inbox = layer.new_channel().await.unwrap();
        layer.group_add(group, inbox.name()).await.unwrap();
        inboxes.push(inbox);
    }
    tokio::sync::Mutex::new(inboxes)
}

async fn recv_in_time(inbox: &mut Inbox) -> Message {
    tokio::time::timeout(DELIVERY_TIMEOUT, inbox.recv())
        .await
        .expect("a message lost: not delivered within 5 s")
        .expect("the layer was closed")
}

fn memory(c: &mut Criterion) {
    let rt = runtime();
    let layer = &InMemoryChannelLayer::default();
    let msg = &send_msg();
    let mut bench = c.benchmark_group("memory");
    for n in [1_usize, 10, 100, 1000] {
        let name = &group(&format!("fanout{n}"));
        let inboxes = &rt.block_on(members(layer, name, n));
        bench.throughput(Throughput::Elements(n as u64));
        bench.bench_function(BenchmarkId::new("group_send_fanout", n), |b| {
            b.to_async(&rt).iter(|| async move {
                layer.group_send(name, msg.clone()).await.unwrap();
                for inbox in inboxes.lock().await.iter_mut() {
                    black_box(inbox.try_recv().expect("delivered"));
                }
            });
        });
    }

    let inbox = rt.block_on(layer.new_channel()).unwrap();
    let channel = &inbox.name().clone();
    let inbox = &tokio::sync::Mutex::new(inbox);
    bench.throughput(Throughput::Elements(1));
    bench.bench_function("send", |b| {
        b.to_async(&rt).iter(|| async move {
            layer.send(channel, msg.clone()).await.unwrap();
            black_box(inbox.lock().await.recv().await.unwrap());
        });
    });
    bench.finish();
}

fn codec(c: &mut Criterion) {
    let msg = send_msg();
    let bytes = msg.to_msgpack();
    assert_eq!(Message::from_msgpack(&bytes).unwrap(), msg);
    let mut bench = c.benchmark_group("codec");
    bench.throughput(Throughput::Bytes(bytes.len() as u64));
    bench.bench_function("encode", |b| b.iter(|| black_box(&msg).to_msgpack()));
    bench.bench_function("decode", |b| {
        b.iter(|| Message::from_msgpack(black_box(&bytes)).unwrap());
    });
    bench.finish();
}

fn redis_pubsub(c: &mut Criterion) {
    let server = RedisServer::start();
    let rt = runtime();
    let mut config = RedisPubSubConfig::new(vec![server.url()]);
    config.prefix = "bench".to_owned();
    // Room for a whole pipelined burst in one inbox.
    config.local = LayerConfig {
        capacity: 4 * PIPELINED,
        ..LayerConfig::default()
    };
    let layer = &rt
        .block_on(RedisPubSubChannelLayer::connect(config))
        .unwrap();
    assert!(layer.is_ready(), "connected to the bench's redis-server");
    let msg = &send_msg();
    let mut bench = c.benchmark_group("redis");

    for n in [1_usize, 100] {
        let name = &group(&format!("roundtrip{n}"));
        let inboxes = &rt.block_on(members(layer, name, n));
        bench.throughput(Throughput::Elements(n as u64));
        bench.bench_function(BenchmarkId::new("group_send_roundtrip", n), |b| {
            b.to_async(&rt).iter(|| async move {
                layer.group_send(name, msg.clone()).await.unwrap();
                for inbox in inboxes.lock().await.iter_mut() {
                    black_box(recv_in_time(inbox).await);
                }
            });
        });
    }

    let name = &group("pipelined");
    let inboxes = &rt.block_on(members(layer, name, 1));
    bench.throughput(Throughput::Elements(PIPELINED as u64));
    bench.bench_function("publish_pipelined", |b| {
        b.to_async(&rt).iter(|| async move {
            let sends = (0..PIPELINED).map(|_| layer.group_send(name, msg.clone()));
            for sent in join_all(sends.collect()).await {
                sent.unwrap();
            }
            let mut inboxes = inboxes.lock().await;
            for _ in 0..PIPELINED {
                black_box(recv_in_time(&mut inboxes[0]).await);
            }
        });
    });
    bench.finish();
    drop(rt);
    drop(server);
}

/// Polls every future concurrently on the current task and returns their outputs in order,
/// like `futures::future::join_all`. Each future gets its own waker, so a wake-up polls only
/// the futures that asked for it (polling all 100 on every wake-up would bias the measurement).
async fn join_all<F: Future + Unpin>(futures: Vec<F>) -> Vec<F::Output> {
    struct Child {
        woken: AtomicBool,
        parent: Arc<Mutex<Waker>>,
    }
    impl Wake for Child {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.woken.store(true, Ordering::Release);
            self.parent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .wake_by_ref();
        }
    }

    let parent = Arc::new(Mutex::new(Waker::noop().clone()));
    let mut slots: Vec<(F, Arc<Child>, Waker)> = futures
        .into_iter()
        .map(|future| {
            let child = Arc::new(Child {
                woken: AtomicBool::new(true),
                parent: Arc::clone(&parent),
            });
            let waker = Waker::from(Arc::clone(&child));
            (future, child, waker)
        })
        .collect();
    let mut outputs: Vec<Option<F::Output>> = slots.iter().map(|_| None).collect();
    let mut pending = slots.len();
    std::future::poll_fn(|cx| {
        {
            let mut current = parent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !current.will_wake(cx.waker()) {
                current.clone_from(cx.waker());
            }
        }
        for ((future, child, waker), output) in slots.iter_mut().zip(&mut outputs) {
            if output.is_some() || !child.woken.swap(false, Ordering::AcqRel) {
                continue;
            }
            if let Poll::Ready(value) = Pin::new(future).poll(&mut Context::from_waker(waker)) {
                *output = Some(value);
                pending -= 1;
            }
        }
        if pending == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("ready")).collect()
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .without_plots();
    targets = memory, codec, redis_pubsub
}
criterion_main!(benches);
