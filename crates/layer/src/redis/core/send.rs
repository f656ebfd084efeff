//! Writing messages: `send` to one channel and `group_send` to every member of a group, as
//! channels_redis' core layer writes them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::Inner;
use super::wire::{self, GROUP_SEND};
use crate::capacity::capacity_for;
use crate::error::LayerError;
use crate::history::{HistoryLimits, HistoryRead, Since};
use crate::message::Message;
use crate::name::{ChannelName, GroupName};
use crate::redis::conn::Lane;
use crate::redis::shard::consistent_hash;

/// Message keys per `EVAL`: bounds the size of one script call for very large groups.
const KEYS_PER_EVAL: usize = 500;

/// One message key of a `group_send`: the members sharing it get one copy.
#[derive(Debug)]
struct Delivery {
    key: String,
    channels: Vec<String>,
    capacity: usize,
}

impl Inner {
    /// channels_redis' `send`: trim, check capacity, add, expire, in one script. A channel of
    /// this process gets the message straight into its inbox, without a round trip.
    pub(super) async fn send(&self, channel: &ChannelName, msg: Message) -> Result<(), LayerError> {
        if self.registry.is_closed() {
            return Err(LayerError::Closed);
        }
        self.registry.check_message(&msg)?;
        if self.registry.has_channel(channel) || self.keys.is_own(channel) {
            return self.registry.send(channel, msg).map(drop);
        }
        let msg = if channel.is_process_local() {
            wire::addressed_to(msg, channel)
        } else {
            wire::without_routing(msg)
        };
        let (key, shard) = self.route(channel);
        let config = self.registry.config();
        let now = wire::unix_now();
        let mut cmd = wire::eval(wire::SEND, &[&key]);
        cmd.arg(wire::encode(&self.serializer, &msg))
            .arg(now)
            .arg(wire::expire_secs(config.expiry))
            .arg(wire::trim_bound(now, config.expiry))
            .arg(capacity_for(
                &config.channel_capacity,
                config.capacity,
                channel.as_str(),
            ));
        match self.shards[shard]
            .query::<i64>(self.timeout, "EVAL send", Lane::Publish, &cmd)
            .await
        {
            Ok(1) => Ok(()),
            Ok(_) => {
                self.counters.dropped_full.fetch_add(1, Ordering::Relaxed);
                Err(LayerError::ChannelFull(channel.clone()))
            }
            Err(error) => {
                self.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                crate::log_limited!(warn, %error, %channel, "send failed");
                Err(error)
            }
        }
    }

    /// The message key and shard of `channel`, as channels_redis' readers expect them.
    fn route(&self, channel: &ChannelName) -> (String, usize) {
        let non_local = channel.non_local_name();
        let shard = if channel.is_process_local() {
            consistent_hash(non_local, self.shards.len())
        } else {
            self.round_robin.fetch_add(1, Ordering::Relaxed) % self.shards.len()
        };
        (self.keys.channel(non_local), shard)
    }

    /// channels_redis' `group_send`: read the members, then one copy per message key, written
    /// by one script per shard that counts capacity per key.
    pub(super) async fn group_send(
        &self,
        group: &GroupName,
        msg: &Message,
    ) -> Result<(), LayerError> {
        self.registry.check_message(msg)?;
        let now = wire::unix_now();
        let config = self.registry.config();
        // In a block: what only the read needs is not kept in the future across the writes
        // (the conformance case `send_futures_are_small`).
        let members: Vec<String> = {
            let key = self.keys.group(group);
            let mut pipe = redis::pipe();
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg(0)
                .arg(wire::trim_bound(now, config.group_expiry))
                .ignore();
            pipe.cmd("ZRANGE").arg(&key).arg(0).arg(-1);
            let shard = &self.shards[self.group_shard(group)];
            let (members,): (Vec<Vec<u8>>,) = shard
                .query(self.timeout, "ZRANGE group", Lane::Publish, &pipe)
                .await
                .inspect_err(|error| self.group_send_failed(error, group))?;
            // Members written by other processes are not validated: only their key matters.
            members
                .into_iter()
                .filter_map(|m| String::from_utf8(m).ok())
                .collect()
        };
        if let Some(limits) = &self.history {
            return self
                .group_send_with_history(group, limits, msg, &members)
                .await;
        }
        if members.is_empty() {
            return Ok(());
        }
        let mut first_error = None;
        let mut over = 0;
        for (shard, deliveries) in self.plan(&members) {
            for chunk in deliveries.chunks(KEYS_PER_EVAL) {
                match self.write_group_message(shard, chunk, msg, now).await {
                    Ok(full) => over += full,
                    Err(error) => {
                        self.group_send_failed(&error, group);
                        first_error.get_or_insert(error);
                    }
                }
            }
        }
        self.count_over(group, over, members.len());
        first_error.map_or(Ok(()), Err)
    }

    fn count_over(&self, group: &GroupName, over: usize, members: usize) {
        if over > 0 {
            self.counters
                .dropped_full
                .fetch_add(over as u64, Ordering::Relaxed);
            // Python logs "%s of %s channels over capacity in group %s" at INFO.
            crate::log_limited!(
                warn,
                %group,
                dropped = over,
                members,
                "channels over capacity in group: message dropped for them"
            );
        }
    }

