//! Connections to one Redis host: a publisher pool and a subscriber connection, plus the helpers
//! both Redis backends need (URL checks, credential-free host names for logs and errors).
//!
//! A host is a fixed URL (`redis://`, `rediss://`, `unix://`) or a Sentinel set
//! (`redis+sentinel://`, see [`super::sentinel`]) whose master may move: every connection is
//! made to [`HostUrl::url`] at the time it is made, [`HostUrl::version`] changes when the master
//! moves, and [`HostPool`] empties itself then. Callers that hold long-lived connections (the
//! subscribers, the core layer's dedicated connections) compare versions or wait on
//! [`HostUrl::master_changes`] and reconnect.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::Runtime;
use deadpool::managed::{Metrics, Object, RecycleError, RecycleResult};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};

use super::pubconn::PublishConn;
use super::sentinel::Sentinel;
use super::subconn::{self, OnPush, Stream, Subscriber, from_push_info};
pub(crate) use super::text::{redact, words};
use crate::error::LayerError;

/// Where the connections of a Sentinel shard go while no sentinel has named its master: a path
/// that cannot exist, so that they fail at once (the layer reports the sentinels' answer).
const UNRESOLVED: &str = "unix:///dev/null/sentinel-master-unknown";

/// A Redis URL checked once, with a printable form that hides credentials.
#[derive(Clone)]
pub(crate) struct HostUrl {
    target: Target,
    /// `redis://host:port/db` without user or password, for logs and errors.
    display: Arc<str>,
}

#[derive(Clone)]
enum Target {
    Fixed(String),
    Sentinel(Arc<Sentinel>),
}

/// Wakes when a Sentinel shard's master moves; never for a fixed URL.
#[derive(Debug)]
pub(crate) struct MasterChanges(Option<tokio::sync::watch::Receiver<Option<String>>>);

impl MasterChanges {
    /// Returns once the master changed since the previous call (or since this was made).
    pub(crate) async fn changed(&mut self) {
        let changed = match self.0.as_mut() {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        };
        if !changed {
            std::future::pending::<()>().await;
        }
    }
}

