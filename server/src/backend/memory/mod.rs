//! The embedded in-memory backend: one process, no dependencies, the default. State is
//! lost on restart, which gives every chat a new epoch (clients then reload history).

mod chat;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hablar_protocol::events::{HistoryPage, Message, PresenceUser, Sender, ServerEvent};
use hablar_protocol::{ChatId, Epoch, Seq, UserId};
use parking_lot::{Mutex, RwLock};
use time::OffsetDateTime;

use self::chat::Chat;
use super::rules::{message_id, rfc3339, serve_replay};
use super::{Appended, Backend, ChatEvent, EventSink, NewMessage, PresenceJoined, Replay};
use crate::error::{Error, Result};

/// The clock the backend stamps messages with; injected in tests.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// The in-memory store and broker.
pub struct MemoryBackend {
    /// Each chat behind its own lock, so chats do not wait for each other.
    chats: RwLock<HashMap<ChatId, Arc<Mutex<Chat>>>>,
    /// Display names by user.
    profiles: RwLock<HashMap<UserId, String>>,
    /// Chats whose events go to `sink` (this instance subscribed to them).
    subscribed: RwLock<HashSet<ChatId>>,
    /// This instance's hub.
    sink: Arc<dyn EventSink>,
    /// Messages kept per chat.
    retention: usize,
    /// How long a `client_id` makes a resend a no-op.
    idempotency_ttl: Duration,
    /// The time source for `created_at` and idempotency expiry.
    clock: Clock,
}

impl MemoryBackend {
    /// A backend that delivers subscribed chats' events to `sink`.
    pub fn new(sink: Arc<dyn EventSink>, retention: usize) -> Self {
        Self::with_clock(sink, retention, Arc::new(OffsetDateTime::now_utc))
    }

    /// Like [`MemoryBackend::new`], with an injected clock.
    pub fn with_clock(sink: Arc<dyn EventSink>, retention: usize, clock: Clock) -> Self {
        Self {
            chats: RwLock::default(),
            profiles: RwLock::default(),
            subscribed: RwLock::default(),
            sink,
            retention: retention.max(1),
            idempotency_ttl: Duration::from_secs(hablar_protocol::limits::IDEMPOTENCY_RETENTION_SECS),
            clock,
        }
    }

    fn chat(&self, chat: &ChatId) -> Result<Arc<Mutex<Chat>>> {
        self.chats.read().get(chat).cloned().ok_or(Error::NotFound)
    }

