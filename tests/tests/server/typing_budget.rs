//! Typing has a budget of its own: a typing flood neither delays nor refuses the
//! sender's messages, and a message flood never silences typing.

use std::time::Duration;

use hablar_protocol::events::ServerEvent;
use hablar_protocol::ErrorCode;
use hablar_tests::{backend_tests, Backend, Client, TestServer};
use serde_json::json;

backend_tests!(
    a_typing_flood_never_refuses_a_message,
    a_message_flood_never_silences_typing,
);

/// Small budgets that barely refill during a test, and an abuse close that comes soon
/// for messages.
fn small_budgets(config: &mut hablar_server::Config) {
    let limits = &mut config.limits;
    limits.rate_per_sec = 0.01;
    limits.rate_burst = 5;
    limits.rate_abuse_close_after = 5;
    limits.typing_rate_per_sec = 0.01;
    limits.typing_burst = 3;
}

async fn room(backend: Backend) -> (TestServer, Client, Client) {
    let server = TestServer::start_with(backend, small_budgets).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let alice = server.join("room", "alice").await;
    let mut bob = server.join("room", "bob").await;
    // bob's own join reaches alice, not bob; alice's join came before bob was there.
    bob.expect_silence(Duration::from_millis(50)).await;
    (server, alice, bob)
}

async fn a_typing_flood_never_refuses_a_message(backend: Backend) {
    let (_server, mut alice, mut bob) = room(backend).await;
    // Ten times the typing budget, and more than the messages' abuse threshold.
    for _ in 0..30 {
        alice.send_json(&json!({"type": "typing_start"})).await;
    }
    alice
        .send_json(&json!({"type": "new_message", "message": {"content": "still heard", "client_id": "m-1"}}))
        .await;
    // The flood is dropped without an answer: alice's next event is her echo.
    let echo = alice
        .recv_until(|e| !matches!(e, ServerEvent::PresenceJoin(_)))
        .await;
    assert!(
        matches!(&echo, ServerEvent::NewMessage { message } if message.content == "still heard"),
        "the message is stored, not refused: {echo:?}"
    );
    let delivered = bob
        .recv_until(|e| !matches!(e, ServerEvent::TypingStart { .. }))
        .await;
    assert!(
        matches!(&delivered, ServerEvent::NewMessage { message } if message.content == "still heard"),
        "the message is delivered: {delivered:?}"
    );
    // Messages keep their whole budget after the flood.
    for i in 2..=5 {
        alice
            .send_json(&json!({"type": "new_message", "message": {"content": format!("m{i}")}}))
            .await;
        let echo = alice.recv_event().await;
        assert!(matches!(echo, ServerEvent::NewMessage { .. }), "{echo:?}");
    }
}

async fn a_message_flood_never_silences_typing(backend: Backend) {
    let (_server, mut alice, mut bob) = room(backend).await;
    for i in 0..9 {
        alice
            .send_json(&json!({"type": "new_message", "message": {"content": format!("m{i}")}}))
            .await;
    }
    // Five stored, four refused: the messages' budget is used up.
    let mut refused = 0;
    let mut stored = 0;
    while refused + stored < 9 {
        match alice.recv_event().await {
            ServerEvent::NewMessage { .. } => stored += 1,
            ServerEvent::Error(error) if error.code == ErrorCode::RateLimited => refused += 1,
            ServerEvent::PresenceJoin(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((stored, refused), (5, 4));
    alice.send_json(&json!({"type": "typing_start"})).await;
    let typing = bob
        .recv_until(|e| !matches!(e, ServerEvent::NewMessage { .. }))
        .await;
    assert!(
        matches!(&typing, ServerEvent::TypingStart { user_id, .. } if user_id.as_str() == "alice"),
        "typing is relayed: {typing:?}"
    );
}
