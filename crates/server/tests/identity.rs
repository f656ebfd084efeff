//! Identity decided by the Django side: signed connection tokens (HS256, RS256, ES256) on every
//! carrier, each way a token can be wrong, the expiry of an open connection, access to groups,
//! and the sender's name on every line of the group chat. The connect hook is in
//! `connect_hook.rs`.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use channels_layer::Message;
use channels_server::Config;
use channels_server::consumer::{ClientMessage, Close, Consumer, Context};
use channels_server::routing::WsRouter;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::{Client, TestServer, metric, raw_handshake, spawn_with};

const SECRET: &str = "a-test-secret-of-more-than-32-bytes-0123456789";
const RSA_PRIVATE: &[u8] = include_bytes!("keys/rsa-private.pem");
const EC_PRIVATE: &[u8] = include_bytes!("keys/ec-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("keys/rsa-public.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims for `sub`, valid for an hour, allowed into group `1`.
fn claims(sub: &str, name: &str) -> serde_json::Value {
    json!({"sub": sub, "name": name, "exp": now() + 3600, "groups": ["1"]})
}

fn hs256(claims: &serde_json::Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        claims,
    )
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs256_config() -> Config {
    let mut config = Config::default();
    config.token_hs256_secret = Some(SECRET.parse().unwrap());
    config
}

fn public_key_config(pem: &[u8]) -> Config {
    let dir = std::env::temp_dir().join(format!("channels-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.pem", pem.len()));
    std::fs::write(&path, pem).unwrap();
    let mut config = Config::default();
    config.token_public_key = Some(path);
    config
}

/// A consumer that counts its `connect` calls: a refused token must run none.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl Consumer for Counting {
    async fn connect(&mut self, cx: &mut Context) -> Result<(), Close> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let user = cx.scope().identity().map(|i| i.user().to_owned());
        cx.send_text(format!("hello {}", user.unwrap_or_default()))
    }

    async fn receive(&mut self, _cx: &mut Context, _msg: ClientMessage) -> Result<(), Close> {
        Ok(())
    }

    async fn event(&mut self, _cx: &mut Context, _event: Message) -> Result<(), Close> {
        Ok(())
    }
}

async fn counting_server(config: Config) -> (TestServer, Arc<AtomicUsize>) {
    let calls = Counting::default();
    let count = Arc::clone(&calls.0);
    let routes = WsRouter::new()
        .route("count/$", move || calls.clone())
        .unwrap();
    (spawn_with(config, routes).await, count)
}

