//! Graceful shutdown: every open socket gets 1001, then the server returns.

mod support;

use std::time::{Duration, Instant};

use channels_layer::ChannelLayer;

use support::{eventually, spawn};

#[tokio::test]
async fn shutdown_closes_every_open_socket_with_1001() {
    let server = spawn().await;
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(server.ws(&format!("/group/g{}/", i % 2)).await);
    }
    clients.push(server.ws("/room/1/").await);
    eventually("five channels", || server.layer.stats().channels == 5).await;
    server.begin_shutdown();
    for c in &mut clients {
        let (code, reason) = c.expect_close().await;
        assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    }
    let started = Instant::now();
    let layer = std::sync::Arc::clone(&server.layer);
    server.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drain took {:?}",
        started.elapsed()
    );
    assert_eq!(layer.stats().channels, 0, "every inbox was dropped");
}

#[tokio::test]
async fn shutdown_with_a_silent_client_ends_within_the_close_timeout() {
    let server = spawn().await;
    // A raw TCP client that completes the handshake and then never reads or answers.
    let mut ws = server.ws("/room/1/").await;
    eventually("one channel", || server.layer.stats().channels == 1).await;
    let started = Instant::now();
    server.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    let (code, _) = ws.expect_close().await;
    assert_eq!(code, 1001);
}
