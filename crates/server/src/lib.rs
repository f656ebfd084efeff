//! A Django Channels style WebSocket server: consumers, URL routing and groups over a channel
//! layer, with the seed tutorial's two chats.
//!
//! # Layout
//!
//! * [`consumer`]: the [`Consumer`](consumer::Consumer) trait (Channels' `WebsocketConsumer`),
//!   its [`Context`](consumer::Context), close codes, and the per-connection driver loop.
//! * [`routing`]: `re_path`-style WebSocket URL patterns to consumers.
//! * [`chat`]: the seed's `ChatConsumer` and `GroupChatConsumer` and their routes.
//! * [`Config`]: flags and environment variables.
//! * [`Server`] and [`run`]: the HTTP app, the WebSocket handshake, graceful shutdown.
//!
//! The binary `channels-server` only parses the configuration, sets up logging, binds, and
//! calls [`run`]; tests call the same function on `127.0.0.1:0`.

mod caps;
pub mod chat;
pub mod cli;
mod config;
pub mod consumer;
mod hosts;
mod metrics;
mod origin;
pub mod routing;
mod server;
mod shutdown;
mod state;
mod upgrade;

pub use config::{Config, LayerKind, LogFormat};
pub use server::{Server, ServerError, run};
pub use shutdown::signal;
