//! The load-balanced deployment, without Docker: a redis-server, three replica processes and
//! nginx running the repository's own `deploy/nginx/nginx.conf` (only its ports substituted).

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

#[path = "support/browser.rs"]
mod browser_support;
#[path = "support/nginx.rs"]
mod nginx;
use test_support::redis_server;
#[path = "support/replica.rs"]
mod replica;

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use browser_support::{Browser, finish};
use futures_util::StreamExt;
use nginx::Nginx;
use redis_server::RedisServer;
use replica::{Client, Replica, eventually, metrics};

const PREFIX: &str = "组内主动推送消息:";

/// Redis, three replicas and nginx in front of them.
struct Deployment {
    redis: RedisServer,
    replicas: Vec<Replica>,
    nginx: Nginx,
}

impl Deployment {
    async fn start() -> Deployment {
        let redis = RedisServer::start();
        let mut replicas = Vec::new();
        for i in 0..3 {
            replicas.push(Replica::start(&format!("r{i}"), &replica_args(&redis), &[]).await);
        }
        let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
        let nginx = Nginx::start(&ports).await;
        Deployment {
            redis,
            replicas,
            nginx,
        }
    }

    /// A client through nginx, and the replica it landed on.
    async fn connect(&self, path: &str) -> (Client, String) {
        Client::connect_to_replica(&self.nginx.ws_url(path)).await
    }

    fn index_of(&self, name: &str) -> usize {
        self.replicas.iter().position(|r| r.name == name).unwrap()
    }

    /// Restarts replica `i` on its old port (nginx's upstream list is fixed).
    async fn restart(&mut self, i: usize) {
        let port = self.replicas[i].port;
        let name = self.replicas[i].name.clone();
        self.replicas[i] = Replica::start_on(&name, port, &replica_args(&self.redis), &[]).await;
    }
}

fn replica_args(redis: &RedisServer) -> Vec<&'static str> {
    // Leaked once per replica start: tiny, and it keeps Replica::start's signature simple.
    let url: &'static str = Box::leak(redis.url().into_boxed_str());
    vec!["--redis-url", url, "--drain-timeout-secs", "10"]
}

