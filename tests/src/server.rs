//! [`TestServer`]: the real server, in-process, on a free port (its configured backend or
//! a test's own).

use std::net::SocketAddr;
use std::sync::Arc;

use hablar_server::backend::EventSink;
use hablar_server::{BackendKind, Config, Secret, Server};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::redis::RedisServer;
use crate::tokens::SECRET;
use crate::{logs, Backend};

/// The admin key every [`TestServer`] uses.
pub const ADMIN_KEY: &str = "hablar-test-admin-key";

/// Raises the per-connection rate limits (messages and typing) out of the way, for
/// tests that send bursts.
pub fn no_rate_limit(config: &mut Config) {
    config.limits.rate_per_sec = 10_000.0;
    config.limits.rate_burst = 10_000;
    config.limits.typing_rate_per_sec = 10_000.0;
    config.limits.typing_burst = 10_000;
}

/// A running server; stopped (gracefully) by [`TestServer::shutdown`] or on drop.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where `/metrics` is served when the test set `metrics_bind` (bound here, on the
    /// address given, port 0 for a free one); `None`: on [`TestServer::addr`].
    pub metrics_addr: Option<SocketAddr>,
    /// Triggers graceful shutdown.
    stop: Option<oneshot::Sender<()>>,
    /// The `serve` task.
    task: Option<JoinHandle<hablar_server::Result<()>>>,
    /// HTTP client for the admin and history APIs.
    pub http: reqwest::Client,
    /// The server's own `redis-server` ([`Backend::Redis`]), stopped after the server.
    pub redis: Option<RedisServer>,
}

impl TestServer {
    /// A server with the test defaults on `backend`.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// A server with the test defaults changed by `configure`.
    pub async fn start_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> Self {
        Self::launch(backend, configure, None).await
    }

    /// A server with the test defaults changed by `configure`, on the backend `make`
    /// builds around the hub it delivers to (a faulty one of the test's own).
    pub async fn start_with_backend<B: hablar_server::backend::Backend>(
        configure: impl FnOnce(&mut Config),
        make: impl FnOnce(Arc<dyn EventSink>) -> B + Send + 'static,
    ) -> Self {
        Self::launch(
            Backend::Memory,
            configure,
            Some(Box::new(move |server| server.backend(make))),
        )
        .await
    }

    async fn launch(
        backend: Backend,
        configure: impl FnOnce(&mut Config),
        with_backend: Option<Box<dyn FnOnce(Server) -> Server>>,
    ) -> Self {
        logs::install();
        let mut config = Config::defaults();
        config.jwt_secret = Some(Secret::new(SECRET));
        config.admin_key = Some(Secret::new(ADMIN_KEY));
        config.backend = match backend {
            Backend::Memory => BackendKind::Memory,
            Backend::Redis => BackendKind::Redis,
        };
        let redis = match backend {
            Backend::Memory => None,
            Backend::Redis => Some(RedisServer::start().await),
        };
        if let Some(redis) = &redis {
            redis.configure(&mut config);
        }
        configure(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let addr = listener.local_addr().expect("local addr");
        let metrics = match config.metrics_bind {
            Some(at) => Some(TcpListener::bind(at).await.expect("bind the metrics port")),
            None => None,
        };
        let metrics_addr = metrics
            .as_ref()
            .map(|listener| listener.local_addr().expect("metrics addr"));
        let mut server = Server::new(config);
        if let Some(metrics) = metrics {
            server = server.metrics_listener(metrics);
        }
        if let Some(with_backend) = with_backend {
            server = with_backend(server);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            metrics_addr,
            stop: Some(stop),
            task: Some(task),
            http: reqwest::Client::new(),
            redis,
        }
    }

    /// `http://IP:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The WebSocket URL of `chat` with `token`, plus any extra query (`&since=…`).
    pub fn ws_url(&self, chat: &str, token: &str, extra: &str) -> String {
        format!("ws://{}/ws/chat/{chat}/?token={token}{extra}", self.addr)
    }

    /// Connects to `chat` as the holder of `token`.
    pub async fn connect(&self, chat: &str, token: &str) -> Client {
        Client::connect(&self.ws_url(chat, token, ""))
            .await
            .expect("handshake")
    }

    /// Connects as `user` (a fresh valid token) and reads `ready`.
    pub async fn join(&self, chat: &str, user: &str) -> Client {
        let mut client = self.connect(chat, &crate::tokens::token(user)).await;
        client.ready().await;
        client
    }

    /// Creates `chat` with `members` through the admin API.
    pub async fn create_chat(&self, chat: &str, members: &[&str]) {
        let url = format!("{}/api/admin/chats/{chat}", self.http_url());
        let res = self
            .http
            .put(url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("admin put chat");
        assert!(res.status().is_success(), "create chat: {}", res.status());
        for member in members {
            self.add_member(chat, member).await;
        }
    }

    /// Adds `user` to `chat` through the admin API.
    pub async fn add_member(&self, chat: &str, user: &str) {
        let url = format!("{}/api/admin/chats/{chat}/members/{user}", self.http_url());
        let res = self
            .http
            .put(url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("admin put member");
        assert_eq!(res.status(), 204, "add member");
    }

    /// Removes `user` from `chat` through the admin API.
    pub async fn remove_member(&self, chat: &str, user: &str) -> reqwest::StatusCode {
        let url = format!("{}/api/admin/chats/{chat}/members/{user}", self.http_url());
        let res = self
            .http
            .delete(url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("admin delete member");
        res.status()
    }

    /// Sets `user`'s display name through the admin API.
    pub async fn set_display_name(&self, user: &str, name: &str) {
        let url = format!("{}/api/admin/users/{user}", self.http_url());
        let res = self
            .http
            .put(url)
            .bearer_auth(ADMIN_KEY)
            .json(&json!({ "display_name": name }))
            .send()
            .await
            .expect("admin put user");
        assert_eq!(res.status(), 204, "set display name");
    }

    /// `GET /api/chats/{chat}/messages` with `query` (e.g. `?limit=2`) as `token`.
    pub async fn history(&self, chat: &str, token: &str, query: &str) -> (reqwest::StatusCode, Value) {
        let url = format!("{}/api/chats/{chat}/messages{query}", self.http_url());
        let res = self
            .http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("history request");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// The seqs of the newest page of `chat`'s history, oldest first, read as `user`.
    pub async fn history_seqs(&self, chat: &str, user: &str) -> Vec<u64> {
        let (status, page) = self.history(chat, &crate::tokens::token(user), "").await;
        assert_eq!(status, 200, "history: {page}");
        page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter_map(|m| m["seq"].as_u64())
            .collect()
    }

    /// The `/metrics` text, from wherever it is served.
    pub async fn metrics(&self) -> String {
        let at = self.metrics_addr.unwrap_or(self.addr);
        let res = self
            .http
            .get(format!("http://{at}/metrics"))
            .send()
            .await
            .expect("metrics");
        res.text().await.expect("metrics body")
    }

    /// The value of a metric line (`name` with labels, e.g. `hablar_closes_total{code="4408"}`).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }

    /// Waits until the metric line `name` reads `value`, polling; fails the test with the
    /// last value read if it does not within `within`.
    pub async fn wait_metric(&self, name: &str, value: f64, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = self.metric(name).await;
            if now == value {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} is {now}, not {value}, after {within:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Shuts down gracefully and waits for `serve` to return.
    pub async fn shutdown(mut self) -> hablar_server::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("serve task panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
