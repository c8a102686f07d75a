//! Display names are cleaned wherever they come from (token claims, the admin API, the
//! store) and shown cleaned everywhere: presence, typing and a message's sender.

use hablar_protocol::events::ServerEvent;
use hablar_tests::client::Client;
use hablar_tests::server::ADMIN_KEY;
use hablar_tests::{backend_tests, tokens, Backend, TestServer};
use serde_json::json;

backend_tests!(
    a_display_name_claim_is_shown_cleaned_and_cut_everywhere,
    a_display_name_from_the_admin_api_is_stored_cleaned_and_cut,
);

/// A name with a right-to-left override, a bell and 500 more characters.
fn hostile_name() -> String {
    format!("\u{202E}evil\u{0007}{}", "é".repeat(500))
}

/// What every member must see of [`hostile_name`]: 64 characters, nothing invisible.
fn cleaned_name() -> String {
    format!("evil{}", "é".repeat(60))
}

/// Eve joins `chat` (a new one, where bob already is) with `token`, and every place her
/// name shows shows `expected`: her own `ready.presence`, bob's `presence_join`, carol's
/// `ready.presence`, typing, and her message's sender.
async fn eve_is_shown_as(server: &TestServer, chat: &str, token: &str, expected: &str) {
    server.create_chat(chat, &["eve", "bob", "carol"]).await;
    let mut bob = server.join(chat, "bob").await;
    let mut eve = server.connect(chat, token).await;
    let ready = eve.ready().await;
    let me = ready.presence.iter().find(|p| p.user_id.as_str() == "eve");
    assert_eq!(
        me.map(|p| p.username.as_str()),
        Some(expected),
        "eve's own ready.presence"
    );
    let joined = bob
        .recv_until(|e| matches!(e, ServerEvent::PresenceJoin(_)))
        .await;
    let ServerEvent::PresenceJoin(joined) = joined else {
        unreachable!()
    };
    assert_eq!(
        (joined.user_id.as_str(), joined.username.as_str()),
        ("eve", expected)
    );
    let carol: Client = {
        let mut carol = server.connect(chat, &tokens::token("carol")).await;
        let ready = carol.ready().await;
        let eve = ready.presence.iter().find(|p| p.user_id.as_str() == "eve");
        assert_eq!(
            eve.map(|p| p.username.as_str()),
            Some(expected),
            "carol's ready.presence"
        );
        carol
    };
    eve.send_json(&json!({"type": "typing_start"})).await;
    let typing = bob
        .recv_until(|e| matches!(e, ServerEvent::TypingStart { .. }))
        .await;
    assert_eq!(
        typing,
        ServerEvent::TypingStart {
            user_id: "eve".parse().expect("id"),
            username: expected.into()
        }
    );
    eve.send_json(&json!({"type": "new_message", "message": {"content": "hi"}}))
        .await;
    let message = bob
        .recv_until(|e| matches!(e, ServerEvent::NewMessage { .. }))
        .await;
    let ServerEvent::NewMessage { message } = message else {
        unreachable!()
    };
    assert_eq!(message.sender.username, expected);
    for client in [bob, eve, carol] {
        client.close().await;
    }
}

async fn a_display_name_claim_is_shown_cleaned_and_cut_everywhere(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut claims = tokens::access_claims("eve");
    claims["display_name"] = json!(hostile_name());
    eve_is_shown_as(&server, "room1", &tokens::hs256(&claims), &cleaned_name()).await;
    // A display name with nothing visible left falls back to the username claim.
    let mut claims = tokens::access_claims("eve");
    claims["display_name"] = json!("\u{200B}\u{202E} \n");
    claims["username"] = json!(" \u{2066}eve.k\u{2069} ");
    eve_is_shown_as(&server, "room2", &tokens::hs256(&claims), "eve.k").await;
}

async fn a_display_name_from_the_admin_api_is_stored_cleaned_and_cut(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.set_display_name("eve", &hostile_name()).await;
    eve_is_shown_as(&server, "room3", &tokens::token("eve"), &cleaned_name()).await;
    // A name with nothing visible is refused, and the stored one stays.
    let res = server
        .http
        .put(format!("{}/api/admin/users/eve", server.http_url()))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"display_name": "\u{202E}\u{200B}\u{0007} "}))
        .send()
        .await
        .expect("admin put user");
    assert_eq!(res.status(), 400);
    eve_is_shown_as(&server, "room4", &tokens::token("eve"), &cleaned_name()).await;
    // A backend that writes the profile into Redis itself is cleaned as read.
    if let Some(redis) = &server.redis {
        redis.command(&["HSET", "hablar:user:eve", "display_name", &hostile_name()]);
        eve_is_shown_as(&server, "room5", &tokens::token("eve"), &cleaned_name()).await;
    }
}
