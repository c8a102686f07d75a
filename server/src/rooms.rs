//! The local hub: which connections of this instance are in which chat, and the fan-out
//! of a chat's events to them. Each event is encoded once per fan-out and shared by all
//! queues (`Utf8Bytes` is reference-counted); each connection's [`SendQueue`] is bounded
//! and pushes never wait, so one slow reader never holds up the others.
//!
//! What a full queue means depends on the event. A `new_message` that does not fit
//! closes the connection with 4408 (its client resumes with `since`): messages are never
//! dropped. Typing is a lease that the next refresh repairs, so it is dropped. Presence
//! is neither: a burst of joins (1,000 members connecting at once) must not close healthy
//! readers, yet a dropped `presence_join` would leave a wrong online list for good. So a
//! presence event that does not fit is held back by the connection's [`SendQueue`] instead,
//! coalesced per user (the latest event wins), and the writer sends it right after the
//! frames queued before it. The SDK keeps presence as a set
//! keyed by user id (a join of a known user and a leave of an unknown one change
//! nothing), so the latest event per user, in order after the earlier ones, leaves the
//! client with the true online set. Presence only takes up to half of the queue, so a
//! burst of joins leaves room for the messages that follow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use hablar_protocol::events::{encode, ServerEvent};
use hablar_protocol::{ChatId, CloseCode, UserId};
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::backend::{Backend, ChatEvent, EventSink};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::send_queue::{PresencePush, QueuedFrame, Refused, SendQueue};

/// Asks a connection to close with a code; the first code asked for wins.
#[derive(Debug, Clone)]
pub struct Closer(watch::Sender<Option<CloseCode>>);

impl Closer {
    /// A closer and the receiver its connection waits on.
    pub fn new() -> (Self, watch::Receiver<Option<CloseCode>>) {
        let (tx, rx) = watch::channel(None);
        (Self(tx), rx)
    }

    /// Asks the connection to close with `code` (ignored if a close was already asked).
    pub fn close(&self, code: CloseCode) {
        self.0.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(code);
            true
        });
    }
}

/// What the hub knows of one connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// Whose connection it is (to skip a user's own typing, to close a removed member).
    pub user: UserId,
    /// The connection's bounded queue.
    pub queue: Arc<SendQueue>,
    /// Closes the connection (too slow, removed from the chat).
    pub closer: Closer,
}

/// One chat's local connections.
#[derive(Debug, Default)]
struct Room {
    /// Connections by id.
    conns: HashMap<u64, ConnHandle>,
    /// Whether this instance is subscribed to the chat. An async lock, held across the
    /// backend's subscribe/unsubscribe, so that a join and a leave never interleave them.
    subscribed: Arc<tokio::sync::Mutex<bool>>,
}

/// The hub.
#[derive(Debug)]
pub struct Rooms {
    /// Rooms by chat, for the chats with local connections. The leave that unsubscribes
    /// a chat removes its room, still holding the room's `subscribed` lock, and only if
    /// no join has come in since; a later join makes a new room that subscribes again.
    /// (Keeping rooms for ever would grow the map with every chat ever joined.)
    rooms: RwLock<HashMap<ChatId, Room>>,
    /// Source of connection ids.
    next_id: AtomicU64,
    /// Counts frames out and drops.
    metrics: Arc<Metrics>,
}

