//! Which groups and channels each shard's subscriber is subscribed to, kept in step with the
//! registry: the join's own `SUBSCRIBE`, the reconciliation after every membership change and
//! the full resync after a reconnect.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Inner;
use super::subscriber::Shard;
use crate::error::LayerError;
use crate::redis::conn::bounded;

impl Inner {
    /// Subscribes to `channels` (in one `SUBSCRIBE`, on the shard of the first) unless Redis
    /// already confirmed them all. Safe to cancel: see [`Subscriptions`].
    pub(super) async fn ensure_subscribed(&self, channels: Vec<String>) -> Result<(), LayerError> {
        let Some(first) = channels.first() else {
            return Ok(());
        };
        let i = self.shard_of(first);
        let mut subscribed = self.subscribed.lock().await;
        if channels.iter().all(|c| subscribed[i].is_confirmed(c)) {
            return Ok(());
        }
        subscribed[i]
            .apply(Change::Subscribe, &self.shards[i], self.timeout, &channels)
            .await
    }

    /// The channels the registry needs, per shard.
    pub(super) fn desired(&self) -> Vec<HashSet<String>> {
        let (groups, channels) = self.registry.snapshot();
        let mut desired = vec![HashSet::new(); self.shards.len()];
        let names = &self.router.names;
        let wanted = groups.iter().map(|g| names.group_channel(g)).chain(
            channels
                .iter()
                .filter(|c| !names.is_own(c))
                .map(|c| c.as_str().to_owned()),
        );
        for channel in wanted {
            desired[self.shard_of(&channel)].insert(channel);
        }
        if self.history.is_some() {
            // A group's side channel lives on its group channel's shard (the script publishes
            // both there).
            for group in &groups {
                let shard = self.shard_of(&names.group_channel(group));
                desired[shard].insert(names.side_channel(group));
            }
        }
        desired
    }

    /// Brings the subscriptions in line with the registry: unsubscribes everything Redis may
    /// hold that no local member needs any more, subscribes what is needed and not confirmed.
    /// What fails stays unsettled and is retried by the next pass.
    pub(super) async fn reconcile(&self) {
        let mut subscribed = self.subscribed.lock().await;
        let desired = self.desired();
        for (i, shard) in self.shards.iter().enumerate() {
            let subscribed = &mut subscribed[i];
            let stale = subscribed.stale(&desired[i]);
            if let Err(error) = subscribed
                .apply(Change::Unsubscribe, shard, self.timeout, &stale)
                .await
            {
                tracing::debug!(%error, "unsubscribe postponed");
            }
            let missing = subscribed.missing(&desired[i]);
            if let Err(error) = subscribed
                .apply(Change::Subscribe, shard, self.timeout, &missing)
                .await
            {
                tracing::debug!(%error, "subscribe postponed");
            }
        }
    }

    /// Whether a connected shard has a subscription whose state Redis did not confirm (a
    /// cancelled or failed call): the periodic pass of [`reconcile_loop`] then settles it. A
    /// disconnected shard is left to its [`resync`](Self::resync), and a busy lock to its
    /// holder.
    pub(super) fn unsettled(&self) -> bool {
        let Ok(subscribed) = self.subscribed.try_lock() else {
            return false;
        };
        let router = &self.router;
        subscribed.iter().enumerate().any(|(i, s)| {
            router.connected[i].load(Ordering::SeqCst)
                && !router.resync[i].load(Ordering::SeqCst)
                && s.has_unsettled()
        })
    }

    /// After a (re)connect: the pattern, then every channel the registry needs, from scratch
    /// (the connection may be a new one), and away with everything else Redis may hold.
    pub(super) async fn resync(&self, i: usize) -> Result<(), LayerError> {
        let shard = &self.shards[i];
        let mut sub = shard.subscriber();
        let mut subscribed = self.subscribed.lock().await;
        bounded(
            &shard.host,
            self.timeout,
            "PSUBSCRIBE",
            sub.psubscribe(&self.router.names.pattern),
        )
        .await?;
        let desired = self.desired().swap_remove(i);
        let subscribed = &mut subscribed[i];
        let all: Vec<String> = desired.iter().cloned().collect();
        subscribed
            .apply(Change::Subscribe, shard, self.timeout, &all)
            .await?;
        let stale = subscribed.stale(&desired);
        subscribed
            .apply(Change::Unsubscribe, shard, self.timeout, &stale)
            .await
    }
}

