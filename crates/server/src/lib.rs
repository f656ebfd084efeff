//! A Django Channels style WebSocket server: consumers, URL routing and groups over a channel
//! layer. The framework is this crate; the seed tutorial's two chats are one app on it
//! ([`tutorial`]), plugged in by the `channels-server` binary exactly as your app would be.
//!
//! # Write your own consumer
//!
//! ```no_run
//! use channels_layer::Message;
//! use channels_server::consumer::{ClientMessage, Close, Consumer, Context};
//! use channels_server::{App, routing::WsRouter};
//!
//! /// Echoes every text frame.
//! #[derive(Default)]
//! struct Echo;
//!
//! impl Consumer for Echo {
//!     async fn receive(&mut self, cx: &mut Context, msg: ClientMessage) -> Result<(), Close> {
//!         match msg {
//!             ClientMessage::Text(text) => cx.send_text(text),
//!             ClientMessage::Bytes(_) => Err(Close::UNSUPPORTED),
//!         }
//!     }
//!
//!     async fn event(&mut self, cx: &mut Context, event: Message) -> Result<(), Close> {
//!         cx.ignore_event(&event, "no_handler");
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let routes = WsRouter::new().route("ws/echo/$", Echo::default).expect("a valid pattern");
//!     channels_server::cli::run(App::new(routes))
//! }
//! ```
//!
//! # Layout
//!
//! The framework:
//!
//! * [`consumer`]: the [`Consumer`](consumer::Consumer) trait (Channels' `WebsocketConsumer`),
//!   its [`Context`](consumer::Context) and the close codes.
//! * [`routing`]: `re_path`-style WebSocket URL patterns to consumers.
//! * [`App`]: your routes; [`cli::run`] serves it with every flag of `channels-server`.
//! * [`Server`], [`ServerBuilder`], [`ServerConfig`]: the server without the command line.
//! * [`Config`]: flags and environment variables.
//! * [`identity`]: who connects and which groups they may join, decided by your Django app
//!   (signed connection tokens, a connect hook).
//! * [`testing`]: a [`Communicator`](testing::Communicator) that drives one consumer with no
//!   socket, as Channels' `WebsocketCommunicator`.
//!
//! Inside: the WebSocket handshake (`upgrade`, `handshake`), the connection's driver loop
//! (`connection`), the connections' shared state (`hub`), admission (`hosts`, `origin`,
//! `caps`), `metrics` and the `shutdown` signal.
//!
//! The tutorial app: [`tutorial`] (the seed's `ChatConsumer` and `GroupChatConsumer`, their
//! routes, and the pages of `channels-web`).

pub mod api;
mod app;
mod caps;
pub mod cli;
mod config;
mod connection;
pub mod consumer;
mod handshake;
mod hosts;
mod hub;
pub mod identity;
mod metrics;
mod origin;
pub mod presence;
pub mod routing;
mod server;
mod server_config;
mod shutdown;
mod state;
pub mod testing;
pub mod tutorial;
mod upgrade;

pub use app::{App, serve};
pub use config::{Config, LayerKind, LogFormat, Secret};
pub use server::{Server, ServerBuilder, ServerError};
pub use server_config::{ServerConfig, random_replica_id};
pub use shutdown::signal;