impl std::fmt::Debug for HostUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl HostUrl {
    /// Checks that `url` is a `redis://`, `rediss://`, `unix://` or `redis+sentinel://` URL
    /// redis-rs (or our Sentinel lookup) can use.
    pub(crate) fn parse(url: &str) -> Result<Self, LayerError> {
        if Sentinel::is_sentinel_url(url) {
            let sentinel = Sentinel::parse(url)?;
            return Ok(Self {
                display: sentinel.display().into(),
                target: Target::Sentinel(Arc::new(sentinel)),
            });
        }
        let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| {
            LayerError::Config(format!(
                "{}: not a Redis URL ({e}); use redis://[user:password@]host:port/db, \
                 rediss://, unix:///path/redis.sock or redis+sentinel://",
                redact(url)
            ))
        })?;
        let _ = info;
        Ok(Self {
            target: Target::Fixed(url.to_owned()),
            display: redact(url).into(),
        })
    }

    /// The URL connections go to now: the fixed one, or the Sentinel set's current master.
    pub(crate) fn url(&self) -> String {
        match &self.target {
            Target::Fixed(url) => url.clone(),
            Target::Sentinel(s) => s.master_url().unwrap_or_else(|| UNRESOLVED.to_owned()),
        }
    }

    /// False while a Sentinel set has not named its master (always true for a fixed URL).
    pub(crate) fn has_master(&self) -> bool {
        match &self.target {
            Target::Fixed(_) => true,
            Target::Sentinel(s) => s.master_url().is_some(),
        }
    }

    /// While a Sentinel set has not named its master: why, as the error a call reports
    /// instead of trying.
    pub(crate) fn no_master(&self) -> Option<LayerError> {
        match &self.target {
            Target::Sentinel(s) if s.master_url().is_none() => Some(
                self.unavailable(
                    s.problem()
                        .unwrap_or_else(|| "no sentinel has named the master yet".to_owned()),
                ),
            ),
            _ => None,
        }
    }

    /// Changes whenever the master moves (always 0 for a fixed URL).
    pub(crate) fn version(&self) -> u64 {
        match &self.target {
            Target::Fixed(_) => 0,
            Target::Sentinel(s) => s.version(),
        }
    }

    /// Times the master moved to another address (Sentinel failovers seen).
    pub(crate) fn master_switches(&self) -> u64 {
        match &self.target {
            Target::Fixed(_) => 0,
            Target::Sentinel(s) => s.switches(),
        }
    }

    /// A waiter for the next move of the master.
    pub(crate) fn master_changes(&self) -> MasterChanges {
        match &self.target {
            Target::Fixed(_) => MasterChanges(None),
            Target::Sentinel(s) => MasterChanges(Some(s.changes())),
        }
    }

    /// The task that follows a Sentinel set's master (`None` for a fixed URL): the layer
    /// spawns it and aborts it on close; it also ends when the host is dropped.
    pub(crate) fn watcher(&self, timeout: Duration) -> Option<impl Future<Output = ()> + use<>> {
        match &self.target {
            Target::Fixed(_) => None,
            Target::Sentinel(s) => Some(super::sentinel::watch(Arc::downgrade(s), timeout)),
        }
    }

    /// Waits (at most `within`) until a Sentinel set named its master, asking at once; true
    /// when the host is usable (always for a fixed URL).
    pub(crate) async fn resolved(&self, within: Duration) -> bool {
        match &self.target {
            Target::Fixed(_) => true,
            Target::Sentinel(s) => s.master_url().is_some() || s.refresh(within).await.is_ok(),
        }
    }

    pub(crate) fn display(&self) -> &str {
        &self.display
    }

    pub(crate) fn unavailable(&self, reason: impl std::fmt::Display) -> LayerError {
        LayerError::Unavailable {
            host: self.display.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The URL with `protocol=resp3` added: push messages and automatic resubscription need it.
    fn resp3(&self) -> String {
        let url = self.url();
        let (base, fragment) = match url.split_once('#') {
            Some((base, fragment)) => (base, format!("#{fragment}")),
            None => (url.as_str(), String::new()),
        };
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}protocol=resp3{fragment}")
    }

    /// `error`, or Redis' own words when Redis refuses a fresh connection (see
    /// [`refusal`](Self::refusal)): redis-rs retries a refused subscriber connection in
    /// silence, so calls on it only time out, and it reports a refused `AUTH` without Redis'
    /// text.
    pub(crate) async fn explain(&self, error: LayerError, timeout: Duration) -> LayerError {
        if let Some(error) = self.no_master() {
            return error;
        }
        match self.refusal(timeout).await {
            Some(answer) => self.unavailable(format!("Redis answered: {answer}")),
            None => error,
        }
    }

    /// Redis' first error reply on a fresh connection to `AUTH` (with the URL's credentials)
    /// and `PING`, in Redis' words: `DENIED ...` (protected mode), `NOAUTH ...`,
    /// `WRONGPASS ...`, `NOPERM ...`. `None` when both succeed or Redis says nothing (down,
    /// unreachable, too slow). Spoken in plain RESP, not through redis-rs, whose handshake
    /// turns these replies into errors of its own. TLS hosts are asked through redis-rs.
    pub(crate) async fn refusal(&self, timeout: Duration) -> Option<String> {
        let exchange = async {
            let Some(target) = subconn::Target::of(&self.url()).ok()? else {
                return self.refusal_tls(timeout).await;
            };
            let auth = target.auth();
            let replies = 1 + usize::from(auth.is_some());
            let mut request = auth.unwrap_or_default();
            request.extend(redis::cmd("PING").get_packed_command());
            let stream = Stream::open(target.addr()).await.ok()?;
            first_error(&stream, &request, replies).await
        };
        tokio::time::timeout(timeout, exchange).await.ok().flatten()
    }

    /// [`refusal`](Self::refusal) through redis-rs, for TLS hosts.
    async fn refusal_tls(&self, timeout: Duration) -> Option<String> {
        let client = redis::Client::open(self.url().as_str()).ok()?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let attempt = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await
        };
        match attempt.await {
            Err(error) if !error.is_io_error() && !error.is_timeout() => Some(words(&error)),
            _ => None,
        }
    }

    /// A host's connections: a pool bounded in size and in every wait, and the publishers'
    /// shared connection, following the master.
    pub(crate) fn pool(&self, timeout: Duration, size: usize) -> Result<HostPool, LayerError> {
        let version = self.version();
        let pool = self.fixed_pool(timeout, size)?;
        Ok(HostPool {
            host: self.clone(),
            timeout,
            size,
            current: Mutex::new(Current {
                version,
                lost: 0,
                pool,
            }),
            lost: LinkLost::default(),
            publisher: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            made: AtomicU64::new(0),
        })
    }

    /// A pool of connections to [`url`](Self::url) as it is now.
    fn fixed_pool(&self, timeout: Duration, size: usize) -> Result<Pool, LayerError> {
        let client = redis::Client::open(self.url())
            .map_err(|e| LayerError::Config(format!("{}: {e}", self.display)))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None);
        Pool::builder(Manager { client, config })
            .max_size(size)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| LayerError::Config(format!("{}: cannot build pool: {e}", self.display)))
    }

    /// A subscriber connection that reconnects forever (at most `max_delay` apart); pushes go
    /// to `on_push`, which must not block. Our own connection ([`Subscriber::own`]), except for
    /// TLS hosts, which keep redis-rs' connection manager (and its rustls setup).
    pub(crate) fn subscriber(
        &self,
        timeout: Duration,
        max_delay: Duration,
        on_push: OnPush,
    ) -> Result<Subscriber, LayerError> {
        let config_error =
            |e: redis::RedisError| LayerError::Config(format!("{}: {e}", self.display));
        if let Some(target) = subconn::Target::of(&self.url()).map_err(config_error)? {
            return Ok(Subscriber::own(target, timeout, max_delay, on_push));
        }
        let client = redis::Client::open(self.resp3()).map_err(config_error)?;
        let config = ConnectionManagerConfig::new()
            .set_push_sender(move |push: redis::PushInfo| {
                from_push_info(&push, &on_push);
                Ok::<(), std::convert::Infallible>(())
            })
            .set_automatic_resubscription()
            // The default (6 retries) leaves an idle subscriber dead after a long outage.
            .set_number_of_retries(usize::MAX)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(max_delay)
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        ConnectionManager::new_lazy_with_config(client, config)
            .map(Subscriber::managed)
            .map_err(config_error)
    }
}

