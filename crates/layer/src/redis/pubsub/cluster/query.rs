//! Commands on the master that owns a key's slot, following one `MOVED`: publishing and the
//! presence scripts.

use std::sync::atomic::Ordering;

use super::{Inner, slots};
use crate::error::LayerError;
use crate::name::GroupName;
use crate::redis::conn::Lane;
use crate::redis::presence;

impl Inner {
    /// One `SPUBLISH` on the master of the channel's slot (see [`Inner::query`]); a failure is
    /// counted and logged.
    pub(super) async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), LayerError> {
        let mut cmd = redis::cmd("SPUBLISH");
        cmd.arg(channel).arg(payload);
        let result = self
            .query::<i64>(channel, "SPUBLISH", Lane::Publish, &cmd)
            .await
            .map(drop);
        if let Err(error) = &result {
            self.router
                .counters
                .publish_errors
                .fetch_add(1, Ordering::Relaxed);
            crate::log_limited!(warn, %error, %channel, "publish failed");
        }
        result
    }

    /// One command on the master of `key`'s slot, in `lane`, within the timeout; sent again
    /// once to the node a `MOVED` names. Errors carry `what` and Redis' own words.
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        key: &str,
        what: &str,
        lane: Lane,
        cmd: &redis::Cmd,
    ) -> Result<T, LayerError> {
        if self.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        let slot = slots::slot(key);
        let mut result = Err(self.unavailable("no node serves the slot yet"));
        for _ in 0..2 {
            let owner = self
                .map
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .owner(slot)
                .map(str::to_owned);
            let Some(addr) = owner else {
                self.stale.store(true, Ordering::SeqCst);
                self.events.wake.notify_one();
                break;
            };
            let node = self.node(&addr)?;
            let attempt = tokio::time::timeout(self.timeout, node.pool.run::<T>(lane, cmd)).await;
            match attempt {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => {
                    self.stale.store(true, Ordering::SeqCst);
                    self.events.wake.notify_one();
                    let words = crate::redis::text::words(&error);
                    if let Some((slot, to)) = slots::parse_moved(&error) {
                        self.map
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .moved(slot, &to);
                        result = Err(self.unavailable(format!("{what}: {words}")));
                        continue;
                    }
                    result = Err(node.host.unavailable(format!("{what} failed: {words}")));
                    break;
                }
                Err(_) => {
                    self.stale.store(true, Ordering::SeqCst);
                    result = Err(node
                        .host
                        .unavailable(format!("{what} timed out after {:?}", self.timeout)));
                    break;
                }
            }
        }
        result
    }

    /// The presence keys of `group` (both in the slot of its shard channel's name).
    pub(super) fn presence_keys(&self, group: &GroupName) -> (String, String) {
        let names = &self.router.names;
        presence::keys(&names.prefix, &names.group_channel(group))
    }
}