/// What one shard's subscriber connection may be subscribed to, and whether Redis confirmed
/// it. A channel is entered (unconfirmed) *before* its `SUBSCRIBE` is sent and removed only
/// after an `UNSUBSCRIBE` of it succeeded. A call cancelled or timed out in between may still
/// reach Redis (and redis-rs replays whatever Redis confirmed after a reconnect), so its
/// channel stays here, unconfirmed, until a later pass settles it: the subscriptions converge
/// to the registry wherever a call is cancelled.
#[derive(Debug, Default, Clone)]
pub(super) struct Subscriptions(HashMap<String, bool>);

/// What [`Subscriptions::apply`] asks of Redis.
#[derive(Debug, Clone, Copy)]
pub(super) enum Change {
    Subscribe,
    Unsubscribe,
}

impl Subscriptions {
    /// Redis answered the latest `SUBSCRIBE` of `channel` and no `UNSUBSCRIBE` followed.
    pub(super) fn is_confirmed(&self, channel: &str) -> bool {
        self.0.get(channel).copied().unwrap_or(false)
    }

    pub(super) fn has_unsettled(&self) -> bool {
        self.0.values().any(|confirmed| !confirmed)
    }

    /// What Redis may hold that `desired` does not want.
    pub(super) fn stale(&self, desired: &HashSet<String>) -> Vec<String> {
        self.0
            .keys()
            .filter(|c| !desired.contains(*c))
            .cloned()
            .collect()
    }

    /// What `desired` wants and Redis did not confirm.
    pub(super) fn missing(&self, desired: &HashSet<String>) -> Vec<String> {
        desired
            .iter()
            .filter(|c| !self.is_confirmed(c))
            .cloned()
            .collect()
    }

    /// Sends `change` for `channels` on `shard`, 512 at a time. A batch is unconfirmed while
    /// its call runs (Redis may run it even if the call is cancelled or times out), then
    /// confirmed (subscribed) or forgotten (unsubscribed) once Redis answered. Stops at the
    /// first failure.
    pub(super) async fn apply(
        &mut self,
        change: Change,
        shard: &Shard,
        timeout: Duration,
        channels: &[String],
    ) -> Result<(), LayerError> {
        let mut sub = shard.subscriber();
        for batch in channels.chunks(512) {
            self.mark(batch, false);
            match change {
                Change::Subscribe => {
                    bounded(&shard.host, timeout, "SUBSCRIBE", sub.subscribe(batch)).await?;
                    self.mark(batch, true);
                }
                Change::Unsubscribe => {
                    bounded(&shard.host, timeout, "UNSUBSCRIBE", sub.unsubscribe(batch)).await?;
                    for channel in batch {
                        self.0.remove(channel);
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn mark(&mut self, channels: &[String], confirmed: bool) {
        for channel in channels {
            self.0.insert(channel.clone(), confirmed);
        }
    }
}

/// Follows registry changes with (un)subscriptions. Every `interval` it also settles what a
/// cancelled or failed call left unconfirmed, so that no subscription waits for the next
/// registry change (which may never come) to be retried or removed.
pub(super) async fn reconcile_loop(inner: Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let registry = match inner.upgrade() {
            Some(inner) => Arc::clone(&inner.registry),
            None => return,
        };
        // A change notification that loses the race to the tick is kept by `Notify` for the
        // next turn.
        let changed = tokio::select! {
            () = registry.changed() => true,
            _ = ticker.tick() => false,
        };
        drop(registry);
        let Some(inner) = inner.upgrade() else { return };
        if changed || inner.unsettled() {
            inner.reconcile().await;
        }
    }
}
