//! History and recovery across replicas, with real processes: 60 clients through nginx in one
//! group, a publisher at 50 messages a second, and one replica SIGKILLed or drained under
//! them. With `recover=1` every client ends with every message exactly once, in order; without
//! it the same run prints what was lost. Also: a Redis restarted without persistence ends the
//! epoch, and an offset older than the history says `window`.

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a failed unwrap is a failed test; the scenario helpers print what they measured"
)]

#[path = "support/browser.rs"]
mod browser_support;
#[path = "support/nginx.rs"]
mod nginx;
#[path = "support/replica.rs"]
mod replica;

use std::time::{Duration, Instant};

use browser_support::{Browser, finish};
use futures_util::StreamExt;
use nginx::Nginx;
use replica::{Client, Replica, eventually, metrics};
use serde_json::{Value, json};
use test_support::redis_server::RedisServer;
use tokio_tungstenite::tungstenite::Message as Frame;

const PREFIX: &str = "组内主动推送消息:";
const CLIENTS: usize = 60;
/// Messages published, at [`RATE`] a second.
const TOTAL: usize = 250;
const RATE: u64 = 50;
const GROUP: &str = "recovery";

/// Redis, three replicas and nginx in front of them.
struct Deployment {
    redis: RedisServer,
    replicas: Vec<Replica>,
    nginx: Nginx,
}

impl Deployment {
    async fn start(history: bool) -> Deployment {
        let redis = RedisServer::start();
        let url = redis.url();
        let mut args = vec![
            "--redis-url",
            url.as_str(),
            "--drain-timeout-secs",
            "10",
            // The publisher sends 50 frames a second on one socket.
            "--max-messages-per-second",
            "0",
        ];
        if history {
            args.extend(["--history-size", "1000"]);
        }
        let mut replicas = Vec::new();
        for i in 0..3 {
            replicas.push(Replica::start(&format!("r{i}"), &args, &[]).await);
        }
        let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
        let nginx = Nginx::start(&ports).await;
        Deployment {
            redis,
            replicas,
            nginx,
        }
    }
}

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    /// The chat lines, in arrival order (without the `end` lines).
    texts: Vec<String>,
    /// Their offsets, in recovery mode.
    offsets: Vec<u64>,
    /// The recovery frames after reconnects.
    recoveries: Vec<Value>,
    reconnects: usize,
}

/// Full jitter, as the pages: up to 1 s, 2 s, 4 s, ...
fn full_jitter(n: u32) -> Duration {
    let ceiling = 500u64.saturating_mul(1 << n.min(5)).min(15_000);
    Duration::from_millis(rand::random::<u64>() % ceiling)
}

/// One member: reads until it sees `end`; after its connection drops, reconnects through
/// nginx (with `since` in recovery mode) and goes on.
async fn member(base: String, mut client: Client, recover: bool) -> Seen {
    let mut seen = Seen::default();
    let mut position: Option<(u64, String)> = None;
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(20), client.0.next()).await;
            let text = match next {
                Ok(Some(Ok(Frame::Text(text)))) => text.as_str().to_owned(),
                Ok(Some(Ok(Frame::Close(_)) | Err(_)) | None) => break,
                Ok(Some(Ok(_))) => continue,
                Err(_) => return seen,
            };
            let line = if recover {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == "recovery" {
                    seen.recoveries.push(frame);
                    continue;
                }
                let offset = frame["offset"].as_u64().expect("group frames have offsets");
                let epoch = frame["epoch"].as_str().unwrap().to_owned();
                seen.offsets.push(offset);
                position = Some((offset, epoch));
                frame["text"].as_str().unwrap().to_owned()
            } else {
                text
            };
            if line == format!("{PREFIX}end") {
                return seen;
            }
            seen.texts.push(line);
        }
        seen.reconnects += 1;
        let mut retry = 1;
        client = loop {
            assert!(
                Instant::now() < give_up,
                "a member could not reconnect in 60 s"
            );
            tokio::time::sleep(full_jitter(retry)).await;
            retry += 1;
            let url = match (&position, recover) {
                (Some((offset, epoch)), true) => format!("{base}?since={offset}&epoch={epoch}"),
                (None, true) => format!("{base}?history=1000"),
                (_, false) => base.clone(),
            };
            if let Ok(Ok((stream, _))) = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_tungstenite::connect_async(&url),
            )
            .await
            {
                break Client(stream);
            }
        };
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Drain,
}

