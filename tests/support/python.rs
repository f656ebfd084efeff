//! The Python side of the interop tests: the project venv (`.venv`, made by
//! `scripts/python-venv.sh`), `tests/python/layer_tool.py` acting as a Django process on the
//! channel layer, and the seed Django app (`tests/django_seed`) served by daphne.
//!
//! Every process is started with `kill_on_drop`, and every wait is bounded. What a process wrote
//! on stderr (daphne: stdout too) is collected and shown when the test fails. Needs `replica.rs`
//! included next to it as `mod replica` (free ports, the HTTP readiness probe).

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "test support: each test binary uses part of it; a failed unwrap is a failed test"
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

use crate::replica::{free_port, http_status};

/// How long a Python process may take to start and answer (Django's import is most of it).
pub const PYTHON_TIMEOUT: Duration = Duration::from_secs(10);

/// The repository root (this package lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A program of the project venv (`.venv/bin/<name>`), or a failure that says how to make it.
pub fn venv_program(name: &str) -> PathBuf {
    let path = repo_root().join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "{} not found: run scripts/python-venv.sh from the repository root to create the \
         project venv with channels, channels_redis and daphne (scripts/test.sh does it)",
        path.display()
    );
    path
}

/// The channel-layer settings every Python process of a test reads: the `SEED_*` variables of
/// `tests/django_seed/README.md`: the pub/sub or the core layer, with the default prefix.
#[derive(Debug, Clone)]
pub struct SeedLayer {
    /// `SEED_LAYER`: `pubsub` or `core`.
    kind: &'static str,
    redis_url: String,
    encryption_keys: Option<String>,
    group_expiry: Option<u64>,
}

impl SeedLayer {
    /// `RedisPubSubChannelLayer` on one Redis, without encryption.
    pub fn pubsub(redis_url: &str) -> Self {
        Self {
            kind: "pubsub",
            redis_url: redis_url.to_owned(),
            encryption_keys: None,
            group_expiry: None,
        }
    }

    /// Channels' `InMemoryChannelLayer` (one process only).
    pub fn memory() -> Self {
        Self {
            kind: "memory",
            ..Self::pubsub("")
        }
    }

    /// `RedisChannelLayer` (channels_redis core) on one Redis, without encryption.
    pub fn core(redis_url: &str) -> Self {
        Self {
            kind: "core",
            ..Self::pubsub(redis_url)
        }
    }

    /// The same with `symmetric_encryption_keys` (comma-separated).
    pub fn with_keys(mut self, keys: &str) -> Self {
        self.encryption_keys = Some(keys.to_owned());
        self
    }

    /// The same with the core layer's `group_expiry` (seconds).
    pub fn with_group_expiry(mut self, seconds: u64) -> Self {
        self.group_expiry = Some(seconds);
        self
    }

    /// Sets the variables on `cmd`, removing any the test process inherited.
    fn apply(&self, cmd: &mut Command) {
        cmd.env("SEED_LAYER", self.kind)
            .env("SEED_REDIS_URLS", &self.redis_url)
            .env_remove("SEED_PREFIX")
            .env_remove("SEED_ENCRYPTION_KEYS")
            .env_remove("SEED_GROUP_EXPIRY")
            // Lines reach our pipes at once, and no __pycache__ is left in the source tree.
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if let Some(seconds) = self.group_expiry {
            cmd.env("SEED_GROUP_EXPIRY", seconds.to_string());
        }
        if let Some(keys) = &self.encryption_keys {
            cmd.env("SEED_ENCRYPTION_KEYS", keys);
        }
    }
}

/// Text a child process writes, collected by background tasks so its pipes never fill up.
#[derive(Debug, Default)]
pub struct Output {
    text: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Output {
    /// Starts collecting `reader` line by line.
    fn collect(&mut self, reader: impl AsyncRead + Unpin + Send + 'static) {
        let text = Arc::clone(&self.text);
        self.readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut text = text.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        }));
    }

    /// Everything collected so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Everything, once the process has exited and its pipes are read to the end.
    async fn all_text(&mut self) -> String {
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        }
        self.text()
    }
}

