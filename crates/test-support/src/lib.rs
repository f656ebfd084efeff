//! What every test package of the workspace shares (a dev-dependency only, never published):
//!
//! * [`redis_server`]: a `redis-server` of the test's own on a free loopback port, and one shared
//!   server per test binary with fresh key prefixes;
//! * [`redis_ha`]: a Sentinel set and a Redis Cluster of the test's own;
//! * [`free_port`] and [`eventually`];
//! * [`ws::Client`]: a WebSocket client with a timeout on every receive;
//! * [`metrics_text::parse`]: the Prometheus text of `/metrics`.
//!
//! A failed expectation panics with what was expected: these are test helpers.

#![allow(
    clippy::unwrap_used,
    reason = "test support: a failed unwrap is a failed test, with its message"
)]

pub mod metrics_text;
pub mod redis_ha;
pub mod redis_server;
pub mod ws;

use std::time::{Duration, Instant};

/// How long a single receive, handshake or `eventually` may take by default.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Polls `check` every 10 ms until it is true; fails naming `what` after [`TIMEOUT`].
pub async fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_within(what, TIMEOUT, check).await;
}

/// Polls `check` every 10 ms until it is true; fails naming `what` after `within`.
pub async fn eventually_within(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
