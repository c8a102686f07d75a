//! Server configuration: clap flags, each also read from the environment.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use hablar_protocol::events::MessageLimits;
use hablar_protocol::limits;
use ipnet::IpNet;

use crate::error::{Error, Result};

/// The JWT secret `--dev` uses when none is given.
pub const DEV_JWT_SECRET: &str = "hablar-dev-secret";
/// The admin key `--dev` uses when none is given.
pub const DEV_ADMIN_KEY: &str = "hablar-dev-admin";

/// Which store and broker the server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Embedded in-memory store: one instance, nothing to run beside it.
    Memory,
    /// Redis: several instances share chats, history and presence.
    Redis,
}

/// A secret from the command line or environment whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself; named so that every use is easy to find.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Everything the server can be told at start.
#[derive(Debug, Clone, Parser)]
#[command(name = "hablar-server", version, about = "Hablar's reference chat server")]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HABLAR_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// HS256 key shared with the token issuer (simplejwt's SIGNING_KEY).
    #[arg(long, env = "HABLAR_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds (simplejwt's LEEWAY, default 0).
    #[arg(long, env = "HABLAR_JWT_LEEWAY_SECS", default_value_t = 0)]
    pub jwt_leeway_secs: u64,
    /// Browser origins allowed to open a WebSocket (comma list, e.g. `https://chat.example`).
    #[arg(long, env = "HABLAR_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Refuse handshakes without an `Origin` header (non-browser clients).
    #[arg(long, env = "HABLAR_REFUSE_MISSING_ORIGIN")]
    pub refuse_missing_origin: bool,
    /// Key for the admin HTTP API (`Authorization: Bearer …`); the API is off without it.
    #[arg(long, env = "HABLAR_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<Secret>,
    /// Store and broker.
    #[arg(long, env = "HABLAR_BACKEND", value_enum, default_value = "memory")]
    pub backend: BackendKind,
    /// Redis URL for `--backend redis`.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,
    /// Development mode: seeded users and chats, dev token endpoint, static files,
    /// loopback origins allowed.
    #[arg(long, env = "HABLAR_DEV")]
    pub dev: bool,
    /// Allow `--dev` on a non-loopback address (it hands out tokens to anyone).
    #[arg(long, env = "HABLAR_DEV_ALLOW_PUBLIC")]
    pub dev_allow_public: bool,
    /// Directory served at `/` in dev mode.
    #[arg(long, env = "HABLAR_WWW_DIR", default_value = "www")]
    pub www_dir: PathBuf,
    /// wasm-pack output served at `/pkg/` in dev mode.
    #[arg(long, env = "HABLAR_PKG_DIR", default_value = "client/pkg")]
    pub pkg_dir: PathBuf,
    /// Serve `/metrics` only on this address (e.g. `127.0.0.1:9100`), not on `--bind`.
    #[arg(long, env = "HABLAR_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
    /// Proxies whose `X-Forwarded-For` names the client (comma list of addresses or
    /// CIDR ranges, e.g. `10.0.0.0/8`); without it the socket peer is the client.
    #[arg(long, env = "HABLAR_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_proxy)]
    pub trusted_proxies: Vec<IpNet>,
    /// The limits.
    #[command(flatten)]
    pub limits: Limits,
    /// The Redis backend's settings.
    #[command(flatten)]
    pub redis: crate::backend::redis::RedisOptions,
}

