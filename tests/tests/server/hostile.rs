//! Hostile input that must neither crash a connection task nor leave state behind:
//! extreme query values on the WebSocket and the history API, frames that are not UTF-8
//! or break the WebSocket protocol, and endpoints that must not exist outside dev mode.

use hablar_protocol::events::ServerEvent;
use hablar_tests::client::Client;
use hablar_tests::{backend_tests, tokens, Backend, TestServer};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

backend_tests!(
    a_resume_from_an_absurd_since_is_not_recovered_and_presence_stays_right,
    history_survives_extreme_before_and_limit_values,
    the_dev_token_endpoint_does_not_exist_outside_dev_mode,
    the_hub_forgets_chats_once_their_last_connection_leaves,
    a_text_frame_that_is_not_utf8_closes_with_1007,
    a_frame_that_breaks_the_websocket_protocol_closes_with_1002,
);

async fn a_resume_from_an_absurd_since_is_not_recovered_and_presence_stays_right(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut bob = server.join("room", "bob").await;
    let token = tokens::token("alice");
    let mut first = server.connect("room", &token).await;
    let epoch = first.ready().await.epoch;
    bob.recv_until(|e| matches!(e, ServerEvent::PresenceJoin(_)))
        .await;
    first.close().await;
    bob.recv_until(|e| matches!(e, ServerEvent::PresenceLeave(_)))
        .await;
    for since in ["18446744073709551615", "18446744073709551614"] {
        let resume = format!("&since={since}&epoch={epoch}");
        let mut alice = Client::connect(&server.ws_url("room", &token, &resume))
            .await
            .expect("handshake");
        let ready = alice.ready().await;
        assert!(
            !ready.recovered,
            "a seq from the future cannot be resumed ({since})"
        );
        assert_eq!(ready.last_seq.0, 0);
        bob.recv_until(|e| matches!(e, ServerEvent::PresenceJoin(_)))
            .await;
        alice.close().await;
        // Had the task died, alice would stay online for ever.
        bob.recv_until(|e| matches!(e, ServerEvent::PresenceLeave(_)))
            .await;
    }
    let mut alice = server.join("room", "alice").await;
    alice
        .send_json(&json!({"type": "new_message", "message": {"content": "still here"}}))
        .await;
    alice
        .recv_until(|e| matches!(e, ServerEvent::NewMessage { .. }))
        .await;
}

async fn history_survives_extreme_before_and_limit_values(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice"]).await;
    let mut alice = server.join("room", "alice").await;
    for text in ["one", "two", "three"] {
        alice
            .send_json(&json!({"type": "new_message", "message": {"content": text}}))
            .await;
        alice
            .recv_until(|e| matches!(e, ServerEvent::NewMessage { .. }))
            .await;
    }
    let token = tokens::token("alice");
    let contents = |body: &serde_json::Value| -> Vec<String> {
        body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| m["content"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (query, status, expected) in [
        ("?before=0", 200, vec![]),
        ("?before=1", 200, vec![]),
        ("?before=18446744073709551615", 200, vec!["one", "two", "three"]),
        ("?before=18446744073709551616", 400, vec![]),
        ("?before=-1", 400, vec![]),
        ("?limit=0", 200, vec!["three"]),
        ("?limit=-1", 400, vec![]),
        ("?limit=4294967295", 200, vec!["one", "two", "three"]),
        ("?limit=99999999999999999999", 400, vec![]),
        ("?since=18446744073709551615", 200, vec!["one", "two", "three"]),
    ] {
        let (got, body) = server.history("room", &token, query).await;
        assert_eq!(got, status, "{query}");
        if status == 200 {
            assert_eq!(contents(&body), expected, "{query}");
        }
    }
    // The server is still serving.
    let (ok, _) = server.history("room", &token, "").await;
    assert_eq!(ok, 200);
}

async fn the_dev_token_endpoint_does_not_exist_outside_dev_mode(backend: Backend) {
    let server = TestServer::start(backend).await;
    let res = server
        .http
        .post(format!("{}/api/dev/token", server.http_url()))
        .json(&json!({"user_id": "alice"}))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 404, "no tokens for anyone outside dev mode");
    let body = res.text().await.unwrap_or_default();
    assert!(!body.contains("token"), "{body}");
}

async fn the_hub_forgets_chats_once_their_last_connection_leaves(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.limits.connect_burst = 100).await;
    // Churn through many distinct chats: each must not leave a room behind.
    for i in 0..30 {
        let chat = format!("churn-{i}");
        server.create_chat(&chat, &["alice", "bob"]).await;
        let alice = server.join(&chat, "alice").await;
        let bob = server.join(&chat, "bob").await;
        alice.close().await;
        drop(bob); // gone without a close frame
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let rooms = server.metric("hablar_rooms").await;
        if rooms == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{rooms} rooms kept after every connection left"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A chat joined again after its room went works as before, live events included.
    let mut alice = server.join("churn-0", "alice").await;
    let mut bob = server.join("churn-0", "bob").await;
    assert_eq!(server.metric("hablar_rooms").await, 1.0);
    bob.send_json(&json!({"type": "new_message", "message": {"content": "back"}}))
        .await;
    let ServerEvent::NewMessage { message } = alice
        .recv_until(|e| matches!(e, ServerEvent::NewMessage { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(message.content, "back");
}

async fn a_text_frame_that_is_not_utf8_closes_with_1007(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut alice = server.join("room", "alice").await;
    let mut bob = server.join("room", "bob").await;
    let not_utf8 = Frame::message(vec![b'"', 0xff, 0xfe, b'"'], OpCode::Data(Data::Text), true);
    alice.send(Message::Frame(not_utf8)).await.expect("send");
    assert_eq!(alice.expect_close().await, 1007, "invalid frame payload data");
    // Only that connection ends.
    bob.send_json(&json!({"type": "ping", "id": 1})).await;
    bob.recv_until(|e| matches!(e, ServerEvent::Pong { .. })).await;
}

async fn a_frame_that_breaks_the_websocket_protocol_closes_with_1002(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut alice = server.join("room", "alice").await;
    let mut bob = server.join("room", "bob").await;
    // A reserved bit set without an extension that defines it (RFC 6455, 5.2).
    let mut reserved = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Text), true);
    reserved.header_mut().rsv1 = true;
    alice.send(Message::Frame(reserved)).await.expect("send");
    assert_eq!(alice.expect_close().await, 1002, "protocol error");
    bob.send_json(&json!({"type": "ping", "id": 1})).await;
    bob.recv_until(|e| matches!(e, ServerEvent::Pong { .. })).await;
}
