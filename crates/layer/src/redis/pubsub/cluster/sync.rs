//! Keeping the cluster's subscriptions where the slots are: the slot map, one `SSUBSCRIBE` per
//! needed channel on the master that owns it, `SUNSUBSCRIBE` of what no member needs, pings of
//! the subscriber connections, and readiness.

use std::collections::{HashMap, HashSet};
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::slots::{self, SlotMap};
use super::{Inner, Sub};
use crate::error::LayerError;
use crate::redis::text::words;
use crate::sync::lock;

/// How often the loop runs when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);
/// How often the slot map is read again when nothing made it stale.
const REFRESH: Duration = Duration::from_secs(1);
/// `SSUBSCRIBE`s sent in one pipeline.
const BATCH: usize = 256;

/// Why a pipeline of subscriptions did not go through.
enum Batch {
    /// The node could not be reached, or did not answer: try again at the next pass.
    NodeDown(LayerError),
    /// Redis refused some of them: find out which, one by one.
    Failed,
}

/// Follows registry changes, lost connections and moved slots until the layer is dropped.
pub(super) async fn maintain_loop(inner: Weak<Inner>) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ping = Instant::now();
    let mut last_refresh = Instant::now();
    loop {
        let Some((registry, events)) = inner.upgrade().map(|i| {
            (
                std::sync::Arc::clone(&i.registry),
                std::sync::Arc::clone(&i.events),
            )
        }) else {
            return;
        };
        tokio::select! {
            () = registry.changed() => {}
            () = events.wake.notified() => {}
            _ = ticker.tick() => {}
        }
        drop((registry, events));
        let Some(inner) = inner.upgrade() else { return };
        if last_refresh.elapsed() >= REFRESH {
            inner.stale.store(true, Ordering::SeqCst);
            last_refresh = Instant::now();
        }
        let ping = last_ping.elapsed() >= inner.ping_interval;
        if ping {
            last_ping = Instant::now();
        }
        inner.maintain(ping).await;
    }
}

impl Inner {
    /// One pass: drop lost connections, refresh the slot map if stale, bring the
    /// subscriptions in line with the registry, ping (when `ping`), and record readiness.
    pub(super) async fn maintain(&self, ping: bool) {
        for (addr, generation) in std::mem::take(&mut *lock(&self.events.lost)) {
            let node = lock(&self.nodes).get(&addr).cloned();
            if node.is_some_and(|n| n.drop_subscriber(generation)) {
                self.stale.store(true, Ordering::SeqCst);
            }
        }
        let mut problem = None;
        if self.stale.swap(false, Ordering::SeqCst)
            && let Err(error) = self.refresh_map().await
        {
            self.stale.store(true, Ordering::SeqCst);
            problem = Some(error);
        }
        let mut subs = self.subs.lock().await;
        if let Err(error) = self.reconcile(&mut subs).await {
            problem = problem.or(Some(error));
        }
        if ping && let Err(error) = self.ping(&subs).await {
            problem = problem.or(Some(error));
        }
        let ready = problem.is_none() && self.all_confirmed(&subs);
        drop(subs);
        let was = self.ready.swap(ready, Ordering::SeqCst);
        match (&problem, was, ready) {
            (_, false, true) => {
                *lock(&self.problem) = None;
                tracing::info!(cluster = %self.url.display, "redis cluster subscriptions in place");
            }
            (Some(error), true, false) => {
                tracing::warn!(%error, "redis cluster subscriptions incomplete: resubscribing");
            }
            _ => {}
        }
        if let Some(error) = problem {
            *lock(&self.problem) = Some(error.to_string());
        }
    }

