//! Identity decided by a real Django project (the seed project's `accounts/`: Django's login
//! view, a token view with PyJWT, the connect hook through Django's session and auth), with
//! Rust replicas on a real Redis, and a Django process in the same group reading the sender.
//!
//! A user logs in on Django's own login page (CSRF token, session cookie) over HTTP; the
//! WebSocket handshakes then go to the Rust replicas with that cookie (connect hook) or with a
//! token from the token view.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

#[path = "support/python.rs"]
mod python;
use test_support::redis_server;
#[path = "support/replica.rs"]
mod replica;

use std::time::Duration;

use python::{Daphne, PyReceiver, SeedAccounts, SeedLayer, USERS};
use redis_server::RedisServer;
use replica::{Client, Replica};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 request over a fresh connection: status, `Set-Cookie` name=value pairs, body.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    cookie: &str,
    form: Option<&str>,
) -> (u16, Vec<String>, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if !cookie.is_empty() {
        request.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    if let Some(form) = form {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("Django answered in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let cookies = head
        .lines()
        .filter_map(|l| l.strip_prefix("Set-Cookie: "))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .collect();
    (status, cookies, body.to_owned())
}

/// Logs `user` in on Django's login page; returns the session cookie (`sessionid=...`).
async fn log_in(django: u16, user: &str, password: &str) -> String {
    let (status, cookies, page) = http(django, "GET", "/accounts/login/", "", None).await;
    assert_eq!(status, 200, "{page}");
    let csrf_cookie = cookies
        .iter()
        .find(|c| c.starts_with("csrftoken="))
        .unwrap();
    let field = page
        .split("name=\"csrfmiddlewaretoken\" value=\"")
        .nth(1)
        .unwrap();
    let csrf = field.split('"').next().unwrap();
    let form = format!("csrfmiddlewaretoken={csrf}&username={user}&password={password}");
    let (status, cookies, body) =
        http(django, "POST", "/accounts/login/", csrf_cookie, Some(&form)).await;
    assert_eq!(status, 302, "login of {user} failed: {body}");
    cookies
        .into_iter()
        .find(|c| c.starts_with("sessionid="))
        .expect("a session cookie")
}

/// A handshake to `url` with `Cookie: cookie`: the client, or the HTTP status it was refused with.
async fn connect_with_cookie(url: &str, cookie: &str) -> Result<Client, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    if !cookie.is_empty() {
        request
            .headers_mut()
            .insert("cookie", cookie.parse().unwrap());
    }
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .expect("handshake answered in time")
    {
        Ok((socket, _)) => Ok(Client(socket)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("handshake to {url} failed: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_sessions_decide_through_the_connect_hook() {
    let redis = RedisServer::start();
    let accounts = SeedAccounts::create().await;
    let django = Daphne::start_with(&SeedLayer::pubsub(&redis.url()), Some(&accounts)).await;
    let hook = format!("http://127.0.0.1:{}/ws/connect/", django.port);
    let url = redis.url();
    let args = ["--redis-url", url.as_str(), "--connect-hook", hook.as_str()];
    let envs = [(
        "CHANNELS_CONNECT_HOOK_SECRET",
        accounts.hook_secret.as_str(),
    )];
    let (r0, r1) = tokio::join!(
        Replica::start("r0", &args, &envs),
        Replica::start("r1", &args, &envs),
    );
    let alice = log_in(django.port, USERS[0].0, USERS[0].1).await;
    let bob = log_in(django.port, USERS[1].0, USERS[1].1).await;
    let mut a = connect_with_cookie(&r0.ws_url("/group/1/"), &alice)
        .await
        .unwrap();
    let mut b = connect_with_cookie(&r1.ws_url("/group/1/"), &bob)
        .await
        .unwrap();
    a.send_text("hello from alice").await;
    assert_eq!(b.recv_text().await, "alice: hello from alice");
    b.send_text("hi alice").await;
    assert_eq!(a.recv_text().await, "alice: hello from alice");
    assert_eq!(a.recv_text().await, "bob: hi alice");
    // Group 3 is not among a normal user's groups (1 and 2): 403 before the upgrade.
    assert_eq!(
        connect_with_cookie(&r0.ws_url("/group/3/"), &alice)
            .await
            .err(),
        Some(403)
    );
    // No session, or a forged one: Django says no, the replica refuses with 403.
    assert_eq!(
        connect_with_cookie(&r0.ws_url("/group/1/"), "").await.err(),
        Some(403)
    );
    assert_eq!(
        connect_with_cookie(&r0.ws_url("/group/1/"), "sessionid=forged")
            .await
            .err(),
        Some(403)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_tokens_open_sockets_and_django_members_read_the_sender() {
    let redis = RedisServer::start();
    let accounts = SeedAccounts::create().await;
    let seed = SeedLayer::pubsub(&redis.url());
    let django = Daphne::start_with(&seed, Some(&accounts)).await;
    let url = redis.url();
    let args = ["--redis-url", url.as_str()];
    let envs = [(
        "CHANNELS_TOKEN_HS256_SECRET",
        accounts.token_secret.as_str(),
    )];
    let replica = Replica::start("r0", &args, &envs).await;
    let alice = log_in(django.port, USERS[0].0, USERS[0].1).await;
    let (status, _, body) = http(django.port, "GET", "/ws/token/", &alice, None).await;
    assert_eq!(status, 200, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = token["token"].as_str().unwrap();
    // Anonymous: the token view refuses.
    let (status, _, _) = http(django.port, "GET", "/ws/token/", "", None).await;
    assert_eq!(status, 403);
    // A Django process in group 1 (the seed's layer settings), and Alice on the Rust replica.
    let receiver = PyReceiver::start(&seed, &["receive", "--group", "1", "--timeout", "5"]).await;
    let mut a = Client::connect(&replica.ws_url(&format!("/group/1/?token={token}"))).await;
    // The receiver's subscription is in place before its channel line; send once.
    a.send_text("to django").await;
    assert_eq!(a.recv_text().await, "alice: to django");
    let line = receiver.message_line().await;
    let message: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(message["type"], "send_msg", "{line}");
    assert_eq!(message["name"], "alice", "{line}");
    assert!(
        message["user"].as_str().is_some_and(|u| !u.is_empty()),
        "Django reads the sender's user id: {line}"
    );
    assert_eq!(message["message"]["text"], "to django", "{line}");
    // Without a token: 401.
    assert_eq!(
        connect_with_cookie(&replica.ws_url("/group/1/"), "")
            .await
            .err(),
        Some(401)
    );
}
