//! Start-up refusals, graceful shutdown, and the no-token-in-logs guarantee.

use hablar_protocol::events::ServerEvent;
use hablar_tests::client::Client;
use hablar_tests::logs::Capture;
use hablar_tests::redis::RedisServer;
use hablar_tests::{backend_tests, tokens, Backend, TestServer};
use serde_json::json;

backend_tests!(
    graceful_shutdown_closes_every_socket_with_1012,
    dev_mode_refuses_a_public_address,
    an_empty_jwt_secret_is_refused_at_start,
);

/// A configuration on `backend` (with a `redis-server` of its own, returned to be kept
/// running, for [`Backend::Redis`]), so that a refusal is shown to come before the
/// backend is used, whichever it is.
async fn config_on(backend: Backend) -> (hablar_server::Config, Option<RedisServer>) {
    let mut config = hablar_server::Config::defaults();
    let redis = match backend {
        Backend::Memory => None,
        Backend::Redis => {
            let redis = RedisServer::start().await;
            redis.configure(&mut config);
            Some(redis)
        }
    };
    config.backend = match backend {
        Backend::Memory => hablar_server::BackendKind::Memory,
        Backend::Redis => hablar_server::BackendKind::Redis,
    };
    (config, redis)
}

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

async fn dev_mode_refuses_a_public_address(backend: Backend) {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let (mut config, _redis) = config_on(backend).await;
    config.dev = true;
    let serve = hablar_server::serve(listener, config, std::future::pending());
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), serve).await;
    assert!(
        matches!(result, Ok(Err(hablar_server::Error::Config(_)))),
        "the server must refuse to start: {result:?}"
    );
}

async fn an_empty_jwt_secret_is_refused_at_start(backend: Backend) {
    // With an empty HMAC key anyone could sign a token for any user.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (mut config, _redis) = config_on(backend).await;
    config.jwt_secret = Some(hablar_server::Secret::new(""));
    let serve = hablar_server::serve(listener, config, std::future::pending());
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), serve).await;
    assert!(
        matches!(result, Ok(Err(hablar_server::Error::Config(_)))),
        "the server must refuse to start: {result:?}"
    );
}

/// Each backend on a runtime of its own, whose logs are captured apart from every other
/// test's.
mod logs_never_contain_a_token {
    use super::*;

    #[test]
    fn memory() {
        Capture::run(|capture| logs_never_contain_a_token(Backend::Memory, capture));
    }

    #[test]
    fn redis() {
        Capture::run(|capture| logs_never_contain_a_token(Backend::Redis, capture));
    }
}

/// A server on a thread and runtime of its own (as a concurrent test's is) refuses a
/// handshake for `chat`, which it logs.
async fn neighbour_refuses(chat: &'static str) {
    let neighbour = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let server = TestServer::start(Backend::Memory).await;
            let mut refused = server.connect(chat, &tokens::token("alice")).await;
            assert_eq!(refused.expect_close().await, 4404, "no such chat");
            server.shutdown().await.expect("the neighbour stops");
        });
    });
    tokio::task::spawn_blocking(move || neighbour.join())
        .await
        .expect("joined")
        .expect("the neighbour ran");
}

async fn logs_never_contain_a_token(backend: Backend, capture: Capture) {
    neighbour_refuses("neighbour-room").await;
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

    let captured = capture.text();
    assert!(
        captured.contains("handshake refused"),
        "the capture works:\n{captured}"
    );
    assert!(
        !captured.contains("neighbour-room"),
        "the capture holds this test's server only"
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
