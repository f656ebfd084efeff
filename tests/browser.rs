//! The tutorial's two chat pages, driven in a real headless Chromium against the real server.
//!
//! Each test starts `channels_server::serve` (the tutorial app) in process on `127.0.0.1:0` (in-memory layer), its
//! own chromedriver and one Chromium per window, and waits on the page's `window.wsState` flag
//! the way Channels' Selenium tests wait on `websocketConnected`. A missing Chromium or
//! chromedriver fails the test with the Debian packages to install; nothing is skipped.
//!
//! Test steps return errors instead of panicking, so that `browser_support::finish` can save a
//! screenshot and the console log of every window and close every Chromium before failing.

#[path = "support/browser.rs"]
mod browser_support;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use browser_support::{Browser, MESSAGE_LINES, Session, finish};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An upper bound on a whole test, on top of the per-wait timeouts.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a replacement server keeps trying to bind the port of the one it replaces.
const REBIND: Duration = Duration::from_secs(2);

/// How long a page may take to reconnect once a server listens again. The retries after a
/// drain wait at most 0.5 s, then 2 s, 4 s and 8 s (full jitter), so even a page whose first
/// two retries hit the closed port is back well within this.
const RECONNECT_WAIT: Duration = Duration::from_secs(20);

/// The console error Chromium logs for each refused WebSocket connection while a server is down.
const WS_FAILED: &str = "WebSocket connection to";

/// A server replica running in this process.
struct TestServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), channels_server::ServerError>>,
}

