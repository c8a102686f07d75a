//! The protocol's default limits. Servers make them configurable; these are the values
//! PROTOCOL.md names, so that an SDK and a server agree without configuration.

/// Largest text frame, in bytes, a server accepts by default (64 KiB). Larger closes 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Longest message `content`, in Unicode scalar values after trimming.
pub const MAX_CONTENT_CHARS: usize = 4000;

/// Largest message a server stores by default, in bytes of JSON: its `content`,
/// `client_id` and pass-through fields as one object, as stored (20 KiB). A 4,000-character
/// content of 4-byte characters is 16,000 bytes; with a 64-character `client_id` that
/// leaves about 4 KiB for pass-through fields (a `reply_to`, a few attachments' metadata).
/// Far below the 64 KiB frame, it bounds what a chat can be made to retain: 10,000
/// messages of 20 KiB (200 MB) at most, not 10,000 frames of 64 KiB (640 MB).
pub const MAX_MESSAGE_BYTES: usize = 20 * 1024;

/// How deep arrays and objects may nest in a pass-through field's value (`"x"` is 0 deep,
/// `[{"a": 1}]` is 2). Not configurable: every JSON reader on a message's way (the
/// server's, the Redis fan-out's, which nests the message a few levels deeper, and a
/// client's) must read what was accepted, and serde_json stops at 128 levels.
pub const MAX_FIELD_DEPTH: usize = 16;

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