    /// `group_send` with history (one Redis host): one script stores the message in the
    /// group's history and writes it, behind its position, to every member key.
    async fn group_send_with_history(
        &self,
        group: &GroupName,
        limits: &HistoryLimits,
        msg: &Message,
        members: &[String],
    ) -> Result<(), LayerError> {
        let (meta, stream) = self.keys.history(group);
        let plan = self.plan(members);
        let deliveries: Vec<&Delivery> = plan.iter().flat_map(|(_, d)| d).collect();
        let mut keys = vec![meta.as_str(), stream.as_str()];
        keys.extend(deliveries.iter().map(|d| d.key.as_str()));
        let mut cmd = wire::eval(&self.history_script, &keys);
        let stored = self
            .serializer
            .serialize(&wire::without_routing(msg.clone()));
        crate::redis::history::append_args(&mut cmd, limits, &stored);
        for d in &deliveries {
            let addressed = wire::addressed_to_all(msg, &d.channels);
            cmd.arg(self.serializer.serialize(&addressed));
        }
        for d in &deliveries {
            cmd.arg(d.capacity);
        }
        cmd.arg(wire::expire_secs(self.registry.config().expiry));
        let full: Vec<usize> = self.shards[0]
            .query(self.timeout, "EVAL group_send history", Lane::Publish, &cmd)
            .await
            .inspect_err(|error| self.group_send_failed(error, group))?;
        let over = full
            .iter()
            .filter_map(|i| deliveries.get(i.wrapping_sub(1)))
            .map(|d| d.channels.len())
            .sum();
        self.count_over(group, over, members.len());
        Ok(())
    }

    /// Reads `group`'s history (one Redis host).
    pub(super) async fn history(
        &self,
        group: &GroupName,
        since: Since,
    ) -> Result<HistoryRead, LayerError> {
        let limits = self.history.ok_or(LayerError::HistoryOff)?;
        let (meta, stream) = self.keys.history(group);
        let cmd = crate::redis::history::read_cmd(&meta, &stream, &limits, since);
        let shard = &self.shards[0];
        let reply = shard
            .query::<redis::Value>(self.timeout, "EVAL history read", Lane::Pool, &cmd)
            .await?;
        crate::redis::history::parse_read(shard.host.display(), &self.serializer, reply)
    }

    fn group_send_failed(&self, error: &LayerError, group: &GroupName) {
        self.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
        crate::log_limited!(warn, %error, %group, "group send failed");
    }

    /// Groups members by message key (`prefix + non_local_name`) and keys by shard, in the
    /// order Python does (first appearance); a key's capacity is its first member's.
    fn plan(&self, members: &[String]) -> Vec<(usize, Vec<Delivery>)> {
        let config = self.registry.config();
        let mut shards: Vec<(usize, Vec<Delivery>)> = Vec::new();
        let mut index: HashMap<String, (usize, usize)> = HashMap::new();
        for channel in members {
            let non_local = channel
                .find('!')
                .map_or(channel.as_str(), |i| &channel[..=i]);
            let key = self.keys.channel(non_local);
            if let Some(&(s, d)) = index.get(&key) {
                shards[s].1[d].channels.push(channel.clone());
                continue;
            }
            let shard = consistent_hash(non_local, self.shards.len());
            let s = match shards.iter().position(|(i, _)| *i == shard) {
                Some(s) => s,
                None => {
                    shards.push((shard, Vec::new()));
                    shards.len() - 1
                }
            };
            index.insert(key.clone(), (s, shards[s].1.len()));
            shards[s].1.push(Delivery {
                key,
                channels: vec![channel.clone()],
                capacity: capacity_for(&config.channel_capacity, config.capacity, channel),
            });
        }
        shards
    }

    /// One `EVAL` of the group script; returns how many channels missed the message because
    /// their key was full.
    async fn write_group_message(
        &self,
        shard: usize,
        deliveries: &[Delivery],
        msg: &Message,
        now: f64,
    ) -> Result<usize, LayerError> {
        let expiry = self.registry.config().expiry;
        let keys: Vec<&str> = deliveries.iter().map(|d| d.key.as_str()).collect();
        let mut cmd = wire::eval(GROUP_SEND, &keys);
        for d in deliveries {
            let addressed = wire::addressed_to_all(msg, &d.channels);
            cmd.arg(wire::encode(&self.serializer, &addressed));
        }
        for d in deliveries {
            cmd.arg(d.capacity);
        }
        cmd.arg(now)
            .arg(wire::expire_secs(expiry))
            .arg(wire::trim_bound(now, expiry));
        let full: Vec<usize> = self.shards[shard]
            .query(self.timeout, "EVAL group_send", Lane::Publish, &cmd)
            .await?;
        Ok(full
            .iter()
            .filter_map(|i| deliveries.get(i.wrapping_sub(1)))
            .map(|d| d.channels.len())
            .sum())
    }
}
