//! A fault-injecting TCP proxy for the fault tests: it sits between a replica and Redis on a free
//! loopback port and can black-hole the link the way a network partition does.
//!
//! - [`FaultProxy::blackhole`]: no byte moves in either direction, on open connections and on
//!   new ones, and no FIN or RST is passed on: both ends see silence, as behind a dropped link.
//!   TCP would retransmit across a partition, so nothing is lost: what each side sent is held
//!   and arrives after [`FaultProxy::heal`] (unless that side gave up and closed first).
//! - [`FaultProxy::heal`]: bytes flow again.
//! - [`FaultProxy::reset`]: every open connection is dropped at once (both sockets closed).
//! - [`FaultProxy::starve`]: the connections open now stop getting pub/sub messages from Redis
//!   (`message` and `pmessage` pushes are dropped) while every other reply, PONG included, still
//!   passes: a subscriber that looks alive and hears nothing. New connections are not affected.
//!
//! The Redis-to-client direction is parsed into RESP frames so that whole pushes can be dropped.

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
    /// Connections accepted before this number are starved.
    starve_below: Arc<AtomicUsize>,
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
        let starve_below = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let starving = Arc::clone(&starve_below);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let index = counter.fetch_add(1, Ordering::SeqCst);
                let starved = {
                    let starving = Arc::clone(&starving);
                    move || index < starving.load(Ordering::SeqCst)
                };
                connections.spawn(connection(
                    client,
                    upstream,
                    link_rx.clone(),
                    generation_rx.clone(),
                    starved,
                ));
                while connections.try_join_next().is_some() {}
            }
        });
        FaultProxy {
            port,
            link,
            generation,
            accepted,
            starve_below,
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

    /// From now on, the connections open now get no `message` or `pmessage` push.
    pub fn starve(&self) {
        self.starve_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
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
    starved: impl Fn() -> bool + Send + Sync + 'static,
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
        let keep = move |frame: &[u8]| !(starved() && is_message_push(frame));
        tokio::join!(
            pump(client_read, server_write, link.clone(), None),
            pump(
                server_read,
                client_write,
                link.clone(),
                Some(Box::new(keep))
            ),
        );
    };
    tokio::select! {
        () = run => {}
        _ = generation.changed() => {}
    }
}

/// Which RESP frames a pump passes on.
type Keep = Box<dyn Fn(&[u8]) -> bool + Send>;

/// Copies `from` to `to`, holding every chunk (and the final FIN) while the link is down. With
/// `keep`, the stream is cut into RESP frames and only the frames it keeps are passed on.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: watch::Receiver<Link>,
    keep: Option<Keep>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::new();
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
        let written = match &keep {
            None => to.write_all(&buf[..n]).await,
            Some(keep) => {
                pending.extend_from_slice(&buf[..n]);
                let mut kept = Vec::with_capacity(pending.len());
                let mut at = 0;
                while let Some(len) = resp_frame_len(&pending[at..]) {
                    let frame = &pending[at..at + len];
                    if keep(frame) {
                        kept.extend_from_slice(frame);
                    }
                    at += len;
                }
                pending.drain(..at);
                to.write_all(&kept).await
            }
        };
        if written.is_err() {
            return;
        }
    }
}

/// The length of the first complete RESP2/RESP3 frame at the start of `buf`, or `None` while it
/// is incomplete.
fn resp_frame_len(buf: &[u8]) -> Option<usize> {
    let line = buf.windows(2).position(|w| w == b"\r\n")?;
    let after = line + 2;
    let number = || -> i64 {
        std::str::from_utf8(&buf[1..line])
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not RESP: {:?}", String::from_utf8_lossy(&buf[..line])))
    };
    match buf[0] {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(after),
        b'$' | b'!' | b'=' => match usize::try_from(number()) {
            Err(_) => Some(after),
            Ok(n) => (buf.len() >= after + n + 2).then_some(after + n + 2),
        },
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let Ok(n) = usize::try_from(number()) else {
                return Some(after);
            };
            // Maps and attributes hold pairs; an attribute is followed by the value it annotates.
            let mut items = if matches!(buf[0], b'%' | b'|') {
                2 * n
            } else {
                n
            };
            if buf[0] == b'|' {
                items += 1;
            }
            let mut at = after;
            for _ in 0..items {
                at += resp_frame_len(&buf[at..])?;
            }
            Some(at)
        }
        other => panic!("not RESP: first byte {other:?}"),
    }
}

/// A RESP3 pub/sub delivery: `>3 message ...` or `>4 pmessage ...`.
fn is_message_push(frame: &[u8]) -> bool {
    let Some(line) = frame.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    let rest = &frame[line + 2..];
    frame[0] == b'>'
        && (rest.starts_with(b"$7\r\nmessage\r\n") || rest.starts_with(b"$8\r\npmessage\r\n"))
}

/// Returns once the link is up.
async fn wait_up(mut link: watch::Receiver<Link>) {
    let _ = link.wait_for(|l| *l == Link::Up).await;
}