/// How long a pooled connection may sit unused before it is checked (`PING`) on its way out.
const IDLE_CHECK: Duration = Duration::from_secs(2);

/// Makes the pool's multiplexed connections. Unlike `deadpool-redis`, whose recycle sends
/// `UNWATCH` and `PING` each time a connection is handed out (one more round trip per command,
/// which doubled Redis' calls for every publish), it checks only a connection that sat unused
/// for [`IDLE_CHECK`]; one whose command failed or timed out never goes back
/// ([`HostPool::query`]). Nothing here uses `WATCH`.
///
/// Its connections have no response timeout of their own: every command on them runs within
/// the layer's configured deadline (`bounded`), which redis-rs' default (500 ms) would
/// otherwise cut short, and a second timer per command is a cost on every publish.
#[derive(Debug)]
pub(crate) struct Manager {
    client: redis::Client,
    config: redis::AsyncConnectionConfig,
}

impl deadpool::managed::Manager for Manager {
    type Type = MultiplexedConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        self.client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
    }

    async fn recycle(
        &self,
        conn: &mut MultiplexedConnection,
        metrics: &Metrics,
    ) -> RecycleResult<redis::RedisError> {
        if metrics.last_used() < IDLE_CHECK {
            return Ok(());
        }
        match redis::cmd("PING").query_async::<String>(conn).await {
            Ok(_) => Ok(()),
            Err(error) => Err(RecycleError::Backend(error)),
        }
    }
}

/// The pool of one host's (current master's) connections.
pub(crate) type Pool = deadpool::managed::Pool<Manager>;

/// A pooled connection that goes back to the pool only if its command succeeded (or Redis
/// answered it with an error reply): a failed, timed-out or abandoned one is dropped.
struct Checkout(Option<Object<Manager>>);

impl Checkout {
    fn conn(&mut self) -> Option<&mut MultiplexedConnection> {
        self.0.as_deref_mut()
    }

    /// Back to the pool after `result`, unless it says the connection is broken.
    fn done<T>(mut self, result: &redis::RedisResult<T>) {
        if let Err(error) = result
            && broken(error)
        {
            return;
        }
        // Dropping the object returns it to the pool.
        drop(self.0.take());
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(Object::take(conn));
        }
    }
}

