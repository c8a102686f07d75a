//! Fan-out: typing and messages reach the other members with the exact base-layer JSON.

use std::time::Duration;

use hablar_protocol::events::ServerEvent;
use hablar_tests::server::no_rate_limit;
use hablar_tests::{backend_tests, Backend, Client, TestServer};
use serde_json::json;

backend_tests!(
    typing_reaches_other_members_but_not_the_typer,
    a_message_reaches_every_member_with_server_stamped_fields,
    clients_cannot_spoof_server_owned_fields,
    many_chats_at_once_do_not_leak_into_each_other,
    a_display_name_falls_back_to_token_claims_then_user_id,
    a_burst_from_one_client_is_stored_and_delivered_in_send_order,
    messages_sent_just_before_a_close_are_all_stored,
);

async fn typing_reaches_other_members_but_not_the_typer(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice", "bob"]).await;
    server.set_display_name("alice", "Alice A.").await;
    let mut alice = server.join("room", "alice").await;
    let mut alice_tab2 = server.join("room", "alice").await;
    let mut bob = server.join("room", "bob").await;
    // alice's first tab sees bob join; drain presence events.
    alice
        .recv_until(|e| matches!(e, ServerEvent::PresenceJoin(_)))
        .await;
    alice_tab2
        .recv_until(|e| matches!(e, ServerEvent::PresenceJoin(_)))
        .await;

    alice.send_json(&json!({"type": "typing_start"})).await;
    assert_eq!(
        bob.recv_json().await,
        json!({"type": "typing_start", "user_id": "alice", "username": "Alice A."})
    );
    alice.send_json(&json!({"type": "typing_stop"})).await;
    assert_eq!(
        bob.recv_json().await,
        json!({"type": "typing_stop", "user_id": "alice"})
    );
    // Neither of alice's connections hears her own typing.
    alice.expect_silence(Duration::from_millis(200)).await;
    alice_tab2.expect_silence(Duration::from_millis(50)).await;
}

async fn a_message_reaches_every_member_with_server_stamped_fields(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice", "bob", "carol"]).await;
    server.set_display_name("alice", "Alice").await;
    let mut alice = server.join("room", "alice").await;
    let mut bob = server.join("room", "bob").await;
    let mut carol = server.join("room", "carol").await;

    alice
        .send_json(&json!({"type": "new_message", "message": {"content": "  hello  ", "client_id": "c-1", "reply_to": "x"}}))
        .await;
    let mut seen = Vec::new();
    for client in [&mut alice, &mut bob, &mut carol] {
        let event = client
            .recv_until(|e| matches!(e, ServerEvent::NewMessage { .. }))
            .await;
        let ServerEvent::NewMessage { message } = event else {
            unreachable!()
        };
        seen.push(message);
    }
    assert!(
        seen.iter().all(|m| *m == seen[0]),
        "everyone sees the same message"
    );
    let m = &seen[0];
    let wire = serde_json::to_value(m).expect("json");
    let created_at = wire["created_at"].as_str().expect("created_at").to_owned();
    let id = wire["id"].as_str().expect("id").to_owned();
    assert_eq!(
        wire,
        json!({
            "id": id, "seq": 1, "chat_id": "room", "content": "hello",
            "sender": {"id": "alice", "username": "Alice"},
            "created_at": created_at, "client_id": "c-1", "reply_to": "x",
        })
    );
    assert!(
        created_at.ends_with('Z') && created_at.contains('T'),
        "RFC 3339 UTC: {created_at}"
    );
    alice
        .send_json(&json!({"type": "new_message", "message": {"content": "again"}}))
        .await;
    let ServerEvent::NewMessage { message } = bob.recv_event().await else {
        panic!("message")
    };
    assert_eq!(message.seq.map(|s| s.0), Some(2), "seq goes up by one");
    assert_ne!(message.id.as_str(), id);
}

