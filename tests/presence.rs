//! Presence across replicas and the server API, with real processes: three replicas with
//! `--presence --api-bind` on one redis-server, 300 members joining and leaving in bursts,
//! replicas drained and killed under them, publishing through the API to every replica and to
//! a Python `receive()`, a user disconnected on every replica; and headless Chromium pages
//! that see each other come and go.

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a failed unwrap is a failed test; the scenario prints what it measured"
)]

#[path = "support/browser.rs"]
mod browser_support;
#[path = "support/nginx.rs"]
mod nginx;
#[path = "support/python.rs"]
mod python;
#[path = "support/replica.rs"]
mod replica;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use browser_support::{Browser, finish};
use futures_util::StreamExt;
use python::{PyReceiver, SeedLayer};
use replica::{Client, Replica};
use serde_json::{Value, json};
use test_support::free_port;
use test_support::redis_server::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as Frame;

const KEY: &str = "presence-test-key-0123456789abcdef";
const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// A replica with presence, the API on its own port, and tokens.
struct Node {
    replica: Replica,
    api: u16,
}

/// A replica with presence and the API; `tokens` also makes it require a signed token (the pages
/// test runs anonymous browsers, so its replicas take none).
async fn node(name: &str, redis: &RedisServer, tokens: bool) -> Node {
    let api = free_port();
    let url = redis.url();
    let api_bind = format!("127.0.0.1:{api}");
    let args = [
        "--redis-url",
        url.as_str(),
        "--presence",
        "--api-bind",
        api_bind.as_str(),
        "--drain-timeout-secs",
        "2",
        "--max-connections-per-ip",
        "0",
        "--max-http-connections-per-ip",
        "0",
    ];
    let mut envs = vec![("CHANNELS_API_KEY", KEY)];
    if tokens {
        envs.push(("CHANNELS_TOKEN_HS256_SECRET", SECRET));
    }
    Node {
        replica: Replica::start(name, &args, &envs).await,
        api,
    }
}

