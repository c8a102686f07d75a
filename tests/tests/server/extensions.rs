//! Extensions: resume, idempotency, ping, presence, read, errors, the typing lease.

use std::time::Duration;

use hablar_protocol::events::{Message, ServerEvent};
use hablar_protocol::ErrorCode;
use hablar_tests::client::Client;
use hablar_tests::server::no_rate_limit;
use hablar_tests::{backend_tests, tokens, Backend, TestServer};
use serde_json::json;

backend_tests!(
    resume_after_a_disconnect_delivers_exactly_the_missed_messages,
    resume_while_messages_flow_has_no_gap_and_no_duplicate,
    resume_from_another_epoch_is_not_recovered,
    resume_past_the_retained_history_is_not_recovered,
    a_resent_client_id_is_stored_once_and_echoed_to_the_sender,
    idempotency_keys_do_not_outlive_the_retained_messages,
    a_resend_past_the_retained_history_is_stored_as_a_new_message,
    ping_is_answered_with_pong_and_its_id,
    presence_is_per_user_not_per_tab,
    mark_read_is_broadcast_as_read,
    malformed_frames_get_errors_and_the_connection_keeps_working,
    typing_stop_is_sent_when_the_last_connection_closes_while_typing,
    typing_stop_is_sent_when_the_typing_tab_closes_while_another_tab_stays,
);

fn send_message(content: &str) -> serde_json::Value {
    json!({"type": "new_message", "message": {"content": content}})
}

fn seq(message: &Message) -> u64 {
    message.seq.expect("our server numbers messages").0
}

async fn resume_after_a_disconnect_delivers_exactly_the_missed_messages(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut alice = server.connect("room", &tokens::token("alice")).await;
    let ready = alice.ready().await;
    let mut bob = server.join("room", "bob").await;
    bob.send_json(&send_message("one")).await;
    let first = alice.next_message().await;
    alice.close().await;
    for text in ["two", "three", "four"] {
        bob.send_json(&send_message(text)).await;
    }
    for _ in 0..3 {
        bob.next_message().await;
    }
    let resume = format!("&since={}&epoch={}", seq(&first), ready.epoch);
    let mut alice = Client::connect(&server.ws_url("room", &tokens::token("alice"), &resume))
        .await
        .expect("resume");
    let ready = alice.ready().await;
    assert!(ready.recovered);
    assert_eq!(ready.last_seq.0, 4);
    let missed: Vec<String> = [
        alice.next_message().await,
        alice.next_message().await,
        alice.next_message().await,
    ]
    .iter()
    .map(|m| m.content.clone())
    .collect();
    assert_eq!(missed, ["two", "three", "four"]);
    bob.send_json(&send_message("five")).await;
    let live = alice.next_message().await;
    assert_eq!(
        (live.content.as_str(), seq(&live)),
        ("five", 5),
        "live continues without duplicates"
    );
}

