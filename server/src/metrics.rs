//! Counters for `/metrics`, in the Prometheus text format, from plain atomics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use hablar_protocol::CloseCode;

use crate::peer::Refusal;

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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        metric(
            "hablar_connections",
            "gauge",
            "WebSocket connections open now.",
            self.connections.load(Relaxed).to_string(),
        );
        metric(
            "hablar_connections_total",
            "counter",
            "WebSocket connections accepted.",
            self.connections_total.load(Relaxed).to_string(),
        );
        metric(
            "hablar_rooms",
            "gauge",
            "Chats with WebSocket connections on this instance.",
            self.rooms.load(Relaxed).to_string(),
        );
        metric(
            "hablar_messages_in_total",
            "counter",
            "Frames received from clients.",
            self.messages_in.load(Relaxed).to_string(),
        );
        metric(
            "hablar_messages_out_total",
            "counter",
            "Frames queued to clients.",
            self.messages_out.load(Relaxed).to_string(),
        );
        metric(
            "hablar_messages_stored_total",
            "counter",
            "Chat messages stored.",
            self.messages_stored.load(Relaxed).to_string(),
        );
        metric(
            "hablar_dropped_total",
            "counter",
            "Frames dropped (typing) or held back (presence) for a full connection queue.",
            self.dropped.load(Relaxed).to_string(),
        );
        metric(
            "hablar_history_limited_total",
            "counter",
            "History requests answered 429 (per-user rate limit).",
            self.history_limited.load(Relaxed).to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP hablar_handshakes_refused_total Handshakes refused with 4429 before the token check, by reason.\n# TYPE hablar_handshakes_refused_total counter"
        );
        for why in [Refusal::Throttled, Refusal::AddressFull, Refusal::InstanceFull] {
            let reason = match why {
                Refusal::Throttled => "failed_handshakes",
                Refusal::AddressFull => "connections_per_ip",
                Refusal::InstanceFull => "connections",
            };
            let count = self.refused[refusal_index(why)].load(Relaxed);
            let _ = writeln!(
                out,
                "hablar_handshakes_refused_total{{reason=\"{reason}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP hablar_closes_total WebSocket closes by close code.\n# TYPE hablar_closes_total counter"
        );
        for (i, code) in CLOSE_CODES.iter().enumerate() {
            let _ = writeln!(
                out,
                "hablar_closes_total{{code=\"{code}\"}} {}",
                self.closes[i].load(Relaxed)
            );
        }
        let other = self.closes[CLOSE_CODES.len()].load(Relaxed);
        let _ = writeln!(out, "hablar_closes_total{{code=\"other\"}} {other}");
        out
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
}