/// Runs the scenario and returns what every member saw, the orphans' indices first.
async fn run(fault: Fault, recover: bool) -> (Vec<Seen>, usize) {
    let mut lb = Deployment::start(recover).await;
    let base = lb.nginx.ws_url(&format!("/group/{GROUP}/"));
    let first_query = if recover { "?recover=1" } else { "" };
    let mut members = Vec::new();
    for _ in 0..CLIENTS {
        members.push(Client::connect_to_replica(&format!("{base}{first_query}")).await);
    }
    eventually("subscribed", Duration::from_secs(5), || {
        lb.redis.numsub(&[&format!("asgi__group__{GROUP}")]) == [3]
    })
    .await;
    // The publisher sits on r2 directly; the victim is whichever of r0 and r1 holds more.
    let on = |name: &str| members.iter().filter(|(_, r)| r == name).count();
    let victim = if on("r0") >= on("r1") { 0 } else { 1 };
    let victim_name = lb.replicas[victim].name.clone();
    let orphans = on(&victim_name);
    println!("{orphans} of {CLIENTS} members on {victim_name}; fault {fault:?}, recover {recover}");
    let mut ordered: Vec<Client> = Vec::new();
    let mut rest = Vec::new();
    for (client, landed) in members {
        if landed == victim_name {
            ordered.push(client);
        } else {
            rest.push(client);
        }
    }
    ordered.extend(rest);
    let tasks: Vec<_> = ordered
        .into_iter()
        .map(|client| tokio::spawn(member(base.clone(), client, recover)))
        .collect();
    let mut publisher = lb.replicas[2].ws(&format!("/group/{GROUP}/")).await;
    let started = Instant::now();
    for i in 0..TOTAL {
        if i == TOTAL / 5 {
            match fault {
                Fault::Kill => lb.replicas[victim].kill().await,
                Fault::Drain => lb.replicas[victim].signal_term(),
            }
        }
        publisher.send_text(&format!("m{i}")).await;
        // Its own copy paces it and proves the message went through.
        assert_eq!(publisher.recv_text().await, format!("{PREFIX}m{i}"));
        let due = started + Duration::from_millis(1000 * (i as u64 + 1) / RATE);
        tokio::time::sleep_until(due.into()).await;
    }
    // `end` until every member has seen one (a member reconnecting without recovery may miss
    // a few).
    let deadline = Instant::now() + Duration::from_secs(40);
    while tasks.iter().any(|t| !t.is_finished()) {
        assert!(Instant::now() < deadline, "members did not finish");
        publisher.send_text("end").await;
        let _ = publisher.recv_text().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    if fault == Fault::Drain {
        let status = lb.replicas[victim].wait_exit(Duration::from_secs(20)).await;
        assert!(status.success(), "the drained replica exits cleanly");
    }
    let missed: f64 = {
        let mut sum = 0.0;
        for (i, r) in lb.replicas.iter().enumerate() {
            if i != victim {
                sum += metrics(r.port)
                    .await
                    .get("channels_recovery_missed_total")
                    .copied()
                    .unwrap_or(0.0);
            }
        }
        sum
    };
    println!("4010 closes on the surviving replicas: {missed}");
    (seen, orphans)
}

fn expected() -> Vec<String> {
    (0..TOTAL).map(|i| format!("{PREFIX}m{i}")).collect()
}

/// Every member has every message once, in order, with consecutive offsets; every orphan
/// reconnected and recovered.
fn assert_exact(seen: &[Seen], orphans: usize) {
    let expected = expected();
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(
            s.texts, expected,
            "member {i} ({} reconnects)",
            s.reconnects
        );
        let first = s.offsets[0];
        let consecutive: Vec<u64> = (first..first + TOTAL as u64).collect();
        assert_eq!(s.offsets[..TOTAL], consecutive[..], "member {i}'s offsets");
        for recovery in &s.recoveries {
            assert_eq!(recovery["recovered"], json!(true), "member {i}: {recovery}");
        }
    }
    for (i, s) in seen.iter().take(orphans).enumerate() {
        assert!(s.reconnects >= 1, "orphan {i} never reconnected");
        assert!(!s.recoveries.is_empty(), "orphan {i} did not recover");
    }
    let missed: usize = seen.iter().take(orphans).map(|s| s.recoveries.len()).sum();
    println!(
        "orphans recovered {missed} times; all {CLIENTS} members got all {TOTAL} messages once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_members_recover_every_message() {
    let (seen, orphans) = run(Fault::Kill, true).await;
    assert_exact(&seen, orphans);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_replicas_members_recover_every_message() {
    let (seen, orphans) = run(Fault::Drain, true).await;
    assert_exact(&seen, orphans);
}

/// The same crash without recovery: the orphans lose what was sent while they reconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_recovery_a_crash_loses_messages() {
    let (seen, orphans) = run(Fault::Kill, false).await;
    let expected = expected();
    let mut lost = 0;
    for s in &seen {
        // Never a duplicate or a reordering, only gaps.
        let mut it = expected.iter();
        for text in &s.texts {
            assert!(it.any(|e| e == text), "out of order or unknown: {text}");
        }
        lost += expected.len() - s.texts.len();
    }
    let orphan_lost: usize = seen[..orphans]
        .iter()
        .map(|s| expected.len() - s.texts.len())
        .sum();
    println!(
        "without recovery: {lost} messages lost in all ({orphan_lost} by the {orphans} members \
         of the killed replica, {:.1} each)",
        orphan_lost as f64 / orphans.max(1) as f64
    );
    assert!(
        orphan_lost > 0,
        "the crash should cost the orphans something without recovery"
    );
    assert_eq!(lost, orphan_lost, "the other members lose nothing");
}

/// Redis restarted without persistence: the history is gone, and a resuming client hears
/// `epoch`; a client connected through it closes with 4010 at the first message of the new
/// epoch, and an offset older than the history hears `window`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_ends_the_epoch_and_old_offsets_fall_out_of_the_window() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let replica = Replica::start("solo", &["--redis-url", &url, "--history-size", "5"], &[]).await;
    let mut a = replica.ws("/group/epoch/?recover=1").await;
    eventually("subscribed", Duration::from_secs(5), || {
        redis.numsub(&["asgi__group__epoch"]) == [1]
    })
    .await;
    let mut last = (0, String::new());
    for i in 0..8 {
        a.send_text(&format!("x{i}")).await;
        let frame: Value = serde_json::from_str(&a.recv_text().await).unwrap();
        last = (
            frame["offset"].as_u64().unwrap(),
            frame["epoch"].as_str().unwrap().to_owned(),
        );
    }
    let (offset, epoch) = last;
    assert_eq!(offset, 8);
    let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("asgi:h*"));
    assert_eq!(keys.len(), 2, "meta and stream: {keys:?}");
    let mut window = replica
        .ws(&format!("/group/epoch/?since=1&epoch={epoch}"))
        .await;
    let frame: Value = serde_json::from_str(&window.recv_text().await).unwrap();
    assert_eq!(
        frame,
        json!({"type": "recovery", "recovered": false, "reason": "window"})
    );
    let mut fine = replica
        .ws(&format!("/group/epoch/?since=4&epoch={epoch}"))
        .await;
    let frame: Value = serde_json::from_str(&fine.recv_text().await).unwrap();
    assert_eq!(
        frame,
        json!({"type": "recovery", "recovered": true, "missed": 4})
    );
    drop((window, fine));

    redis.restart();
    replica::wait_readyz(&replica, 200, Duration::from_secs(10)).await;
    eventually("resubscribed", Duration::from_secs(5), || {
        redis.numsub(&["asgi__group__epoch"]) == [1]
    })
    .await;
    let mut b = replica
        .ws(&format!("/group/epoch/?since={offset}&epoch={epoch}"))
        .await;
    let frame: Value = serde_json::from_str(&b.recv_text().await).unwrap();
    assert_eq!(
        frame,
        json!({"type": "recovery", "recovered": false, "reason": "epoch"})
    );
    b.send_text("new").await;
    let frame: Value = serde_json::from_str(&b.recv_text().await).unwrap();
    assert_eq!(frame["offset"], 1, "a new epoch starts at 1: {frame}");
    assert_ne!(frame["epoch"], json!(epoch));
    // `a` followed the old epoch: the new one tells it to reconnect.
    assert_eq!(a.expect_close().await.0, 4010);
}

