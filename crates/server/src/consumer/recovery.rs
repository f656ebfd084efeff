//! History and recovery on a WebSocket connection: the client asks with query parameters, the
//! runtime reads the group's history when the consumer joins it, replays what the client asked
//! for, and then admits live messages in offset order, without a gap or a duplicate.
//!
//! Only with history on (`--history-size`) and only when the client asks:
//!
//! * `?recover=1`: every text frame the consumer sends becomes JSON
//!   `{"type": "message", "text": <the frame>, "offset": 17, "epoch": "..."}` (offset and epoch
//!   when the frame answers a group message that has a position);
//! * `?history=K` (implies `recover=1`): after joining, the group's last K messages (at most the
//!   history size) go through the consumer first, oldest first;
//! * `?since=OFFSET&epoch=EPOCH` (implies `recover=1`): the first frame is
//!   `{"type": "recovery", "recovered": true, "missed": M}` and the M messages after OFFSET go
//!   through the consumer before live ones; or `{"type": "recovery", "recovered": false,
//!   "reason": "epoch" | "window"}` when the history restarted or no longer holds them all,
//!   followed by live messages.
//!
//! Live messages are admitted by offset: one at or below the last one seen is a duplicate (it
//! was replayed) and skipped; one past the next offset means something was lost (the inbox was
//! full, or the subscriber reconnected): the connection closes with
//! [`Close::MISSED`](super::Close::MISSED) (4010) so that the client reconnects with `since`
//! and gets it back.

use std::collections::VecDeque;

use channels_layer::{Epoch, GroupName, HistoryRead, Message, Position, Since};
use serde_json::json;

use super::close::Close;

/// What the client asked for in the query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RecoveryRequest {
    /// `history=K`.
    pub history: Option<usize>,
    /// `since=OFFSET&epoch=EPOCH`.
    pub since: Option<(u64, Epoch)>,
}

impl RecoveryRequest {
    /// Parses the recovery parameters of `query`: `Ok(None)` when there are none, `Err` with
    /// what is wrong when they are malformed.
    ///
    /// ```
    /// use channels_server::consumer::recovery::RecoveryRequest;
    /// let request = RecoveryRequest::parse("groupID=1&since=17&epoch=0000002a")?.unwrap();
    /// assert_eq!(request.since.map(|(offset, _)| offset), Some(17));
    /// assert_eq!(RecoveryRequest::parse("groupID=1")?, None);
    /// assert!(RecoveryRequest::parse("since=17").is_err());
    /// # Ok::<(), String>(())
    /// ```
    pub fn parse(query: &str) -> Result<Option<Self>, String> {
        let mut recover = false;
        let mut request = Self::default();
        let (mut since, mut epoch) = (None, None);
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            match key {
                "recover" => match &*value {
                    "1" | "true" => recover = true,
                    "0" | "false" => {}
                    _ => return Err("recover must be 1 or 0".to_owned()),
                },
                "history" => {
                    let k = value
                        .parse::<usize>()
                        .map_err(|_| "history must be a number of messages".to_owned())?;
                    request.history = Some(k);
                }
                "since" => {
                    since = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| "since must be an offset (a number)".to_owned())?,
                    );
                }
                "epoch" => {
                    epoch = Some(value.parse::<Epoch>().map_err(|e| format!("epoch: {e}"))?);
                }
                _ => {}
            }
        }
        match (since, epoch) {
            (Some(since), Some(epoch)) => request.since = Some((since, epoch)),
            (None, None) => {}
            _ => return Err("since and epoch go together".to_owned()),
        }
        if recover || request.history.is_some() || request.since.is_some() {
            Ok(Some(request))
        } else {
            Ok(None)
        }
    }
}

/// One group followed by offset.
#[derive(Debug)]
struct Tracked {
    epoch: Epoch,
    /// The latest offset the client has (replayed or live).
    last: u64,
}

/// A connection's recovery state.
#[derive(Debug)]
pub(crate) struct Recovery {
    request: RecoveryRequest,
    /// The groups joined, by epoch (a group's epoch names it among this connection's groups).
    tracked: Vec<(GroupName, Tracked)>,
    /// History messages to hand to the consumer before live ones.
    replay: VecDeque<Message>,
    /// The position of the group message being handled, for the frames it produces.
    pub(crate) current: Option<Position>,
}

