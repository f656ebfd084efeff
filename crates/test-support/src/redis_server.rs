//! A `redis-server` of the test's own on a free loopback port, stopped when dropped and also
//! when the test process dies (a shell watchdog kills it once our end of its stdin closes); and
//! one shared server per test binary ([`server`]) with a fresh key prefix for every layer on it
//! ([`unique_prefix`]), so that tests cannot collide.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A running `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    process: Option<(Child, ChildStdin)>,
    /// For a TLS server ([`RedisServer::start_tls`]): the directory of its certificate and key.
    tls: Option<std::path::PathBuf>,
}

pub use crate::free_port;

/// The redis-server program, or a failure that says how to install it.
fn program() -> &'static str {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "redis-server not found on PATH: install the Debian package redis-server \
         (apt-get install redis-server; scripts/test.sh does it)"
    );
    "redis-server"
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a server on `port` (e.g. the port of one that was stopped).
    pub fn start_on(port: u16) -> Self {
        let mut server = Self {
            port,
            process: None,
            tls: None,
        };
        server.spawn();
        server
    }

    /// Starts a server that speaks only TLS, on a free port, with a self-signed certificate
    /// made for it by the `openssl` program (clients are not asked for one). Its
    /// [`url`](Self::url) is `rediss://...#insecure`: the certificate is not verified.
    pub fn start_tls() -> Self {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "redis-tls-{}-{}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("cannot make a directory for the certificate");
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            made.is_ok_and(|s| s.success()),
            "cannot make a certificate with openssl: install the Debian package openssl"
        );
        let mut server = Self {
            port: free_port(),
            process: None,
            tls: Some(dir),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let program = program();
        let port = self.port.to_string();
        let mut listen = vec!["--port".to_owned(), port];
        if let Some(dir) = &self.tls {
            let file = |name: &str| dir.join(name).display().to_string();
            listen = vec!["--port".to_owned(), "0".to_owned(), "--tls-port".to_owned()];
            listen.push(self.port.to_string());
            for (flag, name) in [
                ("--tls-cert-file", "cert.pem"),
                ("--tls-key-file", "key.pem"),
                ("--tls-ca-cert-file", "cert.pem"),
            ] {
                listen.extend([flag.to_owned(), file(name)]);
            }
            listen.extend(["--tls-auth-clients".to_owned(), "no".to_owned()]);
        }
        // The shell runs redis in the background and kills it when its stdin reaches EOF,
        // which happens when we drop the pipe or when the test process dies, however it dies.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" "$@" & pid=$!; read -r _ || true; kill "$pid" 2>/dev/null; wait "$pid""#)
            .arg(program)
            .args(&listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args([
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
                "--dir",
                "/tmp",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("cannot start sh for redis-server");
        let stdin = child.stdin.take().expect("piped stdin");
        self.process = Some((child, stdin));
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ready.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            #[allow(
                clippy::disallowed_methods,
                reason = "test setup, before any async work"
            )]
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0`, or for a TLS server `rediss://127.0.0.1:<port>/0#insecure`.
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("rediss://127.0.0.1:{}/0#insecure", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Stops the server (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some((mut child, mut stdin)) = self.process.take() {
            let _ = stdin.write_all(b"stop\n");
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs one command on a fresh connection.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut conn = redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap();
        cmd.query(&mut conn).unwrap()
    }

    /// How many of its connections are neither subscribers nor this query's own (`CLIENT
    /// LIST TYPE normal`).
    pub fn plain_clients(&self) -> usize {
        let list: String = self.query(redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("normal"));
        list.lines().count() - 1
    }

    /// `PUBSUB NUMSUB` for each channel.
    pub fn numsub(&self, channels: &[&str]) -> Vec<i64> {
        let reply: Vec<redis::Value> = self.query(redis::cmd("PUBSUB").arg("NUMSUB").arg(channels));
        reply
            .chunks(2)
            .map(|pair| match &pair[1] {
                redis::Value::Int(n) => *n,
                other => panic!("unexpected NUMSUB reply {other:?}"),
            })
            .collect()
    }

    /// `PUBSUB CHANNELS <pattern>`
    pub fn channels(&self, pattern: &str) -> Vec<String> {
        self.query(redis::cmd("PUBSUB").arg("CHANNELS").arg(pattern))
    }

    /// `PUBSUB CHANNELS <pattern>`, polled until it is empty or `within` has passed: what is
    /// left subscribed (empty when everything was unsubscribed in time).
    pub async fn channels_left(&self, pattern: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = self.channels(pattern);
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Publishes raw bytes (to inject what another process, or garbage, would send).
    pub fn publish(&self, channel: &str, payload: &[u8]) -> i64 {
        self.query(redis::cmd("PUBLISH").arg(channel).arg(payload))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.tls {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The binary's one server, started on first use.
pub fn server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// A prefix no other layer of this process uses. Fixed width, so that no prefix is the start
/// of another: a clean-up of `{prefix}*` touches only its own keys.
pub fn unique_prefix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}x{:05}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
