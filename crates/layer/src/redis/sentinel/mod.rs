//! A shard whose master is named by Redis Sentinel: `redis+sentinel://` URLs, the lookup of
//! the current master, and the watcher that follows a failover.
//!
//! URL (one shard, like a channels_redis `hosts` entry with `sentinels` and `master_name`):
//!
//! ```text
//! redis+sentinel://[user:password@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB][?sentinel_password=P&sentinel_tls=1]
//! rediss+sentinel://...   (TLS to the data nodes; `sentinel_tls=1` for the sentinels too)
//! ```
//!
//! The user and password are the data nodes' (channels_redis passes them to the master);
//! `sentinel_password` is the sentinels' own (`sentinel_kwargs` in channels_redis; the server
//! fills it from `CHANNELS_SENTINEL_PASSWORD`). A `#insecure` fragment carries over to every
//! TLS connection.
//!
//! Lookup follows the Sentinel client spec: ask the sentinels in order with a short timeout
//! (`SENTINEL get-master-addr-by-name`), move the one that answered first, and use the address
//! only once the node itself says `ROLE` master. The [watcher](watch) repeats the lookup every
//! [`POLL`] on a cached connection to the responding sentinel; a changed answer bumps the
//! [`version`](Sentinel::version), and the connections of the shard (publisher pool, subscriber,
//! dedicated connections of the core layer) compare versions and reconnect to the new master.
//! Polling rather than `+switch-master` events: the events are only a hint, and a poll also
//! covers the watcher's own reconnects. This module does not resubscribe anything; the layers
//! do that from their registries when their connection is replaced.

mod url;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionInfo, IntoConnectionInfo};
use tokio::sync::watch;

use super::text::words;
use crate::error::LayerError;
use crate::sync::lock;
pub use url::percent_encode;
use url::{DataNode, Endpoint};

/// How often the watcher asks the sentinels where the master is.
pub(crate) const POLL: Duration = Duration::from_millis(250);

/// One shard's Sentinel set and what it last said.
#[derive(Debug)]
pub(crate) struct Sentinel {
    /// The sentinels, the one that answered last first.
    sentinels: Mutex<Vec<Endpoint>>,
    master_name: String,
    /// How to reach a data node once its address is known.
    data: DataNode,
    /// The current master's URL (`None` until a lookup succeeded).
    master: watch::Sender<Option<String>>,
    /// Bumped whenever the master's address changes (the first lookup included).
    version: AtomicU64,
    /// Times the master moved from one address to another.
    switches: AtomicU64,
    /// Why the latest lookup failed (`None` once one succeeded).
    problem: Mutex<Option<String>>,
    /// A connection to the sentinel that answered last, reused by the next poll.
    cached: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// For logs and errors: `redis+sentinel://h1:p1,h2:p2/name/db`, without credentials.
    display: String,
}

impl Sentinel {
    /// Whether `url` names a Sentinel set rather than one Redis.
    pub(crate) fn is_sentinel_url(url: &str) -> bool {
        url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://")
    }

    /// Parses a `redis+sentinel://` or `rediss+sentinel://` URL.
    pub(crate) fn parse(url: &str) -> Result<Self, LayerError> {
        let u = url::parse(url)?;
        Ok(Self {
            sentinels: Mutex::new(u.sentinels),
            master_name: u.master_name,
            data: u.data,
            master: watch::Sender::new(None),
            version: AtomicU64::new(0),
            switches: AtomicU64::new(0),
            problem: Mutex::new(None),
            cached: tokio::sync::Mutex::new(None),
            display: u.display,
        })
    }

    pub(crate) fn display(&self) -> &str {
        &self.display
    }

    /// The current master's URL, once known.
    pub(crate) fn master_url(&self) -> Option<String> {
        self.master.borrow().clone()
    }

    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    pub(crate) fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// Why the latest lookup failed.
    pub(crate) fn problem(&self) -> Option<String> {
        lock(&self.problem).clone()
    }

    /// A receiver that wakes on every change of master.
    pub(crate) fn changes(&self) -> watch::Receiver<Option<String>> {
        self.master.subscribe()
    }

