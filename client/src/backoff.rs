//! Reconnect delays: exponential backoff with full jitter, and the small random source
//! that feeds it (seeded by the caller, so tests are deterministic and wasm needs no
//! `getrandom`).

/// Exponential backoff with "full jitter": attempt `n` waits a uniformly random time in
/// `[0, min(cap, base * 2^(n-1)))`. Full jitter spreads a crowd of clients that lost the
/// same server, so a restart is not followed by a thundering herd.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The ceiling of the first attempt's delay, in ms.
    base_ms: f64,
    /// No delay is ever longer than this, in ms.
    cap_ms: f64,
    /// Failed attempts since the last stable connection; the exponent of the ceiling.
    attempt: u32,
}

impl Backoff {
    /// A backoff that starts at `base_ms` and never waits longer than `cap_ms`.
    pub fn new(base_ms: f64, cap_ms: f64) -> Self {
        Self {
            base_ms: base_ms.max(0.0),
            cap_ms: cap_ms.max(0.0),
            attempt: 0,
        }
    }

    /// Failed attempts counted so far (0 before the first failure).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the delay for attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> f64 {
        // 2^30 * base already exceeds any sane cap; clamping keeps powi finite.
        let exp = attempt.saturating_sub(1).min(30) as i32;
        (self.base_ms * 2f64.powi(exp)).min(self.cap_ms)
    }

    /// Counts one more failed attempt and returns `(attempt, delay_ms)`, with `unit` a
    /// uniform random number in `[0, 1)`.
    pub fn next_delay(&mut self, unit: f64) -> (u32, f64) {
        self.attempt = self.attempt.saturating_add(1);
        let delay = unit.clamp(0.0, 1.0) * self.ceiling(self.attempt);
        (self.attempt, delay)
    }

    /// Forgets past failures. Called only once a connection has stayed up a while, so a
    /// server that accepts and drops at once keeps its clients backing off.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// xorshift64*: a few instructions of randomness, good enough for jitter. Not for
/// anything secret.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from any seed (0 is replaced, xorshift would stay at 0).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next number, uniform in `[0, 1)`.
    pub fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let out = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (out >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays_of_attempt(attempt: u32, samples: usize) -> Vec<f64> {
        let mut rng = Rng::new(42);
        (0..samples)
            .map(|_| {
                let mut b = Backoff::new(500.0, 30_000.0);
                for _ in 1..attempt {
                    b.next_delay(rng.next_unit());
                }
                let (n, delay) = b.next_delay(rng.next_unit());
                assert_eq!(n, attempt);
                delay
            })
            .collect()
    }

    #[test]
    fn delays_are_fully_jittered_below_a_doubling_ceiling() {
        for (attempt, ceiling) in [(1, 500.0), (2, 1000.0), (3, 2000.0), (6, 16_000.0)] {
            let delays = delays_of_attempt(attempt, 2000);
            let min = delays.iter().copied().fold(f64::MAX, f64::min);
            let max = delays.iter().copied().fold(0.0, f64::max);
            let mean = delays.iter().sum::<f64>() / delays.len() as f64;
            assert!(delays.iter().all(|d| (0.0..ceiling).contains(d)));
            // Full jitter: the whole range is used, not just the top (plain backoff) or
            // the upper half ("equal jitter").
            assert!(min < ceiling * 0.05, "attempt {attempt}: min {min}");
            assert!(max > ceiling * 0.95, "attempt {attempt}: max {max}");
            let expected = ceiling / 2.0;
            assert!(
                (mean - expected).abs() < ceiling * 0.05,
                "attempt {attempt}: mean {mean}, expected about {expected}"
            );
        }
    }

    #[test]
    fn delays_never_exceed_the_cap() {
        let mut b = Backoff::new(500.0, 30_000.0);
        let mut rng = Rng::new(7);
        let mut saw_near_cap = false;
        for _ in 0..500 {
            let (_, delay) = b.next_delay(rng.next_unit());
            assert!(delay <= 30_000.0);
            saw_near_cap |= delay > 25_000.0;
        }
        assert!(saw_near_cap, "late attempts spread up to the cap");
        assert_eq!(b.ceiling(1_000), 30_000.0);
        assert_eq!(b.ceiling(u32::MAX), 30_000.0);
    }

    #[test]
    fn reset_starts_again_from_the_base() {
        let mut b = Backoff::new(500.0, 30_000.0);
        for _ in 0..5 {
            b.next_delay(0.999);
        }
        assert_eq!(b.attempt(), 5);
        b.reset();
        let (attempt, delay) = b.next_delay(0.999);
        assert_eq!(attempt, 1);
        assert!(delay < 500.0);
    }

    #[test]
    fn rng_is_uniform_enough_and_never_one() {
        let mut rng = Rng::new(0);
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let x = rng.next_unit();
            assert!((0.0..1.0).contains(&x));
            buckets[(x * 10.0) as usize] += 1;
        }
        assert!(buckets.iter().all(|&n| (850..1150).contains(&n)), "{buckets:?}");
    }
}
