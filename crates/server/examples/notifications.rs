//! Server push only: each browser opens `/notifications/<user>/` and gets whatever the backend
//! sends to the group `user_<user>` (from Django: `group_send("user_42", {"type":
//! "websocket.send", "text": "..."})`). What the browser sends is ignored.
//!
//! Run: `cargo run --example notifications -- --layer redis-pubsub --redis-url redis://127.0.0.1`

use channels_layer::{GroupName, Message, Value};
use channels_server::consumer::{ClientMessage, Close, Consumer, Context};
use channels_server::{App, routing::WsRouter};

/// One user's notification stream.
#[derive(Debug, Default)]
struct Notifications;

impl Consumer for Notifications {
    async fn connect(&mut self, cx: &mut Context) -> Result<(), Close> {
        let user = cx.scope().url_route().kwarg("user").unwrap_or_default();
        let group = GroupName::new(&format!("user_{user}")).map_err(|_| Close::POLICY)?;
        cx.group_add(&group).await.map_err(|e| Close::from(&e))
    }

    async fn receive(&mut self, _cx: &mut Context, _msg: ClientMessage) -> Result<(), Close> {
        Ok(())
    }

    async fn event(&mut self, cx: &mut Context, event: Message) -> Result<(), Close> {
        match (event.message_type(), event.get("text"), event.get("bytes")) {
            (Some("websocket.send"), Some(Value::Str(text)), _) => cx.send_text(text.as_str()),
            (Some("websocket.send"), _, Some(Value::Bytes(bytes))) => cx.send_bytes(bytes.clone()),
            _ => {
                cx.ignore_event(&event, "no_handler");
                Ok(())
            }
        }
    }
}

fn routes() -> WsRouter {
    WsRouter::new()
        .route(r"notifications/(?P<user>\w+)/$", Notifications::default)
        .expect("a valid pattern")
}

fn main() -> std::process::ExitCode {
    channels_server::cli::run(App::new(routes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use channels_server::testing::{Communicator, Output};

    #[tokio::test]
    async fn pushes_what_the_backend_sends_to_the_user_and_ignores_the_browser() {
        let mut alice = Communicator::builder("/notifications/42/")
            .route(r"notifications/(?P<user>\w+)/$")
            .unwrap()
            .connect(Notifications)
            .await
            .unwrap();
        let layer = alice.layer().clone();
        let push = Message::new("websocket.send").with("text", "you have mail");
        layer
            .group_send(&GroupName::new("user_42").unwrap(), push)
            .await
            .unwrap();
        assert_eq!(
            alice.receive().await.unwrap(),
            Output::Text("you have mail".into())
        );
        alice.send_text("ignored").await;
        assert!(
            alice
                .receive_nothing(std::time::Duration::from_millis(100))
                .await
        );
        assert!(routes().resolves("/notifications/42/"));
    }
}
