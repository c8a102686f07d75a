//! What the machine hands the glue: the [`Output`]s to carry out in order, the frames to
//! send, the connection [`State`] the app sees, and why a send or the history is refused.

/// Close code the SDK uses when it gives up on a socket itself (dead heartbeat,
/// connect timeout, a gap in the messages). In the application range, so no server
/// mistakes it for its own.
pub const CLOSE_GIVING_UP: u16 = 4000;

/// The connection state the app shows ("● Connected").
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// A connection attempt is under way; `attempt` is 0 for the first, then the number
    /// of the reconnect attempt.
    Connecting {
        /// Which attempt.
        attempt: u32,
    },
    /// Connected: sends go out at once.
    Open,
    /// Waiting `delay_ms` before reconnect attempt `attempt`.
    Reconnecting {
        /// Which attempt comes next (1-based).
        attempt: u32,
        /// How long the wait is.
        delay_ms: f64,
    },
    /// Not connected and not trying: before `connect()` or after `close()`.
    Closed,
    /// Given up: reconnecting cannot help.
    Failed {
        /// The close code that decided it (4401, 4403, 4404).
        code: u16,
    },
}

/// A frame the glue must send.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<M> {
    /// `typing_start`.
    TypingStart,
    /// `typing_stop`.
    TypingStop,
    /// `ping` (only to peers that sent `ready`).
    Ping,
    /// A message from the outbox, as the glue encoded it.
    Message(M),
}

/// Why the app should reload history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadReason {
    /// The server could not replay what was missed (`recovered: false`).
    NotRecovered,
    /// A reconnect to a peer without resume support (no `ready`): messages may be
    /// missing.
    NoResume,
}

/// Why a waiting send was rejected by the SDK itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The outbox is full.
    OutboxFull,
    /// The client was closed by the app.
    Closed,
    /// The connection failed for good.
    Failed,
}

impl SendError {
    /// The code the JS error carries.
    pub fn code(self) -> &'static str {
        match self {
            Self::OutboxFull => "outbox_full",
            Self::Closed => "closed",
            Self::Failed => "failed",
        }
    }
}

/// What the glue must do or tell the app, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output<M> {
    /// Drop any current socket, get a token (a fresh one from the provider when
    /// `refresh_token`) and open a socket, resuming from `since`/`epoch` when given.
    Connect {
        /// The last token was refused (4401): ask the provider again.
        refresh_token: bool,
        /// Resume point.
        since: Option<(u64, String)>,
    },
    /// Close the current socket with `code` and ignore anything more from it.
    Disconnect {
        /// 1000 when the app closed, [`CLOSE_GIVING_UP`] when the SDK gave up on it.
        code: u16,
    },
    /// Send a frame on the current socket.
    Send(Frame<M>),
    /// The connection state changed.
    State(State),
    /// The list of users typing changed: see [`Machine::typers`](super::Machine::typers).
    TypersChanged,
    /// The list of online users changed: see [`Machine::presence`](super::Machine::presence).
    PresenceChanged,
    /// The app should reload history over HTTP.
    ReloadHistory(ReloadReason),
    /// The server closed for a reason the app should hear about (1009: a frame was too
    /// big); reconnecting goes on.
    CloseError {
        /// The close code.
        code: u16,
    },
    /// A waiting send will not be delivered.
    Reject {
        /// The send's `client_id`.
        client_id: String,
        /// Why.
        error: SendError,
    },
}
