//! Removals on Redis take effect on every instance whatever carried them: the admin API's
//! event missed while an instance's pub/sub was cut, a direct `SREM` by the app, and a
//! send racing the removal. The removed member's sockets close with 4403 within the
//! membership check's bound, nothing stored after the removal reaches them, and their
//! sends are refused with the append.

use std::time::Duration;

use hablar_protocol::events::ServerEvent;
use hablar_tests::client::Frame;
use hablar_tests::redis::RedisServer;
use hablar_tests::{tokens, Client, TestServer};
use serde_json::{json, Value};
use tokio::time::Instant;

fn send(content: &str, client_id: &str) -> Value {
    json!({"type": "new_message", "message": {"content": content, "client_id": client_id}})
}

/// Reads `client` until its socket closes, within `within`; fails on any `new_message`
/// (what reached a removed member). Returns the close code and when it came.
async fn close_without_messages(client: &mut Client, within: Duration) -> (u16, Instant) {
    let deadline = Instant::now() + within;
    loop {
        match client
            .next_frame(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Some(Frame::Close(code)) => return (code, Instant::now()),
            Some(Frame::Json(value)) => {
                assert_ne!(value["type"], "new_message", "reached a removed member: {value}");
            }
            None => panic!("no close within {within:?}"),
        }
    }
}

async fn still_open(client: &mut Client) {
    client.send_json(&json!({"type": "ping", "id": "p"})).await;
    loop {
        match client.next_frame(Duration::from_secs(5)).await {
            Some(Frame::Json(value)) if value["type"] == "pong" => return,
            Some(Frame::Json(_)) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}

/// Instance B of two, on one Redis. B talks to Redis as its own ACL user, so that its
/// pub/sub alone can be cut and kept out (revoking channels closes its subscription and
/// refuses a new one) while a removal is published. Its periodic check is far off, so
/// that only the check after its reconnect can close anyone.
async fn instance_with_a_cuttable_pubsub(redis: &RedisServer) -> TestServer {
    redis.command(&["ACL", "SETUSER", "hb", "on", ">pw", "~*", "&*", "+@all"]);
    let as_hb = format!("redis://hb:pw@127.0.0.1:{}/", redis.port());
    redis
        .instance_with(|config| {
            config.redis_url = Some(hablar_server::Secret::new(as_hb));
            config.redis.membership_check_ms = 600_000;
        })
        .await
}

fn cut_pubsub(redis: &RedisServer) {
    redis.command(&["ACL", "SETUSER", "hb", "resetchannels"]);
    redis.command(&["CLIENT", "KILL", "TYPE", "pubsub", "USER", "hb"]);
}

fn restore_pubsub(redis: &RedisServer) {
    redis.command(&["ACL", "SETUSER", "hb", "allchannels"]);
}

/// The admin API's removal is published while B's pub/sub is cut: B never gets the event,
/// and closes bob's socket when its pub/sub is back, within its reconnect backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_published_while_an_instances_pubsub_was_cut_closes_its_sockets_once_back() {
    let redis = RedisServer::start().await;
    let a = redis.instance().await;
    let b = instance_with_a_cuttable_pubsub(&redis).await;
    a.create_chat("room", &["alice", "bob"]).await;
    let mut alice = a.join("room", "alice").await;
    let mut bob = b.join("room", "bob").await;
    cut_pubsub(&redis);
    assert_eq!(a.remove_member("room", "bob").await, 204);
    let back = Instant::now();
    restore_pubsub(&redis);
    // B reconnects within its backoff (200 ms in tests) and checks at once.
    let (code, at) = close_without_messages(&mut bob, Duration::from_secs(5)).await;
    assert_eq!(code, 4403);
    assert!(
        at - back < Duration::from_secs(2),
        "closed {:?} after the pub/sub came back",
        at - back
    );
    let mut again = b.connect("room", &tokens::token("bob")).await;
    assert_eq!(again.expect_close().await, 4403);
    still_open(&mut alice).await;
}

/// After a removal through instance A, nothing stored afterwards reaches bob on
/// instance B, even when B missed the removal and catches the chat's messages up from
/// the stream: its check closes bob first, and the members still get everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_removal_through_instance_a_nothing_stored_afterwards_reaches_bob_on_instance_b() {
    let redis = RedisServer::start().await;
    let a = redis.instance().await;
    let b = instance_with_a_cuttable_pubsub(&redis).await;
    a.create_chat("room", &["alice", "bob", "carol"]).await;
    let mut alice = a.join("room", "alice").await;
    let mut bob = b.join("room", "bob").await;
    let mut carol = b.join("room", "carol").await;
    cut_pubsub(&redis);
    assert_eq!(a.remove_member("room", "bob").await, 204);
    for i in 0..3 {
        alice
            .send_json(&send(&format!("after {i}"), &format!("a{i}")))
            .await;
    }
    for _ in 0..3 {
        alice
            .recv_until(|e| matches!(e, ServerEvent::NewMessage { .. }))
            .await;
    }
    restore_pubsub(&redis);
    let (code, _) = close_without_messages(&mut bob, Duration::from_secs(5)).await;
    assert_eq!(code, 4403);
    let mut got = Vec::new();
    while got.len() < 3 {
        match carol.next_frame(Duration::from_secs(5)).await {
            Some(Frame::Json(v)) if v["type"] == "new_message" => {
                got.push(v["message"]["content"].as_str().unwrap_or_default().to_owned());
            }
            Some(Frame::Json(_)) => {}
            other => panic!("carol lost her socket ({other:?}), got {got:?}"),
        }
    }
    assert_eq!(
        got,
        ["after 0", "after 1", "after 2"],
        "the catch-up still serves members"
    );
}

