//! The pub/sub layer's subscriber connection: one RESP3 connection to a host, made and remade
//! by a task of its own, whose pushes reach a callback as slices of the read buffer.
//!
//! redis-rs' `ConnectionManager` did this job before, and still does for TLS hosts
//! (`rediss://`, whose rustls setup stays redis-rs'): every push went through its `combine`
//! parser into a `Value` tree, then through an unbounded channel to a second task before the
//! callback ran. Here one task reads the socket, finds each value's end with [`super::resp`]
//! and calls the callback with the channel and payload where they lie: 5-11 % less CPU per
//! delivery for a replica (BENCHMARKS.md).
//!
//! What it keeps of the old behaviour: it connects at once and reconnects forever, 50 ms
//! apart at first and at most `max_delay`; a lost connection is reported as
//! [`Push::Disconnected`] (the shard then resubscribes everything, as after any reconnect:
//! nothing is replayed here); commands run in order with their replies matched in order
//! (`SUBSCRIBE` of n channels is answered by n confirmations). A command sent while no
//! connection is up fails at once with why (Redis' words when Redis refused the handshake).
//! Anything Redis sends that is not RESP3 drops the connection (logged with what and where)
//! for a fresh one.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};

use super::resp::{self, Item};

/// What the subscriber hands its callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push<'a> {
    /// A message on a channel it subscribed to.
    Message {
        channel: &'a [u8],
        payload: &'a [u8],
    },
    /// A message on a channel that matched a pattern it subscribed to.
    PMessage {
        channel: &'a [u8],
        payload: &'a [u8],
    },
    /// The connection was lost (it is being remade; nothing is resubscribed by itself).
    Disconnected,
    /// A connection is up again after one was lost: subscribe now. (A subscriber's first
    /// connection is not announced: whoever made it subscribes when it is ready to.)
    Reconnected,
}

/// The callback: runs on the connection's task, must not block.
pub(crate) type OnPush = Arc<dyn Fn(Push<'_>) + Send + Sync>;

/// The first reconnect delay (doubled after each failure up to the configured maximum).
const MIN_DELAY: Duration = Duration::from_millis(50);
/// Commands waiting for the connection's task: callers wait (within their deadlines) when
/// this many are queued.
const COMMAND_QUEUE: usize = 64;
/// The read buffer's size when it is (re)made.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Room for the next read: at least a quarter of [`READ_CHUNK`], and as much again as the
/// buffer holds when it holds the start of a large value, so that a value of n bytes takes
/// O(log n) reads (each read looks at the value from its start again). A buffer left empty
/// and large is made small again.
pub(crate) fn make_room(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
        *buf = Vec::with_capacity(READ_CHUNK);
    }
    let want = READ_CHUNK.max(buf.len());
    if buf.capacity() - buf.len() < want / 4 {
        buf.reserve(want);
    }
}

/// A handle to a subscriber connection; clones share it. The connection (and its task) ends
/// when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct Subscriber(Kind);

#[derive(Clone)]
enum Kind {
    Own(mpsc::Sender<Command>),
    /// TLS hosts: redis-rs' connection manager, its pushes adapted to [`Push`].
    Managed(ConnectionManager),
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::Own(_) => "Subscriber(own)",
            Kind::Managed(_) => "Subscriber(redis-rs)",
        })
    }
}

/// A command for the connection's task.
struct Command {
    bytes: Vec<u8>,
    expect: Expect,
    reply: oneshot::Sender<redis::RedisResult<()>>,
}

/// What answers a command.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// One reply (`PING`).
    Reply,
    /// One confirmation push of this kind per channel or pattern (`SUBSCRIBE` and the like).
    Confirmations { kind: &'static [u8], left: usize },
}

/// Where the connection goes and who it is.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    addr: Addr,
    username: Option<String>,
    password: Option<String>,
    /// The database the URL names (the publishers' connection `SELECT`s it).
    db: i64,
}

#[derive(Debug, Clone)]
pub(crate) enum Addr {
    Tcp(String, u16),
    Unix(std::path::PathBuf),
}

