//! The connect hook against a real HTTP server on loopback: what it is told, what its answers
//! do (accept with the user and groups, refuse with 403), and that every failure (timeout,
//! refused connection, 500, invalid JSON, an oversized body, too many calls in flight) refuses
//! with 503 and is counted, never accepted.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use channels_layer::Message;
use channels_server::Config;
use channels_server::consumer::{ClientMessage, Close, Consumer, Context};
use channels_server::routing::WsRouter;
use serde_json::{Value, json};
use support::{TestServer, metric, raw_handshake, spawn_with};

const SECRET: &str = "hook-shared-secret";

/// The requests the hook received (their JSON bodies and `Authorization` headers).
type Seen = Arc<Mutex<Vec<(Value, Option<String>)>>>;

/// A stand-in for the Django view: `/hook` accepts the cookie `sessionid=alice` and refuses
/// anyone else; the other paths misbehave in one way each.
async fn hook_server(seen: Seen) -> SocketAddr {
    let record = move |headers: HeaderMap, body: Value| {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        seen.lock().unwrap().push((body.clone(), auth));
        body
    };
    let app = axum::Router::new()
        .route(
            "/hook",
            post(
                move |headers: HeaderMap, Json(body): Json<Value>| async move {
                    let body = record(headers, body);
                    let cookie = body["headers"]["cookie"].as_str().unwrap_or_default();
                    if cookie.contains("sessionid=alice") {
                        Json(
                            json!({"user": "1", "name": "Alice", "groups": ["1", "team_*"],
                                "info": {"staff": true}}),
                        )
                        .into_response()
                    } else {
                        StatusCode::FORBIDDEN.into_response()
                    }
                },
            ),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Json(json!({"user": "late"}))
            }),
        )
        .route(
            "/error",
            post(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route("/unauthorized", post(|| async { StatusCode::UNAUTHORIZED }))
        .route("/not-json", post(|| async { "<html>login</html>" }))
        .route(
            "/no-user",
            post(|| async { Json(json!({"name": "nobody"})) }),
        )
        .route(
            "/huge",
            post(|| async { Json(json!({"user": "1", "name": "x".repeat(100 * 1024)})) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Replies with what the scope's identity says.
#[derive(Clone, Default)]
struct WhoAmI;

impl Consumer for WhoAmI {
    async fn connect(&mut self, cx: &mut Context) -> Result<(), Close> {
        let text = match cx.scope().identity() {
            Some(id) => format!(
                "{} {} {}",
                id.user(),
                id.name().unwrap_or("-"),
                serde_json::Value::Object(id.info().clone())
            ),
            None => "anonymous".to_owned(),
        };
        cx.send_text(text)
    }

    async fn receive(&mut self, _cx: &mut Context, _msg: ClientMessage) -> Result<(), Close> {
        Ok(())
    }

    async fn event(&mut self, _cx: &mut Context, _event: Message) -> Result<(), Close> {
        Ok(())
    }
}

async fn server_with_hook(url: String, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config::default();
    config.connect_hook = Some(url);
    config.connect_hook_secret = Some(SECRET.parse().unwrap());
    config.replica_id = Some("replica-h".to_owned());
    tweak(&mut config);
    let routes = WsRouter::new()
        .route(r"who/(?P<room>\w+)/$", WhoAmI::default)
        .unwrap();
    spawn_with(config, routes).await
}

async fn refused_count(server: &TestServer, label: &str) -> f64 {
    metric(
        server.addr,
        &format!("channels_handshakes_refused_total{{reason=\"{label}\"}}"),
    )
    .await
}

#[tokio::test]
async fn the_hook_is_told_the_handshake_and_its_answer_is_the_identity() {
    let seen = Seen::default();
    let hook = hook_server(Arc::clone(&seen)).await;
    let server = server_with_hook(format!("http://{hook}/hook"), |_| {}).await;
    let (status, stream) = raw_handshake(
        server.addr,
        "/who/lobby/?x=1",
        "localhost",
        b"Cookie: sessionid=alice; csrftoken=c\r\nOrigin: http://localhost\r\n\
          User-Agent: test-agent\r\nX-Secret-Header: never-forwarded\r\n",
    )
    .await;
    assert_eq!(status, 101);
    let mut client = support::Client(
        tokio_tungstenite::WebSocketStream::from_raw_socket(
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await,
    );
    assert_eq!(client.recv_text().await, r#"1 Alice {"staff":true}"#);
    let (request, auth) = seen.lock().unwrap()[0].clone();
    assert_eq!(auth.as_deref(), Some("Bearer hook-shared-secret"));
    assert_eq!(request["path"], "/who/lobby/");
    assert_eq!(request["query_string"], "x=1");
    assert_eq!(request["route_kwargs"], json!({"room": "lobby"}));
    assert_eq!(request["replica"], "replica-h");
    assert_eq!(
        request["headers"],
        json!({"cookie": "sessionid=alice; csrftoken=c", "origin": "http://localhost",
               "user-agent": "test-agent"})
    );
    assert!(
        request["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let channel = request["channel"].as_str().unwrap();
    assert!(
        channel.contains('!'),
        "a channel name Django can send to: {channel}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_anonymous_browser_is_refused_with_403() {
    let hook = hook_server(Seen::default()).await;
    let server = server_with_hook(format!("http://{hook}/hook"), |_| {}).await;
    let (status, _) = raw_handshake(server.addr, "/who/lobby/", "localhost", b"").await;
    assert_eq!(status, 403);
    let (status, _) = raw_handshake(
        server.addr,
        "/who/lobby/",
        "localhost",
        b"Cookie: sessionid=mallory\r\n",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(refused_count(&server, "hook_denied").await, 2.0);
    server.stop().await.unwrap();
    let server = server_with_hook(format!("http://{hook}/unauthorized"), |_| {}).await;
    let (status, _) = raw_handshake(server.addr, "/who/lobby/", "localhost", b"").await;
    assert_eq!(status, 403, "401 from the hook refuses too");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn every_hook_failure_refuses_with_503_and_is_counted() {
    let hook = hook_server(Seen::default()).await;
    let closed_port = test_support::free_port();
    let cases = [
        (format!("http://{hook}/slow"), "hook_timeout"),
        (
            format!("http://127.0.0.1:{closed_port}/hook"),
            "hook_unreachable",
        ),
        (format!("http://{hook}/error"), "hook_status"),
        (format!("http://{hook}/not-json"), "hook_bad_answer"),
        (format!("http://{hook}/no-user"), "hook_bad_answer"),
        (format!("http://{hook}/huge"), "hook_too_large"),
    ];
    for (url, label) in cases {
        let server = server_with_hook(url.clone(), |c| c.connect_hook_timeout_ms = 300).await;
        let (status, _) = raw_handshake(
            server.addr,
            "/who/lobby/",
            "localhost",
            b"Cookie: sessionid=alice\r\n",
        )
        .await;
        assert_eq!(status, 503, "{url}");
        assert_eq!(refused_count(&server, label).await, 1.0, "{url}: {label}");
        assert_eq!(
            metric(server.addr, "channels_connections_total").await,
            0.0,
            "{url}: nothing accepted"
        );
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_slow_hook_delays_only_the_handshakes_that_wait_for_it() {
    let hook = hook_server(Seen::default()).await;
    let secret = "a-test-secret-of-more-than-32-bytes-0123456789";
    let server = server_with_hook(format!("http://{hook}/slow"), |c| {
        c.connect_hook_timeout_ms = 3000;
        c.connect_hook_max_in_flight = 1;
        c.token_hs256_secret = Some(secret.parse().unwrap());
    })
    .await;
    // One tokenless handshake waits for the slow hook (3 s, then 503)...
    let addr = server.addr;
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let (status, _) = raw_handshake(addr, "/who/lobby/", "localhost", b"").await;
        (status, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...while a second one finds the only call slot taken: 503 at once.
    let started = Instant::now();
    let (status, _) = raw_handshake(addr, "/who/lobby/", "localhost", b"").await;
    assert_eq!(status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(refused_count(&server, "hook_busy").await, 1.0);
    // A handshake with a token never asks the hook: it is not held up.
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "t", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap();
    let started = Instant::now();
    let mut client = server.ws(&format!("/who/lobby/?token={token}")).await;
    assert_eq!(client.recv_text().await, "t - {}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let (status, waited) = waiting.await.unwrap();
    assert_eq!(status, 503);
    assert!(waited >= Duration::from_millis(2900), "{waited:?}");
    assert_eq!(refused_count(&server, "hook_timeout").await, 1.0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn hook_urls_that_cannot_work_are_refused_at_start() {
    for (url, needle) in [
        ("https://django.internal/hook", "https is not supported"),
        ("ftp://x/hook", "must start with http://"),
        ("not a url", "is not a URL"),
    ] {
        let mut config = Config::default();
        config.connect_hook = Some(url.to_owned());
        let error = config.authenticator().unwrap_err();
        assert!(error.contains(needle), "{url}: {error}");
    }
}