async fn resume_while_messages_flow_has_no_gap_and_no_duplicate(backend: Backend) {
    let server = TestServer::start_with(backend, no_rate_limit).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut alice = server.connect("room", &tokens::token("alice")).await;
    let epoch = alice.ready().await.epoch;
    alice.close().await;
    let mut bob = server.join("room", "bob").await;
    const TOTAL: u64 = 200;
    let sender = tokio::spawn(async move {
        for i in 1..=TOTAL {
            bob.send_json(&send_message(&format!("m{i}"))).await;
            if i % 20 == 0 {
                tokio::task::yield_now().await;
            }
        }
        bob
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut alice = Client::connect(&server.ws_url(
        "room",
        &tokens::token("alice"),
        &format!("&since=0&epoch={epoch}"),
    ))
    .await
    .expect("resume");
    assert!(alice.ready().await.recovered);
    let mut seqs = Vec::new();
    while seqs.last() != Some(&TOTAL) {
        seqs.push(seq(&alice.next_message().await));
    }
    assert_eq!(
        seqs,
        (1..=TOTAL).collect::<Vec<_>>(),
        "every message once, in order"
    );
    let _bob = sender.await.expect("sender");
}

async fn resume_from_another_epoch_is_not_recovered(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice"]).await;
    let mut alice = server.join("room", "alice").await;
    alice.send_json(&send_message("hi")).await;
    alice.next_message().await;
    let url = server.ws_url("room", &tokens::token("alice"), "&since=0&epoch=someotherepoch");
    let mut again = Client::connect(&url).await.expect("handshake");
    let ready = again.ready().await;
    assert!(!ready.recovered);
    assert_eq!(ready.last_seq.0, 1);
    again.expect_silence(Duration::from_millis(100)).await;
    let url = server.ws_url("room", &tokens::token("alice"), "&since=banana");
    let mut garbled = Client::connect(&url).await.expect("handshake");
    assert!(!garbled.ready().await.recovered);
}

async fn resume_past_the_retained_history_is_not_recovered(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.limits.history_retention = 3).await;
    server.create_chat("room", &["alice"]).await;
    let mut alice = server.connect("room", &tokens::token("alice")).await;
    let epoch = alice.ready().await.epoch;
    for i in 1..=5 {
        alice.send_json(&send_message(&format!("m{i}"))).await;
        alice.next_message().await;
    }
    let url = server.ws_url(
        "room",
        &tokens::token("alice"),
        &format!("&since=1&epoch={epoch}"),
    );
    let mut lost = Client::connect(&url).await.expect("handshake");
    let ready = lost.ready().await;
    assert!(!ready.recovered, "seq 2 is no longer retained");
    lost.expect_silence(Duration::from_millis(100)).await;
    let url = server.ws_url(
        "room",
        &tokens::token("alice"),
        &format!("&since=2&epoch={epoch}"),
    );
    let mut kept = Client::connect(&url).await.expect("handshake");
    assert!(kept.ready().await.recovered);
    let seqs = [
        seq(&kept.next_message().await),
        seq(&kept.next_message().await),
        seq(&kept.next_message().await),
    ];
    assert_eq!(seqs, [3, 4, 5]);
}

async fn a_resent_client_id_is_stored_once_and_echoed_to_the_sender(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut alice = server.join("room", "alice").await;
    let mut bob = server.join("room", "bob").await;
    let frame = json!({"type": "new_message", "message": {"content": "once", "client_id": "k-1"}});
    alice.send_json(&frame).await;
    let stored = alice.next_message().await;
    alice.send_json(&frame).await;
    let echoed = alice.next_message().await;
    assert_eq!(echoed, stored, "the resend gets the stored message back");
    assert_eq!(bob.next_message().await, stored);
    bob.expect_silence(Duration::from_millis(150)).await;
    let token = tokens::token("alice");
    let (_, page) = server.history("room", &token, "").await;
    assert_eq!(
        page["messages"].as_array().map(Vec::len),
        Some(1),
        "stored once: {page}"
    );
}

/// A flood of distinct `client_id`s with large messages: a resend of a retained one is
/// still answered with the stored message, and (Redis) the idempotency entries are
/// bounded by the retention and hold where the message is, not a copy of it.
async fn idempotency_keys_do_not_outlive_the_retained_messages(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.limits.history_retention = 3).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut alice = server.join("room", "alice").await;
    let mut bob = server.join("room", "bob").await;
    let bulk = "x".repeat(4000);
    let frame = |i: usize| json!({"type": "new_message", "message": {"content": format!("flood {i}"), "client_id": format!("k{i}"), "attachment": bulk}});
    let mut last = None;
    for i in 0..10 {
        alice.send_json(&frame(i)).await;
        last = Some(alice.next_message().await);
        bob.next_message().await;
    }
    let last = last.expect("ten messages");
    alice.send_json(&frame(9)).await;
    let echoed = alice.next_message().await;
    assert_eq!(
        echoed, last,
        "a retained message is still deduplicated, echoed whole"
    );
    bob.expect_silence(Duration::from_millis(150)).await;
    if let Some(redis) = &server.redis {
        assert_eq!(
            redis.command(&["KEYS", "*idem*"]),
            "hablar:{room}:idem",
            "one bounded set per chat, no key per client_id"
        );
        let entries = redis.command(&["ZRANGE", "hablar:{room}:idem", "0", "-1", "WITHSCORES"]);
        let entries: Vec<&str> = entries.lines().collect();
        assert_eq!(
            entries,
            [
                r#"["alice","k7"]"#,
                "8",
                r#"["alice","k8"]"#,
                "9",
                r#"["alice","k9"]"#,
                "10"
            ],
            "the retained messages' client_ids and seqs, not copies of the messages"
        );
    }
}

