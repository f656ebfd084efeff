//! `channels-compose-check`: the checks `scripts/compose-test.sh` runs against the shipped
//! compose stack once it is up, from inside the network namespace of the script's private
//! Docker engine (where nginx's port 8080 and the replicas' addresses are).
//!
//! ```text
//! channels-compose-check --project P chat --clients 6
//! channels-compose-check --project P stop --clients 6 --drain-secs 30
//! ```
//!
//! * `chat`: every running replica of the `server` service (found with `docker ps` by the
//!   compose labels, and named by the `X-Channels-Replica` header of its own `/healthz`) gets
//!   clients through nginx, and every client receives every message sent by any client.
//! * `stop`: `docker stop` of one replica closes its clients with 1001 within a second, the
//!   container exits 0 within the drain time, its clients reconnect through nginx to the other
//!   replicas and everyone chats again.
//!
//! Every step prints what it saw; any failure exits non-zero with what was expected.

#![allow(
    clippy::print_stdout,
    reason = "the check's report is the program's output"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Parser, Subcommand};
use futures_util::future::join_all;
use test_support::ws::{Client, replica_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(
    name = "channels-compose-check",
    about = "checks of the running compose stack"
)]
struct Cli {
    /// nginx's published address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    via: String,
    /// The docker CLI; `DOCKER_HOST` names the engine.
    #[arg(long, default_value = "docker")]
    docker: String,
    /// The compose project name (the `com.docker.compose.project` label).
    #[arg(long)]
    project: String,
    #[command(subcommand)]
    check: Check,
}

#[derive(Subcommand, Debug)]
enum Check {
    /// Clients through nginx reach every replica, and all of them chat.
    Chat {
        /// Clients to connect; at least one per replica.
        #[arg(long, default_value_t = 6)]
        clients: usize,
        #[arg(long, default_value = "compose_chat")]
        group: String,
    },
    /// `docker stop` of one replica: 1001 at once, exit 0 within the drain, reconnects.
    Stop {
        #[arg(long, default_value_t = 6)]
        clients: usize,
        #[arg(long, default_value = "compose_stop")]
        group: String,
        /// `CHANNELS_DRAIN_TIMEOUT` of the replicas.
        #[arg(long, default_value_t = 30)]
        drain_secs: u64,
    },
}

/// A replica of the `server` service: its container and its `X-Channels-Replica` name.
#[derive(Debug, Clone)]
struct Replica {
    container: String,
    name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.check {
        Check::Chat { clients, group } => chat(&cli, *clients, group).await,
        Check::Stop {
            clients,
            group,
            drain_secs,
        } => stop(&cli, *clients, group, *drain_secs).await,
    }
}

async fn chat(cli: &Cli, n: usize, group: &str) -> anyhow::Result<()> {
    let replicas = replicas(cli).await?;
    ensure!(
        n >= replicas.len(),
        "{n} clients cannot reach {} replicas",
        replicas.len()
    );
    let mut clients = connect(cli, group, n).await;
    let landed: BTreeSet<&str> = clients.iter().map(|(_, r)| r.as_str()).collect();
    let all: BTreeSet<&str> = replicas.iter().map(|r| r.name.as_str()).collect();
    println!("chat: {n} clients through {} landed on {landed:?}", cli.via);
    ensure!(
        landed == all,
        "clients landed on {landed:?}, the running replicas are {all:?}"
    );
    chat_all(&mut clients, "chat").await?;
    println!(
        "chat: each of the {n} clients received all {n} messages ({} replicas)",
        all.len()
    );
    for (client, _) in clients {
        client.close().await;
    }
    Ok(())
}

async fn stop(cli: &Cli, n: usize, group: &str, drain_secs: u64) -> anyhow::Result<()> {
    let replicas = replicas(cli).await?;
    ensure!(replicas.len() >= 2, "stop needs two replicas or more");
    let mut clients = connect(cli, group, n).await;
    chat_all(&mut clients, "before").await?;
    let victim_name = clients[0].1.clone();
    let victim = replicas
        .iter()
        .find(|r| r.name == victim_name)
        .with_context(|| format!("no container serves replica {victim_name}"))?
        .clone();
    let (mut gone, mut kept): (Vec<_>, Vec<_>) =
        clients.into_iter().partition(|(_, r)| *r == victim.name);
    println!(
        "stop: docker stop {} (replica {}, {} of the {n} clients)",
        short(&victim.container),
        victim.name,
        gone.len()
    );

    // SIGTERM now; the grace is longer than the drain, so an overrun shows as a late exit
    // rather than as a SIGKILL.
    let started = Instant::now();
    let docker = cli.docker.clone();
    let container = victim.container.clone();
    let grace = (drain_secs + 10).to_string();
    let stopping = tokio::task::spawn_blocking(move || {
        let status = Command::new(docker)
            .args(["stop", "-t", &grace, &container])
            .stdout(std::process::Stdio::null())
            .status();
        (status, started.elapsed())
    });
    let closes = join_all(gone.iter_mut().map(|(c, _)| close_frame(c, started))).await;
    for (code, after) in &closes {
        println!("stop: client closed with {code} after {after:?}");
        ensure!(
            *code == 1001,
            "a client of the stopped replica got {code}, not 1001"
        );
        ensure!(
            *after <= Duration::from_secs(1),
            "1001 came after {after:?}, more than a second"
        );
    }
    let (status, took) = stopping.await?;
    ensure!(status?.success(), "docker stop failed");
    let exit = docker_out(
        cli,
        &["inspect", "-f", "{{.State.ExitCode}}", &victim.container],
    )?;
    println!("stop: container exited with {exit} after {took:?} (drain {drain_secs} s)");
    ensure!(exit == "0", "the stopped replica exited with {exit}, not 0");
    ensure!(
        took <= Duration::from_secs(drain_secs),
        "the replica took {took:?} to exit, longer than the {drain_secs} s drain"
    );

    // The pages reconnect; nginx sends them to the replicas still running. Until nginx
    // forgets the stopped replica's address, an attempt may first wait for that address to
    // fail (no host answers it any more) before nginx tries the next replica.
    let url = format!("ws://{}/group/{group}/", cli.via);
    let mut back = Vec::new();
    for _ in 0..gone.len() {
        let (client, replica, took) = reconnect(&url, Duration::from_secs(20)).await?;
        println!("stop: a client reconnected to {replica} in {took:?}");
        ensure!(
            replica != victim.name,
            "a reconnect landed on the stopped replica"
        );
        back.push((client, replica));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "stop: {} clients reconnected to {:?}",
        back.len(),
        back.iter()
            .map(|(_, r)| r.as_str())
            .collect::<BTreeSet<_>>()
    );
    kept.append(&mut back);
    chat_all(&mut kept, "after").await?;
    println!("stop: all {} clients chat after the stop", kept.len());
    for (client, _) in kept {
        client.close().await;
    }
    Ok(())
}

