//! Start-up refusals, graceful shutdown, and the no-token-in-logs guarantee.

use hablar_protocol::events::ServerEvent;
use hablar_tests::client::Client;
use hablar_tests::{backend_tests, logs, tokens, Backend, TestServer};
use serde_json::json;

backend_tests!(
    graceful_shutdown_closes_every_socket_with_1012,
    dev_mode_refuses_a_public_address,
    an_empty_jwt_secret_is_refused_at_start,
    logs_never_contain_a_token,
);

async fn graceful_shutdown_closes_every_socket_with_1012(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice", "bob"]).await;
    let mut alice = server.join("room", "alice").await;
    let mut bob = server.join("room", "bob").await;
    alice
        .send_json(&json!({"type": "new_message", "message": {"content": "last words"}}))
        .await;
    // alice's echo means the message is stored and queued for bob, who has not read yet.
    alice
        .recv_until(|e| matches!(e, ServerEvent::NewMessage { .. }))
        .await;
    let addr = server.addr;
    let stopped = tokio::spawn(server.shutdown());
    assert_eq!(alice.expect_close().await, 1012);
    let in_flight = bob
        .recv_until(|e| matches!(e, ServerEvent::NewMessage { .. }))
        .await;
    assert!(matches!(in_flight, ServerEvent::NewMessage { message } if message.content == "last words"));
    assert_eq!(
        bob.expect_close().await,
        1012,
        "in-flight writes finish before the 1012"
    );
    stopped
        .await
        .expect("serve task")
        .expect("serve returns Ok after a graceful shutdown");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

async fn dev_mode_refuses_a_public_address(_backend: Backend) {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let mut config = hablar_server::Config::defaults();
    config.dev = true;
    let result = hablar_server::serve(listener, config, std::future::pending()).await;
    assert!(
        matches!(result, Err(hablar_server::Error::Config(_))),
        "{result:?}"
    );
}

async fn an_empty_jwt_secret_is_refused_at_start(_backend: Backend) {
    // With an empty HMAC key anyone could sign a token for any user.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = hablar_server::Config::defaults();
    config.jwt_secret = Some(hablar_server::Secret::new(""));
    let serve = hablar_server::serve(listener, config, std::future::pending());
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), serve).await;
    assert!(
        matches!(result, Ok(Err(hablar_server::Error::Config(_)))),
        "the server must refuse to start: {result:?}"
    );
}

async fn logs_never_contain_a_token(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice"]).await;
    // Every path that sees a token: accepted, refused, expired, HTTP bearer, admin key.
    let mut alice = server.connect("room", &tokens::token("alice")).await;
    alice.ready().await;
    alice
        .send_json(&json!({"type": "new_message", "message": {"content": "hi"}}))
        .await;
    alice.recv_event().await;
    let mut bad = server
        .connect(
            "room",
            &tokens::hs256_with_key(&tokens::access_claims("alice"), b"x"),
        )
        .await;
    bad.expect_close().await;
    let mut outsider = server.connect("room", &tokens::token("mallory")).await;
    outsider.expect_close().await;
    let mut nowhere = Client::connect(&server.ws_url("nowhere", &tokens::token("alice"), "&since=1&epoch=e"))
        .await
        .expect("handshake");
    nowhere.expect_close().await;
    // A path that decodes to a newline must not forge a log line.
    let mut forged = Client::connect(&server.ws_url("x%0AFORGED-LOG-LINE", &tokens::token("alice"), ""))
        .await
        .expect("handshake");
    assert_eq!(forged.expect_close().await, 4404);
    let _ = server.history("room", &tokens::token("alice"), "").await;
    let _ = server
        .history("room", &tokens::token_expiring_in("alice", 0), "")
        .await;
    alice.close().await;

    let captured = logs::captured();
    assert!(
        captured.contains("handshake refused"),
        "the capture works:\n{captured}"
    );
    assert!(captured.contains("/ws/chat/room/"), "request paths are logged");
    for token in tokens::all_minted() {
        // The signature alone is a secret too.
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(!captured.contains(&token), "a token was logged");
        assert!(
            signature.len() < 8 || !captured.contains(signature),
            "a token signature was logged"
        );
    }
    assert!(
        !captured.contains(hablar_tests::server::ADMIN_KEY),
        "the admin key was logged"
    );
    assert!(
        captured.contains("FORGED-LOG-LINE") && !captured.contains("\nFORGED-LOG-LINE"),
        "a client's path is logged escaped, never as a line of its own"
    );
    assert!(
        !captured.contains("token="),
        "a query string with a token was logged"
    );
}
