//! Limits that protect the server from one client: per-connection token buckets (one
//! for messages and other frames, one for typing) with a strike count for repeated
//! abuse, token buckets per key (handshakes and history requests per user, failed
//! handshakes per address), and a per-user connection counter. Sans-I/O: time is passed in.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hablar_protocol::UserId;
use parking_lot::Mutex;

/// What the rate limiter decides about one incoming event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Handle the event.
    Allow,
    /// Drop it and answer `rate_limited`.
    Limited,
    /// The client keeps sending over the limit: close with 1008.
    Close,
}

/// A token bucket with a count of limited events in a row.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// Tokens available now (fractional, refilled continuously).
    tokens: f64,
    /// Bucket size: the largest burst.
    burst: f64,
    /// Tokens added per second.
    rate: f64,
    /// When `tokens` was last refilled.
    last: Instant,
    /// Limited events since the last allowed one.
    strikes: u32,
    /// Strikes that close the connection.
    close_after: u32,
}

impl RateLimiter {
    /// A full bucket at `now`.
    pub fn new(rate_per_sec: f64, burst: u32, close_after: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            rate: rate_per_sec,
            last: now,
            strikes: 0,
            close_after: close_after.max(1),
        }
    }

    /// Takes one token for an event arriving at `now`.
    pub fn check(&mut self, now: Instant) -> RateDecision {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            return RateDecision::Allow;
        }
        self.strikes += 1;
        if self.strikes >= self.close_after {
            RateDecision::Close
        } else {
            RateDecision::Limited
        }
    }
}

impl RateLimiter {
    /// How long until a token is there, as of the last [`RateLimiter::check`].
    pub fn wait(&self) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::try_from_secs_f64(missing / self.rate).unwrap_or(Duration::MAX)
    }

    /// The tokens the bucket holds at `now`, refill included.
    fn tokens_at(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * self.rate).min(self.burst)
    }

    /// Whether the bucket would be full at `now` (its owner has been quiet long enough
    /// that forgetting it changes nothing).
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// What a client frame is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Messages and every other frame (pings, read receipts, frames that do not parse).
    Messages,
    /// `typing_start` and `typing_stop`.
    Typing,
}

/// A connection's two budgets, so that typing never uses up the sender's messages and
/// a burst of messages never silences typing.
#[derive(Debug, Clone)]
pub struct FrameLimiter {
    messages: RateLimiter,
    typing: RateLimiter,
}

impl FrameLimiter {
    /// Typing frames over the budget in a row that close the connection, as a multiple
    /// of the messages' `--rate-abuse-close-after`: over-budget typing is dropped for
    /// free, so only an absurd flood (hundreds a second) is closed.
    pub const TYPING_ABUSE_FACTOR: u32 = 10;

    /// Full buckets at `now`, sized by `limits`.
    pub fn new(limits: &crate::Limits, now: Instant) -> Self {
        Self {
            messages: RateLimiter::new(
                limits.rate_per_sec,
                limits.rate_burst,
                limits.rate_abuse_close_after,
                now,
            ),
            typing: RateLimiter::new(
                limits.typing_rate_per_sec,
                limits.typing_burst,
                limits
                    .rate_abuse_close_after
                    .saturating_mul(Self::TYPING_ABUSE_FACTOR),
                now,
            ),
        }
    }

    /// Takes one token from `budget` for a frame arriving at `now`.
    pub fn check(&mut self, budget: Budget, now: Instant) -> RateDecision {
        match budget {
            Budget::Messages => self.messages.check(now),
            Budget::Typing => self.typing.check(now),
        }
    }
}

/// Handshakes per user on this instance: a token bucket each, so that a client stuck in
/// a reconnect loop gets 4429 instead of costing a token check and store reads each time.
pub type ConnectRate = RateByKey<UserId>;

/// A token bucket per key (a user, a client address), in memory bounded by the keys
/// that were active recently.
#[derive(Debug)]
pub struct RateByKey<K> {
    /// Buckets by key; full ones are forgotten when the map grows.
    buckets: Mutex<Buckets<K>>,
    /// Events per second per key, on average.
    rate: f64,
    /// Events per key in a burst.
    burst: u32,
}

/// The buckets and the size at which full ones are swept out next.
#[derive(Debug)]
struct Buckets<K> {
    by_key: HashMap<K, RateLimiter>,
    /// Twice the size left by the last sweep (at least [`RateByKey::SWEEP_AT`]), so
    /// that a sweep, which scans the whole map under the lock, comes at most once per as
    /// many new keys as the map held: amortised O(1) per event even when most buckets
    /// are not full (many users connecting at once), instead of a scan each time.
    sweep_at: usize,
}

