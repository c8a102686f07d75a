//! The protocol's default limits. Servers make them configurable; these are the values
//! PROTOCOL.md names, so that an SDK and a server agree without configuration.

/// Largest text frame, in bytes, a server accepts by default (64 KiB). Larger closes 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Longest message `content`, in Unicode scalar values after trimming.
pub const MAX_CONTENT_CHARS: usize = 4000;

/// Longest `client_id`, in characters.
pub const MAX_CLIENT_ID_CHARS: usize = 64;

/// Longest chat id, in characters.
pub const MAX_CHAT_ID_CHARS: usize = 128;

/// Most messages one history request returns.
pub const MAX_HISTORY_LIMIT: u32 = 100;

/// How long a stored `client_id` makes a resend a no-op (24 h), in seconds.
pub const IDEMPOTENCY_RETENTION_SECS: u64 = 24 * 60 * 60;

/// The typing lease, in milliseconds: a sender refreshes `typing_start` at most this often…
pub const TYPING_REFRESH_MS: u64 = 3_000;
/// …sends `typing_stop` after this long without a keystroke…
pub const TYPING_IDLE_MS: u64 = 2_000;
/// …and a receiver drops a typer it has not heard from for this long.
pub const TYPING_EXPIRY_MS: u64 = 6_000;