impl Target {
    /// The target of `url`, or `None` for a TLS URL (which keeps redis-rs' connection).
    pub(crate) fn of(url: &str) -> redis::RedisResult<Option<Self>> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)?;
        let settings = info.redis_settings();
        let addr = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
            redis::ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
            _ => return Ok(None),
        };
        Ok(Some(Self {
            addr,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
        }))
    }

    pub(crate) fn addr(&self) -> &Addr {
        &self.addr
    }

    pub(crate) fn db(&self) -> i64 {
        self.db
    }

    /// `AUTH [user] password` when the URL has a password.
    pub(crate) fn auth(&self) -> Option<Vec<u8>> {
        let password = self.password.as_ref()?;
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = &self.username {
            auth.arg(user);
        }
        Some(auth.arg(password).get_packed_command())
    }

    /// `HELLO 3`, with `AUTH` when the URL has a password.
    fn hello(&self) -> Vec<u8> {
        let mut hello = redis::cmd("HELLO");
        hello.arg(3);
        if let Some(password) = &self.password {
            hello
                .arg("AUTH")
                .arg(self.username.as_deref().unwrap_or("default"))
                .arg(password);
        }
        hello.get_packed_command()
    }
}

impl Subscriber {
    /// A connection of our own to `target`, made at once on a task of its own and remade
    /// whenever it is lost.
    pub(crate) fn own(
        target: Target,
        timeout: Duration,
        max_delay: Duration,
        on_push: OnPush,
    ) -> Self {
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        tokio::spawn(run(target, timeout, max_delay, on_push, queue));
        Self(Kind::Own(commands))
    }

    /// redis-rs' connection manager (for TLS hosts), made by the caller with a push sender
    /// that calls [`from_push_info`].
    pub(crate) fn managed(manager: ConnectionManager) -> Self {
        Self(Kind::Managed(manager))
    }

    pub(crate) async fn ping(&mut self) -> redis::RedisResult<()> {
        match &mut self.0 {
            Kind::Own(commands) => {
                let bytes = redis::cmd("PING").get_packed_command();
                call(commands, bytes, Expect::Reply).await
            }
            Kind::Managed(manager) => redis::cmd("PING")
                .query_async::<redis::Value>(manager)
                .await
                .map(drop),
        }
    }

    pub(crate) async fn psubscribe(&mut self, pattern: &str) -> redis::RedisResult<()> {
        self.confirmed("PSUBSCRIBE", b"psubscribe", &[pattern.to_owned()])
            .await
    }

    pub(crate) async fn subscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        self.confirmed("SUBSCRIBE", b"subscribe", channels).await
    }

    pub(crate) async fn unsubscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        self.confirmed("UNSUBSCRIBE", b"unsubscribe", channels)
            .await
    }

    /// `command` for `channels`, done when Redis confirmed each.
    async fn confirmed(
        &mut self,
        command: &str,
        kind: &'static [u8],
        channels: &[String],
    ) -> redis::RedisResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        match &mut self.0 {
            Kind::Own(commands) => {
                let bytes = redis::cmd(command).arg(channels).get_packed_command();
                let expect = Expect::Confirmations {
                    kind,
                    left: channels.len(),
                };
                call(commands, bytes, expect).await
            }
            Kind::Managed(manager) => match kind {
                b"subscribe" => manager.subscribe(channels).await,
                b"psubscribe" => manager.psubscribe(channels).await,
                _ => manager.unsubscribe(channels).await,
            },
        }
    }
}

/// A redis-rs push as a [`Push`] (for the TLS hosts' connection manager).
pub(crate) fn from_push_info(push: &redis::PushInfo, on_push: &OnPush) {
    use redis::Value::BulkString;
    match (&push.kind, &push.data[..]) {
        (redis::PushKind::Message, [BulkString(channel), BulkString(payload)]) => {
            on_push(Push::Message { channel, payload });
        }
        (redis::PushKind::PMessage, [_, BulkString(channel), BulkString(payload)]) => {
            on_push(Push::PMessage { channel, payload });
        }
        (redis::PushKind::Disconnection, _) => on_push(Push::Disconnected),
        _ => {}
    }
}

