//! A headless Chromium driven through chromedriver, for the browser tests.
//!
//! [`Browser::start`] runs Debian's `/usr/bin/chromedriver` on a free port (killed when the
//! `Browser` drops) and [`Browser::session`] opens one WebDriver session, that is one
//! `/usr/bin/chromium` window with a fresh profile. Every wait here gives up after [`WAIT`].
//! When a test fails, [`finish`] saves a screenshot of each window under
//! `target/browser-artifacts/` and prints its console log before closing the sessions.
//!
//! Nothing is downloaded and nothing is skipped: if Chromium or chromedriver is missing the test
//! fails and names the Debian packages to install.
//!
//! Test files include this file with `#[path = "support/browser.rs"] mod browser_support;`.

#![allow(
    dead_code,
    reason = "each test binary that includes this file uses a different part of it"
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Debian's Chromium (package `chromium`).
pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver (package `chromium-driver`).
pub(crate) const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The longest any single wait may take.
pub(crate) const WAIT: Duration = Duration::from_secs(10);
/// The texts of the lines in the chat pages' `#message`, as the page's script appended them.
pub(crate) const MESSAGE_LINES: &str =
    "return Array.from(document.querySelectorAll('#message > div'), d => d.textContent);";
/// How often a wait re-checks its condition.
const POLL: Duration = Duration::from_millis(50);
/// Starting Chromium is not a wait on the page, and a loaded 2-core machine needs longer.
const SESSION_START: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str =
    "install the Debian packages with `apt-get install chromium chromium-driver`";

/// A running chromedriver; dropping it kills the process.
#[derive(Debug)]
pub(crate) struct Browser {
    port: u16,
    /// Spawned with `kill_on_drop`, so the driver never outlives the test.
    _driver: Child,
}

impl Browser {
    /// Starts chromedriver on a free port and waits until its `/status` says it is ready.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        for (program, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            ensure!(
                Path::new(program).exists(),
                "{program} not found (Debian package {package}): {INSTALL_HINT}"
            );
        }
        // Free a moment ago: another process could take it before chromedriver binds it;
        // chromedriver then exits, and this reports that.
        let port = test_support::free_port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {CHROMEDRIVER}: {INSTALL_HINT}"))?;
        let ready = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(status) = driver.try_wait()? {
                    bail!("{CHROMEDRIVER} exited before it was ready: {status}");
                }
                if driver_ready(port).await {
                    return Ok(());
                }
                tokio::time::sleep(POLL).await;
            }
        });
        ready
            .await
            .with_context(|| format!("{CHROMEDRIVER} not ready on port {port} after {WAIT:?}"))??;
        Ok(Self {
            port,
            _driver: driver,
        })
    }

    /// Opens a new headless Chromium window with its own fresh profile.
    ///
    /// `name` identifies the window in error messages and artifact file names.
    pub(crate) async fn session(&self, name: &str) -> anyhow::Result<Session> {
        let profile = tempfile::Builder::new()
            .prefix("chromium-profile-")
            .tempdir()
            .context("cannot create a Chromium profile directory")?;
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": chromium_args(profile.path()),
            },
            // Lets `finish` read the console through chromedriver's log endpoint.
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("json! of an object literal is an object");
        };
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        let webdriver = format!("http://127.0.0.1:{}", self.port);
        let client = tokio::time::timeout(SESSION_START, builder.connect(&webdriver))
            .await
            .with_context(|| format!("window {name}: Chromium did not start in time"))?
            .with_context(|| format!("window {name}: cannot start Chromium ({INSTALL_HINT})"))?;
        Ok(Session {
            name: name.to_owned(),
            client,
            _profile: profile,
        })
    }
}

/// One browser window (one WebDriver session) with its own profile directory.
#[derive(Debug)]
pub(crate) struct Session {
    name: String,
    client: Client,
    /// Deleted on drop, after the session has been closed.
    _profile: TempDir,
}

