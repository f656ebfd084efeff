//! One WebSocket connection after its upgrade: the [`driver`] loop that serves it, the
//! [`outbox`] of frames waiting for the client (and the slow-consumer rule), the client-side
//! rules in [`watch`] (pings) and the [`meter`] that rate-limits the client's frames on the wire.

pub(crate) mod direct;
pub(crate) mod driver;
pub(crate) mod meter;
mod outbox;
mod watch;

use futures_util::{Sink, Stream};
use tungstenite::Message as Frame;

/// A WebSocket as the driver uses it: tungstenite's messages in and out.
pub(crate) trait Socket:
    Stream<Item = Result<Frame, tungstenite::Error>>
    + Sink<Frame, Error = tungstenite::Error>
    + Unpin
    + Send
{
}

impl<S> Socket for S where
    S: Stream<Item = Result<Frame, tungstenite::Error>>
        + Sink<Frame, Error = tungstenite::Error>
        + Unpin
        + Send
{
}
