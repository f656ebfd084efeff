//! The receiving end of a channel ([`Inbox`]) and its bounded queue.
//!
//! The registry owns the queues of this process's channels; an inbox reads one of them and, when
//! dropped, tells its owner to forget the channel and its memberships.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::message::Message;
use crate::name::ChannelName;
use crate::sync::lock;

/// What an inbox reports to the registry that made it.
pub(crate) trait Owner: Send + Sync + fmt::Debug {
    /// `n` messages expired unread in an inbox's queue.
    fn expired(&self, n: u64);

    /// The inbox of `name` reading `queue` was dropped: forget the channel and its groups.
    fn release(&self, name: &ChannelName, queue: &Arc<Queue>);
}

/// What pushing a message onto a queue did.
pub(crate) enum Push {
    Queued,
    Full,
    Closed,
}

/// A way around a channel's queue, set by its reader ([`Inbox::set_bypass`]): while the reader
/// waits with nothing queued and nothing of its own in flight (it *armed* the bypass), a sender
/// hands a message straight to it on the sender's own thread, instead of queueing it and waking
/// the reader's task. A server uses it to write a group message to the sockets of idle members
/// from the task that decoded it.
///
/// Called with the queue's lock held, so the calls for one channel never overlap and a message
/// queued meanwhile cannot overtake one taken here; it must not block.
pub trait Bypass: Send + Sync + fmt::Debug {
    /// Handles `msg` now if it can, or declines (the message is then queued as usual, and the
    /// bypass stays off until the reader arms it again, so later messages cannot overtake it).
    fn take(&self, msg: &Message) -> Taken;
}

/// What a [`Bypass`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Handled in full.
    Done,
    /// Handled, but the reader has to finish the job (a write the socket took only in part):
    /// its waiting [`Inbox::recv_or_bypass`] returns [`Received::Woken`], and the bypass stays
    /// off until it is armed again.
    NeedsReader,
    /// Not handled: queue it.
    Declined,
}

/// What [`Inbox::recv_or_bypass`] returns.
#[derive(Debug)]
pub enum Received {
    /// The next queued message.
    Message(Message),
    /// The layer was flushed or closed: no more messages.
    Ended,
    /// The bypass took a message and needs the reader ([`Taken::NeedsReader`]).
    Woken,
}

/// A bounded FIFO of messages with deadlines, read by one inbox.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    notify: Notify,
    capacity: usize,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<(Instant, Message)>,
    closed: bool,
    /// A message for this queue was dropped (full, or expired unread) since the reader last
    /// asked.
    lost: bool,
    bypass: Option<Arc<dyn Bypass>>,
    /// The reader waits with nothing in flight: the bypass may take messages.
    armed: bool,
    /// The bypass took a message that needs the reader.
    woken: bool,
}

impl QueueState {
    /// Drops expired messages from the front and returns how many. Deadlines are `send time +
    /// expiry` with one expiry per layer, so they are in order and the expired ones are at the
    /// front.
    fn purge(&mut self, now: Instant) -> u64 {
        let mut n = 0;
        while self
            .items
            .front()
            .is_some_and(|(deadline, _)| *deadline <= now)
        {
            self.items.pop_front();
            n += 1;
        }
        n
    }
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            notify: Notify::new(),
            capacity,
        }
    }

    /// Queues `msg` unless the queue is closed or full; also says how many messages expired.
    pub(crate) fn push(&self, msg: Message, deadline: Instant) -> (Push, u64) {
        let mut state = lock(&self.state);
        if state.closed {
            return (Push::Closed, 0);
        }
        if state.armed {
            // Armed only while nothing is queued: nothing can be overtaken.
            let taken = state
                .bypass
                .as_ref()
                .map_or(Taken::Declined, |bypass| bypass.take(&msg));
            match taken {
                Taken::Done => return (Push::Queued, 0),
                Taken::NeedsReader => {
                    state.armed = false;
                    state.woken = true;
                    drop(state);
                    self.notify.notify_one();
                    return (Push::Queued, 0);
                }
                Taken::Declined => state.armed = false,
            }
        }
        // Nothing to purge in an empty queue (and no clock to read).
        let expired = if state.items.is_empty() {
            0
        } else {
            state.purge(Instant::now())
        };
        state.lost |= expired > 0;
        if state.items.len() >= self.capacity {
            state.lost = true;
            return (Push::Full, expired);
        }
        state.items.push_back((deadline, msg));
        drop(state);
        // One reader: a stored permit wakes it even if it is not waiting yet.
        self.notify.notify_one();
        (Push::Queued, expired)
    }

    /// The next message (`Some(None)`: the queue ended), and how many messages expired. With
    /// nothing queued, arms the bypass if `arm`; any call disarms it otherwise. `woken` is set
    /// (and the mark cleared) if the bypass needs the reader.
    fn try_pop(&self, arm: bool, woken: &mut bool) -> (Option<Option<Message>>, u64) {
        let mut state = lock(&self.state);
        let expired = if state.items.is_empty() {
            0
        } else {
            state.purge(Instant::now())
        };
        state.lost |= expired > 0;
        if let Some((_, msg)) = state.items.pop_front() {
            state.armed = false;
            return (Some(Some(msg)), expired);
        }
        *woken = std::mem::take(&mut state.woken);
        state.armed = arm && !*woken && !state.closed && state.bypass.is_some();
        (state.closed.then_some(None), expired)
    }

    /// Ends the queue: queued messages are dropped (flush forgets everything, as in Channels).
    pub(crate) fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.armed = false;
        state.items.clear();
        drop(state);
        self.notify.notify_one();
    }
}