/// A host's connections, following a Sentinel set's master: when the master moves, the next
/// command drops the old pool (and its connections) for one to the new address. For a fixed
/// URL it is one plain pool.
///
/// Publishes do not take a pooled connection each: they share one pipelined connection
/// ([`publish`](Self::publish), [`PublishConn`]): each is written by the task that sends it,
/// without a hop through a writer task, and the replies to the publishes a replica makes
/// together (the frames of several clients read in one turn of its loop) come back in one
/// read, instead of a read and a wake-up of Redis each on as many pooled connections.
/// Everything else (the core layer's blocking reads, scripts, presence
/// reads that may answer with thousands of members) keeps the pool, so a large reply never
/// holds up a publish.
#[derive(Debug)]
pub(crate) struct HostPool {
    host: HostUrl,
    timeout: Duration,
    size: usize,
    /// The pool, and what it was made for.
    current: Mutex<Current>,
    /// Bumped when another connection to the host (the subscriber) was found dropped: the pool
    /// and the publishers' connection are made anew at the next command.
    lost: LinkLost,
    /// The publishers' shared connection, once made, for the host version it was made for.
    publisher: Mutex<Option<Publisher>>,
    /// Held while the publishers' connection is being made, so a burst of publishes after an
    /// outage makes one connection, not one each.
    connecting: tokio::sync::Mutex<()>,
    /// Numbers the publishers' connections, so a publish that fails drops only its own.
    made: AtomicU64,
}

/// A host's pool and what it was made for.
#[derive(Debug)]
struct Current {
    /// The host version (Sentinel master) it connects to.
    version: u64,
    /// The [`LinkLost`] count when it was made.
    lost: u64,
    pool: Pool,
}

/// Tells a [`HostPool`] that a connection to its host was found dropped (a pub/sub layer's
/// subscriber, whose pushes say so at once; in the core layer, the first failure of an outage,
/// usually a blocking reader's), so the pool's idle connections and the publishers' are
/// likely dead too (Redis restarted, the network dropped): the pool replaces them all at its
/// next command instead of letting a command fail on each. Without it, a connection used in
/// the two seconds before a restart ([`IDLE_CHECK`]) would fail the next command given it.
#[derive(Debug, Clone, Default)]
pub(crate) struct LinkLost(Arc<AtomicU64>);

impl LinkLost {
    /// A connection to the host was found dropped.
    pub(crate) fn signal(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Which of a host's connections a command goes over (see [`HostPool`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lane {
    /// The publishers' shared connection: publishes, and scripts that publish.
    Publish,
    /// A pooled connection of its own.
    Pool,
}

/// The connection every publish to a host shares.
#[derive(Debug)]
struct Publisher {
    version: u64,
    id: u64,
    /// When it was last handed to a publish.
    used: Instant,
    conn: PublishConn,
}

/// Drops the publishers' connection `id` unless disarmed: a publish that failed in a way that
/// says the connection is broken, or that was abandoned (its deadline passed), leaves it
/// behind, as a pooled connection would not go back to the pool.
struct Suspect<'a> {
    pool: &'a HostPool,
    id: u64,
    armed: bool,
}

impl Drop for Suspect<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut publisher = crate::sync::lock(&self.pool.publisher);
            if publisher.as_ref().is_some_and(|p| p.id == self.id) {
                *publisher = None;
            }
        }
    }
}

/// Whether `error` says the connection it came from can no longer be trusted (an error reply
/// from Redis does not).
fn broken(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
}

impl HostPool {
    /// The pool of the current master, and the host version it is for.
    fn current(&self) -> redis::RedisResult<(u64, Pool)> {
        let current = self.renewed()?;
        Ok((current.version, current.pool.clone()))
    }

