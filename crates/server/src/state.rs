//! State shared by every request and connection of one server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use channels_layer::ChannelLayer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
}

impl AppState {
    pub(crate) fn new(layer: Arc<dyn ChannelLayer>, routes: WsRouter, limits: Limits) -> Self {
        Self(Arc::new(Shared {
            layer,
            routes,
            limits,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            conn_ids: AtomicU64::new(1),
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

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.0.conn_ids.fetch_add(1, Ordering::Relaxed)
    }
}
