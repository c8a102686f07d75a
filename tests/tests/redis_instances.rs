//! Several server instances on one real redis-server: members connected to different
//! instances chat as if on one server (one `seq` order, typing, presence, resume,
//! idempotency), and an existing backend can write chats, members and profiles directly.

use std::time::Duration;

use hablar_protocol::events::{Message, ServerEvent};
use hablar_tests::redis::RedisServer;
use hablar_tests::server::no_rate_limit;
use hablar_tests::{tokens, Client, TestServer};
use serde_json::json;

fn send(content: &str, client_id: &str) -> serde_json::Value {
    json!({"type": "new_message", "message": {"content": content, "client_id": client_id}})
}

fn seq(message: &Message) -> u64 {
    message.seq.expect("our server numbers messages").0
}

/// Each member sends `per_member` messages at once; every member must then see all of
/// them, numbered 1..=n without a gap, in the very same order.
async fn everyone_sees_one_order(servers: &[TestServer], users: &[&str], per_member: usize) {
    servers[0].create_chat("room", users).await;
    let mut clients = Vec::new();
    for (server, user) in servers.iter().cycle().zip(users) {
        clients.push(server.join("room", user).await);
    }
    for (client, user) in clients.iter_mut().zip(users) {
        for i in 0..per_member {
            client
                .send_json(&send(&format!("{user} {i}"), &format!("{user}-{i}")))
                .await;
        }
    }
    let total = per_member * users.len();
    let mut orders = Vec::new();
    for client in &mut clients {
        let mut order = Vec::new();
        for _ in 0..total {
            let message = client.next_message().await;
            order.push((seq(&message), message.id.as_str().to_owned(), message.content));
        }
        orders.push(order);
    }
    let seqs: Vec<u64> = orders[0].iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "gapless, in seq order"
    );
    for (user, order) in users.iter().zip(&orders) {
        assert_eq!(order, &orders[0], "{user} saw another order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_two_instances_see_each_others_messages_in_one_seq_order() {
    let redis = RedisServer::start().await;
    let a = redis.instance_with(no_rate_limit).await;
    let b = redis.instance_with(no_rate_limit).await;
    everyone_sees_one_order(&[a, b], &["alice", "bob"], 25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_three_instances_see_each_others_messages_in_one_seq_order() {
    let redis = RedisServer::start().await;
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(redis.instance_with(no_rate_limit).await);
    }
    everyone_sees_one_order(&servers, &["alice", "bob", "carol"], 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_presence_cross_instances() {
    let redis = RedisServer::start().await;
    let a = redis.instance().await;
    let b = redis.instance().await;
    a.create_chat("room", &["alice", "bob"]).await;
    a.set_display_name("bob", "Bob B.").await;
    let mut alice = a.join("room", "alice").await;
    let mut bob = b.connect("room", &tokens::token("bob")).await;
    let ready = bob.ready().await;
    let online: Vec<&str> = ready.presence.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(online, ["alice", "bob"], "bob on B sees alice on A online");
    match alice.recv_event().await {
        ServerEvent::PresenceJoin(user) => {
            assert_eq!((user.user_id.as_str(), user.username.as_str()), ("bob", "Bob B."))
        }
        other => panic!("expected bob's presence_join, got {other:?}"),
    }
    bob.send_json(&json!({"type": "typing_start"})).await;
    match alice.recv_event().await {
        ServerEvent::TypingStart { user_id, username } => {
            assert_eq!((user_id.as_str(), username.as_str()), ("bob", "Bob B."));
        }
        other => panic!("expected bob's typing_start, got {other:?}"),
    }
    bob.expect_silence(Duration::from_millis(200)).await;
    bob.close().await;
    let left = alice
        .recv_until(|e| matches!(e, ServerEvent::PresenceLeave(_)))
        .await;
    assert!(matches!(left, ServerEvent::PresenceLeave(user) if user.user_id.as_str() == "bob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_instance_a_resumes_on_instance_b_with_exactly_the_missed_messages() {
    let redis = RedisServer::start().await;
    let a = redis.instance().await;
    let b = redis.instance().await;
    a.create_chat("room", &["alice", "bob"]).await;
    let mut alice = a.join("room", "alice").await;
    let mut bob = b.join("room", "bob").await;
    bob.send_json(&send("one", "b1")).await;
    let first = alice.next_message().await;
    let epoch = alice_epoch(&first);
    alice.close().await;
    for (i, text) in ["two", "three", "four"].iter().enumerate() {
        bob.send_json(&send(text, &format!("b{}", i + 2))).await;
    }
    for _ in 0..4 {
        bob.next_message().await;
    }
    let resume = format!("&since={}&epoch={epoch}", seq(&first));
    let mut alice = Client::connect(&b.ws_url("room", &tokens::token("alice"), &resume))
        .await
        .expect("resume on instance B");
    let ready = alice.ready().await;
    assert!(ready.recovered);
    assert_eq!(ready.last_seq.0, 4);
    let mut missed = Vec::new();
    for _ in 0..3 {
        missed.push(alice.next_message().await.content);
    }
    assert_eq!(missed, ["two", "three", "four"]);
    bob.send_json(&send("five", "b5")).await;
    let live = alice.next_message().await;
    assert_eq!((live.content.as_str(), seq(&live)), ("five", 5), "no duplicate");
}

/// The epoch is the part of our message ids before the last `-`.
fn alice_epoch(message: &Message) -> String {
    let (epoch, _) = message
        .id
        .as_str()
        .rsplit_once('-')
        .expect("ids are {epoch}-{seq}");
    epoch.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_client_id_is_stored_once_across_instances() {
    let redis = RedisServer::start().await;
    let a = redis.instance().await;
    let b = redis.instance().await;
    a.create_chat("room", &["alice", "bob"]).await;
    let mut bob = a.join("room", "bob").await;
    let mut alice = a.join("room", "alice").await;
    alice.send_json(&send("hello", "c1")).await;
    let stored = alice.next_message().await;
    assert_eq!(bob.next_message().await, stored);
    alice.close().await;
    // The SDK's outbox resends after a reconnect that landed on the other instance.
    let mut alice = b.join("room", "alice").await;
    alice.send_json(&send("hello", "c1")).await;
    let echo = alice.next_message().await;
    assert_eq!(echo, stored, "the sender gets the stored message back");
    // A later message reaches bob after anything the resend could have published.
    alice.send_json(&send("after", "c2")).await;
    let next = bob.next_message().await;
    assert_eq!(
        (next.content.as_str(), seq(&next)),
        ("after", 2),
        "no duplicate before it"
    );
    let (status, page) = b.history("room", &tokens::token("bob"), "").await;
    assert_eq!(status, 200);
    assert_eq!(
        page["messages"].as_array().map(Vec::len),
        Some(2),
        "hello once, then after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_members_and_profiles_written_to_redis_directly_are_used() {
    let redis = RedisServer::start().await;
    // What a Django app would do with redis-py.
    redis.command(&["HSET", "hablar:{team}:meta", "created_at", "2024-01-01T00:00:00Z"]);
    redis.command(&["SADD", "hablar:{team}:members", "alice", "bob"]);
    redis.command(&["HSET", "hablar:user:alice", "display_name", "Alice A."]);
    let a = redis.instance().await;
    let mut bob = a.join("team", "bob").await;
    let mut alice = a.join("team", "alice").await;
    alice.send_json(&send("hi", "c1")).await;
    let message = bob.next_message().await;
    assert_eq!(message.sender.username, "Alice A.");
    assert_eq!(seq(&message), 1);
    let mut mallory = a.connect("team", &tokens::token("mallory")).await;
    assert_eq!(mallory.expect_close().await, 4403);
    // Removing a member directly takes effect at their next connection.
    redis.command(&["SREM", "hablar:{team}:members", "bob"]);
    let mut bob_again = a.connect("team", &tokens::token("bob")).await;
    assert_eq!(bob_again.expect_close().await, 4403);
    assert_eq!(redis.command(&["XLEN", "hablar:{team}:messages"]), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instances_users_go_offline_when_their_lease_runs_out() {
    let redis = RedisServer::start().await;
    let short_lease = |c: &mut hablar_server::Config| c.redis.presence_ttl_ms = 300;
    let b = redis.instance_with(short_lease).await;
    b.create_chat("room", &["bob", "carol"]).await;
    // Carol is online through an instance that then crashed: its lease is never renewed.
    let now_ms: u64 = redis
        .command(&["TIME"])
        .lines()
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .expect("TIME")
        * 1000;
    let expiry = (now_ms + 1_500).to_string();
    redis.command(&["ZADD", "hablar:{room}:presence", &expiry, "crashed:carol"]);
    redis.command(&["HSET", "hablar:{room}:presence:names", "carol", "Carol"]);
    let mut bob = b.connect("room", &tokens::token("bob")).await;
    let ready = bob.ready().await;
    let online: Vec<&str> = ready.presence.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(online, ["bob", "carol"]);
    let left = bob
        .recv_until(|e| matches!(e, ServerEvent::PresenceLeave(_)))
        .await;
    assert!(matches!(left, ServerEvent::PresenceLeave(user) if user.user_id.as_str() == "carol"));
    let mut bob2 = b.connect("room", &tokens::token("bob")).await;
    let online: Vec<String> = bob2
        .ready()
        .await
        .presence
        .iter()
        .map(|p| p.user_id.as_str().to_owned())
        .collect();
    assert_eq!(online, ["bob"]);
}

/// The idempotency bookkeeping is bounded by the retained history: 50 distinct
/// `client_id`s with a retention of 5 leave at most 5 entries (and no per-`client_id`
/// key), while a resend of a retained one is still stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_entries_in_redis_are_bounded_by_the_retention() {
    let redis = RedisServer::start().await;
    let server = redis
        .instance_with(|config| {
            hablar_tests::server::no_rate_limit(config);
            config.limits.history_retention = 5;
        })
        .await;
    server.create_chat("room", &["alice"]).await;
    let mut alice = server.join("room", "alice").await;
    for i in 0..50 {
        alice.send_json(&send(&format!("m{i}"), &format!("k{i}"))).await;
    }
    let mut last = serde_json::Value::Null;
    for _ in 0..50 {
        let value = alice.recv_json().await;
        assert_eq!(value["type"], "new_message");
        last = value;
    }
    assert_eq!(last["message"]["seq"], 50);
    let entries: usize = redis
        .command(&["ZCARD", "hablar:{room}:idem"])
        .parse()
        .expect("a count");
    assert!(entries <= 5, "{entries} idempotency entries for a retention of 5");
    assert_eq!(
        redis.command(&["KEYS", "*idem*"]),
        "hablar:{room}:idem",
        "no key per client_id"
    );
    alice.send_json(&send("m49", "k49")).await;
    assert_eq!(
        alice.recv_json().await,
        last,
        "the resend gets the stored message"
    );
    assert_eq!(
        server.history_seqs("room", "alice").await,
        [46, 47, 48, 49, 50],
        "stored once"
    );
}

/// A rolling deploy: the instance alice is on shuts down gracefully (1012) and a new one
/// takes its place on the same Redis; she resumes there with `recovered: true` and gets
/// what was sent meanwhile, each message exactly once, then live traffic again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_on_redis_closes_with_1012_and_resumes_recovered_with_every_message_once() {
    let redis = RedisServer::start().await;
    let old = redis.instance().await;
    let other = redis.instance().await;
    old.create_chat("room", &["alice", "bob"]).await;
    let mut alice = old.join("room", "alice").await;
    let mut bob = other.join("room", "bob").await;
    bob.send_json(&send("before", "b1")).await;
    let before = alice.next_message().await;
    let epoch = alice_epoch(&before);

    let stopped = tokio::spawn(old.shutdown());
    assert_eq!(alice.expect_close().await, 1012, "a restart, not a failure");
    stopped.await.expect("serve task").expect("a graceful shutdown");
    for (i, text) in ["during 1", "during 2"].iter().enumerate() {
        bob.send_json(&send(text, &format!("b{}", i + 2))).await;
    }
    for _ in 0..3 {
        bob.next_message().await;
    }

    let new = redis.instance().await;
    let resume = format!("&since={}&epoch={epoch}", seq(&before));
    let mut alice = Client::connect(&new.ws_url("room", &tokens::token("alice"), &resume))
        .await
        .expect("resume on the new instance");
    let ready = alice.ready().await;
    assert!(ready.recovered, "the store outlived the instance");
    assert_eq!(ready.last_seq.0, 3);
    let missed = [alice.next_message().await, alice.next_message().await];
    let missed: Vec<(u64, &str)> = missed.iter().map(|m| (seq(m), m.content.as_str())).collect();
    assert_eq!(missed, [(2, "during 1"), (3, "during 2")]);
    // The next message is the live one: nothing missed came twice.
    bob.send_json(&send("after", "b4")).await;
    let live = alice.next_message().await;
    assert_eq!((seq(&live), live.content.as_str()), (4, "after"), "no duplicate");
}