/// `layer_tool.py <args>` with the layer settings; stdout and stderr piped.
fn layer_tool_command(layer: &SeedLayer, args: &[&str]) -> Child {
    let mut cmd = Command::new(venv_program("python"));
    cmd.arg(repo_root().join("tests/python/layer_tool.py"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    layer.apply(&mut cmd);
    cmd.spawn().expect("cannot start .venv/bin/python")
}

/// Runs a one-shot `layer_tool.py` command (`send`, `group-send`) to its successful end and
/// returns the JSON line it printed.
pub async fn layer_tool(layer: &SeedLayer, args: &[&str]) -> serde_json::Value {
    let child = layer_tool_command(layer, args);
    // On a timeout the future, and with it the child, is dropped: kill_on_drop kills it.
    let output = tokio::time::timeout(PYTHON_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("layer_tool {args:?} did not finish within {PYTHON_TIMEOUT:?}"))
        .unwrap();
    assert!(
        output.status.success(),
        "layer_tool {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("layer_tool printed {stdout:?}, not one JSON line: {e}"))
}

/// A running `layer_tool.py receive --group ...` or `receive-channel`: its channel can receive,
/// and it is waiting for one message.
#[derive(Debug)]
pub struct PyReceiver {
    /// The channel it receives on (`asgispecific.<hex>`).
    pub channel: String,
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Output,
}

impl PyReceiver {
    /// Starts `layer_tool.py <args>` and waits for its `{"channel": ...}` line.
    pub async fn start(layer: &SeedLayer, args: &[&str]) -> Self {
        let mut child = layer_tool_command(layer, args);
        let mut stderr = Output::default();
        stderr.collect(child.stderr.take().expect("piped stderr"));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = tokio::time::timeout(PYTHON_TIMEOUT, stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("layer_tool {args:?} printed no channel in time"))
            .unwrap();
        let Some(first) = first else {
            let status = child.wait().await.unwrap();
            panic!(
                "layer_tool {args:?} exited ({status}): {}",
                stderr.all_text().await
            );
        };
        let line: serde_json::Value = serde_json::from_str(&first).unwrap();
        let channel = line["channel"]
            .as_str()
            .unwrap_or_else(|| panic!("expected {{\"channel\": ...}}, got {first}"))
            .to_owned();
        Self {
            channel,
            child,
            stdout,
            stderr,
        }
    }

    /// The line it prints for the message it receives; it must then exit 0.
    pub async fn message_line(mut self) -> String {
        let line = tokio::time::timeout(PYTHON_TIMEOUT, self.stdout.next_line())
            .await
            .expect("layer_tool received nothing in time")
            .unwrap()
            .unwrap_or_default();
        let status = tokio::time::timeout(PYTHON_TIMEOUT, self.child.wait())
            .await
            .expect("layer_tool did not exit")
            .unwrap();
        if !status.success() {
            // Drop prints its stderr, complete once the pipe is read to the end.
            self.stderr.all_text().await;
            panic!("layer_tool exited ({status}) after printing {line:?}");
        }
        line
    }
}

impl Drop for PyReceiver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- layer_tool stderr ---\n{}--- end ---",
                self.stderr.text()
            );
        }
    }
}

/// The seed Django app served by daphne on a free loopback port; killed when dropped, and its
/// output printed on stderr if the test is failing.
#[derive(Debug)]
pub struct Daphne {
    /// The port it listens on.
    pub port: u16,
    child: Child,
    output: Output,
}

impl Daphne {
    /// Starts daphne with `layer` and waits until `GET /chatgroup?groupID=1` answers 200.
    pub async fn start(layer: &SeedLayer) -> Self {
        Self::start_with(layer, None).await
    }

