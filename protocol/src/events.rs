//! The events of PROTOCOL.md, one enum per direction, and the message object.
//!
//! Forward compatibility is built in: unknown fields are ignored on every event, kept on
//! the message object (`extra`, passed on as they are), and an unknown `type` is a
//! typed outcome ([`Error::UnknownType`] for the server, [`ServerEvent::Unknown`] for a
//! client), never a failure to read the rest of the stream.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::ids::{ChatId, ClientId, Epoch, MessageId, Seq, UserId};
use crate::passthrough;

/// Fields of a message that neither side interprets (`reply_to`, `attachments`, …),
/// passed on as they are. A `BTreeMap` underneath, so their order on the wire is stable.
pub type Extra = Map<String, Value>;

/// The message fields only the server may set; a client's values are overwritten.
pub const SERVER_OWNED_FIELDS: [&str; 5] = ["id", "seq", "sender", "created_at", "chat_id"];

/// An event a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientEvent {
    /// The user started typing, or is still typing (a lease refresh).
    TypingStart,
    /// The user stopped typing.
    TypingStop,
    /// The user sends a message.
    NewMessage {
        /// What the user wrote, with an optional idempotency key.
        message: ClientMessage,
    },
    /// Extension: a heartbeat; the server answers `pong` with the same `id`.
    Ping {
        /// Echoed in the `pong`; any JSON value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    /// Extension: the user has read the chat up to this message.
    MarkRead {
        /// The newest message read.
        up_to: MessageId,
    },
}

/// The `message` of a client's `new_message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientMessage {
    /// The text; the server trims it and checks its length.
    pub content: String,
    /// The idempotency key: a resend with the same key is stored once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientId>,
    /// Every other field, passed on as it is (server-owned and identity fields are
    /// dropped by [`ClientMessage::into_parts`]).
    #[serde(flatten)]
    pub extra: Extra,
}

/// A client message checked and split into what the server stores.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageParts {
    /// The trimmed content.
    pub content: String,
    /// The idempotency key: `client_id`, or a base-layer client's own `id`.
    pub client_id: Option<ClientId>,
    /// The pass-through fields, without any server-owned or identity field.
    pub extra: Extra,
}

/// The limits [`ClientMessage::into_parts`] checks a message against. A server makes
/// them configurable; the defaults are the protocol's ([`crate::limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// Longest `content`, in Unicode scalar values after trimming.
    pub max_content_chars: usize,
    /// Largest message as stored, in bytes of JSON ([`passthrough::stored_bytes`]).
    pub max_message_bytes: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        Self {
            max_content_chars: crate::limits::MAX_CONTENT_CHARS,
            max_message_bytes: crate::limits::MAX_MESSAGE_BYTES,
        }
    }
}

impl ClientMessage {
    /// Checks the message and returns what the server stores: the trimmed content
    /// (1..=`max_content_chars` Unicode scalar values), the idempotency key, and the
    /// pass-through fields without the server-owned ones and without any field whose
    /// name claims an identity, at any depth ([`passthrough::is_identity_field`]), so
    /// that a client cannot spoof a sender under any name.
    ///
    /// Refused: empty or too long content, and pass-through values nested deeper than
    /// [`crate::limits::MAX_FIELD_DEPTH`] ([`Error::InvalidEvent`], `invalid_message`); a
    /// message larger than `max_message_bytes` as stored ([`Error::TooLarge`],
    /// `too_large`).
    pub fn into_parts(mut self, limits: MessageLimits) -> Result<MessageParts> {
        let trimmed = self.content.trim();
        let chars = trimmed.chars().count();
        if chars == 0 {
            return Err(invalid("new_message", "content is empty"));
        }
        let max_chars = limits.max_content_chars;
        if chars > max_chars {
            return Err(invalid(
                "new_message",
                format!("content is longer than {max_chars} characters"),
            ));
        }
        // First, so that the walks below are bounded by the limit, not by the client.
        let depth = crate::limits::MAX_FIELD_DEPTH;
        if let Some((name, _)) = self
            .extra
            .iter()
            .find(|(_, value)| passthrough::deeper_than(value, depth))
        {
            return Err(invalid(
                "new_message",
                format!("field `{}` nests deeper than {depth} levels", truncated(name)),
            ));
        }
        let content = trimmed.to_owned();
        // A base-layer client sends its own `id` and no `client_id`: that id is its key.
        let base_layer_id = self.extra.get("id").and_then(|id| match id {
            Value::String(s) => ClientId::new(s.clone()).ok(),
            Value::Number(n) => ClientId::new(n.to_string()).ok(),
            _ => None,
        });
        let client_id = self.client_id.or(base_layer_id);
        for field in SERVER_OWNED_FIELDS {
            self.extra.remove(field);
        }
        passthrough::drop_identity_fields(&mut self.extra);
        let bytes = passthrough::stored_bytes(&content, client_id.as_ref(), &self.extra);
        if bytes > limits.max_message_bytes {
            return Err(Error::TooLarge {
                bytes,
                max: limits.max_message_bytes,
            });
        }
        Ok(MessageParts {
            content,
            client_id,
            extra: self.extra,
        })
    }
}

/// A client's field name for an error text: short, whatever the client sent.
fn truncated(name: &str) -> String {
    name.chars().take(64).collect()
}

