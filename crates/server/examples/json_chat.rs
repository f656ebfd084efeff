//! A JSON chat with typed events: the browser sends `{"type": "message", "text": "hi"}` on
//! `/chat/<room>/`, every member of the room gets `{"type": "message", "text": "hi"}`.
//! Layer events are deserialized into an enum tagged by `type`, as a Channels consumer
//! dispatches on handler names.

use channels_layer::{GroupName, Message};
use channels_server::consumer::{ClientMessage, Close, Consumer, Context};
use channels_server::{App, routing::WsRouter};
use serde::{Deserialize, Serialize};

/// What a browser sends and receives.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Frame {
    Message { text: String },
}

/// What travels through the channel layer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
enum Event {
    #[serde(rename = "chat.message")]
    ChatMessage { text: String },
}

#[derive(Debug, Default)]
struct JsonChat {
    room: Option<GroupName>,
}

impl Consumer for JsonChat {
    async fn connect(&mut self, cx: &mut Context) -> Result<(), Close> {
        let room = cx.scope().url_route().kwarg("room").unwrap_or_default();
        let room = GroupName::new(&format!("chat_{room}")).map_err(|_| Close::POLICY)?;
        cx.group_add(&room).await.map_err(|e| Close::from(&e))?;
        self.room = Some(room);
        Ok(())
    }

    async fn receive(&mut self, cx: &mut Context, msg: ClientMessage) -> Result<(), Close> {
        let ClientMessage::Text(text) = msg else {
            return Err(Close::UNSUPPORTED);
        };
        let Ok(Frame::Message { text }) = serde_json::from_str(&text) else {
            return Err(Close::INVALID_DATA);
        };
        let event =
            Message::from_serialize(&Event::ChatMessage { text }).map_err(|_| Close::INTERNAL)?;
        let room = self.room.as_ref().ok_or(Close::INTERNAL)?;
        cx.group_send(room, event)
            .await
            .map_err(|e| Close::from(&e))
    }

    async fn event(&mut self, cx: &mut Context, event: Message) -> Result<(), Close> {
        let Ok(Event::ChatMessage { text }) = event.deserialize() else {
            cx.ignore_event(&event, "no_handler");
            return Ok(());
        };
        let frame = serde_json::to_string(&Frame::Message { text }).map_err(|_| Close::INTERNAL)?;
        cx.send_text(frame)
    }
}

fn main() -> std::process::ExitCode {
    let routes = WsRouter::new().route(r"chat/(?P<room>\w+)/$", JsonChat::default);
    channels_server::cli::run(App::new(routes.expect("a valid pattern")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use channels_server::testing::{Communicator, Output};

    #[tokio::test]
    async fn members_of_a_room_get_typed_messages_and_bad_json_closes_with_1007() {
        let lobby = || Communicator::builder("/chat/lobby/").route(r"chat/(?P<room>\w+)/$");
        let mut a = lobby().unwrap().connect(JsonChat::default()).await.unwrap();
        let layer = a.layer().clone();
        let mut b = lobby()
            .unwrap()
            .layer(layer)
            .connect(JsonChat::default())
            .await
            .unwrap();
        a.send_text(r#"{"type": "message", "text": "hi"}"#).await;
        let expected = Output::Text(r#"{"type":"message","text":"hi"}"#.into());
        assert_eq!(a.receive().await.unwrap(), expected);
        assert_eq!(b.receive().await.unwrap(), expected);
        b.send_text("not json").await;
        assert!(matches!(
            b.receive().await.unwrap(),
            Output::Closed { code: 1007, .. }
        ));
    }
}
