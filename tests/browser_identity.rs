//! Identity end to end in headless Chromium, through nginx: two users log in on Django's own
//! login page (daphne, the seed project's `accounts/`), land on the group chat served by two
//! Rust replicas (different replicas), fetch a connection token from Django, chat, and each line
//! shows the sender's name; a browser that is not signed in is refused and its page says so.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

#[path = "support/browser.rs"]
mod browser_support;
#[path = "support/nginx.rs"]
mod nginx;
#[path = "support/python.rs"]
mod python;
use test_support::redis_server;
#[path = "support/replica.rs"]
mod replica;

use std::time::Duration;

use anyhow::{Context as _, ensure};
use browser_support::{Browser, Session, finish};
use nginx::Nginx;
use python::{Daphne, SeedAccounts, SeedLayer, USERS};
use redis_server::RedisServer;
use replica::Replica;
use serde_json::json;

const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Logs `user` in on Django's login page, which sends the browser on to the group chat.
async fn log_in(window: &Session, nginx: &Nginx, user: &str, password: &str) -> anyhow::Result<()> {
    window
        .goto(&nginx.http_url("/accounts/login/?next=/chatgroup%3FgroupID%3D1"))
        .await?;
    window.type_into("id_username", user).await?;
    window.type_into("id_password", password).await?;
    window.click("sign-in").await?;
    window.wait_for_ws_state("open").await?;
    let who = window.eval("return window.wsUser;", vec![]).await?;
    ensure!(
        who == json!(user),
        "window {}: signed in as {who}",
        window.name()
    );
    let status = window.text("status").await?;
    ensure!(
        status.contains(&format!("connected as {user}")),
        "window {}: status {status:?}",
        window.name()
    );
    Ok(())
}

async fn steps(nginx: &Nginx, replicas: [&Replica; 2], windows: &[Session]) -> anyhow::Result<()> {
    let [alice, bob, stranger] = windows else {
        anyhow::bail!("three windows expected");
    };
    log_in(alice, nginx, USERS[0].0, USERS[0].1).await?;
    log_in(bob, nginx, USERS[1].0, USERS[1].1).await?;
    // least_conn put the two sockets on different replicas.
    // (A replica counts a socket once its connection task runs, a moment after the 101.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let mut open = Vec::new();
        for replica in replicas {
            open.push(replica::metrics(replica.port).await["channels_connections_open"]);
        }
        if open == [1.0, 1.0] {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "sockets open per replica: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The group join follows the accept: a window that reads its own line is a member.
    for (window, name) in [(alice, "alice"), (bob, "bob")] {
        window.type_into("txt", "here").await?;
        window.click("send").await?;
        window.wait_for_line(&format!("{name}: here")).await?;
    }
    alice.type_into("txt", "hello bob").await?;
    alice.click("send").await?;
    for window in [alice, bob] {
        window.wait_for_line("alice: hello bob").await?;
    }
    bob.type_into("txt", "hi alice").await?;
    bob.click("send").await?;
    alice.wait_for_line("bob: hi alice").await?;
    for window in [alice, bob] {
        window.ensure_no_console_errors().await?;
    }
    // Not signed in: the token view says 403, the page says so and does not reconnect.
    stranger
        .goto(&nginx.http_url("/chatgroup?groupID=1"))
        .await?;
    stranger.wait_for_ws_state("refused").await?;
    let status = stranger.text("status").await?;
    ensure!(status.contains("not signed in"), "status {status:?}");
    let connects = stranger.eval("return window.wsConnects;", vec![]).await?;
    ensure!(
        connects == json!(0),
        "a refused page opened {connects} sockets"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state = stranger.eval("return window.wsState;", vec![]).await?;
    ensure!(
        state == json!("refused"),
        "the refused page went on: {state}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_log_in_on_django_and_chat_under_their_names() -> anyhow::Result<()> {
    let redis = RedisServer::start();
    let accounts = SeedAccounts::create().await;
    let django = Daphne::start_with(&SeedLayer::pubsub(&redis.url()), Some(&accounts)).await;
    let url = redis.url();
    let args = [
        "--redis-url",
        url.as_str(),
        "--page-token-url",
        "/ws/token/",
        "--max-connections-per-ip",
        "0",
        "--max-http-connections-per-ip",
        "0",
    ];
    let envs = [(
        "CHANNELS_TOKEN_HS256_SECRET",
        accounts.token_secret.as_str(),
    )];
    let (r0, r1) = tokio::join!(
        Replica::start("r0", &args, &envs),
        Replica::start("r1", &args, &envs),
    );
    let nginx = Nginx::start_with(&[r0.port, r1.port], Some(django.port)).await;
    let browser = Browser::start().await?;
    let mut windows = Vec::new();
    for name in ["alice", "bob", "stranger"] {
        match browser.session(name).await {
            Ok(window) => windows.push(window),
            Err(e) => {
                return finish("two_users_log_in_on_django", windows, Err(e)).await;
            }
        }
    }
    let outcome = tokio::time::timeout(TEST_TIMEOUT, steps(&nginx, [&r0, &r1], &windows))
        .await
        .context("test timed out")
        .and_then(|r| r);
    finish("two_users_log_in_on_django", windows, outcome).await
}
