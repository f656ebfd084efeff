//! The receive loops: they pop messages from Redis sorted sets and hand them to the local
//! registry.
//!
//! A replica runs **one** loop for all of its `new_channel()` channels, on its inbox key
//! `{prefix}specific.{client_prefix}!`, whatever the number of sockets; it demultiplexes by
//! `__asgi_channel__` (a str from `send`, a list from `group_send`). Each general channel opened
//! with `open_channel` (and each foreign `!` prefix) gets a loop per shard on its own key, since
//! Python senders pick a shard round-robin for those.
//!
//! Each loop owns a dedicated connection, because `BZPOPMIN` blocks it. On any error the
//! connection is dropped and a new one is made with backoff; the inbox loop reports its state
//! through the layer's readiness.
//!
//! # Reliability on the inbox key
//!
//! channels_redis runs, per message: a restore script (move `$inflight` back to the key),
//! `BZPOPMIN`, `ZADD key$inflight`, deliver, and `ZPOPMIN key$inflight` as the
//! acknowledgement. We keep the `$inflight` key and its meaning but batch it (see
//! [`wire::POP`](super::wire::POP)): one script call acknowledges the previous batch (`DEL`) and
//! atomically moves up to [`BATCH`] members to `$inflight`; only when the key is empty does the
//! loop block in `BZPOPMIN`. After a failed call the next one runs in `restore` mode and gets the
//! whole backup back; members already delivered are recognised by their bytes (the random
//! prefix makes each unique) and skipped. So a lost reply loses nothing, and a lost
//! acknowledgement duplicates nothing, where Python can lose the message of a lost `BZPOPMIN`
//! reply and can deliver twice after a cancelled acknowledgement. A message returned by
//! `BZPOPMIN` itself is delivered at once without a backup, as in Python (a reply lost there is
//! a lost message: at most once). One round trip per batch instead of four per message.
//!
//! General-channel keys may have readers in other processes sharing `key$inflight`, whose
//! restore script moves everyone's backups around; so there we pop without a backup.

use std::collections::{HashMap, HashSet};
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Inner;
use super::wire::{self, POP};
use crate::error::LayerError;
use crate::name::ChannelName;
use crate::redis::conn::bounded;
use crate::sync::lock;

/// Members popped per script call.
pub(super) const BATCH: usize = 64;

const MIN_DELAY: Duration = Duration::from_millis(50);

/// Where a loop delivers what it pops.
#[derive(Debug, Clone)]
pub(super) enum Target {
    /// To the channels named by `__asgi_channel__` (a process-local key).
    Routed,
    /// To this general channel.
    Channel(ChannelName),
}

/// One receive loop's settings.
#[derive(Debug, Clone)]
pub(super) struct Reader {
    pub(super) shard: usize,
    pub(super) key: String,
    pub(super) target: Target,
    /// The layer's own inbox: `$inflight` backups, and it drives readiness.
    pub(super) inbox: bool,
}

/// What the loop remembers between script calls.
#[derive(Debug)]
struct Backup {
    /// The previous call failed: its reply, and the batch it moved, may be lost.
    restore: bool,
    /// Members of the latest batch, already delivered, still in `$inflight`.
    delivered: HashSet<Vec<u8>>,
}

impl Reader {
    /// Runs until the layer is dropped or the task is aborted.
    pub(super) async fn run(self, inner: Weak<Inner>) {
        let inflight = wire::inflight(&self.key);
        let mut conn: Option<(u64, MultiplexedConnection)> = None;
        let mut backup = Backup {
            restore: true,
            delivered: HashSet::new(),
        };
        let mut delay = MIN_DELAY;
        loop {
            let Some(layer) = inner.upgrade() else { return };
            if let Target::Channel(name) = &self.target
                && !layer.registry.has_channel(name)
            {
                return;
            }
            // A Sentinel failover: pop from the new master (restore mode, as after an error).
            if let Some((version, _)) = &conn
                && !layer.shards[self.shard].is_current(*version)
            {
                conn = None;
                backup.restore = true;
            }
            let result = match conn.as_mut() {
                Some((_, c)) => self.step(&layer, c, &inflight, &mut backup).await,
                None => match layer.shards[self.shard].dedicated(layer.timeout).await {
                    Ok(c) => {
                        conn = Some(c);
                        continue;
                    }
                    Err(error) => Err(error),
                },
            };
            match result {
                Ok(()) => delay = MIN_DELAY,
                Err(error) => {
                    conn = None;
                    backup.restore = true;
                    self.report_down(&layer, &error);
                    let max = layer.reconnect_max_delay;
                    drop(layer);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(max);
                }
            }
        }
    }

