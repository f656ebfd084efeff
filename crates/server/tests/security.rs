//! Hardening over real sockets: the Origin check (T-S1, T-S11), the message rate limit (T-S5),
//! connection caps (T-S6), the header-read timeout (T-S10) and server pings (T-S8).

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use channels_server::Config;
use futures_util::{SinkExt, StreamExt};
use support::{Client, metric, raw_handshake, spawn, spawn_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn config(f: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default();
    f(&mut config);
    config
}

/// The status of a handshake to the echo route with Host `host` and these Origin bytes (`None`:
/// no Origin header).
async fn origin_status(addr: SocketAddr, host: &str, origin: Option<&[u8]>) -> u16 {
    let mut extra = Vec::new();
    if let Some(origin) = origin {
        extra.extend_from_slice(b"Origin: ");
        extra.extend_from_slice(origin);
        extra.extend_from_slice(b"\r\n");
    }
    let (status, _) = raw_handshake(addr, "/room/1/", host, &extra).await;
    status
}

#[tokio::test]
async fn origin_default_allows_the_pages_own_host_and_no_origin() {
    let server = spawn().await;
    let own = format!("http://{}", server.addr);
    let host = server.addr.to_string();
    let cases: &[(Option<&str>, u16)] = &[
        (Some(&own), 101),
        (None, 101),
        (Some("https://evil.example"), 403),
        (Some("null"), 403),
        // Same host, another port; the Host header without its port.
        (Some("http://127.0.0.1:1"), 403),
        (Some("http://127.0.0.1"), 403),
        (Some("ftp://127.0.0.1"), 403),
    ];
    for (origin, expected) in cases {
        let got = origin_status(server.addr, &host, origin.map(str::as_bytes)).await;
        assert_eq!(got, *expected, "Origin {origin:?}, Host {host}");
    }
    assert_eq!(
        metric(
            server.addr,
            "channels_handshakes_refused_total{reason=\"origin\"}"
        )
        .await,
        5.0
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn origin_default_with_allowed_hosts_compares_with_the_public_host() {
    let server = spawn_with(
        config(|c| c.allowed_hosts = vec!["app.example.com".to_owned()]),
        channels_server::tutorial::routes(),
    )
    .await;
    // Behind nginx the Host is the public one (`$http_host`).
    let public = "app.example.com:8080";
    let cases = [
        ("http://app.example.com:8080", 101),
        ("https://app.example.com:8080", 101),
        ("http://app.example.com", 403),
        ("http://app.example.com:8443", 403),
        ("http://app.example.com.evil.example:8080", 403),
        ("http://evil.app.example.com:8080", 403),
        ("http://example.com:8080", 403),
    ];
    for (origin, expected) in cases {
        let got = origin_status(server.addr, public, Some(origin.as_bytes())).await;
        assert_eq!(got, expected, "Origin {origin}, Host {public}");
    }
    assert_eq!(
        origin_status(
            server.addr,
            "app.example.com",
            Some(b"https://app.example.com")
        )
        .await,
        101,
        "no port in Host: the scheme's default"
    );
    assert_eq!(
        metric(
            server.addr,
            "channels_handshakes_refused_total{reason=\"origin\"}"
        )
        .await,
        5.0
    );
    server.stop().await.unwrap();
}

/// Defect 8 of the review: a DNS-rebinding page (its name re-pointed at the server's address)
/// sends a Host and an Origin that agree; by default only addresses and localhost are hosts the
/// server serves, so the handshake is refused with 400 before any consumer runs.
#[tokio::test]
async fn a_dns_rebinding_handshake_is_refused_by_default() {
    let server = spawn().await;
    let port = server.addr.port();
    let rebound = format!("evil.example:{port}");
    let origin = format!("http://{rebound}");
    assert_eq!(
        origin_status(server.addr, &rebound, Some(origin.as_bytes())).await,
        400
    );
    // Without an Origin too (the check is on the Host).
    assert_eq!(origin_status(server.addr, &rebound, None).await, 400);
    // The server's own names still work.
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let origin = format!("http://{host}");
        assert_eq!(
            origin_status(server.addr, &host, Some(origin.as_bytes())).await,
            101,
            "{host}"
        );
    }
    assert_eq!(
        metric(
            server.addr,
            "channels_handshakes_refused_total{reason=\"host\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(server.addr, "channels_connections_total").await,
        2.0,
        "no consumer ran for the refused ones"
    );
    // Named in --allowed-hosts, the name is served.
    let named = spawn_with(
        config(|c| c.allowed_hosts = vec![".example".to_owned()]),
        channels_server::tutorial::routes(),
    )
    .await;
    let host = format!("evil.example:{}", named.addr.port());
    let origin = format!("http://{host}");
    assert_eq!(
        origin_status(named.addr, &host, Some(origin.as_bytes())).await,
        101
    );
    named.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn origin_allowlist_has_channels_semantics() {
    let server = spawn_with(
        config(|c| {
            c.allowed_origins = vec![
                "https://app.example.com".to_owned(),
                ".example.org".to_owned(),
                "partner.example".to_owned(),
            ]
        }),
        channels_server::tutorial::routes(),
    )
    .await;
    let host = "app.example.com";
    let cases = [
        ("https://app.example.com", 101),
        ("https://app.example.com:443", 101),
        ("https://example.org", 101),
        ("http://www.example.org:9000", 101),
        ("wss://a.b.example.org", 101),
        ("http://partner.example:1234", 101),
        // Wrong scheme, wrong port, suffix and substring tricks, subdomains of an exact host.
        ("http://app.example.com", 403),
        ("https://app.example.com:8443", 403),
        ("https://app.example.com.evil.example", 403),
        ("https://evilexample.org", 403),
        ("https://example.org.evil.example", 403),
        ("https://www.app.example.com", 403),
        ("https://www.partner.example", 403),
        ("https://evil.example", 403),
        ("null", 403),
        ("https://app.example.com/", 403),
        ("https://user@app.example.com", 403),
    ];
    for (origin, expected) in cases {
        let got = origin_status(server.addr, host, Some(origin.as_bytes())).await;
        assert_eq!(got, expected, "Origin {origin}");
    }
    // With an allowlist the request's own host is only allowed if listed.
    let own = format!("http://{}", server.addr);
    assert_eq!(
        origin_status(server.addr, &server.addr.to_string(), Some(own.as_bytes())).await,
        403
    );
    assert_eq!(origin_status(server.addr, host, None).await, 101);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn origin_star_allows_any_origin() {
    let server = spawn_with(
        config(|c| c.allowed_origins = vec!["*".to_owned()]),
        channels_server::tutorial::routes(),
    )
    .await;
    for origin in ["https://evil.example", "null", "whatever"] {
        assert_eq!(
            origin_status(server.addr, "a", Some(origin.as_bytes())).await,
            101
        );
    }
    server.stop().await.unwrap();
}

/// T-S11: bytes that other parsers treat as line breaks never split a header: the handshake is
/// refused (400 from the HTTP parser, or 403 for an opaque Origin), never upgraded.
#[tokio::test]
async fn header_smuggling_bytes_inside_origin_are_refused() {
    let server = spawn_with(
        config(|c| c.allowed_origins = vec!["https://app.example.com".to_owned()]),
        channels_server::tutorial::routes(),
    )
    .await;
    for byte in [0x0b_u8, 0x0c, 0x1c, 0x1d, 0x1e, 0x85] {
        // An evil origin with the allowed one smuggled after the byte, and the allowed origin
        // with the byte inside it.
        let mut smuggled = b"https://evil.example".to_vec();
        smuggled.push(byte);
        smuggled.extend_from_slice(b"Origin: https://app.example.com");
        let mut inside = b"https://app.example.com".to_vec();
        inside.push(byte);
        for origin in [smuggled, inside] {
            let status = origin_status(server.addr, "app.example.com", Some(&origin)).await;
            assert!(
                status == 400 || status == 403,
                "byte {byte:#04x}: got {status} for {:?}",
                String::from_utf8_lossy(&origin)
            );
        }
        // In another header, the byte does not create an Origin header either: this request has
        // none, and a request without an Origin is allowed, so it must upgrade as one (or be
        // refused outright), never be read as carrying `Origin: https://evil.example`.
        let mut extra = b"X-Note: a".to_vec();
        extra.push(byte);
        extra.extend_from_slice(b"Origin: https://evil.example\r\n");
        let (status, _) = raw_handshake(server.addr, "/room/1/", "app.example.com", &extra).await;
        assert!(
            matches!(status, 101 | 400),
            "byte {byte:#04x} in another header: {status}"
        );
    }
    // Several Origin headers are ambiguous: refused.
    let (status, _) = raw_handshake(
        server.addr,
        "/room/1/",
        "app.example.com",
        b"Origin: https://evil.example\r\nOrigin: https://app.example.com\r\n",
    )
    .await;
    assert_eq!(status, 403);
    server.stop().await.unwrap();
}

/// Sends `count` texts at `per_second` on `client` while reading; returns the echoes received
/// and the close frame, if one came.
async fn send_at_rate(
    client: Client,
    per_second: u32,
    count: usize,
) -> (usize, Option<(u16, String)>) {
    let (mut sink, mut stream) = client.0.split();
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
        for i in 0..count {
            tick.tick().await;
            if sink.send(Message::text(format!("m{i}"))).await.is_err() {
                break;
            }
        }
        sink
    });
    let mut echoes = 0;
    let mut close = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while echoes < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => echoes += 1,
            Ok(Some(Ok(Message::Close(frame)))) => {
                close = frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned()));
                break;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) | Err(_) => break,
        }
    }
    sender.abort();
    (echoes, close)
}

