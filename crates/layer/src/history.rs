//! Per-group history: the last messages of each group with their offsets, so that a client that
//! reconnects can get what it missed, and a client that joins can see the recent conversation.
//!
//! Off unless [`LayerConfig::history_size`](crate::LayerConfig::history_size) is set. With it,
//! every `group_send` made through the layer is stored and delivered in one atomic step: the
//! group's offset grows by one, the message joins the group's history (the last `history_size`
//! messages, kept `history_ttl` after the group's latest message), and every member gets it
//! carrying its [`Position`]. The history's [`Epoch`] names one run of offsets: when the history
//! is lost (Redis restarted without persistence, or its keys expired), the next message starts a
//! new epoch at offset 1, so a client holding an old position learns that its position means
//! nothing any more instead of getting the wrong messages.
//!
//! What is not stored: messages sent to the group by anything that does not go through this
//! layer's `group_send` (a Python process's `group_send` is a plain `PUBLISH` or `ZADD`); they
//! are delivered live without a position.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::message::Message;
use crate::name::GroupName;
pub use crate::position::{Epoch, InvalidEpoch, Position};
use crate::sync::lock;

/// What to read from a group's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// The latest `n` messages (at most the history size).
    Latest(usize),
    /// The messages after this offset, oldest first, at most the history size of them.
    After(u64),
}

/// A group's history as read: its epoch, its latest offset and the messages asked for, oldest
/// first, each with its position set.
#[derive(Debug, Clone)]
pub struct HistoryRead {
    /// The history's epoch (created by the read when the group had none).
    pub epoch: Epoch,
    /// The offset of the group's latest message in this epoch (0: none yet).
    pub top: u64,
    /// The messages, oldest first.
    pub messages: Vec<Message>,
}

impl HistoryRead {
    /// Whether the messages are exactly those after `since` up to `top`, with no gap: what
    /// recovery needs. `false` when the history no longer holds them all (the window passed),
    /// or when `since` is ahead of the history.
    pub fn is_complete_after(&self, since: u64) -> bool {
        if since > self.top {
            return false;
        }
        let offsets = self.messages.iter().filter_map(|m| m.position());
        let mut expected = since + 1;
        for position in offsets {
            if position.offset != expected {
                return false;
            }
            expected += 1;
        }
        expected == self.top + 1
    }
}

/// History settings of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistoryLimits {
    pub(crate) size: usize,
    pub(crate) ttl: Duration,
}

impl HistoryLimits {
    /// How long a group's epoch and top offset outlive its messages: long enough that a client
    /// that was away longer than the TTL still learns that it missed messages (`window`),
    /// rather than that the history restarted (`epoch`).
    pub(crate) fn meta_ttl(&self) -> Duration {
        self.ttl.max(Duration::from_secs(86_400))
    }
}

/// The in-process history of the in-memory layer.
#[derive(Debug)]
pub(crate) struct MemoryHistory {
    limits: HistoryLimits,
    groups: Mutex<HashMap<GroupName, Stream>>,
}

#[derive(Debug)]
struct Stream {
    epoch: Epoch,
    top: u64,
    last: Instant,
    messages: VecDeque<Message>,
}

impl Stream {
    fn new() -> Self {
        Self {
            epoch: Epoch::random(),
            top: 0,
            last: Instant::now(),
            messages: VecDeque::new(),
        }
    }
}

/// Groups kept before expired ones are swept on the next send.
const SWEEP_ABOVE: usize = 1024;

impl MemoryHistory {
    pub(crate) fn new(limits: HistoryLimits) -> Self {
        Self {
            limits,
            groups: Mutex::default(),
        }
    }

    /// Drops the messages of a stream idle longer than the TTL and forgets a stream idle
    /// longer than the epoch's lifetime.
    fn expire(&self, stream: &mut Stream, now: Instant) -> bool {
        let idle = now.saturating_duration_since(stream.last);
        if idle >= self.limits.ttl {
            stream.messages.clear();
        }
        idle < self.limits.meta_ttl()
    }