    /// One batch: pop what is there, or block until something arrives (or the block times out).
    async fn step(
        &self,
        layer: &Inner,
        conn: &mut MultiplexedConnection,
        inflight: &str,
        backup: &mut Backup,
    ) -> Result<(), LayerError> {
        let host = &layer.shards[self.shard].host;
        let batch = if self.inbox {
            let mode = if backup.restore { "restore" } else { "ack" };
            let mut call = wire::eval(POP, &[&self.key, inflight]);
            call.arg(mode)
                .arg(BATCH)
                .arg(wire::expire_secs(layer.registry.config().expiry));
            let flat: Vec<Vec<u8>> = bounded(
                host,
                layer.timeout,
                "receive script",
                call.query_async(conn),
            )
            .await?;
            let all = wire::pairs(flat);
            let fresh: Vec<_> = if backup.restore {
                all.iter()
                    .filter(|(m, _)| !backup.delivered.contains(m))
                    .cloned()
                    .collect()
            } else {
                all.clone()
            };
            backup.delivered = all.into_iter().map(|(m, _)| m).collect();
            backup.restore = false;
            if !layer.inbox_ready.swap(true, Ordering::SeqCst) {
                *crate::sync::lock(&layer.inbox_problem) = None;
                tracing::info!(host = host.display(), "redis receive loop connected");
            }
            fresh
        } else {
            let flat: Vec<Vec<u8>> = bounded(
                host,
                layer.timeout,
                "ZPOPMIN",
                redis::cmd("ZPOPMIN")
                    .arg(&self.key)
                    .arg(BATCH)
                    .query_async(conn),
            )
            .await?;
            wire::pairs(flat)
        };
        if !batch.is_empty() {
            for (member, score) in &batch {
                layer.deliver(&self.target, &self.key, member, *score);
            }
            return Ok(());
        }
        // Nothing waiting: block. The deadline leaves the server its full block time.
        let block = layer.block_timeout;
        let popped: Option<(Vec<u8>, Vec<u8>, f64)> = bounded(
            host,
            block + layer.timeout,
            "BZPOPMIN",
            redis::cmd("BZPOPMIN")
                .arg(&self.key)
                .arg(block.as_secs_f64())
                .query_async(conn),
        )
        .await?;
        if let Some((_, member, score)) = popped {
            layer.deliver(&self.target, &self.key, &member, score);
        }
        Ok(())
    }

    fn report_down(&self, layer: &Inner, error: &LayerError) {
        layer.shards[self.shard].mark_down(error);
        if self.inbox {
            *crate::sync::lock(&layer.inbox_problem) = Some(error.to_string());
        }
        if !self.inbox {
            tracing::debug!(%error, key = %self.key, "channel receive loop reconnecting");
        } else if layer.inbox_ready.swap(false, Ordering::SeqCst) {
            tracing::warn!(%error, "redis receive loop disconnected: reconnecting");
        }
    }
}

