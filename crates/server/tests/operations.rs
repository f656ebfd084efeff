//! What operators rely on: health, readiness, metrics, the replica header, and batched drains.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use channels_server::Config;
use support::{eventually, spawn, spawn_with};
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
    let server = spawn_with(config, channels_server::chat::routes()).await;
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
    let server = spawn_with(config, channels_server::chat::routes()).await;
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
