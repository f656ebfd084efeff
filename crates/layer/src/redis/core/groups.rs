//! Group membership on the core layer: sorted sets in Redis, kept in step with the local
//! registry. (`group_send` is in `send.rs`.)
//!
//! Membership lives in Redis (`{prefix}:group:{g}`, members are full channel names, scores the
//! time of the latest add), where every process, Python or Rust, reads it. This replica
//! remembers what it added (`Inner::memberships`) and the reconciler keeps Redis in step with
//! the registry:
//!
//! * an inbox that is dropped leaves the registry; the reconciler `ZREM`s its memberships (a
//!   failed `ZREM` is retried every second until Redis takes it);
//! * a membership whose `ZADD` failed is added again once Redis answers;
//! * with `refresh_memberships`, every live membership is re-added each `group_expiry / 4`,
//!   so a socket that stays connected longer than `group_expiry` stays in its groups (Python
//!   never refreshes, and drops such members after a day);
//! * after a shard reconnects (a restarted Redis may have lost everything) its memberships are
//!   written again with their scores.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::Inner;
use super::wire;
use crate::error::LayerError;
use crate::name::{ChannelName, GroupName};
use crate::redis::conn::Lane;
use crate::redis::shard::consistent_hash;
use crate::sync::lock;

/// A membership and the score of its latest `ZADD`.
type Entry = (GroupName, ChannelName, f64);

/// Memberships per pipeline: keeps each call well inside the deadline.
const PER_PIPELINE: usize = 1000;

/// How often failed membership writes are retried.
const RETRY: Duration = Duration::from_secs(1);

impl Inner {
    /// The shard of a group key: the raw group name's hash, as in Python.
    pub(super) fn group_shard(&self, group: &GroupName) -> usize {
        consistent_hash(group.as_str(), self.shards.len())
    }

    pub(super) async fn group_add(
        &self,
        group: &GroupName,
        channel: &ChannelName,
    ) -> Result<(), LayerError> {
        self.registry.group_add(group, channel)?;
        let entry = (group.clone(), channel.clone(), wire::unix_now());
        if let Err(error) = self
            .zadd(self.group_shard(group), std::slice::from_ref(&entry))
            .await
        {
            // The registry keeps the membership: the reconciler adds it once Redis answers.
            self.retry.store(true, Ordering::SeqCst);
            self.write_failed(&error, group);
            return Err(error);
        }
        let (group, channel, score) = entry;
        let live = {
            let mut added = lock(&self.memberships);
            let live = self.registry.is_member(&group, &channel);
            if live {
                added.insert((group.clone(), channel.clone()), score);
            }
            live
        };
        if !live {
            // The inbox was dropped while we wrote: undo, or the reconciler would never know.
            self.zrem(self.group_shard(&group), &[(group, channel)])
                .await
                .ok();
        }
        Ok(())
    }

    pub(super) async fn group_discard(
        &self,
        group: &GroupName,
        channel: &ChannelName,
    ) -> Result<(), LayerError> {
        self.registry.group_discard(group, channel);
        if self.registry.is_closed() {
            return Ok(());
        }
        let key = (group.clone(), channel.clone());
        let previous = lock(&self.memberships).remove(&key);
        // Any channel may be discarded, as in Python, even one this replica never added.
        let result = self
            .zrem(self.group_shard(group), std::slice::from_ref(&key))
            .await;
        if let Err(error) = &result {
            if let Some(score) = previous {
                // Still ours to remove: the reconciler retries.
                lock(&self.memberships).entry(key).or_insert(score);
                self.retry.store(true, Ordering::SeqCst);
            }
            self.write_failed(error, group);
        }
        result
    }