impl Session {
    /// The window's name, as given to [`Browser::session`].
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The underlying fantoccini client, for commands not wrapped here.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Loads `url` and waits (at most [`WAIT`]) for it to finish loading.
    pub(crate) async fn goto(&self, url: &str) -> anyhow::Result<()> {
        tokio::time::timeout(WAIT, self.client.goto(url))
            .await
            .with_context(|| format!("window {}: loading {url} timed out", self.name))?
            .with_context(|| format!("window {}: cannot load {url}", self.name))
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its result.
    pub(crate) async fn eval(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        tokio::time::timeout(WAIT, self.client.execute(script, args))
            .await
            .with_context(|| format!("window {}: script timed out: {script}", self.name))?
            .with_context(|| format!("window {}: script failed: {script}", self.name))
    }

    /// Waits (at most [`WAIT`]) until `script` returns `true`; `what` describes the condition.
    pub(crate) async fn wait_until(
        &self,
        what: &str,
        script: &str,
        args: Vec<Value>,
    ) -> anyhow::Result<()> {
        self.wait_until_within(WAIT, what, script, args).await
    }

    /// Waits at most `limit` until `script` returns `true`; `what` describes the condition.
    ///
    /// For conditions that legitimately take longer than [`WAIT`], such as a reconnect whose
    /// randomised backoff may add several seconds.
    pub(crate) async fn wait_until_within(
        &self,
        limit: Duration,
        what: &str,
        script: &str,
        args: Vec<Value>,
    ) -> anyhow::Result<()> {
        let polling = async {
            loop {
                if self.eval(script, args.clone()).await? == Value::Bool(true) {
                    return anyhow::Ok(());
                }
                tokio::time::sleep(POLL).await;
            }
        };
        tokio::time::timeout(limit, polling)
            .await
            .with_context(|| {
                format!(
                    "window {}: timed out after {limit:?} waiting for {what}",
                    self.name
                )
            })?
    }

    /// Waits until the page's `window.wsState` equals `state`.
    pub(crate) async fn wait_for_ws_state(&self, state: &str) -> anyhow::Result<()> {
        let what = format!("window.wsState === {state:?}");
        let script = "return window.wsState === arguments[0];";
        self.wait_until(&what, script, vec![json!(state)]).await
    }

    /// Waits until `#message` has a line whose text is exactly `line`; on failure the error
    /// lists the lines it has.
    pub(crate) async fn wait_for_line(&self, line: &str) -> anyhow::Result<()> {
        let script = "return Array.from(document.querySelectorAll('#message > div'))\
                      .some(d => d.textContent === arguments[0]);";
        let waited = self
            .wait_until(&format!("the line {line:?}"), script, vec![json!(line)])
            .await;
        if waited.is_err() {
            let lines = self.eval(MESSAGE_LINES, vec![]).await?;
            return waited.with_context(|| format!("#message has {lines}"));
        }
        waited
    }

    /// Finds the element with id `id`, waiting (at most [`WAIT`]) for it to appear.
    pub(crate) async fn element(&self, id: &str) -> anyhow::Result<fantoccini::elements::Element> {
        let wait = self.client.wait().at_most(WAIT).every(POLL);
        wait.for_element(Locator::Id(id))
            .await
            .with_context(|| format!("window {}: no element #{id}", self.name))
    }

    /// Replaces the text of the input with id `id` by typing `text` into it.
    pub(crate) async fn type_into(&self, id: &str, text: &str) -> anyhow::Result<()> {
        let input = self.element(id).await?;
        let typing = async {
            input.clear().await?;
            input.send_keys(text).await
        };
        tokio::time::timeout(WAIT, typing)
            .await
            .with_context(|| format!("window {}: typing into #{id} timed out", self.name))?
            .with_context(|| format!("window {}: cannot type into #{id}", self.name))
    }

    /// Clicks the element with id `id`.
    pub(crate) async fn click(&self, id: &str) -> anyhow::Result<()> {
        let element = self.element(id).await?;
        tokio::time::timeout(WAIT, element.click())
            .await
            .with_context(|| format!("window {}: clicking #{id} timed out", self.name))?
            .with_context(|| format!("window {}: cannot click #{id}", self.name))
    }

    /// Returns the rendered text of the element with id `id`, as WebDriver sees it.
    pub(crate) async fn text(&self, id: &str) -> anyhow::Result<String> {
        let element = self.element(id).await?;
        tokio::time::timeout(WAIT, element.text())
            .await
            .with_context(|| format!("window {}: reading #{id} timed out", self.name))?
            .with_context(|| format!("window {}: cannot read #{id}", self.name))
    }

    /// Returns the console messages logged since the previous call, as chromedriver reports
    /// them (`{"level": "SEVERE", "message": ..., "source": ..., "timestamp": ...}`).
    pub(crate) async fn console_log(&self) -> anyhow::Result<Vec<Value>> {
        let log = tokio::time::timeout(WAIT, self.client.issue_cmd(BrowserLog))
            .await
            .with_context(|| format!("window {}: reading the console timed out", self.name))?
            .with_context(|| format!("window {}: cannot read the console", self.name))?;
        match log {
            Value::Array(entries) => Ok(entries),
            other => bail!("window {}: unexpected console log {other}", self.name),
        }
    }

    /// Fails if the page logged an error (level `SEVERE`), such as a script error or a
    /// Content-Security-Policy violation, since the previous console read.
    pub(crate) async fn ensure_no_console_errors(&self) -> anyhow::Result<()> {
        self.ensure_no_console_errors_except(&[]).await
    }

    /// Like [`Session::ensure_no_console_errors`], but ignores errors whose message contains
    /// one of `expected`, such as Chromium's "WebSocket connection to ... failed" while a page
    /// retries against a server that is down.
    pub(crate) async fn ensure_no_console_errors_except(
        &self,
        expected: &[&str],
    ) -> anyhow::Result<()> {
        let log = self.console_log().await?;
        let errors: Vec<String> = log
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .filter(|entry| {
                let message = entry["message"].as_str().unwrap_or_default();
                !expected.iter().any(|allowed| message.contains(allowed))
            })
            .map(Value::to_string)
            .collect();
        ensure!(
            errors.is_empty(),
            "window {}: console errors: {errors:#?}",
            self.name
        );
        Ok(())
    }

    /// Saves a screenshot to `dir/<test>-<window>.png` and prints the console log to stderr.
    ///
    /// Failures here are reported, not returned: the test is already failing for a better reason.
    async fn save_artifacts(&self, test: &str, dir: &Path) {
        let name = &self.name;
        let path = dir.join(format!("{test}-{name}.png"));
        let shown = path.display();
        match tokio::time::timeout(WAIT, self.client.screenshot()).await {
            Ok(Ok(png)) => match std::fs::write(&path, png) {
                Ok(()) => eprintln!("window {name}: screenshot saved to {shown}"),
                Err(e) => eprintln!("window {name}: cannot write {shown}: {e}"),
            },
            Ok(Err(e)) => eprintln!("window {name}: no screenshot: {e}"),
            Err(_) => eprintln!("window {name}: screenshot timed out"),
        }
        match self.console_log().await {
            Ok(entries) => {
                eprintln!("window {name}: console log ({} entries):", entries.len());
                for entry in entries {
                    eprintln!("  {entry}");
                }
            }
            Err(e) => eprintln!("{e:#}"),
        }
    }

    /// Ends the WebDriver session, which makes chromedriver stop this Chromium.
    pub(crate) async fn close(self) -> anyhow::Result<()> {
        tokio::time::timeout(WAIT, self.client.close())
            .await
            .with_context(|| format!("window {}: closing timed out", self.name))?
            .with_context(|| format!("window {}: cannot close", self.name))
    }
}

/// Ends a browser test: on failure saves every window's screenshot and console log, then closes
/// every session, and returns the test's outcome (or the first close error).
///
/// Sessions must be closed explicitly: killing chromedriver alone would leave Chromium running.
pub(crate) async fn finish(
    test: &str,
    sessions: Vec<Session>,
    outcome: anyhow::Result<()>,
) -> anyhow::Result<()> {
    if outcome.is_err() {
        let dir = artifacts_dir();
        match std::fs::create_dir_all(&dir) {
            Ok(()) => {
                for session in &sessions {
                    session.save_artifacts(test, &dir).await;
                }
            }
            Err(e) => eprintln!("cannot create {}: {e}", dir.display()),
        }
    }
    let mut closed = Ok(());
    for session in sessions {
        let result = session.close().await;
        if closed.is_ok() {
            closed = result;
        }
    }
    outcome.and(closed)
}

/// `target/browser-artifacts`, under `CARGO_TARGET_DIR` when it is set.
pub(crate) fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("browser-artifacts")
}

/// The Chromium flags from ecosystem.md §4.9: headless, no sandbox (containers), and no
/// background traffic that could slow a test or reach the network.
fn chromium_args(profile: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
    ]
    .map(String::from)
    .into();
    args.push(format!("--user-data-dir={}", profile.display()));
    args
}

/// Asks chromedriver's `GET /status` whether it is ready for new sessions.
///
/// A plain HTTP/1.1 request over TCP is enough here and needs no HTTP client crate.
/// chromedriver answers `Connection: close` but keeps the socket open, so this reads until the
/// body says it is ready, the socket closes, or a second passes.
async fn driver_ready(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request =
        format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let mut chunk = [0; 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(n)) => response.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&response);
        if text.starts_with("HTTP/1.1 200") && text.contains(r#""ready":true"#) {
            return true;
        }
    }
}

/// chromedriver's `POST /session/{id}/se/log` with `{"type": "browser"}`: the console messages
/// collected since the last call (needs the `goog:loggingPrefs` capability).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        let session = session_id.unwrap_or_default();
        base_url.join(&format!("session/{session}/se/log"))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}