#[tokio::test]
async fn hs256_rs256_and_es256_tokens_are_accepted_with_their_user() {
    let cases = [
        (hs256_config(), hs256(&claims("u1", "One"))),
        (
            public_key_config(RSA_PUBLIC),
            sign(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
                &claims("u2", "Two"),
            ),
        ),
        (
            public_key_config(include_bytes!("keys/ec-public.pem")),
            sign(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
                &claims("u3", "Three"),
            ),
        ),
    ];
    for (config, token) in cases {
        let (server, count) = counting_server(config).await;
        let mut client = server.ws(&format!("/count/?token={token}")).await;
        let hello = client.recv_text().await;
        assert!(hello.starts_with("hello u"), "{hello}");
        assert_eq!(count.load(Ordering::SeqCst), 1);
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn every_wrong_token_is_refused_counted_and_runs_no_consumer_code() {
    let (server, count) = counting_server(public_key_config(RSA_PUBLIC)).await;
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    let other_rsa = {
        // Another key pair: the token's signature does not verify with the configured key.
        let ec = EncodingKey::from_ec_pem(EC_PRIVATE).unwrap();
        sign(Algorithm::ES256, &ec, &claims("u", "U"))
    };
    let expired = sign(
        Algorithm::RS256,
        &rsa,
        &json!({"sub": "u", "exp": now() - 600}),
    );
    let not_yet = sign(
        Algorithm::RS256,
        &rsa,
        &json!({"sub": "u", "exp": now() + 3600, "nbf": now() + 600}),
    );
    let no_sub = sign(Algorithm::RS256, &rsa, &json!({"exp": now() + 3600}));
    let no_exp = sign(Algorithm::RS256, &rsa, &json!({"sub": "u"}));
    let exp_as_string = sign(
        Algorithm::RS256,
        &rsa,
        &json!({"sub": "u", "exp": (now() + 3600).to_string()}),
    );
    // alg none: a header that says none, no signature.
    let none = {
        use base64_url as b64;
        format!(
            "{}.{}.",
            b64::encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64::encode(claims("u", "U").to_string().as_bytes())
        )
    };
    // Algorithm confusion: HS256 signed with the RSA public key's PEM as the secret.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUBLIC).unwrap(),
        &claims("u", "U"),
    );
    // Over the token limit (8 KiB) but within the request-header limit (32 KiB).
    let large = "a".repeat(20 * 1024);
    let cases: [(&str, String, &str); 10] = [
        ("expired", expired, "token_expired"),
        ("not yet valid", not_yet, "token_not_yet_valid"),
        ("wrong key", other_rsa, "token_invalid"),
        ("alg none", none, "token_invalid"),
        ("HS256 with the public key", confused, "token_invalid"),
        ("malformed", "not.a.token".to_owned(), "token_invalid"),
        ("no sub", no_sub, "token_invalid"),
        ("no exp", no_exp, "token_invalid"),
        ("exp as a string", exp_as_string, "token_invalid"),
        ("20 KiB", large, "token_too_large"),
    ];
    for (what, token, label) in cases {
        let metric_name = format!("channels_handshakes_refused_total{{reason=\"{label}\"}}");
        let before = metric(server.addr, &metric_name).await;
        let status = server
            .refused_status(&format!("/count/?token={token}"))
            .await;
        assert_eq!(status, 401, "{what}");
        assert_eq!(
            metric(server.addr, &metric_name).await,
            before + 1.0,
            "{what}: counted as {label}"
        );
    }
    assert_eq!(
        server.refused_status("/count/").await,
        401,
        "no token at all"
    );
    assert_eq!(
        metric(
            server.addr,
            "channels_handshakes_refused_total{reason=\"token_missing\"}"
        )
        .await,
        1.0
    );
    // 100 KiB does not even fit the request-header limit: 431 before anything reads it.
    assert_eq!(oversized_request_status(server.addr, 100 * 1024).await, 431);
    assert_eq!(count.load(Ordering::SeqCst), 0, "no consumer code ran");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_subprotocol_pair_is_answered_with_bearer_and_the_cookie_works() {
    let mut config = hs256_config();
    config.token_cookie = Some("chat_token".to_owned());
    let (server, count) = counting_server(config).await;
    let token = hs256(&claims("sub-user", "S"));
    let (status, stream) = raw_handshake(
        server.addr,
        "/count/",
        "localhost",
        format!("Sec-WebSocket-Protocol: bearer, {token}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 101);
    drop(stream);
    // The 101's headers, through a real client.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.url("/count/"),
        )
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer, {token}").parse().unwrap(),
    );
    let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "bearer");
    let mut client = Client(socket);
    assert_eq!(client.recv_text().await, "hello sub-user");
    // The cookie.
    let (status, _stream) = raw_handshake(
        server.addr,
        "/count/",
        "localhost",
        format!("Cookie: other=1; chat_token={token}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 101);
    assert_eq!(count.load(Ordering::SeqCst), 3);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_expired_token_closes_its_open_connection_with_4401() {
    let mut config = hs256_config();
    config.token_leeway_secs = 0;
    let (server, _count) = counting_server(config).await;
    let token = hs256(&json!({"sub": "brief", "exp": now() + 2}));
    let mut client = server.ws(&format!("/count/?token={token}")).await;
    assert_eq!(client.recv_text().await, "hello brief");
    let started = std::time::Instant::now();
    let (code, reason) = tokio::time::timeout(Duration::from_secs(6), client.expect_close())
        .await
        .expect("closed when the token expired");
    assert_eq!((code, reason.as_str()), (4401, "token expired"));
    assert!(
        started.elapsed() <= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_group_chat_joins_only_allowed_groups_and_names_every_sender() {
    let server = spawn_with(hs256_config(), channels_server::tutorial::routes()).await;
    let alice = hs256(
        &json!({"sub": "7", "name": "Alice", "exp": now() + 3600, "groups": ["1", "team_*"]}),
    );
    let bob = hs256(&json!({"sub": "8", "name": "Bob", "exp": now() + 3600, "groups": ["1"]}));
    let mut a = server.ws(&format!("/group/1/?token={alice}")).await;
    let mut b = server.ws(&format!("/group/1/?token={bob}")).await;
    a.send_text("hi bob").await;
    assert_eq!(b.recv_text().await, "Alice: hi bob");
    assert_eq!(a.recv_text().await, "Alice: hi bob");
    b.send_text("hi alice").await;
    assert_eq!(a.recv_text().await, "Bob: hi alice");
    // Bob may not join group 2, Alice may join team_red.
    assert_eq!(
        server
            .refused_status(&format!("/group/2/?token={bob}"))
            .await,
        403
    );
    assert_eq!(
        metric(
            server.addr,
            "channels_handshakes_refused_total{reason=\"group_forbidden\"}"
        )
        .await,
        1.0
    );
    let _team = server.ws(&format!("/group/team_red/?token={alice}")).await;
    // Anonymous: 401 when tokens are required.
    assert_eq!(server.refused_status("/group/1/").await, 401);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn without_identity_flags_the_group_chat_is_the_tutorial() {
    let server = spawn_with(Config::default(), channels_server::tutorial::routes()).await;
    // A token in the URL means nothing then: it is not even read.
    let mut a = server.ws("/group/1/?token=whatever").await;
    a.send_text("x").await;
    assert_eq!(a.recv_text().await, "组内主动推送消息:x");
    server.stop().await.unwrap();
}

/// The token never reaches a log line, whatever the log level: the binary at `debug`, with a
/// valid, an invalid and a refused-for-its-group token in the URL.
#[tokio::test]
async fn tokens_never_appear_in_logs() {
    let port = test_support::free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_channels-server"))
        .args([
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--log-level",
            "debug",
        ])
        .env("CHANNELS_TOKEN_HS256_SECRET", SECRET)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("ws://127.0.0.1:{port}");
    test_support::eventually("the server listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let good = hs256(&claims("logged", "L"));
    let mut client = Client::connect(&format!("{base}/group/1/?token={good}")).await;
    client.send_text("hello").await;
    assert_eq!(client.recv_text().await, "L: hello");
    client.close().await;
    let forbidden = hs256(&json!({"sub": "x", "exp": now() + 60, "groups": []}));
    let invalid = format!("{good}x");
    for token in [&forbidden, &invalid] {
        let _ = tokio_tungstenite::connect_async(format!("{base}/group/1/?token={token}")).await;
    }
    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        logs.contains("identified"),
        "debug logs were written: {logs}"
    );
    for secret in [&good, &forbidden, &invalid] {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a token in the logs:\n{logs}");
    }
    assert!(!logs.contains("token="), "token= in the logs:\n{logs}");
}

/// The status of a handshake whose URL carries a `len`-byte token (the server may answer before
/// it has read everything, so write errors are expected).
async fn oversized_request_status(addr: std::net::SocketAddr, len: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /count/?token={} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        "a".repeat(len)
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(support::TIMEOUT, stream.read_to_end(&mut response)).await;
    let head = String::from_utf8_lossy(&response);
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The base64url encoding JWTs use (no padding), for hand-made tokens.
mod base64_url {
    pub(super) fn encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }
}