async fn clients_cannot_spoof_server_owned_fields(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["mallory", "bob"]).await;
    let mut mallory = server.join("room", "mallory").await;
    let mut bob = server.join("room", "bob").await;
    mallory
        .send_json(&json!({"type": "new_message", "message": {
            "content": "I am bob", "id": "fake", "seq": 999, "chat_id": "other",
            "sender": {"id": "bob", "username": "Bob"}, "created_at": "1999-01-01T00:00:00Z",
        }}))
        .await;
    let ServerEvent::NewMessage { message } = bob.recv_event().await else {
        panic!("message")
    };
    assert_eq!(message.sender.id.as_str(), "mallory");
    assert_eq!(message.sender.username, "mallory");
    assert_eq!(message.chat_id.as_str(), "room");
    assert_eq!(message.seq.map(|s| s.0), Some(1));
    assert_ne!(message.id.as_str(), "fake");
    assert_ne!(message.created_at, "1999-01-01T00:00:00Z");
    // A base-layer client's own `id` became its idempotency key.
    assert_eq!(message.client_id.as_ref().map(|c| c.as_str()), Some("fake"));
    assert!(
        message.extra.is_empty(),
        "no server-owned field passes through: {:?}",
        message.extra
    );
    let _ = mallory.recv_event().await;
}

async fn many_chats_at_once_do_not_leak_into_each_other(backend: Backend) {
    let server = TestServer::start(backend).await;
    let chats = ["c0", "c1", "c2", "c3", "c4"];
    for chat in chats {
        server.create_chat(chat, &["alice", "bob"]).await;
    }
    let mut pairs = Vec::new();
    for chat in chats {
        let alice = server.join(chat, "alice").await;
        let bob = server.join(chat, "bob").await;
        pairs.push((chat, alice, bob));
    }
    for (chat, alice, _) in &mut pairs {
        for i in 0..3 {
            alice
                .send_json(&json!({"type": "new_message", "message": {"content": format!("{chat}-{i}")}}))
                .await;
        }
    }
    for (chat, _, bob) in &mut pairs {
        for i in 0..3 {
            let ServerEvent::NewMessage { message } = bob
                .recv_until(|e| matches!(e, ServerEvent::NewMessage { .. }))
                .await
            else {
                unreachable!()
            };
            assert_eq!(message.chat_id.as_str(), *chat);
            assert_eq!(message.content, format!("{chat}-{i}"));
            assert_eq!(message.seq.map(|s| s.0), Some(i + 1), "seq is per chat");
        }
        bob.expect_silence(Duration::from_millis(100)).await;
    }
}

async fn a_display_name_falls_back_to_token_claims_then_user_id(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["42", "u7", "bob"]).await;
    let mut bob = server.join("room", "bob").await;
    let mut claims = hablar_tests::tokens::access_claims(42);
    claims["display_name"] = json!("Forty Two");
    claims["username"] = json!("ft");
    let mut numeric = server
        .connect("room", &hablar_tests::tokens::hs256(&claims))
        .await;
    assert_eq!(
        numeric.ready().await.user_id.as_str(),
        "42",
        "an integer user_id is a string"
    );
    numeric.send_json(&json!({"type": "typing_start"})).await;
    let typing = bob
        .recv_until(|e| matches!(e, ServerEvent::TypingStart { .. }))
        .await;
    assert_eq!(
        typing,
        ServerEvent::TypingStart {
            user_id: "42".parse().expect("id"),
            username: "Forty Two".into()
        }
    );
    let mut claims = hablar_tests::tokens::access_claims("u7");
    claims["username"] = json!("seven");
    let mut seven = server
        .connect("room", &hablar_tests::tokens::hs256(&claims))
        .await;
    seven.ready().await;
    seven.send_json(&json!({"type": "typing_start"})).await;
    let typing = bob
        .recv_until(|e| matches!(e, ServerEvent::TypingStart { .. }))
        .await;
    assert_eq!(
        typing,
        ServerEvent::TypingStart {
            user_id: "u7".parse().expect("id"),
            username: "seven".into()
        }
    );
}

