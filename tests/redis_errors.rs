//! When Redis refuses a replica with an error (`DENIED`, `NOAUTH`, `WRONGPASS`, `NOPERM`), the
//! replica's log and its `/readyz` body say so in Redis' words, not as a timeout. Each test
//! starts its own `redis-server`, configures it to give that error, and runs the real server
//! binary against it, with each Redis layer.
//!
//! `DENIED` is protected mode refusing a client that is not on the loopback address: Redis 7.0
//! counts only 127.0.0.1 and ::1 as local, so the test connects the replica through a relay that
//! reaches Redis from 127.0.0.2 (still this machine's loopback interface).

#![allow(
    clippy::unwrap_used,
    reason = "tests: a failed unwrap is a failed test"
)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use test_support::free_port;
use test_support::redis_server::RedisServer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::process::{Child, Command};

/// The server binary, built by this `cargo test` run.
fn server_binary() -> &'static str {
    env!("CARGO_BIN_EXE_channels-server-under-test")
}

/// A replica process and every line it logged so far.
struct Replica {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    _child: Child,
}

impl Replica {
    fn start(layer: &str, redis_url: &str) -> Replica {
        let port = free_port();
        let mut child = Command::new(server_binary())
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--layer", layer, "--redis-url", redis_url])
            .env_remove("CHANNELS_LOG")
            .env_remove("CHANNELS_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start channels-server");
        let log = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Replica {
            port,
            log,
            _child: child,
        }
    }

    /// `GET /readyz`: status line and body, or `None` while it does not listen yet.
    async fn readyz(&self) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
        stream
            .write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response)
    }

    /// Waits until `/readyz` answers 503 with `words` in its body and a log line has them
    /// too; fails with what it saw after 10 s.
    async fn expect_refusal(&self, words: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let readyz = self.readyz().await.unwrap_or_default();
            let body = readyz
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let logged = self
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|line| line.contains(words));
            if readyz.starts_with("HTTP/1.0 503") && body.contains(words) && logged {
                assert!(!body.contains("timed out"), "{body}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited 10 s for {words:?} in /readyz and the log; /readyz: {readyz:?}; log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

const LAYERS: [&str; 2] = ["redis-pubsub", "redis-core"];

fn with_password() -> RedisServer {
    let redis = RedisServer::start();
    let () = redis.query(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg("s3cret"),
    );
    redis
}

#[tokio::test]
async fn noauth_reaches_the_log_and_readyz() {
    let redis = with_password();
    for layer in LAYERS {
        let replica = Replica::start(layer, &format!("redis://127.0.0.1:{}/0", redis.port()));
        replica.expect_refusal("NOAUTH").await;
    }
}

#[tokio::test]
async fn wrongpass_reaches_the_log_and_readyz() {
    let redis = with_password();
    for layer in LAYERS {
        let url = format!("redis://:not-it@127.0.0.1:{}/0", redis.port());
        let replica = Replica::start(layer, &url);
        replica.expect_refusal("WRONGPASS").await;
        assert!(
            !replica
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("not-it")),
            "the password reached the log"
        );
    }
}

#[tokio::test]
async fn noperm_reaches_the_log_and_readyz() {
    let redis = RedisServer::start();
    // A user that may run every command but touch no key and no channel: the pub/sub layer's
    // PSUBSCRIBE and the core layer's receive script are refused.
    let () = redis.query(
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("app")
            .arg("on")
            .arg(">apppass")
            .arg("resetkeys")
            .arg("resetchannels")
            .arg("+@all"),
    );
    for layer in LAYERS {
        let url = format!("redis://app:apppass@127.0.0.1:{}/0", redis.port());
        let replica = Replica::start(layer, &url);
        replica.expect_refusal("NOPERM").await;
    }
}

#[tokio::test]
async fn denied_reaches_the_log_and_readyz() {
    let redis = RedisServer::start();
    let () = redis.query(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("protected-mode")
            .arg("yes"),
    );
    let relay = relay_from(redis.port(), [127, 0, 0, 2]).await;
    for layer in LAYERS {
        let replica = Replica::start(layer, &format!("redis://127.0.0.1:{relay}/0"));
        replica.expect_refusal("DENIED").await;
    }
}

/// A TCP relay to `127.0.0.1:port` whose connections to it come from `source`; returns the
/// relay's port.
async fn relay_from(port: u16, source: [u8; 4]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let socket = TcpSocket::new_v4().unwrap();
                socket.bind((source, 0).into()).unwrap();
                if let Ok(mut upstream) = socket.connect(([127, 0, 0, 1], port).into()).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    relay
}
