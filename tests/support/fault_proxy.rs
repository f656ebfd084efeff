//! A fault-injecting TCP proxy for the fault tests: it sits between a replica and Redis on a free
//! loopback port and can black-hole the link the way a network partition does.
//!
//! - [`FaultProxy::blackhole`]: no byte moves in either direction, on open connections and on
//!   new ones, and no FIN or RST is passed on: both ends see silence, as behind a dropped link.
//!   TCP would retransmit across a partition, so nothing is lost: what each side sent is held
//!   and arrives after [`FaultProxy::heal`] (unless that side gave up and closed first).
//! - [`FaultProxy::heal`]: bytes flow again.
//! - [`FaultProxy::reset`]: every open connection is dropped at once (both sockets closed).

#![allow(
    dead_code,
    unreachable_pub,
    reason = "test support: each test binary uses part of it"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The link's state, seen by every pump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Up,
    Blackholed,
}

/// A proxy from `127.0.0.1:port` to an upstream loopback port; stops when dropped.
pub struct FaultProxy {
    pub port: u16,
    link: watch::Sender<Link>,
    /// Bumped by [`FaultProxy::reset`]; every connection ends when it changes.
    generation: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding a free loopback port to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (link, link_rx) = watch::channel(Link::Up);
        let (generation, generation_rx) = watch::channel(0u64);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                connections.spawn(connection(
                    client,
                    upstream,
                    link_rx.clone(),
                    generation_rx.clone(),
                ));
                while connections.try_join_next().is_some() {}
            }
        });
        FaultProxy {
            port,
            link,
            generation,
            accepted,
            task,
        }
    }

    /// `redis://127.0.0.1:port`: what a replica behind this proxy is given.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops every byte, FIN and RST, both ways, until [`FaultProxy::heal`].
    pub fn blackhole(&self) {
        self.link.send_replace(Link::Blackholed);
    }

    /// Lets bytes flow again; what was held back is delivered.
    pub fn heal(&self) {
        self.link.send_replace(Link::Up);
    }

    /// Closes every open connection (new ones are accepted as usual).
    pub fn reset(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to the upstream once the link is up, then pumps both ways until either side closes
/// or the proxy is reset.
async fn connection(
    client: TcpStream,
    upstream: u16,
    link: watch::Receiver<Link>,
    mut generation: watch::Receiver<u64>,
) {
    generation.mark_unchanged();
    let run = async {
        wait_up(link.clone()).await;
        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::join!(
            pump(client_read, server_write, link.clone()),
            pump(server_read, client_write, link.clone()),
        );
    };
    tokio::select! {
        () = run => {}
        _ = generation.changed() => {}
    }
}

/// Copies `from` to `to`, holding every chunk (and the final FIN) while the link is down.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: watch::Receiver<Link>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        wait_up(link.clone()).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        // A chunk read just before the link went down is held like the ones after it.
        wait_up(link.clone()).await;
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Returns once the link is up.
async fn wait_up(mut link: watch::Receiver<Link>) {
    let _ = link.wait_for(|l| *l == Link::Up).await;
}