/// Sends a command to the connection's task and waits for its answer.
async fn call(
    commands: &mpsc::Sender<Command>,
    bytes: Vec<u8>,
    expect: Expect,
) -> redis::RedisResult<()> {
    let (reply, answer) = oneshot::channel();
    let command = Command {
        bytes,
        expect,
        reply,
    };
    if commands.send(command).await.is_err() {
        return Err(dropped("the subscriber connection was closed"));
    }
    answer
        .await
        .unwrap_or_else(|_| Err(dropped("the connection to Redis was lost")))
}

/// An error that says the connection is gone, in `words`.
pub(crate) fn dropped(words: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        words.to_owned(),
    ))
}

/// Redis' error reply `text` as an error whose code and detail are Redis' own.
pub(crate) fn server_error(text: &[u8]) -> redis::RedisError {
    let text = String::from_utf8_lossy(text);
    let (code, detail) = text.split_once(' ').unwrap_or((&text, ""));
    redis::make_extension_error(code.to_owned(), Some(detail.to_owned()))
}

/// The connection's task: connects, serves, reconnects, until every handle is gone.
async fn run(
    target: Target,
    timeout: Duration,
    max_delay: Duration,
    on_push: OnPush,
    mut commands: mpsc::Receiver<Command>,
) {
    let mut delay = MIN_DELAY;
    let mut lost = false;
    loop {
        let connected = tokio::time::timeout(timeout, connect(&target)).await;
        if lost && matches!(connected, Ok(Ok(_))) {
            on_push(Push::Reconnected);
        }
        let outcome = match connected {
            Ok(Ok((stream, buf))) => Some(serve(&stream, buf, &on_push, &mut commands).await),
            Ok(Err(error)) => {
                refuse_until(&mut commands, &error, delay).await;
                None
            }
            Err(_) => {
                let error = dropped(&format!("connecting took over {timeout:?}"));
                refuse_until(&mut commands, &error, delay).await;
                None
            }
        };
        match outcome {
            Some(Served::Closed) => return,
            Some(Served::Lost(why)) => {
                tracing::debug!(%why, "redis subscriber connection lost");
                delay = MIN_DELAY;
                lost = true;
                on_push(Push::Disconnected);
            }
            None => delay = (delay * 2).min(max_delay.max(MIN_DELAY)),
        }
        if commands.is_closed() {
            return;
        }
    }
}

/// For `delay` (or until every handle is gone): answers each command with `error`.
async fn refuse_until(
    commands: &mut mpsc::Receiver<Command>,
    error: &redis::RedisError,
    delay: Duration,
) {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return,
            command = commands.recv() => match command {
                Some(command) => {
                    let _ = command.reply.send(Err(error.clone()));
                }
                None => return,
            },
        }
    }
}

