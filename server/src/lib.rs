//! Hablar's reference server: the WebSocket chat protocol of `PROTOCOL.md` on axum and
//! tokio, with an embedded in-memory backend (the default) behind a [`backend::Backend`]
//! trait that a Redis backend implements for several instances.
//!
//! Layout:
//! - [`config`]: clap flags (each also from the environment) and the limits.
//! - [`error`]: the crate's [`Error`] and its one mapping to HTTP responses.
//! - [`auth`]: HS256 access-token verification (simplejwt compatible) through `jsonwebtoken`.
//! - [`origin`]: the `Origin` allow-list checked before the upgrade.
//! - [`backend`]: the store + broker trait, its rules, the in-memory and Redis backends.
//! - [`rooms`]: the local hub fanning a chat's events out to this instance's sockets.
//! - [`send_queue`]: a connection's bounded send queue, filled by the hub and the reader,
//!   drained by the writer.
//! - [`limits`]: token-bucket rate limits (per connection, per key) and per-user
//!   connection counting.
//! - [`peer`]: the client's address (trusted proxies) and the limits per address.
//! - [`connection`]: one socket: admission, `ready` + replay, reader/writer tasks, call
//!   pipeline, close and cleanup (a folder, a file per concern).
//! - [`http`]: the router, handshake, history, health, metrics, dev-mode endpoints.
//! - [`admin`]: the admin API for chats, members and profiles.
//! - [`metrics`]: counters in the Prometheus text format.
//! - [`dev`]: the dev-mode seed data.
//!
//! The binary only parses [`Config`] and starts a [`Server`], as the tests do (most through
//! [`serve`]).

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
pub mod peer;
pub mod rooms;
pub mod send_queue;

use std::future::{Future, IntoFuture as _};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt as _;
use hablar_protocol::UserId;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use config::{BackendKind, Config, Limits, Secret};
pub use error::{Error, Result};

use crate::auth::Verifier;
use crate::backend::redis::RedisBackend;
use crate::backend::{Backend, EventSink, MemoryBackend};
use crate::limits::{ConnectRate, ConnectionCounter, RateByKey};
use crate::metrics::Metrics;
use crate::origin::OriginPolicy;
use crate::peer::PeerLimits;
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
    /// Connections and failed handshakes per client address, connections in all.
    pub peers: Arc<PeerLimits>,
    /// History requests per user.
    pub history_rate: RateByKey<UserId>,
    /// Becomes `true` when the server shuts down: connections close with 1012.
    pub shutdown: watch::Receiver<bool>,
    /// Held by every connection task; [`serve`] waits until all are dropped.
    pub tracker: mpsc::Sender<()>,
}

/// Serves Hablar on `listener` until `shutdown` completes, then closes every socket with
/// 1012 and waits (up to the configured grace period) for them to finish: the backend
/// `config.backend` names, and `/metrics` on `--metrics-bind` when set. [`Server`] is the
/// same with a backend or a metrics listener of the caller's own.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    Server::new(config).serve(listener, shutdown).await
}

/// Builds a backend around the hub it delivers this instance's events to.
type MakeBackend = Box<dyn FnOnce(Arc<dyn EventSink>) -> Arc<dyn Backend> + Send>;

/// A server to start: its configuration, and what the caller provides instead of what the
/// configuration names. The one way to start one: [`serve`], the binary and the tests all
/// come through [`Server::serve`].
pub struct Server {
    /// The configuration in force.
    config: Config,
    /// A backend of the caller's own (a test's faulty one), instead of `config.backend`.
    backend: Option<MakeBackend>,
    /// Where `/metrics` is served, bound by the caller (who so knows its port, or could
    /// report a taken address before anything else), instead of `--metrics-bind`.
    metrics_listener: Option<TcpListener>,
}

