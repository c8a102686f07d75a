//! The machine's tunables: timeouts, heartbeat, backoff and outbox size.

/// Tunables, all in ms except the outbox size. The defaults are the ones the package's
/// `HablarOptions` type documents.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Ceiling of the first reconnect delay.
    pub backoff_base_ms: f64,
    /// Longest reconnect delay.
    pub backoff_cap_ms: f64,
    /// A connection up this long resets the attempt count.
    pub stable_after_ms: f64,
    /// An open socket without `ready` after this long is a base-layer peer: go `open`.
    pub ready_timeout_ms: f64,
    /// A socket attempt (token included) that takes longer is abandoned.
    pub connect_timeout_ms: f64,
    /// Idle time after which a `ping` is sent (extension peers only).
    pub ping_interval_ms: f64,
    /// No frame this long after a `ping` means the connection is dead.
    pub pong_timeout_ms: f64,
    /// Most messages waiting for their echo.
    pub outbox_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backoff_base_ms: 500.0,
            backoff_cap_ms: 30_000.0,
            stable_after_ms: 10_000.0,
            ready_timeout_ms: 2_000.0,
            connect_timeout_ms: 15_000.0,
            ping_interval_ms: 25_000.0,
            pong_timeout_ms: 10_000.0,
            outbox_limit: 100,
        }
    }
}