/// A connection to a Redis host: TCP or a Unix socket, used through its readiness (`&self`),
/// so that the publishers' connection can write from the task that sends while its reader
/// task reads.
pub(crate) enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Stream {
    /// A connection to `addr` (over TCP, without Nagle's delay).
    pub(crate) async fn open(addr: &Addr) -> io::Result<Self> {
        Ok(match addr {
            Addr::Tcp(host, port) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Self::Tcp(stream)
            }
            Addr::Unix(path) => Self::Unix(tokio::net::UnixStream::connect(path).await?),
        })
    }

    /// Writes what the socket takes now (`WouldBlock` when it takes nothing).
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.try_write(buf),
            Self::Unix(s) => s.try_write(buf),
        }
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.writable().await,
            Self::Unix(s) => s.writable().await,
        }
    }

    pub(crate) async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            self.writable().await?;
            match self.try_write(buf) {
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits for bytes and appends them to `buf` (0: the peer closed). Cancel-safe: nothing
    /// is read until it returns.
    ///
    /// A read that fills less than the room `buf` had emptied the socket (epoll is edge
    /// triggered): its readiness is cleared then, as tokio's own `TcpStream::poll_read` does,
    /// so the next call waits for the next edge instead of a `recv` that can only answer
    /// EAGAIN (one wasted system call per wake-up of each Redis connection). `try_io` clears
    /// it when its closure says `WouldBlock`; the bytes read are kept in `short`. The client
    /// sockets do the same in the server crate (`connection::direct`, `SplitIo::poll_read`).
    pub(crate) async fn read_some(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            match self {
                Self::Tcp(s) => s.readable().await?,
                Self::Unix(s) => s.readable().await?,
            }
            let room = buf.capacity() - buf.len();
            let mut short = 0;
            let mut read_clearing = |read: io::Result<usize>| match read {
                Ok(n) if 0 < n && n < room => {
                    short = n;
                    Err(io::ErrorKind::WouldBlock.into())
                }
                read => read,
            };
            let read = match self {
                Self::Tcp(s) => s.try_io(Interest::READABLE, || read_clearing(s.try_read_buf(buf))),
                Self::Unix(s) => {
                    s.try_io(Interest::READABLE, || read_clearing(s.try_read_buf(buf)))
                }
            };
            match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => return Ok(short),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                read => return read,
            }
        }
    }

    /// Shuts both directions: a task reading it sees the end.
    pub(crate) fn shutdown(&self) -> io::Result<()> {
        let how = std::net::Shutdown::Both;
        match self {
            Self::Tcp(s) => socket2::SockRef::from(s).shutdown(how),
            Self::Unix(s) => socket2::SockRef::from(s).shutdown(how),
        }
    }
}

/// A connection to `target` that answered `HELLO 3` (with its credentials), and what Redis
/// sent after that answer.
async fn connect(target: &Target) -> redis::RedisResult<(Stream, Vec<u8>)> {
    let stream = Stream::open(&target.addr).await?;
    let mut buf = Vec::with_capacity(READ_CHUNK);
    handshake(&stream, &target.hello(), &mut buf).await?;
    Ok((stream, buf))
}

/// Sends `command` (a handshake's, before anything else is sent) and reads its reply into
/// `buf`, which keeps what came after it: an error reply (`WRONGPASS ...`, `DENIED ...`,
/// `NOPROTO ...`) fails in Redis' words.
pub(crate) async fn handshake(
    stream: &Stream,
    command: &[u8],
    buf: &mut Vec<u8>,
) -> redis::RedisResult<()> {
    stream.write_all(command).await?;
    // `*N\r\n$len\r\nNAME\r\n...`: the command's name, for errors.
    let name = command.split(|b| *b == b'\n').nth(2).unwrap_or(b"?");
    let name = String::from_utf8_lossy(name).trim_end().to_owned();
    loop {
        match resp::next(buf) {
            Ok(Some((Item::Error(text), _))) => return Err(server_error(text)),
            Ok(Some((Item::Push { .. }, _))) => {
                return Err(dropped(&format!(
                    "Redis sent a push before answering {name}"
                )));
            }
            Ok(Some((Item::Reply, used))) => {
                buf.drain(..used);
                return Ok(());
            }
            Ok(None) => {}
            Err(error) => return Err(dropped(&format!("Redis' answer to {name}: {error}"))),
        }
        if stream.read_some(buf).await? == 0 {
            return Err(dropped(&format!(
                "Redis closed the connection during {name}"
            )));
        }
    }
}

/// How a connection ended.
enum Served {
    /// Every handle is gone.
    Closed,
    /// The connection was lost (read or write failed, Redis closed it, or sent garbage).
    Lost(String),
}