/// The idempotency window is the retained history on both backends: a resend of a
/// message that left it is stored as a new message (the SDK resends unacknowledged
/// messages within seconds, far inside the retention).
async fn a_resend_past_the_retained_history_is_stored_as_a_new_message(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.limits.history_retention = 3).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut alice = server.join("room", "alice").await;
    let mut bob = server.join("room", "bob").await;
    let first = json!({"type": "new_message", "message": {"content": "first", "client_id": "k-first", "reply_to": "m-0"}});
    alice.send_json(&first).await;
    let stored = alice.next_message().await;
    bob.next_message().await;
    for text in ["two", "three", "four"] {
        alice.send_json(&send_message(text)).await;
        alice.next_message().await;
        bob.next_message().await;
    }
    alice.send_json(&first).await;
    let again = alice.next_message().await;
    assert_eq!(seq(&again), 5, "stored anew");
    assert_eq!(
        (
            again.content.as_str(),
            again.client_id.as_ref().map(|c| c.as_str())
        ),
        ("first", Some("k-first"))
    );
    assert_ne!(again.id, stored.id);
    assert_eq!(bob.next_message().await, again, "and delivered like any message");
    assert_eq!(server.history_seqs("room", "alice").await, [3, 4, 5]);
}

async fn ping_is_answered_with_pong_and_its_id(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice"]).await;
    let mut alice = server.join("room", "alice").await;
    alice.send_json(&json!({"type": "ping", "id": 7})).await;
    assert_eq!(alice.recv_json().await, json!({"type": "pong", "id": 7}));
    alice.send_json(&json!({"type": "ping"})).await;
    assert_eq!(alice.recv_json().await, json!({"type": "pong"}));
}

async fn presence_is_per_user_not_per_tab(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice", "bob"]).await;
    server.set_display_name("bob", "Bob").await;
    let mut alice = server.join("room", "alice").await;
    let mut bob1 = server.connect("room", &tokens::token("bob")).await;
    let ready = bob1.ready().await;
    let online: Vec<&str> = ready.presence.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(online, ["alice", "bob"]);
    assert_eq!(
        alice.recv_json().await,
        json!({"type": "presence_join", "user_id": "bob", "username": "Bob"})
    );
    let bob2 = server.join("room", "bob").await;
    alice.expect_silence(Duration::from_millis(150)).await;
    bob2.close().await;
    alice.expect_silence(Duration::from_millis(150)).await;
    bob1.close().await;
    assert_eq!(
        alice.recv_json().await,
        json!({"type": "presence_leave", "user_id": "bob", "username": "Bob"})
    );
}

async fn mark_read_is_broadcast_as_read(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut bob = server.join("room", "bob").await;
    let mut alice = server.join("room", "alice").await;
    bob.recv_until(|e| matches!(e, ServerEvent::PresenceJoin(_)))
        .await;
    alice
        .send_json(&json!({"type": "mark_read", "up_to": "m-42"}))
        .await;
    assert_eq!(
        bob.recv_json().await,
        json!({"type": "read", "user_id": "alice", "up_to": "m-42"})
    );
}

