//! One `redis-server` for a whole test binary, and a fresh key prefix for every layer on it, so
//! that tests cannot collide. Shared by `redis_core.rs` and `redis_pubsub.rs`, which include it
//! next to `redis_server.rs`:
//! `#[path = "support/shared_server.rs"] mod shared_server;`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::redis_server::RedisServer;

/// The binary's one server, started on first use.
pub(crate) fn server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// A prefix no other layer of this process uses. Fixed width, so that no prefix is the start
/// of another: a clean-up of `{prefix}*` touches only its own keys.
pub(crate) fn unique_prefix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}x{:05}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