/// Serves one connection: commands in, replies and pushes out, until it ends.
async fn serve(
    stream: &Stream,
    mut buf: Vec<u8>,
    on_push: &OnPush,
    commands: &mut mpsc::Receiver<Command>,
) -> Served {
    let mut pending: VecDeque<(Expect, oneshot::Sender<redis::RedisResult<()>>)> = VecDeque::new();
    if let Err(why) = take_items(&mut buf, &mut pending, on_push) {
        return Served::Lost(why);
    }
    let served = loop {
        make_room(&mut buf);
        let event = tokio::select! {
            biased;
            read = stream.read_some(&mut buf) => Ok(read),
            command = commands.recv() => Err(command),
        };
        match event {
            Ok(Ok(0)) => break Served::Lost("Redis closed the connection".to_owned()),
            Ok(Ok(_)) => {
                if let Err(why) = take_items(&mut buf, &mut pending, on_push) {
                    break Served::Lost(why);
                }
            }
            Ok(Err(error)) => break Served::Lost(error.to_string()),
            Err(None) => break Served::Closed,
            Err(Some(command)) => {
                if let Err(error) = stream.write_all(&command.bytes).await {
                    let _ = command.reply.send(Err(error.into()));
                    break Served::Lost("writing a command failed".to_owned());
                }
                pending.push_back((command.expect, command.reply));
            }
        }
    };
    let why = match &served {
        Served::Closed => "the subscriber connection was closed",
        Served::Lost(_) => "the connection to Redis was lost",
    };
    for (_, reply) in pending {
        let _ = reply.send(Err(dropped(why)));
    }
    served
}

/// Handles every complete value in `buf` and keeps only the start of an incomplete one.
fn take_items(
    buf: &mut Vec<u8>,
    pending: &mut VecDeque<(Expect, oneshot::Sender<redis::RedisResult<()>>)>,
    on_push: &OnPush,
) -> Result<(), String> {
    let mut start = 0;
    let result = loop {
        let (item, used) = match resp::next(&buf[start..]) {
            Ok(Some(found)) => found,
            Ok(None) => break Ok(()),
            Err(error) => {
                let offset = start + error.offset;
                let why = format!("{}: {}", error.lead(), resp::Error { offset, ..error });
                tracing::warn!(%why, "redis subscriber connection dropped for a fresh one");
                break Err(why);
            }
        };
        start += used;
        if let Err(why) = take_item(item, pending, on_push) {
            break Err(why);
        }
    };
    buf.drain(..start);
    result
}

/// One value from Redis: a push for the callback, or the answer (or part of it) to the oldest
/// command waiting.
fn take_item(
    item: Item<'_>,
    pending: &mut VecDeque<(Expect, oneshot::Sender<redis::RedisResult<()>>)>,
    on_push: &OnPush,
) -> Result<(), String> {
    if let Some((kind, parts)) = item.push() {
        match (kind, parts) {
            (b"message", [channel, payload, ..]) => on_push(Push::Message { channel, payload }),
            (b"pmessage", [_, channel, payload, ..]) => {
                on_push(Push::PMessage { channel, payload });
            }
            (b"subscribe" | b"psubscribe" | b"unsubscribe" | b"punsubscribe", _) => {
                confirm(kind, pending);
            }
            // Anything else (client tracking, a module's pushes) is not ours.
            _ => {}
        }
        return Ok(());
    }
    let Some((expect, reply)) = pending.pop_front() else {
        return Err("Redis sent a reply nothing asked for".to_owned());
    };
    let result = match (item, expect) {
        (Item::Error(text), _) => Err(server_error(text)),
        (_, Expect::Reply) => Ok(()),
        (_, Expect::Confirmations { .. }) => {
            return Err("Redis answered a subscription with a reply, not a push".to_owned());
        }
    };
    let _ = reply.send(result);
    Ok(())
}