    /// Asks the sentinels where the master is, checks that it says so itself, and records the
    /// answer. True when the master changed.
    pub(crate) async fn refresh(&self, timeout: Duration) -> Result<bool, LayerError> {
        let result = self.lookup(timeout).await;
        let (host, port) = match result {
            Ok(addr) => addr,
            Err(error) => {
                *lock(&self.problem) = Some(reason(&error));
                return Err(error);
            }
        };
        let url = self.data.url(&host, port);
        if self.master.borrow().as_deref() == Some(url.as_str()) {
            *lock(&self.problem) = None;
            return Ok(false);
        }
        if let Err(error) = self.check_role(&url, &host, port, timeout).await {
            *lock(&self.problem) = Some(reason(&error));
            return Err(error);
        }
        *lock(&self.problem) = None;
        let master = format!("{host}:{port}");
        let previous = self.master.send_replace(Some(url.clone()));
        if previous.as_deref() == Some(url.as_str()) {
            // A concurrent lookup (the layer's first one beside the watcher's) got there first.
            return Ok(false);
        }
        self.version.fetch_add(1, Ordering::SeqCst);
        match previous {
            Some(previous) => {
                self.switches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    sentinel = %self.display,
                    from = %super::text::redact(&previous),
                    to = %master,
                    "redis master switched: reconnecting and resubscribing"
                );
            }
            None => tracing::info!(sentinel = %self.display, %master, "redis master found"),
        }
        Ok(true)
    }

    /// `SENTINEL get-master-addr-by-name` on the cached connection, else on each sentinel in
    /// order; the one that answers moves to the front.
    async fn lookup(&self, timeout: Duration) -> Result<(String, u16), LayerError> {
        let mut cached = self.cached.lock().await;
        if let Some(conn) = cached.as_mut() {
            match self.ask(conn, timeout).await {
                Ok(Some(addr)) => return Ok(addr),
                // A sentinel that forgot the master, or failed: ask them all.
                Ok(None) | Err(_) => *cached = None,
            }
        }
        let sentinels = lock(&self.sentinels).clone();
        let mut failures = Vec::new();
        for (i, sentinel) in sentinels.iter().enumerate() {
            let answer = async {
                let mut conn = connect(&sentinel.info, timeout).await?;
                let addr = self.ask(&mut conn, timeout).await?;
                Ok::<_, String>((conn, addr))
            };
            match answer.await {
                Ok((conn, Some(addr))) => {
                    *cached = Some(conn);
                    if i > 0 {
                        let mut order = lock(&self.sentinels);
                        let first = order.remove(i);
                        order.insert(0, first);
                    }
                    return Ok(addr);
                }
                Ok((_, None)) => failures.push(format!(
                    "{} does not know master {:?}",
                    sentinel.addr, self.master_name
                )),
                Err(error) => failures.push(format!("{}: {error}", sentinel.addr)),
            }
        }
        Err(LayerError::Unavailable {
            host: self.display.clone(),
            reason: format!("no sentinel named the master: {}", failures.join("; ")),
        })
    }

    /// One `SENTINEL get-master-addr-by-name` (`None`: the sentinel does not know the name).
    async fn ask(
        &self,
        conn: &mut MultiplexedConnection,
        timeout: Duration,
    ) -> Result<Option<(String, u16)>, String> {
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("get-master-addr-by-name").arg(&self.master_name);
        let query = cmd.query_async::<Option<(String, String)>>(conn);
        let answer = match tokio::time::timeout(timeout, query).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => return Err(words(&error)),
            Err(_) => return Err(format!("no answer within {timeout:?}")),
        };
        match answer {
            None => Ok(None),
            Some((host, port)) => match port.parse() {
                Ok(port) => Ok(Some((host, port))),
                Err(_) => Err(format!("answered a port that is not a number: {port:?}")),
            },
        }
    }

    /// Fails unless the node at `url` says `ROLE` master: right after a failover a sentinel
    /// may name a node that has not finished its promotion.
    async fn check_role(
        &self,
        url: &str,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<(), LayerError> {
        let unavailable = |reason: String| LayerError::Unavailable {
            host: self.display.clone(),
            reason,
        };
        let info = url
            .into_connection_info()
            .map_err(|e| unavailable(format!("the master's address {host}:{port}: {e}")))?;
        let mut conn = connect(&info, timeout)
            .await
            .map_err(|e| unavailable(format!("master {host}:{port}: {e}")))?;
        let role = tokio::time::timeout(
            timeout,
            redis::cmd("ROLE").query_async::<redis::Value>(&mut conn),
        )
        .await;
        let role = match role {
            Ok(Ok(redis::Value::Array(items))) => match items.first() {
                Some(redis::Value::BulkString(role)) => String::from_utf8_lossy(role).into_owned(),
                _ => String::new(),
            },
            Ok(Ok(_)) => String::new(),
            Ok(Err(error)) => {
                return Err(unavailable(format!(
                    "master {host}:{port}: ROLE failed: {}",
                    words(&error)
                )));
            }
            Err(_) => {
                return Err(unavailable(format!(
                    "master {host}:{port}: ROLE timed out after {timeout:?}"
                )));
            }
        };
        if role == "master" {
            Ok(())
        } else {
            Err(unavailable(format!(
                "the sentinels name {host}:{port} as master, but it says ROLE {role:?}"
            )))
        }
    }
}

/// Follows the master of `sentinel` until the layer drops it: a lookup every [`POLL`], a log
/// line when the answer fails (once per change of reason).
pub(crate) async fn watch(sentinel: Weak<Sentinel>, timeout: Duration) {
    let mut reported: Option<String> = None;
    loop {
        let Some(s) = sentinel.upgrade() else { return };
        match s.refresh(timeout).await {
            Ok(_) => reported = None,
            Err(error) => {
                let text = error.to_string();
                if reported.as_deref() != Some(text.as_str()) {
                    tracing::warn!(%error, "redis sentinel lookup failed: retrying");
                    reported = Some(text);
                }
            }
        }
        drop(s);
        tokio::time::sleep(POLL).await;
    }
}

/// A connection to a sentinel or a data node, every wait bounded by `timeout`.
async fn connect(
    info: &ConnectionInfo,
    timeout: Duration,
) -> Result<MultiplexedConnection, String> {
    let client = redis::Client::open(info.clone()).map_err(|e| words(&e))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    match tokio::time::timeout(
        timeout,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(error)) => Err(words(&error)),
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}

/// What went wrong, without the "Redis at ... is unavailable" around it.
fn reason(error: &LayerError) -> String {
    match error {
        LayerError::Unavailable { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}