/// The running replicas of the `server` service, named by their own `/healthz` answer.
async fn replicas(cli: &Cli) -> anyhow::Result<Vec<Replica>> {
    let ids = docker_out(
        cli,
        &[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.compose.project={}", cli.project),
            "--filter",
            "label=com.docker.compose.service=server",
        ],
    )?;
    let mut replicas = Vec::new();
    for container in ids.split_whitespace() {
        let ip = docker_out(
            cli,
            &[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                container,
            ],
        )?;
        let ip = ip
            .split_whitespace()
            .next()
            .context("container without an address")?;
        let name = replica_name(&format!("{ip}:8000")).await?;
        println!("replica {name}: container {} at {ip}", short(container));
        replicas.push(Replica {
            container: container.to_owned(),
            name,
        });
    }
    ensure!(!replicas.is_empty(), "no running server container");
    Ok(replicas)
}

/// `X-Channels-Replica` of `GET /healthz` on `addr`, straight to the replica.
async fn replica_name(addr: &str) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("{addr} did not answer /healthz"))??;
    ensure!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{addr}/healthz: {response}"
    );
    response
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-channels-replica")
                .then(|| value.trim().to_owned())
        })
        .with_context(|| format!("{addr}/healthz has no X-Channels-Replica"))
}

/// `n` clients of the group chat through nginx, one after the other (so that `least_conn`
/// spreads them), each with the replica that answered its handshake.
async fn connect(cli: &Cli, group: &str, n: usize) -> Vec<(Client, String)> {
    let url = format!("ws://{}/group/{group}/", cli.via);
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(Client::connect_to_replica(&url).await);
    }
    // The consumer joins the group just after it accepts: give the joins a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    clients
}

/// A client's handshake through `url`, retried as the pages do until `within`: the client,
/// the replica that answered, and how long it took.
async fn reconnect(url: &str, within: Duration) -> anyhow::Result<(Client, String, Duration)> {
    let started = Instant::now();
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tokio_tungstenite::connect_async(url)).await {
            Ok(Ok((stream, response))) => {
                return Ok((Client(stream), replica_of(&response), started.elapsed()));
            }
            Ok(Err(error)) if started.elapsed() < within => {
                println!("stop: a reconnect attempt failed ({error}): retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(Err(error)) => bail!("no reconnect within {within:?}: {error}"),
            Err(_) => bail!("no reconnect within {within:?}"),
        }
    }
}

/// Every client sends one message; every client must receive all of them.
async fn chat_all(clients: &mut [(Client, String)], tag: &str) -> anyhow::Result<()> {
    let sent: BTreeSet<String> = (0..clients.len()).map(|i| format!("{tag}-{i}")).collect();
    for ((client, _), text) in clients.iter_mut().zip(&sent) {
        client.send_text(text).await;
    }
    let mut received = BTreeMap::new();
    for (i, (client, replica)) in clients.iter_mut().enumerate() {
        let mut got = BTreeSet::new();
        for _ in 0..sent.len() {
            let text = client.recv_text().await;
            let Some(body) = text.strip_prefix("组内主动推送消息:") else {
                bail!("client {i} on {replica} got {text:?}");
            };
            got.insert(body.to_owned());
        }
        received.insert(i, (replica.clone(), got));
    }
    for (i, (replica, got)) in received {
        ensure!(
            got == sent,
            "client {i} on {replica} got {got:?} of {sent:?}"
        );
    }
    Ok(())
}

/// The close frame's code and when it came, counted from `since`.
async fn close_frame(client: &mut Client, since: Instant) -> (u16, Duration) {
    loop {
        match client.recv().await {
            Message::Close(frame) => {
                let after = since.elapsed();
                return (frame.map_or(1005, |f| u16::from(f.code)), after);
            }
            // Whatever was in flight before the close.
            _ => continue,
        }
    }
}

fn docker_out(cli: &Cli, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(&cli.docker)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", cli.docker))?;
    ensure!(
        out.status.success(),
        "{} {}: {}",
        cli.docker,
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn short(container: &str) -> &str {
    &container[..container.len().min(12)]
}