    /// Hands `event` to the hub if this instance subscribed to `chat`. Called with the
    /// chat's lock held, which is what orders events of a chat.
    fn deliver(&self, chat: &ChatId, event: &ChatEvent) {
        if self.subscribed.read().contains(chat) {
            self.sink.deliver(chat, event);
        }
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn create_chat(&self, chat: &ChatId) -> Result<bool> {
        let mut chats = self.chats.write();
        if chats.contains_key(chat) {
            return Ok(false);
        }
        chats.insert(chat.clone(), Arc::new(Mutex::new(Chat::new())));
        Ok(true)
    }

    async fn chat_exists(&self, chat: &ChatId) -> Result<bool> {
        Ok(self.chats.read().contains_key(chat))
    }

    async fn add_member(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        match self.chat(chat) {
            Ok(state) => {
                state.lock().members.insert(user.clone());
                Ok(true)
            }
            Err(Error::NotFound) => Ok(false),
            Err(other) => Err(other),
        }
    }

    async fn remove_member(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        let Ok(state) = self.chat(chat) else {
            return Ok(false);
        };
        let mut state = state.lock();
        let removed = state.members.remove(user);
        if removed {
            self.deliver(
                chat,
                &ChatEvent::MemberRemoved {
                    user_id: user.clone(),
                },
            );
        }
        Ok(removed)
    }

    async fn is_member(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        Ok(self
            .chat(chat)
            .is_ok_and(|state| state.lock().members.contains(user)))
    }

    async fn set_display_name(&self, user: &UserId, display_name: &str) -> Result<()> {
        self.profiles
            .write()
            .insert(user.clone(), display_name.to_owned());
        Ok(())
    }

    async fn display_name(&self, user: &UserId) -> Result<Option<String>> {
        Ok(self.profiles.read().get(user).cloned())
    }

    async fn append(&self, chat: &ChatId, message: NewMessage) -> Result<Appended> {
        let state = self.chat(chat)?;
        let now = (self.clock)();
        let mut state = state.lock();
        // Under the chat's lock, like `remove_member`: once a removal is done, the removed
        // member can store and publish nothing.
        if !state.members.contains(&message.sender.user_id) {
            return Err(Error::NotMember);
        }
        state.expire_client_ids(now, self.idempotency_ttl);
        if let Some(client_id) = &message.parts.client_id {
            let key = (message.sender.user_id.clone(), client_id.clone());
            if let Some(stored) = state.client_ids.get(&key).and_then(|seq| state.retained(*seq)) {
                return Ok(Appended {
                    message: stored.clone(),
                    duplicate: true,
                });
            }
        }
        let seq = state.last_seq.next();
        let stored = Message {
            id: message_id(&state.epoch, seq),
            seq: Some(seq),
            chat_id: chat.clone(),
            content: message.parts.content,
            sender: Sender {
                id: message.sender.user_id.clone(),
                username: message.sender.username,
            },
            created_at: rfc3339(now),
            client_id: message.parts.client_id.clone(),
            extra: message.parts.extra,
        };
        state.last_seq = seq;
        state.messages.push_back(stored.clone());
        while state.messages.len() > self.retention {
            state.messages.pop_front();
        }
        if let Some(client_id) = message.parts.client_id {
            let user = message.sender.user_id;
            state.client_ids.insert((user.clone(), client_id.clone()), seq);
            state.client_id_order.push_back((now, seq, user, client_id));
            // Drop the keys of messages that the retention just pushed out.
            state.expire_client_ids(now, self.idempotency_ttl);
        }
        let event = ChatEvent::Broadcast {
            event: ServerEvent::NewMessage {
                message: stored.clone(),
            },
            skip_user: None,
        };
        self.deliver(chat, &event);
        Ok(Appended {
            message: stored,
            duplicate: false,
        })
    }

    async fn history(&self, chat: &ChatId, before: Option<Seq>, limit: usize) -> Result<HistoryPage> {
        let state = self.chat(chat)?;
        let state = state.lock();
        let older: Vec<&Message> = state
            .messages
            .iter()
            .filter(|m| before.is_none_or(|before| m.seq.is_some_and(|seq| seq < before)))
            .collect();
        let start = older.len().saturating_sub(limit);
        Ok(HistoryPage {
            messages: older[start..].iter().map(|m| (*m).clone()).collect(),
            has_more: start > 0,
        })
    }

    async fn replay(
        &self,
        chat: &ChatId,
        since: Option<Seq>,
        epoch: Option<&Epoch>,
        max: usize,
    ) -> Result<Replay> {
        let state = self.chat(chat)?;
        let state = state.lock();
        Ok(serve_replay(
            state.epoch.clone(),
            state.last_seq,
            state.oldest_seq(),
            since,
            epoch,
            max,
            state.messages.iter().cloned(),
        ))
    }

    async fn publish(&self, chat: &ChatId, event: ChatEvent) -> Result<()> {
        if let Ok(state) = self.chat(chat) {
            let _ordered = state.lock();
            self.deliver(chat, &event);
        }
        Ok(())
    }

    async fn subscribe(&self, chat: &ChatId) -> Result<()> {
        self.subscribed.write().insert(chat.clone());
        Ok(())
    }

    async fn unsubscribe(&self, chat: &ChatId) -> Result<()> {
        self.subscribed.write().remove(chat);
        Ok(())
    }

    async fn presence_join(&self, chat: &ChatId, user: &PresenceUser) -> Result<PresenceJoined> {
        let state = self.chat(chat)?;
        let mut state = state.lock();
        let entry = state
            .presence
            .entry(user.user_id.clone())
            .or_insert_with(|| (user.clone(), 0));
        entry.1 += 1;
        let first = entry.1 == 1;
        Ok(PresenceJoined {
            first,
            online: state.presence.values().map(|(u, _)| u.clone()).collect(),
        })
    }

    async fn presence_leave(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        let state = self.chat(chat)?;
        let mut state = state.lock();
        let Some(entry) = state.presence.get_mut(user) else {
            return Ok(false);
        };
        entry.1 = entry.1.saturating_sub(1);
        if entry.1 == 0 {
            state.presence.remove(user);
            return Ok(true);
        }
        Ok(false)
    }
}
