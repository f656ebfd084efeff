//! Prometheus metrics: a few atomic counters per server, rendered as text on `/metrics`.
//!
//! Each server owns its counters (no global registry), so several servers in one process (as in
//! tests) never mix their numbers. The channel layer's counters are read from
//! [`ChannelLayer::stats`] at scrape time.
//!
//! [`ChannelLayer::stats`]: channels_layer::ChannelLayer::stats

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use channels_layer::ChannelLayer;

/// Why a handshake was refused before the upgrade.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal {
    NotFound,
    Draining,
    Denied,
    LayerUnavailable,
    Origin,
    Host,
    BadHandshake,
    MaxConnections,
    MaxConnectionsPerIp,
    /// The handshake's identity was refused (token or connect hook).
    Auth(crate::identity::AuthRefusal),
    /// `connect` asked for a group the identity does not allow.
    GroupForbidden,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::NotFound => "not_found",
            Refusal::Draining => "draining",
            Refusal::Denied => "denied",
            Refusal::LayerUnavailable => "layer_unavailable",
            Refusal::Origin => "origin",
            Refusal::Host => "host",
            Refusal::BadHandshake => "bad_handshake",
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerIp => "max_connections_per_ip",
            Refusal::Auth(why) => why.label(),
            Refusal::GroupForbidden => "group_forbidden",
        }
    }
}

/// The `code` label of a close: a bounded set of values, whatever clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum CloseLabel {
    /// A code the server sent, or one of the few codes below 3000 a client may send.
    Code(u16),
    /// A client's code in the registered range 3000–3999.
    Registered,
    /// A client's code in the private range 4000–4999.
    Private,
    /// A close frame with a code that RFC 6455 does not allow (1005, 1006, 1015, 1014,
    /// 1016–2999, below 1000, 5000 and up).
    Invalid,
    /// The connection ended without a close frame.
    None,
}

impl CloseLabel {
    /// The label of a client's close frame (`None`: the connection ended without one).
    pub(crate) fn of_client(frame: Option<&tungstenite::protocol::CloseFrame>) -> Self {
        use tungstenite::protocol::frame::coding::CloseCode;
        let Some(frame) = frame else {
            return CloseLabel::None;
        };
        match frame.code {
            CloseCode::Iana(_) => CloseLabel::Registered,
            CloseCode::Library(_) => CloseLabel::Private,
            // tungstenite replaces a code that is not allowed with exactly this frame (and
            // answers it with 1002).
            CloseCode::Protocol if frame.reason == "Protocol violation" => CloseLabel::Invalid,
            code if code.is_allowed() => CloseLabel::Code(code.into()),
            _ => CloseLabel::Invalid,
        }
    }

    fn label(self) -> String {
        match self {
            CloseLabel::Code(code) => code.to_string(),
            CloseLabel::Registered => "3000-3999".to_owned(),
            CloseLabel::Private => "4000-4999".to_owned(),
            CloseLabel::Invalid => "invalid".to_owned(),
            CloseLabel::None => "none".to_owned(),
        }
    }
}

/// The server's counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    /// Of `messages_out`, those written by the fan-out's fast path (`--direct-delivery`).
    direct_out: AtomicU64,
    group_sends: AtomicU64,
    group_send_errors: AtomicU64,
    header_timeouts: AtomicU64,
    group_forbidden: AtomicU64,
    missed: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Close codes: sent by the server, or received from clients.
    closes: Mutex<BTreeMap<(&'static str, CloseLabel), u64>>,
    /// HTTP connections refused at accept, by cap.
    http_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Layer messages consumers did not handle, by reason.
    events_ignored: Mutex<BTreeMap<&'static str, u64>>,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *map.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(key)
        .or_default() += 1;
}

