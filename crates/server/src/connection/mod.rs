//! One WebSocket connection after its upgrade: the [`driver`] loop that serves it, the
//! [`outbox`] of frames waiting for the client (and the slow-consumer rule), the client-side
//! rules in [`watch`] (pings) and the [`meter`] that rate-limits the client's frames on the wire.

pub(crate) mod driver;
pub(crate) mod meter;
mod outbox;
mod watch;
