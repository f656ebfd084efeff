//! State shared by every request and connection of one server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use channels_layer::ChannelLayer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::caps::ConnectionCaps;
use crate::hosts::HostPolicy;
use crate::metrics::Metrics;
use crate::origin::OriginPolicy;
use crate::routing::WsRouter;

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
    /// Bytes waiting for a client above which it is closed as slow (4008).
    pub(crate) max_queued_bytes: usize,
    /// Frames per second a client may send (burst: twice this); 0: no limit.
    pub(crate) max_messages_per_second: u32,
    /// Silence from the client after which the server pings it; `None`: no pings.
    pub(crate) ping_interval: Option<Duration>,
    /// Time the client has to answer a ping.
    pub(crate) pong_timeout: Duration,
}

/// The server's shared state: cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct AppState(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    layer: Arc<dyn ChannelLayer>,
    routes: WsRouter,
    limits: Limits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    conn_ids: AtomicU64,
    drain_tickets: AtomicU64,
    metrics: Metrics,
    replica: String,
    origins: OriginPolicy,
    hosts: HostPolicy,
    caps: Arc<ConnectionCaps>,
}

/// Who may open a WebSocket: the Origin rules and the connection caps.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) origins: OriginPolicy,
    pub(crate) hosts: HostPolicy,
    pub(crate) caps: ConnectionCaps,
}

impl AppState {
    pub(crate) fn new(
        layer: Arc<dyn ChannelLayer>,
        routes: WsRouter,
        limits: Limits,
        replica: String,
        admission: Admission,
    ) -> Self {
        Self(Arc::new(Shared {
            layer,
            routes,
            limits,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            conn_ids: AtomicU64::new(1),
            drain_tickets: AtomicU64::new(0),
            metrics: Metrics::default(),
            replica,
            origins: admission.origins,
            hosts: admission.hosts,
            caps: Arc::new(admission.caps),
        }))
    }

    pub(crate) fn layer(&self) -> &Arc<dyn ChannelLayer> {
        &self.0.layer
    }

    pub(crate) fn routes(&self) -> &WsRouter {
        &self.0.routes
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.0.limits
    }

    /// Cancelled when the server starts shutting down.
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.0.shutdown
    }

    /// Every WebSocket connection holds a token of this tracker until it ends.
    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.0.tracker
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The Origin rules of WebSocket handshakes.
    pub(crate) fn origins(&self) -> &OriginPolicy {
        &self.0.origins
    }

    /// The Host rules of WebSocket handshakes.
    pub(crate) fn hosts(&self) -> &HostPolicy {
        &self.0.hosts
    }

    /// The connection caps.
    pub(crate) fn caps(&self) -> &Arc<ConnectionCaps> {
        &self.0.caps
    }

    /// This replica's id, sent as `X-Channels-Replica`.
    pub(crate) fn replica(&self) -> &str {
        &self.0.replica
    }

    /// How long a connection waits after the shutdown began before it is closed: connections
    /// close in batches so their clients do not all reconnect to the other replicas at once.
    pub(crate) fn drain_delay(&self) -> Duration {
        let limits = &self.0.limits;
        let ticket = self.0.drain_tickets.fetch_add(1, Ordering::Relaxed);
        let batches = u32::try_from(ticket / limits.drain_batch.max(1)).unwrap_or(u32::MAX);
        limits
            .drain_interval
            .saturating_mul(batches)
            .min(limits.drain_spread)
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.0.conn_ids.fetch_add(1, Ordering::Relaxed)
    }
}