impl Server {
    /// A server configured by `config` alone.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            backend: None,
            metrics_listener: None,
        }
    }

    /// Stores in and delivers through the backend `make` builds around the hub it is
    /// given, whatever `--backend` says.
    #[must_use]
    pub fn backend<B: Backend>(
        mut self,
        make: impl FnOnce(Arc<dyn EventSink>) -> B + Send + 'static,
    ) -> Self {
        self.backend = Some(Box::new(move |sink| Arc::new(make(sink)) as Arc<dyn Backend>));
        self
    }

    /// Serves `/metrics` only on `listener`, whatever `--metrics-bind` says; the public
    /// listener then answers 404 for it.
    #[must_use]
    pub fn metrics_listener(mut self, listener: TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// Serves on `listener` until `shutdown` completes (see [`serve`]).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let Self {
            config,
            backend,
            metrics_listener,
        } = self;
        let metrics_listener = match (metrics_listener, config.metrics_bind) {
            (Some(listener), _) => Some(listener),
            (None, Some(addr)) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|err| Error::Config(format!("cannot listen for metrics on {addr}: {err}")))?,
            ),
            (None, None) => None,
        };
        run(listener, metrics_listener, config, backend, shutdown).await
    }
}

/// The backend `config` names, delivering to `rooms`.
async fn configured_backend(config: &Config, rooms: Arc<Rooms>) -> Result<Arc<dyn Backend>> {
    Ok(match config.backend {
        BackendKind::Memory => Arc::new(MemoryBackend::new(rooms, config.limits.history_retention)),
        BackendKind::Redis => {
            let url = config
                .redis_url
                .as_ref()
                .ok_or_else(|| Error::Config("--backend redis needs --redis-url (REDIS_URL)".into()))?;
            Arc::new(
                RedisBackend::connect(
                    url.expose(),
                    rooms,
                    config.limits.history_retention,
                    config.redis.clone(),
                )
                .await?,
            )
        }
    })
}

/// Wires the shared state around the backend and serves until `shutdown`, then drains.
async fn run(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    backend: Option<MakeBackend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener.local_addr()?;
    config.validate(addr)?;
    let metrics = Arc::new(Metrics::default());
    let rooms = Arc::new(Rooms::new(metrics.clone()));
    let backend = match backend {
        Some(make) => make(rooms.clone()),
        None => configured_backend(&config, rooms.clone()).await?,
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
    let history_rate = if config.dev {
        RateByKey::new(
            config.limits.history_rate_per_sec.max(100.0),
            config.limits.history_burst.max(1000),
        )
    } else {
        RateByKey::new(config.limits.history_rate_per_sec, config.limits.history_burst)
    };
    let peers = Arc::new(PeerLimits::new(&config.limits, config.dev));
    let app = Arc::new(AppState {
        verifier: Verifier::new(secret.expose().as_bytes(), config.jwt_leeway_secs),
        origins: OriginPolicy::new(&config.allowed_origins, config.refuse_missing_origin, config.dev),
        config,
        backend,
        rooms,
        metrics,
        connections: Arc::new(ConnectionCounter::default()),
        connect_rate,
        peers,
        history_rate,
        shutdown: stop_rx,
        tracker,
    });
    tracing::info!(%addr, dev = app.config.dev, "serving");
    let router = http::router(app.clone(), metrics_listener.is_some());
    // The metrics listener stops with the public one.
    let metrics_server = match metrics_listener {
        Some(listener) => {
            let metrics_addr = listener.local_addr()?;
            tracing::info!(%metrics_addr, "serving /metrics");
            let mut stopped = app.shutdown.clone();
            let server =
                axum::serve(listener, http::metrics_router(app.clone())).with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                });
            Some(tokio::spawn(server.into_future()))
        }
        None => None,
    };
    drop(app);
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
    // The peer's address is what the limits per client address count.
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(signal)
        .await?;
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    // Every connection task holds a tracker; `recv` ends when the last one is gone.
    let _ = tokio::time::timeout(grace, all_closed.recv()).await;
    tracing::info!("stopped");
    Ok(())
}