/// A confirmation push of `kind`: counts toward the oldest command if it waits for those. One
/// nothing waits for (an unsubscription Redis made on its own) is not ours to count.
fn confirm(kind: &[u8], pending: &mut VecDeque<(Expect, oneshot::Sender<redis::RedisResult<()>>)>) {
    let Some((Expect::Confirmations { kind: wanted, left }, _)) = pending.front_mut() else {
        return;
    };
    if *wanted != kind {
        return;
    }
    *left -= 1;
    if *left == 0
        && let Some((_, reply)) = pending.pop_front()
    {
        let _ = reply.send(Ok(()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::redis::fake::{FakeConn, FakeRedis};
    use crate::redis::text::words;

    /// What the callback was given, as text, in order.
    fn recorder() -> (Arc<Mutex<Vec<String>>>, OnPush) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let on_push: OnPush = Arc::new(move |push: Push<'_>| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let line = match push {
                Push::Message { channel, payload } => {
                    format!("message {} {}", text(channel), text(payload))
                }
                Push::PMessage { channel, payload } => {
                    format!("pmessage {} {}", text(channel), text(payload))
                }
                Push::Disconnected => "disconnected".to_owned(),
                Push::Reconnected => "reconnected".to_owned(),
            };
            record.lock().unwrap().push(line);
        });
        (seen, on_push)
    }

    /// A fake Redis, and a subscriber of its own to it.
    async fn fake(password: Option<&str>) -> (FakeRedis, Subscriber, Arc<Mutex<Vec<String>>>) {
        let redis = FakeRedis::start().await;
        let target = Target {
            addr: Addr::Tcp("127.0.0.1".to_owned(), redis.port()),
            username: None,
            password: password.map(str::to_owned),
            db: 0,
        };
        let (seen, on_push) = recorder();
        let sub = Subscriber::own(
            target,
            Duration::from_secs(2),
            Duration::from_millis(100),
            on_push,
        );
        (redis, sub, seen)
    }

    /// Accepts the subscriber's next connection and answers its `HELLO` with `answer`.
    async fn accept(redis: &FakeRedis, answer: &[u8]) -> (FakeConn, String) {
        let mut conn = redis.accept().await;
        let hello = conn.command().await;
        conn.send(answer).await;
        (conn, hello)
    }

    /// A ping the fake answers succeeds.
    async fn answered_ping(sub: &Subscriber, redis: &mut FakeConn) {
        let pinging = tokio::spawn({
            let mut sub = sub.clone();
            async move { sub.ping().await }
        });
        assert_eq!(redis.command().await, "PING");
        redis.send(b"+PONG\r\n").await;
        pinging.await.unwrap().unwrap();
    }

    const HELLO_REPLY: &[u8] = b"%1\r\n$5\r\nproto\r\n:3\r\n";

    async fn eventually_seen(seen: &Mutex<Vec<String>>, want: &[&str]) {
        for _ in 0..500 {
            if *seen.lock().unwrap() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*seen.lock().unwrap(), want);
    }

    #[tokio::test]
    async fn pushes_cut_anywhere_reach_the_callback_once_each() {
        let (fake_redis, _sub, seen) = fake(None).await;
        let (mut redis, hello) = accept(&fake_redis, HELLO_REPLY).await;
        assert_eq!(hello, "HELLO 3");
        let pushes = b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$4\r\nx\r\ny\r\n\
            >4\r\n$8\r\npmessage\r\n$2\r\np*\r\n$2\r\npb\r\n$0\r\n\r\n\
            >3\r\n$11\r\nunsubscribe\r\n$1\r\nz\r\n:0\r\n\
            >3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$3\r\nend\r\n";
        for byte in pushes {
            redis.send(&[*byte]).await;
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        eventually_seen(
            &seen,
            &["message a x\r\ny", "pmessage pb ", "message c end"],
        )
        .await;
    }

    #[tokio::test]
    async fn replies_and_confirmations_are_matched_in_order_around_pushes() {
        let (fake_redis, sub, seen) = fake(Some("pw")).await;
        let (mut redis, hello) = accept(&fake_redis, HELLO_REPLY).await;
        assert_eq!(hello, "HELLO 3 AUTH default pw");
        let subscribing = tokio::spawn({
            let mut sub = sub.clone();
            async move { sub.subscribe(&["a".to_owned(), "b".to_owned()]).await }
        });
        assert_eq!(redis.command().await, "SUBSCRIBE a b");
        redis
            .send(b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n>3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n")
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !subscribing.is_finished(),
            "done after one confirmation of two"
        );
        redis
            .send(b">3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n")
            .await;
        subscribing.await.unwrap().unwrap();

        answered_ping(&sub, &mut redis).await;
        eventually_seen(&seen, &["message a hi"]).await;
    }

    #[tokio::test]
    async fn an_error_reply_fails_its_command_in_redis_words_and_the_connection_stays() {
        let (fake_redis, sub, _seen) = fake(None).await;
        let (mut redis, _) = accept(&fake_redis, HELLO_REPLY).await;
        let subscribing = tokio::spawn({
            let mut sub = sub.clone();
            async move { sub.subscribe(&["secret".to_owned()]).await }
        });
        assert_eq!(redis.command().await, "SUBSCRIBE secret");
        redis
            .send(b"-NOPERM User layer has no permissions to access the 'secret' channel\r\n")
            .await;
        let error = subscribing.await.unwrap().unwrap_err();
        assert_eq!(
            words(&error),
            "NOPERM User layer has no permissions to access the 'secret' channel"
        );
        answered_ping(&sub, &mut redis).await;
    }

    #[tokio::test]
    async fn a_refused_handshake_fails_commands_in_redis_words() {
        let (fake_redis, mut sub, _seen) = fake(Some("wrong")).await;
        let refusal = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
        let (_redis, _) = accept(&fake_redis, refusal).await;
        let mut error = None;
        for _ in 0..100 {
            match sub.ping().await {
                Err(e) if words(&e).starts_with("WRONGPASS") => {
                    error = Some(e);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let error = error.expect("no command failed with Redis' words");
        assert_eq!(
            words(&error),
            "WRONGPASS invalid username-password pair or user is disabled."
        );
        // It keeps trying.
        let (_again, hello) = accept(&fake_redis, refusal).await;
        assert_eq!(hello, "HELLO 3 AUTH default wrong");
    }

    #[tokio::test]
    async fn garbage_from_redis_drops_the_connection_for_a_fresh_one() {
        let (fake_redis, sub, seen) = fake(None).await;
        let (mut redis, _) = accept(&fake_redis, HELLO_REPLY).await;
        let pinging = tokio::spawn({
            let mut sub = sub.clone();
            async move { sub.ping().await }
        });
        assert_eq!(redis.command().await, "PING");
        redis
            .send(b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nok\r\n@garbage\r\n>3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nnever\r\n")
            .await;
        let error = pinging.await.unwrap().unwrap_err();
        assert!(words(&error).contains("lost"), "{}", words(&error));
        // The garbage closed the connection: Redis' end reads its end.
        assert!(redis.closed().await, "the connection stayed open");

        let (mut redis, _) = accept(&fake_redis, HELLO_REPLY).await;
        redis
            .send(b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nagain\r\n")
            .await;
        eventually_seen(
            &seen,
            &[
                "message a ok",
                "disconnected",
                "reconnected",
                "message a again",
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn the_connection_ends_with_its_last_handle() {
        let (fake_redis, sub, _seen) = fake(None).await;
        let (mut redis, _) = accept(&fake_redis, HELLO_REPLY).await;
        let clone = sub.clone();
        drop(sub);
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(clone);
        assert!(redis.closed().await, "the connection outlived its handles");
    }

    /// A read that empties the socket clears its readiness (no `recv` answering EAGAIN); the
    /// bytes that come after it are still read, however they are cut.
    #[tokio::test]
    async fn a_short_read_waits_for_the_next_bytes_and_loses_none() {
        let redis = FakeRedis::start().await;
        let addr = Addr::Tcp("127.0.0.1".to_owned(), redis.port());
        let (stream, mut conn) = tokio::join!(Stream::open(&addr), redis.accept());
        let stream = stream.unwrap();
        let mut buf = Vec::with_capacity(READ_CHUNK);
        for piece in [&b"+O"[..], b"K\r\n", b":1\r\n:2\r\n"] {
            conn.send(piece).await;
            let before = buf.len();
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read_some(&mut buf))
                .await
                .expect("bytes Redis sent after a short read were never read")
                .unwrap();
            assert_eq!(&buf[before..before + n], piece);
        }
        assert_eq!(buf, b"+OK\r\n:1\r\n:2\r\n");
        // Nothing more was sent: the next read waits.
        let more = tokio::time::timeout(Duration::from_millis(100), stream.read_some(&mut buf));
        assert!(more.await.is_err(), "a read returned with nothing sent");
    }
}
