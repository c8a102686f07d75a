//! Membership through the admin API, and what it does to open sockets.

use hablar_tests::server::ADMIN_KEY;
use hablar_tests::{backend_tests, tokens, Backend, TestServer};
use serde_json::json;

backend_tests!(
    removing_a_member_closes_their_sockets_in_that_chat_with_4403,
    the_admin_api_needs_the_admin_key,
    the_admin_api_reports_missing_chats_and_members,
);

async fn removing_a_member_closes_their_sockets_in_that_chat_with_4403(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice", "bob"]).await;
    server.create_chat("other", &["bob"]).await;
    let mut alice = server.join("room", "alice").await;
    let mut bob1 = server.join("room", "bob").await;
    let mut bob2 = server.join("room", "bob").await;
    let mut bob_elsewhere = server.join("other", "bob").await;
    assert_eq!(server.remove_member("room", "bob").await, 204);
    assert_eq!(bob1.expect_close().await, 4403);
    assert_eq!(bob2.expect_close().await, 4403);
    let leave = alice
        .recv_until(|e| matches!(e, hablar_protocol::events::ServerEvent::PresenceLeave(_)))
        .await;
    assert!(
        matches!(leave, hablar_protocol::events::ServerEvent::PresenceLeave(u) if u.user_id.as_str() == "bob")
    );
    // bob's other chat and alice are untouched.
    bob_elsewhere.send_json(&json!({"type": "ping", "id": 1})).await;
    assert_eq!(bob_elsewhere.recv_json().await, json!({"type": "pong", "id": 1}));
    alice.send_json(&json!({"type": "ping", "id": 2})).await;
    assert_eq!(alice.recv_json().await, json!({"type": "pong", "id": 2}));
    let mut again = server.connect("room", &tokens::token("bob")).await;
    assert_eq!(again.expect_close().await, 4403);
}

async fn the_admin_api_needs_the_admin_key(backend: Backend) {
    let server = TestServer::start(backend).await;
    let url = format!("{}/api/admin/chats/room", server.http_url());
    let none = server.http.put(&url).send().await.expect("request");
    assert_eq!(none.status(), 401);
    let wrong = server
        .http
        .put(&url)
        .bearer_auth("guess")
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status(), 401);
    let user_token = server
        .http
        .put(&url)
        .bearer_auth(tokens::token("alice"))
        .send()
        .await
        .expect("request");
    assert_eq!(user_token.status(), 401, "a user's JWT is not the admin key");
    let created = server
        .http
        .put(&url)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(created.status(), 201);
    let again = server
        .http
        .put(&url)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(again.status(), 200, "putting a chat twice is idempotent");

    // Every admin route checks the key before anything else, body included.
    let base = server.http_url();
    let member = format!("{base}/api/admin/chats/room/members/mallory");
    let user = format!("{base}/api/admin/users/mallory");
    let requests = [
        server.http.put(&member),
        server.http.delete(&member),
        server.http.put(&user),
        server.http.put(&user).body("{not json"),
        server
            .http
            .put(&user)
            .json(&serde_json::json!({"display_name": "Owned"})),
    ];
    for request in requests {
        for key in [None, Some("guess"), Some("")] {
            let request = request.try_clone().expect("clonable request");
            let request = match key {
                Some(key) => request.bearer_auth(key),
                None => request,
            };
            let res = request.send().await.expect("request");
            assert_eq!(res.status(), 401, "{} {key:?}", res.url());
        }
    }
    let mut mallory = server.connect("room", &tokens::token("mallory")).await;
    assert_eq!(mallory.expect_close().await, 4403, "mallory was not added");
    let bad_body = server
        .http
        .put(&user)
        .bearer_auth(ADMIN_KEY)
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(
        bad_body.status(),
        400,
        "with the key, a bad body is a bad request"
    );
}

async fn the_admin_api_reports_missing_chats_and_members(backend: Backend) {
    let server = TestServer::start(backend).await;
    let url = format!("{}/api/admin/chats/nowhere/members/alice", server.http_url());
    let res = server
        .http
        .put(&url)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 404);
    server.create_chat("room", &[]).await;
    assert_eq!(server.remove_member("room", "alice").await, 404);
    let bad = format!("{}/api/admin/chats/bad%20id", server.http_url());
    let res = server
        .http
        .put(&bad)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 400);
    let user = format!("{}/api/admin/users/alice", server.http_url());
    let res = server
        .http
        .put(&user)
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"display_name": "  "}))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 400);
}
