//! Configuration: every flag can also be set with an environment variable of the same meaning.
//!
//! Deployment files and outside tooling rely on these names; keep them stable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use channels_layer::{
    ChannelCapacity, ChannelLayer, InMemoryChannelLayer, LayerConfig, LayerError,
    RedisChannelLayer, RedisClusterChannelLayer, RedisCoreConfig, RedisPubSubChannelLayer,
    RedisPubSubConfig,
};
use clap::builder::BoolishValueParser;
use clap::{Parser, ValueEnum};

use crate::identity::{Authenticator, ConnectHook, TokenVerifier};
use crate::server_config::{ServerConfig, random_replica_id};

/// Which channel layer backend carries group messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[non_exhaustive]
pub enum LayerKind {
    /// In this process only (Channels' `InMemoryChannelLayer`): one replica, no dependencies.
    Memory,
    /// Redis pub/sub, wire-compatible with channels_redis' `RedisPubSubChannelLayer`: replicas
    /// and Django processes on the same Redis share groups.
    RedisPubsub,
    /// Redis sorted sets, wire-compatible with channels_redis' `RedisChannelLayer` (the core
    /// layer, Django's usual setting): to join an existing Django deployment that uses it.
    RedisCore,
}

/// A secret from the command line or the environment: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The server's settings, from flags or environment variables.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "channels-server",
    version,
    about = "Django Channels' WebSocket chat, in Rust"
)]
#[non_exhaustive]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "CHANNELS_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Channel layer backend [default: memory, or redis-pubsub when a Redis URL is given].
    #[arg(long, env = "CHANNELS_LAYER", value_enum)]
    pub layer: Option<LayerKind>,

    /// Redis URL (`redis://[user:password@]host:port/db`, `rediss://` for TLS with
    /// certificate verification, `unix:///path/redis.sock`), or a Sentinel set naming the
    /// master (`redis+sentinel://[user:password@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]`,
    /// `rediss+sentinel://` for TLS). Repeat it (or separate with commas: a piece without
    /// `scheme://` continues the previous URL's sentinel list) for several shards; every
    /// process must list them in the same order. Giving one selects redis-pubsub.
    #[arg(long = "redis-url", env = "CHANNELS_REDIS_URL")]
    pub redis_urls: Vec<String>,

    /// The sentinels' own password for `redis+sentinel://` URLs (channels_redis'
    /// `sentinel_kwargs`); the data nodes' password goes in the URL.
    #[arg(
        long = "redis-sentinel-password",
        env = "CHANNELS_SENTINEL_PASSWORD",
        hide_env_values = true
    )]
    pub redis_sentinel_password: Option<Secret>,

    /// Accept a Redis TLS certificate that does not verify (`rediss://` to a managed Redis with
    /// a private CA or a self-signed certificate). Anyone on the path can then read and forge
    /// the traffic: prefer giving the CA with SSL_CERT_FILE. Logged as a warning at start.
    #[arg(
        long = "redis-tls-insecure-skip-verify",
        env = "CHANNELS_REDIS_TLS_INSECURE_SKIP_VERIFY",
        value_parser = BoolishValueParser::new()
    )]
    pub redis_tls_insecure_skip_verify: bool,

    /// Seconds a message waits unread in a channel before it is dropped (channels_redis'
    /// `expiry`).
    #[arg(long, env = "CHANNELS_EXPIRY", default_value_t = 60)]
    pub expiry: u64,

    /// Seconds a group membership lasts after the latest `group_add` (channels_redis'
    /// `group_expiry`; the redis-core layer only: it re-adds its live members every quarter of
    /// this, so give it the Django side's value).
    #[arg(long, env = "CHANNELS_GROUP_EXPIRY", default_value_t = 86_400)]
    pub group_expiry: u64,

    /// Messages kept per group for recovery and recent history (0: off). With it, every group
    /// message a replica sends gets an offset and is kept in the layer (Redis), and group
    /// WebSocket URLs take `?recover=1`, `?history=K` and `?since=OFFSET&epoch=EPOCH` (README,
    /// "History and recovery").
    #[arg(long, env = "CHANNELS_HISTORY_SIZE", default_value_t = 0)]
    pub history_size: usize,

    /// Seconds a group's history is kept after its latest message.
    #[arg(
        long = "history-ttl-secs",
        env = "CHANNELS_HISTORY_TTL",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub history_ttl_secs: u64,

    /// Presence: who is in each group, across replicas (README, "Presence and the server
    /// API"). Group WebSocket URLs then take `?presence=1` for the list and join/leave events.
    #[arg(long, env = "CHANNELS_PRESENCE", value_parser = BoolishValueParser::new())]
    pub presence: bool,

    /// Serve the server API on this (private) address: publish, presence, history and
    /// disconnect over HTTP. Needs CHANNELS_API_KEY.
    #[arg(long = "api-bind", env = "CHANNELS_API_BIND")]
    pub api_bind: Option<SocketAddr>,

    /// The server API's key, sent by clients as `X-API-Key` (environment only: flags show in
    /// process listings). At least 16 bytes.
    #[arg(
        long = "api-key",
        env = "CHANNELS_API_KEY",
        hide_env_values = true,
        hide = true
    )]
    pub api_key: Option<Secret>,

    /// The largest server API request body, in bytes; larger ones get 413.
    #[arg(long = "api-max-body-bytes", env = "CHANNELS_API_MAX_BODY_BYTES", default_value_t = crate::api::DEFAULT_MAX_BODY)]
    pub api_max_body_bytes: usize,

    /// A per-channel capacity, channels_redis' `channel_capacity`: `PATTERN=N` with a glob
    /// (`worker-*=1000`) or `re:REGEX` (matched from the start of the name, as a compiled
    /// pattern in channels_redis). Repeat it (or separate with commas); the first match wins,
    /// --capacity applies to the rest.
    #[arg(
        long = "channel-capacity",
        env = "CHANNELS_CHANNEL_CAPACITY",
        value_delimiter = ',',
        value_parser = parse_channel_capacity
    )]
    pub channel_capacity: Vec<ChannelCapacity>,

    /// Prefix of every Redis channel: the same as channels_redis' `prefix` on the Django side.
    #[arg(long, env = "CHANNELS_PREFIX", default_value = "asgi")]
    pub prefix: String,

    /// This replica's id in its channel names [default: random]. The redis-core layer names
    /// channels with a random UUID per process instead, as channels_redis does.
    #[arg(long, env = "CHANNELS_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// channels_redis' `symmetric_encryption_keys`, comma-separated; the first encrypts, all
    /// decrypt. Prefer the environment variable: flags show up in process listings.
    #[arg(
        long = "encryption-keys",
        env = "CHANNELS_ENCRYPTION_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        hide = true
    )]
    pub encryption_keys: Vec<String>,

    /// Log filter: a level (`info`, `debug`) or tracing directives (`info,channels_server=debug`).
    #[arg(long = "log-level", env = "CHANNELS_LOG", default_value = "info")]
    pub log_level: String,

    /// Log line format.
    #[arg(long = "log-format", env = "CHANNELS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Largest WebSocket message a client may send, in bytes (at least 1); larger ones close
    /// with 1009.
    #[arg(
        long,
        env = "CHANNELS_MAX_MESSAGE_SIZE",
        default_value_t = 64 * 1024,
        value_parser = positive_size
    )]
    pub max_message_size: usize,

    /// Messages a connection's inbox holds while its client is slow (Channels' `capacity`);
    /// group messages beyond it are dropped for that client and counted.
    #[arg(long, env = "CHANNELS_CAPACITY", default_value_t = 100)]
    pub capacity: usize,

    /// Seconds a write to a client may stay blocked (the client not reading) before the
    /// connection is closed with 4008.
    #[arg(long, env = "CHANNELS_WRITE_TIMEOUT", default_value_t = 10)]
    pub write_timeout_secs: u64,

    /// Bytes of messages that may wait for one client (written by the server, not yet taken
    /// by the operating system). At this much the connection takes no new messages until the
    /// client reads (its inbox holds them, up to --capacity); if it stays there for
    /// --write-timeout-secs, it is closed with 4008 as a slow consumer. Layer messages larger
    /// than this are refused once for the replica. 0: no budget.
    #[arg(long, env = "CHANNELS_MAX_QUEUED_BYTES", default_value_t = 1024 * 1024)]
    pub max_queued_bytes: usize,

    /// The fan-out's fast path: a group message whose text is the same for every member (the
    /// consumer says so: the tutorial's `send_msg`) is rendered once per replica and written
    /// straight to the sockets of the members that wait with nothing queued, from the task
    /// that received it, instead of waking every member's task. Clients see the same frames
    /// in the same order either way; `false` sends every message through the member's task.
    #[arg(
        long,
        env = "CHANNELS_DIRECT_DELIVERY",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = BoolishValueParser::new()
    )]
    pub direct_delivery: bool,

    /// Origins allowed to open a WebSocket, comma-separated, with Channels' `OriginValidator`
    /// rules: `*` any; `example.com` that host on any scheme and port; `.example.com` that domain
    /// and its subdomains; `https://example.com[:port]` exactly that scheme, host and port.
    /// Empty (the default): only the host the request was sent to (its `Host` header). A request
    /// without an Origin header is always accepted; any other gets HTTP 403.
    #[arg(
        long = "allowed-origins",
        env = "CHANNELS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_parser = crate::origin::validate_pattern
    )]
    pub allowed_origins: Vec<String>,

    /// Ask this Django view who is connecting (`http://host:port/path`): before each upgrade
    /// that carries no token, the replica POSTs a JSON description of the handshake (path,
    /// query string, route kwargs, the `Cookie`, `Authorization`, `Origin`, `User-Agent` and
    /// `X-Forwarded-For` headers, client address, replica id, channel name). `200` with
    /// `{"user", "name", "groups", "info"}` accepts, `401`/`403` refuses with 403, anything
    /// else (timeout, error, bad JSON, over 64 KiB) refuses with 503. Off by default.
    #[arg(long = "connect-hook", env = "CHANNELS_CONNECT_HOOK")]
    pub connect_hook: Option<String>,

    /// Milliseconds a connect-hook call may take, answer included.
    #[arg(long, env = "CHANNELS_CONNECT_HOOK_TIMEOUT_MS", default_value_t = 2000)]
    pub connect_hook_timeout_ms: u64,

    /// Connect-hook calls in flight at once per replica; handshakes past it get 503 at once.
    #[arg(
        long,
        env = "CHANNELS_CONNECT_HOOK_MAX_IN_FLIGHT",
        default_value_t = 64
    )]
    pub connect_hook_max_in_flight: usize,

    /// Sent to the connect hook as `Authorization: Bearer <secret>`, so the Django view can
    /// tell the call came from a replica. Prefer the environment variable to the flag (a
    /// command line is visible to every local user).
    #[arg(
        long = "connect-hook-secret",
        env = "CHANNELS_CONNECT_HOOK_SECRET",
        hide_env_values = true
    )]
    pub connect_hook_secret: Option<Secret>,

    /// Accept connection tokens (JWT) signed with HS256 and this secret (at least 32 bytes).
    /// Prefer the environment variable to the flag. Off by default.
    #[arg(
        long = "token-hs256-secret",
        env = "CHANNELS_TOKEN_HS256_SECRET",
        hide_env_values = true,
        conflicts_with = "token_public_key"
    )]
    pub token_hs256_secret: Option<Secret>,

    /// Accept connection tokens (JWT) signed with the private half of this public key (a PEM
    /// file): RS256 for an RSA key, ES256 for an EC P-256 key. Off by default.
    #[arg(
        long = "token-public-key",
        env = "CHANNELS_TOKEN_PUBLIC_KEY",
        value_name = "PEM_FILE"
    )]
    pub token_public_key: Option<std::path::PathBuf>,

    /// Also read the connection token from this cookie (besides `?token=` and the
    /// `bearer, <token>` subprotocol pair).
    #[arg(long = "token-cookie", env = "CHANNELS_TOKEN_COOKIE")]
    pub token_cookie: Option<String>,

    /// Seconds of clock difference allowed on a token's `exp` and `nbf`.
    #[arg(long, env = "CHANNELS_TOKEN_LEEWAY", default_value_t = 5)]
    pub token_leeway_secs: u64,

    /// Require the token's `aud` claim to be one of these (comma-separated).
    #[arg(
        long = "token-audience",
        env = "CHANNELS_TOKEN_AUDIENCE",
        value_delimiter = ','
    )]
    pub token_audience: Vec<String>,

    /// Require the token's `iss` claim to be one of these (comma-separated).
    #[arg(
        long = "token-issuer",
        env = "CHANNELS_TOKEN_ISSUER",
        value_delimiter = ','
    )]
    pub token_issuer: Vec<String>,

    /// The tutorial pages fetch a connection token here before each connect (the Django token
    /// view on the same origin, e.g. `/ws/token/` behind the same nginx), connect with it, show
    /// who is signed in, and say "not signed in" instead of reconnecting when it refuses.
    #[arg(long = "page-token-url", env = "CHANNELS_PAGE_TOKEN_URL")]
    pub page_token_url: Option<String>,

    /// Host names this server serves (Django's ALLOWED_HOSTS), comma-separated: `example.com`
    /// exactly, `.example.com` it and its subdomains, `*` any. A WebSocket handshake naming
    /// another Host gets HTTP 400 (DNS rebinding). Empty (the default): IP addresses and
    /// `localhost` only, and no check at all when --allowed-origins is set.
    #[arg(
        long = "allowed-hosts",
        env = "CHANNELS_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_parser = crate::hosts::validate_pattern
    )]
    pub allowed_hosts: Vec<String>,

    /// Frames per second a client may send on one connection, every frame counted (pings,
    /// pongs, and continuation frames under 1 KiB too): a token bucket with a burst of twice
    /// this; past it the connection is closed with 1008. 0: no limit.
    #[arg(long, env = "CHANNELS_MAX_MESSAGES_PER_SECOND", default_value_t = 20)]
    pub max_messages_per_second: u32,

    /// WebSocket connections this replica holds at most; further handshakes get HTTP 503.
    /// 0: no limit.
    #[arg(long, env = "CHANNELS_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// WebSocket connections one client address may hold at most; further handshakes get HTTP
    /// 429. Behind a proxy every client has the proxy's address: use 0 (no limit) there and
    /// limit per client at the proxy.
    #[arg(long, env = "CHANNELS_MAX_CONNECTIONS_PER_IP", default_value_t = 1000)]
    pub max_connections_per_ip: usize,

    /// HTTP connections (not yet upgraded to WebSocket, or serving pages) this replica holds at
    /// most; further ones are answered 503 and closed. 0: no limit.
    #[arg(long, env = "CHANNELS_MAX_HTTP_CONNECTIONS", default_value_t = 4096)]
    pub max_http_connections: usize,

    /// HTTP connections (not yet upgraded) one client address may hold at most; further ones
    /// are answered 429 and closed. Behind a proxy use 0 (no limit), as for
    /// --max-connections-per-ip.
    #[arg(
        long,
        env = "CHANNELS_MAX_HTTP_CONNECTIONS_PER_IP",
        default_value_t = 64
    )]
    pub max_http_connections_per_ip: usize,

    /// Serve `/metrics` on this address only (for example `127.0.0.1:9090`, or a private
    /// interface), not on --bind. Without it `/metrics` is on --bind: keep it away from the
    /// internet at the proxy (the shipped nginx refuses it).
    #[arg(long, env = "CHANNELS_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,

    /// Seconds a client may take to send a request's headers (the WebSocket handshake included);
    /// slower connections are closed (slowloris). 0: no limit.
    #[arg(long, env = "CHANNELS_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    pub handshake_timeout_secs: u64,

    /// Seconds of silence from a client after which the server sends it a ping. 0: no pings.
    #[arg(long, env = "CHANNELS_PING_INTERVAL", default_value_t = 25)]
    pub ping_interval_secs: u64,

    /// Seconds the client has to answer a ping (with a pong or any other frame) before the
    /// connection is closed with 4009.
    #[arg(long, env = "CHANNELS_PONG_TIMEOUT", default_value_t = 10)]
    pub pong_timeout_secs: u64,

    /// Seconds a SIGTERM/SIGINT drain may take: connections are closed with 1001 in batches
    /// spread over the first half of it, and the process exits when they are gone or the time is
    /// up.
    #[arg(long, env = "CHANNELS_DRAIN_TIMEOUT", default_value_t = 30)]
    pub drain_timeout_secs: u64,

    /// Connections closed per batch while draining (a batch every 200 ms).
    #[arg(long, env = "CHANNELS_DRAIN_BATCH", default_value_t = 500)]
    pub drain_batch: u64,

    /// Threads that run connections; 0: one per CPU core; 1: everything on one thread (tokio's
    /// current-thread runtime). With several replicas on one machine, give each its share of
    /// the cores (e.g. 1 each for one replica per core): threads that outnumber the cores spend
    /// their time waking each other.
    #[arg(long, env = "CHANNELS_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Check the health of the server configured by `--bind` on this machine (GET /healthz) and
    /// exit 0 if it answers 200, 1 otherwise: for container HEALTHCHECKs without curl.
    #[arg(long)]
    pub healthcheck: bool,
}

