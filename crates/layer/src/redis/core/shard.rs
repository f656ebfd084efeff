//! One Redis host of the core layer: a pool for ordinary commands, dedicated connections for
//! blocking pops and health checks, and every call bounded by a deadline.

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue};
use tokio::sync::Notify;

use super::Inner;
use crate::error::LayerError;
use crate::redis::conn::{HostPool, HostUrl, Lane, Request, bounded};

#[derive(Debug)]
pub(super) struct Shard {
    pub(super) host: HostUrl,
    pool: HostPool,
    /// Whether the health loop reached this host at its latest check, after putting back the
    /// memberships it holds. Any failed call clears it, so that the next good check writes
    /// the memberships again (the host may have restarted empty).
    pub(super) healthy: AtomicBool,
    /// Times a healthy host stopped answering.
    pub(super) disconnects: AtomicU64,
    /// Wakes the health loop early when another call saw the host fail.
    wake: Notify,
    /// The latest failure while unhealthy (Redis' own error when it answered with one), for
    /// `not_ready_reason`; `None` once healthy.
    problem: std::sync::Mutex<Option<String>>,
}

impl Shard {
    pub(super) fn new(url: &str, timeout: Duration, pool_size: usize) -> Result<Self, LayerError> {
        let host = HostUrl::parse(url)?;
        // Checked here so that a bad URL fails at start, not in every dedicated connection.
        redis::Client::open(host.url())
            .map_err(|e| LayerError::Config(format!("{}: {e}", host.display())))?;
        Ok(Self {
            pool: host.pool(timeout, pool_size)?,
            host,
            healthy: AtomicBool::new(false),
            disconnects: AtomicU64::new(0),
            wake: Notify::new(),
            problem: std::sync::Mutex::new(None),
        })
    }

    /// Why the host is not healthy, as last recorded.
    pub(super) fn problem(&self) -> Option<String> {
        crate::sync::lock(&self.problem).clone()
    }

    /// Records why the host is not healthy (`None`: it is); true if that changed.
    fn set_problem(&self, error: Option<&LayerError>) -> bool {
        let problem = error.map(ToString::to_string);
        let mut slot = crate::sync::lock(&self.problem);
        let changed = *slot != problem;
        *slot = problem;
        changed
    }

    /// Records that a call failed; logs once per outage. At the start of an outage the pool's
    /// connections and the senders' are taken for dead too (Redis restarted, the network
    /// dropped): the next command makes new ones instead of failing on each of them, which a
    /// connection used in the last two seconds otherwise would.
    pub(super) fn mark_down(&self, error: &LayerError) {
        let _ = self.set_problem(Some(error));
        if self.healthy.swap(false, Ordering::SeqCst) {
            self.pool.link_lost().signal();
            self.disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, host = self.host.display(), "redis shard unreachable: reconnecting");
            self.wake.notify_one();
        }
    }

    /// A connection of its own, for a blocking command or a health check, to the host's
    /// current master, with the [host version](HostUrl::version) it was made for (a caller
    /// drops it when the version changes). redis-rs' own response timeout (500 ms) is off: the
    /// caller bounds each call, longer for a blocking pop.
    pub(super) async fn dedicated(
        &self,
        timeout: Duration,
    ) -> Result<(u64, MultiplexedConnection), LayerError> {
        if let Some(error) = self.host.no_master() {
            return Err(error);
        }
        let version = self.host.version();
        let client = redis::Client::open(self.host.url())
            .map_err(|e| self.host.unavailable(e.to_string()))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None);
        let conn = bounded(
            &self.host,
            timeout,
            "connect",
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        Ok((version, conn))
    }

    /// Whether a connection made for host version `version` still goes to the master.
    pub(super) fn is_current(&self, version: u64) -> bool {
        self.host.version() == version
    }

    /// Runs `request` (a command or a pipeline) in `lane` within `timeout`: the sends on the
    /// connection every send to this host shares ([`Lane::Publish`]: the sends a replica makes
    /// in one turn of its loop go out in one write), everything else on a pooled connection.
    pub(super) async fn query<'a, T: FromRedisValue>(
        &self,
        timeout: Duration,
        what: &str,
        lane: Lane,
        request: impl Into<Request<'a>>,
    ) -> Result<T, LayerError> {
        bounded(&self.host, timeout, what, self.pool.run(lane, request))
            .await
            .inspect_err(|error| self.mark_down(error))
    }
}

/// Pings shard `i` every `ping_interval` on a connection of its own. When the shard answers
/// again after a failure (or for the first time), the memberships it holds are written again
/// before it counts as healthy: a restarted Redis may have come back empty.
pub(super) async fn health_loop(inner: Weak<Inner>, i: usize) {
    let mut conn: Option<(u64, MultiplexedConnection)> = None;
    let mut delay = Duration::from_millis(50);
    let mut master_changes = match inner.upgrade() {
        Some(layer) => layer.shards[i].host.master_changes(),
        None => return,
    };
    loop {
        let Some(layer) = inner.upgrade() else { return };
        let shard = &layer.shards[i];
        if let Some((version, _)) = &conn
            && !shard.is_current(*version)
        {
            // A Sentinel failover: the memberships go to the new master (it may have missed
            // the latest writes), and the receive loops reconnect on their own.
            conn = None;
            shard.mark_down(&shard.host.unavailable(format!(
                "the redis master moved to {}: reconnecting",
                crate::redis::conn::redact(&shard.host.url())
            )));
        }
        let result = check(&layer, i, &mut conn).await;
        let wait = match result {
            Ok(()) => {
                delay = Duration::from_millis(50);
                layer.ping_interval
            }
            Err(error) => {
                conn = None;
                // redis-rs reports a refused AUTH without Redis' words: ask Redis.
                let error = shard.host.explain(error, layer.timeout).await;
                let was_healthy = shard.healthy.load(Ordering::SeqCst);
                let changed = shard.set_problem(Some(&error));
                shard.mark_down(&error);
                if !was_healthy && changed {
                    // Never connected, or Redis now says something else (mark_down logs the
                    // start of an outage).
                    tracing::error!(%error, host = shard.host.display(), "redis shard unreachable: reconnecting");
                } else {
                    tracing::debug!(%error, "redis shard health check failed");
                }
                let wait = delay;
                delay = (delay * 2).min(layer.reconnect_max_delay);
                wait
            }
        };
        // Holding the layer for one wait only delays its drop by at most that wait.
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shard.wake.notified() => {}
            () = master_changes.changed() => {}
        }
    }
}

async fn check(
    layer: &Inner,
    i: usize,
    conn: &mut Option<(u64, MultiplexedConnection)>,
) -> Result<(), LayerError> {
    let shard = &layer.shards[i];
    let (_, c) = match conn {
        Some(c) => c,
        None => conn.insert(shard.dedicated(layer.timeout).await?),
    };
    bounded(
        &shard.host,
        layer.timeout,
        "PING",
        redis::cmd("PING").query_async::<()>(c),
    )
    .await?;
    if !shard.healthy.load(Ordering::SeqCst) {
        layer.resync(i).await?;
        let _ = shard.set_problem(None);
        shard.healthy.store(true, Ordering::SeqCst);
        tracing::info!(host = shard.host.display(), "redis shard connected");
    }
    Ok(())
}
