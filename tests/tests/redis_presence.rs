//! Presence and per-user connection limits across instances on one real redis-server:
//! through a Redis stall longer than the presence lease (`CLIENT PAUSE`), after a lease
//! was taken from a user who stayed connected, and with a user's connections spread over
//! instances.

use std::time::Duration;

use hablar_protocol::events::ServerEvent;
use hablar_server::Config;
use hablar_tests::client::Frame;
use hablar_tests::redis::RedisServer;
use hablar_tests::{tokens, Client, TestServer};
use tokio::time::Instant;

/// The presence lease of the presence tests, ms: short, so that a stall outlives it.
const LEASE_MS: u64 = 600;
/// How often an instance renews its leases: a third of the lease.
const HEARTBEAT: Duration = Duration::from_millis(LEASE_MS / 3);
/// Scheduling slack on a busy machine, on top of one heartbeat.
const SLACK: Duration = Duration::from_millis(400);

fn short_lease(config: &mut Config) {
    config.redis.presence_ttl_ms = LEASE_MS;
    // Longer than the stall, so that a heartbeat sent during it is answered after it and
    // its instance acts on what the script found: such an answer carried the false leave.
    config.redis.timeout_ms = 5_000;
}

/// The presence events about `user` that `client` gets within `window`: when, and
/// whether it was a join (`true`) or a leave (`false`).
async fn presence_of(client: &mut Client, user: &str, window: Duration) -> Vec<(Instant, bool)> {
    let deadline = Instant::now() + window;
    let mut seen = Vec::new();
    while let Some(frame) = client
        .next_frame(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        let Frame::Json(value) = frame else {
            panic!("closed during the stall: {frame:?}");
        };
        let joined = match value["type"].as_str() {
            Some("presence_join") => true,
            Some("presence_leave") => false,
            _ => continue,
        };
        if value["user_id"] == user {
            seen.push((Instant::now(), joined));
        }
    }
    seen
}

/// `watcher` may have been told that `user` left only if a `presence_join` put them back
/// within one heartbeat, and must end with `user` online.
fn assert_stayed_online(watcher: &str, user: &str, events: &[(Instant, bool)]) {
    for (i, (at, joined)) in events.iter().enumerate() {
        if *joined {
            continue;
        }
        let back = events[i + 1..].iter().find(|(_, joined)| *joined);
        match back {
            Some((back_at, _)) => assert!(
                back_at.duration_since(*at) <= HEARTBEAT + SLACK,
                "{watcher} saw {user} offline for {:?}, longer than a heartbeat",
                back_at.duration_since(*at)
            ),
            None => panic!("{watcher} was told {user} left, and never that {user} is back"),
        }
    }
}