impl Default for Config {
    /// The defaults, without reading the environment.
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            layer: None,
            redis_urls: Vec::new(),
            redis_sentinel_password: None,
            redis_tls_insecure_skip_verify: false,
            expiry: 60,
            group_expiry: 86_400,
            channel_capacity: Vec::new(),
            prefix: "asgi".to_owned(),
            replica_id: None,
            encryption_keys: Vec::new(),
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            max_message_size: 64 * 1024,
            capacity: 100,
            write_timeout_secs: 10,
            max_queued_bytes: 1024 * 1024,
            direct_delivery: true,
            connect_hook: None,
            connect_hook_timeout_ms: 2000,
            connect_hook_max_in_flight: 64,
            connect_hook_secret: None,
            token_hs256_secret: None,
            token_public_key: None,
            token_cookie: None,
            token_leeway_secs: 5,
            token_audience: Vec::new(),
            token_issuer: Vec::new(),
            page_token_url: None,
            history_size: 0,
            history_ttl_secs: 300,
            presence: false,
            api_bind: None,
            api_key: None,
            api_max_body_bytes: crate::api::DEFAULT_MAX_BODY,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_messages_per_second: 20,
            max_connections: 100_000,
            max_connections_per_ip: 1000,
            max_http_connections: 4096,
            max_http_connections_per_ip: 64,
            metrics_bind: None,
            handshake_timeout_secs: 10,
            ping_interval_secs: 25,
            pong_timeout_secs: 10,
            drain_timeout_secs: 30,
            drain_batch: 500,
            workers: 0,
            healthcheck: false,
        }
    }
}

