//! Hablar's reference server: the WebSocket chat protocol of `PROTOCOL.md` on axum and
//! tokio, with an embedded in-memory backend (the default) behind a [`backend::Backend`]
//! trait that a Redis backend implements for several instances.
//!
//! Layout:
//! - [`config`]: clap flags (each also from the environment) and the limits.
//! - [`error`]: the crate's [`Error`] and its one mapping to HTTP responses.
//! - [`auth`]: HS256 access-token verification (simplejwt compatible), by hand.
//! - [`origin`]: the `Origin` allow-list checked before the upgrade.
//! - [`backend`]: the store + broker trait and its in-memory implementation.
//! - [`rooms`]: the local hub fanning a chat's events out to this instance's sockets.
//! - [`limits`]: token-bucket rate limit and per-user connection counting.
//! - [`connection`]: one socket: admission, `ready` + replay, reader/writer, cleanup.
//! - [`http`]: the router, handshake, history, health, metrics, dev-mode endpoints.
//! - [`admin`]: the admin API for chats, members and profiles.
//! - [`metrics`]: counters in the Prometheus text format.
//! - [`dev`]: the dev-mode seed data.
//!
//! The binary only parses [`Config`] and calls [`serve`], which tests call too.

pub mod admin;
pub mod auth;
pub mod backend;
pub mod config;
pub mod connection;
pub mod dev;
pub mod error;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod origin;
pub mod outbox;
pub mod rooms;

use std::future::Future;
use std::sync::Arc;

use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use config::{BackendKind, Config, Limits, Secret};
pub use error::{Error, Result};

use crate::auth::Verifier;
use crate::backend::redis::RedisBackend;
use crate::backend::{Backend, MemoryBackend};
use crate::limits::{ConnectRate, ConnectionCounter};
use crate::metrics::Metrics;
use crate::origin::OriginPolicy;
use crate::rooms::Rooms;

/// What every handler and connection shares.
pub struct AppState {
    /// The configuration in force.
    pub config: Config,
    /// Store and broker.
    pub backend: Arc<dyn Backend>,
    /// This instance's hub.
    pub rooms: Arc<Rooms>,
    /// Checks access tokens.
    pub verifier: Verifier,
    /// Checks `Origin` before the upgrade.
    pub origins: OriginPolicy,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Open connections per user on this instance, for a backend that does not count them
    /// across instances itself ([`Backend::acquire_connection`]).
    pub connections: Arc<ConnectionCounter>,
    /// Handshakes per user.
    pub connect_rate: ConnectRate,
    /// Becomes `true` when the server shuts down: connections close with 1012.
    pub shutdown: watch::Receiver<bool>,
    /// Held by every connection task; [`serve`] waits until all are dropped.
    pub tracker: mpsc::Sender<()>,
}

/// Serves Hablar on `listener` until `shutdown` completes, then closes every socket with
/// 1012 and waits (up to the configured grace period) for them to finish.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener.local_addr()?;
    config.validate(addr)?;
    let metrics = Arc::new(Metrics::default());
    let rooms = Arc::new(Rooms::new(metrics.clone()));
    let backend: Arc<dyn Backend> = match config.backend {
        BackendKind::Memory => Arc::new(MemoryBackend::new(rooms.clone(), config.limits.history_retention)),
        BackendKind::Redis => {
            let url = config
                .redis_url
                .as_ref()
                .ok_or_else(|| Error::Config("--backend redis needs --redis-url (REDIS_URL)".into()))?;
            Arc::new(
                RedisBackend::connect(
                    url.expose(),
                    rooms.clone(),
                    config.limits.history_retention,
                    config.redis.clone(),
                )
                .await?,
            )
        }
    };
    if config.dev {
        dev::seed(&*backend).await?;
    }
    let secret = config
        .jwt_secret()
        .ok_or_else(|| Error::Config("no JWT secret".into()))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tracker, mut all_closed) = mpsc::channel::<()>(1);
    let grace = config.limits.shutdown_grace();
    // Dev mode's browser suites reconnect as the same seeded users all the time.
    let connect_rate = if config.dev {
        ConnectRate::new(
            config.limits.connect_rate_per_sec.max(100.0),
            config.limits.connect_burst.max(1000),
        )
    } else {
        ConnectRate::new(config.limits.connect_rate_per_sec, config.limits.connect_burst)
    };
    let app = Arc::new(AppState {
        verifier: Verifier::new(secret.expose().as_bytes(), config.jwt_leeway_secs),
        origins: OriginPolicy::new(&config.allowed_origins, config.refuse_missing_origin, config.dev),
        config,
        backend,
        rooms,
        metrics,
        connections: Arc::new(ConnectionCounter::default()),
        connect_rate,
        shutdown: stop_rx,
        tracker,
    });
    tracing::info!(%addr, dev = app.config.dev, "serving");
    let router = http::router(app);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: closing sockets with 1012");
        let _ = stop_tx.send(true);
    };
    // Without TCP_NODELAY, Nagle holds a small frame back while an earlier one is
    // unacknowledged, and the peer's delayed ACK turns that into stalls of up to 40 ms.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(signal)
        .await?;
    // Every connection task holds a tracker; `recv` ends when the last one is gone.
    let _ = tokio::time::timeout(grace, all_closed.recv()).await;
    tracing::info!("stopped");
    Ok(())
}