    /// The pool as it must be now: a new one (and no publishers' connection) after the master
    /// moved or a lost link was signalled.
    fn renewed(&self) -> redis::RedisResult<std::sync::MutexGuard<'_, Current>> {
        let unavailable =
            |kind, text: String| redis::RedisError::from(std::io::Error::new(kind, text));
        if let Some(error) = self.host.no_master() {
            return Err(unavailable(
                std::io::ErrorKind::NotConnected,
                error.to_string(),
            ));
        }
        let mut current = crate::sync::lock(&self.current);
        let version = self.host.version();
        let lost = self.lost.count();
        if current.version != version || current.lost != lost {
            match self.host.fixed_pool(self.timeout, self.size) {
                Ok(pool) => {
                    *current = Current {
                        version,
                        lost,
                        pool,
                    };
                    *crate::sync::lock(&self.publisher) = None;
                }
                Err(error) => {
                    return Err(unavailable(std::io::ErrorKind::Other, error.to_string()));
                }
            }
        }
        Ok(current)
    }

    /// The handle that tells this pool its host's link was lost (see [`LinkLost`]).
    pub(crate) fn link_lost(&self) -> LinkLost {
        self.lost.clone()
    }

    /// The publishers' connection to the current master if it is at hand: `None` when it must
    /// be made (there is none, or only one to a master that has since moved) or checked first
    /// (unused for [`IDLE_CHECK`]: Redis may have restarted while nothing was published), which
    /// [`connect_publisher`](Self::connect_publisher) does. The common case takes two locks
    /// and clones nothing but the connection's handle.
    fn ready_publisher(&self) -> redis::RedisResult<Option<(u64, PublishConn)>> {
        let version = self.renewed()?.version;
        Ok(match self.cached_publisher(version) {
            Some((id, conn, false)) => Some((id, conn)),
            _ => None,
        })
    }

    /// The cached publishers' connection for `version`, and whether it must be checked before
    /// use (then it is not marked used until it has been).
    fn cached_publisher(&self, version: u64) -> Option<(u64, PublishConn, bool)> {
        let mut publisher = crate::sync::lock(&self.publisher);
        let p = publisher.as_mut().filter(|p| p.version == version)?;
        let now = Instant::now();
        let idle = now.duration_since(p.used) >= IDLE_CHECK;
        if !idle {
            p.used = now;
        }
        Some((p.id, p.conn.clone(), idle))
    }

    /// The publishers' connection when [`ready_publisher`](Self::ready_publisher) has none at
    /// hand: one caller at a time checks the cached connection or makes a new one.
    async fn connect_publisher(&self) -> redis::RedisResult<(u64, PublishConn)> {
        let _connecting = self.connecting.lock().await;
        let (version, pool) = self.current()?;
        if let Some((id, mut conn, idle)) = self.cached_publisher(version)
            && (!idle || self.alive(id, &mut conn).await)
        {
            return Ok((id, conn));
        }
        // Our own connection, or redis-rs' for a TLS host (made as the pool makes its own).
        let managed = deadpool::managed::Manager::create(pool.manager());
        let conn = PublishConn::connect(&self.host.url(), self.timeout, managed).await?;
        let id = self.made.fetch_add(1, Ordering::Relaxed);
        *crate::sync::lock(&self.publisher) = Some(Publisher {
            version,
            id,
            used: Instant::now(),
            conn: conn.clone(),
        });
        Ok((id, conn))
    }

    /// Whether the publishers' connection `id` answers `PING`; if it does, it is marked used.
    async fn alive(&self, id: u64, conn: &mut PublishConn) -> bool {
        let answered = redis::cmd("PING").query_async::<String>(conn).await.is_ok();
        if answered
            && let Some(p) = crate::sync::lock(&self.publisher)
                .as_mut()
                .filter(|p| p.id == id)
        {
            p.used = Instant::now();
        }
        answered
    }

    /// Runs `request`, a publish, on the publishers' shared connection (see [`HostPool`]).
    pub(crate) async fn publish<'a, T: redis::FromRedisValue>(
        &self,
        request: impl Into<Request<'a>>,
    ) -> redis::RedisResult<T> {
        // The slow path boxed: inline, its lock, PING and handshake made every publish's
        // future several kilobytes (a 9.7 KB allocation per group send).
        let (id, mut conn) = match self.ready_publisher()? {
            Some(ready) => ready,
            None => Box::pin(self.connect_publisher()).await?,
        };
        let mut suspect = Suspect {
            pool: self,
            id,
            armed: true,
        };
        let result = request.into().query::<T>(&mut conn).await;
        suspect.armed = result.as_ref().is_err_and(broken);
        result
    }

    async fn checkout(&self) -> redis::RedisResult<Checkout> {
        let (_, pool) = self.current()?;
        match pool.get().await {
            Ok(conn) => Ok(Checkout(Some(conn))),
            Err(deadpool::managed::PoolError::Backend(error)) => Err(error),
            Err(error) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                error.to_string(),
            ))),
        }
    }

    /// Runs `request` in `lane`.
    pub(crate) async fn run<'a, T: redis::FromRedisValue>(
        &self,
        lane: Lane,
        request: impl Into<Request<'a>>,
    ) -> redis::RedisResult<T> {
        match lane {
            Lane::Publish => self.publish(request).await,
            // Boxed: a pool's checkout (with a connection's handshake) is kilobytes, and every
            // send's future would hold it.
            Lane::Pool => Box::pin(self.query(request)).await,
        }
    }

    /// Runs `request` on a connection of the current master's pool.
    pub(crate) async fn query<'a, T: redis::FromRedisValue>(
        &self,
        request: impl Into<Request<'a>>,
    ) -> redis::RedisResult<T> {
        let mut checkout = self.checkout().await?;
        let Some(conn) = checkout.conn() else {
            return Err(redis::RedisError::from(std::io::Error::other(
                "no connection",
            )));
        };
        let result = request.into().query::<T>(conn).await;
        checkout.done(&result);
        result
    }
}

