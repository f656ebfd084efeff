//! What operators rely on: health, readiness, metrics, the replica header, and batched drains.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use channels_server::Config;
use support::{eventually, raw_handshake, spawn, spawn_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path`: status, headers (lower-case names) and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, HashMap<String, String>, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// Parses Prometheus text into `name{labels}` -> value, checking every sample line.
fn samples(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            assert!(
                line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "{line}"
            );
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap();
        out.insert(name.to_owned(), value.parse::<f64>().unwrap());
    }
    out
}

#[tokio::test]
async fn health_readiness_and_the_replica_header() {
    let mut config = Config::default();
    config.replica_id = Some("replica-7".to_owned());
    let server = spawn_with(config, channels_server::tutorial::routes()).await;
    let (status, headers, body) = get(server.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(headers["x-channels-replica"], "replica-7");
    let (status, _, body) = get(server.addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, headers, _) = get(server.addr, "/chatone").await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-channels-replica"], "replica-7");
    // The 101 of a WebSocket handshake carries it too.
    let (_, response) = tokio_tungstenite::connect_async(server.url("/room/1/"))
        .await
        .unwrap();
    assert_eq!(response.headers()["x-channels-replica"], "replica-7");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_what_happens() {
    let server = spawn().await;
    let mut a = server.ws("/group/m/").await;
    let mut b = server.ws("/group/m/").await;
    eventually("two members", || {
        channels_layer::ChannelLayer::stats(&*server.layer).channels == 2
    })
    .await;
    for i in 0..3 {
        a.send_text(&format!("{i}")).await;
    }
    for _ in 0..3 {
        a.recv_text().await;
        b.recv_text().await;
    }
    assert_eq!(server.refused_status("/nope/").await, 404);
    b.close().await;
    let (status, headers, body) = get(server.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("text/plain; version=0.0.4"));
    let m = samples(&body);
    assert_eq!(m["channels_connections_total"], 2.0);
    assert_eq!(m["channels_messages_received_total"], 3.0);
    assert_eq!(m["channels_messages_sent_total"], 6.0);
    assert_eq!(m["channels_group_sends_total"], 3.0);
    assert_eq!(m["channels_group_send_errors_total"], 0.0);
    assert_eq!(m["channels_layer_delivered_total"], 6.0);
    assert_eq!(
        m["channels_handshakes_refused_total{reason=\"not_found\"}"],
        1.0
    );
    assert_eq!(m["channels_layer_ready"], 1.0);
    assert_eq!(m["channels_draining"], 0.0);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let m = samples(&get(server.addr, "/metrics").await.2);
        if m.get("channels_closes_total{by=\"client\",code=\"1000\"}") == Some(&1.0)
            && m["channels_connections_open"] == 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "close not counted: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(a);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_drain_closes_connections_in_batches() {
    let mut config = Config::default();
    config.drain_batch = 2;
    config.drain_timeout_secs = 4;
    let server = spawn_with(config, channels_server::tutorial::routes()).await;
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(server.ws(&format!("/room/{i}/")).await);
    }
    eventually("six channels", || {
        channels_layer::ChannelLayer::stats(&*server.layer).channels == 6
    })
    .await;
    let started = Instant::now();
    server.begin_shutdown();
    let closes = futures_util::future::join_all(clients.iter_mut().map(|c| async {
        let (code, _) = c.expect_close().await;
        (code, started.elapsed())
    }))
    .await;
    assert!(closes.iter().all(|(code, _)| *code == 1001), "{closes:?}");
    let mut at: Vec<Duration> = closes.iter().map(|(_, t)| *t).collect();
    at.sort();
    // Three batches of two, 200 ms apart.
    assert!(at[1] < Duration::from_millis(150), "{at:?}");
    assert!(
        at[2] >= Duration::from_millis(180) && at[3] < Duration::from_millis(350),
        "{at:?}"
    );
    assert!(at[4] >= Duration::from_millis(380), "{at:?}");
    server.stop().await.unwrap();
}

/// The closes counted so far, by label set.
async fn closes(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    samples(&get(addr, "/metrics").await.2)
        .into_iter()
        .filter(|(k, _)| k.starts_with("channels_closes_total"))
        .collect()
}

/// Review defect 7: close codes chosen by clients are bucketed (3000-3999, 4000-4999), a code
/// RFC 6455 does not allow is `invalid`, and a connection that ends without a close frame is
/// the client's doing (`none`), not a server 1002.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_codes_make_a_bounded_set_of_series() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let server = spawn().await;
    for code in (4000..4100).chain(3000..3050) {
        let mut client = server.ws("/room/c/").await;
        client
            .0
            .close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "bye".into(),
            }))
            .await
            .unwrap();
        while let Some(Ok(_)) = futures_util::StreamExt::next(&mut client.0).await {}
    }
    // Without a close frame: the TCP connection just ends.
    for _ in 0..5 {
        let client = server.ws("/room/c/").await;
        let stream = client.0.into_inner();
        drop(stream);
    }
    // Close frames with codes that are not allowed, sent raw (clients refuse to send them).
    for code in [999u16, 1005, 1006, 1015, 2000, 5000] {
        let (status, mut stream) = raw_handshake(server.addr, "/room/c/", "localhost", b"").await;
        assert_eq!(status, 101);
        let mut frame = vec![0x88, 0x80 | 2, 0, 0, 0, 0];
        frame.extend_from_slice(&code.to_be_bytes());
        stream.write_all(&frame).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    }
    let expected = [
        (
            "channels_closes_total{by=\"client\",code=\"4000-4999\"}",
            100.0,
        ),
        (
            "channels_closes_total{by=\"client\",code=\"3000-3999\"}",
            50.0,
        ),
        ("channels_closes_total{by=\"client\",code=\"none\"}", 5.0),
        ("channels_closes_total{by=\"client\",code=\"invalid\"}", 6.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = closes(server.addr).await;
    while expected.iter().any(|(k, v)| seen.get(*k) != Some(v)) {
        assert!(Instant::now() < deadline, "{seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = closes(server.addr).await;
    }
    assert_eq!(seen.len(), expected.len(), "no other series: {seen:?}");
    server.stop().await.unwrap();
}

/// A `tracing` writer that keeps every line in memory.
#[derive(Clone, Default)]
struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Review defect 5: 2,000 layer messages of a type the consumer has no handler for, sent to a
/// 50-member group, are counted (100,000 ignored events) but logged only a few times, not once
/// per member per message.
#[tokio::test]
async fn unhandled_layer_messages_are_counted_and_their_log_is_rate_limited() {
    use channels_layer::{ChannelLayer, GroupName, Message};
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    // This test runs on one thread (tokio's current-thread runtime): every task logs here.
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut config = Config::default();
    config.capacity = 5_000;
    let server = spawn_with(config, channels_server::tutorial::routes()).await;
    let mut members = Vec::new();
    for _ in 0..50 {
        members.push(server.ws("/group/flood/").await);
    }
    eventually("fifty members", || server.layer.stats().channels == 50).await;
    let group = GroupName::new("flood").unwrap();
    for i in 0..2000 {
        server
            .layer
            .group_send(&group, Message::new("no.such.handler").with("n", i as i64))
            .await
            .unwrap();
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = samples(&get(server.addr, "/metrics").await.2);
        let ignored = m
            .get("channels_events_ignored_total{reason=\"no_handler\"}")
            .copied()
            .unwrap_or(0.0);
        if ignored == 100_000.0 {
            break;
        }
        assert!(Instant::now() < deadline, "only {ignored} counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let logged = text
        .lines()
        .filter(|l| l.contains("layer message") && l.contains("ignored"))
        .count();
    // Ten lines a window per call site; the test may straddle two windows.
    assert!((1..=20).contains(&logged), "{logged} lines logged");
    server.stop().await.unwrap();
}