/// The admin API on instance A closes bob's sockets on instance B at once, through the
/// published event (no periodic check involved), and what alice stores right after
/// never reaches him.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_through_instance_a_closes_the_members_sockets_on_instance_b_at_once() {
    let redis = RedisServer::start().await;
    let no_periodic_check = |config: &mut hablar_server::Config| config.redis.membership_check_ms = 600_000;
    let a = redis.instance_with(no_periodic_check).await;
    let b = redis.instance_with(no_periodic_check).await;
    a.create_chat("room", &["alice", "bob"]).await;
    let mut alice = a.join("room", "alice").await;
    let mut bob = b.join("room", "bob").await;
    let mut bob2 = b.join("room", "bob").await;
    let removed = Instant::now();
    assert_eq!(a.remove_member("room", "bob").await, 204);
    for i in 0..5 {
        alice
            .send_json(&send(&format!("after {i}"), &format!("a{i}")))
            .await;
    }
    for bob in [&mut bob, &mut bob2] {
        let (code, at) = close_without_messages(bob, Duration::from_secs(5)).await;
        assert_eq!(code, 4403);
        assert!(at - removed < Duration::from_secs(1), "took {:?}", at - removed);
    }
    still_open(&mut alice).await;
}

/// A backend that removes a member by writing Redis directly publishes nothing: every
/// instance's periodic check closes the member's sockets within its interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_by_a_direct_srem_is_closed_within_the_membership_check() {
    let redis = RedisServer::start().await;
    let check = |config: &mut hablar_server::Config| config.redis.membership_check_ms = 200;
    let a = redis.instance_with(check).await;
    let b = redis.instance_with(check).await;
    a.create_chat("room", &["alice", "bob"]).await;
    a.create_chat("other", &["bob"]).await;
    let mut alice = a.join("room", "alice").await;
    let mut bob_a = a.join("room", "bob").await;
    let mut bob_b = b.join("room", "bob").await;
    let mut bob_elsewhere = b.join("other", "bob").await;
    let removed = Instant::now();
    assert_eq!(redis.command(&["SREM", "hablar:{room}:members", "bob"]), "1");
    for bob in [&mut bob_a, &mut bob_b] {
        let (code, at) = close_without_messages(bob, Duration::from_secs(5)).await;
        assert_eq!(code, 4403);
        assert!(
            at - removed < Duration::from_millis(1_500),
            "took {:?} with a 200 ms check",
            at - removed
        );
    }
    still_open(&mut alice).await;
    still_open(&mut bob_elsewhere).await;
}

/// A send of a member removed behind the server's back (a direct `SREM`, before any
/// check ran) is refused atomically with the append: the sender's socket closes with
/// 4403, nothing is stored, and nobody receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_send_is_refused_with_4403_and_never_stored_or_delivered() {
    let redis = RedisServer::start().await;
    let server = redis
        .instance_with(|config| config.redis.membership_check_ms = 600_000)
        .await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut alice = server.join("room", "alice").await;
    let mut bob = server.join("room", "bob").await;
    assert_eq!(redis.command(&["SREM", "hablar:{room}:members", "bob"]), "1");
    bob.send_json(&send("sneaky", "b1")).await;
    let (code, _) = close_without_messages(&mut bob, Duration::from_secs(5)).await;
    assert_eq!(code, 4403);
    // Alice's own later message comes back after anything bob's send could have
    // published: it must be the first she gets.
    alice.send_json(&send("after", "a1")).await;
    let first = alice
        .recv_until(|e| matches!(e, ServerEvent::NewMessage { .. }))
        .await;
    assert!(
        matches!(&first, ServerEvent::NewMessage { message } if message.content == "after"),
        "bob's refused send was delivered: {first:?}"
    );
    let (status, page) = server.history("room", &tokens::token("alice"), "").await;
    assert_eq!(status, 200);
    let contents: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(contents, ["after"], "bob's send not stored");
    assert_eq!(redis.command(&["XLEN", "hablar:{room}:messages"]), "1");
}
