#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
//! WebSocket protocol conformance: the Autobahn|Testsuite cases, run by `kosoku` (PyPI, pinned
//! in `tests/python/requirements.txt`, installed into `.venv` by `scripts/python-venv.sh`),
//! against the real server (reliability-security.md §3.4, T-P1 and T-P2).
//!
//! The server runs in this process with the seed's routes plus a test-only echo route,
//! `autobahn/$`, whose consumer sends every text and binary message back unchanged. It goes
//! through the same router, middleware, handshake, limits and connection driver as the chats;
//! it exists only in this test binary, never in the server.
//!
//! * `autobahn_protocol` (T-P1): 16 MiB messages, no message rate limit (section 9 sends
//!   thousands of messages), sections 1 to 10. The verdicts must equal
//!   `tests/autobahn/expected-protocol.json`: 296 OK, 3 INFORMATIONAL (7.1.6, 7.13.1, 7.13.2),
//!   2 NON-STRICT (6.4.3, 6.4.4), 0 FAILED, the profile of tungstenite's committed baseline.
//! * `autobahn_production_limits` (T-P2): the default (production) configuration, 64 KiB
//!   messages, without section 9 (its messages are larger than that on purpose). Every case must
//!   pass, as `tests/autobahn/expected-production.json` records.
//!
//! Sections 12 and 13 (permessage-deflate) are excluded: the server does not offer compression,
//! and kosoku counts UNIMPLEMENTED as a failure.
//!
//! On a difference the test prints each differing case with kosoku's explanation and keeps the
//! report directory (open its `index.html`). After a deliberate change in behaviour, review the
//! differences and update the expected file by hand; never to hide a regression.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use channels_layer::{ChannelLayer, InMemoryChannelLayer, Message};
use channels_server::consumer::{ClientMessage, Close, Consumer, Context};
use channels_server::{Config, Server, ServerError};
use serde_json::Value as Json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long one kosoku run may take. Both profiles take a few seconds.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The echo route's path, as kosoku requests it.
const ECHO_PATH: &str = "/autobahn/";

/// Sends every message back as it came: the echo server the Autobahn cases expect.
#[derive(Debug, Default)]
struct Echo;

impl Consumer for Echo {
    async fn receive(&mut self, cx: &mut Context, msg: ClientMessage) -> Result<(), Close> {
        match msg {
            ClientMessage::Text(text) => cx.send_text(text),
            ClientMessage::Bytes(bytes) => cx.send_bytes(bytes),
        }
    }

    async fn event(&mut self, _cx: &mut Context, _event: Message) -> Result<(), Close> {
        Ok(())
    }
}

/// The server under test, on 127.0.0.1 with a free port.
struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), ServerError>>,
}

async fn start(config: Config) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer: Arc<dyn ChannelLayer> = Arc::new(InMemoryChannelLayer::default());
    // The seed's routes come first, as in production; the echo route only answers its path.
    let routes = channels_server::tutorial::routes()
        .route("autobahn/$", Echo::default)
        .unwrap();
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    let server = Server::new(&config, layer, routes);
    let handle = tokio::spawn(server.serve(listener, async move { signal.cancelled().await }));
    Running {
        addr,
        shutdown,
        handle,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the server did not stop in time")
            .expect("the server task panicked")
            .unwrap();
    }
}

/// `.venv/bin/kosoku`, or a failure that says how to install it.
fn kosoku() -> PathBuf {
    let path = repo_root().join(".venv/bin/kosoku");
    assert!(
        path.exists(),
        "{} not found: run scripts/python-venv.sh from the repository root; it installs the \
         kosoku version pinned in tests/python/requirements.txt (scripts/test.sh does it)",
        path.display()
    );
    path
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Per case: the message-exchange verdict and the closing-handshake verdict, as kosoku's
/// `index.json` (Autobahn's report format) gives them, without durations or file names.
type Verdicts = BTreeMap<String, (String, String)>;

/// Runs kosoku's fuzzing client against the echo route, without the excluded cases, and
/// returns its verdicts and the directory holding its reports.
async fn run_kosoku(addr: SocketAddr, exclude: &[&str]) -> (Verdicts, tempfile::TempDir) {
    let reports = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(kosoku());
    command
        .args(["-m", "fuzzingclient", &format!("ws://{addr}{ECHO_PATH}")])
        .args(["-p", "2", "-o"])
        .arg(reports.path());
    for pattern in exclude {
        command.args(["-x", pattern]);
    }
    let started = Instant::now();
    let output = tokio::time::timeout(
        RUN_TIMEOUT,
        command.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("kosoku did not finish within {RUN_TIMEOUT:?}"))
    .expect("kosoku could not be started");
    eprintln!(
        "kosoku ({}) took {:.1} s: {}",
        output.status,
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&output.stdout).trim()
    );
    let index = reports.path().join("index.json");
    let Ok(text) = std::fs::read_to_string(&index) else {
        panic!(
            "kosoku wrote no {} ({}); its stderr:\n{}",
            index.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    };
    (verdicts(&serde_json::from_str(&text).unwrap()), reports)
}

/// The verdicts of an Autobahn `index.json`: `{agent: {case: {behavior, behaviorClose, ..}}}`.
fn verdicts(index: &Json) -> Verdicts {
    let agents = index.as_object().expect("index.json is an object");
    assert_eq!(agents.len(), 1, "one agent (the server) in {index}");
    let cases = agents.values().next().unwrap().as_object().unwrap();
    cases
        .iter()
        .map(|(case, result)| {
            let field = |name: &str| result[name].as_str().unwrap().to_owned();
            (case.clone(), (field("behavior"), field("behaviorClose")))
        })
        .collect()
}

/// The committed expected verdicts: `{"cases": {case: {"behavior", "behaviorClose"}}}`.
fn expected(name: &str) -> Verdicts {
    let path = repo_root().join("tests/autobahn").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let json: Json = serde_json::from_str(&text).unwrap();
    json["cases"]
        .as_object()
        .expect("a \"cases\" object")
        .iter()
        .map(|(case, v)| {
            let field = |name: &str| v[name].as_str().unwrap().to_owned();
            (case.clone(), (field("behavior"), field("behaviorClose")))
        })
        .collect()
}

/// How many cases got each verdict pair, for the log and the failure message.
fn summary(verdicts: &Verdicts) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (behavior, close) in verdicts.values() {
        *counts.entry(format!("{behavior}/{close}")).or_default() += 1;
    }
    counts
}

