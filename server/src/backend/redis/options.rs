//! The Redis backend's flags: key prefix, time limits, leases and check intervals.

/// The Redis backend's settings (flags, each also from the environment).
#[derive(Debug, Clone, clap::Args)]
pub struct RedisOptions {
    /// Prefix of every Redis key and channel.
    #[arg(
        long = "redis-key-prefix",
        env = "HABLAR_REDIS_KEY_PREFIX",
        default_value = "hablar"
    )]
    pub key_prefix: String,
    /// How long one Redis command may take before the request fails as `unavailable`, ms.
    #[arg(
        long = "redis-timeout-ms",
        env = "HABLAR_REDIS_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    pub timeout_ms: u64,
    /// Longest wait between two reconnection attempts, ms.
    #[arg(
        long = "redis-reconnect-max-ms",
        env = "HABLAR_REDIS_RECONNECT_MAX_MS",
        default_value_t = 2_000
    )]
    pub reconnect_max_ms: u64,
    /// How often the pub/sub connection is pinged to notice a silent outage, ms.
    #[arg(
        long = "redis-health-interval-ms",
        env = "HABLAR_REDIS_HEALTH_INTERVAL_MS",
        default_value_t = 5_000
    )]
    pub health_interval_ms: u64,
    /// Presence lease: a crashed instance's users go offline after this long, ms. The
    /// heartbeat renews leases every third of it.
    #[arg(
        long = "redis-presence-ttl-ms",
        env = "HABLAR_REDIS_PRESENCE_TTL_MS",
        default_value_t = 30_000
    )]
    pub presence_ttl_ms: u64,
    /// Deprecated and ignored: a `client_id` makes a resend a no-op while its message is
    /// in the retained history (`--history-retention`), as on the embedded backend.
    /// Still accepted so that a deployment that sets it keeps starting; it logs a warning.
    #[arg(
        long = "redis-idempotency-ttl-secs",
        env = "HABLAR_REDIS_IDEMPOTENCY_TTL_SECS"
    )]
    pub idempotency_ttl_secs: Option<u64>,
    /// How often this instance checks, in one round trip, that the users of its sockets
    /// are still members of their chats, and closes those who are not with 4403, ms. It
    /// bounds how long a removal the pub/sub event did not bring (a direct `SREM`, or an
    /// event missed while the pub/sub link was down) leaves a socket open.
    #[arg(
        long = "redis-membership-check-ms",
        env = "HABLAR_REDIS_MEMBERSHIP_CHECK_MS",
        default_value_t = 2_000
    )]
    pub membership_check_ms: u64,
    /// Most messages the pub/sub catch-up reads from the stream for one chat; a larger
    /// gap closes the chat's local connections with 1012 instead.
    #[arg(
        long = "redis-max-catch-up",
        env = "HABLAR_REDIS_MAX_CATCH_UP",
        default_value_t = 1_000
    )]
    pub max_catch_up: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            key_prefix: "hablar".into(),
            timeout_ms: 2_000,
            reconnect_max_ms: 2_000,
            health_interval_ms: 5_000,
            presence_ttl_ms: 30_000,
            idempotency_ttl_secs: None,
            membership_check_ms: 2_000,
            max_catch_up: 1_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_membership_check_flag_has_a_default_and_the_old_ttl_flag_is_still_accepted() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            redis: RedisOptions,
        }
        let defaults = Flags::try_parse_from(["hablar-server"]).expect("parses").redis;
        assert_eq!(defaults.membership_check_ms, 2_000);
        assert_eq!(defaults.idempotency_ttl_secs, None);
        let set = Flags::try_parse_from([
            "hablar-server",
            "--redis-membership-check-ms",
            "500",
            "--redis-idempotency-ttl-secs",
            "86400",
        ])
        .expect("a deployment that sets the deprecated flag still starts")
        .redis;
        assert_eq!(set.membership_check_ms, 500);
        assert_eq!(set.idempotency_ttl_secs, Some(86_400));
    }
}
