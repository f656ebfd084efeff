//! State shared by every request of one server: the connections' [`Hub`], the WebSocket routes
//! and the admission rules of a handshake.

use std::sync::Arc;

use crate::caps::ConnectionCaps;
use crate::hosts::HostPolicy;
use crate::hub::Hub;
use crate::origin::OriginPolicy;
use crate::routing::WsRouter;

/// The server's shared state: cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct AppState(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    hub: Arc<Hub>,
    routes: WsRouter,
    admission: Admission,
}

/// Who may open a WebSocket: the Host and Origin rules and the connection caps.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) origins: OriginPolicy,
    pub(crate) hosts: HostPolicy,
    pub(crate) caps: Arc<ConnectionCaps>,
}

impl AppState {
    pub(crate) fn new(hub: Arc<Hub>, routes: WsRouter, admission: Admission) -> Self {
        Self(Arc::new(Shared {
            hub,
            routes,
            admission,
        }))
    }

    /// What the connections share.
    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.0.hub
    }

    pub(crate) fn routes(&self) -> &WsRouter {
        &self.0.routes
    }

    /// The Origin rules of WebSocket handshakes.
    pub(crate) fn origins(&self) -> &OriginPolicy {
        &self.0.admission.origins
    }

    /// The Host rules of WebSocket handshakes.
    pub(crate) fn hosts(&self) -> &HostPolicy {
        &self.0.admission.hosts
    }

    /// The WebSocket connection caps.
    pub(crate) fn caps(&self) -> &Arc<ConnectionCaps> {
        &self.0.admission.caps
    }
}
