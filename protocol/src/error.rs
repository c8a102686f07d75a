//! The `error` event's codes, and this crate's own error type.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What went wrong in this crate: a frame or an id that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The frame is not JSON, or not a JSON object with a string `type`.
    #[error("frame is not a JSON object with a string `type`: {0}")]
    BadJson(String),
    /// The frame's `type` is not one this side knows.
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    /// The `type` is known but its fields are missing or of the wrong type.
    #[error("invalid `{kind}` event: {detail}")]
    InvalidEvent {
        /// The event's `type`.
        kind: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A message larger, as stored, than the server accepts.
    #[error("message is {bytes} bytes as stored; at most {max} are accepted")]
    TooLarge {
        /// Its size, in bytes of JSON.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A chat id that is empty, too long or has characters outside `[A-Za-z0-9_-]`.
    #[error("chat id must be 1-128 characters of [A-Za-z0-9_-]")]
    InvalidChatId,
    /// A user id that is empty, too long or has control characters.
    #[error("user id must be 1-256 bytes without control characters")]
    InvalidUserId,
    /// A message id that is empty or too long.
    #[error("message id must be 1-128 bytes")]
    InvalidMessageId,
    /// A client id that is empty or longer than 64 characters.
    #[error("client_id must be 1-64 characters")]
    InvalidClientId,
    /// An epoch that is empty, too long or not URL-safe.
    #[error("epoch must be 1-64 characters of [A-Za-z0-9_-]")]
    InvalidEpoch,
}

impl Error {
    /// The `error` event code a server answers this error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadJson(_) => ErrorCode::BadJson,
            Self::UnknownType(_) => ErrorCode::UnknownType,
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::InvalidMessage,
        }
    }
}

/// This crate's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `code` of an `error` event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame was not a JSON object with a string `type`.
    BadJson,
    /// The `type` is unknown to the server.
    UnknownType,
    /// Missing, empty or too long content, or fields of the wrong type.
    InvalidMessage,
    /// The sender exceeded the rate limit; the event was dropped.
    RateLimited,
    /// The frame or the message was larger than the server accepts.
    TooLarge,
    /// Extension: the message store is unreachable; the message was *not* stored and
    /// should be sent again later with the same `client_id`.
    Unavailable,
    /// A code this side does not know (a newer server), kept as sent.
    Other(String),
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::BadJson => "bad_json",
            Self::UnknownType => "unknown_type",
            Self::InvalidMessage => "invalid_message",
            Self::RateLimited => "rate_limited",
            Self::TooLarge => "too_large",
            Self::Unavailable => "unavailable",
            Self::Other(code) => code,
        }
    }

    /// The code from its wire name; unknown names are kept in [`ErrorCode::Other`].
    pub fn parse(code: &str) -> Self {
        match code {
            "bad_json" => Self::BadJson,
            "unknown_type" => Self::UnknownType,
            "invalid_message" => Self::InvalidMessage,
            "rate_limited" => Self::RateLimited,
            "too_large" => Self::TooLarge,
            "unavailable" => Self::Unavailable,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Ok(Self::parse(&code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_keep_their_wire_names_and_unknown_ones_survive() {
        for name in [
            "bad_json",
            "unknown_type",
            "invalid_message",
            "rate_limited",
            "too_large",
            "unavailable",
        ] {
            let code = ErrorCode::parse(name);
            assert!(!matches!(code, ErrorCode::Other(_)), "{name} is known");
            assert_eq!(code.as_str(), name);
        }
        assert_eq!(
            ErrorCode::parse("shiny_new"),
            ErrorCode::Other("shiny_new".into())
        );
        assert_eq!(ErrorCode::parse("shiny_new").as_str(), "shiny_new");
    }

    #[test]
    fn protocol_errors_map_to_the_error_event_code() {
        assert_eq!(Error::BadJson("x".into()).code(), ErrorCode::BadJson);
        assert_eq!(Error::UnknownType("x".into()).code(), ErrorCode::UnknownType);
        let invalid = Error::InvalidEvent {
            kind: "new_message".into(),
            detail: "no content".into(),
        };
        assert_eq!(invalid.code(), ErrorCode::InvalidMessage);
        let large = Error::TooLarge {
            bytes: 30_000,
            max: 20_480,
        };
        assert_eq!(large.code(), ErrorCode::TooLarge);
    }
}
