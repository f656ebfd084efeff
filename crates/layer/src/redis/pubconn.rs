//! The publishers' shared connection to a host ([`super::conn::HostPool`]'s publish lane): a
//! pipelined RESP2 connection of our own. A command is written by the task that sends it,
//! straight to the socket when nothing is waiting to be written before it, and its reply comes
//! back through a oneshot filled by the connection's reader task.
//!
//! redis-rs' multiplexed connection did this before (and still does for TLS hosts): each
//! command went through a channel to a task of its own that wrote it, and each reply through
//! its `combine` parser into a `Value`. Here the common replies (an integer, `OK`) are read
//! by [`super::resp`] without that parser; anything else is handed to redis-rs'
//! `parse_redis_value`, so every reply keeps redis-rs' meaning, and commands and pipelines keep
//! redis-rs' own `query_async` through [`redis::aio::ConnectionLike`].
//!
//! The handshake is `AUTH` (when the URL has a password) and `SELECT` (when it names a
//! database other than 0), each answered before the connection is used.
//!
//! A write or read that fails, Redis closing the connection, or a reply that is not RESP fails
//! every command waiting on the connection and every later one: the pool then makes a new one
//! (its `Suspect` guard drops a connection whose command failed that way).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{RedisFuture, Value};
use tokio::sync::{Notify, oneshot};

use super::resp::{self, Item};
use super::subconn::{READ_CHUNK, Stream, Target, dropped, handshake, make_room};

/// A connection every publish to a host shares; clones share it. It closes when the last
/// clone is dropped.
#[derive(Clone)]
pub(crate) enum PublishConn {
    Own(Arc<Handle>),
    /// TLS hosts: redis-rs' multiplexed connection.
    Managed(MultiplexedConnection),
}

impl std::fmt::Debug for PublishConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Own(_) => "PublishConn(own)",
            Self::Managed(_) => "PublishConn(redis-rs)",
        })
    }
}

/// What the clones of an own connection share; dropping the last one shuts the socket, which
/// ends the reader task.
pub(crate) struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.fail("the publishers' connection was closed");
    }
}

struct Shared {
    stream: Stream,
    /// The database the URL named (`SELECT`ed at the handshake).
    db: i64,
    state: Mutex<State>,
    /// Wakes the flusher when bytes wait in `State::out`.
    flush: Notify,
}

#[derive(Default)]
struct State {
    /// Who waits for the next replies, in order.
    pending: VecDeque<Waiter>,
    /// Bytes the socket did not take yet: written before any later command.
    out: Vec<u8>,
    /// Why the connection can no longer be used.
    dead: Option<String>,
}

/// One command's or pipeline's wait for its replies.
struct Waiter {
    /// Replies still to come.
    left: usize,
    /// Replies to drop first (a pipeline's `offset`).
    skip: usize,
    values: Vec<Value>,
    reply: oneshot::Sender<redis::RedisResult<Vec<Value>>>,
}

impl PublishConn {
    /// A connection to `url`: our own for TCP and Unix sockets (within `timeout`), redis-rs'
    /// for TLS.
    pub(crate) async fn connect(
        url: &str,
        timeout: Duration,
        managed: impl Future<Output = redis::RedisResult<MultiplexedConnection>>,
    ) -> redis::RedisResult<Self> {
        let Some(target) = Target::of(url)? else {
            return managed.await.map(Self::Managed);
        };
        let db = target.db();
        let connecting = async {
            let stream = Stream::open(target.addr()).await?;
            let mut buf = Vec::new();
            if let Some(auth) = target.auth() {
                handshake(&stream, &auth, &mut buf).await?;
            }
            if db != 0 {
                let select = redis::cmd("SELECT").arg(db).get_packed_command();
                handshake(&stream, &select, &mut buf).await?;
            }
            Ok::<_, redis::RedisError>(stream)
        };
        let stream = match tokio::time::timeout(timeout, connecting).await {
            Ok(stream) => stream?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting took over {timeout:?}"),
                )
                .into());
            }
        };
        let shared = Arc::new(Shared {
            stream,
            db,
            state: Mutex::default(),
            flush: Notify::new(),
        });
        tokio::spawn(read_replies(Arc::clone(&shared)));
        tokio::spawn(flush(Arc::clone(&shared)));
        Ok(Self::Own(Arc::new(Handle { shared })))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the connection dead for `why`, fails everyone waiting and shuts the socket (its
    /// tasks end; Redis drops the client).
    fn fail(&self, why: &str) {
        let waiters = {
            let mut state = self.lock();
            if state.dead.is_none() {
                state.dead = Some(why.to_owned());
            }
            state.out.clear();
            std::mem::take(&mut state.pending)
        };
        // The flusher ends when it sees the connection dead, the reader when it reads the end.
        self.flush.notify_one();
        let _ = self.stream.shutdown();
        for waiter in waiters {
            let _ = waiter.reply.send(Err(dropped(why)));
        }
    }

    /// Queues `bytes` (a command or a pipeline answered by `skip + count` replies) and writes
    /// what the socket takes now; the replies arrive on the returned receiver.
    fn send(
        &self,
        bytes: &[u8],
        skip: usize,
        count: usize,
    ) -> redis::RedisResult<oneshot::Receiver<redis::RedisResult<Vec<Value>>>> {
        let (reply, answer) = oneshot::channel();
        let mut state = self.lock();
        if let Some(why) = &state.dead {
            return Err(dropped(why));
        }
        state.pending.push_back(Waiter {
            left: skip + count,
            skip,
            values: Vec::with_capacity(count),
            reply,
        });
        if !state.out.is_empty() {
            // The flusher was woken when `out` filled: these bytes go after it.
            state.out.extend_from_slice(bytes);
            return Ok(answer);
        }
        let written = match self.stream.try_write(bytes) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                drop(state);
                self.fail(&format!("writing to Redis failed: {e}"));
                return Err(e.into());
            }
        };
        if written < bytes.len() {
            state.out.extend_from_slice(&bytes[written..]);
            self.flush.notify_one();
        }
        Ok(answer)
    }
}