    /// Subscribes `channel` where its slot lives unless Redis already confirmed it there.
    pub(super) async fn ensure(&self, channel: &str) -> Result<(), LayerError> {
        if self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            self.refresh_map().await?;
        }
        let mut subs = self.subs.lock().await;
        self.subscribe(&mut subs, channel).await
    }

    /// Reads `CLUSTER SLOTS` from the first node that answers: the known masters, then the
    /// URL's nodes.
    async fn refresh_map(&self) -> Result<(), LayerError> {
        let mut candidates: Vec<String> = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .masters()
            .to_vec();
        candidates.extend(self.url.seeds.iter().cloned());
        let mut seen = HashSet::new();
        let mut failures = Vec::new();
        for addr in candidates.into_iter().filter(|a| seen.insert(a.clone())) {
            let node = self.node(&addr)?;
            let mut slots = redis::cmd("CLUSTER");
            slots.arg("SLOTS");
            let reply = tokio::time::timeout(self.timeout, async {
                node.pool
                    .query::<redis::Value>(&slots)
                    .await
                    .map_err(|e| words(&e))
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
            match reply.and_then(|r| SlotMap::from_cluster_slots(&r)) {
                Ok(map) => {
                    *self.map.write().unwrap_or_else(|e| e.into_inner()) = map;
                    return Ok(());
                }
                Err(error) => failures.push(format!("{addr}: {error}")),
            }
        }
        Err(self.unavailable(format!(
            "no node gave the slot map: {}",
            failures.join("; ")
        )))
    }

    /// The shard channels the registry needs: this replica's own, its groups', and the
    /// other channels opened here.
    fn desired(&self) -> HashSet<String> {
        let (groups, channels) = self.registry.snapshot();
        let names = &self.router.names;
        let mut desired: HashSet<String> = groups.iter().map(|g| names.group_channel(g)).collect();
        desired.extend(
            channels
                .iter()
                .filter(|c| !names.is_own(c))
                .map(|c| c.as_str().to_owned()),
        );
        if !self.registry.is_closed() {
            desired.insert(self.inbox());
        }
        desired
    }

    /// Unsubscribes what is no longer needed, subscribes what is not confirmed where its
    /// slot lives, and closes subscribers that hold nothing. Returns the first failure.
    async fn reconcile(&self, subs: &mut HashMap<String, Sub>) -> Result<(), LayerError> {
        let desired = self.desired();
        let stale: Vec<String> = subs
            .keys()
            .filter(|c| !desired.contains(*c))
            .cloned()
            .collect();
        for channel in stale {
            if let Some(sub) = subs.remove(&channel) {
                self.unsubscribe(&channel, &sub).await;
            }
        }
        lock(&self.placed).retain(|c, _| desired.contains(c));
        let first = self.subscribe_missing(subs, &desired).await.err();
        let used: HashSet<&str> = subs.values().map(|s| s.addr.as_str()).collect();
        for node in lock(&self.nodes).values() {
            if !used.contains(node.addr.as_str()) {
                node.close_subscriber();
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Whether `sub` is in place: on the slot's owner, over the node's current connection.
    fn in_place(&self, channel: &str, sub: &Sub) -> bool {
        let owner = self.owner(channel);
        owner.as_deref() == Some(sub.addr.as_str())
            && lock(&self.nodes)
                .get(&sub.addr)
                .and_then(|n| n.current())
                .is_some_and(|(g, _)| g == sub.generation)
    }

    fn owner(&self, channel: &str) -> Option<String> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .owner(slots::slot(channel))
            .map(str::to_owned)
    }

    fn all_confirmed(&self, subs: &HashMap<String, Sub>) -> bool {
        self.desired()
            .iter()
            .all(|c| subs.get(c).is_some_and(|s| self.in_place(c, s)))
    }

    /// Subscribes what `desired` needs and is not in place: per node, pipelines of
    /// single-channel `SSUBSCRIBE`s ([`BATCH`] at a time; one confirmation each, so redis-rs
    /// pairs every reply with its command). A batch that fails is retried channel by channel,
    /// which tells which failed and follows a `MOVED`; a node that cannot be reached is left
    /// for the next pass after one attempt.
    async fn subscribe_missing(
        &self,
        subs: &mut HashMap<String, Sub>,
        desired: &HashSet<String>,
    ) -> Result<(), LayerError> {
        let mut first = None;
        let mut by_node: HashMap<String, Vec<String>> = HashMap::new();
        for channel in desired {
            if subs.get(channel).is_some_and(|s| self.in_place(channel, s)) {
                continue;
            }
            match self.owner(channel) {
                Some(owner) => by_node.entry(owner).or_default().push(channel.clone()),
                None => {
                    first = first.or_else(|| {
                        Some(self.unavailable("no node serves a needed channel's slot"))
                    });
                }
            }
        }
        'nodes: for (owner, channels) in by_node {
            for batch in channels.chunks(BATCH) {
                match self.subscribe_batch(subs, &owner, batch).await {
                    Ok(()) => {}
                    Err(Batch::NodeDown(error)) => {
                        first = first.or(Some(error));
                        continue 'nodes;
                    }
                    Err(Batch::Failed) => {
                        for channel in batch {
                            if let Err(error) = self.subscribe(subs, channel).await {
                                first = first.or(Some(error));
                            }
                        }
                    }
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// One pipeline of `SSUBSCRIBE`s of `batch` on `owner`.
    async fn subscribe_batch(
        &self,
        subs: &mut HashMap<String, Sub>,
        owner: &str,
        batch: &[String],
    ) -> Result<(), Batch> {
        for channel in batch {
            if let Some(old) = subs.remove(channel) {
                self.unsubscribe(channel, &old).await;
            }
        }
        let node = self.node(owner).map_err(Batch::NodeDown)?;
        let (generation, mut conn) = node
            .subscriber(self.timeout, &self.router, &self.events)
            .await
            .map_err(Batch::NodeDown)?;
        let mut pipe = redis::pipe();
        for channel in batch {
            pipe.cmd("SSUBSCRIBE").arg(channel);
        }
        match tokio::time::timeout(
            self.timeout,
            pipe.query_async::<Vec<redis::Value>>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => {
                for channel in batch {
                    self.record(subs, channel, owner, generation);
                }
                Ok(())
            }
            Ok(Err(_)) => Err(Batch::Failed),
            Err(_) => {
                node.drop_subscriber(generation);
                self.stale.store(true, Ordering::SeqCst);
                Err(Batch::NodeDown(node.host.unavailable(format!(
                    "SSUBSCRIBE timed out after {:?}",
                    self.timeout
                ))))
            }
        }
    }

    /// Records a confirmed subscription (and counts a move when it was elsewhere before).
    fn record(&self, subs: &mut HashMap<String, Sub>, channel: &str, owner: &str, generation: u64) {
        let before = lock(&self.placed).insert(channel.to_owned(), owner.to_owned());
        if before.is_some_and(|b| b != owner) {
            self.moves.fetch_add(1, Ordering::Relaxed);
        }
        subs.insert(
            channel.to_owned(),
            Sub {
                addr: owner.to_owned(),
                generation,
            },
        );
    }

    /// One `SSUBSCRIBE` of `channel` on its slot's master, unless it is in place.
    async fn subscribe(
        &self,
        subs: &mut HashMap<String, Sub>,
        channel: &str,
    ) -> Result<(), LayerError> {
        if subs.get(channel).is_some_and(|s| self.in_place(channel, s)) {
            return Ok(());
        }
        let owner = self
            .owner(channel)
            .ok_or_else(|| self.unavailable("no node serves the slot of a needed channel"))?;
        if let Some(old) = subs.remove(channel) {
            self.unsubscribe(channel, &old).await;
        }
        let node = self.node(&owner)?;
        let (generation, mut conn) = node
            .subscriber(self.timeout, &self.router, &self.events)
            .await?;
        let answer = tokio::time::timeout(
            self.timeout,
            redis::cmd("SSUBSCRIBE")
                .arg(channel)
                .query_async::<redis::Value>(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok(_)) => {
                self.record(subs, channel, &owner, generation);
                Ok(())
            }
            Ok(Err(error)) => {
                if let Some((slot, to)) = slots::parse_moved(&error) {
                    self.map
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .moved(slot, &to);
                }
                self.stale.store(true, Ordering::SeqCst);
                Err(node
                    .host
                    .unavailable(format!("SSUBSCRIBE failed: {}", words(&error))))
            }
            Err(_) => {
                // Unanswered: the connection is not trusted any further.
                node.drop_subscriber(generation);
                self.stale.store(true, Ordering::SeqCst);
                Err(node
                    .host
                    .unavailable(format!("SSUBSCRIBE timed out after {:?}", self.timeout)))
            }
        }
    }

    /// `SUNSUBSCRIBE` of `channel` where it was subscribed, if that connection is still open;
    /// best effort (a lost connection took the subscription with it).
    async fn unsubscribe(&self, channel: &str, sub: &Sub) {
        let node = lock(&self.nodes).get(&sub.addr).cloned();
        let Some((generation, mut conn)) = node.as_ref().and_then(|n| n.current()) else {
            return;
        };
        if generation != sub.generation {
            return;
        }
        let key = (sub.addr.clone(), channel.as_bytes().to_vec());
        lock(&self.events.unsubscribing).insert(key.clone());
        let answer = tokio::time::timeout(
            self.timeout,
            redis::cmd("SUNSUBSCRIBE")
                .arg(channel)
                .query_async::<redis::Value>(&mut conn),
        )
        .await;
        if !matches!(answer, Ok(Ok(_))) {
            lock(&self.events.unsubscribing).remove(&key);
            if let Some(node) = node {
                node.drop_subscriber(generation);
            }
        }
    }

    /// Pings every subscriber in use; drops those that fail or do not answer.
    async fn ping(&self, subs: &HashMap<String, Sub>) -> Result<(), LayerError> {
        let used: HashSet<String> = subs.values().map(|s| s.addr.clone()).collect();
        let mut first = None;
        for addr in used {
            let node = lock(&self.nodes).get(&addr).cloned();
            let Some((generation, mut conn)) = node.as_ref().and_then(|n| n.current()) else {
                continue;
            };
            let answer = tokio::time::timeout(
                self.timeout,
                redis::cmd("PING").query_async::<redis::Value>(&mut conn),
            )
            .await;
            if !matches!(answer, Ok(Ok(_)))
                && let Some(node) = node
            {
                node.drop_subscriber(generation);
                self.stale.store(true, Ordering::SeqCst);
                self.events.wake.notify_one();
                first = first.or(Some(node.host.unavailable("PING failed or timed out")));
            }
        }
        first.map_or(Ok(()), Err)
    }
}