/// A server without rate limit, and alice and bob in "room", bob past alice's join.
async fn alice_and_bob_unthrottled(backend: Backend) -> (TestServer, Client, Client) {
    let server = TestServer::start_with(backend, no_rate_limit).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut bob = server.join("room", "bob").await;
    let alice = server.join("room", "alice").await;
    bob.recv_until(|e| matches!(e, ServerEvent::PresenceJoin(_)))
        .await;
    (server, alice, bob)
}

/// The server pipelines a connection's backend calls (against Redis each is a round
/// trip): a burst must still be numbered and delivered in the order it was sent, and a
/// resend within the burst must be answered as the duplicate it is.
async fn a_burst_from_one_client_is_stored_and_delivered_in_send_order(backend: Backend) {
    const BURST: usize = 200;
    let (_server, mut alice, mut bob) = alice_and_bob_unthrottled(backend).await;
    for i in 0..BURST {
        alice
            .send_json(&json!({"type": "new_message", "message": {"content": format!("m{i}"), "client_id": format!("c-{i}")}}))
            .await;
        if i == BURST / 2 {
            // A resend of an earlier message, in the middle of the burst.
            alice
                .send_json(&json!({"type": "new_message", "message": {"content": "m5", "client_id": "c-5"}}))
                .await;
        }
    }
    let mut delivered = Vec::new();
    while delivered.len() < BURST {
        if let ServerEvent::NewMessage { message } = bob.recv_event().await {
            delivered.push((message.content, message.seq.expect("seq").0));
        }
    }
    let contents: Vec<String> = delivered.iter().map(|(c, _)| c.clone()).collect();
    let sent: Vec<String> = (0..BURST).map(|i| format!("m{i}")).collect();
    assert_eq!(contents, sent, "delivered in the order sent");
    let first = delivered[0].1;
    let seqs: Vec<u64> = delivered.iter().map(|(_, seq)| *seq).collect();
    let expected: Vec<u64> = (first..first + BURST as u64).collect();
    assert_eq!(seqs, expected, "numbered in the order sent, no gap, no duplicate");
    bob.expect_silence(Duration::from_millis(200)).await;

    // alice: her own BURST echoes from the fan-out plus one direct duplicate echo.
    let mut echoes = Vec::new();
    while echoes.len() < BURST + 1 {
        if let ServerEvent::NewMessage { message } = alice.recv_event().await {
            echoes.push((message.content, message.seq.expect("seq").0));
        }
    }
    let duplicates: Vec<&(String, u64)> = echoes.iter().filter(|(c, _)| c == "m5").collect();
    assert_eq!(duplicates.len(), 2, "the original and the duplicate's echo");
    assert_eq!(
        duplicates[0].1, duplicates[1].1,
        "the resend is the stored message"
    );
    assert_eq!(duplicates[0].1, first + 5);
}

/// A client that sends and closes at once: everything it sent before the close frame
/// is stored and reaches the others, even while backend calls are still in flight.
async fn messages_sent_just_before_a_close_are_all_stored(backend: Backend) {
    const SENT: usize = 30;
    let (server, mut alice, mut bob) = alice_and_bob_unthrottled(backend).await;
    for i in 0..SENT {
        alice
            .send_json(&json!({"type": "new_message", "message": {"content": format!("m{i}")}}))
            .await;
    }
    alice.close().await;
    let mut delivered = Vec::new();
    while delivered.len() < SENT {
        match bob.next_frame(Duration::from_secs(5)).await {
            Some(hablar_tests::client::Frame::Json(value)) => {
                if value["type"] == "new_message" {
                    delivered.push(value["message"]["content"].as_str().expect("content").to_owned());
                }
            }
            other => panic!("after {delivered:?}: {other:?}"),
        }
    }
    let sent: Vec<String> = (0..SENT).map(|i| format!("m{i}")).collect();
    assert_eq!(delivered, sent);
    let (status, page) = server
        .history("room", &hablar_tests::tokens::token("bob"), "?limit=100")
        .await;
    assert!(status.is_success());
    assert_eq!(
        page["messages"].as_array().expect("messages").len(),
        SENT,
        "all stored"
    );
}
