//! Hablar's wire protocol (see `PROTOCOL.md`): the one Rust description of what crosses
//! the socket between the SDK, the reference server and a Django Channels backend.
//!
//! Layout:
//! - [`ids`]: validating newtypes for chat, user, message and client ids, sequence
//!   numbers and epochs.
//! - [`close`]: the WebSocket close codes and what a client should do on each.
//! - [`error`]: the `error` event's codes, and this crate's [`Error`].
//! - [`limits`]: the protocol's default limits.
//! - [`types`]: the `type` name of every event, as on the wire.
//! - [`names`]: display names cleaned of control, bidi and invisible characters, cut
//!   to a length.
//! - [`passthrough`] (feature `json`): the rules for a message's pass-through fields:
//!   nesting depth, identity-looking names dropped, the stored size.
//! - [`events`] (feature `json`): client→server and server→client events, the message
//!   object with server-owned and pass-through fields, and [`events::parse_client`] /
//!   [`events::parse_server`] which turn a text frame into a typed event or a typed error.
//!
//! This crate does no I/O and reads no clock, so it compiles for `wasm32-unknown-unknown`.

pub mod close;
pub mod error;
#[cfg(feature = "json")]
pub mod events;
pub mod ids;
pub mod limits;
pub mod names;
#[cfg(feature = "json")]
pub mod passthrough;

pub use close::CloseCode;
pub use error::{Error, ErrorCode, Result};
pub use ids::{ChatId, ClientId, Epoch, MessageId, Seq, UserId};

/// The `type` names of every event, as they appear on the wire.
///
/// The SDK matches on these after `JSON.parse`, without the typed enums.
pub mod types {
    /// `typing_start` (both directions, base layer).
    pub const TYPING_START: &str = "typing_start";
    /// `typing_stop` (both directions, base layer).
    pub const TYPING_STOP: &str = "typing_stop";
    /// `new_message` (both directions, base layer).
    pub const NEW_MESSAGE: &str = "new_message";
    /// `ping` (client → server, extension).
    pub const PING: &str = "ping";
    /// `mark_read` (client → server, extension).
    pub const MARK_READ: &str = "mark_read";
    /// `ready` (server → client, extension).
    pub const READY: &str = "ready";
    /// `presence_join` (server → client, extension).
    pub const PRESENCE_JOIN: &str = "presence_join";
    /// `presence_leave` (server → client, extension).
    pub const PRESENCE_LEAVE: &str = "presence_leave";
    /// `read` (server → client, extension).
    pub const READ: &str = "read";
    /// `pong` (server → client, extension).
    pub const PONG: &str = "pong";
    /// `error` (server → client, extension).
    pub const ERROR: &str = "error";
}
