//! The key schema: every Redis key and channel name the backend uses, in one place.

use hablar_protocol::{ChatId, ClientId, UserId};

/// The key schema. Every key of a chat carries the chat id as its hash tag
/// (`{prefix}:{{chat}}:…`), so a chat lives on one Cluster slot and a script may touch
/// all of it.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `hablar` unless configured.
    prefix: String,
}

impl Keys {
    /// The schema under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    fn chat(&self, chat: &ChatId, what: &str) -> String {
        format!("{}:{{{}}}:{what}", self.prefix, chat.as_str())
    }

    /// Hash; the chat exists iff this key exists (field `created_at`).
    pub fn meta(&self, chat: &ChatId) -> String {
        self.chat(chat, "meta")
    }
    /// Set of member user ids.
    pub fn members(&self, chat: &ChatId) -> String {
        self.chat(chat, "members")
    }
    /// String: the message store's identity.
    pub fn epoch(&self, chat: &ChatId) -> String {
        self.chat(chat, "epoch")
    }
    /// String counter: the newest seq.
    pub fn seq(&self, chat: &ChatId) -> String {
        self.chat(chat, "seq")
    }
    /// Stream of messages, entry id `{seq}-0`, field `m` = the message JSON.
    pub fn messages(&self, chat: &ChatId) -> String {
        self.chat(chat, "messages")
    }
    /// Sorted set: one entry per retained message stored with a `client_id`, member
    /// [`Keys::idempotency_member`], score = its seq. Trimmed with the stream, so it holds
    /// at most the retention.
    pub fn idempotency(&self, chat: &ChatId) -> String {
        self.chat(chat, "idem")
    }
    /// The member of [`Keys::idempotency`] for a sender's `client_id`: a JSON pair, which
    /// keeps `user` and `client_id` apart whatever characters they hold.
    pub fn idempotency_member(user: &UserId, client_id: &ClientId) -> String {
        serde_json::to_string(&(user.as_str(), client_id.as_str())).expect("a pair of strings serialises")
    }
    /// Sorted set of `{instance}:{user}` scored by lease expiry (Unix ms, Redis clock).
    pub fn presence(&self, chat: &ChatId) -> String {
        self.chat(chat, "presence")
    }
    /// Hash user id → username of the users online in the chat.
    pub fn presence_names(&self, chat: &ChatId) -> String {
        self.chat(chat, "presence:names")
    }
    /// Hash with `last` (the last heartbeat of any instance in the chat) and `hold`
    /// (no lease is removed before it), Unix ms on the Redis clock.
    pub fn presence_beat(&self, chat: &ChatId) -> String {
        self.chat(chat, "presence:beat")
    }
    /// Sorted set of `{instance}:{slot}` scored by lease expiry: a user's open
    /// connections on every instance. (No chat: a user's limit spans chats.)
    pub fn connections(&self, user: &UserId) -> String {
        format!("{}:connections:{}", self.prefix, user.as_str())
    }
    /// Hash with `display_name`: a user's profile.
    pub fn user(&self, user: &UserId) -> String {
        format!("{}:user:{}", self.prefix, user.as_str())
    }
    /// The pub/sub channel of a chat (a channel, not a key).
    pub fn channel(&self, chat: &ChatId) -> String {
        self.chat(chat, "events")
    }
    /// The chat of a channel name made by [`Keys::channel`].
    pub fn chat_of_channel(&self, channel: &str) -> Option<ChatId> {
        let inner = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix("}:events")?;
        ChatId::new(inner).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_chat_shares_its_hash_tag() {
        let keys = Keys::new("hablar");
        let chat = ChatId::new("general").expect("chat");
        let user = UserId::new("a:b}{").expect("user");
        let client = ClientId::new("c:1").expect("client id");
        for key in [
            keys.meta(&chat),
            keys.members(&chat),
            keys.epoch(&chat),
            keys.seq(&chat),
            keys.messages(&chat),
            keys.idempotency(&chat),
            keys.presence(&chat),
            keys.presence_names(&chat),
            keys.presence_beat(&chat),
        ] {
            assert!(key.starts_with("hablar:{general}:"), "{key}");
        }
        assert_eq!(Keys::idempotency_member(&user, &client), r#"["a:b}{","c:1"]"#);
        assert_eq!(keys.user(&user), "hablar:user:a:b}{");
        // Its own namespace: no profile key `user:{id}` can be a user's connection set.
        assert_eq!(keys.connections(&user), "hablar:connections:a:b}{");
        assert_eq!(keys.chat_of_channel(&keys.channel(&chat)), Some(chat));
        assert_eq!(keys.chat_of_channel("other:{general}:events"), None);
    }

    #[test]
    fn idempotency_entries_keep_user_and_client_id_apart() {
        let a = Keys::idempotency_member(
            &UserId::new("a:b").expect("user"),
            &ClientId::new("c").expect("client id"),
        );
        let b = Keys::idempotency_member(
            &UserId::new("a").expect("user"),
            &ClientId::new("b:c").expect("client id"),
        );
        assert_ne!(a, b);
    }
}
