//! Server replicas as real processes: the `channels-server` binary, started on a free loopback
//! port, killed when dropped.
//!
//! The binary runs `channels_server::cli::run(tutorial::app())`, exactly what the shipped
//! `channels-server` binary runs; cargo builds it fresh for every test run.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "test support: each test binary uses part of it; a failed unwrap is a failed test"
)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub use test_support::ws::Client;
#[allow(unused_imports, reason = "each test binary uses part of it")]
pub use test_support::{TIMEOUT, free_port};

/// The server binary: `channels_server::cli::main`, built by this `cargo test` run.
pub fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_channels-server-under-test"))
}

/// One `channels-server` process.
pub struct Replica {
    pub port: u16,
    pub name: String,
    child: Option<Child>,
}

impl Replica {
    /// Starts a replica with `args` (e.g. `--redis-url ...`) and waits until `/readyz` is 200.
    ///
    /// A port found free can be taken before the replica binds it (by an outgoing connection
    /// of another test, whose ephemeral port comes from the same range): the replica then
    /// exits at once ("Address already in use"), and it is started again on another port.
    pub async fn start(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Replica {
        for _ in 0..3 {
            match Self::try_start_on(name, free_port(), args, envs).await {
                Ok(replica) => return replica,
                Err(status) => eprintln!("replica {name} exited at start ({status}): another port"),
            }
        }
        Self::start_on(name, free_port(), args, envs).await
    }

    /// Like [`Replica::start`], on a given port (e.g. the port of a replica that was stopped).
    pub async fn start_on(name: &str, port: u16, args: &[&str], envs: &[(&str, &str)]) -> Replica {
        match Self::try_start_on(name, port, args, envs).await {
            Ok(replica) => replica,
            Err(status) => panic!("replica {name} exited before it was ready: {status}"),
        }
    }

    /// Starts a replica on `port` and waits until `/readyz` is 200; `Err` if it exits first.
    async fn try_start_on(
        name: &str,
        port: u16,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Replica, std::process::ExitStatus> {
        let child = Command::new(server_binary())
            .args(["--bind", &format!("127.0.0.1:{port}"), "--replica-id", name])
            .args(["--log-level", "warn"])
            .args(args)
            .envs(envs.iter().copied())
            .env_remove("CHANNELS_LAYER")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start channels-server");
        let mut replica = Replica {
            port,
            name: name.to_owned(),
            child: Some(child),
        };
        replica.wait_ready().await?;
        Ok(replica)
    }

    /// Waits until `/readyz` is 200 (at most 15 s); `Err` if the process exits first.
    async fn wait_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while http_status(self.port, "/readyz").await != Some(200) {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                self.child = None;
                return Err(status);
            }
            assert!(
                Instant::now() < deadline,
                "replica {} never became ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    pub async fn ws(&self, path: &str) -> Client {
        Client::connect(&self.ws_url(path)).await
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_term();
        self.wait_exit(Duration::from_secs(40)).await
    }

    /// Sends SIGTERM (the drain starts) without waiting.
    pub fn signal_term(&self) {
        let pid = self.pid().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid} failed");
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("already stopped");
        tokio::time::timeout(within, child.wait())
            .await
            .unwrap_or_else(|_| panic!("replica {} did not exit within {within:?}", self.name))
            .unwrap()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kills the process at once (SIGKILL).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// The status code of `GET path`, or `None` if nothing answers.
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).await.map(|(status, _)| status)
}

/// `GET path` over a fresh connection: status and body.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let request = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), request)
        .await
        .ok()
        .flatten()
}

/// Reads `/metrics` of the replica on `port` into `name{labels}` -> value.
pub async fn metrics(port: u16) -> std::collections::HashMap<String, f64> {
    let (status, body) = http_get(port, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    test_support::metrics_text::parse(&body)
}

/// Waits until the replica's `/readyz` answers `status`, at most `within`; returns how long it
/// took.
pub async fn wait_readyz(replica: &Replica, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    while http_status(replica.port, "/readyz").await != Some(status) {
        assert!(
            started.elapsed() < within,
            "{} /readyz not {status} within {within:?}",
            replica.name
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[allow(unused_imports, reason = "each test binary uses part of it")]
pub use test_support::eventually_within as eventually;