/// One API request: status and JSON body.
async fn api(port: u16, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\nX-API-Key: {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Members of `group` by replica, as the API of `port` sees them.
async fn presence_by_replica(port: u16, group: &str) -> HashMap<String, usize> {
    let (status, body) = api(port, "GET", &format!("/api/groups/{group}/presence"), "").await;
    assert_eq!(status, 200, "{body}");
    let mut out = HashMap::new();
    for member in body["members"].as_array().unwrap() {
        *out.entry(member["replica"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        body["count"].as_u64().unwrap() as usize,
        out.values().sum::<usize>()
    );
    out
}

/// Waits until every node's API shows `expected` members per replica; returns how long.
async fn converge(
    nodes: &[&Node],
    group: &str,
    expected: &HashMap<String, usize>,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let mut all = true;
        for n in nodes {
            let got = presence_by_replica(n.api, group).await;
            let got: HashMap<String, usize> = got.into_iter().filter(|(_, c)| *c > 0).collect();
            let want: HashMap<String, usize> = expected
                .iter()
                .filter(|(_, c)| **c > 0)
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            if got != want {
                all = false;
                if started.elapsed() > within {
                    panic!(
                        "presence on {} is {got:?}, expected {want:?}",
                        n.replica.name
                    );
                }
            }
        }
        if all {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn token(user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": user, "name": user, "exp": now + 3600, "groups": ["*"]});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_across_replicas_through_bursts_a_drain_and_a_crash() {
    const MEMBERS: usize = 300;
    let redis = RedisServer::start();
    let (a, b, c) = tokio::join!(
        node("p0", &redis, true),
        node("p1", &redis, true),
        node("p2", &redis, true)
    );
    let nodes = [a, b, c];
    let mut clients: Vec<(usize, Client)> = Vec::new();
    let started = Instant::now();
    // Join in bursts of 50, round-robin over the replicas.
    for burst in 0..MEMBERS / 50 {
        let joins = (0..50).map(|i| {
            let n = (burst * 50 + i) % 3;
            let url = nodes[n].replica.ws_url(&format!(
                "/group/crowd/?token={}",
                token(&format!("u{}", burst * 50 + i))
            ));
            async move { (n, Client::connect(&url).await) }
        });
        clients.extend(futures_util::future::join_all(joins).await);
    }
    // Leave in bursts: every third client of the first 150.
    let mut leaving = Vec::new();
    let mut kept = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        if i < 150 && i % 3 == 0 {
            leaving.push(client);
        } else {
            kept.push(client);
        }
    }
    futures_util::future::join_all(leaving.into_iter().map(|(_, c)| c.close())).await;
    let mut truth: HashMap<String, usize> = HashMap::new();
    for (n, _) in &kept {
        *truth.entry(nodes[*n].replica.name.clone()).or_default() += 1;
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let took = converge(&refs, "crowd", &truth, Duration::from_secs(10)).await;
    println!(
        "{} members after bursts: every replica agrees {took:?} after the last leave ({:?} in all)",
        kept.len(),
        started.elapsed()
    );

    // A Python process on the same Redis gets what the API publishes, and so does every member.
    let python = SeedLayer::pubsub(&redis.url());
    let receiver =
        PyReceiver::start(&python, &["receive", "--group", "crowd", "--timeout", "10"]).await;
    let (status, _) = api(
        nodes[0].api,
        "POST",
        "/api/groups/crowd/send",
        r#"{"type": "send_msg", "message": {"text": "from the api"}}"#,
    )
    .await;
    assert_eq!(status, 202);
    let line = receiver.message_line().await;
    assert!(line.contains("from the api"), "{line}");
    for (_, client) in &mut kept {
        assert_eq!(client.recv_text().await, "组内主动推送消息:from the api");
    }

    // Disconnect a user with sockets on every replica.
    let mut dora = Vec::new();
    for n in &nodes {
        dora.push(
            Client::connect(
                &n.replica
                    .ws_url(&format!("/group/other/?token={}", token("dora"))),
            )
            .await,
        );
    }
    let started = Instant::now();
    while api(nodes[0].api, "GET", "/api/groups/other/presence", "")
        .await
        .1["count"]
        != 3
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "dora is not on every replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = api(nodes[1].api, "POST", "/api/users/dora/disconnect", "").await;
    assert_eq!(status, 202);
    for ws in &mut dora {
        match tokio::time::timeout(Duration::from_secs(5), ws.0.next()).await {
            Ok(Some(Ok(Frame::Close(Some(frame))))) => assert_eq!(u16::from(frame.code), 4000),
            other => panic!("expected a 4000 close, got {other:?}"),
        }
    }

    // Drain p2: its members leave every list at once.
    let [a, b, mut c] = nodes;
    c.replica.signal_term();
    let drained = Instant::now();
    truth.insert(c.replica.name.clone(), 0);
    let took = converge(&[&a, &b], "crowd", &truth, Duration::from_secs(10)).await;
    println!("drained replica's members gone from every list after {took:?}");
    assert!(drained.elapsed() < Duration::from_secs(5));
    c.replica.wait_exit(Duration::from_secs(20)).await;

    // Kill p1: its entries expire within the TTL (20 s).
    let mut b = b;
    b.replica.kill().await;
    let killed = Instant::now();
    truth.insert(b.replica.name.clone(), 0);
    let took = converge(&[&a], "crowd", &truth, Duration::from_secs(30)).await;
    println!("killed replica's members gone after {took:?} (bound: 20 s)");
    assert!(
        killed.elapsed() <= Duration::from_secs(25),
        "{:?}",
        killed.elapsed()
    );
    drop(kept);
}

/// Headless Chromium: two pages on different replicas see each other in the online list; one
/// closes and the other sees it leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_see_each_other_come_and_go() -> anyhow::Result<()> {
    let redis = RedisServer::start();
    let (a, b) = tokio::join!(node("w0", &redis, false), node("w1", &redis, false));
    let browser = Browser::start().await?;
    let one = browser.session("one").await?;
    let two = match browser.session("two").await {
        Ok(two) => two,
        Err(e) => return finish("presence_pages", vec![one], Err(e)).await,
    };
    let outcome = async {
        one.goto(&format!(
            "http://127.0.0.1:{}/chatgroup?groupID=online",
            a.replica.port
        ))
        .await?;
        one.wait_for_ws_state("open").await?;
        one.wait_until_within(
            Duration::from_secs(10),
            "one sees itself",
            "return window.wsOnline !== null && Object.keys(window.wsOnline).length === 1;",
            vec![],
        )
        .await?;
        two.goto(&format!(
            "http://127.0.0.1:{}/chatgroup?groupID=online",
            b.replica.port
        ))
        .await?;
        two.wait_for_ws_state("open").await?;
        for window in [&one, &two] {
            window
                .wait_until_within(
                    Duration::from_secs(10),
                    "two online",
                    "return window.wsOnline !== null && Object.keys(window.wsOnline).length === 2;",
                    vec![],
                )
                .await?;
        }
        let text = one.text("online").await?;
        anyhow::ensure!(text.contains(": 2"), "the online line: {text}");
        two.click("close").await?;
        one.wait_until_within(
            Duration::from_secs(10),
            "one sees two leave",
            "return Object.keys(window.wsOnline).length === 1;",
            vec![],
        )
        .await?;
        anyhow::Ok(())
    }
    .await;
    finish("presence_pages", vec![one, two], outcome).await
}
