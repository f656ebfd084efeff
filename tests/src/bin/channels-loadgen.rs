//! `channels-loadgen`: WebSocket load for the seed protocol (this server, Django Channels) and
//! Socket.IO. Prints one JSON report on stdout.
//!
//! ```text
//! channels-loadgen fanout --url ws://127.0.0.1:8001 --url ws://127.0.0.1:8002 \
//!     --groups 100 --members 10 --publishers 1 --rate 10 --duration 10
//! channels-loadgen idle --url ws://127.0.0.1:8001 --connections 50000 --source-ips 4 --pid 1234
//! channels-loadgen echo --url ws://127.0.0.1:8001 --connections 100 --duration 10
//! ```

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use system_tests::loadgen::{self, FanoutOptions, IdleOptions, Target, proto::Protocol};

#[derive(Parser, Debug)]
#[command(
    name = "channels-loadgen",
    about = "WebSocket group-chat load generator"
)]
struct Cli {
    /// `ws://host:port` of a replica; repeat for several (connections are spread round-robin).
    #[arg(long = "url", global = true)]
    urls: Vec<String>,
    /// The protocol the targets speak.
    #[arg(long, value_enum, default_value_t = Protocol::Seed, global = true)]
    protocol: Protocol,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 200, global = true)]
    connect_concurrency: usize,
    /// Spread source addresses over 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, default_value_t = 1, global = true)]
    source_ips: u8,
    /// A server process to report CPU and memory for; repeatable.
    #[arg(long = "pid", global = true)]
    pids: Vec<u32>,
    /// Prefix of group names, to keep runs apart.
    #[arg(long, default_value = "b", global = true)]
    tag: String,
    /// A query string for every handshake URL (e.g. `token=...`), without the `?`.
    #[arg(long, global = true)]
    query: Option<String>,
    /// A request header for every handshake, as `Name: value` (repeatable; e.g. a session
    /// cookie for a connect hook).
    #[arg(long = "header", global = true)]
    headers: Vec<String>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// G groups of M members, P publishers per group at R messages/s each.
    Fanout {
        #[arg(long, default_value_t = 10)]
        groups: usize,
        #[arg(long, default_value_t = 10)]
        members: usize,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Messages per second per publisher.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds to wait for in-flight messages after publishing stops.
        #[arg(long, default_value_t = 2.0)]
        drain: f64,
        /// Padding per message, bytes.
        #[arg(long, default_value_t = 32)]
        payload_bytes: usize,
    },
    /// Hold N idle connections joined to groups; report memory per connection and idle CPU.
    Idle {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        groups: usize,
        /// Seconds to hold them while measuring idle CPU.
        #[arg(long, default_value_t = 10.0)]
        hold: f64,
    },
    /// History on: N members of one group in recovery mode leave together, messages are
    /// published, and all resume at once with `since`; reports how long recovery took.
    Storm {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Messages published while they are away.
        #[arg(long, default_value_t = 20)]
        missed: usize,
        /// Seconds a member may take to recover.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Request/response round trips on echo connections.
    Echo {
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        !cli.urls.is_empty(),
        "give at least one --url ws://host:port"
    );
    let target = Target {
        urls: cli.urls,
        protocol: cli.protocol,
        connect_concurrency: cli.connect_concurrency,
        source_ips: cli.source_ips,
        pids: cli.pids,
        tag: cli.tag,
        query: cli.query,
        headers: cli
            .headers
            .iter()
            .map(|h| {
                let (name, value) = h
                    .split_once(':')
                    .with_context(|| format!("--header {h:?} is not `Name: value`"))?;
                Ok((name.trim().to_owned(), value.trim().to_owned()))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let report = match cli.mode {
        Mode::Fanout {
            groups,
            members,
            publishers,
            rate,
            duration,
            drain,
            payload_bytes,
        } => {
            let opts = FanoutOptions {
                groups,
                members,
                publishers,
                rate,
                duration: Duration::from_secs_f64(duration),
                drain: Duration::from_secs_f64(drain),
                payload_bytes,
            };
            serde_json::to_string(&loadgen::fanout(&target, &opts).await?)?
        }
        Mode::Idle {
            connections,
            groups,
            hold,
        } => {
            let opts = IdleOptions {
                connections,
                groups,
                hold: Duration::from_secs_f64(hold),
            };
            serde_json::to_string(&loadgen::idle(&target, &opts).await?)?
        }
        Mode::Storm {
            connections,
            missed,
            timeout,
        } => {
            let opts = loadgen::StormOptions {
                connections,
                missed,
                timeout: Duration::from_secs_f64(timeout),
            };
            serde_json::to_string(&loadgen::storm(&target, &opts).await?)?
        }
        Mode::Echo {
            connections,
            duration,
        } => serde_json::to_string(
            &loadgen::echo(&target, connections, Duration::from_secs_f64(duration)).await?,
        )?,
    };
    #[allow(clippy::print_stdout, reason = "the report is the program's output")]
    {
        println!("{report}");
    }
    Ok(())
}