/// What to do with a live message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Hand it to the consumer.
    Deliver,
    /// Already seen (replayed from history): skip it.
    Duplicate,
}

impl Recovery {
    pub(crate) fn new(request: RecoveryRequest) -> Self {
        Self {
            request,
            tracked: Vec::new(),
            replay: VecDeque::new(),
            current: None,
        }
    }

    /// What to read from `group`'s history now that the consumer joined it.
    pub(crate) fn wanted(&self, history_size: usize) -> Since {
        match (self.request.since, self.request.history) {
            // `since` is for the connection's first group (a page's one group).
            (Some((offset, _)), _) if self.tracked.is_empty() => Since::After(offset),
            (_, Some(k)) => Since::Latest(k.min(history_size)),
            _ => Since::Latest(0),
        }
    }

    /// Takes in what the history read of `group` found; returns the recovery frame to send
    /// first, if the client asked to recover.
    pub(crate) fn joined(&mut self, group: &GroupName, read: HistoryRead) -> Option<String> {
        let since = match self.request.since {
            Some(since) if self.tracked.is_empty() => Some(since),
            _ => None,
        };
        self.tracked.retain(|(g, _)| g != group);
        let top = read.top;
        let frame = since.map(|(offset, epoch)| {
            if epoch != read.epoch {
                json!({"type": "recovery", "recovered": false, "reason": "epoch"})
            } else if read.is_complete_after(offset) {
                json!({"type": "recovery", "recovered": true, "missed": read.messages.len()})
            } else {
                json!({"type": "recovery", "recovered": false, "reason": "window"})
            }
        });
        let recovered = frame
            .as_ref()
            .is_some_and(|f| f["recovered"] == serde_json::Value::Bool(true));
        // Replay recovered messages, or the recent history asked for; not a partial recovery.
        if recovered || (since.is_none() && self.request.history.is_some()) {
            self.replay.extend(read.messages);
        }
        self.tracked.push((
            group.clone(),
            Tracked {
                epoch: read.epoch,
                last: top,
            },
        ));
        frame.map(|f| f.to_string())
    }

    /// The group is left: stop following it.
    pub(crate) fn left(&mut self, group: &GroupName) {
        self.tracked.retain(|(g, _)| g != group);
    }

    /// The next history message to hand to the consumer.
    pub(crate) fn next_replay(&mut self) -> Option<Message> {
        self.replay.pop_front()
    }

    /// Judges a live message by its position: deliver, skip a duplicate, or close with
    /// [`Close::MISSED`] when messages were lost in between or the group's history restarted.
    pub(crate) fn admit(&mut self, msg: &Message) -> Result<Admit, Close> {
        let Some(position) = msg.position() else {
            // Not from history (a Python group_send, a direct send): live only.
            return Ok(Admit::Deliver);
        };
        let Some((_, tracked)) = self
            .tracked
            .iter_mut()
            .find(|(_, t)| t.epoch == position.epoch)
        else {
            if self.tracked.is_empty() {
                return Ok(Admit::Deliver);
            }
            // A new epoch for a group we follow: its history restarted under us.
            return Err(Close::MISSED);
        };
        if position.offset <= tracked.last {
            return Ok(Admit::Duplicate);
        }
        if position.offset > tracked.last + 1 {
            return Err(Close::MISSED);
        }
        tracked.last = position.offset;
        Ok(Admit::Deliver)
    }

    /// A text frame as the client sees it in recovery mode.
    pub(crate) fn wrap(&self, text: String) -> String {
        match self.current {
            Some(position) => json!({
                "type": "message",
                "text": text,
                "offset": position.offset,
                "epoch": position.epoch.to_string(),
            }),
            None => json!({"type": "message", "text": text}),
        }
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: u32, offset: u64) -> Message {
        Message::new("m").with_position(Some(Position {
            epoch: Epoch::from_bits(epoch),
            offset,
        }))
    }

