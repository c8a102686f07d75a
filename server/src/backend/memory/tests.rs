//! Tests of the in-memory backend, with an injected clock.

use std::sync::Arc;
use std::time::Duration;

use hablar_protocol::events::{MessageParts, PresenceUser};
use hablar_protocol::{ChatId, ClientId, Epoch, Seq, UserId};
use parking_lot::Mutex;
use time::OffsetDateTime;

use super::MemoryBackend;
use crate::backend::{Backend as _, ChatEvent, EventSink, NewMessage};
use crate::error::Error;

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
        parts: MessageParts {
            content: content.into(),
            client_id: client_id.map(|c| ClientId::new(c).expect("client id")),
            extra: Default::default(),
        },
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
