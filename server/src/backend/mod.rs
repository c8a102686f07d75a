//! The store and broker behind the server, as one trait, implemented by the embedded
//! in-memory backend ([`memory`], one instance) and the Redis backend ([`redis`], any
//! number of instances); `rules` holds the decisions both make alike.
//!
//! The backend owns what must be consistent across instances: chats, members, profiles,
//! messages (seq, epoch, idempotency), presence, and the pub/sub of chat events. Events
//! reach this instance's connections through the [`EventSink`] given to the backend
//! when it is built (the local hub, [`crate::rooms::Rooms`]).

pub mod memory;
pub mod redis;
mod rules;

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use hablar_protocol::events::{HistoryPage, Message, MessageParts, PresenceUser, ServerEvent};
use hablar_protocol::{ChatId, Epoch, Seq, UserId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use memory::MemoryBackend;

use crate::error::Result;
use crate::limits::{self, ConnectionCounter};

/// An event published to every instance that has subscribed to a chat.
///
/// Serialisable so that a networked backend can carry it as it is.
// Events are passed by reference down the fan-out, so the variants' size difference
// costs nothing; boxing would cost an allocation per published event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChatEvent {
    /// A protocol event for every connection of the chat.
    Broadcast {
        /// The event, as it goes on the wire.
        event: ServerEvent,
        /// Connections of this user do not get it (a user's own typing).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skip_user: Option<UserId>,
    },
    /// Control: a member was removed; that user's sockets in the chat close with 4403.
    MemberRemoved {
        /// Who was removed.
        user_id: UserId,
    },
    /// Control: this instance may have missed some of the chat's events (its broker link
    /// was down and the gap could not be replayed), so every local connection of the chat
    /// closes with 1012 and its client resumes with `since` (or learns `recovered: false`).
    Resync,
}

/// Where a backend delivers the events of the chats this instance subscribed to.
pub trait EventSink: Send + Sync + 'static {
    /// Hands one event of `chat` to the local connections. Must not block: it is called
    /// in the backend's publish path, in publish order.
    fn deliver(&self, chat: &ChatId, event: &ChatEvent);

    /// The users with a local connection, per chat: what a backend checks membership of
    /// when it may have missed a removal. None by default.
    fn local_members(&self) -> Vec<(ChatId, Vec<UserId>)> {
        Vec::new()
    }
}

/// A message to store: a client's message as [`ClientMessage::into_parts`] checked it,
/// stamped with its sender.
///
/// [`ClientMessage::into_parts`]: hablar_protocol::events::ClientMessage::into_parts
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// Who sends it (from the token, never from the client).
    pub sender: PresenceUser,
    /// The trimmed content, the idempotency key and the pass-through fields.
    pub parts: MessageParts,
}

/// The outcome of [`Backend::append`].
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    /// The stored message (the earlier one when `duplicate`).
    pub message: Message,
    /// The `client_id` was already stored: nothing was stored or published, and only
    /// the sender should get `message` back as its acknowledgement.
    pub duplicate: bool,
}

/// The outcome of [`Backend::replay`].
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// The chat store's current epoch.
    pub epoch: Epoch,
    /// The newest seq at the time of reading (after the replayed messages).
    pub last_seq: Seq,
    /// Every message with `seq > since`, in order (empty when not `recovered`).
    pub messages: Vec<Message>,
    /// `false` when a resume was asked and cannot be served: other epoch, gap older
    /// than the retained history, or longer than `max` messages.
    pub recovered: bool,
}

/// The outcome of [`Backend::presence_join`].
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceJoined {
    /// This was the user's first connection to the chat on any instance.
    pub first: bool,
    /// Everyone online in the chat now, this user included.
    pub online: Vec<PresenceUser>,
}

/// How a [`ConnectionSlot`] is given back: what must happen at once runs when it is
/// called, what waits for the store is the future it returns.
type GiveBack = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// One open connection counted against its user's limit (`--max-connections-per-user`).
///
/// [`ConnectionSlot::release`] gives it back and waits until the store has it, so that
/// the user's next connection, on any instance, finds it free. A slot dropped without
/// it (a failed task) is given back in the background; where even that cannot reach
/// the store, a backend shared by instances lets it run out with its lease.
pub struct ConnectionSlot {
    /// `None` once given back.
    give_back: Mutex<Option<GiveBack>>,
}

impl ConnectionSlot {
    /// A slot that `give_back` returns to where it was taken from.
    pub fn new(give_back: impl FnOnce() -> BoxFuture<'static, ()> + Send + 'static) -> Self {
        Self {
            give_back: Mutex::new(Some(Box::new(give_back))),
        }
    }

    /// A slot of this instance's own count.
    pub fn local(counted: limits::ConnectionSlot) -> Self {
        Self::new(move || {
            drop(counted);
            Box::pin(async {})
        })
    }

