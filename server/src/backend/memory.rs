//! The embedded in-memory backend: one process, no dependencies, the default. State is
//! lost on restart, which gives every chat a new epoch (clients then reload history).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hablar_protocol::events::{HistoryPage, Message, PresenceUser, Sender, ServerEvent};
use hablar_protocol::{ChatId, ClientId, Epoch, MessageId, Seq, UserId};
use parking_lot::{Mutex, RwLock};
use rand::distr::{Alphanumeric, SampleString as _};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

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

/// One chat's state.
struct Chat {
    /// Members, by user id.
    members: HashSet<UserId>,
    /// Identity of this store; a restart makes a new one.
    epoch: Epoch,
    /// The newest seq (0 when empty).
    last_seq: Seq,
    /// The newest `retention` messages, oldest first.
    messages: VecDeque<Message>,
    /// The seq stored under each idempotency key. Only keys of retained messages are
    /// kept: the echo of a duplicate is the stored message, and a key that outlived its
    /// message would let a flood of distinct `client_id`s grow memory for 24 h past the
    /// retention.
    client_ids: HashMap<(UserId, ClientId), Seq>,
    /// Idempotency keys oldest first (by time and seq), to expire them without scanning.
    client_id_order: VecDeque<(OffsetDateTime, Seq, UserId, ClientId)>,
    /// Online users and their connection counts. Ordered, so `presence` is stable.
    presence: BTreeMap<UserId, (PresenceUser, usize)>,
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

fn new_epoch() -> Epoch {
    Epoch::new(Alphanumeric.sample_string(&mut rand::rng(), 12)).expect("12 alphanumerics are a valid epoch")
}

fn rfc3339(at: OffsetDateTime) -> String {
    // Microseconds, like Django REST framework.
    let at = at.replace_nanosecond(at.nanosecond() / 1000 * 1000).unwrap_or(at);
    at.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

impl Chat {
    fn new() -> Self {
        Self {
            members: HashSet::new(),
            epoch: new_epoch(),
            last_seq: Seq(0),
            messages: VecDeque::new(),
            client_ids: HashMap::new(),
            client_id_order: VecDeque::new(),
            presence: BTreeMap::new(),
        }
    }

    /// Forgets idempotency keys older than `ttl` or whose message left the retention.
    fn expire_client_ids(&mut self, now: OffsetDateTime, ttl: Duration) {
        let oldest = self.oldest_seq();
        while let Some((at, seq, _, _)) = self.client_id_order.front() {
            if now - *at < ttl && *seq >= oldest {
                break;
            }
            if let Some((_, _, user, key)) = self.client_id_order.pop_front() {
                self.client_ids.remove(&(user, key));
            }
        }
    }

    /// The retained message with `seq`.
    fn retained(&self, seq: Seq) -> Option<&Message> {
        let index = seq.0.checked_sub(self.oldest_seq().0)?;
        let message = self.messages.get(usize::try_from(index).ok()?)?;
        (message.seq == Some(seq)).then_some(message)
    }

    fn oldest_seq(&self) -> Seq {
        self.messages
            .front()
            .and_then(|m| m.seq)
            .unwrap_or(self.last_seq.next())
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
        if let Some(client_id) = &message.client_id {
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
            id: MessageId::new(format!("{}-{seq}", state.epoch)).expect("epoch and seq make a short id"),
            seq: Some(seq),
            chat_id: chat.clone(),
            content: message.content,
            sender: Sender {
                id: message.sender.user_id.clone(),
                username: message.sender.username,
            },
            created_at: rfc3339(now),
            client_id: message.client_id.clone(),
            extra: message.extra,
        };
        state.last_seq = seq;
        state.messages.push_back(stored.clone());
        while state.messages.len() > self.retention {
            state.messages.pop_front();
        }
        if let Some(client_id) = message.client_id {
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
        let mut replay = Replay {
            epoch: state.epoch.clone(),
            last_seq: state.last_seq,
            messages: Vec::new(),
            recovered: true,
        };
        let Some(since) = since else {
            return Ok(replay);
        };
        let same_epoch = epoch.is_none_or(|e| *e == state.epoch);
        let missing = state.last_seq.0.saturating_sub(since.0) as usize;
        // The first message the client lacks must still be retained. `since` comes from
        // the client's query and may be `u64::MAX`: no `+ 1` on it may overflow.
        let retained = Seq(since.0.saturating_add(1)) >= state.oldest_seq();
        if !same_epoch || since > state.last_seq || !retained || missing > max {
            replay.recovered = false;
            return Ok(replay);
        }
        replay.messages = state
            .messages
            .iter()
            .filter(|m| m.seq.is_some_and(|seq| seq > since))
            .cloned()
            .collect();
        Ok(replay)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(ChatId, ChatEvent)>>);

    impl EventSink for Recorder {
        fn deliver(&self, chat: &ChatId, event: &ChatEvent) {
            self.0.lock().push((chat.clone(), event.clone()));
        }
    }

    fn ids() -> (ChatId, PresenceUser) {
        let chat = ChatId::new("general").expect("chat");
        let user = PresenceUser {
            user_id: UserId::new("alice").expect("user"),
            username: "Alice".into(),
        };
        (chat, user)
    }

    fn msg(sender: &PresenceUser, content: &str, client_id: Option<&str>) -> NewMessage {
        NewMessage {
            sender: sender.clone(),
            content: content.into(),
            client_id: client_id.map(|c| ClientId::new(c).expect("client id")),
            extra: Default::default(),
        }
    }

    type Now = Arc<Mutex<OffsetDateTime>>;

    fn backend(retention: usize) -> (MemoryBackend, Arc<Recorder>, Now) {
        let sink = Arc::new(Recorder::default());
        let now: Now = Arc::new(Mutex::new(
            OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        ));
        let clock_now = now.clone();
        let b = MemoryBackend::with_clock(sink.clone(), retention, Arc::new(move || *clock_now.lock()));
        (b, sink, now)
    }

    #[tokio::test]
    async fn append_numbers_messages_and_publishes_only_subscribed_chats() {
        let (b, sink, _) = backend(100);
        let (chat, alice) = ids();
        b.create_chat(&chat).await.expect("create");
        b.add_member(&chat, &alice.user_id).await.expect("add");
        let first = b.append(&chat, msg(&alice, "one", None)).await.expect("append");
        assert_eq!(first.message.seq, Some(Seq(1)));
        assert!(sink.0.lock().is_empty(), "not subscribed yet");
        b.subscribe(&chat).await.expect("subscribe");
        let second = b.append(&chat, msg(&alice, "two", None)).await.expect("append");
        assert_eq!(second.message.seq, Some(Seq(2)));
        assert_eq!(sink.0.lock().len(), 1);
        assert!(second.message.created_at.ends_with('Z'));
        assert_ne!(first.message.id, second.message.id);
    }

    #[tokio::test]
    async fn a_client_id_is_stored_once_within_the_retention() {
        let (b, _, now) = backend(100);
        let (chat, alice) = ids();
        b.create_chat(&chat).await.expect("create");
        b.add_member(&chat, &alice.user_id).await.expect("add");
        let a = b
            .append(&chat, msg(&alice, "hi", Some("c1")))
            .await
            .expect("append");
        let again = b
            .append(&chat, msg(&alice, "hi", Some("c1")))
            .await
            .expect("append");
        assert!(again.duplicate);
        assert_eq!(again.message, a.message);
        *now.lock() += Duration::from_secs(24 * 3600);
        let later = b
            .append(&chat, msg(&alice, "hi", Some("c1")))
            .await
            .expect("append");
        assert!(!later.duplicate, "the key expired after 24 h");
        assert_eq!(later.message.seq, Some(Seq(2)));
    }

    #[tokio::test]
    async fn idempotency_keys_do_not_outlive_the_retained_messages() {
        let (b, _, _) = backend(3);
        let (chat, alice) = ids();
        b.create_chat(&chat).await.expect("create");
        b.add_member(&chat, &alice.user_id).await.expect("add");
        for i in 0..1000 {
            let id = format!("c{i}");
            b.append(&chat, msg(&alice, "flood", Some(&id)))
                .await
                .expect("append");
        }
        {
            let state = b.chat(&chat).expect("chat");
            let state = state.lock();
            assert_eq!(state.messages.len(), 3);
            assert!(
                state.client_ids.len() <= 3 && state.client_id_order.len() <= 3,
                "a flood of distinct client_ids is bounded by the retention, not kept 24 h: {}",
                state.client_ids.len()
            );
        }
        let again = b
            .append(&chat, msg(&alice, "flood", Some("c999")))
            .await
            .expect("append");
        assert!(again.duplicate, "a retained message is still deduplicated");
        assert_eq!(again.message.seq, Some(Seq(1000)));
    }

    #[tokio::test]
    async fn replay_serves_the_gap_or_says_it_cannot() {
        let (b, _, _) = backend(3);
        let (chat, alice) = ids();
        b.create_chat(&chat).await.expect("create");
        b.add_member(&chat, &alice.user_id).await.expect("add");
        for i in 0..5 {
            b.append(&chat, msg(&alice, &format!("m{i}"), None))
                .await
                .expect("append");
        }
        let epoch = b.replay(&chat, None, None, 10).await.expect("replay").epoch;
        let r = b
            .replay(&chat, Some(Seq(3)), Some(&epoch), 10)
            .await
            .expect("replay");
        assert!(r.recovered);
        assert_eq!(
            r.messages.iter().filter_map(|m| m.seq).collect::<Vec<_>>(),
            [Seq(4), Seq(5)]
        );
        assert_eq!(r.last_seq, Seq(5));
        let r = b
            .replay(&chat, Some(Seq(2)), Some(&epoch), 10)
            .await
            .expect("replay");
        assert!(r.recovered, "seq 3 is still retained");
        let r = b
            .replay(&chat, Some(Seq(1)), Some(&epoch), 10)
            .await
            .expect("replay");
        assert!(!r.recovered && r.messages.is_empty(), "seq 2 is gone");
        let other = Epoch::new("other").expect("epoch");
        assert!(
            !b.replay(&chat, Some(Seq(4)), Some(&other), 10)
                .await
                .expect("replay")
                .recovered
        );
        assert!(
            !b.replay(&chat, Some(Seq(9)), Some(&epoch), 10)
                .await
                .expect("replay")
                .recovered
        );
        assert!(
            !b.replay(&chat, Some(Seq(2)), Some(&epoch), 2)
                .await
                .expect("replay")
                .recovered
        );
        let r = b
            .replay(&chat, Some(Seq(5)), Some(&epoch), 10)
            .await
            .expect("replay");
        assert!(r.recovered && r.messages.is_empty());
    }

    #[tokio::test]
    async fn history_pages_backwards_oldest_first() {
        let (b, _, _) = backend(100);
        let (chat, alice) = ids();
        b.create_chat(&chat).await.expect("create");
        b.add_member(&chat, &alice.user_id).await.expect("add");
        for i in 1..=5 {
            b.append(&chat, msg(&alice, &format!("m{i}"), None))
                .await
                .expect("append");
        }
        let page = b.history(&chat, None, 2).await.expect("history");
        assert_eq!(
            page.messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>(),
            ["m4", "m5"]
        );
        assert!(page.has_more);
        let page = b.history(&chat, Some(Seq(4)), 10).await.expect("history");
        assert_eq!(page.messages.len(), 3);
        assert!(!page.has_more);
    }

    #[tokio::test]
    async fn presence_counts_connections_per_user() {
        let (b, _, _) = backend(100);
        let (chat, alice) = ids();
        b.create_chat(&chat).await.expect("create");
        b.add_member(&chat, &alice.user_id).await.expect("add");
        assert!(b.presence_join(&chat, &alice).await.expect("join").first);
        let second = b.presence_join(&chat, &alice).await.expect("join");
        assert!(!second.first);
        assert_eq!(second.online, vec![alice.clone()]);
        assert!(!b.presence_leave(&chat, &alice.user_id).await.expect("leave"));
        assert!(b.presence_leave(&chat, &alice.user_id).await.expect("leave"));
    }

    #[tokio::test]
    async fn a_removed_members_send_is_refused_and_neither_stored_nor_published() {
        let (b, sink, _) = backend(100);
        let (chat, alice) = ids();
        b.create_chat(&chat).await.expect("create");
        b.add_member(&chat, &alice.user_id).await.expect("add");
        b.subscribe(&chat).await.expect("subscribe");
        b.append(&chat, msg(&alice, "before", Some("c1")))
            .await
            .expect("a member's send is stored");
        assert!(b.remove_member(&chat, &alice.user_id).await.expect("remove"));
        sink.0.lock().clear();
        for client_id in [None, Some("c1"), Some("c2")] {
            let refused = b.append(&chat, msg(&alice, "after", client_id)).await;
            assert!(
                matches!(refused, Err(Error::NotMember)),
                "{client_id:?}: {refused:?}"
            );
        }
        assert!(sink.0.lock().is_empty(), "nothing published: {:?}", sink.0.lock());
        let page = b.history(&chat, None, 10).await.expect("history");
        let stored: Vec<&str> = page.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(stored, ["before"]);
        let outsider = PresenceUser {
            user_id: UserId::new("mallory").expect("user"),
            username: "Mallory".into(),
        };
        assert!(matches!(
            b.append(&chat, msg(&outsider, "hi", None)).await,
            Err(Error::NotMember)
        ));
    }

    #[tokio::test]
    async fn removing_a_member_publishes_a_control_event() {
        let (b, sink, _) = backend(100);
        let (chat, alice) = ids();
        b.create_chat(&chat).await.expect("create");
        b.subscribe(&chat).await.expect("subscribe");
        assert!(b.add_member(&chat, &alice.user_id).await.expect("add"));
        assert!(b.is_member(&chat, &alice.user_id).await.expect("member"));
        assert!(b.remove_member(&chat, &alice.user_id).await.expect("remove"));
        assert!(!b.is_member(&chat, &alice.user_id).await.expect("member"));
        assert_eq!(
            sink.0.lock()[0].1,
            ChatEvent::MemberRemoved {
                user_id: alice.user_id.clone()
            }
        );
        assert!(!b.remove_member(&chat, &alice.user_id).await.expect("remove"));
    }
}
