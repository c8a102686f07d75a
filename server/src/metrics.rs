//! The server's counters, plain atomics bumped where things happen, and their
//! exposition at `/metrics` in the Prometheus text format through `prometheus-client`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use hablar_protocol::CloseCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::peer::Refusal;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Close codes counted separately; everything else is `other`.
const CLOSE_CODES: [u16; 12] = [
    1000, 1001, 1006, 1008, 1009, 1011, 1012, 4401, 4403, 4404, 4408, 4429,
];

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// WebSocket connections open now.
    pub connections: AtomicI64,
    /// WebSocket connections accepted since start.
    pub connections_total: AtomicU64,
    /// Chats with connections on this instance (rooms in the hub).
    pub rooms: AtomicI64,
    /// Frames received from clients.
    pub messages_in: AtomicU64,
    /// Frames queued to clients.
    pub messages_out: AtomicU64,
    /// Messages stored.
    pub messages_stored: AtomicU64,
    /// Frames not queued because a connection's queue was full: typing events dropped, and
    /// presence events held back (the latest per user is sent once the queue drains).
    pub dropped: AtomicU64,
    /// Handshakes refused before their token was checked, by [`Refusal`] (throttled,
    /// address full, instance full).
    refused: [AtomicU64; 3],
    /// History requests answered 429.
    pub history_limited: AtomicU64,
    /// Closes by code, in `CLOSE_CODES` order, then `other`.
    closes: [AtomicU64; CLOSE_CODES.len() + 1],
}

impl Metrics {
    /// Counts one close with `code`.
    pub fn close(&self, code: CloseCode) {
        let code = code.as_u16();
        let index = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.closes[index].fetch_add(1, Relaxed);
    }

    /// Closes counted with `code` so far.
    pub fn closes(&self, code: CloseCode) -> u64 {
        let code = code.as_u16();
        let index = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.closes[index].load(Relaxed)
    }

    /// Counts a handshake refused for `why`.
    pub fn refused(&self, why: Refusal) {
        self.refused[refusal_index(why)].fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4) of the counters as they are now.
    pub fn render(&self) -> String {
        let load = |counters: &[AtomicU64]| counters.iter().map(|c| c.load(Relaxed)).collect();
        let snapshot = Snapshot {
            connections: self.connections.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            rooms: self.rooms.load(Relaxed),
            messages_in: self.messages_in.load(Relaxed),
            messages_out: self.messages_out.load(Relaxed),
            messages_stored: self.messages_stored.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            history_limited: self.history_limited.load(Relaxed),
            refused: load(&self.refused),
            closes: load(&self.closes),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(snapshot));
        let mut out = String::with_capacity(2048);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The counters read once per scrape, so that the registry owns what it encodes (the
/// call sites keep bumping plain atomics).
#[derive(Debug)]
struct Snapshot {
    connections: i64,
    connections_total: u64,
    rooms: i64,
    messages_in: u64,
    messages_out: u64,
    messages_stored: u64,
    dropped: u64,
    history_limited: u64,
    /// In [`refusal_index`] order.
    refused: Vec<u64>,
    /// In `CLOSE_CODES` order, then `other`.
    closes: Vec<u64>,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        // Counter names are given without `_total`: the encoder appends it.
        let gauges = [
            (
                "hablar_connections",
                "WebSocket connections open now.",
                self.connections,
            ),
            (
                "hablar_rooms",
                "Chats with WebSocket connections on this instance.",
                self.rooms,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let counters = [
            (
                "hablar_connections",
                "WebSocket connections accepted.",
                self.connections_total,
            ),
            (
                "hablar_messages_in",
                "Frames received from clients.",
                self.messages_in,
            ),
            (
                "hablar_messages_out",
                "Frames queued to clients.",
                self.messages_out,
            ),
            (
                "hablar_messages_stored",
                "Chat messages stored.",
                self.messages_stored,
            ),
            (
                "hablar_dropped",
                "Frames dropped (typing) or held back (presence) for a full connection queue.",
                self.dropped,
            ),
            (
                "hablar_history_limited",
                "History requests answered 429 (per-user rate limit).",
                self.history_limited,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }

        let mut family = encoder.encode_descriptor(
            "hablar_handshakes_refused",
            "Handshakes refused with 4429 before the token check, by reason.",
            None,
            MetricType::Counter,
        )?;
        for why in [Refusal::Throttled, Refusal::AddressFull, Refusal::InstanceFull] {
            let reason = match why {
                Refusal::Throttled => "failed_handshakes",
                Refusal::AddressFull => "connections_per_ip",
                Refusal::InstanceFull => "connections",
            };
            ConstCounter::new(self.refused[refusal_index(why)])
                .encode(family.encode_family(&[("reason", reason)])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "hablar_closes",
            "WebSocket closes by close code.",
            None,
            MetricType::Counter,
        )?;
        let codes = CLOSE_CODES.iter().map(u16::to_string).chain(["other".to_owned()]);
        for (code, count) in codes.zip(&self.closes) {
            ConstCounter::new(*count).encode(family.encode_family(&[("code", code.as_str())])?)?;
        }
        Ok(())
    }
}

/// The slot of `why` in [`Metrics::refused`].
fn refusal_index(why: Refusal) -> usize {
    match why {
        Refusal::Throttled => 0,
        Refusal::AddressFull => 1,
        Refusal::InstanceFull => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_closes_by_code() {
        let m = Metrics::default();
        m.connections.fetch_add(2, Relaxed);
        m.close(CloseCode::TooSlow);
        m.close(CloseCode::Other(4999));
        m.refused(Refusal::Throttled);
        let text = m.render();
        assert!(text.contains("hablar_handshakes_refused_total{reason=\"failed_handshakes\"} 1\n"));
        assert!(text.contains("hablar_handshakes_refused_total{reason=\"connections\"} 0\n"));
        assert!(text.contains("hablar_history_limited_total 0\n"));
        assert!(text.contains("hablar_connections 2\n"));
        assert!(text.contains("hablar_closes_total{code=\"4408\"} 1\n"));
        assert!(text.contains("hablar_closes_total{code=\"other\"} 1\n"));
        assert_eq!(m.closes(CloseCode::TooSlow), 1);
    }

    #[test]
    fn renders_every_metric_with_its_type_and_labels() {
        let text = Metrics::default().render();
        let types = [
            ("hablar_connections", "gauge"),
            ("hablar_rooms", "gauge"),
            ("hablar_connections_total", "counter"),
            ("hablar_messages_in_total", "counter"),
            ("hablar_messages_out_total", "counter"),
            ("hablar_messages_stored_total", "counter"),
            ("hablar_dropped_total", "counter"),
            ("hablar_history_limited_total", "counter"),
            ("hablar_handshakes_refused_total", "counter"),
            ("hablar_closes_total", "counter"),
        ];
        for (name, kind) in types {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind}\n{text}"
            );
        }
        for reason in ["failed_handshakes", "connections_per_ip", "connections"] {
            assert!(
                text.contains(&format!(
                    "hablar_handshakes_refused_total{{reason=\"{reason}\"}} 0\n"
                )),
                "{reason}"
            );
        }
        for code in CLOSE_CODES.iter().map(u16::to_string).chain(["other".into()]) {
            assert!(
                text.contains(&format!("hablar_closes_total{{code=\"{code}\"}} 0\n")),
                "{code}"
            );
        }
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, 8 + 3 + CLOSE_CODES.len() + 1, "no other samples\n{text}");
    }
}