/// Writes what the socket did not take at once, whenever there is some, until the connection
/// is dead (which wakes it too).
async fn flush(shared: Arc<Shared>) {
    loop {
        shared.flush.notified().await;
        loop {
            // A dead connection's socket is shut: it is writable at once, and the check below
            // ends this task.
            if let Err(e) = shared.stream.writable().await {
                shared.fail(&format!("writing to Redis failed: {e}"));
                return;
            }
            let mut state = shared.lock();
            if state.dead.is_some() {
                return;
            }
            if state.out.is_empty() {
                break;
            }
            match shared.stream.try_write(&state.out) {
                Ok(n) => {
                    state.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    drop(state);
                    shared.fail(&format!("writing to Redis failed: {e}"));
                    return;
                }
            }
        }
    }
}

/// Reads replies and hands each to the oldest waiter, until the connection ends.
async fn read_replies(shared: Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let why = loop {
        make_room(&mut buf);
        match shared.stream.read_some(&mut buf).await {
            Ok(0) => break "Redis closed the connection".to_owned(),
            Ok(_) => {}
            Err(e) => break format!("reading from Redis failed: {e}"),
        }
        if let Err(why) = take_replies(&shared, &mut buf) {
            tracing::warn!(%why, "redis publishers' connection dropped for a fresh one");
            break why;
        }
    };
    shared.fail(&why);
}

/// Hands every complete reply in `buf` to its waiter; keeps the start of an incomplete one.
fn take_replies(shared: &Shared, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut start = 0;
    // Taken at the first complete reply, once for all of them.
    let mut state = None;
    let result = loop {
        let used = match resp::next(&buf[start..]) {
            Ok(Some((Item::Push { .. }, used))) => {
                // RESP3 pushes (none are asked for here) are not replies.
                start += used;
                continue;
            }
            Ok(Some((_, used))) => used,
            Ok(None) => break Ok(()),
            Err(error) => break Err(format!("{}: {error}", error.lead())),
        };
        let value = match value(&buf[start..start + used]) {
            Ok(value) => value,
            Err(error) => break Err(format!("Redis sent a reply redis-rs cannot read: {error}")),
        };
        start += used;
        let state = state.get_or_insert_with(|| shared.lock());
        let Some(waiter) = state.pending.front_mut() else {
            break Err("Redis sent a reply nothing asked for".to_owned());
        };
        waiter.left -= 1;
        if waiter.skip > 0 {
            waiter.skip -= 1;
        } else {
            waiter.values.push(value);
        }
        if waiter.left == 0
            && let Some(waiter) = state.pending.pop_front()
        {
            let _ = waiter.reply.send(Ok(waiter.values));
        }
    };
    drop(state);
    buf.drain(..start);
    result
}

/// One complete reply as redis-rs' `Value`: integers and `+OK` here, the rest by redis-rs.
fn value(reply: &[u8]) -> redis::RedisResult<Value> {
    let line = reply.strip_suffix(b"\r\n").unwrap_or(reply);
    match line.split_first() {
        Some((b':', digits)) => {
            if let Some(n) = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse().ok())
            {
                return Ok(Value::Int(n));
            }
        }
        Some((b'+', b"OK")) => return Ok(Value::Okay),
        _ => {}
    }
    redis::parse_redis_value(reply)
}

