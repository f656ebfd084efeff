//! Whether each shard's subscriber is alive: a ping every interval (a failed or unanswered one
//! marks the shard disconnected, and an unanswered one replaces the connection), a full resync
//! when it answers again, and the [liveness probe](super::probe) while it does.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Inner;
use super::probe::Probe;

/// Pings shard `i`'s subscriber; marks it disconnected on failure, and resubscribes everything
/// when it answers again. While it answers, the [`Probe`] checks that it also receives.
pub(super) async fn ping_loop(inner: Weak<Inner>, i: usize, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe = Probe::default();
    let (mut master_changes, router) = match inner.upgrade() {
        Some(inner) => (
            inner.shards[i].host.master_changes(),
            std::sync::Arc::clone(&inner.router),
        ),
        None => return,
    };
    loop {
        // A Sentinel shard's new master is followed at once, not at the next tick.
        // So is a subscriber connection that is up again.
        tokio::select! {
            _ = ticker.tick() => {}
            () = master_changes.changed() => {}
            () = router.reconnected[i].notified() => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        let shard = &inner.shards[i];
        if shard.follow_master() {
            probe = Probe::default();
        }
        if !shard.host.has_master() {
            // No sentinel named the master yet: nothing to ping (the watcher keeps asking).
            let error = shard
                .explain(
                    shard
                        .host
                        .unavailable("no sentinel has named the master yet"),
                )
                .await;
            let _ = shard.set_problem(Some(&error));
            router.resync[i].store(true, Ordering::SeqCst);
            router.connected[i].store(false, Ordering::SeqCst);
            continue;
        }
        // A master switch during the PING (which may be waiting on the old, dead master)
        // replaces the subscriber and pings the new one at once.
        let (generation, ping) = loop {
            let generation = router.generation[i].load(Ordering::SeqCst);
            let mut sub = shard.subscriber();
            tokio::select! {
                ping = tokio::time::timeout(inner.timeout, sub.ping()) => break (generation, ping),
                () = master_changes.changed() => {
                    if shard.follow_master() {
                        probe = Probe::default();
                    }
                }
            }
        };
        let ping = match ping {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) if !error.is_timeout() => {
                Err(shard.host.unavailable(format!("PING failed: {error}")))
            }
            Ok(Err(_)) | Err(_) => {
                // No answer and no error: the connection may be black-holed or half-open, and
                // redis-rs only reconnects on errors. Start over with a fresh one, unless it
                // was replaced meanwhile (a Sentinel master switch).
                if router.generation[i].load(Ordering::SeqCst) == generation
                    && let Err(error) = shard.replace_subscriber()
                {
                    tracing::error!(%error, "cannot replace the redis subscriber");
                }
                Err(shard.host.unavailable(format!(
                    "PING timed out after {:?}: connection replaced",
                    inner.timeout
                )))
            }
        };
        match ping {
            Ok(_) => {
                if router.resync[i].swap(false, Ordering::SeqCst) {
                    if let Err(error) = inner.resync(i).await {
                        router.resync[i].store(true, Ordering::SeqCst);
                        let error = shard.explain(error).await;
                        let _ = shard.set_problem(Some(&error));
                        tracing::warn!(%error, "resubscribe failed: retrying");
                        continue;
                    }
                    let _ = shard.set_problem(None);
                    if !router.connected[i].swap(true, Ordering::SeqCst) {
                        tracing::info!(host = shard.host.display(), "redis subscriber connected");
                    }
                }
                // It answers; does it also hear?
                if let Err(error) = probe.check(&inner, i).await {
                    if let Err(error) = shard.replace_subscriber() {
                        tracing::error!(%error, "cannot replace the redis subscriber");
                    }
                    if router.connected[i].swap(false, Ordering::SeqCst) {
                        router.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = shard.set_problem(Some(&error));
                    tracing::error!(%error, "redis subscriber hears nothing: connection replaced");
                }
            }
            Err(error) => {
                let error = shard.explain(error).await;
                let changed = shard.set_problem(Some(&error));
                router.resync[i].store(true, Ordering::SeqCst);
                let was_connected = router.connected[i].swap(false, Ordering::SeqCst);
                if was_connected {
                    router.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                }
                // Once per outage, and again when Redis says something else (a password
                // changed while it was down): not once per ping.
                if was_connected || changed {
                    tracing::error!(%error, "redis subscriber unreachable: reconnecting");
                }
            }
        }
    }
}