impl<K: Eq + Hash + Clone> RateByKey<K> {
    /// Keys tracked before full buckets are swept out for the first time.
    const SWEEP_AT: usize = 10_000;

    /// A limiter allowing `burst` events at once and `rate_per_sec` after, per key.
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        Self {
            buckets: Mutex::new(Buckets {
                by_key: HashMap::new(),
                sweep_at: Self::SWEEP_AT,
            }),
            rate: rate_per_sec,
            burst: burst.max(1),
        }
    }

    /// Whether `key` may do another event at `now` (and takes a token if so).
    pub fn allow(&self, key: &K, now: Instant) -> bool {
        self.take(key, now).is_ok()
    }

    /// Takes a token for `key` at `now`, or says how long until one is there.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock();
        if buckets.by_key.len() >= buckets.sweep_at {
            buckets.by_key.retain(|_, bucket| !bucket.is_full(now));
            buckets.sweep_at = Self::SWEEP_AT.max(buckets.by_key.len().saturating_mul(2));
        }
        let bucket = buckets
            .by_key
            .entry(key.clone())
            .or_insert_with(|| RateLimiter::new(self.rate, self.burst, u32::MAX, now));
        match bucket.check(now) {
            RateDecision::Allow => Ok(()),
            RateDecision::Limited | RateDecision::Close => Err(bucket.wait()),
        }
    }

    /// Whether `key` has a token at `now`, without taking it (a key never charged has a
    /// full bucket, and gets no entry).
    pub fn has_token(&self, key: &K, now: Instant) -> bool {
        let buckets = self.buckets.lock();
        buckets
            .by_key
            .get(key)
            .is_none_or(|bucket| bucket.tokens_at(now) >= 1.0)
    }
}

/// Open connections per user on this instance.
#[derive(Debug, Default)]
pub struct ConnectionCounter {
    /// Count per user; a user with no connection has no entry.
    counts: Mutex<HashMap<UserId, usize>>,
}

/// One counted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct ConnectionSlot {
    /// The counter to give the slot back to.
    counter: Arc<ConnectionCounter>,
    /// Whose slot it is.
    user: UserId,
}

