//! `hablar-bench`: a load generator that speaks Hablar's wire protocol (and its base
//! layer), and the bare broadcast server it is compared with.
//!
//! Layout:
//! - `pacing`: the open-loop schedule (when message `n` is due at a fixed offered rate).
//! - `stats`: latency histograms and delivered frame sizes, sharded per thread, one
//!   measurement window at a time.
//! - `payload`: the timestamped message frames (padded to a content or a frame size) and
//!   the cheap parse of received ones.
//! - `jwt`: HS256 access tokens (simplejwt's claims) minted for bench users.
//! - `procfs`: RSS and CPU seconds of a process from `/proc`.
//! - `admin`: a tiny HTTP/1.1 client for the server's admin API (seeding chats).
//! - `load`: connections and a run's results (`load/mod.rs`), the fan-out sweep
//!   (`load/sweep.rs`) and churn (`load/churn.rs`); idle memory is read by `main` with
//!   `load`'s connections.
//! - `wire`: the minimal WebSocket client every generated connection uses.
//! - `report`: results → the figures table and the verdicts; the SVG chart in
//!   `report/chart.rs`.

pub mod admin;
pub mod jwt;
pub mod load;
pub mod pacing;
pub mod payload;
pub mod procfs;
pub mod report;
pub mod stats;
pub mod wire;

/// Errors of the load generator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket or file operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A results file was not valid JSON of the expected shape.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The admin API answered with an unexpected status.
    #[error("admin api: {0}")]
    Admin(String),
    /// The server refused or closed a connection during connect.
    #[error("connect refused: {0}")]
    Refused(String),
    /// A step of the scenario could not run.
    #[error("{0}")]
    Scenario(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
