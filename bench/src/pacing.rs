//! The open-loop schedule: message `n` is due at `start + n / rate`, whatever happened to
//! the messages before it. Latency is measured from the due time, not from the moment
//! the generator got round to sending, so a generator or server that falls behind shows
//! up in the latency instead of silently lowering the offered rate (coordinated omission).

use std::time::Duration;

/// A fixed-rate schedule starting at time zero of its own clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacer {
    /// Messages per second offered.
    rate: f64,
}

impl Pacer {
    /// A schedule of `rate` messages per second (`rate` > 0).
    pub fn new(rate: f64) -> Self {
        assert!(rate > 0.0 && rate.is_finite(), "a pacer needs a positive rate");
        Self { rate }
    }

    /// The offered rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// When message `n` (0-based) is due, from the start of the schedule.
    pub fn due(&self, n: u64) -> Duration {
        // Computed from `n` each time (not by adding intervals) so rounding never drifts.
        Duration::from_secs_f64(n as f64 / self.rate)
    }

    /// How many messages are due by `elapsed` (those with `due(n) <= elapsed`).
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1
    }

    /// How many messages a window of `window` offers.
    pub fn count_in(&self, window: Duration) -> u64 {
        (window.as_secs_f64() * self.rate).round() as u64
    }
}

/// A geometric sweep of offered rates: `start`, `start·factor`, … up to `max` (inclusive).
pub fn sweep(start: f64, factor: f64, max: f64) -> Vec<f64> {
    assert!(
        start > 0.0 && factor > 1.0,
        "a sweep needs a positive start and factor > 1"
    );
    let mut rates = Vec::new();
    let mut rate = start;
    while rate <= max * (1.0 + 1e-9) {
        rates.push(rate);
        rate *= factor;
    }
    rates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_n_is_due_at_n_over_rate_without_drift() {
        let pacer = Pacer::new(3.0);
        assert_eq!(pacer.due(0), Duration::ZERO);
        assert_eq!(pacer.due(3), Duration::from_secs(1));
        // A million messages later the schedule is still exact to the microsecond.
        let late = pacer.due(3_000_000);
        assert!((late.as_secs_f64() - 1_000_000.0).abs() < 1e-6);
    }

    #[test]
    fn due_by_counts_the_message_at_time_zero() {
        let pacer = Pacer::new(10.0);
        assert_eq!(pacer.due_by(Duration::ZERO), 1);
        assert_eq!(pacer.due_by(Duration::from_millis(99)), 1);
        assert_eq!(pacer.due_by(Duration::from_millis(100)), 2);
        assert_eq!(pacer.due_by(Duration::from_secs(1)), 11);
    }

    #[test]
    fn a_window_offers_rate_times_length() {
        assert_eq!(Pacer::new(250.0).count_in(Duration::from_secs(4)), 1000);
        assert_eq!(Pacer::new(0.5).count_in(Duration::from_secs(4)), 2);
    }

    #[test]
    fn sweep_is_geometric_and_includes_its_max() {
        assert_eq!(sweep(10.0, 2.0, 80.0), vec![10.0, 20.0, 40.0, 80.0]);
        assert_eq!(sweep(10.0, 2.0, 79.0), vec![10.0, 20.0, 40.0]);
    }
}
