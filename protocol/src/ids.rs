//! Ids as newtypes that validate on construction, so that a value of one of these types
//! is always well-formed and one kind of id cannot be passed where another is expected.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::limits::{MAX_CHAT_ID_CHARS, MAX_CLIENT_ID_CHARS};

/// A chat id: 1–128 characters of `[A-Za-z0-9_-]` (it appears in the URL path).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChatId(String);

impl ChatId {
    /// Validates `id` as a chat id.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let valid_chars = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if id.is_empty() || id.len() > MAX_CHAT_ID_CHARS || !valid_chars {
            return Err(Error::InvalidChatId);
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user id. simplejwt puts the primary key in `user_id`, as a string or an integer;
/// both are accepted and compared as strings. Serialised always as a string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct UserId(String);

impl UserId {
    /// Validates `id` as a user id: not empty, at most 256 bytes, no control characters.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
            return Err(Error::InvalidUserId);
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message id, unique within its chat. Our server sends strings; a base-layer peer may
/// send a database integer, which is read as its decimal string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct MessageId(String);

impl MessageId {
    /// Validates `id` as a message id: not empty, at most 128 bytes.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() || id.len() > 128 {
            return Err(Error::InvalidMessageId);
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The sender's idempotency key for a message: 1–64 characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientId(String);

impl ClientId {
    /// Validates `id` as a client id.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let chars = id.chars().count();
        if chars == 0 || chars > MAX_CLIENT_ID_CHARS {
            return Err(Error::InvalidClientId);
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message's position in its chat: strictly increasing by 1, starting at 1.
/// `Seq(0)` means "nothing yet" (the `last_seq` of an empty chat).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The sequence number that follows this one.
    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The identity of a chat's message store. It changes when the store is reset, which
/// makes every `since` from before the reset meaningless (`recovered: false`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Epoch(String);

impl Epoch {
    /// Validates `epoch`: 1–64 characters of `[A-Za-z0-9_-]` (it appears in the URL).
    pub fn new(epoch: impl Into<String>) -> Result<Self> {
        let epoch = epoch.into();
        let valid_chars = epoch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if epoch.is_empty() || epoch.len() > 64 || !valid_chars {
            return Err(Error::InvalidEpoch);
        }
        Ok(Self(epoch))
    }

    /// The epoch as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Implements the traits every text id shares.
macro_rules! text_id {
    ($($ty:ident),*) => {$(
        impl TryFrom<String> for $ty {
            type Error = Error;
            fn try_from(value: String) -> Result<Self> {
                Self::new(value)
            }
        }

        impl From<$ty> for String {
            fn from(id: $ty) -> Self {
                id.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    )*};
}

text_id!(ChatId, UserId, MessageId, ClientId, Epoch);

/// Reads a string or an integer as text (simplejwt's `user_id`, Django's integer ids).
struct StringOrInt;

impl de::Visitor<'_> for StringOrInt {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an integer")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = deserializer.deserialize_any(StringOrInt)?;
        Self::new(text).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = deserializer.deserialize_any(StringOrInt)?;
        Self::new(text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_ids_allow_only_the_url_safe_alphabet() {
        assert!(ChatId::new("general").is_ok());
        assert!(ChatId::new("room_42-b").is_ok());
        assert!(ChatId::new("a".repeat(128)).is_ok());
        assert_eq!(ChatId::new(""), Err(Error::InvalidChatId));
        assert_eq!(ChatId::new("a".repeat(129)), Err(Error::InvalidChatId));
        assert_eq!(ChatId::new("../etc"), Err(Error::InvalidChatId));
        assert_eq!(ChatId::new("caf\u{e9}"), Err(Error::InvalidChatId));
        assert_eq!(ChatId::new("a b"), Err(Error::InvalidChatId));
    }

    #[test]
    fn client_ids_count_characters_not_bytes() {
        assert!(ClientId::new("\u{e9}".repeat(64)).is_ok());
        assert_eq!(ClientId::new("x".repeat(65)), Err(Error::InvalidClientId));
        assert_eq!(ClientId::new(""), Err(Error::InvalidClientId));
    }

    #[test]
    fn user_ids_reject_empty_and_control_characters() {
        assert!(UserId::new("42").is_ok());
        assert_eq!(UserId::new(""), Err(Error::InvalidUserId));
        assert_eq!(UserId::new("a\nb"), Err(Error::InvalidUserId));
    }

    #[test]
    fn epochs_must_be_url_safe() {
        assert!(Epoch::new("k3j4-x_9").is_ok());
        assert_eq!(Epoch::new("a/b"), Err(Error::InvalidEpoch));
        assert_eq!(Epoch::new(""), Err(Error::InvalidEpoch));
    }

    #[test]
    fn seq_orders_and_advances() {
        assert!(Seq(1) < Seq(2));
        assert_eq!(Seq(41).next(), Seq(42));
        assert_eq!(Seq::default(), Seq(0));
    }
}
