//! One master of the cluster: its publishers' connection and pool, and (while it owns a
//! channel we need) one subscriber connection in RESP3, whose pushes go to the [`Router`]
//! tagged with the node and the connection's generation.
//!
//! The subscriber is a plain multiplexed connection, not redis-rs' `ConnectionManager`: its
//! automatic resubscription would replay every shard channel of the node in one `SSUBSCRIBE`,
//! which Redis refuses (`CROSSSLOT`) once they span two slots. A lost connection is dropped and
//! the layer resubscribes per channel on a new one (see `sync.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind};

use super::super::router::Router;
use crate::error::LayerError;
use crate::redis::conn::{HostPool, HostUrl, LinkLost, bounded};
use crate::sync::lock;

/// What the push callbacks report to the layer: connections to drop (lost, or told by Redis
/// that a channel moved away), and a wake-up for the maintenance loop.
#[derive(Debug, Default)]
pub(super) struct Events {
    /// `(node, generation)` of connections to replace.
    pub(super) lost: Mutex<Vec<(String, u64)>>,
    /// `(node, channel)` of the `SUNSUBSCRIBE`s we sent and Redis has not confirmed yet.
    pub(super) unsubscribing: Mutex<std::collections::HashSet<(String, Vec<u8>)>>,
    pub(super) wake: tokio::sync::Notify,
}

/// A master: its address, pool and subscriber.
#[derive(Debug)]
pub(super) struct Node {
    pub(super) addr: String,
    pub(super) host: HostUrl,
    pub(super) pool: HostPool,
    /// The URL of the subscriber (RESP3).
    subscriber_url: String,
    /// The current subscriber and its generation.
    subscriber: Mutex<Option<(u64, MultiplexedConnection)>>,
    generations: AtomicU64,
}

impl Node {
    pub(super) fn new(
        addr: &str,
        url: &str,
        subscriber_url: String,
        timeout: Duration,
        pool_size: usize,
    ) -> Result<Self, LayerError> {
        let host = HostUrl::parse(url)?;
        Ok(Self {
            addr: addr.to_owned(),
            pool: host.pool(timeout, pool_size)?,
            host,
            subscriber_url,
            subscriber: Mutex::new(None),
            generations: AtomicU64::new(0),
        })
    }

    /// The current subscriber, if connected.
    pub(super) fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        lock(&self.subscriber).clone()
    }

    /// The current subscriber, or a new one.
    pub(super) async fn subscriber(
        &self,
        timeout: Duration,
        router: &Arc<Router>,
        events: &Arc<Events>,
    ) -> Result<(u64, MultiplexedConnection), LayerError> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
        let (router, events2, addr) = (Arc::clone(router), Arc::clone(events), self.addr.clone());
        let lost = self.pool.link_lost();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_push_sender(move |push: PushInfo| {
                on_push(&router, &events2, &lost, &addr, generation, push);
                Ok::<(), std::convert::Infallible>(())
            });
        let client = redis::Client::open(self.subscriber_url.as_str())
            .map_err(|e| LayerError::Config(format!("{}: {e}", self.host.display())))?;
        let conn = bounded(
            &self.host,
            timeout,
            "connect",
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        let mut slot = lock(&self.subscriber);
        // Another caller may have connected meanwhile: keep one.
        if let Some(current) = slot.as_ref() {
            return Ok(current.clone());
        }
        *slot = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Drops the subscriber of `generation` (if it is still the current one).
    pub(super) fn drop_subscriber(&self, generation: u64) -> bool {
        let mut slot = lock(&self.subscriber);
        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
            *slot = None;
            return true;
        }
        false
    }

    /// Drops whatever subscriber there is.
    pub(super) fn close_subscriber(&self) {
        *lock(&self.subscriber) = None;
    }
}

/// Runs inside redis-rs' push callback: never blocks. A lost link is also signalled to the
/// node's pool (`lost`), whose connections most likely died with it.
fn on_push(
    router: &Router,
    events: &Events,
    lost: &LinkLost,
    addr: &str,
    generation: u64,
    push: PushInfo,
) {
    match push.kind {
        PushKind::SMessage => {
            if let [
                redis::Value::BulkString(channel),
                redis::Value::BulkString(payload),
            ] = &push.data[..]
            {
                super::route(router, channel, payload);
            }
        }
        // An SUNSUBSCRIBE we did not send (the slot moved to another node), or the end of the
        // connection: drop it and resubscribe where the slots are now. (An unasked
        // confirmation would also be taken by redis-rs as the reply of a call in flight, so the
        // connection is not trusted any further.)
        PushKind::SUnsubscribe => {
            if let Some(redis::Value::BulkString(channel)) = push.data.first()
                && lock(&events.unsubscribing).remove(&(addr.to_owned(), channel.clone()))
            {
                return;
            }
            tracing::info!(
                node = addr,
                "a shard channel moved away from its node: resubscribing"
            );
            lock(&events.lost).push((addr.to_owned(), generation));
            events.wake.notify_one();
        }
        PushKind::Disconnection => {
            router.counters.disconnects.fetch_add(1, Ordering::Relaxed);
            lost.signal();
            lock(&events.lost).push((addr.to_owned(), generation));
            events.wake.notify_one();
        }
        _ => {}
    }
}