/// Fails, listing every case whose verdicts differ from `expected_file`, with kosoku's
/// explanation from the case's report. Keeps the reports for a look at the HTML.
fn assert_verdicts(actual: &Verdicts, expected_file: &str, reports: tempfile::TempDir) {
    let expected = expected(expected_file);
    eprintln!("verdicts: {:?}", summary(actual));
    let cases: BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
    let differences: Vec<_> = cases
        .into_iter()
        .map(|case| (case, expected.get(case), actual.get(case)))
        .filter(|(_, want, got)| want != got)
        .collect();
    if differences.is_empty() {
        return;
    }
    let reports = reports.keep();
    let mut message = format!(
        "{} Autobahn cases differ from tests/autobahn/{expected_file} (expected {:?}, got {:?}); \
         reports kept in {}:\n",
        differences.len(),
        summary(&expected),
        summary(actual),
        reports.display()
    );
    for (case, want, got) in &differences {
        message.push_str(&format!(
            "  {case}: expected {}, got {}{}\n",
            pair(*want),
            pair(*got),
            explanation(&reports, case)
        ));
    }
    panic!("{message}");
}

/// `behavior/behaviorClose`, or `no result`.
fn pair(verdict: Option<&(String, String)>) -> String {
    verdict.map_or_else(|| "no result".to_owned(), |(b, c)| format!("{b}/{c}"))
}

/// Whether a verdict pair passes: Autobahn's (and kosoku's) rule.
fn passes((behavior, close): &(String, String)) -> bool {
    ["OK", "NON-STRICT", "INFORMATIONAL"].contains(&behavior.as_str())
        && ["OK", "INFORMATIONAL"].contains(&close.as_str())
}

/// kosoku's prose for one case ("result", "resultClose"), from its per-case report.
fn explanation(reports: &Path, case: &str) -> String {
    let suffix = format!("_case_{}.json", case.replace('.', "_"));
    let Some(report) = std::fs::read_dir(reports)
        .into_iter()
        .flatten()
        .flatten()
        .find(|entry| entry.file_name().to_string_lossy().ends_with(&suffix))
    else {
        return String::new();
    };
    let Ok(json) = std::fs::read_to_string(report.path())
        .map_err(|_| ())
        .and_then(|text| serde_json::from_str::<Json>(&text).map_err(|_| ()))
    else {
        return String::new();
    };
    let closer = if json["closedByMe"] == Json::Bool(true) {
        "kosoku"
    } else {
        "the server"
    };
    format!(
        ": {} {}. {closer} closed first; kosoku's close code {}, the server's {}",
        json["result"].as_str().unwrap_or_default(),
        json["resultClose"].as_str().unwrap_or_default(),
        json["localCloseCode"],
        json["remoteCloseCode"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_protocol() {
    // The expected file holds tungstenite's baseline profile, and must go on doing so.
    let counts = summary(&expected("expected-protocol.json"));
    let baseline = [
        ("INFORMATIONAL/INFORMATIONAL", 3),
        ("NON-STRICT/OK", 2),
        ("OK/OK", 296),
    ];
    assert_eq!(counts, baseline.map(|(k, n)| (k.to_owned(), n)).into());
    let mut config = Config::default();
    // Section 9 sends messages of up to 16 MiB, and thousands of small ones.
    config.max_message_size = 16 * 1024 * 1024;
    config.max_queued_bytes = 64 * 1024 * 1024;
    config.max_messages_per_second = 0;
    let server = start(config).await;
    let (actual, reports) = run_kosoku(server.addr, &["12.*", "13.*"]).await;
    server.stop().await;
    assert_verdicts(&actual, "expected-protocol.json", reports);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_production_limits() {
    // T-P2 is "0 FAILED": the expected file may hold passing verdicts only.
    let expected = expected("expected-production.json");
    let failing: Vec<_> = expected.iter().filter(|(_, v)| !passes(v)).collect();
    assert!(
        failing.is_empty(),
        "expected-production.json expects failures: {failing:?}"
    );
    let server = start(Config::default()).await;
    let (actual, reports) = run_kosoku(server.addr, &["9.*", "12.*", "13.*"]).await;
    server.stop().await;
    assert_verdicts(&actual, "expected-production.json", reports);
}