/// T-S5: 200 messages/s from one connection get it closed with 1008 "rate limit"; a connection
/// under the limit (20/s, burst 40) is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_message_rate_is_closed_and_others_are_not() {
    let server = spawn().await;
    let fast = server.ws("/room/fast/").await;
    let calm = server.ws("/room/calm/").await;
    let started = Instant::now();
    let (fast, calm) = tokio::join!(send_at_rate(fast, 200, 1000), send_at_rate(calm, 15, 45));
    let (echoes, close) = fast;
    assert_eq!(close, Some((1008, "rate limit".to_owned())));
    assert!(
        (40..=100).contains(&echoes),
        "about the burst of 40 got through: {echoes}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        calm,
        (45, None),
        "the calm client got every echo and stayed open"
    );
    assert_eq!(
        metric(
            server.addr,
            "channels_closes_total{by=\"server\",code=\"1008\"}"
        )
        .await,
        1.0
    );
    server.stop().await.unwrap();
}

/// A WebSocket client from a given loopback source address.
async fn ws_from(server: &support::TestServer, source: [u8; 4], path: &str) -> Result<Client, u16> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    match tokio_tungstenite::client_async(server.url(path), stream).await {
        Ok((ws, _)) => Ok(Client(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("handshake failed: {other}"),
    }
}

/// T-S6: past the per-address cap a handshake gets 429, past the replica cap 503, before any
/// upgrade; the sockets already open keep working, and a closed one gives its place back.
#[tokio::test]
async fn connection_caps_refuse_before_the_upgrade() {
    let server = spawn_with(
        config(|c| {
            c.max_connections = 3;
            c.max_connections_per_ip = 2;
        }),
        channels_server::tutorial::routes(),
    )
    .await;
    let mut a1 = ws_from(&server, [127, 0, 0, 1], "/room/a/").await.unwrap();
    let a2 = ws_from(&server, [127, 0, 0, 1], "/room/a/").await.unwrap();
    assert_eq!(
        ws_from(&server, [127, 0, 0, 1], "/room/a/").await.err(),
        Some(429)
    );
    let mut b1 = ws_from(&server, [127, 0, 0, 2], "/room/b/").await.unwrap();
    assert_eq!(
        ws_from(&server, [127, 0, 0, 3], "/room/c/").await.err(),
        Some(503)
    );
    // The open sockets are unaffected.
    for client in [&mut a1, &mut b1] {
        client.send_text("still here").await;
        assert_eq!(client.recv_text().await, "服务端主动推送消息:still here");
    }
    // A closed connection gives its places back.
    a2.close().await;
    let mut tries = 0;
    let a3 = loop {
        match ws_from(&server, [127, 0, 0, 1], "/room/a/").await {
            Ok(client) => break client,
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("place not given back: {status}"),
        }
    };
    let m = support::metrics(server.addr).await;
    assert_eq!(
        m["channels_handshakes_refused_total{reason=\"max_connections\"}"],
        1.0
    );
    assert!(m["channels_handshakes_refused_total{reason=\"max_connections_per_ip\"}"] >= 1.0);
    drop((a1, a3, b1));
    server.stop().await.unwrap();
}

/// T-S10: connections that send part of a request (or nothing) and go silent are closed after
/// the header-read timeout, while a normal client still connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_after_the_handshake_timeout() {
    let server = spawn_with(
        config(|c| c.handshake_timeout_secs = 2),
        channels_server::tutorial::routes(),
    )
    .await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..50 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        if i % 5 != 0 {
            // A partial request line and headers, with no final CRLF.
            stream
                .write_all(b"GET /room/1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
                .await
                .unwrap();
        }
        slow.push(stream);
    }
    // A normal client is served meanwhile.
    let mut ws = server.ws("/room/1/").await;
    ws.send_text("hi").await;
    assert_eq!(ws.recv_text().await, "服务端主动推送消息:hi");
    let closed_at = futures_util::future::join_all(slow.iter_mut().map(|s| async {
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return started.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("still open after 15 s"),
            }
        }
    }))
    .await;
    let last = closed_at.iter().max().unwrap();
    let first = closed_at.iter().min().unwrap();
    assert!(
        *first >= Duration::from_millis(1500),
        "closed too early: {first:?}"
    );
    assert!(*last < Duration::from_secs(6), "closed too late: {last:?}");
    // Counted as each connection task ends, just after its socket closed.
    let deadline = Instant::now() + Duration::from_secs(3);
    while metric(server.addr, "channels_http_header_timeouts_total").await < 50.0 {
        assert!(Instant::now() < deadline, "header timeouts not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The WebSocket, older than the timeout, is not affected.
    ws.send_text("still").await;
    assert_eq!(ws.recv_text().await, "服务端主动推送消息:still");
    server.stop().await.unwrap();
}

/// Reads one server frame (unmasked) from a raw stream: opcode and payload.
async fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.unwrap();
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).await.unwrap();
            u64::from(u16::from_be_bytes(ext))
        }
        127 => {
            let mut ext = [0u8; 8];
            stream.read_exact(&mut ext).await.unwrap();
            u64::from_be_bytes(ext)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len).unwrap()];
    stream.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x0f, payload)
}

