//! Connections to one Redis host: a publisher pool and a subscriber connection, plus the helpers
//! both Redis backends need (URL checks, credential-free host names for logs and errors).

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Config as PoolConfig, Pool, PoolConfig as PoolSize, Runtime, Timeouts};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::LayerError;

/// A Redis URL checked once, with a printable form that hides credentials.
#[derive(Clone)]
pub(crate) struct HostUrl {
    url: String,
    /// `redis://host:port/db` without user or password, for logs and errors.
    display: Arc<str>,
}

impl std::fmt::Debug for HostUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl HostUrl {
    /// Checks that `url` is a `redis://` or `rediss://` URL redis-rs can use.
    pub(crate) fn parse(url: &str) -> Result<Self, LayerError> {
        let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| {
            LayerError::Config(format!(
                "{}: not a Redis URL ({e}); use redis://[user:password@]host:port/db or rediss://",
                redact(url)
            ))
        })?;
        let _ = info;
        Ok(Self {
            url: url.to_owned(),
            display: redact(url).into(),
        })
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
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}protocol=resp3", self.url)
    }

    /// `error`, or Redis' own words when Redis refuses a fresh connection (see
    /// [`refusal`](Self::refusal)): redis-rs retries a refused subscriber connection in
    /// silence, so calls on it only time out, and it reports a refused `AUTH` without Redis'
    /// text.
    pub(crate) async fn explain(&self, error: LayerError, timeout: Duration) -> LayerError {
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
        let info = redis::IntoConnectionInfo::into_connection_info(self.url.as_str()).ok()?;
        let settings = info.redis_settings();
        let mut request = Vec::new();
        let mut replies = 1;
        if let Some(password) = settings.password() {
            replies += 1;
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            request.extend(auth.arg(password).get_packed_command());
        }
        request.extend(redis::cmd("PING").get_packed_command());
        let exchange = async {
            match info.addr() {
                redis::ConnectionAddr::Tcp(host, port) => {
                    let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await;
                    first_error(stream.ok()?, &request, replies).await
                }
                redis::ConnectionAddr::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path).await;
                    first_error(stream.ok()?, &request, replies).await
                }
                _ => self.refusal_tls(timeout).await,
            }
        };
        tokio::time::timeout(timeout, exchange).await.ok().flatten()
    }

    /// [`refusal`](Self::refusal) through redis-rs, for TLS hosts.
    async fn refusal_tls(&self, timeout: Duration) -> Option<String> {
        let client = redis::Client::open(self.url.as_str()).ok()?;
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

    /// A pool of publisher connections, bounded in size and in every wait.
    pub(crate) fn pool(&self, timeout: Duration, size: usize) -> Result<Pool, LayerError> {
        let mut config = PoolConfig::from_url(self.url.clone());
        config.pool = Some(PoolSize {
            max_size: size,
            timeouts: Timeouts {
                wait: Some(timeout),
                create: Some(timeout),
                recycle: Some(timeout),
            },
            ..PoolSize::default()
        });
        config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| LayerError::Config(format!("{}: cannot build pool: {e}", self.display)))
    }

    /// A subscriber connection that reconnects forever (at most `max_delay` apart) and
    /// resubscribes by itself; pushes go to `on_push`, which must not block.
    pub(crate) fn subscriber(
        &self,
        timeout: Duration,
        max_delay: Duration,
        on_push: impl Fn(redis::PushInfo) -> Result<(), std::convert::Infallible>
        + Send
        + Sync
        + 'static,
    ) -> Result<ConnectionManager, LayerError> {
        let client = redis::Client::open(self.resp3())
            .map_err(|e| LayerError::Config(format!("{}: {e}", self.display)))?;
        let config = ConnectionManagerConfig::new()
            .set_push_sender(on_push)
            .set_automatic_resubscription()
            // The default (6 retries) leaves an idle subscriber dead after a long outage.
            .set_number_of_retries(usize::MAX)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(max_delay)
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| LayerError::Config(format!("{}: {e}", self.display)))
    }
}

/// A Redis error in Redis' words when Redis answered with one (`NOPERM this user has no
/// permissions ...`, where redis-rs would say `NoPerm: ...`), redis-rs' description otherwise.
pub(crate) fn words(error: &redis::RedisError) -> String {
    match (error.code(), error.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => error.to_string(),
    }
}

/// Sends `request` (commands answered by one-line replies) and reads up to its `expected`
/// replies or the connection's end; returns the first error reply without its `-`. Redis
/// sends `DENIED` unasked on accept, then closes.
async fn first_error(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    request: &[u8],
    expected: usize,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A refusal may close the connection before the request is written: read anyway.
    let _ = stream.write_all(request).await;
    let mut replies = Vec::new();
    let mut chunk = [0u8; 1024];
    let complete = |replies: &[u8]| replies.windows(2).filter(|w| w == b"\r\n").count();
    while complete(&replies) < expected && replies.len() < 64 * 1024 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => replies.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&replies)
        .split("\r\n")
        .find_map(|line| line.strip_prefix('-'))
        .map(str::to_owned)
}

/// `scheme://user:password@host/...` without the user and password.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}{}", &url[..scheme_end + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Runs `fut` with a deadline; a timeout or a Redis error becomes `Unavailable` for `host`.
pub(crate) async fn bounded<T>(
    host: &HostUrl,
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, LayerError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(host.unavailable(format!("{what} failed: {}", words(&error)))),
        Err(_) => Err(host.unavailable(format!("{what} timed out after {timeout:?}"))),
    }
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
