//! A message's pass-through fields: nesting depth, the stored size, and identity-looking
//! names, checked over real sockets. Whatever is accepted reaches the other members live.

use std::time::Duration;

use hablar_protocol::events::{parse_client, parse_server, ErrorEvent, ServerEvent};
use hablar_protocol::ErrorCode;
use hablar_tests::client::{Client, Frame};
use hablar_tests::{backend_tests, tokens, Backend, TestServer};
use serde_json::{json, Map, Value};

backend_tests!(
    a_message_nested_at_the_maximum_depth_is_delivered_live,
    a_message_nested_deeper_is_refused_and_not_stored,
    sixty_kib_of_pass_through_fields_are_too_large_and_the_connection_stays_open,
    identity_looking_fields_never_reach_other_members,
);

/// A value whose arrays and objects nest `levels` deep.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!("leaf"), |inner, i| {
        if i % 2 == 0 {
            json!([inner])
        } else {
            json!({ "k": inner })
        }
    })
}

fn with_fields(client_id: &str, fields: Value) -> Value {
    let mut message = json!({"content": "hi", "client_id": client_id});
    if let (Some(message), Value::Object(fields)) = (message.as_object_mut(), fields) {
        message.extend(fields);
    }
    json!({"type": "new_message", "message": message})
}

async fn next_error(client: &mut Client) -> ErrorEvent {
    match client.recv_until(|e| matches!(e, ServerEvent::Error(_))).await {
        ServerEvent::Error(error) => error,
        _ => unreachable!(),
    }
}

/// The next `error` or `new_message` (the echo of a send), `None` if neither comes.
async fn next_error_or_echo(client: &mut Client) -> Option<ServerEvent> {
    let deadline = tokio::time::Instant::now() + hablar_tests::client::TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_frame(left).await? {
            Frame::Json(value) if value["type"] == "error" || value["type"] == "new_message" => {
                return Some(parse_server(&value.to_string()).expect("a server event"));
            }
            Frame::Json(_) => {}
            Frame::Close(code) => panic!("closed with {code}"),
        }
    }
}

/// Alice and Bob in "room", both past each other's presence_join.
async fn alice_and_bob(backend: Backend) -> (TestServer, Client, Client) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut alice = server.join("room", "alice").await;
    let bob = server.join("room", "bob").await;
    alice
        .recv_until(|e| matches!(e, ServerEvent::PresenceJoin(_)))
        .await;
    (server, alice, bob)
}

/// Nothing of alice's reached bob or the history, and her connection still answers.
async fn nothing_stored_and_still_open(server: &TestServer, alice: &mut Client, bob: &mut Client) {
    // Only messages count: presence may be repaired under load meanwhile.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    while let Some(frame) = bob
        .next_frame(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        let is_message = matches!(&frame, Frame::Json(event) if event["type"] == "new_message");
        assert!(!is_message, "a refused message reached bob: {frame:?}");
    }
    let (status, page) = server.history("room", &tokens::token("bob"), "").await;
    assert_eq!(status, 200);
    assert_eq!(page["messages"], json!([]), "nothing was stored");
    alice.send_json(&json!({"type": "ping", "id": 7})).await;
    assert_eq!(alice.recv_json().await, json!({"type": "pong", "id": 7}));
}

async fn a_message_nested_at_the_maximum_depth_is_delivered_live(backend: Backend) {
    let (_server, mut alice, mut bob) = alice_and_bob(backend).await;
    alice
        .send_json(&with_fields("deep-16", json!({ "deep": nested(16) })))
        .await;
    let message = bob.next_message().await;
    assert_eq!(message.extra.get("deep"), Some(&nested(16)));
    let echo = alice.next_message().await;
    assert_eq!(echo.client_id.as_ref().map(|c| c.as_str()), Some("deep-16"));
}

async fn a_message_nested_deeper_is_refused_and_not_stored(backend: Backend) {
    let (server, mut alice, mut bob) = alice_and_bob(backend).await;
    // The deepest frame the protocol's parser reads: the server used to accept it, and the
    // Redis fan-out, which nests it deeper, could not read it back.
    let deepest = (17..200)
        .take_while(|levels| {
            parse_client(&with_fields("x", json!({ "deep": nested(*levels) })).to_string()).is_ok()
        })
        .last()
        .expect("some depth parses");
    for levels in [deepest, 17] {
        let client_id = format!("deep-{levels}");
        alice
            .send_json(&with_fields(&client_id, json!({ "deep": nested(levels) })))
            .await;
        let error = match next_error_or_echo(&mut alice).await {
            Some(ServerEvent::Error(error)) => error,
            Some(echo) => panic!("{levels} levels were accepted: {echo:?}"),
            None => panic!("{levels} levels were neither refused nor delivered: the fan-out dropped them"),
        };
        assert_eq!(
            error.code,
            ErrorCode::InvalidMessage,
            "{levels} levels: {error:?}"
        );
        assert_eq!(
            error.client_id.as_ref().map(|c| c.as_str()),
            Some(client_id.as_str())
        );
        assert!(
            error.detail.contains("`deep` nests deeper than 16 levels"),
            "a clear error: {}",
            error.detail
        );
        nothing_stored_and_still_open(&server, &mut alice, &mut bob).await;
    }
}

async fn sixty_kib_of_pass_through_fields_are_too_large_and_the_connection_stays_open(backend: Backend) {
    let (server, mut alice, mut bob) = alice_and_bob(backend).await;
    let fields: Map<String, Value> = (0..30)
        .map(|i| (format!("field_{i}"), json!("x".repeat(2000))))
        .collect();
    let frame = with_fields("big", Value::Object(fields)).to_string();
    assert!(
        (60_000..64 * 1024).contains(&frame.len()),
        "about 60 KiB, within the frame limit: {}",
        frame.len()
    );
    alice.send_text(&frame).await;
    let error = next_error(&mut alice).await;
    assert_eq!(error.code, ErrorCode::TooLarge, "{error:?}");
    assert_eq!(error.client_id.as_ref().map(|c| c.as_str()), Some("big"));
    nothing_stored_and_still_open(&server, &mut alice, &mut bob).await;
    // What fits is still stored and delivered.
    alice
        .send_json(&with_fields("fits", json!({"field": "x".repeat(2000)})))
        .await;
    assert_eq!(bob.next_message().await.content, "hi");
}

async fn identity_looking_fields_never_reach_other_members(backend: Backend) {
    let (_server, mut alice, mut bob) = alice_and_bob(backend).await;
    alice
        .send_json(&with_fields(
            "spoof",
            json!({
                "sender_id": "bob", "user_id": "bob", "author": {"id": "bob", "username": "Bob"},
                "from": "bob", "displayName": "Bob",
                "meta": {"sender": {"id": "bob", "username": "Bob"}, "note": "x"},
                "reply_to": "m-1",
                "attachments": [{"by": "bob", "url": "https://files.example/a.png"}],
            }),
        ))
        .await;
    let message = bob.next_message().await;
    assert_eq!(message.sender.id.as_str(), "alice");
    assert_eq!(
        Value::Object(message.extra),
        json!({
            "reply_to": "m-1",
            "attachments": [{"url": "https://files.example/a.png"}],
            "meta": {"note": "x"},
        }),
        "only the fields that claim no identity pass on"
    );
    // The sender's echo is the stored message: the same fields.
    let echo = alice.next_message().await;
    assert!(!echo.extra.contains_key("sender_id") && !echo.extra.contains_key("author"));
}
