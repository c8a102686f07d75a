//! The Lua scripts, and the templating of the `append` script's message: the message
//! JSON with placeholders the script fills in, and the event JSON around it.

use hablar_protocol::events::{Message, Sender, ServerEvent};
use hablar_protocol::{ChatId, MessageId, Seq, UserId};
use redis::Script;

use super::{ChatEvent, NewMessage};

/// The message id placeholder in an `append` template; the script replaces its first match.
pub(super) const ID_NEEDLE: &str = "\"id\":\"__hablar_message_id__\"";
/// The seq placeholder in an `append` template.
pub(super) const SEQ_NEEDLE: &str = "\"seq\":18446744073709551615";

/// The append script, also sent whole (`EVAL`) when Redis has lost its script cache.
pub(super) const APPEND_LUA: &str = include_str!("append.lua");

/// The scripts, loaded once per Redis (`EVALSHA`, re-loaded after a Redis restart).
pub(super) struct Scripts {
    pub(super) append: Script,
    pub(super) replay: Script,
    pub(super) presence_join: Script,
    pub(super) presence_leave: Script,
    pub(super) presence_beat: Script,
    pub(super) remove_member: Script,
    pub(super) connection_acquire: Script,
    pub(super) connection_renew: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            append: Script::new(APPEND_LUA),
            replay: Script::new(include_str!("replay.lua")),
            presence_join: Script::new(include_str!("presence_join.lua")),
            presence_leave: Script::new(include_str!("presence_leave.lua")),
            presence_beat: Script::new(include_str!("presence_beat.lua")),
            remove_member: Script::new(include_str!("remove_member.lua")),
            connection_acquire: Script::new(include_str!("connection_acquire.lua")),
            connection_renew: Script::new(include_str!("connection_renew.lua")),
        }
    }
}

/// script publishes exactly what `serde` would.
pub(super) fn event_halves() -> (String, String) {
    let message = Message {
        id: MessageId::new("x").expect("a valid id"),
        seq: Some(Seq(1)),
        chat_id: ChatId::new("x").expect("a valid chat id"),
        content: "x".into(),
        sender: Sender {
            id: UserId::new("x").expect("a valid user id"),
            username: "x".into(),
        },
        created_at: "x".into(),
        client_id: None,
        extra: Default::default(),
    };
    let inner = serde_json::to_string(&message).expect("a message serialises");
    let event = ChatEvent::Broadcast {
        event: ServerEvent::NewMessage { message },
        skip_user: None,
    };
    let whole = serde_json::to_string(&event).expect("an event serialises");
    let at = whole
        .find(&inner)
        .expect("the event holds the message JSON as it is");
    (whole[..at].to_owned(), whole[at + inner.len()..].to_owned())
}

/// The message the `append` script completes with its id and seq.
pub(super) fn draft(chat: &ChatId, message: NewMessage, created_at: String) -> Message {
    Message {
        id: MessageId::new("__hablar_message_id__").expect("a valid id"),
        seq: Some(Seq(u64::MAX)),
        chat_id: chat.clone(),
        content: message.parts.content,
        sender: Sender {
            id: message.sender.user_id,
            username: message.sender.username,
        },
        created_at,
        client_id: message.parts.client_id,
        extra: message.parts.extra,
    }
}

/// The message JSON the `append` script completes with its id and seq.
#[cfg(test)]
fn template(chat: &ChatId, message: NewMessage, created_at: String) -> String {
    serde_json::to_string(&draft(chat, message, created_at)).expect("a message serialises")
}

#[cfg(test)]
mod tests {
    use hablar_protocol::events::{MessageParts, PresenceUser};
    use hablar_protocol::{ClientId, Epoch};

    use super::super::store::parse_message;
    use super::*;
    use crate::backend::rules::{epoch_of, message_id};

    /// What the `append` script does to the template, in Rust.
    fn complete(template: &str, id: &str, seq: u64) -> String {
        let splice = |text: &str, needle: &str, value: &str| {
            let at = text.find(needle).expect("the needle is in the template");
            format!("{}{value}{}", &text[..at], &text[at + needle.len()..])
        };
        let text = splice(template, ID_NEEDLE, &format!("\"id\":\"{id}\""));
        splice(&text, SEQ_NEEDLE, &format!("\"seq\":{seq}"))
    }

    #[test]
    fn the_append_template_completes_to_the_message_and_its_event() {
        let chat = ChatId::new("general").expect("chat");
        let mut extra = hablar_protocol::events::Extra::new();
        // A pass-through field that holds the very placeholders must survive untouched.
        extra.insert(
            "reply_to".into(),
            serde_json::json!({"id": "__hablar_message_id__", "seq": u64::MAX}),
        );
        let new = NewMessage {
            sender: PresenceUser {
                user_id: UserId::new("alice").expect("user"),
                username: "Alice".into(),
            },
            parts: MessageParts {
                content: "\"id\":\"__hablar_message_id__\"".into(),
                client_id: Some(ClientId::new("c1").expect("client id")),
                extra: extra.clone(),
            },
        };
        let text = complete(
            &template(&chat, new, "2024-01-01T00:00:00Z".into()),
            message_id(&Epoch::new("E").expect("epoch"), Seq(7)).as_str(),
            7,
        );
        let message = parse_message(&text).expect("a message");
        assert_eq!(message.id.as_str(), "E-7");
        assert_eq!(message.seq, Some(Seq(7)));
        assert_eq!(message.content, "\"id\":\"__hablar_message_id__\"");
        assert_eq!(message.extra, extra);
        assert_eq!(epoch_of(&message.id), Some("E"));

        let (prefix, suffix) = event_halves();
        let event: ChatEvent = serde_json::from_str(&format!("{prefix}{text}{suffix}")).expect("an event");
        assert_eq!(
            event,
            ChatEvent::Broadcast {
                event: ServerEvent::NewMessage { message },
                skip_user: None
            }
        );
    }
}
