//! Tests of the Redis backend against a `redis-server` of their own: presence races,
//! membership on append, idempotency bounds, connection slots.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hablar_protocol::events::{MessageParts, PresenceUser};
use hablar_protocol::{ChatId, ClientId, Seq, UserId};

use super::presence::beat;
use super::slots::renew_user_slots;
use super::{Inner, RedisBackend, RedisOptions};
use crate::backend::{Backend as _, ChatEvent, EventSink, NewMessage};
use crate::error::Error;
use crate::limits::ConnectionCounter;

/// A `redis-server` of the test's own on a free port (scripts/setup.sh installs it);
/// killed on drop.
struct TestRedis {
    child: std::process::Child,
    port: u16,
}

impl TestRedis {
    async fn start() -> Self {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("redis-server (scripts/setup.sh installs it)");
            for _ in 0..100 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return Self { child, port };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Discard;

impl EventSink for Discard {
    fn deliver(&self, _: &ChatId, _: &ChatEvent) {}
}

fn user(id: &str) -> PresenceUser {
    PresenceUser {
        user_id: UserId::new(id).expect("user"),
        username: id.to_uppercase(),
    }
}

/// A backend whose own heartbeat stays out of the way (one beat every 200 s), so that
/// the test runs its beats itself.
async fn backend_without_heartbeat(redis: &TestRedis) -> RedisBackend {
    let opts = RedisOptions {
        presence_ttl_ms: 600_000,
        ..RedisOptions::default()
    };
    RedisBackend::connect(&redis.url(), Arc::new(Discard), 100, opts)
        .await
        .expect("connect")
}

async fn leases(inner: &Inner, chat: &ChatId) -> (Vec<String>, HashMap<String, String>) {
    use redis::AsyncCommands;
    let mut conn = inner.conn.clone();
    let leases: Vec<String> = conn
        .zrange(inner.keys.presence(chat), 0, -1)
        .await
        .expect("zrange");
    let names: HashMap<String, String> = conn
        .hgetall(inner.keys.presence_names(chat))
        .await
        .expect("hgetall");
    (leases, names)
}

/// The race of a leave with a beat that had already taken its snapshot: the beat used
/// to write the lease back, so she stayed online for a whole lease after leaving and
/// was announced as leaving a second time when it expired.
#[tokio::test]
async fn a_beat_that_saw_a_user_before_she_left_does_not_bring_her_back() {
    let redis = TestRedis::start().await;
    let backend = backend_without_heartbeat(&redis).await;
    let chat = ChatId::new("c").expect("chat");
    let alice = user("alice");
    backend.presence_join(&chat, &alice).await.expect("join");
    // What the heartbeat holds when the beat starts.
    let snapshot = vec![alice.clone()];
    assert!(backend
        .presence_leave(&chat, &alice.user_id)
        .await
        .expect("leave"));
    beat(&backend.inner, &chat, snapshot).await;
    let (leases, names) = leases(&backend.inner, &chat).await;
    assert!(leases.is_empty(), "a lease outlived the leave: {leases:?}");
    assert!(names.is_empty(), "a name outlived the leave: {names:?}");
    let bob = user("bob");
    let joined = backend.presence_join(&chat, &bob).await.expect("join");
    assert_eq!(joined.online, vec![bob]);
}

fn message(sender: &PresenceUser, content: &str, client_id: &str) -> NewMessage {
    NewMessage {
        sender: sender.clone(),
        parts: MessageParts {
            content: content.into(),
            client_id: Some(ClientId::new(client_id).expect("client id")),
            extra: Default::default(),
        },
    }
}

/// The append re-checks membership with the store: a member removed by a direct
/// `SREM` (no event published) can store nothing, whatever the batch holds.
#[tokio::test]
async fn a_removed_members_append_is_refused_with_nothing_stored() {
    use redis::AsyncCommands;
    let redis = TestRedis::start().await;
    let backend = backend_without_heartbeat(&redis).await;
    let chat = ChatId::new("c").expect("chat");
    let alice = user("alice");
    backend.create_chat(&chat).await.expect("create");
    backend.add_member(&chat, &alice.user_id).await.expect("add");
    backend
        .append(&chat, message(&alice, "before", "c1"))
        .await
        .expect("a member's send is stored");
    let mut conn = backend.inner.conn.clone();
    let _: () = conn
        .srem(backend.inner.keys.members(&chat), "alice")
        .await
        .expect("srem");
    let outcomes = backend
        .append_batch(
            &chat,
            vec![message(&alice, "after", "c1"), message(&alice, "after", "c2")],
        )
        .await;
    assert!(
        outcomes.iter().all(|o| matches!(o, Err(Error::NotMember))),
        "{outcomes:?}"
    );
    let page = backend.history(&chat, None, 10).await.expect("history");
    let stored: Vec<&str> = page.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(stored, ["before"]);
}

/// The idempotency entries are trimmed with the stream: a flood of distinct
/// `client_id`s leaves no more of them than the retention, and a retained one still
/// answers a resend with the stored message.
#[tokio::test]
async fn idempotency_entries_are_bounded_by_the_retained_history() {
    use redis::AsyncCommands;
    let redis = TestRedis::start().await;
    let opts = RedisOptions {
        presence_ttl_ms: 600_000,
        ..RedisOptions::default()
    };
    let backend = RedisBackend::connect(&redis.url(), Arc::new(Discard), 5, opts)
        .await
        .expect("connect");
    let chat = ChatId::new("c").expect("chat");
    let alice = user("alice");
    backend.create_chat(&chat).await.expect("create");
    backend.add_member(&chat, &alice.user_id).await.expect("add");
    let mut last = None;
    for i in 0..50 {
        let appended = backend
            .append(&chat, message(&alice, "flood", &format!("k{i}")))
            .await
            .expect("append");
        last = Some(appended.message);
    }
    let mut conn = backend.inner.conn.clone();
    let entries: Vec<(String, u64)> = conn
        .zrange_withscores(backend.inner.keys.idempotency(&chat), 0, -1)
        .await
        .expect("zrange");
    let seqs: Vec<u64> = entries.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(seqs, [46, 47, 48, 49, 50], "the retained messages' entries only");
    let again = backend
        .append(&chat, message(&alice, "flood", "k49"))
        .await
        .expect("append");
    assert!(again.duplicate);
    assert_eq!(Some(again.message), last);
    let fresh = backend
        .append(&chat, message(&alice, "flood", "k0"))
        .await
        .expect("append");
    assert!(!fresh.duplicate, "past the retention a client_id is free again");
    assert_eq!(fresh.message.seq, Some(Seq(51)));
}

/// A crash gives nothing back: the slots of an instance that stops renewing them
/// run out within one lease (`--redis-presence-ttl-ms`), as documented.
#[tokio::test]
async fn a_crashed_instances_connection_slots_run_out_within_a_lease() {
    let redis = TestRedis::start().await;
    let lease = Duration::from_millis(400);
    let opts = RedisOptions {
        presence_ttl_ms: 400,
        ..RedisOptions::default()
    };
    let url = redis.url();
    let connect = || RedisBackend::connect(&url, Arc::new(Discard), 100, opts.clone());
    let crashed = connect().await.expect("connect");
    let other = connect().await.expect("connect");
    let local = Arc::new(ConnectionCounter::default());
    let alice = UserId::new("alice").expect("user");
    for _ in 0..2 {
        let slot = crashed
            .acquire_connection(&local, &alice, 2)
            .await
            .expect("acquire")
            .expect("below the limit");
        // Never given back, as in a crash.
        std::mem::forget(slot);
    }
    // The heartbeat keeps them past their first lease while the instance lives.
    tokio::time::sleep(lease * 2).await;
    assert!(
        other
            .acquire_connection(&local, &alice, 2)
            .await
            .expect("acquire")
            .is_none(),
        "two slots taken on another instance fill the limit"
    );
    // The crash: the heartbeat stops, nothing is released.
    drop(crashed);
    let crashed_at = tokio::time::Instant::now();
    let slot = loop {
        if let Some(slot) = other
            .acquire_connection(&local, &alice, 2)
            .await
            .expect("acquire")
        {
            break slot;
        }
        assert!(
            crashed_at.elapsed() < lease + Duration::from_millis(300),
            "the crashed instance's slots outlived their lease"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let second = other
        .acquire_connection(&local, &alice, 2)
        .await
        .expect("acquire");
    assert!(second.is_some(), "both crashed slots ran out");
    assert!(other
        .acquire_connection(&local, &alice, 2)
        .await
        .expect("acquire")
        .is_none());
    // Given back at once when released.
    slot.release().await;
    assert!(other
        .acquire_connection(&local, &alice, 2)
        .await
        .expect("acquire")
        .is_some());
}

/// The race of a close with a renewal that had already taken its snapshot: the
/// renewal writes back a missing entry, so without taking it back the closed
/// connection would count against the user's limit for a whole lease.
#[tokio::test]
async fn a_renewal_that_saw_a_slot_before_it_was_released_does_not_bring_it_back() {
    use redis::AsyncCommands;
    let redis = TestRedis::start().await;
    let backend = backend_without_heartbeat(&redis).await;
    let local = Arc::new(ConnectionCounter::default());
    let alice = UserId::new("alice").expect("user");
    let slot = backend
        .acquire_connection(&local, &alice, 1)
        .await
        .expect("acquire")
        .expect("below the limit");
    // What the heartbeat holds when the renewal starts.
    let snapshot: Vec<u64> = backend.inner.slots.lock().keys().copied().collect();
    slot.release().await;
    renew_user_slots(&backend.inner, &alice, snapshot).await;
    let mut conn = backend.inner.conn.clone();
    let left: Vec<String> = conn
        .zrange(backend.inner.keys.connections(&alice), 0, -1)
        .await
        .expect("zrange");
    assert!(left.is_empty(), "a released slot outlived its release: {left:?}");
    assert!(backend
        .acquire_connection(&local, &alice, 1)
        .await
        .expect("acquire")
        .is_some());
}

/// What the beat is for still holds: it renews the leases of users still connected,
/// and writes back those Redis lost.
#[tokio::test]
async fn a_beat_writes_back_the_leases_redis_lost_of_users_still_here() {
    use redis::AsyncCommands;
    let redis = TestRedis::start().await;
    let backend = backend_without_heartbeat(&redis).await;
    let chat = ChatId::new("c").expect("chat");
    let (carol, dave) = (user("carol"), user("dave"));
    backend.presence_join(&chat, &carol).await.expect("join");
    backend.presence_join(&chat, &dave).await.expect("join");
    let mut conn = backend.inner.conn.clone();
    let _: () = conn
        .del(&[
            backend.inner.keys.presence(&chat),
            backend.inner.keys.presence_names(&chat),
        ])
        .await
        .expect("del");
    beat(&backend.inner, &chat, vec![carol, dave]).await;
    let (mut leases, names) = leases(&backend.inner, &chat).await;
    leases.sort();
    let instance = &backend.inner.instance;
    assert_eq!(leases, [format!("{instance}:carol"), format!("{instance}:dave")]);
    assert_eq!(names.get("carol").map(String::as_str), Some("CAROL"));
    assert_eq!(names.get("dave").map(String::as_str), Some("DAVE"));
}