async fn expect_chat(client: &mut Client, text: &str) {
    assert_eq!(client.recv_text().await, format!("{PREFIX}{text}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_chat_through_nginx_spans_the_replicas_and_metrics_count_it() {
    let lb = Deployment::start().await;
    let mut clients = Vec::new();
    let mut landed = Vec::new();
    for _ in 0..6 {
        let (client, replica) = lb.connect("/group/lb/").await;
        landed.push(replica);
        clients.push(client);
    }
    let distinct: HashSet<&String> = landed.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "least_conn spreads the sockets: {landed:?}"
    );
    clients[0].send_text("hello").await;
    for client in &mut clients {
        expect_chat(client, "hello").await;
    }
    // Pages go through the same nginx; the metrics do not (review defect 9).
    assert_eq!(
        replica::http_status(lb.nginx.port, "/chatgroup?groupID=lb").await,
        Some(200)
    );
    assert_eq!(
        replica::http_status(lb.nginx.port, "/metrics").await,
        Some(404)
    );
    assert_eq!(
        replica::http_status(lb.replicas[0].port, "/metrics").await,
        Some(200)
    );

    // Each replica counts its own connections and frames; together they saw everything.
    let mut total: HashMap<String, f64> = HashMap::new();
    for r in &lb.replicas {
        for (k, v) in metrics(r.port).await {
            *total.entry(k).or_default() += v;
        }
    }
    assert_eq!(total["channels_connections_total"], 6.0);
    assert_eq!(total["channels_connections_open"], 6.0);
    assert_eq!(total["channels_messages_received_total"], 1.0);
    assert_eq!(total["channels_messages_sent_total"], 6.0);
    assert_eq!(total["channels_group_sends_total"], 1.0);
    assert_eq!(total["channels_layer_ready"], 3.0);
    assert_eq!(lb.redis.numsub(&["asgi__group__lb"]), [3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_drains_with_1001_and_everyone_keeps_chatting() {
    let mut lb = Deployment::start().await;
    let mut clients: Vec<(Client, String)> = Vec::new();
    for _ in 0..9 {
        clients.push(lb.connect("/group/roll/").await);
    }
    for round in 0..3 {
        let victim = lb.replicas[round].name.clone();
        let before = metrics(lb.replicas[round].port).await;
        lb.replicas[round].signal_term();
        // Every client of the draining replica gets 1001 (never 1006), and reconnects through
        // nginx to a live replica.
        for (client, on) in &mut clients {
            if *on != victim {
                continue;
            }
            let (code, _) = client.expect_close().await;
            assert_eq!(code, 1001, "a client of {victim}");
            let (fresh, landed) =
                Client::connect_to_replica(&lb.nginx.ws_url("/group/roll/")).await;
            assert_ne!(
                landed, victim,
                "nginx sent a new socket to the draining replica"
            );
            *client = fresh;
            *on = landed;
        }
        let status = lb.replicas[round].wait_exit(Duration::from_secs(12)).await;
        assert!(status.success(), "{victim} exited with {status}");
        let drained = before["channels_connections_open"];
        assert!(drained >= 1.0, "{victim} held no client before the drain");
        // Messages sent after the reconnections reach every member.
        clients[round].0.send_text(&format!("round{round}")).await;
        for (client, _) in &mut clients {
            expect_chat(client, &format!("round{round}")).await;
        }
        lb.restart(round).await;
    }
    // The restarted replicas take new sockets again.
    let (_client, landed) = lb.connect("/group/roll/").await;
    assert!(lb.index_of(&landed) < 3);
}

/// The pages' reconnect delay before retry `n` (1, 2, ...): full jitter, uniform in
/// `[0, min(CAP, BASE * 2^n))` (`channels_web::reconnect`).
fn full_jitter(n: u32) -> Duration {
    use channels_web::reconnect::{BASE_MS, CAP_MS};
    let ceiling = u64::from(CAP_MS.min(BASE_MS.saturating_mul(1 << n.min(16))));
    let random = std::collections::hash_map::RandomState::new().hash_one(n);
    Duration::from_millis(random % ceiling.max(1))
}

/// R-05 `replica_crash`: SIGKILL one replica under its clients. They see the connection drop
/// (1006), reconnect through nginx with the pages' backoff and land on the others; the killed
/// replica's subscriptions vanish from Redis; group messages reach everyone again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_replica_reconnect_elsewhere_and_its_subscriptions_vanish() {
    const CLIENTS: usize = 60;
    let mut lb = Deployment::start().await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(lb.connect("/group/crash/").await);
    }
    eventually("subscribed", Duration::from_secs(5), || {
        lb.redis.numsub(&["asgi__group__crash"]) == [3]
    })
    .await;
    let victim = clients[0].1.clone();
    let (orphans, mut survivors): (Vec<_>, Vec<_>) =
        clients.into_iter().partition(|(_, on)| *on == victim);
    println!("{} of {CLIENTS} clients on {victim}", orphans.len());

    let v = lb.index_of(&victim);
    lb.replicas[v].kill().await;
    let killed = Instant::now();
    let url = lb.nginx.ws_url("/group/crash/");
    let reconnects: Vec<_> = orphans
        .into_iter()
        .map(|(mut client, _)| {
            let url = url.clone();
            tokio::spawn(async move {
                // No close frame arrives: the stream just ends (what a browser reports as 1006).
                if let Ok(Some(Ok(frame))) =
                    tokio::time::timeout(Duration::from_secs(5), client.0.next()).await
                {
                    panic!("expected the connection to drop, got {frame:?}");
                }
                let mut retry = 1;
                loop {
                    tokio::time::sleep(full_jitter(retry)).await;
                    let attempt = tokio::time::timeout(
                        Duration::from_secs(5),
                        tokio_tungstenite::connect_async(&url),
                    )
                    .await;
                    if let Ok(Ok((stream, response))) = attempt {
                        let landed = response.headers()["x-channels-replica"]
                            .to_str()
                            .unwrap()
                            .to_owned();
                        return (Client(stream), landed, killed.elapsed());
                    }
                    retry += 1;
                }
            })
        })
        .collect();
    eventually(
        "the killed replica's subscription gone",
        Duration::from_secs(5),
        || lb.redis.numsub(&["asgi__group__crash"]) == [2],
    )
    .await;
    let mut times = Vec::new();
    for task in reconnects {
        let (client, landed, took) = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("every client reconnects within 30 s")
            .unwrap();
        assert_ne!(landed, victim);
        times.push(took);
        survivors.push((client, landed));
    }
    times.sort();
    let p95 = times[(times.len() * 95).div_ceil(100) - 1];
    println!(
        "reconnected after the crash: p95 {p95:?}, last {:?}",
        times.last().unwrap()
    );
    assert!(p95 <= Duration::from_secs(10), "p95 {p95:?}");

    survivors[0].0.send_text("after-crash").await;
    for (client, _) in &mut survivors {
        expect_chat(client, "after-crash").await;
    }
    assert_eq!(survivors.len(), CLIENTS);
}

/// Which replica holds each open WebSocket now, by each replica's own gauge.
async fn open_per_replica(lb: &Deployment) -> Vec<f64> {
    let mut out = Vec::new();
    for r in &lb.replicas {
        out.push(metrics(r.port).await["channels_connections_open"]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_windows_on_different_replicas_chat_and_survive_a_drain() -> anyhow::Result<()>
{
    let lb = Deployment::start().await;
    let browser = Browser::start().await?;
    let one = browser.session("one").await?;
    let two = match browser.session("two").await {
        Ok(two) => two,
        Err(e) => return finish("lb_browser", vec![one], Err(e)).await,
    };
    let outcome = async {
        let page = lb.nginx.http_url("/chatgroup?groupID=lbweb");
        one.goto(&page).await?;
        one.wait_for_ws_state("open").await?;
        two.goto(&page).await?;
        two.wait_for_ws_state("open").await?;
        let open = open_per_replica(&lb).await;
        anyhow::ensure!(
            open.iter().filter(|n| **n == 1.0).count() == 2,
            "the two windows should sit on two replicas: {open:?}"
        );
        one.type_into("txt", "你好 from one").await?;
        one.click("send").await?;
        for window in [&one, &two] {
            window
                .wait_for_line(&format!("{PREFIX}你好 from one"))
                .await?;
        }
        // Drain the replica holding window one: its page reconnects through nginx by itself.
        let victim = open.iter().position(|n| *n == 1.0).context("no replica")?;
        lb.replicas[victim].signal_term();
        let reconnected = "return window.wsConnects === 2 && window.wsState === 'open';";
        let (moved, stayed) = (&one, &two);
        let mut waited = false;
        for window in [moved, stayed] {
            if window
                .wait_until_within(Duration::from_secs(5), "a reconnect", reconnected, vec![])
                .await
                .is_ok()
            {
                waited = true;
                window.type_into("txt", "back again").await?;
                window.click("send").await?;
                break;
            }
        }
        anyhow::ensure!(waited, "no window reconnected after its replica drained");
        for window in [&one, &two] {
            window.wait_for_line(&format!("{PREFIX}back again")).await?;
        }
        anyhow::Ok(())
    }
    .await;
    finish("lb_browser", vec![one, two], outcome).await
}

/// The status of a WebSocket handshake to `url` with this Origin header.
async fn handshake_status(url: &str, origin: &str) -> u16 {
    use tokio_tungstenite::tungstenite::{Error, client::IntoClientRequest};
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("handshake with Origin {origin}: {other}"),
    }
}

/// The default Origin check behind nginx: nginx forwards the browser's Host (`$http_host`), so
/// a page served through nginx may open its socket, and another site's page gets the replica's
/// 403 (which nginx passes on: it retries only errors and 503s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_check_works_through_nginx() {
    let lb = Deployment::start().await;
    let url = lb.nginx.ws_url("/group/origin/");
    let own = format!("http://127.0.0.1:{}", lb.nginx.port);
    assert_eq!(handshake_status(&url, &own).await, 101);
    for evil in [
        "https://evil.example",
        "http://127.0.0.1",
        "http://127.0.0.1.evil.example",
        "null",
    ] {
        assert_eq!(handshake_status(&url, evil).await, 403, "Origin {evil}");
    }
    let mut refused = 0.0;
    for r in &lb.replicas {
        let m = metrics(r.port).await;
        refused += m
            .get("channels_handshakes_refused_total{reason=\"origin\"}")
            .copied()
            .unwrap_or(0.0);
    }
    assert_eq!(refused, 4.0);
}
