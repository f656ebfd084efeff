//! One shard's connections: the publisher pool and the subscriber connection, which can be
//! replaced by a fresh one when it stops answering or stops hearing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::config::RedisPubSubConfig;
use super::router::Router;
use crate::error::LayerError;
use crate::redis::conn::{HostPool, HostUrl, LinkLost};
use crate::redis::subconn::{Push, Subscriber};

#[derive(Debug)]
pub(super) struct Shard {
    pub(super) index: usize,
    pub(super) host: HostUrl,
    pub(super) pool: HostPool,
    /// The current subscriber connection (cloned out for each use: clones share it).
    pub(super) subscriber: Mutex<Subscriber>,
    /// The [host version](HostUrl::version) the subscriber was made for: a Sentinel shard
    /// whose master moved replaces it.
    subscriber_version: AtomicU64,
    pub(super) router: Arc<Router>,
    pub(super) timeout: Duration,
    pub(super) reconnect_max_delay: Duration,
    /// Why the subscriber is not connected, for `not_ready_reason` (`None` once it is).
    problem: Mutex<Option<String>>,
}

impl Shard {
    pub(super) fn new(
        index: usize,
        url: &str,
        config: &RedisPubSubConfig,
        router: &Arc<Router>,
    ) -> Result<Self, LayerError> {
        let host = HostUrl::parse(url)?;
        let subscriber_version = AtomicU64::new(host.version());
        let pool = host.pool(config.timeout, config.pool_size)?;
        let subscriber = Self::connect_subscriber(
            &host,
            index,
            config.timeout,
            config.reconnect_max_delay,
            router,
            &pool.link_lost(),
        )?;
        Ok(Shard {
            index,
            pool,
            subscriber: Mutex::new(subscriber),
            subscriber_version,
            host,
            router: Arc::clone(router),
            timeout: config.timeout,
            reconnect_max_delay: config.reconnect_max_delay,
            problem: Mutex::new(None),
        })
    }

    /// A lazily connecting subscriber whose pushes reach the router tagged with the shard's
    /// current generation. When it finds its connection dropped, `lost` tells the shard's
    /// pool, whose connections are then likely dead too.
    pub(super) fn connect_subscriber(
        host: &HostUrl,
        index: usize,
        timeout: Duration,
        max_delay: Duration,
        router: &Arc<Router>,
        lost: &LinkLost,
    ) -> Result<Subscriber, LayerError> {
        let generation = router.generation[index].load(Ordering::SeqCst);
        let router = Arc::clone(router);
        let lost = lost.clone();
        let on_push = move |push: Push<'_>| {
            if push == Push::Disconnected {
                lost.signal();
            }
            router.on_push(index, generation, push);
        };
        host.subscriber(timeout, max_delay, Arc::new(on_push))
    }

    /// `error` from a subscriber call, or Redis' own words when Redis refuses a fresh
    /// connection: the subscriber reconnects in silence, so its calls only time out.
    pub(super) async fn explain(&self, error: LayerError) -> LayerError {
        self.host.explain(error, self.timeout).await
    }

    /// Records why the subscriber is not connected (`None`: it is); true if that changed.
    pub(super) fn set_problem(&self, error: Option<&LayerError>) -> bool {
        let problem = error.map(ToString::to_string);
        let mut slot = self.problem.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *slot != problem;
        *slot = problem;
        changed
    }

    /// Why the subscriber is not connected, as last recorded.
    pub(super) fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn subscriber(&self) -> Subscriber {
        self.subscriber
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Drops the subscriber connection for a new one, which the next good ping resubscribes;
    /// anything the old one still delivers is ignored from now on.
    pub(super) fn replace_subscriber(&self) -> Result<(), LayerError> {
        self.subscriber_version
            .store(self.host.version(), Ordering::SeqCst);
        self.router.generation[self.index].fetch_add(1, Ordering::SeqCst);
        self.router.resync[self.index].store(true, Ordering::SeqCst);
        let fresh = Self::connect_subscriber(
            &self.host,
            self.index,
            self.timeout,
            self.reconnect_max_delay,
            &self.router,
            &self.pool.link_lost(),
        )?;
        *self.subscriber.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// When a Sentinel shard's master moved since the subscriber was made: replaces the
    /// subscriber with one to the new master (resubscribed at the next good ping) and reports
    /// the shard not ready until then. True if it did.
    pub(super) fn follow_master(&self) -> bool {
        if self.subscriber_version.load(Ordering::SeqCst) == self.host.version() {
            return false;
        }
        if let Err(error) = self.replace_subscriber() {
            tracing::error!(%error, "cannot replace the redis subscriber");
        }
        self.router.connected[self.index].store(false, Ordering::SeqCst);
        let _ = self.set_problem(Some(&self.host.unavailable(format!(
            "the redis master moved to {}: resubscribing",
            crate::redis::conn::redact(&self.host.url())
        ))));
        true
    }
}