/// Limits, each with a default that is safe for a public server.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Largest WebSocket frame/message in bytes; larger closes with 1009.
    #[arg(long, env = "HABLAR_MAX_FRAME_BYTES", default_value_t = limits::MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,
    /// Longest message content in characters, after trimming.
    #[arg(long, env = "HABLAR_MAX_CONTENT_CHARS", default_value_t = limits::MAX_CONTENT_CHARS)]
    pub max_content_chars: usize,
    /// Largest message as stored, in bytes of JSON (its content, client_id and
    /// pass-through fields); larger is answered `too_large`. The default's reasoning is
    /// at `hablar_protocol::limits::MAX_MESSAGE_BYTES`.
    #[arg(long, env = "HABLAR_MAX_MESSAGE_BYTES", default_value_t = limits::MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Events per second a connection may send on average.
    #[arg(long, env = "HABLAR_RATE_PER_SEC", default_value_t = 10.0)]
    pub rate_per_sec: f64,
    /// Events a connection may send in a burst.
    #[arg(long, env = "HABLAR_RATE_BURST", default_value_t = 30)]
    pub rate_burst: u32,
    /// Rate-limited events in a row after which the connection is closed with 1008.
    #[arg(long, env = "HABLAR_RATE_ABUSE_CLOSE_AFTER", default_value_t = 20)]
    pub rate_abuse_close_after: u32,
    /// Typing events a connection may send per second on average, a budget apart from
    /// the one above (the SDK sends one every 3 s at most while typing, and a stop).
    #[arg(long, env = "HABLAR_TYPING_RATE_PER_SEC", default_value_t = 2.0)]
    pub typing_rate_per_sec: f64,
    /// Typing events a connection may send in a burst.
    #[arg(long, env = "HABLAR_TYPING_BURST", default_value_t = 10)]
    pub typing_burst: u32,
    /// Open connections one user may have (on all instances together with the Redis
    /// backend); more close with 4429.
    #[arg(long, env = "HABLAR_MAX_CONNECTIONS_PER_USER", default_value_t = 16)]
    pub max_connections_per_user: usize,
    /// Handshakes per second one user may make on average; more close with 4429.
    #[arg(long, env = "HABLAR_CONNECT_RATE_PER_SEC", default_value_t = 1.0)]
    pub connect_rate_per_sec: f64,
    /// Handshakes one user may make in a burst (tabs opening, a reconnect storm).
    #[arg(long, env = "HABLAR_CONNECT_BURST", default_value_t = 20)]
    pub connect_burst: u32,
    /// Open WebSocket connections from one client address (an IPv6 /64 counts as one);
    /// more close with 4429. 0: no limit.
    #[arg(long, env = "HABLAR_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,
    /// Open WebSocket connections on this instance; more close with 4429. 0: no limit.
    #[arg(long, env = "HABLAR_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,
    /// Failed handshakes (bad token, no such chat, not a member) one client address may
    /// make in a burst; then its handshakes close with 4429 before any token check until
    /// the bucket refills. 0: no throttle.
    #[arg(long, env = "HABLAR_FAILED_HANDSHAKE_BURST", default_value_t = 20)]
    pub failed_handshake_burst: u32,
    /// Failed handshakes per second one client address is allowed on average.
    #[arg(long, env = "HABLAR_FAILED_HANDSHAKE_RATE_PER_SEC", default_value_t = 0.5)]
    pub failed_handshake_rate_per_sec: f64,
    /// History requests per second one user may make on average; more answer 429.
    #[arg(long, env = "HABLAR_HISTORY_RATE_PER_SEC", default_value_t = 5.0)]
    pub history_rate_per_sec: f64,
    /// History requests one user may make in a burst (pages loaded at start, scrolling).
    #[arg(long, env = "HABLAR_HISTORY_BURST", default_value_t = 30)]
    pub history_burst: u32,
    /// Frames queued for one connection; a slow reader past it is closed with 4408.
    #[arg(long, env = "HABLAR_OUTBOUND_QUEUE", default_value_t = 256)]
    pub outbound_queue: usize,
    /// Interval of server-sent WebSocket pings, in milliseconds.
    #[arg(long, env = "HABLAR_PING_INTERVAL_MS", default_value_t = 20_000)]
    pub ping_interval_ms: u64,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    #[arg(long, env = "HABLAR_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// Messages a chat keeps in the embedded store (resume and history reach this far).
    #[arg(long, env = "HABLAR_HISTORY_RETENTION", default_value_t = 10_000)]
    pub history_retention: usize,
    /// Most messages replayed on resume; a larger gap answers `recovered: false`.
    #[arg(long, env = "HABLAR_MAX_REPLAY", default_value_t = 1_000)]
    pub max_replay: usize,
    /// How long graceful shutdown waits for connections to close, in milliseconds.
    #[arg(long, env = "HABLAR_SHUTDOWN_GRACE_MS", default_value_t = 5_000)]
    pub shutdown_grace_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Config::defaults().limits
    }
}

impl Config {
    /// The configuration with every default and nothing from the environment's flags.
    pub fn defaults() -> Self {
        // Parse an empty command line so the defaults live in one place: the clap attributes.
        Self::try_parse_from(["hablar-server"])
            .expect("every flag has a default or is optional, so an empty command line parses")
    }

    /// The JWT key in force: the configured one, or the dev default in `--dev`.
    pub fn jwt_secret(&self) -> Option<Secret> {
        self.jwt_secret
            .clone()
            .or_else(|| self.dev.then(|| Secret::new(DEV_JWT_SECRET)))
    }