    /// The stream of `group`, made (with a new epoch) if it has none or its epoch ended;
    /// sweeps the ended ones of other groups when there are many.
    fn stream<'a>(
        &self,
        groups: &'a mut HashMap<GroupName, Stream>,
        group: &GroupName,
        now: Instant,
    ) -> &'a mut Stream {
        if groups.len() > SWEEP_ABOVE {
            groups.retain(|_, stream| self.expire(stream, now));
        }
        let stream = groups.entry(group.clone()).or_insert_with(Stream::new);
        if !self.expire(stream, now) {
            *stream = Stream::new();
        }
        stream
    }

    /// Stores `msg` as the group's next message and hands it, positioned, to `deliver`, under
    /// one lock: every member sees the group's messages in offset order.
    pub(crate) fn append<R>(
        &self,
        group: &GroupName,
        msg: Message,
        deliver: impl FnOnce(&Message) -> R,
    ) -> R {
        let now = Instant::now();
        let mut groups = lock(&self.groups);
        let stream = self.stream(&mut groups, group, now);
        stream.top += 1;
        stream.last = now;
        let msg = msg.with_position(Some(Position {
            epoch: stream.epoch,
            offset: stream.top,
        }));
        stream.messages.push_back(msg.clone());
        while stream.messages.len() > self.limits.size {
            stream.messages.pop_front();
        }
        deliver(&msg)
    }

    pub(crate) fn read(&self, group: &GroupName, since: Since) -> HistoryRead {
        let now = Instant::now();
        let mut groups = lock(&self.groups);
        let stream = self.stream(&mut groups, group, now);
        let messages = match since {
            Since::Latest(n) => {
                let skip = stream.messages.len().saturating_sub(n);
                stream.messages.iter().skip(skip).cloned().collect()
            }
            Since::After(offset) => stream
                .messages
                .iter()
                .filter(|m| m.position().is_some_and(|p| p.offset > offset))
                .take(self.limits.size)
                .cloned()
                .collect(),
        };
        HistoryRead {
            epoch: stream.epoch,
            top: stream.top,
            messages,
        }
    }

    pub(crate) fn clear(&self) {
        lock(&self.groups).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positioned(offset: u64) -> Message {
        Message::new("m").with_position(Some(Position {
            epoch: Epoch::from_bits(1),
            offset,
        }))
    }

    #[test]
    fn epochs_print_and_parse_as_eight_hex_digits() {
        let epoch = Epoch::from_bits(0x00ab_cdef);
        assert_eq!(epoch.to_string(), "00abcdef");
        assert_eq!("00abcdef".parse::<Epoch>(), Ok(epoch));
        assert_eq!("00ABCDEF".parse::<Epoch>(), Ok(epoch));
        for bad in ["", "abc", "00abcdefg", "+0abcdef", "zzzzzzzz", "0x0abcde"] {
            assert_eq!(bad.parse::<Epoch>(), Err(InvalidEpoch), "{bad:?}");
        }
    }

    #[test]
    fn completeness_needs_every_offset_up_to_top() {
        let read = |top, offsets: &[u64]| HistoryRead {
            epoch: Epoch::from_bits(1),
            top,
            messages: offsets.iter().map(|&o| positioned(o)).collect(),
        };
        assert!(read(5, &[]).is_complete_after(5));
        assert!(read(5, &[4, 5]).is_complete_after(3));
        assert!(!read(5, &[5]).is_complete_after(3), "4 is missing");
        assert!(!read(5, &[4]).is_complete_after(3), "5 is missing");
        assert!(!read(5, &[]).is_complete_after(3));
        assert!(!read(5, &[]).is_complete_after(7), "ahead of the history");
    }

    #[tokio::test(start_paused = true)]
    async fn memory_history_keeps_the_last_n_for_the_ttl() {
        let history = MemoryHistory::new(HistoryLimits {
            size: 3,
            ttl: Duration::from_secs(10),
        });
        let g = GroupName::new("g").unwrap();
        for i in 1..=5i64 {
            let got = history.append(&g, Message::new("m").with("i", i), |m| m.position());
            assert_eq!(got.map(|p| p.offset), Some(i as u64));
        }
        let read = history.read(&g, Since::After(1));
        let offsets: Vec<u64> = read
            .messages
            .iter()
            .filter_map(|m| Some(m.position()?.offset))
            .collect();
        assert_eq!(offsets, [3, 4, 5]);
        assert_eq!(read.top, 5);
        assert!(!read.is_complete_after(1), "2 fell out of the window");
        assert!(history.read(&g, Since::After(2)).is_complete_after(2));
        assert_eq!(history.read(&g, Since::Latest(2)).messages.len(), 2);
        tokio::time::advance(Duration::from_secs(11)).await;
        let read = history.read(&g, Since::After(4));
        assert_eq!((read.top, read.messages.len()), (5, 0));
        assert!(!read.is_complete_after(4), "expired: window");
        assert!(read.is_complete_after(5), "nothing missed");
        tokio::time::advance(Duration::from_secs(86_400)).await;
        assert_ne!(history.read(&g, Since::After(5)).epoch, read.epoch);
    }
}