    fn write_failed(&self, error: &LayerError, group: &GroupName) {
        self.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%error, %group, "group membership write failed");
    }

    /// Brings Redis in line with the registry: removes what no local inbox holds any more and
    /// adds what failed before. Returns false if something is left to retry.
    ///
    /// A stale membership stays recorded until its `ZREM` succeeded, so a pass that fails or
    /// is cancelled (by `close`) leaves it for the next one.
    pub(super) async fn reconcile(&self) -> bool {
        let (stale, missing) = {
            let added = lock(&self.memberships);
            let live = self.registry.memberships();
            let stale: Vec<Entry> = added
                .iter()
                .filter(|(k, _)| !live.contains(k))
                .map(|((g, c), score)| (g.clone(), c.clone(), *score))
                .collect();
            let missing: Vec<(GroupName, ChannelName)> = live
                .into_iter()
                .filter(|k| !added.contains_key(k))
                .collect();
            (stale, missing)
        };
        let mut ok = true;
        let mut readd = Vec::new();
        for (shard, entries) in self.by_shard(stale) {
            let pairs: Vec<_> = entries.into_iter().map(|(g, c, _)| (g, c)).collect();
            if let Err(error) = self.zrem(shard, &pairs).await {
                ok = false;
                self.retry_later(shard, &error, "leaving groups", pairs.len());
                continue;
            }
            let mut added = lock(&self.memberships);
            for pair in pairs {
                if self.registry.is_member(&pair.0, &pair.1) {
                    // A general channel reopened and re-added meanwhile: our ZREM may have
                    // landed after its ZADD.
                    readd.push(pair);
                } else {
                    added.remove(&pair);
                }
            }
        }
        let now = wire::unix_now();
        let missing = missing
            .into_iter()
            .chain(readd)
            .map(|(g, c)| (g, c, now))
            .collect();
        for (shard, entries) in self.by_shard(missing) {
            match self.zadd(shard, &entries).await {
                Ok(()) => {
                    // Recorded even if an inbox went meanwhile: its drop woke the reconciler,
                    // whose next pass removes it.
                    let mut added = lock(&self.memberships);
                    for (g, c, score) in entries {
                        added.insert((g, c), score);
                    }
                }
                Err(error) => {
                    ok = false;
                    self.retry_later(shard, &error, "joining groups", entries.len());
                }
            }
        }
        ok
    }

    /// The recorded memberships that a local inbox still holds, with `score` or their own.
    fn live_entries(&self, shard: Option<usize>, score: Option<f64>) -> Vec<Entry> {
        let live = self.registry.memberships();
        lock(&self.memberships)
            .iter()
            .filter(|(k, _)| live.contains(k))
            .filter(|((g, _), _)| shard.is_none_or(|s| self.group_shard(g) == s))
            .map(|((g, c), s)| (g.clone(), c.clone(), score.unwrap_or(*s)))
            .collect()
    }

    /// Re-adds every live membership of this replica with the current time as its score.
    pub(super) async fn refresh(&self) -> bool {
        let entries = self.live_entries(None, Some(wire::unix_now()));
        let mut ok = true;
        for (shard, entries) in self.by_shard(entries) {
            if let Err(error) = self.zadd(shard, &entries).await {
                ok = false;
                self.retry_later(shard, &error, "refreshing group memberships", entries.len());
                continue;
            }
            let mut added = lock(&self.memberships);
            for (g, c, score) in entries {
                if let Some(s) = added.get_mut(&(g, c)) {
                    *s = score;
                }
            }
        }
        ok
    }

    /// Writes again every live membership held on `shard`, with its recorded score: after a
    /// reconnect, Redis may have restarted empty.
    pub(super) async fn resync(&self, shard: usize) -> Result<(), LayerError> {
        let entries = self.live_entries(Some(shard), None);
        self.zadd(shard, &entries).await
    }

    fn by_shard(&self, entries: Vec<Entry>) -> HashMap<usize, Vec<Entry>> {
        let mut out: HashMap<usize, Vec<Entry>> = HashMap::new();
        for entry in entries {
            out.entry(self.group_shard(&entry.0))
                .or_default()
                .push(entry);
        }
        out
    }

    /// `ZADD {prefix}:group:{g} score channel ...` and `EXPIRE group_expiry` per group, in
    /// pipelines of at most [`PER_PIPELINE`] memberships on `shard`.
    async fn zadd(&self, shard: usize, entries: &[Entry]) -> Result<(), LayerError> {
        let expire = wire::expire_secs(self.registry.config().group_expiry);
        for chunk in entries.chunks(PER_PIPELINE) {
            let mut by_group: HashMap<&GroupName, Vec<(f64, &str)>> = HashMap::new();
            for (g, c, score) in chunk {
                by_group.entry(g).or_default().push((*score, c.as_str()));
            }
            let mut pipe = redis::pipe();
            for (group, members) in by_group {
                let key = self.keys.group(group);
                pipe.cmd("ZADD").arg(&key).arg(members).ignore();
                pipe.cmd("EXPIRE").arg(&key).arg(expire).ignore();
            }
            self.shards[shard]
                .query::<()>(self.timeout, "ZADD group", Lane::Pool, &pipe)
                .await?;
        }
        Ok(())
    }

    /// `ZREM {prefix}:group:{g} channel ...` per group, in pipelines of at most
    /// [`PER_PIPELINE`] memberships on `shard`.
    async fn zrem(
        &self,
        shard: usize,
        entries: &[(GroupName, ChannelName)],
    ) -> Result<(), LayerError> {
        for chunk in entries.chunks(PER_PIPELINE) {
            let mut by_group: HashMap<&GroupName, Vec<&str>> = HashMap::new();
            for (g, c) in chunk {
                by_group.entry(g).or_default().push(c.as_str());
            }
            let mut pipe = redis::pipe();
            for (group, members) in by_group {
                pipe.cmd("ZREM")
                    .arg(self.keys.group(group))
                    .arg(members)
                    .ignore();
            }
            self.shards[shard]
                .query::<()>(self.timeout, "ZREM group", Lane::Pool, &pipe)
                .await?;
        }
        Ok(())
    }

    /// Logs a failed background membership write: at `warn` while the shard counts as up,
    /// at `debug` during an outage (the outage itself is logged once, at `error`).
    fn retry_later(&self, shard: usize, error: &LayerError, what: &str, count: usize) {
        if self.shards[shard].healthy.load(Ordering::SeqCst) {
            tracing::warn!(%error, count, what, "group membership write failed: retrying");
        } else {
            tracing::debug!(%error, count, what, "group membership write failed: retrying");
        }
    }
}