/// T-S8: a peer that never answers pings is closed with 4009 within the ping interval plus the
/// pong timeout; a client that answers stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_answer_pings_is_closed_with_4009() {
    let server = spawn_with(
        config(|c| {
            c.ping_interval_secs = 1;
            c.pong_timeout_secs = 1;
        }),
        channels_server::tutorial::routes(),
    )
    .await;
    let (status, mut dead) = raw_handshake(server.addr, "/room/1/", "localhost", b"").await;
    assert_eq!(status, 101);
    let mut alive = server.ws("/room/2/").await;
    let started = Instant::now();
    // The other client reads all along (tungstenite answers pings while reading).
    let answering = async {
        let mut pings = 0;
        let until = started + Duration::from_millis(4500);
        while let Ok(frame) = tokio::time::timeout_at(until.into(), alive.0.next()).await {
            match frame.unwrap().unwrap() {
                Message::Ping(_) => pings += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        pings
    };
    let silent = async {
        let (opcode, _) = tokio::time::timeout(Duration::from_secs(3), read_frame(&mut dead))
            .await
            .unwrap();
        assert_eq!(opcode, 0x9, "a ping first");
        let pinged = started.elapsed();
        assert!(pinged >= Duration::from_millis(900), "{pinged:?}");
        let (opcode, payload) = tokio::time::timeout(Duration::from_secs(3), read_frame(&mut dead))
            .await
            .unwrap();
        assert_eq!(opcode, 0x8, "then a close");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4009);
        assert_eq!(&payload[2..], b"no pong");
        let closed = started.elapsed();
        assert!(closed < Duration::from_millis(3500), "{closed:?}");
    };
    let (pings, ()) = tokio::join!(answering, silent);
    assert!(pings >= 2, "pinged while idle: {pings}");
    alive.send_text("hi").await;
    assert_eq!(alive.recv_text().await, "服务端主动推送消息:hi");
    assert_eq!(
        metric(
            server.addr,
            "channels_closes_total{by=\"server\",code=\"4009\"}"
        )
        .await,
        1.0
    );
    server.stop().await.unwrap();
}