impl ConnectionCounter {
    /// A slot for `user` if they have fewer than `max` connections.
    pub fn try_acquire(self: &Arc<Self>, user: &UserId, max: usize) -> Option<ConnectionSlot> {
        let mut counts = self.counts.lock();
        let count = counts.entry(user.clone()).or_insert(0);
        if *count >= max {
            if *count == 0 {
                counts.remove(user);
            }
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            counter: self.clone(),
            user: user.clone(),
        })
    }

    /// Open connections of `user`.
    pub fn count(&self, user: &UserId) -> usize {
        self.counts.lock().get(user).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.counter.counts.lock();
        if let Some(count) = counts.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_events_are_limited_then_the_bucket_refills() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(2.0, 3, 5, start);
        for _ in 0..3 {
            assert_eq!(limiter.check(start), RateDecision::Allow);
        }
        assert_eq!(limiter.check(start), RateDecision::Limited);
        assert_eq!(
            limiter.check(start + Duration::from_millis(500)),
            RateDecision::Allow
        );
        assert_eq!(
            limiter.check(start + Duration::from_millis(500)),
            RateDecision::Limited
        );
    }

    #[test]
    fn handshake_buckets_are_swept_once_per_doubling_not_on_every_handshake() {
        let rate = ConnectRate::new(1.0, 2);
        let t0 = Instant::now();
        let user = |i: usize| UserId::new(format!("u{i}")).expect("a valid user id");
        let tracked = || rate.buckets.lock().by_key.len();
        // As many users as trigger a sweep, all of them just connected: none is full,
        // so the sweep frees nothing.
        for i in 0..ConnectRate::SWEEP_AT {
            assert!(rate.allow(&user(i), t0));
        }
        assert!(rate.allow(&user(ConnectRate::SWEEP_AT), t0));
        assert_eq!(tracked(), ConnectRate::SWEEP_AT + 1);
        // Later every bucket is full again, so a sweep would empty the map: none comes
        // until the map has doubled since the last one.
        let later = t0 + Duration::from_secs(10);
        let mut next = ConnectRate::SWEEP_AT + 1;
        while next < 2 * ConnectRate::SWEEP_AT {
            assert!(rate.allow(&user(next), later));
            next += 1;
            assert_eq!(tracked(), next, "no scan of the whole map on every handshake");
        }
        // Doubled: this handshake sweeps out the full buckets (the first users'), so
        // memory stays bounded; the users who connected `later` are kept.
        assert!(rate.allow(&user(next), later));
        assert_eq!(
            tracked(),
            ConnectRate::SWEEP_AT,
            "full buckets are swept once the map doubled"
        );
        // Limits still hold for a user tracked across the sweep.
        let busy = user(next);
        assert!(rate.allow(&busy, later));
        assert!(!rate.allow(&busy, later), "a burst of 2, then limited");
    }

    #[test]
    fn a_limited_key_is_told_how_long_to_wait() {
        let t0 = Instant::now();
        let rate = RateByKey::new(2.0, 1);
        assert_eq!(rate.take(&"alice", t0), Ok(()));
        assert_eq!(rate.take(&"alice", t0), Err(Duration::from_millis(500)));
        let later = t0 + Duration::from_millis(200);
        let wait = rate.take(&"alice", later).expect_err("still empty");
        assert!((wait.as_secs_f64() - 0.3).abs() < 1e-6, "{wait:?}");
        assert_eq!(rate.take(&"bob", t0), Ok(()), "each key has its own bucket");
    }

    #[test]
    fn peeking_at_a_bucket_takes_nothing_and_tracks_nothing() {
        let t0 = Instant::now();
        let rate = RateByKey::new(1.0, 2);
        assert!(rate.has_token(&"new", t0));
        assert_eq!(rate.buckets.lock().by_key.len(), 0, "a peek adds no entry");
        assert!(rate.allow(&"x", t0));
        assert!(rate.has_token(&"x", t0), "one token left");
        assert!(rate.allow(&"x", t0));
        assert!(!rate.has_token(&"x", t0));
        assert!(rate.has_token(&"x", t0 + Duration::from_secs(1)), "refilled");
    }

    #[test]
    fn repeated_abuse_closes() {
        let now = Instant::now();
        let mut limiter = RateLimiter::new(1.0, 1, 3, now);
        assert_eq!(limiter.check(now), RateDecision::Allow);
        assert_eq!(limiter.check(now), RateDecision::Limited);
        assert_eq!(limiter.check(now), RateDecision::Limited);
        assert_eq!(limiter.check(now), RateDecision::Close);
    }

    #[test]
    fn typing_and_messages_have_budgets_of_their_own() {
        let now = Instant::now();
        let limits = crate::Limits {
            rate_per_sec: 1.0,
            rate_burst: 2,
            rate_abuse_close_after: 3,
            typing_rate_per_sec: 1.0,
            typing_burst: 2,
            ..crate::Limits::default()
        };
        let mut limiter = FrameLimiter::new(&limits, now);
        for _ in 0..2 {
            assert_eq!(limiter.check(Budget::Typing, now), RateDecision::Allow);
        }
        // A typing flood: limited, and closed only far beyond the messages' threshold.
        for _ in 0..(3 * FrameLimiter::TYPING_ABUSE_FACTOR - 1) {
            assert_eq!(limiter.check(Budget::Typing, now), RateDecision::Limited);
        }
        assert_eq!(limiter.check(Budget::Typing, now), RateDecision::Close);
        // Messages still have their whole budget, and using it up leaves typing alone.
        let mut limiter = FrameLimiter::new(&limits, now);
        for _ in 0..2 {
            assert_eq!(limiter.check(Budget::Messages, now), RateDecision::Allow);
        }
        assert_eq!(limiter.check(Budget::Messages, now), RateDecision::Limited);
        assert_eq!(limiter.check(Budget::Typing, now), RateDecision::Allow);
        assert_eq!(limiter.check(Budget::Messages, now), RateDecision::Limited);
        assert_eq!(
            limiter.check(Budget::Messages, now),
            RateDecision::Close,
            "typing between does not reset the messages' strikes"
        );
    }

    #[test]
    fn handshakes_are_limited_per_user() {
        let now = Instant::now();
        let rate = ConnectRate::new(1.0, 2);
        let alice = UserId::new("alice").expect("id");
        let bob = UserId::new("bob").expect("id");
        assert!(rate.allow(&alice, now));
        assert!(rate.allow(&alice, now));
        assert!(!rate.allow(&alice, now));
        assert!(rate.allow(&bob, now), "another user has their own bucket");
        assert!(rate.allow(&alice, now + Duration::from_secs(1)));
    }

    #[test]
    fn connection_slots_are_counted_per_user_and_given_back() {
        let counter = Arc::new(ConnectionCounter::default());
        let alice = UserId::new("alice").expect("id");
        let bob = UserId::new("bob").expect("id");
        let a1 = counter.try_acquire(&alice, 2).expect("first");
        let _a2 = counter.try_acquire(&alice, 2).expect("second");
        assert!(counter.try_acquire(&alice, 2).is_none());
        assert!(counter.try_acquire(&bob, 2).is_some());
        drop(a1);
        assert!(counter.try_acquire(&alice, 2).is_some());
    }
}