impl Inner {
    /// Delivers one popped payload to the local inboxes it is for. Never blocks: a full inbox
    /// drops (and counts) the message.
    pub(super) fn deliver(&self, target: &Target, key: &str, payload: &[u8], score: f64) {
        // The payload also carries the routing key (`__asgi_channel__`: one name, or the names
        // of every member behind one message key), so the message's own size is checked after
        // decoding; only a payload far over any message the limit allows is dropped unread.
        let max = self.registry.config().max_message_size;
        let limit = self
            .serializer
            .payload_limit(max)
            .saturating_mul(2)
            .saturating_add(1 << 20);
        if payload.len() > limit && !self.registry.accept_size(key, payload.len()) {
            return;
        }
        let decoded = match wire::decode(&self.serializer, payload) {
            Ok(decoded) => decoded,
            Err(error) => return self.undecodable(key, &error),
        };
        if max > 0
            && !self
                .registry
                .accept_size(key, decoded.message.encoded_len())
        {
            return;
        }
        let names = match (target, decoded.channels) {
            (Target::Channel(name), _) => vec![name.clone()],
            (Target::Routed, None) => {
                return self.undecodable(key, &"no __asgi_channel__ on a process-local key");
            }
            (Target::Routed, Some(names)) => {
                let mut valid = Vec::with_capacity(names.len());
                for name in names {
                    match ChannelName::new(&name) {
                        Ok(name) => valid.push(name),
                        Err(error) => self.undecodable(key, &error),
                    }
                }
                valid
            }
        };
        let Some(deadline) = deadline(score, self.registry.config().expiry) else {
            self.counters
                .expired
                .fetch_add(names.len() as u64, Ordering::Relaxed);
            tracing::debug!(key, "message expired in redis before it was popped");
            return;
        };
        let message = decoded.message.with_position(decoded.position);
        for name in &names {
            if let Err(LayerError::ChannelFull(_)) =
                self.registry.send_until(name, message.clone(), deadline)
            {
                let n = self.counters.full_logged.fetch_add(1, Ordering::Relaxed) + 1;
                crate::log_limited!(warn, channel = %name, total = n, "inbox full: message dropped");
            }
        }
    }

    fn undecodable(&self, key: &str, error: &dyn std::fmt::Display) {
        let n = self.counters.undecodable.fetch_add(1, Ordering::Relaxed) + 1;
        crate::log_limited!(warn, key, %error, total = n, "undecodable message from redis dropped");
    }

    /// Starts a receive loop for each key a local channel needs besides the inbox key, and
    /// stops those no local channel needs any more.
    pub(super) fn sync_readers(&self, weak: &Weak<Inner>) {
        let (_, channels) = self.registry.snapshot();
        let mut wanted: HashMap<String, Target> = HashMap::new();
        for channel in channels.into_iter().filter(|c| !self.keys.is_own(c)) {
            let key = self.keys.channel(channel.non_local_name());
            let target = if channel.is_process_local() {
                Target::Routed
            } else {
                Target::Channel(channel)
            };
            wanted.insert(key, target);
        }
        let mut readers = lock(&self.readers);
        readers.retain(|key, tasks| {
            let keep = wanted.contains_key(key) && tasks.iter().all(|t| !t.is_finished());
            if !keep {
                tasks.iter().for_each(JoinHandle::abort);
            }
            keep
        });
        for (key, target) in wanted {
            if readers.contains_key(&key) {
                continue;
            }
            // Python's senders put general-channel messages on any shard: read them all.
            let tasks = (0..self.shards.len())
                .map(|shard| {
                    let reader = Reader {
                        shard,
                        key: key.clone(),
                        target: target.clone(),
                        inbox: false,
                    };
                    tokio::spawn(reader.run(weak.clone()))
                })
                .collect();
            readers.insert(key, tasks);
        }
    }
}

/// When a message stored at `score` (Unix seconds) expires here, `expiry` after it was sent;
/// `None` if it already has. A score in the future (clock skew) counts as sent now.
pub(super) fn deadline(score: f64, expiry: Duration) -> Option<Instant> {
    let age = (wire::unix_now() - score).max(0.0);
    let left = expiry.as_secs_f64() - age;
    (left > 0.0).then(|| Instant::now() + Duration::from_secs_f64(left))
}