/// Keeps Redis in step with the registry: on every membership change, every second while a
/// write is pending, and every `group_expiry / 4` to refresh.
pub(super) async fn reconcile_loop(inner: Weak<Inner>) {
    let mut next_refresh: Option<Instant> = None;
    loop {
        let Some(layer) = inner.upgrade() else { return };
        let registry = Arc::clone(&layer.registry);
        let refresh_every = layer
            .refresh
            .then(|| refresh_interval(layer.registry.config().group_expiry))
            .filter(|d| !d.is_zero());
        if let Some(every) = refresh_every {
            next_refresh.get_or_insert_with(|| Instant::now() + every);
        }
        let mut wake = Instant::now() + RETRY;
        if let Some(next) = next_refresh {
            wake = wake.min(next);
        }
        drop(layer);
        let changed = tokio::select! {
            () = registry.changed() => true,
            () = tokio::time::sleep_until(wake) => false,
        };
        drop(registry);
        let Some(layer) = inner.upgrade() else { return };
        if changed {
            layer.sync_readers(&inner);
        }
        let pending = layer.retry.swap(false, Ordering::SeqCst);
        // A pass reads every local membership: skip it on plain timer ticks.
        if changed || pending {
            if !layer.reconcile().await {
                layer.retry.store(true, Ordering::SeqCst);
            } else if pending {
                tracing::info!("group memberships back in step with redis");
            }
        }
        if let (Some(every), Some(next)) = (refresh_every, next_refresh)
            && Instant::now() >= next
        {
            // After a failure, try again soon rather than in half a group_expiry.
            let again = if layer.refresh().await { every } else { RETRY };
            next_refresh = Some(Instant::now() + again);
        }
    }
}

/// How often live memberships are re-added: a quarter of `group_expiry`, so that a Django
/// process whose `group_send` trims members older than `group_expiry` (channels_redis does, with
/// its own setting) always finds ours fresh, whatever the delays; never more than once a
/// second.
fn refresh_interval(group_expiry: Duration) -> Duration {
    (group_expiry / 4).max(Duration::from_secs(1))
}