impl Rooms {
    /// An empty hub.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            rooms: RwLock::default(),
            next_id: AtomicU64::new(1),
            metrics,
        }
    }

    /// Registers a connection for `chat`'s live events and makes sure this instance is
    /// subscribed. When it returns, every event published from then on reaches `handle`.
    pub async fn join(&self, backend: &dyn Backend, chat: &ChatId, handle: ConnHandle) -> Result<u64> {
        let id = self.next_id.fetch_add(1, Relaxed);
        let subscribed = {
            let mut rooms = self.rooms.write();
            let room = rooms.entry(chat.clone()).or_insert_with(|| {
                self.metrics.rooms.fetch_add(1, Relaxed);
                Room::default()
            });
            room.conns.insert(id, handle);
            room.subscribed.clone()
        };
        let mut subscribed = subscribed.lock().await;
        if !*subscribed {
            if let Err(err) = backend.subscribe(chat).await {
                drop(subscribed);
                self.leave(backend, chat, id).await;
                return Err(err);
            }
            *subscribed = true;
        }
        Ok(id)
    }

    /// Unregisters a connection; the last one of a chat unsubscribes this instance.
    pub async fn leave(&self, backend: &dyn Backend, chat: &ChatId, id: u64) {
        let subscribed = {
            let mut rooms = self.rooms.write();
            let Some(room) = rooms.get_mut(chat) else {
                return;
            };
            room.conns.remove(&id);
            if !room.conns.is_empty() {
                return;
            }
            room.subscribed.clone()
        };
        let mut guard = subscribed.lock().await;
        // A connection may have joined while we waited for the lock.
        if self.local_connections(chat) != 0 {
            return;
        }
        if *guard {
            if let Err(err) = backend.unsubscribe(chat).await {
                tracing::warn!(%chat, error = %err, "unsubscribe failed");
            }
            *guard = false;
        }
        let mut rooms = self.rooms.write();
        // Still the same, still empty room: no join came in while we unsubscribed, and
        // none can now (we hold the map); a join after this makes and subscribes a new one.
        let ours = rooms
            .get(chat)
            .is_some_and(|room| room.conns.is_empty() && Arc::ptr_eq(&room.subscribed, &subscribed));
        if ours {
            rooms.remove(chat);
            self.metrics.rooms.fetch_sub(1, Relaxed);
        }
        drop(rooms);
        drop(guard);
    }

    /// Connections of this instance in `chat`.
    pub fn local_connections(&self, chat: &ChatId) -> usize {
        self.rooms.read().get(chat).map_or(0, |room| room.conns.len())
    }
}

impl EventSink for Rooms {
    fn deliver(&self, chat: &ChatId, event: &ChatEvent) {
        let rooms = self.rooms.read();
        let Some(room) = rooms.get(chat) else {
            return;
        };
        match event {
            ChatEvent::Broadcast { event, skip_user } => {
                if room.conns.is_empty() {
                    return;
                }
                let text = Utf8Bytes::from(encode(event));
                let (seq, droppable) = match event {
                    ServerEvent::NewMessage { message } => (message.seq, false),
                    ServerEvent::TypingStart { .. } | ServerEvent::TypingStop { .. } => (None, true),
                    _ => (None, false),
                };
                let presence = match event {
                    ServerEvent::PresenceJoin(user) | ServerEvent::PresenceLeave(user) => Some(&user.user_id),
                    _ => None,
                };
                // Counted here and added once: one shared atomic per recipient would be
                // contended by every fan-out of every chat.
                let (mut sent, mut dropped) = (0, 0);
                for conn in room.conns.values() {
                    if skip_user.as_ref() == Some(&conn.user) {
                        continue;
                    }
                    if let Some(user) = presence {
                        match conn.queue.push_presence(user, &text) {
                            PresencePush::Queued => sent += 1,
                            PresencePush::Held => dropped += 1,
                            PresencePush::Closed => {}
                        }
                        continue;
                    }
                    match conn.queue.push(QueuedFrame {
                        text: text.clone(),
                        seq,
                    }) {
                        Ok(()) => sent += 1,
                        Err(Refused::Full) => {
                            dropped += 1;
                            // Typing is a lease that the next refresh repairs; anything
                            // else would leave a gap, so the client resumes instead.
                            if !droppable {
                                conn.closer.close(CloseCode::TooSlow);
                            }
                        }
                        Err(Refused::Closed) => {}
                    }
                }
                if sent != 0 {
                    self.metrics.messages_out.fetch_add(sent, Relaxed);
                }
                if dropped != 0 {
                    self.metrics.dropped.fetch_add(dropped, Relaxed);
                }
            }
            ChatEvent::MemberRemoved { user_id } => {
                for conn in room.conns.values().filter(|c| &c.user == user_id) {
                    // Nothing published after the removal may reach them, not even in
                    // the moment before their connection acts on the close.
                    conn.queue.close();
                    conn.closer.close(CloseCode::Forbidden);
                }
            }
            ChatEvent::Resync => {
                for conn in room.conns.values() {
                    conn.closer.close(CloseCode::Restart);
                }
            }
        }
    }

