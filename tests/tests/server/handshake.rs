//! The handshake: tokens, chats, membership and origins are refused as PROTOCOL.md says.

use hablar_tests::client::Client;
use hablar_tests::tokens::{self, access_claims};
use hablar_tests::{backend_tests, Backend, TestServer};
use serde_json::json;
use tokio_tungstenite::tungstenite;

backend_tests!(
    a_member_with_a_valid_token_gets_ready_on_both_paths,
    bad_tokens_are_closed_with_4401,
    a_non_member_is_closed_with_4403,
    an_unknown_chat_is_closed_with_4404,
    a_cross_origin_browser_handshake_is_refused_with_403,
    a_missing_origin_can_be_refused_by_setting,
    a_token_that_expires_mid_session_closes_with_4401,
    leeway_accepts_a_just_expired_token_when_configured,
    too_many_connections_of_one_user_close_with_4429,
    a_reconnect_storm_of_one_user_closes_with_4429,
);

async fn a_reconnect_storm_of_one_user_closes_with_4429(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.limits.connect_burst = 3;
        c.limits.connect_rate_per_sec = 0.1;
    })
    .await;
    server.create_chat("room", &["alice", "bob"]).await;
    for _ in 0..3 {
        server.join("room", "alice").await.close().await;
    }
    let mut storm = server.connect("room", &tokens::token("alice")).await;
    assert_eq!(storm.expect_close().await, 4429);
    server.join("room", "bob").await;
}

async fn a_member_with_a_valid_token_gets_ready_on_both_paths(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice"]).await;
    let token = tokens::token("alice");
    let mut with_slash = server.connect("room", &token).await;
    let ready = with_slash.ready().await;
    assert_eq!(
        (ready.user_id.as_str(), ready.chat_id.as_str()),
        ("alice", "room")
    );
    assert!(ready.recovered);
    assert_eq!(ready.last_seq.0, 0);
    let url = format!("ws://{}/ws/chat/room?token={token}", server.addr);
    let mut without_slash = Client::connect(&url).await.expect("handshake");
    assert_eq!(without_slash.ready().await.chat_id.as_str(), "room");
}

async fn bad_tokens_are_closed_with_4401(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice"]).await;
    let claims = access_claims("alice");
    let mut expired = access_claims("alice");
    expired["exp"] = json!(tokens::now() - 1);
    let mut refresh = access_claims("alice");
    refresh["token_type"] = json!("refresh");
    let mut no_exp = access_claims("alice");
    no_exp.as_object_mut().expect("object").remove("exp");
    let cases = [
        ("wrong signature", tokens::hs256_with_key(&claims, b"not-the-key")),
        ("alg none", tokens::alg_none(&claims)),
        ("HS512", tokens::hs512(&claims)),
        (
            "RS256 header",
            tokens::with_header(r#"{"alg":"RS256","typ":"JWT"}"#, &claims),
        ),
        ("refresh token", tokens::hs256(&refresh)),
        ("expired", tokens::hs256(&expired)),
        ("no exp", tokens::hs256(&no_exp)),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (case, token) in cases {
        let mut client = server.connect("room", &token).await;
        assert_eq!(client.expect_close().await, 4401, "{case}");
    }
    let url = format!("ws://{}/ws/chat/room/", server.addr);
    let mut missing = Client::connect(&url).await.expect("handshake");
    assert_eq!(missing.expect_close().await, 4401, "missing token");
    assert!(server.metric("hablar_closes_total{code=\"4401\"}").await >= 9.0);
}

async fn a_non_member_is_closed_with_4403(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice"]).await;
    let mut mallory = server.connect("room", &tokens::token("mallory")).await;
    assert_eq!(mallory.expect_close().await, 4403);
}

async fn an_unknown_chat_is_closed_with_4404(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.connect("nowhere", &tokens::token("alice")).await;
    assert_eq!(client.expect_close().await, 4404);
    let url = format!(
        "ws://{}/ws/chat/bad%20id/?token={}",
        server.addr,
        tokens::token("alice")
    );
    let mut client = Client::connect(&url).await.expect("handshake");
    assert_eq!(client.expect_close().await, 4404, "an invalid chat id is no chat");
}

async fn a_cross_origin_browser_handshake_is_refused_with_403(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.allowed_origins = vec!["https://chat.example".into()];
    })
    .await;
    server.create_chat("room", &["alice"]).await;
    let url = server.ws_url("room", &tokens::token("alice"), "");
    match Client::connect_with_origin(&url, Some("https://evil.example")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        Err(other) => panic!("expected HTTP 403, got {other}"),
        Ok(_) => panic!("a foreign origin was upgraded"),
    }
    let mut allowed = Client::connect_with_origin(&url, Some("https://chat.example"))
        .await
        .expect("allowed origin");
    allowed.ready().await;
    let mut no_origin = Client::connect(&url)
        .await
        .expect("no origin is allowed by default");
    no_origin.ready().await;
}

async fn a_missing_origin_can_be_refused_by_setting(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.allowed_origins = vec!["https://chat.example".into()];
        c.refuse_missing_origin = true;
    })
    .await;
    server.create_chat("room", &["alice"]).await;
    let url = server.ws_url("room", &tokens::token("alice"), "");
    match Client::connect(&url).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        Err(other) => panic!("expected HTTP 403, got {other}"),
        Ok(_) => panic!("a handshake without Origin was upgraded"),
    }
}

async fn a_token_that_expires_mid_session_closes_with_4401(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice"]).await;
    let mut client = server
        .connect("room", &tokens::token_expiring_in("alice", 1))
        .await;
    client.ready().await;
    assert_eq!(client.expect_close().await, 4401);
}

async fn leeway_accepts_a_just_expired_token_when_configured(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.jwt_leeway_secs = 60).await;
    server.create_chat("room", &["alice"]).await;
    let mut claims = access_claims("alice");
    claims["exp"] = json!(tokens::now() - 5);
    let mut client = server.connect("room", &tokens::hs256(&claims)).await;
    client.ready().await;
}

async fn too_many_connections_of_one_user_close_with_4429(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.limits.max_connections_per_user = 2).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let first = server.join("room", "alice").await;
    let _second = server.join("room", "alice").await;
    let mut third = server.connect("room", &tokens::token("alice")).await;
    assert_eq!(third.expect_close().await, 4429);
    let _bob = server.join("room", "bob").await;
    first.close().await;
    // The slot is given back once the server has seen the close.
    let mut again = None;
    for _ in 0..50 {
        let mut client = server.connect("room", &tokens::token("alice")).await;
        match client.next_frame(hablar_tests::client::TIMEOUT).await {
            Some(hablar_tests::client::Frame::Json(_)) => {
                again = Some(client);
                break;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    assert!(again.is_some(), "a closed connection frees its slot");
}
