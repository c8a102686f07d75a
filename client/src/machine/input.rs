//! What the glue feeds the machine from the server: frames decoded to the fields the
//! decisions need ([`Incoming`]), and what the glue does with each ([`Verdict`]).

/// A user as presence knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Their id.
    pub user_id: String,
    /// Their display name.
    pub username: String,
}

/// A server frame, decoded by the glue to the fields the decisions need.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// `ready` (extension).
    Ready {
        /// Who we are.
        user_id: Option<String>,
        /// The store identity.
        epoch: Option<String>,
        /// The newest seq.
        last_seq: Option<u64>,
        /// Whether the resume could be served.
        recovered: bool,
        /// Who is online.
        presence: Vec<User>,
    },
    /// `new_message`.
    Message {
        /// Absent from base-layer peers.
        seq: Option<u64>,
        /// The message id.
        id: Option<String>,
        /// The sender's idempotency key.
        client_id: Option<String>,
        /// The sender's user id.
        sender_id: Option<String>,
    },
    /// `typing_start`.
    TypingStart(User),
    /// `typing_stop`.
    TypingStop {
        /// Who stopped.
        user_id: String,
    },
    /// `presence_join`.
    PresenceJoin(User),
    /// `presence_leave`.
    PresenceLeave {
        /// Who left.
        user_id: String,
    },
    /// `error`.
    Error {
        /// The error code.
        code: String,
        /// The message it is about.
        client_id: Option<String>,
    },
    /// `pong`, `read`, or a type this SDK does not know.
    Other,
}

/// What the glue does with a frame it fed in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Hand the message to the app (it is new).
    pub deliver: bool,
    /// Resolve the send waiting for this `client_id` with this message (our own echo:
    /// sent by us, not merely carrying our `client_id`).
    pub resolve: bool,
    /// Reject the send waiting for this `client_id` with this error.
    pub reject: bool,
}