impl TestServer {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::serve(listener)
    }

    /// Starts a server on `addr`, the address of a server that has just stopped, retrying the
    /// bind for up to [`REBIND`] in case the old listener is not yet gone.
    async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let deadline = tokio::time::Instant::now() + REBIND;
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => return Self::serve(listener),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("cannot bind {addr} again"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn serve(listener: tokio::net::TcpListener) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let config = channels_server::Config::default();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(channels_server::serve(
            listener,
            config,
            channels_server::tutorial::app(),
            shutdown.clone().cancelled_owned(),
        ));
        Ok(Self {
            addr,
            shutdown,
            task,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Cancels the server and waits for it to return.
    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let result = tokio::time::timeout(browser_support::WAIT, self.task)
            .await
            .context("server did not stop in time")?;
        result
            .context("server task panicked")?
            .context("server failed")
    }
}

/// Runs `steps` in one window (named "one") against a fresh in-process server, within
/// [`TEST_TIMEOUT`]; `finish` reports a failure as test `name`, then the server stops.
async fn one_window(
    name: &str,
    steps: impl AsyncFnOnce(&TestServer, &Session) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let browser = Browser::start().await?;
    let window = browser.session("one").await?;
    let steps = tokio::time::timeout(TEST_TIMEOUT, steps(&server, &window));
    let outcome = steps.await.context("test timed out").and_then(|r| r);
    finish(name, vec![window], outcome).await?;
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_chat_reaches_both_windows() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let browser = Browser::start().await?;
    let one = browser.session("one").await?;
    let two = match browser.session("two").await {
        Ok(two) => two,
        Err(e) => return finish("group_chat_reaches_both_windows", vec![one], Err(e)).await,
    };
    let steps = tokio::time::timeout(TEST_TIMEOUT, group_chat_steps(&server, &one, &two));
    let outcome = steps.await.context("test timed out").and_then(|r| r);
    finish("group_chat_reaches_both_windows", vec![one, two], outcome).await?;
    server.stop().await
}

async fn group_chat_steps(server: &TestServer, one: &Session, two: &Session) -> anyhow::Result<()> {
    for window in [one, two] {
        window.goto(&server.url("/chatgroup?groupID=t")).await?;
        let title = window.text("group-title").await?;
        ensure!(
            title == "群组内聊天[ 群ID: t ]",
            "window {}: title {title:?}",
            window.name()
        );
    }
    for window in [one, two] {
        window.wait_for_ws_state("open").await?;
        window.wait_for_line("[连接成功!]").await?;
    }

    // The tutorial's consumer accepts before it joins the group, so "open" does not prove
    // membership. A window that receives its own group message is a member.
    for window in [one, two] {
        let hello = format!("{} 已加入", window.name());
        window.type_into("txt", &hello).await?;
        window.click("send").await?;
        window
            .wait_for_line(&format!("组内主动推送消息:{hello}"))
            .await?;
    }

    let text = "你好 <b>x</b>";
    one.type_into("txt", text).await?;
    one.click("send").await?;
    for window in [one, two] {
        window
            .wait_for_line(&format!("组内主动推送消息:{text}"))
            .await?;
        let markup = window
            .eval(
                "return document.querySelector('#message b') !== null;",
                vec![],
            )
            .await?;
        ensure!(
            markup == json!(false),
            "window {}: the message became HTML",
            window.name()
        );
        window.ensure_no_console_errors().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_chat_echoes_and_closes() -> anyhow::Result<()> {
    one_window("single_chat_echoes_and_closes", single_chat_steps).await
}

async fn single_chat_steps(server: &TestServer, window: &Session) -> anyhow::Result<()> {
    // Echo, then the close button.
    window.goto(&server.url("/chatone")).await?;
    window.wait_for_ws_state("open").await?;
    window.wait_for_line("[连接成功!]").await?;
    window.type_into("txt", "hello").await?;
    window.click("send").await?;
    window.wait_for_line("服务端主动推送消息:hello").await?;
    window.click("close").await?;
    window.wait_for_line("[连接已断开啦!]").await?;
    window.wait_for_line("[连接已断开!]").await?;
    window.wait_for_ws_state("closed").await?;

    // A fresh page: "exit" makes the server close the socket normally.
    window.goto(&server.url("/chatone")).await?;
    window.wait_for_ws_state("open").await?;
    window.type_into("txt", "exit").await?;
    window.click("send").await?;
    window.wait_for_ws_state("closed").await?;
    window.wait_for_line("[连接已断开!]").await?;
    let code = window.eval("return window.wsCloseCode;", vec![]).await?;
    ensure!(code == json!(1000), "close code {code}, expected 1000");
    ensure_exited_cleanly(window).await
}

/// After "exit": `#message` shows only the open and the close line, and the console is clean.
async fn ensure_exited_cleanly(window: &Session) -> anyhow::Result<()> {
    let lines = window.eval(MESSAGE_LINES, vec![]).await?;
    ensure!(
        lines == json!(["[连接成功!]", "[连接已断开!]"]),
        "unexpected lines after exit: {lines}"
    );
    window.ensure_no_console_errors().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_page_without_id_does_not_connect() -> anyhow::Result<()> {
    one_window("group_page_without_id_does_not_connect", no_group_steps).await
}

async fn no_group_steps(server: &TestServer, window: &Session) -> anyhow::Result<()> {
    window.goto(&server.url("/chatgroup")).await?;
    let notice = window.text("notice").await?;
    ensure!(notice.contains("groupID"), "notice {notice:?}");
    // `goto` returns after the load event, so the deferred scripts have run; check that they
    // were allowed to (CSP) and that the page script chose not to connect.
    let loaded = "return typeof window.channelsChat === 'object';";
    window
        .wait_until("the chat scripts", loaded, vec![])
        .await?;
    let state = window.eval("return window.wsState;", vec![]).await?;
    ensure!(state == json!("idle"), "wsState {state}, expected \"idle\"");
    let lines = window.eval(MESSAGE_LINES, vec![]).await?;
    ensure!(lines == json!([]), "unexpected lines: {lines}");
    window.ensure_no_console_errors().await
}

/// What `#status` says while a page waits to retry, as a JavaScript regular expression.
const RECONNECTING_STATUS: &str =
    r"^重新连接中 \(第 \d+ 次, \d+\.\d 秒后\) / reconnecting \(attempt \d+, in \d+\.\d s\)$";

/// The page's connection counters, read together.
const WS_COUNTERS: &str = "return { state: window.wsState, code: window.wsCloseCode, \
                           connects: window.wsConnects, delays: window.wsReconnectDelays, \
                           status: document.getElementById('status').textContent };";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_page_reconnects_after_the_server_goes_away() -> anyhow::Result<()> {
    let mut server = Some(TestServer::start().await?);
    let browser = Browser::start().await?;
    let window = browser.session("one").await?;
    let steps = tokio::time::timeout(TEST_TIMEOUT, reconnect_steps(&mut server, &window));
    let outcome = steps.await.context("test timed out").and_then(|r| r);
    finish(
        "group_page_reconnects_after_the_server_goes_away",
        vec![window],
        outcome,
    )
    .await?;
    match server {
        Some(server) => server.stop().await,
        None => Ok(()),
    }
}

/// Replaces the server in `slot` by a new one on the same address, the way a restarted replica
/// comes back: the old one drains (1001 to every socket) and returns before the new one binds.
async fn restart(slot: &mut Option<TestServer>) -> anyhow::Result<()> {
    let old = slot.take().context("no server to restart")?;
    let addr = old.addr;
    old.stop().await?;
    *slot = Some(TestServer::start_on(addr).await?);
    Ok(())
}

async fn reconnect_steps(server: &mut Option<TestServer>, window: &Session) -> anyhow::Result<()> {
    let url = server
        .as_ref()
        .context("no server")?
        .url("/chatgroup?groupID=r");
    window.goto(&url).await?;
    window.wait_for_ws_state("open").await?;
    window.wait_for_line("[连接成功!]").await?;
    let status = window.text("status").await?;
    ensure!(status == "已连接 / connected", "status {status:?}");
    window.type_into("txt", "before").await?;
    window.click("send").await?;
    window.wait_for_line("组内主动推送消息:before").await?;

    restart(server).await?;
    let reconnected = "return window.wsConnects === 2 && window.wsState === 'open';";
    let waited = window
        .wait_until_within(RECONNECT_WAIT, "the second open", reconnected, vec![])
        .await;
    if waited.is_err() {
        let counters = window.eval(WS_COUNTERS, vec![]).await?;
        let lines = window.eval(MESSAGE_LINES, vec![]).await?;
        return waited.with_context(|| format!("page {counters}, #message has {lines}"));
    }
    let counters = window.eval(WS_COUNTERS, vec![]).await?;
    eprintln!("reconnected: {counters}");
    let delays = counters["delays"].as_array().context("no delays")?;
    ensure!(
        !delays.is_empty(),
        "reconnected without a delay: {counters}"
    );
    // The first retry after a drain (1001) is jittered within [0, 500) ms.
    let first = delays[0].as_f64().context("delay is not a number")?;
    ensure!(
        (0.0..500.0).contains(&first),
        "first delay after 1001: {counters}"
    );
    ensure!(
        counters["status"] == "已连接 / connected",
        "status after reconnecting: {counters}"
    );

    // The server joins the group from the path on connect, so the page is a member again.
    window.type_into("txt", "after").await?;
    window.click("send").await?;
    window.wait_for_line("组内主动推送消息:after").await?;
    let lines = window.eval(MESSAGE_LINES, vec![]).await?;
    let opened = lines
        .as_array()
        .context("no lines")?
        .iter()
        .filter(|line| *line == "[连接成功!]")
        .count();
    ensure!(opened == 2, "expected two [连接成功!] lines: {lines}");

    // Take the server away for good: the page keeps retrying until the close button, which
    // stops it whether a socket is connecting or a retry is waiting.
    let last = server.take().context("no server")?;
    last.stop().await?;
    let retrying = "const status = document.getElementById('status').textContent; \
                    return window.wsState === 'reconnecting' \
                    && new RegExp(arguments[0]).test(status);";
    let shown = json!(RECONNECTING_STATUS);
    let waited = window
        .wait_until("a retry shown in #status", retrying, vec![shown])
        .await;
    if waited.is_err() {
        let counters = window.eval(WS_COUNTERS, vec![]).await?;
        return waited.with_context(|| format!("page {counters}"));
    }
    window.click("close").await?;
    window.wait_for_ws_state("closed").await?;
    let stopped = window.eval(WS_COUNTERS, vec![]).await?;
    // Wait longer than the last delay chosen: a retry that survived the button would be due.
    let last_delay = stopped["delays"]
        .as_array()
        .and_then(|delays| delays.last())
        .and_then(Value::as_u64)
        .context("no delays")?;
    tokio::time::sleep(Duration::from_millis(last_delay + 1000)).await;
    let later = window.eval(WS_COUNTERS, vec![]).await?;
    eprintln!("after the close button: {later}");
    ensure!(
        later["delays"] == stopped["delays"] && later["state"] == "closed",
        "the page kept reconnecting after the close button: {stopped} then {later}"
    );
    ensure!(later["connects"] == 2, "connects {later}");
    let status = later["status"].as_str().unwrap_or_default();
    ensure!(
        status.starts_with("已断开 / disconnected"),
        "status {later}"
    );
    window.ensure_no_console_errors_except(&[WS_FAILED]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_page_does_not_reconnect_after_exit() -> anyhow::Result<()> {
    one_window("echo_page_does_not_reconnect_after_exit", exit_steps).await
}

async fn exit_steps(server: &TestServer, window: &Session) -> anyhow::Result<()> {
    window.goto(&server.url("/chatone")).await?;
    window.wait_for_ws_state("open").await?;
    window.type_into("txt", "exit").await?;
    window.click("send").await?;
    window.wait_for_ws_state("closed").await?;
    // A reconnect would have been scheduled at once; give it time to happen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counters = window.eval(WS_COUNTERS, vec![]).await?;
    ensure!(counters["code"] == 1000, "close code: {counters}");
    ensure!(
        counters["connects"] == 1,
        "the page reconnected: {counters}"
    );
    ensure!(
        counters["delays"] == json!([]),
        "a retry was scheduled: {counters}"
    );
    ensure!(counters["state"] == "closed", "state: {counters}");
    ensure!(
        counters["status"] == "已断开 / disconnected (1000)",
        "status: {counters}"
    );
    ensure_exited_cleanly(window).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_delays_are_spread_and_capped() -> anyhow::Result<()> {
    one_window("backoff_delays_are_spread_and_capped", backoff_steps).await
}

/// Draws `arguments[2]` delays for retry `arguments[0]` after close code `arguments[1]` with
/// the page's own function and `Math.random`.
const DRAWS: &str = "const f = window.channelsChat.backoffDelay; \
                     return Array.from({ length: arguments[2] }, \
                                       () => f(arguments[0], arguments[1]));";

async fn backoff_steps(server: &TestServer, window: &Session) -> anyhow::Result<()> {
    // The group page without an id loads the scripts and opens no socket.
    window.goto(&server.url("/chatgroup")).await?;
    let loaded = "return typeof window.channelsChat === 'object';";
    window
        .wait_until("the chat scripts", loaded, vec![])
        .await?;
    let draws = |attempt: u32, code: u16| {
        let args = vec![json!(attempt), json!(code), json!(1000)];
        async move {
            let value = window.eval(DRAWS, args).await?;
            let delays: Vec<f64> = serde_json::from_value(value)?;
            anyhow::Ok(delays)
        }
    };

    // R-07: no 100 ms bucket holds more than 20% of 1,000 draws, for retry 3 ([0, 4 s)).
    let delays = draws(3, 1006).await?;
    ensure!(delays.len() == 1000, "{} draws", delays.len());
    ensure!(
        delays
            .iter()
            .all(|d| (0.0..4000.0).contains(d) && d.fract() == 0.0),
        "a delay outside [0, 4000) ms: {delays:?}"
    );
    let mut buckets = [0_usize; 40];
    for delay in &delays {
        // In range and whole, as checked above, so the cast is exact.
        let bucket = (*delay as usize) / 100;
        buckets[bucket] += 1;
    }
    let fullest = buckets.iter().copied().max().unwrap_or_default();
    ensure!(
        fullest <= 200,
        "a 100 ms bucket holds {fullest} of 1000: {buckets:?}"
    );
    // Full jitter uses the whole window: both halves are well populated.
    let low = delays.iter().filter(|d| **d < 2000.0).count();
    ensure!((350..=650).contains(&low), "{low} of 1000 draws below 2 s");

    // Bounded by the cap at every retry, and the drain's first retry stays under 500 ms.
    for attempt in 1..=12 {
        let ceiling = 500.0 * 2_f64.powi(i32::try_from(attempt)?);
        let bound = ceiling.min(15_000.0);
        let delays = draws(attempt, 1013).await?;
        ensure!(
            delays.iter().all(|d| (0.0..bound).contains(d)),
            "retry {attempt}: a delay outside [0, {bound}) ms"
        );
    }
    for code in [1001, 1012] {
        let delays = draws(1, code).await?;
        ensure!(
            delays.iter().all(|d| (0.0..500.0).contains(d)),
            "first retry after {code}: a delay outside [0, 500) ms"
        );
    }

    // The bounds with a fixed random source.
    let fixed = "const f = window.channelsChat.backoffDelay; \
                 return [f(3, 1006, () => 0), f(3, 1006, () => 0.999999), \
                         f(40, 1006, () => 0.999999), f(1, 1001, () => 0.999999)];";
    let edges = window.eval(fixed, vec![]).await?;
    ensure!(edges == json!([0, 3999, 14999, 499]), "edges {edges}");
    window.ensure_no_console_errors().await
}
