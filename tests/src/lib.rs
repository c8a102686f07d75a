//! Helpers for Hablar's cross-crate tests: starting real servers and services on free
//! ports and talking to them over real sockets.
//!
//! - [`TestServer`]: the real server in-process (`hablar_server::Server` on port 0, a
//!   metrics port when the test asks for one, a backend of the test's own when it brings
//!   one), with admin, history and metrics helpers over real HTTP.
//! - [`process`]: the `hablar-server` binary as a child process on a free port, ready
//!   once it wrote its `--port-file`.
//! - [`tokens`]: HS256 JWT minting (valid, expired, refresh, other algorithms…); every
//!   minted token is remembered so that [`logs`] can prove none was logged.
//! - [`Client`]: a tokio-tungstenite client whose `recv_event` returns typed
//!   `ServerEvent`s, with timeouts.
//! - [`logs`]: captures one test's server logs in memory, apart from other tests'.
//! - [`redis`]: a real `redis-server` per test, on a free port, that can be killed and
//!   restarted.
//! - [`backend_tests!`]: instantiates each behavioural test once per [`Backend`].

pub mod client;
pub mod logs;
pub mod process;
pub mod redis;
pub mod server;
pub mod tokens;

pub use client::Client;
pub use server::TestServer;

/// The backends the behavioural tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded in-memory backend.
    Memory,
    /// The Redis backend, on a `redis-server` of the test's own ([`redis::RedisServer`]).
    Redis,
}

/// Instantiates `async fn name(backend: Backend)` test functions once per backend, as
/// `name::memory` and `name::redis`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name($crate::Backend::Memory).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name($crate::Backend::Redis).await;
            }
        }
    )*};
}
