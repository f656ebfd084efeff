//! The tutorial app: the seed's two consumers, their routes and its pages, with its exact
//! texts. The `channels-server` binary serves [`app`] with [`cli::run`](crate::cli::run), as
//! your binary would serve yours; nothing in the framework names anything here.
//!
//! * [`ChatConsumer`] (`app01`): echoes each text `X` as `服务端主动推送消息:X`; the text `exit`
//!   makes the server close the socket (code 1000).
//! * [`GroupChatConsumer`] (`app02`): joins the group named by the URL's `groupID`; each frame it
//!   receives goes to the whole group as `{"type": "send_msg", "message": <websocket.receive>}`,
//!   and every member answers that event with `组内主动推送消息:X`. A Django process running the
//!   seed's own `GroupChatConsumer` on the same Redis can sit in the same group.
//!
//! With identity on (connection tokens or a connect hook, [`crate::identity`]), the group
//! chat joins only a group the identity allows (another is refused with HTTP 403), and each
//! line reads `name: X`, with the sender's name that the framework put in the group message.
//!
//! Where the seed would crash, these consumers close with a documented code instead:
//! a group ID that is not a valid Channels group name (non-ASCII, 100+ characters) closes with
//! [`INVALID_GROUP`] (4400) right after accepting, and a binary frame to the echo chat
//! closes with [`Close::UNSUPPORTED`] (1003). When the channel layer is unavailable (Redis down),
//! joining the group or sending to it closes with [`Close::TRY_AGAIN_LATER`] (1013): nothing was
//! delivered, and the client should reconnect with backoff.

use channels_layer::{GroupName, Map, Message, Value};

use crate::app::App;
use crate::config::Config;
use crate::consumer::{ClientMessage, Close, Consumer, Context, GroupError, SharedText};
use crate::routing::WsRouter;

/// 4400: the group named in the URL is not a valid Channels group name (non-ASCII, 100+
/// characters). The tutorial's own code, in the application range 4000–4999.
pub const INVALID_GROUP: Close = Close::new(4400, "invalid group name");

/// The tutorial app: [`routes`] and the pages of `channels-web` (`/`, `/chatone`, `/chatgroup`
/// and their assets).
pub fn app() -> App {
    App::new(routes()).http_routes(channels_web::router())
}

/// [`app`] with the pages set up by `config`: with `--page-token-url`, they fetch a connection
/// token there before connecting and show who is signed in (identity on); with
/// `--history-size`, the group chat page shows the recent messages and recovers what it missed
/// after every reconnect.
pub fn app_for(config: &Config) -> App {
    let mut pages = channels_web::PageOptions::default();
    if let Some(url) = &config.page_token_url {
        pages = pages.with_token_url(url.clone());
    }
    // With history on, the group chat page shows the recent conversation and recovers.
    pages = pages.with_history(config.history_size);
    // With presence on, it shows who is online.
    pages = pages.with_presence(config.presence);
    App::new(routes()).http_routes(channels_web::router_with(pages))
}

/// The echo chat's reply prefix.
pub const ECHO_PREFIX: &str = "服务端主动推送消息:";
/// The group chat's reply prefix.
pub const GROUP_PREFIX: &str = "组内主动推送消息:";

/// The seed's `websocket_urlpatterns`: `room/` and `group/(?P<groupID>\w+)/$`.
pub fn routes() -> WsRouter {
    WsRouter::new()
        .route("room/", ChatConsumer::default)
        .and_then(|r| r.route(r"group/(?P<groupID>\w+)/$", GroupChatConsumer::default))
        .expect("the seed's route patterns are valid regexes")
}

/// The single-user echo chat (`app01.consumers.ChatConsumer`).
#[derive(Debug, Default)]
pub struct ChatConsumer;

impl Consumer for ChatConsumer {
    async fn receive(&mut self, cx: &mut Context, msg: ClientMessage) -> Result<(), Close> {
        match msg {
            ClientMessage::Text(text) if text == "exit" => {
                cx.close(Close::NORMAL);
                Ok(())
            }
            ClientMessage::Text(text) => cx.send_text(format!("{ECHO_PREFIX}{text}")),
            // The seed reads message["text"] and would fail on a binary frame.
            ClientMessage::Bytes(_) => Err(Close::UNSUPPORTED),
        }
    }

    async fn event(&mut self, cx: &mut Context, event: Message) -> Result<(), Close> {
        cx.ignore_event(&event, "no_handler");
        Ok(())
    }
}

