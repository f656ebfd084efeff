//! What every connection of one server shares: the channel layer, the limits, the metrics and
//! the shutdown signal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use channels_layer::ChannelLayer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::identity::Authenticator;
use crate::metrics::Metrics;
use crate::presence::Service;

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest message (and frame) a client may send; larger ones close with 1009.
    pub(crate) max_message_size: usize,
    /// Frames a handler may queue before the connection is closed as slow.
    pub(crate) max_outgoing_frames: usize,
    /// How long a write may wait for the client to read.
    pub(crate) write_timeout: Duration,
    /// How long to wait for the client's close frame.
    pub(crate) close_timeout: Duration,
    /// tungstenite's read buffer, allocated per connection up front.
    pub(crate) read_buffer_size: usize,
    /// Bytes of unsent frames a connection may hold before writes fail.
    pub(crate) max_write_buffer_size: usize,
    /// Connections closed per drain batch on shutdown.
    pub(crate) drain_batch: u64,
    /// Pause between drain batches.
    pub(crate) drain_interval: Duration,
    /// The last batch starts at most this long after the shutdown began.
    pub(crate) drain_spread: Duration,
    /// Bytes waiting for a client at which it takes nothing new (and, after the write timeout,
    /// is closed as slow: 4008); 0: no budget.
    pub(crate) max_queued_bytes: usize,
    /// `--direct-delivery`: write shared group messages to idle sockets from the receiving task.
    pub(crate) direct_delivery: bool,
    /// Frames per second a client may send (burst: twice this); 0: no limit.
    pub(crate) max_messages_per_second: u32,
    /// Silence from the client after which the server pings it; `None`: no pings.
    pub(crate) ping_interval: Option<Duration>,
    /// Time the client has to answer a ping.
    pub(crate) pong_timeout: Duration,
}

/// The connections' shared environment. Cheap to share (`Arc`).
#[derive(Debug)]
pub(crate) struct Hub {
    layer: Arc<dyn ChannelLayer>,
    limits: Limits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    conn_ids: AtomicU64,
    drain_tickets: AtomicU64,
    metrics: Arc<Metrics>,
    replica: String,
    /// Tokens and the connect hook; `None`: every connection is anonymous.
    auth: Option<Authenticator>,
    /// Presence and the control channel (`--presence`, `--api-bind`).
    service: Option<Arc<Service>>,
}

impl Hub {
    pub(crate) fn new(
        layer: Arc<dyn ChannelLayer>,
        limits: Limits,
        replica: String,
        auth: Option<Authenticator>,
        service: Option<Arc<Service>>,
    ) -> Self {
        Self {
            service,
            layer,
            limits,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            conn_ids: AtomicU64::new(1),
            drain_tickets: AtomicU64::new(0),
            metrics: Arc::new(Metrics::default()),
            replica,
            auth: auth.filter(Authenticator::is_enabled),
        }
    }

    /// Presence and the control channel, when on.
    pub(crate) fn service(&self) -> Option<&Arc<Service>> {
        self.service.as_ref()
    }

    pub(crate) fn layer(&self) -> &Arc<dyn ChannelLayer> {
        &self.layer
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Cancelled when the server starts shutting down.
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Every WebSocket connection holds a token of this tracker until it ends.
    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Tokens and the connect hook, when configured.
    pub(crate) fn auth(&self) -> Option<&Authenticator> {
        self.auth.as_ref()
    }

    /// This replica's id, sent as `X-Channels-Replica`.
    pub(crate) fn replica(&self) -> &str {
        &self.replica
    }

    /// How long a connection waits after the shutdown began before it is closed: connections
    /// close in batches so their clients do not all reconnect to the other replicas at once.
    pub(crate) fn drain_delay(&self) -> Duration {
        let limits = &self.limits;
        let ticket = self.drain_tickets.fetch_add(1, Ordering::Relaxed);
        let batches = u32::try_from(ticket / limits.drain_batch.max(1)).unwrap_or(u32::MAX);
        limits
            .drain_interval
            .saturating_mul(batches)
            .min(limits.drain_spread)
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }
}