    /// Gives the slot back, once; later calls do nothing.
    pub async fn release(&self) {
        let give_back = self.give_back.lock().take();
        if let Some(give_back) = give_back {
            give_back().await;
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(give_back) = self.give_back.get_mut().take() {
            let pending = give_back();
            // Never panic in drop: without a runtime, the lease runs out instead.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(pending);
            }
        }
    }
}

/// The store and broker.
///
/// Rules every implementation keeps (the integration tests check them per backend):
/// - `append` is one atomic step: membership check (a sender who is not a member gets
///   [`crate::Error::NotMember`] and nothing is stored or published), idempotency check,
///   `seq` = previous + 1, store, and publish of `new_message` to the chat, so that every
///   subscriber sees messages in `seq` order.
/// - Idempotency keys are scoped to (chat, sender, client_id) and kept while their
///   message is in the retained history (the embedded backend also forgets them after
///   24 h).
/// - A removed member's local sockets are closed ([`ChatEvent::MemberRemoved`] to the
///   sink) on every instance, also when the removal was not made through
///   [`Backend::remove_member`] or its event was missed, within a bounded time.
/// - `subscribe` returns once the subscription is live, so a caller that subscribes and
///   then reads `replay` misses nothing in between.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Creates a chat; `true` if it did not exist.
    async fn create_chat(&self, chat: &ChatId) -> Result<bool>;
    /// Whether the chat exists.
    async fn chat_exists(&self, chat: &ChatId) -> Result<bool>;
    /// Adds a member to an existing chat; `false` if the chat does not exist.
    async fn add_member(&self, chat: &ChatId, user: &UserId) -> Result<bool>;
    /// Removes a member; `true` if it was one. Publishes [`ChatEvent::MemberRemoved`].
    async fn remove_member(&self, chat: &ChatId, user: &UserId) -> Result<bool>;
    /// Whether `user` is a member of `chat`.
    async fn is_member(&self, chat: &ChatId, user: &UserId) -> Result<bool>;
    /// Sets a user's display name.
    async fn set_display_name(&self, user: &UserId, display_name: &str) -> Result<()>;
    /// A user's display name, if a profile exists.
    async fn display_name(&self, user: &UserId) -> Result<Option<String>>;

    /// Stores and publishes a message (see the trait's rules); [`crate::Error::NotMember`]
    /// when the sender is not a member of the chat.
    async fn append(&self, chat: &ChatId, message: NewMessage) -> Result<Appended>;
    /// Stores and publishes messages of one connection, in their order, as if appended
    /// one after the other: one outcome per message. A connection has one batch in
    /// flight at a time, so a backend that answers with a round trip serves a fast
    /// sender with one round trip per batch instead of one per message.
    async fn append_batch(&self, chat: &ChatId, messages: Vec<NewMessage>) -> Vec<Result<Appended>> {
        let mut outcomes = Vec::with_capacity(messages.len());
        for message in messages {
            outcomes.push(self.append(chat, message).await);
        }
        outcomes
    }
    /// Up to `limit` messages with `seq < before` (all when `None`), oldest first.
    async fn history(&self, chat: &ChatId, before: Option<Seq>, limit: usize) -> Result<HistoryPage>;
    /// The chat's epoch and newest seq, and, when `since` is given, the messages after it
    /// (at most `max`). A `since` without `epoch` is taken as the current epoch.
    async fn replay(
        &self,
        chat: &ChatId,
        since: Option<Seq>,
        epoch: Option<&Epoch>,
        max: usize,
    ) -> Result<Replay>;

    /// Publishes an event that is not stored (typing, presence, read, control).
    async fn publish(&self, chat: &ChatId, event: ChatEvent) -> Result<()>;
    /// Starts delivering `chat`'s events to this instance's sink; returns once live.
    async fn subscribe(&self, chat: &ChatId) -> Result<()>;
    /// Stops delivering `chat`'s events to this instance.
    async fn unsubscribe(&self, chat: &ChatId) -> Result<()>;

    /// Counts one more connection of `user` in `chat` (across instances).
    async fn presence_join(&self, chat: &ChatId, user: &PresenceUser) -> Result<PresenceJoined>;
    /// Counts one connection less; `true` if it was the user's last one in the chat.
    async fn presence_leave(&self, chat: &ChatId, user: &UserId) -> Result<bool>;

    /// Takes one of `user`'s connection slots if they have fewer than `max` open on every
    /// instance that shares this store; `None` at the limit. The default counts this
    /// instance's connections only, in `local`: right for a backend of one instance.
    async fn acquire_connection(
        &self,
        local: &Arc<ConnectionCounter>,
        user: &UserId,
        max: usize,
    ) -> Result<Option<ConnectionSlot>> {
        Ok(local.try_acquire(user, max).map(ConnectionSlot::local))
    }
}