impl Metrics {
    pub(crate) fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn message_in(&self) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn messages_out(&self, n: usize) {
        self.messages_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A group message written straight to a member's socket (counted as sent, too).
    pub(crate) fn message_out_direct(&self) {
        self.messages_out.fetch_add(1, Ordering::Relaxed);
        self.direct_out.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn group_send(&self, ok: bool) {
        self.group_sends.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.group_send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A recovering connection missed a group message and was closed with 4010.
    pub(crate) fn missed(&self) {
        self.missed.fetch_add(1, Ordering::Relaxed);
    }

    /// A group call was refused: the identity does not allow the group.
    pub(crate) fn group_forbidden(&self) {
        self.group_forbidden.fetch_add(1, Ordering::Relaxed);
    }

    /// An HTTP connection closed because its request headers were not sent in time.
    pub(crate) fn header_timeout(&self) {
        self.header_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, why: Refusal) {
        bump(&self.refused, why.label());
    }

    pub(crate) fn closed_by_server(&self, code: u16) {
        bump(&self.closes, ("server", CloseLabel::Code(code)));
    }

    pub(crate) fn closed_by_client(&self, label: CloseLabel) {
        bump(&self.closes, ("client", label));
    }

    /// An HTTP connection was refused at accept (`reason`: the cap's flag name).
    pub(crate) fn http_refused(&self, reason: &'static str) {
        bump(&self.http_refused, reason);
    }

    /// A consumer ignored a layer message (`reason`: a short fixed word).
    pub(crate) fn event_ignored(&self, reason: &'static str) {
        bump(&self.events_ignored, reason);
    }

    /// The Prometheus text exposition of these counters and of the layer's.
    pub(crate) fn render(&self, layer: &dyn ChannelLayer, draining: bool) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metric(
            &mut out,
            "channels_connections_open",
            "gauge",
            "WebSocket connections open now.",
            &[(
                "",
                self.connections_open.load(Ordering::Relaxed).max(0) as u64,
            )],
        );
        let simple: [(&str, &str, u64); 9] = [
            (
                "channels_connections_total",
                "WebSocket connections accepted.",
                load(&self.connections_total),
            ),
            (
                "channels_messages_received_total",
                "Frames received from clients.",
                load(&self.messages_in),
            ),
            (
                "channels_messages_sent_total",
                "Frames sent to clients.",
                load(&self.messages_out),
            ),
            (
                "channels_messages_sent_direct_total",
                "Of the frames sent, group messages written by the fan-out's fast path \
                 (--direct-delivery): from the task that received them, without waking the member.",
                load(&self.direct_out),
            ),
            (
                "channels_group_sends_total",
                "group_send calls by consumers.",
                load(&self.group_sends),
            ),
            (
                "channels_group_send_errors_total",
                "group_send calls that failed (layer unavailable).",
                load(&self.group_send_errors),
            ),
            (
                "channels_http_header_timeouts_total",
                "HTTP connections closed for sending their request headers too slowly.",
                load(&self.header_timeouts),
            ),
            (
                "channels_group_forbidden_total",
                "group_add or group_send calls refused: the identity does not allow the group.",
                load(&self.group_forbidden),
            ),
            (
                "channels_recovery_missed_total",
                "Recovering connections closed with 4010: a group message was missed (queue \
                 full, or the group's history restarted); the client recovers on reconnect.",
                load(&self.missed),
            ),
        ];
        for (name, help, value) in simple {
            metric(&mut out, name, "counter", help, &[("", value)]);
        }
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rows: Vec<(String, u64)> = refused
            .iter()
            .map(|(reason, n)| (format!("reason=\"{reason}\""), *n))
            .collect();
        drop(refused);
        labelled(
            &mut out,
            "channels_handshakes_refused_total",
            "Handshakes refused before the upgrade, by reason.",
            &rows,
        );
        let closes = self
            .closes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rows: Vec<(String, u64)> = closes
            .iter()
            .map(|((by, code), n)| (format!("by=\"{by}\",code=\"{}\"", code.label()), *n))
            .collect();
        drop(closes);
        labelled(
            &mut out,
            "channels_closes_total",
            "WebSocket closes by side and close code (clients' codes 3000-4999 in two ranges; \
             code=\"none\": no close frame; \"invalid\": a code RFC 6455 does not allow).",
            &rows,
        );
        let http_refused = self
            .http_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rows: Vec<(String, u64)> = http_refused
            .iter()
            .map(|(reason, n)| (format!("reason=\"{reason}\""), *n))
            .collect();
        drop(http_refused);
        labelled(
            &mut out,
            "channels_http_connections_refused_total",
            "HTTP connections refused when accepted, by cap.",
            &rows,
        );
        let ignored = self
            .events_ignored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rows: Vec<(String, u64)> = ignored
            .iter()
            .map(|(reason, n)| (format!("reason=\"{reason}\""), *n))
            .collect();
        drop(ignored);
        labelled(
            &mut out,
            "channels_events_ignored_total",
            "Layer messages a consumer did not handle, by reason (one per member).",
            &rows,
        );
        let stats = layer.stats();
        let layer_counters: [(&str, &str, u64); 10] = [
            (
                "channels_layer_delivered_total",
                "Messages queued for local inboxes.",
                stats.delivered,
            ),
            (
                "channels_layer_dropped_full_total",
                "Messages dropped because a connection's inbox was full.",
                stats.dropped_full,
            ),
            (
                "channels_layer_dropped_no_receiver_total",
                "Messages for channels with no inbox.",
                stats.dropped_no_receiver,
            ),
            (
                "channels_layer_expired_total",
                "Messages that expired unread.",
                stats.expired,
            ),
            (
                "channels_layer_undecodable_total",
                "Payloads from Redis that could not be decoded and were dropped.",
                stats.undecodable,
            ),
            (
                "channels_layer_publish_errors_total",
                "Publishes to Redis that failed.",
                stats.publish_errors,
            ),
            (
                "channels_layer_oversized_total",
                "Layer messages over the size limit (--max-queued-bytes), refused or dropped \
                 once for the replica.",
                stats.oversized,
            ),
            (
                "channels_layer_disconnects_total",
                "Times a Redis subscriber connection was lost (it reconnects by itself).",
                stats.disconnects,
            ),
            (
                "channels_layer_unpositioned_total",
                "With history on, group messages that arrived without a history position (a \
                 Python group_send): delivered live, not recoverable.",
                stats.unpositioned,
            ),
            (
                "channels_layer_redis_master_switches_total",
                "Times a Redis shard's master moved (Sentinel failovers followed).",
                stats.master_switches,
            ),
        ];
        for (name, help, value) in layer_counters {
            metric(&mut out, name, "counter", help, &[("", value)]);
        }
        let gauges: [(&str, &str, u64); 4] = [
            (
                "channels_layer_channels",
                "Channels with an inbox in this replica.",
                stats.channels as u64,
            ),
            (
                "channels_layer_groups",
                "Groups with a member in this replica.",
                stats.groups as u64,
            ),
            (
                "channels_layer_ready",
                "1 when the channel layer can carry messages.",
                u64::from(layer.is_ready()),
            ),
            (
                "channels_draining",
                "1 while the server drains before exiting.",
                u64::from(draining),
            ),
        ];
        for (name, help, value) in gauges {
            metric(&mut out, name, "gauge", help, &[("", value)]);
        }
        out
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, rows: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in rows {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn labelled(out: &mut String, name: &str, help: &str, rows: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, value) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use channels_layer::InMemoryChannelLayer;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.connection_opened();
        m.message_in();
        m.closed_by_server(1001);
        m.closed_by_client(CloseLabel::None);
        m.closed_by_client(CloseLabel::Private);
        m.refused(Refusal::NotFound);
        let text = m.render(&InMemoryChannelLayer::default(), false);
        assert!(
            text.contains("# TYPE channels_connections_open gauge\nchannels_connections_open 1\n")
        );
        assert!(text.contains("channels_closes_total{by=\"server\",code=\"1001\"} 1\n"));
        assert!(text.contains("channels_closes_total{by=\"client\",code=\"none\"} 1\n"));
        assert!(text.contains("channels_closes_total{by=\"client\",code=\"4000-4999\"} 1\n"));
        assert!(text.contains("channels_handshakes_refused_total{reason=\"not_found\"} 1\n"));
        assert!(text.contains("channels_layer_ready 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap();
        }
    }
}