    fn read(epoch: u32, top: u64, offsets: &[u64]) -> HistoryRead {
        HistoryRead {
            epoch: Epoch::from_bits(epoch),
            top,
            messages: offsets.iter().map(|&o| at(epoch, o)).collect(),
        }
    }

    #[test]
    fn parameters_parse_or_say_what_is_wrong() {
        assert_eq!(RecoveryRequest::parse(""), Ok(None));
        assert_eq!(RecoveryRequest::parse("token=x&recover=0"), Ok(None));
        assert_eq!(
            RecoveryRequest::parse("recover=1"),
            Ok(Some(RecoveryRequest::default()))
        );
        assert_eq!(
            RecoveryRequest::parse("history=20")
                .unwrap()
                .unwrap()
                .history,
            Some(20)
        );
        assert_eq!(
            RecoveryRequest::parse("since=17&epoch=0000000a")
                .unwrap()
                .unwrap()
                .since,
            Some((17, Epoch::from_bits(10)))
        );
        for bad in [
            "recover=yes",
            "history=-1",
            "history=many",
            "since=1",
            "epoch=0000000a",
            "since=x&epoch=0000000a",
            "since=1&epoch=nothex!!",
        ] {
            assert!(RecoveryRequest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn recovery_replays_exactly_what_was_missed_then_admits_in_order() {
        let g = GroupName::new("g").unwrap();
        let mut r = Recovery::new(
            RecoveryRequest::parse("since=3&epoch=00000001")
                .unwrap()
                .unwrap(),
        );
        assert_eq!(r.wanted(100), Since::After(3));
        let frame = r.joined(&g, read(1, 5, &[4, 5])).unwrap();
        assert_eq!(frame, r#"{"missed":2,"recovered":true,"type":"recovery"}"#);
        assert_eq!(
            r.next_replay().and_then(|m| m.position()).map(|p| p.offset),
            Some(4)
        );
        assert!(r.next_replay().is_some());
        assert!(r.next_replay().is_none());
        // Live: 5 was replayed already, 6 is next, 8 means 7 was lost.
        assert_eq!(r.admit(&at(1, 5)), Ok(Admit::Duplicate));
        assert_eq!(r.admit(&at(1, 6)), Ok(Admit::Deliver));
        assert_eq!(r.admit(&Message::new("python")), Ok(Admit::Deliver));
        assert_eq!(r.admit(&at(1, 8)), Err(Close::MISSED));
        assert_eq!(r.admit(&at(2, 1)), Err(Close::MISSED), "a new epoch");
    }

    #[test]
    fn a_failed_recovery_says_why_and_replays_nothing() {
        let g = GroupName::new("g").unwrap();
        let request = RecoveryRequest::parse("since=3&epoch=00000001")
            .unwrap()
            .unwrap();
        let mut r = Recovery::new(request);
        let frame = r.joined(&g, read(2, 9, &[1])).unwrap();
        assert!(frame.contains(r#""reason":"epoch""#), "{frame}");
        assert!(r.next_replay().is_none());
        assert_eq!(r.admit(&at(2, 10)), Ok(Admit::Deliver));
        let mut r = Recovery::new(request);
        let frame = r.joined(&g, read(1, 9, &[6, 7, 8, 9])).unwrap();
        assert!(frame.contains(r#""reason":"window""#), "{frame}");
        assert!(r.next_replay().is_none());
        assert_eq!(r.admit(&at(1, 9)), Ok(Admit::Duplicate));
    }

    #[test]
    fn history_replays_the_latest_and_frames_carry_positions() {
        let g = GroupName::new("g").unwrap();
        let mut r = Recovery::new(RecoveryRequest::parse("history=500").unwrap().unwrap());
        assert_eq!(r.wanted(100), Since::Latest(100));
        assert_eq!(r.joined(&g, read(1, 2, &[1, 2])), None);
        assert_eq!(r.replay.len(), 2);
        assert_eq!(r.wrap("hi".to_owned()), r#"{"text":"hi","type":"message"}"#);
        r.current = Some(Position {
            epoch: Epoch::from_bits(1),
            offset: 2,
        });
        assert_eq!(
            r.wrap("hi".to_owned()),
            r#"{"epoch":"00000001","offset":2,"text":"hi","type":"message"}"#
        );
    }
}