/// What a [`HostPool`] runs: one command, or a pipeline (its replies come back together).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Request<'a> {
    Cmd(&'a redis::Cmd),
    Pipeline(&'a redis::Pipeline),
}

impl<'a> From<&'a redis::Cmd> for Request<'a> {
    fn from(cmd: &'a redis::Cmd) -> Self {
        Self::Cmd(cmd)
    }
}

impl<'a> From<&'a mut redis::Cmd> for Request<'a> {
    fn from(cmd: &'a mut redis::Cmd) -> Self {
        Self::Cmd(cmd)
    }
}

impl<'a> From<&'a redis::Pipeline> for Request<'a> {
    fn from(pipe: &'a redis::Pipeline) -> Self {
        Self::Pipeline(pipe)
    }
}

impl Request<'_> {
    async fn query<T: redis::FromRedisValue>(
        self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> redis::RedisResult<T> {
        match self {
            Self::Cmd(cmd) => cmd.query_async(conn).await,
            Self::Pipeline(pipe) => pipe.query_async(conn).await,
        }
    }
}

/// Sends `request` (commands answered by one-line replies) and reads up to its `expected`
/// replies or the connection's end; returns the first error reply without its `-`. Redis
/// sends `DENIED` unasked on accept, then closes.
async fn first_error(stream: &Stream, request: &[u8], expected: usize) -> Option<String> {
    // A refusal may close the connection before the request is written: read anyway.
    let _ = stream.write_all(request).await;
    let mut replies = Vec::new();
    let complete = |replies: &[u8]| replies.windows(2).filter(|w| w == b"\r\n").count();
    while complete(&replies) < expected && replies.len() < 64 * 1024 {
        match stream.read_some(&mut replies).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    String::from_utf8_lossy(&replies)
        .split("\r\n")
        .find_map(|line| line.strip_prefix('-'))
        .map(str::to_owned)
}

/// Runs `fut` with a deadline; a timeout or a Redis error becomes `Unavailable` for `host`.
///
/// Not an `async fn`: one would hold `fut` twice (as its argument and inside the timeout), and
/// every command's future goes through here (a publish's was 776 bytes, 400 of them this).
pub(crate) fn bounded<'a, T>(
    host: &'a HostUrl,
    timeout: Duration,
    what: &'a str,
    fut: impl Future<Output = redis::RedisResult<T>> + 'a,
) -> impl Future<Output = Result<T, LayerError>> + 'a {
    use futures_util::FutureExt as _;
    tokio::time::timeout(timeout, fut).map(move |result| match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(host.unavailable(format!("{what} failed: {}", words(&error)))),
        Err(_) => Err(host.unavailable(format!("{what} timed out after {timeout:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_logs() {
        assert_eq!(redact("redis://user:secret@h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact("rediss://:pw@h/1"), "rediss://h/1");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        let url = HostUrl::parse("redis://u:topsecret@127.0.0.1:1/0").unwrap();
        assert!(!format!("{url:?}").contains("topsecret"));
        assert!(!url.unavailable("x").to_string().contains("topsecret"));
    }

    #[test]
    fn bad_urls_say_what_to_use() {
        let err = HostUrl::parse("http://x").unwrap_err().to_string();
        assert!(err.contains("redis://"), "{err}");
    }
}