/// The receiving end of a channel: the only reader of its queue.
///
/// Dropping the inbox removes the channel from this process and from every group it joined, so
/// a consumer that ends never leaves membership behind (Channels has no `delete_channel()` and
/// cleans up by cancelling `receive`).
///
/// ```
/// # tokio_test_block_on(async {
/// use channels_layer::{ChannelLayer, InMemoryChannelLayer, Message};
/// let layer = InMemoryChannelLayer::default();
/// let mut inbox = layer.new_channel().await?;
/// layer.send(inbox.name(), Message::new("hello")).await?;
/// assert_eq!(inbox.recv().await.unwrap().message_type(), Some("hello"));
/// # Ok::<(), channels_layer::LayerError>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct Inbox {
    name: ChannelName,
    queue: Arc<Queue>,
    owner: Arc<dyn Owner>,
}

impl Inbox {
    pub(crate) fn new(name: ChannelName, queue: Arc<Queue>, owner: Arc<dyn Owner>) -> Self {
        Self { name, queue, owner }
    }

    /// Takes the next message off the queue, reporting expired ones to the owner.
    fn pop(&self) -> Option<Option<Message>> {
        self.pop_arming(false, &mut false)
    }

    fn pop_arming(&self, arm: bool, woken: &mut bool) -> Option<Option<Message>> {
        let (item, expired) = self.queue.try_pop(arm, woken);
        if expired > 0 {
            self.owner.expired(expired);
        }
        item
    }

    /// The channel's name, to give to `send` or `group_add`.
    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    /// The next message, or `None` once the layer was flushed or closed. Expired messages are
    /// skipped and counted.
    ///
    /// Cancel safe: dropping the future loses no message.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(item) = self.pop() {
                return item;
            }
            self.queue.notify.notified().await;
        }
    }

    /// The next message if one is queued now.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.pop().flatten()
    }

    /// Sets the channel's [`Bypass`]; it is used only while armed by
    /// [`recv_or_bypass`](Self::recv_or_bypass).
    pub fn set_bypass(&mut self, bypass: Arc<dyn Bypass>) {
        lock(&self.queue.state).bypass = Some(bypass);
    }

    /// As [`recv`](Self::recv), and while it waits with nothing queued the bypass may take
    /// messages if `arm` (the caller has nothing of its own in flight that a message taken
    /// there could overtake). Any other call on the inbox, and [`disarm`](Self::disarm),
    /// turn the bypass off again. Returns [`Received::Woken`] when the bypass needs the
    /// reader ([`Taken::NeedsReader`]).
    ///
    /// Cancel safe: dropping the future loses no message (the bypass may stay armed: call
    /// [`disarm`](Self::disarm) before doing anything a bypassed message must not overtake).
    pub async fn recv_or_bypass(&mut self, arm: bool) -> Received {
        loop {
            let mut woken = false;
            match self.pop_arming(arm, &mut woken) {
                Some(Some(msg)) => return Received::Message(msg),
                Some(None) => return Received::Ended,
                None if woken => return Received::Woken,
                None => {}
            }
            self.queue.notify.notified().await;
        }
    }

    /// Turns the bypass off until the next [`recv_or_bypass`](Self::recv_or_bypass) arms it.
    pub fn disarm(&mut self) {
        lock(&self.queue.state).armed = false;
    }

    /// Whether a message for this channel was dropped (its queue was full, or it expired
    /// unread) since the last call; clears the mark. A reader that follows history positions
    /// uses it to notice a loss at the end of a burst, where no later message shows the gap.
    pub fn take_lost(&mut self) -> bool {
        std::mem::take(&mut lock(&self.queue.state).lost)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // The bypass may hold the reader's resources (a socket): not past the reader.
        {
            let mut state = lock(&self.queue.state);
            state.bypass = None;
            state.armed = false;
        }
        self.owner.release(&self.name, &self.queue);
    }
}