/// The group chat (`app02.consumers.GroupChatConsumer`).
#[derive(Debug, Default)]
pub struct GroupChatConsumer {
    group: Option<GroupName>,
}

impl GroupChatConsumer {
    fn group(&self) -> Result<&GroupName, Close> {
        // connect() sets the group or closes, so handlers only run with one.
        self.group.as_ref().ok_or(Close::INTERNAL)
    }
}

impl Consumer for GroupChatConsumer {
    const SHARED_TEXT: Option<SharedText> = Some(shared_send_msg);

    async fn connect(&mut self, cx: &mut Context) -> Result<(), Close> {
        let raw = cx.scope().url_route().kwarg("groupID").unwrap_or_default();
        let group = match GroupName::new(raw) {
            Ok(group) => group,
            Err(error) => {
                // The seed accepts and then fails in group_add; we accept and close with a code.
                channels_layer::log_limited!(
                    info,
                    %error,
                    group_len = raw.chars().count(),
                    "invalid group id"
                );
                cx.close(INVALID_GROUP);
                return Ok(());
            }
        };
        match cx.group_add(&group).await {
            Ok(()) => {}
            // Identity on and this group not allowed: refuse the handshake (HTTP 403).
            Err(GroupError::Forbidden(_)) => return Err(Close::FORBIDDEN),
            Err(error) => {
                // Accept, then tell the client why: it should come back later.
                channels_layer::log_limited!(warn, %error, %group, "group_add failed");
                cx.close(Close::from(&error));
                return Ok(());
            }
        }
        self.group = Some(group);
        Ok(())
    }

    async fn receive(&mut self, cx: &mut Context, msg: ClientMessage) -> Result<(), Close> {
        // The ASGI `websocket.receive` event, as the seed forwards it.
        let receive = match msg {
            ClientMessage::Text(text) => Map::from_iter([
                ("type", Value::from("websocket.receive")),
                ("text", Value::Str(text)),
            ]),
            ClientMessage::Bytes(bytes) => Map::from_iter([
                ("type", Value::from("websocket.receive")),
                ("bytes", Value::Bytes(bytes)),
            ]),
        };
        let group = self.group()?;
        let event = Message::new("send_msg").with("message", receive);
        // The layer logs a failure where it happens; the client learns it from the close code.
        cx.group_send(group, event)
            .await
            .map_err(|error| Close::from(&error))
    }

    async fn event(&mut self, cx: &mut Context, event: Message) -> Result<(), Close> {
        match event.handler_name().as_deref() {
            Ok("send_msg") => send_msg(cx, &event),
            // Channels would raise "No handler for message type" and drop the connection; one bad
            // message from another process should not disconnect every member.
            Ok(_) => {
                cx.ignore_event(&event, "no_handler");
                Ok(())
            }
            Err(_) => {
                cx.ignore_event(&event, "malformed");
                Ok(())
            }
        }
    }
}

/// The seed's `send_msg`: `组内主动推送消息:{event["message"]["text"]}`. A binary message
/// (`bytes` instead of `text`) goes back as a binary frame, where the seed would print `None`.
fn send_msg(cx: &mut Context, event: &Message) -> Result<(), Close> {
    if let Some(text) = seed_text(event) {
        return cx.send_text(text);
    }
    let message = event.get("message").and_then(Value::as_map);
    match message
        .and_then(|m| m.get("bytes"))
        .and_then(Value::as_bytes)
    {
        Some(bytes) => cx.send_bytes(bytes),
        None => {
            cx.ignore_event(event, "no_text");
            Ok(())
        }
    }
}

/// What every member sends for a `send_msg` event with a text ([`Consumer::SHARED_TEXT`]):
/// [`GroupChatConsumer::event`] sends exactly this and nothing else for such an event.
fn shared_send_msg(event: &Message) -> Option<String> {
    match event.handler_name().as_deref() {
        Ok("send_msg") => seed_text(event),
        _ => None,
    }
}

/// The text a member gets for a `send_msg` event with a text, if it has one: with identity on,
/// every group message carries its sender's name (`name: text`), else the seed's prefix.
fn seed_text(event: &Message) -> Option<String> {
    let text = event
        .get("message")
        .and_then(Value::as_map)
        .and_then(|m| m.get("text"))
        .and_then(Value::as_str)?;
    Some(match event.get("name").and_then(Value::as_str) {
        Some(name) => format!("{name}: {text}"),
        None => format!("{GROUP_PREFIX}{text}"),
    })
}
