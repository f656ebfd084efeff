//! A server's settings apart from the command line: what [`Server::builder`] takes.
//!
//! [`Config::server_config`] makes one from the flags; a program that configures itself in code
//! starts from [`ServerConfig::default`] and sets what it needs.
//!
//! [`Server::builder`]: crate::Server::builder
//! [`Config::server_config`]: crate::Config::server_config

use std::time::Duration;

use crate::hub::Limits;

/// A server's settings: its replica id, the per-connection limits, the admission rules and the
/// drain. The defaults are the command line's.
///
/// ```
/// use std::time::Duration;
/// let mut config = channels_server::ServerConfig::default();
/// config.replica_id = "api-1".to_owned();
/// config.allowed_hosts = vec!["chat.example.com".to_owned()];
/// config.drain_timeout = Duration::from_secs(10);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// This replica's id: its `X-Channels-Replica` header, its logs, and (given to the layer
    /// with [`Config::build_layer`](crate::Config::build_layer)) its channel names. Settled
    /// once, here.
    pub replica_id: String,
    /// Largest message a client may send, in bytes (at least 1); larger ones close with 1009.
    pub max_message_size: usize,
    /// How long a write to a client may stay blocked before it is closed with 4008.
    pub write_timeout: Duration,
    /// Bytes that may wait for one client before it takes no new message (0: no budget).
    pub max_queued_bytes: usize,
    /// The fan-out's fast path (`--direct-delivery`): group messages the consumer renders the
    /// same for everyone are written to idle members' sockets by the task that received them.
    pub direct_delivery: bool,
    /// Frames per second a client may send (burst: twice this); 0: no limit.
    pub max_messages_per_second: u32,
    /// Silence from a client after which it is pinged; `None`: no pings.
    pub ping_interval: Option<Duration>,
    /// Time a client has to answer a ping before it is closed with 4009.
    pub pong_timeout: Duration,
    /// Time a client has to send a request's headers; `None`: no limit.
    pub handshake_timeout: Option<Duration>,
    /// How long a drain may take; connections close in batches over its first half.
    pub drain_timeout: Duration,
    /// Connections closed per drain batch (one batch every 200 ms).
    pub drain_batch: u64,
    /// `--allowed-origins` patterns (empty: the request's own host).
    pub allowed_origins: Vec<String>,
    /// `--allowed-hosts` patterns (empty: IP addresses and `localhost`).
    pub allowed_hosts: Vec<String>,
    /// WebSocket connections per replica (0: no limit).
    pub max_connections: usize,
    /// WebSocket connections per client address (0: no limit).
    pub max_connections_per_ip: usize,
    /// HTTP connections not (yet) upgraded, per replica (0: no limit).
    pub max_http_connections: usize,
    /// HTTP connections not (yet) upgraded, per client address (0: no limit).
    pub max_http_connections_per_ip: usize,
    /// Presence (`--presence`): members of each group are kept in the layer, and clients may
    /// ask for the list and join/leave events (`?presence=1`).
    pub presence: bool,
    /// Run the replicas' control channel (presence events, the API's disconnects): on with
    /// presence or the server API.
    pub control: bool,
}

impl Default for ServerConfig {
    /// The command line's defaults, with a fresh random replica id.
    fn default() -> Self {
        Self {
            replica_id: random_replica_id(),
            max_message_size: 64 * 1024,
            write_timeout: Duration::from_secs(10),
            max_queued_bytes: 1024 * 1024,
            direct_delivery: true,
            max_messages_per_second: 20,
            ping_interval: Some(Duration::from_secs(25)),
            pong_timeout: Duration::from_secs(10),
            handshake_timeout: Some(Duration::from_secs(10)),
            drain_timeout: Duration::from_secs(30),
            drain_batch: 500,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_connections: 100_000,
            max_connections_per_ip: 1000,
            max_http_connections: 4096,
            max_http_connections_per_ip: 64,
            presence: false,
            control: false,
        }
    }
}

impl ServerConfig {
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_message_size: self.max_message_size.max(1),
            max_outgoing_frames: 1024,
            write_timeout: self.write_timeout,
            close_timeout: Duration::from_secs(3),
            // tungstenite allocates this per connection up front and reads at most this much
            // per syscall. Chat frames fit in 512 bytes; a larger frame takes more reads (a
            // 64 KiB one, 128), and an idle connection costs 3.5 KiB less than with 4 KiB.
            read_buffer_size: 512,
            // Room for a few maximum-size messages the client has not read yet.
            max_write_buffer_size: 4 * self.max_message_size.max(16 * 1024),
            drain_batch: self.drain_batch,
            drain_interval: Duration::from_millis(200),
            drain_spread: self.drain_timeout / 2,
            max_queued_bytes: self.max_queued_bytes,
            direct_delivery: self.direct_delivery,
            max_messages_per_second: self.max_messages_per_second,
            ping_interval: self.ping_interval,
            pong_timeout: self.pong_timeout,
        }
    }
}

/// A random replica id: 12 lowercase letters and digits.
pub fn random_replica_id() -> String {
    channels_layer::name::random_id()
}