async fn malformed_frames_get_errors_and_the_connection_keeps_working(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice"]).await;
    let mut alice = server.join("room", "alice").await;
    let long = "x".repeat(4001);
    let cases: [(&str, ErrorCode, Option<&str>); 7] = [
        ("{not json", ErrorCode::BadJson, None),
        ("[1,2]", ErrorCode::BadJson, None),
        (r#"{"type":"dance"}"#, ErrorCode::UnknownType, None),
        (
            r#"{"type":"new_message","message":{"content":"   ","client_id":"e1"}}"#,
            ErrorCode::InvalidMessage,
            Some("e1"),
        ),
        (
            r#"{"type":"new_message","message":{"content":42,"client_id":"e2"}}"#,
            ErrorCode::InvalidMessage,
            Some("e2"),
        ),
        (r#"{"type":"new_message"}"#, ErrorCode::InvalidMessage, None),
        ("", ErrorCode::BadJson, None),
    ];
    for (frame, code, client_id) in cases {
        alice.send_text(frame).await;
        let ServerEvent::Error(error) = alice.recv_event().await else {
            panic!("error for {frame:?}")
        };
        assert_eq!(error.code, code, "{frame:?}");
        assert_eq!(
            error.client_id.as_ref().map(|c| c.as_str()),
            client_id,
            "{frame:?}"
        );
    }
    alice
        .send(tokio_tungstenite::tungstenite::Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send binary");
    let ServerEvent::Error(error) = alice.recv_event().await else {
        panic!("error for a binary frame")
    };
    assert_eq!(error.code, ErrorCode::BadJson);
    let too_long = json!({"type": "new_message", "message": {"content": long, "client_id": "e3"}});
    alice.send_json(&too_long).await;
    let ServerEvent::Error(error) = alice.recv_event().await else {
        panic!("error")
    };
    assert_eq!(error.code, ErrorCode::InvalidMessage);
    let ok = json!({"type": "new_message", "message": {"content": "x".repeat(4000)}});
    alice.send_json(&ok).await;
    assert_eq!(
        alice.next_message().await.content.chars().count(),
        4000,
        "4000 characters are fine"
    );
}

async fn typing_stop_is_sent_when_the_last_connection_closes_while_typing(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut bob = server.join("room", "bob").await;
    let alice = server.join("room", "alice").await;
    let mut alice = alice;
    bob.recv_until(|e| matches!(e, ServerEvent::PresenceJoin(_)))
        .await;
    alice.send_json(&json!({"type": "typing_start"})).await;
    assert!(matches!(bob.recv_event().await, ServerEvent::TypingStart { .. }));
    drop(alice); // the tab dies without a close frame
    assert_eq!(
        bob.recv_json().await,
        json!({"type": "typing_stop", "user_id": "alice"})
    );
    assert!(matches!(bob.recv_event().await, ServerEvent::PresenceLeave(_)));
}

async fn typing_stop_is_sent_when_the_typing_tab_closes_while_another_tab_stays(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut bob = server.join("room", "bob").await;
    let mut typing_tab = server.join("room", "alice").await;
    let idle_tab = server.join("room", "alice").await;
    bob.recv_until(|e| matches!(e, ServerEvent::PresenceJoin(_)))
        .await;
    typing_tab.send_json(&json!({"type": "typing_start"})).await;
    assert!(matches!(bob.recv_event().await, ServerEvent::TypingStart { .. }));
    drop(typing_tab); // the tab dies mid-word without a close frame
    assert_eq!(
        bob.recv_json().await,
        json!({"type": "typing_stop", "user_id": "alice"}),
        "alice's idle tab must not keep her typing"
    );
    bob.expect_silence(Duration::from_millis(300)).await; // still online: no presence_leave
    idle_tab.close().await;
    assert!(matches!(bob.recv_event().await, ServerEvent::PresenceLeave(_)));
}
