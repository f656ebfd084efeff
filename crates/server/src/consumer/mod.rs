//! Consumers: the Rust form of Channels' `WebsocketConsumer`.
//!
//! A [`Consumer`] handles one WebSocket connection. The runtime calls [`Consumer::connect`] when
//! the handshake arrives, [`Consumer::receive`] for each frame from the client,
//! [`Consumer::event`] for each message from the channel layer (group sends and direct sends to
//! the connection's channel), and [`Consumer::disconnect`] when the connection ends, however it
//! ends. The runtime owns the socket and the connection's inbox; a consumer talks to both
//! through its [`Context`].
//!
//! Layer messages are dispatched as Channels does it: [`Message::handler_name`] turns the `type`
//! into a handler name (`chat.message` → `chat_message`, a leading underscore is rejected), and
//! the consumer matches on it. Typed consumers can use [`Message::deserialize`] into a
//! `#[serde(tag = "type")]` enum instead.
//!
//! [`Message::handler_name`]: channels_layer::Message::handler_name
//! [`Message::deserialize`]: channels_layer::Message::deserialize

mod close;
mod context;
mod headers;
pub mod recovery;

use std::future::Future;

use channels_layer::Message;

pub use close::Close;
pub(crate) use context::Outgoing;
pub use context::{ClientMessage, Context, GroupError, Scope, UrlRoute};
pub(crate) use headers::CompactHeaders;

/// What [`Consumer::SHARED_TEXT`] holds: the text for a layer message, or `None` for a message
/// the consumer must see in [`Consumer::event`].
pub type SharedText = fn(&Message) -> Option<String>;

/// One WebSocket connection's behaviour, as Channels' `WebsocketConsumer`.
///
/// Every handler returns `Result<(), Close>`: an error closes the connection with that code.
/// Internal failures should be logged where they happen and returned as [`Close::INTERNAL`];
/// the client never sees their text.
///
/// ```
/// use channels_server::consumer::{ClientMessage, Close, Consumer, Context};
/// use channels_layer::Message;
///
/// /// Echoes every text frame.
/// struct Echo;
///
/// impl Consumer for Echo {
///     async fn receive(&mut self, cx: &mut Context, msg: ClientMessage) -> Result<(), Close> {
///         match msg {
///             ClientMessage::Text(text) => cx.send_text(text),
///             ClientMessage::Bytes(bytes) => cx.send_bytes(bytes),
///         }
///     }
///
///     async fn event(&mut self, _cx: &mut Context, _event: Message) -> Result<(), Close> {
///         Ok(())
///     }
/// }
/// ```
pub trait Consumer: Send + 'static {
    /// The text every connection of this consumer sends for a layer message, when it depends
    /// on the message alone and handling the message does nothing else (no state, no await): a
    /// broadcast such as the tutorial's `send_msg`. With it, the runtime renders a group
    /// message once per process and writes the frame straight to the sockets of the members
    /// that wait with nothing queued, from the task that received the message, without waking
    /// their tasks or calling [`event`](Self::event) (the fan-out's fast path,
    /// `--direct-delivery`). The function returns `None` for a message it does not cover,
    /// which then goes to `event` as usual; where it returns a text, `event` must send exactly
    /// that text and nothing else. Connections in recovery mode or with presence events, and
    /// the runtime's own messages, always go through `event`.
    ///
    /// `None` (the default): every message goes to `event`.
    const SHARED_TEXT: Option<SharedText> = None;

    /// The client asked to connect. `Ok` accepts (Channels' `self.accept()`); `Err` denies the
    /// handshake with HTTP 403, as a close before accept does in Channels. To accept and then
    /// close with a code, call [`Context::close`] and return `Ok`.
    fn connect(&mut self, cx: &mut Context) -> impl Future<Output = Result<(), Close>> + Send {
        let _ = cx;
        async { Ok(()) }
    }

    /// A frame arrived from the client (Channels' `websocket_receive`).
    fn receive(
        &mut self,
        cx: &mut Context,
        msg: ClientMessage,
    ) -> impl Future<Output = Result<(), Close>> + Send;

    /// A message arrived from the channel layer; dispatch on [`Message::handler_name`].
    fn event(
        &mut self,
        cx: &mut Context,
        event: Message,
    ) -> impl Future<Output = Result<(), Close>> + Send;

    /// The connection ended: `code` is the client's close code, or `None` if there was none
    /// (the TCP connection dropped, or the server closed). Called once, after the last handler
    /// and after the runtime left the connection's groups (Channels' order).
    fn disconnect(
        &mut self,
        cx: &mut Context,
        code: Option<u16>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (cx, code);
        async {}
    }
}
