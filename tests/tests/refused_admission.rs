//! A connection refused after admission (a backend error while it takes its presence)
//! gives back only what it took: the user's other connections keep their presence, and
//! nobody is told that the user left.
//!
//! Redis only: the embedded backend cannot fail there. The failure is real: Redis
//! refuses the presence script's `HSET` for a moment (an ACL rule), as it would refuse a
//! write when out of memory or read-only after a failover.

use std::time::Duration;

use hablar_protocol::events::ServerEvent;
use hablar_tests::{tokens, Backend, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_tab_refused_on_presence_does_not_take_the_first_offline() {
    let server = TestServer::start(Backend::Redis).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut bob = server.join("room", "bob").await;
    let _alice = server.join("room", "alice").await;
    let joined = bob
        .recv_until(|e| matches!(e, ServerEvent::PresenceJoin(_)))
        .await;
    assert!(matches!(&joined, ServerEvent::PresenceJoin(u) if u.user_id.as_str() == "alice"));

    let redis = server.redis.as_ref().expect("the server's redis");
    redis.command(&["ACL", "SETUSER", "default", "-hset"]);
    let mut second_tab = server.connect("room", &tokens::token("alice")).await;
    let code = second_tab.expect_close().await;
    redis.command(&["ACL", "SETUSER", "default", "+hset"]);
    assert_eq!(code, 1011, "the second tab is refused as a server error");

    // alice's first tab is still there: nobody hears she left.
    bob.expect_silence(Duration::from_millis(700)).await;
    let mut fresh = server.connect("room", &tokens::token("bob")).await;
    let ready = fresh.ready().await;
    let online: Vec<&str> = ready.presence.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(online, ["alice", "bob"], "alice is still online");
}