impl PublishConn {
    /// Waits for the replies of what [`Shared::send`] queued.
    async fn replies(
        shared: &Shared,
        bytes: &[u8],
        skip: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        let answer = shared.send(bytes, skip, count)?;
        answer
            .await
            .unwrap_or_else(|_| Err(dropped("the connection to Redis was lost")))
    }
}

impl redis::aio::ConnectionLike for PublishConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Own(handle) => Box::pin(async move {
                let bytes = cmd.get_packed_command();
                let mut values = Self::replies(&handle.shared, &bytes, 0, 1).await?;
                values
                    .pop()
                    .ok_or_else(|| dropped("Redis' reply went missing"))
            }),
            Self::Managed(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Own(handle) => Box::pin(async move {
                let bytes = pipeline.get_packed_pipeline();
                Self::replies(&handle.shared, &bytes, offset, count).await
            }),
            Self::Managed(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Own(handle) => handle.shared.db,
            Self::Managed(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::fake::{FakeConn, FakeRedis};
    use crate::redis::text::words;

    #[test]
    fn common_replies_are_read_here_and_the_rest_by_redis_rs() {
        assert_eq!(value(b":42\r\n").unwrap(), Value::Int(42));
        assert_eq!(value(b":-1\r\n").unwrap(), Value::Int(-1));
        assert_eq!(value(b"+OK\r\n").unwrap(), Value::Okay);
        assert_eq!(
            value(b"+PONG\r\n").unwrap(),
            Value::SimpleString("PONG".to_owned())
        );
        assert_eq!(
            value(b"*2\r\n$1\r\na\r\n:1\r\n").unwrap(),
            Value::Array(vec![Value::BulkString(b"a".to_vec()), Value::Int(1)])
        );
        // An error reply is a value (redis-rs' `query_async` turns it into its error), so it
        // never ends the connection.
        let error = value(b"-NOSCRIPT No matching script\r\n").unwrap();
        let error = error.extract_error().unwrap_err();
        assert_eq!(words(&error), "NOSCRIPT No matching script");
    }

    /// Connecting to `url` (plain TCP: redis-rs' connection is never made).
    fn connecting(url: String) -> tokio::task::JoinHandle<redis::RedisResult<PublishConn>> {
        let managed = std::future::pending::<redis::RedisResult<MultiplexedConnection>>();
        tokio::spawn(
            async move { PublishConn::connect(&url, Duration::from_secs(5), managed).await },
        )
    }

    /// A connection to `redis` with `auth` (`:pw@` or nothing) and database `db`, once the
    /// fake took its handshake; and the fake's end.
    async fn connected(redis: &FakeRedis, auth: &str, db: i64) -> (PublishConn, FakeConn) {
        let connecting = connecting(format!("redis://{auth}127.0.0.1:{}/{db}", redis.port()));
        let mut conn = redis.accept().await;
        if !auth.is_empty() {
            assert_eq!(conn.command().await, "AUTH pw");
            conn.send(b"+OK\r\n").await;
        }
        if db != 0 {
            assert_eq!(conn.command().await, format!("SELECT {db}"));
            conn.send(b"+OK\r\n").await;
        }
        (connecting.await.unwrap().unwrap(), conn)
    }

    fn publish(
        conn: &PublishConn,
        payload: &str,
    ) -> tokio::task::JoinHandle<redis::RedisResult<i64>> {
        let mut conn = conn.clone();
        let cmd = redis::cmd("PUBLISH").arg("ch").arg(payload).clone();
        tokio::spawn(async move { cmd.query_async::<i64>(&mut conn).await })
    }

    #[tokio::test]
    async fn replies_are_matched_in_order_and_pipelines_keep_redis_rs_meaning() {
        let redis = FakeRedis::start().await;
        let (conn, mut fake) = connected(&redis, ":pw@", 2).await;
        assert_eq!(redis::aio::ConnectionLike::get_db(&conn), 2);
        let first = publish(&conn, "x");
        assert_eq!(fake.command().await, "PUBLISH ch x");
        let pipelined = tokio::spawn({
            let mut conn = conn.clone();
            async move {
                redis::pipe()
                    .atomic()
                    .cmd("INCR")
                    .arg("k")
                    .cmd("GET")
                    .arg("k")
                    .query_async::<(i64, String)>(&mut conn)
                    .await
            }
        });
        for want in ["MULTI", "INCR k", "GET k", "EXEC"] {
            assert_eq!(fake.command().await, want);
        }
        fake.send(b":3\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n$1\r\n1\r\n")
            .await;
        assert_eq!(first.await.unwrap().unwrap(), 3);
        assert_eq!(pipelined.await.unwrap().unwrap(), (1, "1".to_owned()));
    }

    #[tokio::test]
    async fn an_error_reply_fails_its_command_in_redis_words_and_the_connection_stays() {
        let redis = FakeRedis::start().await;
        let (conn, mut fake) = connected(&redis, "", 0).await;
        let refused = publish(&conn, "x");
        assert_eq!(fake.command().await, "PUBLISH ch x");
        fake.send(b"-NOPERM User has no permissions to access the 'ch' channel\r\n")
            .await;
        let error = refused.await.unwrap().unwrap_err();
        assert_eq!(
            words(&error),
            "NOPERM User has no permissions to access the 'ch' channel"
        );
        let next = publish(&conn, "y");
        assert_eq!(fake.command().await, "PUBLISH ch y");
        fake.send(b":0\r\n").await;
        assert_eq!(next.await.unwrap().unwrap(), 0);
    }

    #[tokio::test]
    async fn a_refused_auth_fails_the_connection_in_redis_words() {
        let redis = FakeRedis::start().await;
        let connecting = connecting(format!("redis://u:bad@127.0.0.1:{}/0", redis.port()));
        let mut fake = redis.accept().await;
        assert_eq!(fake.command().await, "AUTH u bad");
        fake.send(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
            .await;
        let error = connecting.await.unwrap().unwrap_err();
        assert_eq!(
            words(&error),
            "WRONGPASS invalid username-password pair or user is disabled."
        );
    }

    #[tokio::test]
    async fn garbage_fails_every_waiting_command_and_every_later_one() {
        let redis = FakeRedis::start().await;
        let (conn, mut fake) = connected(&redis, "", 0).await;
        let (a, b) = (publish(&conn, "a"), publish(&conn, "b"));
        fake.command().await;
        fake.command().await;
        fake.send(b"@oops\r\n").await;
        for waiting in [a, b] {
            let error = waiting.await.unwrap().unwrap_err();
            assert!(error.is_io_error(), "{error}");
            assert!(words(&error).contains("not RESP"), "{}", words(&error));
        }
        let later = publish(&conn, "c").await.unwrap().unwrap_err();
        assert!(words(&later).contains("not RESP"), "{}", words(&later));
        assert!(fake.closed().await, "the connection stayed open");
    }

    #[tokio::test]
    async fn redis_closing_fails_what_waits() {
        let redis = FakeRedis::start().await;
        let (conn, mut fake) = connected(&redis, "", 0).await;
        let waiting = publish(&conn, "a");
        fake.command().await;
        drop(fake);
        let error = waiting.await.unwrap().unwrap_err();
        assert!(
            words(&error).contains("closed the connection"),
            "{}",
            words(&error)
        );
    }

    #[tokio::test]
    async fn a_command_the_socket_cannot_take_at_once_still_goes_first() {
        let redis = FakeRedis::start().await;
        let (conn, mut fake) = connected(&redis, "", 0).await;
        // More than the loopback socket buffers hold while the fake reads nothing.
        let big = "x".repeat(32 * 1024 * 1024);
        let first = publish(&conn, &big);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = publish(&conn, "small");
        let command = fake.command().await;
        assert!(command.starts_with("PUBLISH ch xxx") && command.len() == big.len() + 11);
        assert_eq!(fake.command().await, "PUBLISH ch small");
        fake.send(b":1\r\n:2\r\n").await;
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(second.await.unwrap().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_reply_of_a_million_bytes_cut_in_pieces_is_read_whole() {
        let redis = FakeRedis::start().await;
        let (mut conn, mut fake) = connected(&redis, "", 0).await;
        let reading = tokio::spawn(async move {
            redis::cmd("ZRANGE")
                .arg("g")
                .arg(0)
                .arg(-1)
                .query_async::<Vec<String>>(&mut conn)
                .await
        });
        assert_eq!(fake.command().await, "ZRANGE g 0 -1");
        let members = 200_000;
        let mut reply = format!("*{members}\r\n").into_bytes();
        for i in 0..members {
            reply.extend_from_slice(format!("$7\r\nm{i:06}\r\n").as_bytes());
        }
        for piece in reply.chunks(7_000) {
            fake.send(piece).await;
        }
        let read = reading.await.unwrap().unwrap();
        assert_eq!(read.len(), members);
        assert_eq!((&*read[0], &*read[members - 1]), ("m000000", "m199999"));
    }

    #[tokio::test]
    async fn the_connection_closes_with_its_last_clone() {
        let redis = FakeRedis::start().await;
        let (conn, mut fake) = connected(&redis, "", 0).await;
        let clone = conn.clone();
        drop(conn);
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(clone);
        assert!(fake.closed().await, "the connection outlived its clones");
    }
}