/// Headless Chromium: a group chat page whose replica is killed gets the message sent from
/// another tab meanwhile after its reconnect, once; a page opened afterwards shows the recent
/// history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_recovers_what_was_said_while_its_replica_was_down() -> anyhow::Result<()> {
    let mut lb = Deployment::start(true).await;
    let browser = Browser::start().await?;
    let one = browser.session("one").await?;
    let outcome = async {
        let page = lb.nginx.http_url("/chatgroup?groupID=pages");
        one.goto(&page).await?;
        one.wait_for_ws_state("open").await?;
        one.type_into("txt", "before").await?;
        one.click("send").await?;
        one.wait_for_line(&format!("{PREFIX}before")).await?;
        // Find the replica holding the page by its open-connection gauge.
        let mut holder = None;
        for (i, r) in lb.replicas.iter().enumerate() {
            if metrics(r.port).await["channels_connections_open"] == 1.0 {
                holder = Some(i);
            }
        }
        let holder = holder.ok_or_else(|| anyhow::anyhow!("no replica holds the page"))?;
        // Another tab (a plain client on another replica) speaks while the page's replica is
        // down; the page must show it once after its reconnect.
        let other = (holder + 1) % 3;
        let mut tab = lb.replicas[other].ws("/group/pages/").await;
        lb.replicas[holder].kill().await;
        tab.send_text("while you were away").await;
        assert_eq!(
            tab.recv_text().await,
            format!("{PREFIX}while you were away")
        );
        one.wait_until_within(
            Duration::from_secs(20),
            "the page reconnected",
            "return window.wsConnects === 2 && window.wsState === 'open';",
            vec![],
        )
        .await?;
        one.wait_for_line(&format!("{PREFIX}while you were away"))
            .await?;
        let count = one
            .eval(
                "return Array.from(document.querySelectorAll('#message div'))\
                 .filter(d => d.textContent === arguments[0]).length;",
                vec![json!(format!("{PREFIX}while you were away"))],
            )
            .await?;
        anyhow::ensure!(count == json!(1), "the missed line shows once: {count}");
        let recovery = one.eval("return window.wsRecovery;", vec![]).await?;
        anyhow::ensure!(
            recovery["recovered"] == json!(true) && recovery["missed"] == json!(1),
            "recovery frame: {recovery}"
        );
        // A page opened now shows the conversation so far.
        let two = browser.session("two").await?;
        let fresh = async {
            two.goto(&page).await?;
            two.wait_for_ws_state("open").await?;
            two.wait_for_line(&format!("{PREFIX}before")).await?;
            two.wait_for_line(&format!("{PREFIX}while you were away"))
                .await?;
            anyhow::Ok(())
        }
        .await;
        finish("recovery_fresh_page", vec![two], fresh).await
    }
    .await;
    finish("recovery_page", vec![one], outcome).await
}