    /// The same, with the identity views (`accounts/`) working on `accounts`' database.
    pub async fn start_with(layer: &SeedLayer, accounts: Option<&SeedAccounts>) -> Self {
        let port = free_port();
        let mut cmd = Command::new(venv_program("daphne"));
        cmd.args(["-b", "127.0.0.1", "-p", &port.to_string()])
            .arg("djangoProject.asgi:application")
            .current_dir(repo_root().join("tests/django_seed"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        layer.apply(&mut cmd);
        if let Some(accounts) = accounts {
            accounts.apply(&mut cmd);
        }
        let mut child = cmd.spawn().expect("cannot start .venv/bin/daphne");
        let mut output = Output::default();
        output.collect(child.stdout.take().expect("piped stdout"));
        output.collect(child.stderr.take().expect("piped stderr"));
        let mut daphne = Self {
            port,
            child,
            output,
        };
        daphne.wait_ready().await;
        daphne
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while http_status(self.port, "/chatgroup?groupID=1").await != Some(200) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("daphne exited ({status}) before it was ready");
            }
            assert!(Instant::now() < deadline, "daphne never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `ws://127.0.0.1:<port><path>`
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// What daphne and the seed app printed so far.
    pub fn output(&self) -> String {
        self.output.text()
    }
}

impl Drop for Daphne {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daphne output ---\n{}--- end ---", self.output());
        }
    }
}

/// The seed project's identity side (`accounts/`): a SQLite database with two users made with
/// Django's own `migrate` and `create_user`, and the secrets the replicas share with it. The
/// database is removed when this is dropped.
#[derive(Debug)]
pub struct SeedAccounts {
    database: PathBuf,
    /// `SEED_TOKEN_SECRET`: the replicas' `CHANNELS_TOKEN_HS256_SECRET`.
    pub token_secret: String,
    /// `SEED_HOOK_SECRET`: the replicas' `CHANNELS_CONNECT_HOOK_SECRET`.
    pub hook_secret: String,
}

/// The test users: (username, password).
pub const USERS: [(&str, &str); 2] = [("alice", "alice-pw-5521"), ("bob", "bob-pw-5521")];

impl SeedAccounts {
    /// Migrates a fresh database and creates [`USERS`].
    pub async fn create() -> Self {
        let database = std::env::temp_dir().join(format!(
            "channels-seed-{}-{}.sqlite3",
            std::process::id(),
            free_port()
        ));
        let accounts = Self {
            database,
            token_secret: "seed-token-secret-of-at-least-32-bytes-0123".to_owned(),
            hook_secret: "seed-hook-secret".to_owned(),
        };
        accounts.manage(&["migrate", "--noinput"]).await;
        let create = USERS
            .iter()
            .map(|(user, password)| {
                format!("User.objects.create_user({user:?}, password={password:?})")
            })
            .collect::<Vec<_>>()
            .join("; ");
        accounts
            .manage(&[
                "shell",
                "-c",
                &format!("from django.contrib.auth.models import User; {create}"),
            ])
            .await;
        accounts
    }

    /// Runs `manage.py <args>` on this database, to its successful end.
    async fn manage(&self, args: &[&str]) {
        let mut cmd = Command::new(venv_program("python"));
        cmd.arg("manage.py")
            .args(args)
            .current_dir(repo_root().join("tests/django_seed"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        SeedLayer::memory().apply(&mut cmd);
        self.apply(&mut cmd);
        let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("manage.py {args:?} did not finish in time"))
            .unwrap();
        assert!(
            output.status.success(),
            "manage.py {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn apply(&self, cmd: &mut Command) {
        cmd.env("SEED_DATABASE", &self.database)
            .env("SEED_TOKEN_SECRET", &self.token_secret)
            .env("SEED_HOOK_SECRET", &self.hook_secret);
    }
}

impl Drop for SeedAccounts {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.database);
    }
}
