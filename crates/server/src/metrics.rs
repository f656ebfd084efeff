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
    MaxConnections,
    MaxConnectionsPerIp,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::NotFound => "not_found",
            Refusal::Draining => "draining",
            Refusal::Denied => "denied",
            Refusal::LayerUnavailable => "layer_unavailable",
            Refusal::Origin => "origin",
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerIp => "max_connections_per_ip",
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
    group_sends: AtomicU64,
    group_send_errors: AtomicU64,
    header_timeouts: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Close codes: sent by the server, or received from clients (`None`: no close frame).
    closes: Mutex<BTreeMap<(&'static str, Option<u16>), u64>>,
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

    pub(crate) fn group_send(&self, ok: bool) {
        self.group_sends.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.group_send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An HTTP connection closed because its request headers were not sent in time.
    pub(crate) fn header_timeout(&self) {
        self.header_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, why: Refusal) {
        bump(&self.refused, why.label());
    }

    pub(crate) fn closed_by_server(&self, code: u16) {
        bump(&self.closes, ("server", Some(code)));
    }

    pub(crate) fn closed_by_client(&self, code: Option<u16>) {
        bump(&self.closes, ("client", code));
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
        let simple: [(&str, &str, u64); 6] = [
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
            .map(|((by, code), n)| {
                let code = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
                (format!("by=\"{by}\",code=\"{code}\""), *n)
            })
            .collect();
        drop(closes);
        labelled(
            &mut out,
            "channels_closes_total",
            "WebSocket closes by side and close code (code=\"none\": no close frame).",
            &rows,
        );
        let stats = layer.stats();
        let layer_counters: [(&str, &str, u64); 7] = [
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
                "channels_layer_disconnects_total",
                "Times a Redis subscriber connection was lost (it reconnects by itself).",
                stats.disconnects,
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
        m.closed_by_client(None);
        m.refused(Refusal::NotFound);
        let text = m.render(&InMemoryChannelLayer::default(), false);
        assert!(
            text.contains("# TYPE channels_connections_open gauge\nchannels_connections_open 1\n")
        );
        assert!(text.contains("channels_closes_total{by=\"server\",code=\"1001\"} 1\n"));
        assert!(text.contains("channels_closes_total{by=\"client\",code=\"none\"} 1\n"));
        assert!(text.contains("channels_handshakes_refused_total{reason=\"not_found\"} 1\n"));
        assert!(text.contains("channels_layer_ready 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap();
        }
    }
}