/// The sender of a message, as stamped by the server from the token's user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    /// The user's id.
    pub id: UserId,
    /// The user's display name.
    pub username: String,
}

/// A message as the server sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Unique in the chat.
    pub id: MessageId,
    /// Position in the chat, strictly increasing by 1. A base-layer peer sends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    /// The chat the message belongs to.
    pub chat_id: ChatId,
    /// The trimmed text.
    pub content: String,
    /// Who sent it, from the sender's token.
    pub sender: Sender,
    /// When the server stored it, RFC 3339 UTC.
    pub created_at: String,
    /// The sender's idempotency key, when it gave one: its SDK's acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientId>,
    /// The sender's pass-through fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A user who is online in a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceUser {
    /// The user's id.
    pub user_id: UserId,
    /// The user's display name.
    pub username: String,
}

/// The first event on a connection to a server that has the extensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    /// Who the token says we are.
    pub user_id: UserId,
    /// The chat this connection is in.
    pub chat_id: ChatId,
    /// The identity of the chat's store; send it back with `since` to resume.
    pub epoch: Epoch,
    /// The chat's newest `seq` when the connection was set up (after any replay).
    pub last_seq: Seq,
    /// `false` when a requested resume could not be served (another epoch, or a gap
    /// older than the retained history): reload history over HTTP.
    pub recovered: bool,
    /// Who is online now.
    pub presence: Vec<PresenceUser>,
}

/// An `error` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEvent {
    /// What kind of error.
    pub code: crate::ErrorCode,
    /// A human-readable explanation (never holds a token).
    pub detail: String,
    /// The `client_id` of the message this error is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientId>,
}

/// An event the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    /// A member started typing (or refreshed the lease).
    TypingStart {
        /// Who is typing.
        user_id: UserId,
        /// Their display name.
        username: String,
    },
    /// A member stopped typing.
    TypingStop {
        /// Who stopped.
        user_id: UserId,
    },
    /// A message was stored; the sender gets it too, as its acknowledgement.
    NewMessage {
        /// The stored message.
        message: Message,
    },
    /// Extension: the connection is set up.
    Ready(Ready),
    /// Extension: a user's first connection to the chat opened.
    PresenceJoin(PresenceUser),
    /// Extension: a user's last connection to the chat closed.
    PresenceLeave(PresenceUser),
    /// Extension: a member read the chat up to a message.
    Read {
        /// Who read.
        user_id: UserId,
        /// Up to which message.
        up_to: MessageId,
    },
    /// Extension: the answer to a `ping`.
    Pong {
        /// The ping's `id`, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    /// Extension: something the client sent was refused; the connection stays open.
    Error(ErrorEvent),
    /// An event of a `type` this side does not know (a newer server). Ignored by the
    /// SDK; never sent.
    #[serde(other, skip_serializing)]
    Unknown,
}

/// The body of `GET /api/chats/{chat_id}/messages`: oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// At most `limit` messages with `seq < before`, oldest first.
    pub messages: Vec<Message>,
    /// Whether older messages exist than the first one here.
    pub has_more: bool,
}

fn invalid(kind: &str, detail: impl Into<String>) -> Error {
    Error::InvalidEvent {
        kind: kind.to_owned(),
        detail: detail.into(),
    }
}

/// Only the `type` of a frame, read to classify a frame the typed parse refused.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
}

const CLIENT_TYPES: [&str; 5] = [
    crate::types::TYPING_START,
    crate::types::TYPING_STOP,
    crate::types::NEW_MESSAGE,
    crate::types::PING,
    crate::types::MARK_READ,
];

/// Reads a client's text frame: a typed event, or the error to answer with
/// ([`Error::code`] gives the `error` event's code).
pub fn parse_client(frame: &str) -> Result<ClientEvent> {
    match serde_json::from_str::<ClientEvent>(frame) {
        Ok(event) => Ok(event),
        Err(err) => Err(classify(frame, err, &CLIENT_TYPES)),
    }
}

/// Reads a server's text frame. An unknown `type` is [`ServerEvent::Unknown`], not an
/// error; an error means the frame is not JSON, has no `type`, or a known event is
/// malformed.
pub fn parse_server(frame: &str) -> Result<ServerEvent> {
    serde_json::from_str::<ServerEvent>(frame).map_err(|err| classify(frame, err, &[]))
}

/// Tells apart "not an event at all", "unknown type" and "known type, bad fields".
fn classify(frame: &str, err: serde_json::Error, known: &[&str]) -> Error {
    match serde_json::from_str::<Envelope>(frame) {
        Err(_) if err.is_syntax() || err.is_eof() => Error::BadJson(err.to_string()),
        Err(envelope_err) => Error::BadJson(envelope_err.to_string()),
        Ok(Envelope { kind }) if !known.is_empty() && !known.contains(&kind.as_str()) => {
            Error::UnknownType(kind)
        }
        Ok(Envelope { kind }) => Error::InvalidEvent {
            kind,
            detail: err.to_string(),
        },
    }
}

/// Encodes an event as a text frame.
pub fn encode<T: Serialize>(event: &T) -> String {
    serde_json::to_string(event).expect("protocol events have string keys and no failing Serialize impls")
}
