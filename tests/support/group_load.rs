//! Group chats under load for the Redis failover tests (Sentinel, Cluster): members on several
//! replicas read everything; publishers send numbered messages at a steady pace to their group
//! and reconnect when their replica closes the socket (a failed `group_send` closes it with
//! 1013), so that the load goes on through the fault. Loss, duplicates and reordering are
//! counted per member, not guessed.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "test support: each test binary uses part of it; a failed unwrap is a failed test"
)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// The tutorial's group consumer puts this before every text it relays.
const PREFIX: &str = "组内主动推送消息:";

/// How long a message may be on its way when a fault hits it: one sent this long before a
/// fault window opened may still be lost in it.
pub const IN_FLIGHT: Duration = Duration::from_millis(200);

/// One delivery: publisher `publisher` sent it as its `seq`-th message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Seen {
    pub publisher: usize,
    pub seq: usize,
}

/// What one member received, in order.
#[derive(Debug)]
pub struct Member {
    pub replica: String,
    pub group: String,
    pub joined: Instant,
    pub seen: Vec<Seen>,
    /// The close code and time, if the server closed the socket.
    pub closed: Option<(u16, Instant)>,
}

/// What one publisher sent: `at[seq]` is when its `seq`-th message left.
#[derive(Debug)]
pub struct Sent {
    pub id: usize,
    pub group: String,
    pub at: Vec<Instant>,
    /// Times its replica closed its socket and it reconnected.
    pub reconnects: usize,
}

/// Members and publishers of any number of groups.
pub struct Load {
    stop_publishing: CancellationToken,
    stop_reading: CancellationToken,
    members: Vec<JoinHandle<Member>>,
    publishers: Vec<JoinHandle<Sent>>,
}

impl Default for Load {
    fn default() -> Self {
        Self::new()
    }
}

impl Load {
    pub fn new() -> Self {
        Self {
            stop_publishing: CancellationToken::new(),
            stop_reading: CancellationToken::new(),
            members: Vec::new(),
            publishers: Vec::new(),
        }
    }

    /// Connects a member of `group` to the replica at `port` (named `replica`) and starts
    /// reading.
    pub async fn member(&mut self, replica: &str, port: u16, group: &str) {
        let url = format!("ws://127.0.0.1:{port}/group/{group}/");
        let client = test_support::ws::Client::connect(&url).await;
        let (sink, stream) = client.0.split();
        let mut member = Member {
            replica: replica.to_owned(),
            group: group.to_owned(),
            joined: Instant::now(),
            seen: Vec::new(),
            closed: None,
        };
        let stop = self.stop_reading.clone();
        self.members.push(tokio::spawn(async move {
            let _sink = sink;
            let mut stream = stream;
            loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    () = stop.cancelled() => break,
                };
                if !member.record(next) {
                    return member;
                }
            }
            while let Ok(next) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
                if !member.record(next) {
                    break;
                }
            }
            member
        }));
    }

    /// Starts a publisher to `group` through the replica at `port`, one message every `period`;
    /// returns its id.
    pub fn publisher(&mut self, port: u16, group: &str, period: Duration) -> usize {
        let id = self.publishers.len();
        let url = format!("ws://127.0.0.1:{port}/group/{group}/");
        let stop = self.stop_publishing.clone();
        let group = group.to_owned();
        self.publishers
            .push(tokio::spawn(publish(id, url, group, period, stop)));
        id
    }

    /// Stops the publishers, lets the last messages arrive, and collects what everyone saw.
    pub async fn finish(self) -> Report {
        self.stop_publishing.cancel();
        let mut sent = Vec::new();
        for p in self.publishers {
            sent.push(p.await.unwrap());
        }
        self.stop_reading.cancel();
        let mut members = Vec::new();
        for m in self.members {
            members.push(m.await.unwrap());
        }
        Report { members, sent }
    }
}