    fn local_members(&self) -> Vec<(ChatId, Vec<UserId>)> {
        let rooms = self.rooms.read();
        rooms
            .iter()
            .filter(|(_, room)| !room.conns.is_empty())
            .map(|(chat, room)| {
                let mut users: Vec<UserId> = room.conns.values().map(|c| c.user.clone()).collect();
                users.sort_unstable();
                users.dedup();
                (chat.clone(), users)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use hablar_protocol::events::{Message, PresenceUser, Sender};
    use hablar_protocol::{MessageId, Seq};

    use super::*;
    use crate::backend::MemoryBackend;

    fn typing(user: &str) -> ChatEvent {
        ChatEvent::Broadcast {
            event: ServerEvent::TypingStart {
                user_id: UserId::new(user).expect("id"),
                username: user.into(),
            },
            skip_user: None,
        }
    }

    fn message(seq: u64) -> ChatEvent {
        let message = Message {
            id: MessageId::new(format!("m{seq}")).expect("id"),
            seq: Some(Seq(seq)),
            chat_id: ChatId::new("room").expect("chat"),
            content: "hi".into(),
            sender: Sender {
                id: UserId::new("bob").expect("id"),
                username: "Bob".into(),
            },
            created_at: "2026-01-01T00:00:00Z".into(),
            client_id: None,
            extra: Default::default(),
        };
        ChatEvent::Broadcast {
            event: ServerEvent::NewMessage { message },
            skip_user: None,
        }
    }

    /// Joins one connection of `user` with a queue of `capacity` to the chat "room".
    async fn joined(
        rooms: &Rooms,
        backend: &MemoryBackend,
        user: &str,
        capacity: usize,
        closer: Closer,
    ) -> ConnHandle {
        let chat = ChatId::new("room").expect("chat");
        let handle = ConnHandle {
            user: UserId::new(user).expect("id"),
            queue: Arc::new(SendQueue::new(capacity)),
            closer,
        };
        rooms.join(backend, &chat, handle.clone()).await.expect("join");
        handle
    }

    fn taken(handle: &ConnHandle) -> Vec<QueuedFrame> {
        let mut batch = VecDeque::new();
        handle.queue.take(&mut batch);
        batch.into()
    }

    #[tokio::test]
    async fn a_full_queue_drops_typing_but_closes_on_a_message() {
        let metrics = Arc::new(Metrics::default());
        let rooms = Arc::new(Rooms::new(metrics.clone()));
        let backend = MemoryBackend::new(rooms.clone(), 10);
        let chat = ChatId::new("room").expect("chat");
        let (closer, close_rx) = Closer::new();
        let handle = joined(&rooms, &backend, "alice", 2, closer).await;

        rooms.deliver(&chat, &message(1));
        rooms.deliver(&chat, &typing("bob"));
        rooms.deliver(&chat, &typing("bob"));
        assert_eq!(
            *close_rx.borrow(),
            None,
            "a dropped typing event is no reason to close"
        );
        assert_eq!(metrics.dropped.load(Relaxed), 1);
        rooms.deliver(&chat, &message(2));
        assert_eq!(*close_rx.borrow(), Some(CloseCode::TooSlow));
        assert_eq!(taken(&handle)[0].seq, Some(Seq(1)));
    }

    fn presence(join: bool, user: &str) -> ChatEvent {
        let user = PresenceUser {
            user_id: UserId::new(user).expect("id"),
            username: user.into(),
        };
        let event = if join {
            ServerEvent::PresenceJoin(user)
        } else {
            ServerEvent::PresenceLeave(user)
        };
        ChatEvent::Broadcast {
            event,
            skip_user: None,
        }
    }

    #[tokio::test]
    async fn presence_beyond_half_the_queue_is_held_back_not_closed_and_sent_after() {
        let metrics = Arc::new(Metrics::default());
        let rooms = Arc::new(Rooms::new(metrics.clone()));
        let backend = MemoryBackend::new(rooms.clone(), 10);
        let chat = ChatId::new("room").expect("chat");
        let (closer, close_rx) = Closer::new();
        let handle = joined(&rooms, &backend, "alice", 2, closer).await;

        rooms.deliver(&chat, &presence(true, "bob"));
        rooms.deliver(&chat, &presence(true, "carol"));
        rooms.deliver(&chat, &presence(true, "bob"));
        rooms.deliver(&chat, &presence(false, "bob"));
        // Half the queue is left for messages.
        rooms.deliver(&chat, &message(1));
        assert_eq!(
            *close_rx.borrow(),
            None,
            "held-back presence is no reason to close"
        );
        assert_eq!(metrics.dropped.load(Relaxed), 3, "held back counts as dropped");
        let got = taken(&handle);
        assert!(got[0].text.as_str().contains("presence_join") && got[0].text.as_str().contains("bob"));
        assert_eq!(got[1].seq, Some(Seq(1)));
        let mut held: Vec<&str> = got[2..].iter().map(|o| o.text.as_str()).collect();
        held.sort_unstable();
        assert_eq!(held.len(), 2, "one per user: {held:?}");
        assert!(held[0].contains("presence_join") && held[0].contains("carol"));
        assert!(held[1].contains("presence_leave") && held[1].contains("bob"));
    }

    /// The connection acts on a close a moment later, in its own task: what the chat
    /// publishes meanwhile must not reach a removed member, while others still get it.
    #[tokio::test]
    async fn nothing_published_after_a_removal_reaches_the_removed_member() {
        let rooms = Arc::new(Rooms::new(Arc::default()));
        let backend = MemoryBackend::new(rooms.clone(), 10);
        let chat = ChatId::new("room").expect("chat");
        let (closer, close_rx) = Closer::new();
        let bob = joined(&rooms, &backend, "bob", 8, closer).await;
        let alice = joined(&rooms, &backend, "alice", 8, Closer::new().0).await;
        rooms.deliver(&chat, &message(1));
        let removed = ChatEvent::MemberRemoved {
            user_id: UserId::new("bob").expect("id"),
        };
        rooms.deliver(&chat, &removed);
        assert_eq!(*close_rx.borrow(), Some(CloseCode::Forbidden));
        rooms.deliver(&chat, &message(2));
        rooms.deliver(&chat, &typing("alice"));
        let seqs = |h: &ConnHandle| taken(h).iter().map(|o| o.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&bob), [Some(Seq(1))], "only what came before the removal");
        assert_eq!(seqs(&alice), [Some(Seq(1)), Some(Seq(2)), None]);
        assert_eq!(
            rooms.local_members(),
            [(
                chat,
                vec![UserId::new("alice").expect("id"), UserId::new("bob").expect("id")]
            )],
            "still in the hub until the connection leaves"
        );
    }

    #[tokio::test]
    async fn an_event_is_encoded_once_and_shared_by_every_queue() {
        let rooms = Arc::new(Rooms::new(Arc::default()));
        let backend = MemoryBackend::new(rooms.clone(), 10);
        let chat = ChatId::new("room").expect("chat");
        let alice = joined(&rooms, &backend, "alice", 4, Closer::new().0).await;
        let bob = joined(&rooms, &backend, "bob", 4, Closer::new().0).await;
        rooms.deliver(&chat, &message(1));
        let a = taken(&alice)[0].text.clone();
        let b = taken(&bob)[0].text.clone();
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr(), "one buffer, two queues");
    }
}
