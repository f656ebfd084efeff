//! The tutorial's two chat pages, driven in a real headless Chromium against the real server.
//!
//! Each test starts `channels_server::run` in process on `127.0.0.1:0` (in-memory layer), its
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
use browser_support::{Browser, Session, finish};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An upper bound on a whole test, on top of the per-wait timeouts.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A server replica running in this process.
struct TestServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), channels_server::ServerError>>,
}

impl TestServer {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let config = channels_server::Config::default();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(channels_server::run(
            listener,
            config,
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

/// The texts of the lines in `#message`, as the page's script appended them.
const MESSAGE_LINES: &str =
    "return Array.from(document.querySelectorAll('#message > div'), d => d.textContent);";

/// Waits until `#message` has a line whose text is exactly `line`.
async fn wait_for_line(window: &Session, line: &str) -> anyhow::Result<()> {
    let script = "return Array.from(document.querySelectorAll('#message > div'))\
                  .some(d => d.textContent === arguments[0]);";
    let waited = window
        .wait_until(&format!("the line {line:?}"), script, vec![json!(line)])
        .await;
    if waited.is_err() {
        let lines = window.eval(MESSAGE_LINES, vec![]).await?;
        return waited.with_context(|| format!("#message has {lines}"));
    }
    waited
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
        wait_for_line(window, "[连接成功!]").await?;
    }

    // The tutorial's consumer accepts before it joins the group, so "open" does not prove
    // membership. A window that receives its own group message is a member.
    for window in [one, two] {
        let hello = format!("{} 已加入", window.name());
        window.type_into("txt", &hello).await?;
        window.click("send").await?;
        wait_for_line(window, &format!("组内主动推送消息:{hello}")).await?;
    }

    let text = "你好 <b>x</b>";
    one.type_into("txt", text).await?;
    one.click("send").await?;
    for window in [one, two] {
        wait_for_line(window, &format!("组内主动推送消息:{text}")).await?;
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
    let server = TestServer::start().await?;
    let browser = Browser::start().await?;
    let window = browser.session("one").await?;
    let steps = tokio::time::timeout(TEST_TIMEOUT, single_chat_steps(&server, &window));
    let outcome = steps.await.context("test timed out").and_then(|r| r);
    finish("single_chat_echoes_and_closes", vec![window], outcome).await?;
    server.stop().await
}

async fn single_chat_steps(server: &TestServer, window: &Session) -> anyhow::Result<()> {
    // Echo, then the close button.
    window.goto(&server.url("/chatone")).await?;
    window.wait_for_ws_state("open").await?;
    wait_for_line(window, "[连接成功!]").await?;
    window.type_into("txt", "hello").await?;
    window.click("send").await?;
    wait_for_line(window, "服务端主动推送消息:hello").await?;
    window.click("close").await?;
    wait_for_line(window, "[连接已断开啦!]").await?;
    wait_for_line(window, "[连接已断开!]").await?;
    window.wait_for_ws_state("closed").await?;

    // A fresh page: "exit" makes the server close the socket normally.
    window.goto(&server.url("/chatone")).await?;
    window.wait_for_ws_state("open").await?;
    window.type_into("txt", "exit").await?;
    window.click("send").await?;
    window.wait_for_ws_state("closed").await?;
    wait_for_line(window, "[连接已断开!]").await?;
    let code = window.eval("return window.wsCloseCode;", vec![]).await?;
    ensure!(code == json!(1000), "close code {code}, expected 1000");
    let lines = window.eval(MESSAGE_LINES, vec![]).await?;
    ensure!(
        lines == json!(["[连接成功!]", "[连接已断开!]"]),
        "unexpected lines after exit: {lines}"
    );
    window.ensure_no_console_errors().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_page_without_id_does_not_connect() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let browser = Browser::start().await?;
    let window = browser.session("one").await?;
    let steps = tokio::time::timeout(TEST_TIMEOUT, no_group_steps(&server, &window));
    let outcome = steps.await.context("test timed out").and_then(|r| r);
    finish(
        "group_page_without_id_does_not_connect",
        vec![window],
        outcome,
    )
    .await?;
    server.stop().await
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