impl Member {
    /// Records one frame; false once the connection has ended.
    fn record(
        &mut self,
        next: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> bool {
        match next {
            Some(Ok(Message::Text(text))) => {
                let body = text
                    .as_str()
                    .strip_prefix(PREFIX)
                    .unwrap_or_else(|| panic!("unexpected frame {text}"));
                let (publisher, seq) = body[1..].split_once('-').unwrap();
                self.seen.push(Seen {
                    publisher: publisher.parse().unwrap(),
                    seq: seq.parse().unwrap(),
                });
                true
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                self.closed = Some((code, Instant::now()));
                false
            }
            Some(Ok(_)) => true,
            None | Some(Err(_)) => false,
        }
    }

    /// The sequence numbers from `publisher`, checked to be strictly increasing (no duplicate,
    /// no reordering).
    pub fn from(&self, publisher: usize) -> Vec<usize> {
        let seqs: Vec<usize> = self
            .seen
            .iter()
            .filter(|s| s.publisher == publisher)
            .map(|s| s.seq)
            .collect();
        for pair in seqs.windows(2) {
            assert!(
                pair[0] < pair[1],
                "member of {} on {} got p{publisher}'s {} after {}: duplicate or reordered",
                self.group,
                self.replica,
                pair[1],
                pair[0]
            );
        }
        seqs
    }

    /// The messages of `sent` (a publisher of this member's group) it never received, among
    /// those sent while it was connected.
    pub fn missing(&self, sent: &Sent) -> Vec<usize> {
        if sent.group != self.group {
            return Vec::new();
        }
        let got: HashSet<usize> = self.from(sent.id).into_iter().collect();
        let open = |seq: &usize| {
            let at = sent.at[*seq];
            at > self.joined && self.closed.is_none_or(|(_, closed)| at < closed)
        };
        (0..sent.at.len())
            .filter(|s| !got.contains(s) && open(s))
            .collect()
    }
}

/// Sends `p{id}-{seq}` every `period` until stopped; reconnects (and goes on numbering) when
/// the replica closes the socket or refuses the handshake.
async fn publish(
    id: usize,
    url: String,
    group: String,
    period: Duration,
    stop: CancellationToken,
) -> Sent {
    let mut sent = Sent {
        id,
        group,
        at: Vec::new(),
        reconnects: 0,
    };
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        let connect = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(url.as_str()),
        );
        let Ok(Ok((ws, _))) = connect.await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (mut sink, mut stream) = ws.split();
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let seq = sent.at.len();
                    let at = Instant::now();
                    if sink.send(Message::text(format!("p{id}-{seq}"))).await.is_err() {
                        break;
                    }
                    sent.at.push(at);
                }
                next = stream.next() => match next {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                () = stop.cancelled() => return sent,
            }
        }
        sent.reconnects += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sent
}

/// What a load run saw.
pub struct Report {
    pub members: Vec<Member>,
    pub sent: Vec<Sent>,
}

impl Report {
    /// Every member got every message of its group's publishers exactly once, in order.
    pub fn assert_complete(&self) {
        for member in &self.members {
            for sent in &self.sent {
                let missing = member.missing(sent);
                assert!(
                    missing.is_empty(),
                    "member of {} on {} missed {} of p{}'s {} messages (first {:?})",
                    member.group,
                    member.replica,
                    missing.len(),
                    sent.id,
                    sent.at.len(),
                    &missing[..missing.len().min(5)]
                );
            }
        }
    }

    /// Every message a member missed was sent inside one of `windows` (or in flight when it
    /// opened, [`IN_FLIGHT`] before); returns how many deliveries were lost.
    pub fn assert_losses_within(&self, windows: &[(Instant, Instant)]) -> usize {
        let mut lost = 0;
        for member in &self.members {
            for sent in &self.sent {
                for seq in member.missing(sent) {
                    let at = sent.at[seq];
                    assert!(
                        windows
                            .iter()
                            .any(|(open, close)| at >= *open - IN_FLIGHT && at <= *close),
                        "member of {} on {} missed p{}'s {seq}, sent outside every fault \
                         window ({:?} after the first opened)",
                        member.group,
                        member.replica,
                        sent.id,
                        at.checked_duration_since(windows[0].0),
                    );
                    lost += 1;
                }
            }
        }
        lost
    }

    /// When the latest message that some member missed was sent.
    pub fn last_loss(&self) -> Option<Instant> {
        self.members
            .iter()
            .flat_map(|m| {
                self.sent
                    .iter()
                    .flat_map(move |s| m.missing(s).into_iter().map(|seq| s.at[seq]))
            })
            .max()
    }

    /// Messages sent in all.
    pub fn sent_total(&self) -> usize {
        self.sent.iter().map(|s| s.at.len()).sum()
    }
}