    /// The admin key in force: the configured one, or the dev default in `--dev`.
    pub fn admin_key(&self) -> Option<Secret> {
        self.admin_key
            .clone()
            .or_else(|| self.dev.then(|| Secret::new(DEV_ADMIN_KEY)))
    }

    /// Refuses a configuration that cannot or must not run on `addr`.
    pub fn validate(&self, addr: SocketAddr) -> Result<()> {
        if self.dev && !addr.ip().is_loopback() && !self.dev_allow_public {
            return Err(Error::Config(format!(
                "--dev hands out tokens to anyone; refusing to listen on non-loopback {addr} \
                 without --dev-allow-public"
            )));
        }
        match self.jwt_secret() {
            None => {
                return Err(Error::Config(
                    "no JWT secret: pass --jwt-secret (HABLAR_JWT_SECRET) or --dev".into(),
                ))
            }
            // An empty HMAC key (an unset variable in a deploy script) would let anyone
            // mint tokens for any user.
            Some(secret) if secret.expose().trim().is_empty() => {
                return Err(Error::Config("the JWT secret is empty".into()));
            }
            Some(_) => {}
        }
        let l = &self.limits;
        if l.max_frame_bytes < 1024
            || l.max_message_bytes < 1024
            || l.outbound_queue == 0
            || l.rate_burst == 0
            || l.rate_per_sec <= 0.0
            || l.typing_burst == 0
            || l.typing_rate_per_sec <= 0.0
            || l.connect_burst == 0
            || l.connect_rate_per_sec <= 0.0
            || l.failed_handshake_rate_per_sec <= 0.0
            || l.history_burst == 0
            || l.history_rate_per_sec <= 0.0
        {
            return Err(Error::Config(
                "limits: max frame and message ≥ 1024 bytes, queue, burst and rate must be positive".into(),
            ));
        }
        if l.idle_timeout_ms <= l.ping_interval_ms {
            return Err(Error::Config(
                "the idle timeout must be longer than the ping interval".into(),
            ));
        }
        Ok(())
    }
}

/// A `--trusted-proxies` entry: a CIDR range or a single address.
fn parse_proxy(text: &str) -> std::result::Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is neither an IP address nor a CIDR range"))
}

impl Limits {
    /// What a client's message is checked against.
    pub fn message_limits(&self) -> MessageLimits {
        MessageLimits {
            max_content_chars: self.max_content_chars,
            max_message_bytes: self.max_message_bytes,
        }
    }

    /// The server ping interval.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_protocol_limits() {
        let config = Config::defaults();
        assert_eq!(config.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(config.backend, BackendKind::Memory);
        assert_eq!(config.limits.max_frame_bytes, 64 * 1024);
        assert_eq!(config.limits.max_content_chars, 4000);
        assert_eq!(config.limits.max_message_bytes, 20 * 1024);
        assert_eq!(config.limits.message_limits(), MessageLimits::default());
    }

    #[test]
    fn dev_mode_refuses_a_public_address_unless_allowed() {
        let mut config = Config::try_parse_from(["hablar-server", "--dev"]).expect("parses");
        let public: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        assert!(config.validate(public).is_err());
        assert!(config.validate(loopback).is_ok());
        config.dev_allow_public = true;
        assert!(config.validate(public).is_ok());
    }

    #[test]
    fn an_empty_jwt_secret_is_refused() {
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        for secret in ["", "  "] {
            let config = Config::try_parse_from(["hablar-server", "--jwt-secret", secret]).expect("parses");
            assert!(config.validate(loopback).is_err(), "{secret:?}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let config =
            Config::try_parse_from(["hablar-server", "--jwt-secret", "s3cr3t", "--admin-key", "k3y"])
                .expect("parses");
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t") && !debug.contains("k3y"));
    }

    #[test]
    fn trusted_proxies_are_addresses_or_ranges() {
        let config = Config::try_parse_from([
            "hablar-server",
            "--trusted-proxies",
            "10.0.0.0/8, 192.0.2.7,2001:db8::/32",
        ])
        .expect("parses");
        let proxies: Vec<String> = config.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(proxies, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert!(Config::try_parse_from(["hablar-server", "--trusted-proxies", "lb.internal"]).is_err());
    }

    #[test]
    fn origins_are_a_comma_list() {
        let config = Config::try_parse_from([
            "hablar-server",
            "--allowed-origins",
            "https://a.example,https://b.example",
        ])
        .expect("parses");
        assert_eq!(config.allowed_origins.len(), 2);
    }
}