/// One `--channel-capacity` rule (clap's value parser).
fn parse_channel_capacity(rule: &str) -> Result<ChannelCapacity, String> {
    ChannelCapacity::parse(rule).map_err(|e| e.to_string())
}

/// A byte size that must be at least 1 (clap's value parser).
fn positive_size(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1 byte: there is no unlimited setting".to_owned()),
        Ok(n) => Ok(n),
        Err(error) => Err(format!("{value:?} is not a number of bytes ({error})")),
    }
}

impl Config {
    /// The server's settings from these flags, with the replica id settled: the configured one
    /// or a fresh random one. Give the same id to [`build_layer`](Self::build_layer).
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            replica_id: self.replica_id.clone().unwrap_or_else(random_replica_id),
            max_message_size: self.max_message_size,
            write_timeout: Duration::from_secs(self.write_timeout_secs),
            max_queued_bytes: self.max_queued_bytes,
            direct_delivery: self.direct_delivery,
            max_messages_per_second: self.max_messages_per_second,
            ping_interval: (self.ping_interval_secs > 0)
                .then(|| Duration::from_secs(self.ping_interval_secs)),
            pong_timeout: Duration::from_secs(self.pong_timeout_secs),
            handshake_timeout: (self.handshake_timeout_secs > 0)
                .then(|| Duration::from_secs(self.handshake_timeout_secs)),
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            drain_batch: self.drain_batch,
            allowed_origins: self.allowed_origins.clone(),
            allowed_hosts: self.allowed_hosts.clone(),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_http_connections: self.max_http_connections,
            max_http_connections_per_ip: self.max_http_connections_per_ip,
            presence: self.presence,
            control: self.presence || self.api_bind.is_some(),
        }
    }

    /// The identity settings as an [`Authenticator`]: tokens (`--token-hs256-secret` or
    /// `--token-public-key`) and the connect hook (`--connect-hook`); `None` when neither is
    /// given. Fails with a message that names the flag when a key cannot be read or used.
    pub fn authenticator(&self) -> Result<Option<Authenticator>, String> {
        let mut auth = Authenticator::new();
        let verifier = match (&self.token_hs256_secret, &self.token_public_key) {
            (Some(secret), _) => Some(
                TokenVerifier::hs256(secret.expose().as_bytes())
                    .map_err(|e| format!("--token-hs256-secret: {e}"))?,
            ),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!("--token-public-key: cannot read {}: {e}", path.display())
                })?;
                Some(
                    TokenVerifier::public_key_pem(&pem)
                        .map_err(|e| format!("--token-public-key {}: {e}", path.display()))?,
                )
            }
            (None, None) => None,
        };
        if let Some(mut verifier) = verifier {
            verifier = verifier.leeway(Duration::from_secs(self.token_leeway_secs));
            if let Some(cookie) = &self.token_cookie {
                verifier = verifier.cookie(cookie.clone());
            }
            if !self.token_audience.is_empty() {
                verifier = verifier.audience(&self.token_audience);
            }
            if !self.token_issuer.is_empty() {
                verifier = verifier.issuer(&self.token_issuer);
            }
            auth = auth.with_tokens(verifier);
        } else if self.token_cookie.is_some() {
            return Err(
                "--token-cookie needs --token-hs256-secret or --token-public-key".to_owned(),
            );
        }
        if let Some(url) = &self.connect_hook {
            let mut hook = ConnectHook::new(url)?
                .timeout(Duration::from_millis(self.connect_hook_timeout_ms.max(1)))
                .max_in_flight(self.connect_hook_max_in_flight);
            if let Some(secret) = &self.connect_hook_secret {
                hook = hook.secret(secret.expose())?;
            }
            auth = auth.with_connect_hook(hook);
        }
        Ok(auth.is_enabled().then_some(auth))
    }

    /// The backend in use: the one asked for, else redis-pubsub when Redis URLs are given, else
    /// memory.
    pub fn layer_kind(&self) -> LayerKind {
        match (self.layer, self.redis_urls.is_empty()) {
            (Some(kind), _) => kind,
            (None, true) => LayerKind::Memory,
            (None, false) => LayerKind::RedisPubsub,
        }
    }

    /// Builds the configured channel layer for the replica `replica_id` (the redis-pubsub layer
    /// names its channels after it; take it from [`server_config`](Self::server_config)). A
    /// Redis layer starts even while Redis is down; it reports not ready until it connects.
    pub async fn build_layer(&self, replica_id: &str) -> Result<Arc<dyn ChannelLayer>, LayerError> {
        let local = self.layer_config();
        Ok(match self.layer_kind() {
            LayerKind::Memory => Arc::new(InMemoryChannelLayer::new(local)),
            LayerKind::RedisPubsub => {
                if self.redis_urls.is_empty() {
                    return Err(LayerError::Config(
                        "--layer redis-pubsub needs --redis-url (or CHANNELS_REDIS_URL)".to_owned(),
                    ));
                }
                let mut config = RedisPubSubConfig::new(self.redis_hosts());
                config.prefix.clone_from(&self.prefix);
                config.replica_id = Some(replica_id.to_owned());
                config.encryption_keys.clone_from(&self.encryption_keys);
                config.local = local;
                if config
                    .hosts
                    .iter()
                    .any(|u| channels_layer::redis::is_cluster_url(u))
                {
                    Arc::new(RedisClusterChannelLayer::connect(config).await?)
                } else {
                    Arc::new(RedisPubSubChannelLayer::connect(config).await?)
                }
            }
            LayerKind::RedisCore => {
                if self.redis_urls.is_empty() {
                    return Err(LayerError::Config(
                        "--layer redis-core needs --redis-url (or CHANNELS_REDIS_URL)".to_owned(),
                    ));
                }
                let hosts = self.redis_hosts();
                if hosts
                    .iter()
                    .any(|u| channels_layer::redis::is_cluster_url(u))
                {
                    return Err(LayerError::Config(
                        "the redis-core layer cannot run on a Redis Cluster (its scripts touch \
                         keys of several slots, as in channels_redis); use --layer redis-pubsub"
                            .to_owned(),
                    ));
                }
                let mut config = RedisCoreConfig::new(hosts);
                config.prefix.clone_from(&self.prefix);
                config.encryption_keys.clone_from(&self.encryption_keys);
                config.local = LayerConfig {
                    group_expiry: Duration::from_secs(self.group_expiry),
                    ..local
                };
                Arc::new(RedisChannelLayer::connect(config).await?)
            }
        })
    }

    /// The Redis URLs as the layer takes them: with `--redis-tls-insecure-skip-verify`,
    /// `rediss://` URLs get redis-rs' `#insecure` (and a warning is logged).
    fn redis_hosts(&self) -> Vec<String> {
        let urls = self.redis_url_list();
        if !self.redis_tls_insecure_skip_verify {
            return urls;
        }
        tracing::warn!(
            "--redis-tls-insecure-skip-verify: Redis TLS certificates are NOT verified; anyone \
             on the path can read and forge channel-layer traffic"
        );
        urls.iter()
            .map(|url| {
                if url.starts_with("rediss") && !url.contains('#') {
                    format!("{url}#insecure")
                } else {
                    url.clone()
                }
            })
            .collect()
    }

    /// One URL per shard: each `--redis-url` split at commas, where a piece without
    /// `scheme://` belongs to the previous URL (the sentinel list of `redis+sentinel://a,b/m`);
    /// with `--redis-sentinel-password`, Sentinel URLs get it as `sentinel_password`.
    fn redis_url_list(&self) -> Vec<String> {
        let mut urls: Vec<String> = Vec::new();
        for piece in self.redis_urls.iter().flat_map(|u| u.split(',')) {
            match urls.last_mut() {
                Some(last) if !piece.contains("://") => {
                    last.push(',');
                    last.push_str(piece);
                }
                _ => urls.push(piece.to_owned()),
            }
        }
        let Some(password) = &self.redis_sentinel_password else {
            return urls;
        };
        let param = format!(
            "sentinel_password={}",
            channels_layer::redis::percent_encode(password.expose())
        );
        urls.into_iter()
            .map(|url| {
                if !url.contains("+sentinel://") || url.contains("sentinel_password=") {
                    return url;
                }
                let (base, fragment) = match url.split_once('#') {
                    Some((base, fragment)) => (base.to_owned(), format!("#{fragment}")),
                    None => (url.clone(), String::new()),
                };
                let sep = if base.contains('?') { '&' } else { '?' };
                format!("{base}{sep}{param}{fragment}")
            })
            .collect()
    }

    /// The local settings every layer backend takes: capacity and the message size limit.
    pub fn layer_config(&self) -> LayerConfig {
        LayerConfig {
            capacity: self.capacity,
            channel_capacity: self.channel_capacity.clone(),
            expiry: Duration::from_secs(self.expiry),
            // A message larger than a client's whole budget would only make every member
            // format its own copy and then wait for a client that cannot take it: refuse it
            // once instead.
            max_message_size: self.max_queued_bytes,
            history_size: self.history_size,
            history_ttl: Duration::from_secs(self.history_ttl_secs),
            ..LayerConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_url_selects_redis_pubsub() {
        let c = Config::try_parse_from([
            "channels-server",
            "--redis-url",
            "redis://a:6379/0",
            "--redis-url",
            "redis://b:6379/0",
        ])
        .unwrap();
        assert_eq!(c.layer_kind(), LayerKind::RedisPubsub);
        assert_eq!(c.redis_urls.len(), 2);
        let c = Config::try_parse_from(["channels-server", "--layer", "redis-pubsub"]).unwrap();
        assert_eq!(c.layer_kind(), LayerKind::RedisPubsub);
    }

    #[test]
    fn redis_core_is_selected_by_flag_or_environment_name() {
        let c = Config::try_parse_from([
            "channels-server",
            "--layer",
            "redis-core",
            "--redis-url",
            "redis://a:6379/0",
        ])
        .unwrap();
        assert_eq!(c.layer_kind(), LayerKind::RedisCore);
        // CHANNELS_LAYER takes the same value names as the flag.
        assert_eq!(
            LayerKind::from_str("redis-core", false),
            Ok(LayerKind::RedisCore)
        );
    }

    #[tokio::test]
    async fn redis_core_without_a_url_says_what_is_missing() {
        let c = Config::try_parse_from(["channels-server", "--layer", "redis-core"]).unwrap();
        let err = c.build_layer("r").await.unwrap_err().to_string();
        assert!(
            err.contains("--layer redis-core needs --redis-url"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn redis_pubsub_without_a_url_says_what_is_missing() {
        let c = Config::try_parse_from(["channels-server", "--layer", "redis-pubsub"]).unwrap();
        let err = c.build_layer("r").await.unwrap_err().to_string();
        assert!(err.contains("--redis-url"), "{err}");
    }

    #[test]
    fn the_server_config_of_no_flags_is_the_default_one() {
        let from_flags = Config::default().server_config();
        let default = ServerConfig::default();
        // Every field but the (random) replica id.
        let strip = |c: &ServerConfig| format!("{c:?}").replace(&c.replica_id, "");
        assert_eq!(strip(&from_flags), strip(&default));
        let named = Config {
            replica_id: Some("r-1".to_owned()),
            ..Config::default()
        };
        assert_eq!(named.server_config().replica_id, "r-1");
    }

    #[test]
    fn default_matches_parsing_no_arguments() {
        let parsed = Config::try_parse_from(["channels-server"]).unwrap();
        let default = Config::default();
        assert_eq!(parsed.bind, default.bind);
        assert_eq!(parsed.layer_kind(), LayerKind::Memory);
        assert_eq!(parsed.prefix, default.prefix);
        assert_eq!(parsed.max_message_size, default.max_message_size);
        assert_eq!(parsed.capacity, default.capacity);
        assert_eq!(parsed.workers, default.workers);
    }

    #[test]
    fn flags_parse() {
        let c = Config::try_parse_from([
            "channels-server",
            "--bind",
            "0.0.0.0:9000",
            "--layer",
            "memory",
            "--log-level",
            "debug",
        ])
        .unwrap();
        assert_eq!(c.bind.port(), 9000);
        assert_eq!(c.layer_kind(), LayerKind::Memory);
        assert_eq!(c.log_level, "debug");
    }

    #[test]
    fn channels_redis_settings_reach_the_layer() {
        let c = Config::try_parse_from([
            "channels-server",
            "--expiry",
            "30",
            "--channel-capacity",
            "specific.*=3,re:^asgi__group__t\\d+=7",
            "--channel-capacity",
            "worker-*=1000",
        ])
        .unwrap();
        let local = c.layer_config();
        assert_eq!(local.expiry, Duration::from_secs(30));
        let rules: Vec<_> = local
            .channel_capacity
            .iter()
            .map(|r| (r.glob().to_owned(), r.capacity()))
            .collect();
        assert_eq!(
            rules,
            [
                ("specific.*".to_owned(), 3),
                ("re:^asgi__group__t\\d+".to_owned(), 7),
                ("worker-*".to_owned(), 1000)
            ]
        );
        for bad in ["nocapacity", "x=0", "x=many", "re:(=5"] {
            let err = Config::try_parse_from(["channels-server", "--channel-capacity", bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains("channel capacity"), "{bad}: {err}");
        }
    }

    #[test]
    fn insecure_tls_is_an_explicit_choice_for_rediss_urls_only() {
        let mut c = Config::try_parse_from([
            "channels-server",
            "--redis-url",
            "rediss://a:6380/0,redis://b:6379/0",
        ])
        .unwrap();
        assert_eq!(c.redis_hosts(), ["rediss://a:6380/0", "redis://b:6379/0"]);
        c.redis_tls_insecure_skip_verify = true;
        assert_eq!(
            c.redis_hosts(),
            ["rediss://a:6380/0#insecure", "redis://b:6379/0"]
        );
    }

    #[test]
    fn sentinel_urls_keep_their_sentinel_list_and_get_the_sentinel_password() {
        let mut c = Config::try_parse_from([
            "channels-server",
            "--redis-url",
            "redis+sentinel://a:26379,b:26379/mymaster/0,redis://c:6379/0",
            "--redis-url",
            "rediss+sentinel://d:1,e:2/m#insecure",
        ])
        .unwrap();
        assert_eq!(
            c.redis_hosts(),
            [
                "redis+sentinel://a:26379,b:26379/mymaster/0",
                "redis://c:6379/0",
                "rediss+sentinel://d:1,e:2/m#insecure"
            ]
        );
        c.redis_sentinel_password = Some("s3cr&t".parse().unwrap());
        assert_eq!(
            c.redis_hosts(),
            [
                "redis+sentinel://a:26379,b:26379/mymaster/0?sentinel_password=s3cr%26t",
                "redis://c:6379/0",
                "rediss+sentinel://d:1,e:2/m?sentinel_password=s3cr%26t#insecure"
            ]
        );
    }

    #[tokio::test]
    async fn a_full_channel_of_a_capacity_rule_drops_and_counts() {
        let c = Config::try_parse_from(["channels-server", "--channel-capacity", "specific.*=2"])
            .unwrap();
        let layer = c.build_layer("r").await.unwrap();
        let inbox = layer.new_channel().await.unwrap();
        let group = channels_layer::GroupName::new("g").unwrap();
        layer.group_add(&group, inbox.name()).await.unwrap();
        for _ in 0..5 {
            let msg = channels_layer::Message::new("m");
            layer.group_send(&group, msg).await.unwrap();
        }
        assert_eq!(layer.stats().delivered, 2);
        assert_eq!(layer.stats().dropped_full, 3);
    }

    #[test]
    fn a_zero_message_size_is_refused_at_start() {
        let err = Config::try_parse_from(["channels-server", "--max-message-size", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 1 byte"), "{err}");
    }
}