/// A TCP connection from a given loopback source address.
async fn tcp_from(server: &support::TestServer, source: [u8; 4]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(server.addr).await.unwrap()
}

/// Everything the server sends until it closes (or 5 s pass), as text.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("still open after 5 s: {:?}", String::from_utf8_lossy(&out)),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /healthz` from a loopback source address; the status.
async fn healthz_from(server: &support::TestServer, source: [u8; 4]) -> u16 {
    let mut stream = tcp_from(server, source).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut stream).await;
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Review defect 6: unfinished HTTP requests count against caps per address and in total
/// (answered 429 and 503 at accept), and the request headers one connection may send are
/// bounded (431), so trickled headers cannot pin memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_requests_are_capped_per_address_in_total_and_in_bytes() {
    let server = spawn_with(
        config(|c| {
            c.max_http_connections = 8;
            c.max_http_connections_per_ip = 3;
        }),
        channels_server::tutorial::routes(),
    )
    .await;
    // Three connections from one address, each in the middle of its headers.
    let mut pending = Vec::new();
    for _ in 0..3 {
        let mut stream = tcp_from(&server, [127, 0, 0, 1]).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            .await
            .unwrap();
        pending.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = tcp_from(&server, [127, 0, 0, 1]).await;
    assert!(read_to_close(&mut fourth).await.starts_with("HTTP/1.1 429"));
    // Another address still gets in, until the total of 8 is reached.
    assert_eq!(healthz_from(&server, [127, 0, 0, 2]).await, 200);
    for source in 2..7u8 {
        let mut stream = tcp_from(&server, [127, 0, 0, source]).await;
        stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        pending.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ninth = tcp_from(&server, [127, 0, 0, 9]).await;
    assert!(read_to_close(&mut ninth).await.starts_with("HTTP/1.1 503"));
    // Places come back when the connections end.
    pending.clear();
    let mut status = 0;
    for _ in 0..100 {
        status = healthz_from(&server, [127, 0, 0, 1]).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "places given back");
    // Headers past 32 KiB: refused with 431 and closed, whatever more the client sends.
    let mut stream = tcp_from(&server, [127, 0, 0, 10]).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
        .await
        .unwrap();
    let chunk = vec![b'a'; 1024];
    let mut sent = 0;
    for _ in 0..380 {
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let answer = read_to_close(&mut stream).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "after {sent} bytes: {answer:?}"
    );
    let m = support::metrics(server.addr).await;
    // At least the fourth and the ninth (the retries above, made while the server had not yet
    // seen the pending connections end, may have been refused too).
    for reason in ["max_http_connections_per_ip", "max_http_connections"] {
        let refused = m[&format!("channels_http_connections_refused_total{{reason=\"{reason}\"}}")];
        assert!(refused >= 1.0, "{reason}: {refused}");
    }
    server.stop().await.unwrap();
}

/// A raw handshake to the echo chat with these extra header lines; the status.
async fn handshake_status(server: &support::TestServer, request: &str) -> u16 {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    // The connection stays open (keep-alive): read the status line only.
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    String::from_utf8_lossy(&head[9..]).parse().unwrap()
}

/// Review defect 9: RFC 6455's handshake rules are enforced: one `Sec-WebSocket-Version: 13`
/// (426 otherwise, naming 13), one `Sec-WebSocket-Key` of 16 base64 bytes (400 otherwise).
#[tokio::test]
async fn malformed_handshakes_are_refused_before_the_upgrade() {
    let server = spawn().await;
    let request = |version: &str, key: &str| {
        format!(
            "GET /room/1/ HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\n{version}{key}\r\n"
        )
    };
    let good_key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let v13 = "Sec-WebSocket-Version: 13\r\n";
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(request(v13, good_key).as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101", "the well-formed one upgrades");
    let cases = [
        (request(&format!("{v13}{v13}"), good_key), 426),
        (request("Sec-WebSocket-Version: 12\r\n", good_key), 426),
        (request("", good_key), 426),
        (request(v13, ""), 400),
        (request(v13, "Sec-WebSocket-Key: short==\r\n"), 400),
        (
            request(v13, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==\r\n"),
            400,
        ),
        (
            request(
                v13,
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            ),
            400,
        ),
    ];
    for (request, expected) in &cases {
        assert_eq!(
            handshake_status(&server, request).await,
            *expected,
            "{request}"
        );
    }
    assert_eq!(
        metric(
            server.addr,
            "channels_handshakes_refused_total{reason=\"bad_handshake\"}"
        )
        .await,
        cases.len() as f64
    );
    server.stop().await.unwrap();
}

/// One masked client frame (mask key 0: the payload goes as is).
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![
        opcode | if fin { 0x80 } else { 0 },
        0x80 | payload.len() as u8,
    ];
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// The close frame the server sent on `stream` (after any other frames): its code and reason.
async fn server_close(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let (opcode, len) = (bytes[at] & 0x0f, usize::from(bytes[at + 1] & 0x7f));
        let (header, len) = match len {
            126 => (
                4,
                usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
            ),
            127 => (10, 0),
            _ => (2, len),
        };
        let payload = bytes.get(at + header..at + header + len)?;
        if opcode == 0x8 {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
        }
        at += header + len;
    }
    None
}

/// Review defect 9: continuation frames cost a token each, like every other frame, so a client
/// cannot send an endless message of empty fragments past the rate limit.
#[tokio::test]
async fn a_flood_of_continuation_frames_is_rate_limited() {
    let server = spawn().await;
    let (status, mut stream) = raw_handshake(server.addr, "/room/1/", "localhost", b"").await;
    assert_eq!(status, 101);
    let mut flood = client_frame(0x1, false, b"a");
    for _ in 0..500 {
        flood.extend(client_frame(0x0, false, b""));
    }
    // The server may close before taking all of it.
    let _ = stream.write_all(&flood).await;
    assert_eq!(
        server_close(&mut stream).await,
        Some((1008, "rate limit".to_owned()))
    );
    server.stop().await.unwrap();
}

/// Review defect 9: `/metrics` can live on its own (private) address; the public one then
/// answers 404 for it.
#[tokio::test]
async fn metrics_can_be_served_on_their_own_address_only() {
    use channels_layer::{ChannelLayer, InMemoryChannelLayer};
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let private = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (public_addr, private_addr) = (public.local_addr().unwrap(), private.local_addr().unwrap());
    let layer: std::sync::Arc<dyn ChannelLayer> =
        std::sync::Arc::new(InMemoryChannelLayer::default());
    let server = channels_server::Server::new(
        &Config::default(),
        layer,
        channels_server::tutorial::routes(),
    )
    .with_metrics_listener(private);
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone();
    let task = tokio::spawn(server.serve(public, async move { signal.cancelled().await }));
    let get = |addr: SocketAddr, path: &'static str| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        read_to_close(&mut stream).await
    };
    assert!(
        get(public_addr, "/metrics")
            .await
            .starts_with("HTTP/1.1 404")
    );
    assert!(
        get(public_addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let metrics = get(private_addr, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("channels_connections_open 0"));
    stop.cancel();
    task.await.unwrap().unwrap();
}