fn online(ready: &hablar_protocol::events::Ready) -> Vec<&str> {
    ready.presence.iter().map(|p| p.user_id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_connected_through_a_redis_stall_longer_than_the_lease_stay_online() {
    let redis = RedisServer::start().await;
    let a = redis.instance_with(short_lease).await;
    let b = redis.instance_with(short_lease).await;
    a.create_chat("room", &["alice", "bob", "carol"]).await;
    let mut alice = a.join("room", "alice").await;
    let mut bob = b.connect("room", &tokens::token("bob")).await;
    assert_eq!(online(&bob.ready().await), ["alice", "bob"]);
    alice
        .recv_until(|e| matches!(e, ServerEvent::PresenceJoin(u) if u.user_id.as_str() == "bob"))
        .await;
    // A few heartbeats in the steady state first.
    tokio::time::sleep(2 * HEARTBEAT).await;

    // Redis answers nobody for 2.5 leases; every lease runs out meanwhile.
    let stall = Duration::from_millis(LEASE_MS * 5 / 2);
    redis.command(&["CLIENT", "PAUSE", &stall.as_millis().to_string(), "ALL"]);
    // Watch through the stall and three leases after it.
    let window = stall + Duration::from_millis(3 * LEASE_MS);
    let (bob_saw, alice_saw) = tokio::join!(
        presence_of(&mut bob, "alice", window),
        presence_of(&mut alice, "bob", window),
    );
    assert_stayed_online("bob", "alice", &bob_saw);
    assert_stayed_online("alice", "bob", &alice_saw);

    let mut carol = b.connect("room", &tokens::token("carol")).await;
    assert_eq!(
        online(&carol.ready().await),
        ["alice", "bob", "carol"],
        "a new connection after the stall sees everyone still connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_lease_another_instance_removed_is_announced_back_within_a_heartbeat() {
    let redis = RedisServer::start().await;
    let a = redis.instance_with(short_lease).await;
    let b = redis.instance_with(short_lease).await;
    a.create_chat("room", &["alice", "bob"]).await;
    let mut alice = a.join("room", "alice").await;
    let mut bob = b.join("room", "bob").await;
    alice
        .recv_until(|e| matches!(e, ServerEvent::PresenceJoin(u) if u.user_id.as_str() == "bob"))
        .await;
    // What an instance does that lost touch with A for longer than a lease while B
    // beat on: it removes alice's expired lease and announces her leave.
    let leases = redis.command(&["ZRANGE", "hablar:{room}:presence", "0", "-1"]);
    let lease = leases
        .lines()
        .find(|member| member.ends_with(":alice"))
        .expect("alice's lease");
    redis.command(&["ZREM", "hablar:{room}:presence", lease]);
    redis.command(&["HDEL", "hablar:{room}:presence:names", "alice"]);
    let leave =
        r#"{"kind":"broadcast","event":{"type":"presence_leave","user_id":"alice","username":"alice"}}"#;
    redis.command(&["PUBLISH", "hablar:{room}:events", leave]);

    let (bob_saw, alice_saw) = tokio::join!(
        presence_of(&mut bob, "alice", Duration::from_millis(3 * LEASE_MS)),
        presence_of(&mut alice, "alice", Duration::from_millis(3 * LEASE_MS)),
    );
    assert_eq!(
        bob_saw.iter().map(|(_, joined)| *joined).collect::<Vec<_>>(),
        [false, true],
        "bob is told alice left, then that she is back"
    );
    assert_stayed_online("bob", "alice", &bob_saw);
    assert_stayed_online("alice herself", "alice", &alice_saw);
    let mut bob2 = b.connect("room", &tokens::token("bob")).await;
    assert_eq!(online(&bob2.ready().await), ["alice", "bob"]);
}

/// At most two connections per user, and no handshake rate limit in the way of retries.
fn two_per_user(config: &mut Config) {
    config.limits.max_connections_per_user = 2;
    config.limits.connect_burst = 1_000;
}

/// Connects `user` to `server`, retrying while refused with 4429 (a slot given back
/// elsewhere may take a moment); `None` if still refused after `within`.
async fn admitted_within(server: &TestServer, user: &str, within: Duration) -> Option<Client> {
    let deadline = Instant::now() + within;
    loop {
        let mut client = server.connect("room", &tokens::token(user)).await;
        match client.next_frame(hablar_tests::client::TIMEOUT).await {
            Some(Frame::Json(value)) if value["type"] == "ready" => return Some(client),
            Some(Frame::Close(4429)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(Frame::Close(4429)) => return None,
            other => panic!("expected ready or 4429, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_connection_limit_holds_across_instances() {
    let redis = RedisServer::start().await;
    let a = redis.instance_with(two_per_user).await;
    let b = redis.instance_with(two_per_user).await;
    a.create_chat("room", &["alice", "bob"]).await;
    let first = a.join("room", "alice").await;
    let _second = a.join("room", "alice").await;
    let mut third = b.connect("room", &tokens::token("alice")).await;
    assert_eq!(
        third.expect_close().await,
        4429,
        "two on A fill alice's limit on B too"
    );
    let _bob = b.join("room", "bob").await;

    first.close().await;
    let _third = admitted_within(&b, "alice", Duration::from_secs(2))
        .await
        .expect("a connection closed on A frees its slot for B");
    let mut fourth = a.connect("room", &tokens::token("alice")).await;
    assert_eq!(fourth.expect_close().await, 4429, "the one on B counts on A");

    // A graceful shutdown gives A's slot back before it returns: a rolling restart does
    // not lock its users out for a lease.
    a.shutdown().await.expect("shutdown");
    let mut back = b.connect("room", &tokens::token("alice")).await;
    assert!(
        matches!(back.next_frame(hablar_tests::client::TIMEOUT).await, Some(Frame::Json(v)) if v["type"] == "ready"),
        "the slot of a connection closed by a shutdown is free at once"
    );
}
