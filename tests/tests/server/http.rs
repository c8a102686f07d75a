//! The HTTP API: history, health, metrics, and dev mode.

use std::time::Duration;

use hablar_protocol::events::HistoryPage;
use hablar_tests::client::Client;
use hablar_tests::{backend_tests, tokens, Backend, TestServer};
use serde_json::json;
use tokio_tungstenite::tungstenite;

backend_tests!(
    history_pages_backwards_oldest_first_for_members_only,
    health_and_metrics_answer,
    dev_mode_seeds_hands_out_tokens_and_answers_loopback_cors,
    has_more_is_false_when_exactly_limit_messages_remain,
    has_more_is_false_when_older_messages_were_trimmed_by_the_retention,
);

/// Sends `count` messages `m1`… as `client` and waits for their echoes.
async fn send_messages(client: &mut Client, count: usize) {
    for i in 1..=count {
        client
            .send_json(&json!({"type": "new_message", "message": {"content": format!("m{i}")}}))
            .await;
    }
    for _ in 1..=count {
        client
            .recv_until(|e| matches!(e, hablar_protocol::events::ServerEvent::NewMessage { .. }))
            .await;
    }
}

/// The page at `query` as (contents, has_more).
async fn page(server: &TestServer, query: &str) -> (Vec<String>, bool) {
    let (status, body) = server.history("room", &tokens::token("alice"), query).await;
    assert_eq!(status, 200, "{query}: {body}");
    let page: HistoryPage = serde_json::from_value(body).expect("a history page");
    let contents = page.messages.into_iter().map(|m| m.content).collect();
    (contents, page.has_more)
}

async fn has_more_is_false_when_exactly_limit_messages_remain(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice"]).await;
    let mut alice = server.join("room", "alice").await;
    send_messages(&mut alice, 4).await;
    assert_eq!(
        page(&server, "?limit=4").await,
        (vec!["m1".into(), "m2".into(), "m3".into(), "m4".into()], false),
        "all four fit: nothing more"
    );
    assert_eq!(
        page(&server, "?limit=3").await,
        (vec!["m2".into(), "m3".into(), "m4".into()], true),
        "one more is older"
    );
    assert_eq!(
        page(&server, "?before=3&limit=2").await,
        (vec!["m1".into(), "m2".into()], false),
        "the two before seq 3 are the first two"
    );
}

async fn has_more_is_false_when_older_messages_were_trimmed_by_the_retention(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.limits.history_retention = 3).await;
    server.create_chat("room", &["alice"]).await;
    let mut alice = server.join("room", "alice").await;
    send_messages(&mut alice, 5).await;
    assert_eq!(
        page(&server, "?limit=10").await,
        (vec!["m3".into(), "m4".into(), "m5".into()], false),
        "m1 and m2 are gone, so there is nothing more to fetch"
    );
    assert_eq!(
        page(&server, "?limit=3").await,
        (vec!["m3".into(), "m4".into(), "m5".into()], false),
        "exactly the retained three"
    );
    assert_eq!(
        page(&server, "?limit=2").await,
        (vec!["m4".into(), "m5".into()], true),
        "m3 is still retained"
    );
    assert_eq!(
        page(&server, "?before=4").await,
        (vec!["m3".into()], false),
        "before the oldest retained, nothing"
    );
}

async fn history_pages_backwards_oldest_first_for_members_only(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.limits.rate_burst = 1000;
    })
    .await;
    server.create_chat("room", &["alice"]).await;
    let mut alice = server.join("room", "alice").await;
    for i in 1..=105 {
        alice
            .send_json(&json!({"type": "new_message", "message": {"content": format!("m{i}")}}))
            .await;
    }
    for _ in 1..=105 {
        alice.recv_event().await;
    }
    let token = tokens::token("alice");
    let (status, body) = server.history("room", &token, "?limit=1000").await;
    assert_eq!(status, 200);
    let page: HistoryPage = serde_json::from_value(body).expect("a history page");
    assert_eq!(page.messages.len(), 100, "limit is capped at 100");
    assert!(page.has_more);
    assert_eq!(page.messages[0].content, "m6", "the newest 100, oldest first");
    assert_eq!(page.messages[99].content, "m105");
    let (_, body) = server.history("room", &token, "?before=6&limit=3").await;
    let page: HistoryPage = serde_json::from_value(body).expect("a history page");
    let contents: Vec<&str> = page.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["m3", "m4", "m5"]);
    assert!(page.has_more);
    let (_, body) = server.history("room", &token, "?before=3").await;
    let page: HistoryPage = serde_json::from_value(body).expect("a history page");
    assert_eq!(page.messages.len(), 2);
    assert!(!page.has_more);

    assert_eq!(server.history("room", &tokens::token("mallory"), "").await.0, 403);
    assert_eq!(server.history("room", "not-a-token", "").await.0, 401);
    assert_eq!(
        server
            .history("room", &tokens::token_expiring_in("alice", 0), "")
            .await
            .0,
        401
    );
    assert_eq!(server.history("nowhere", &token, "").await.0, 404);
    assert_eq!(server.history("room", &token, "?before=abc").await.0, 400);
    let res = server
        .http
        .get(format!("{}/api/chats/room/messages", server.http_url()))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 401, "no bearer token");
}

async fn health_and_metrics_answer(backend: Backend) {
    let server = TestServer::start(backend).await;
    let health = server
        .http
        .get(format!("{}/healthz", server.http_url()))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    server.create_chat("room", &["alice"]).await;
    let mut alice = server.join("room", "alice").await;
    alice
        .send_json(&json!({"type": "new_message", "message": {"content": "counted"}}))
        .await;
    alice.recv_event().await;
    assert_eq!(server.metric("hablar_connections").await, 1.0);
    // Counted when the sender's connection handles the store's reply. On Redis the echo
    // comes by pub/sub, another path, and can reach Alice a moment before that.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while server.metric("hablar_messages_stored_total").await < 1.0 && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(server.metric("hablar_messages_stored_total").await, 1.0);
    assert!(server.metric("hablar_messages_in_total").await >= 1.0);
    assert!(server.metric("hablar_messages_out_total").await >= 1.0);
    let text = server.metrics().await;
    assert!(text.contains("# TYPE hablar_closes_total counter"));
    assert!(text.contains("hablar_dropped_total 0"));
}

async fn dev_mode_seeds_hands_out_tokens_and_answers_loopback_cors(backend: Backend) {
    let www = std::env::temp_dir().join(format!("hablar-www-{}-{backend:?}", std::process::id()));
    std::fs::create_dir_all(&www).expect("www dir");
    std::fs::write(www.join("index.html"), "<h1>hablar demo</h1>").expect("index");
    let server = TestServer::start_with(backend, |c| {
        c.dev = true;
        c.jwt_secret = None; // dev mode brings its own
        c.www_dir = www.clone();
    })
    .await;
    let token_url = format!("{}/api/dev/token", server.http_url());
    let res = server
        .http
        .post(&token_url)
        .json(&json!({"user_id": "alice"}))
        .send()
        .await
        .expect("dev token");
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(
        (body["user_id"].as_str(), body["username"].as_str()),
        (Some("alice"), Some("Alice"))
    );
    let alice_token = body["token"].as_str().expect("token").to_owned();

    let page_origin = "http://127.0.0.1:45678";
    let url = server.ws_url("general", &alice_token, "");
    let mut alice = Client::connect_with_origin(&url, Some(page_origin))
        .await
        .expect("loopback origin in dev");
    let ready = alice.ready().await;
    assert_eq!(ready.presence[0].username, "Alice");
    match Client::connect_with_origin(&url, Some("https://evil.example")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        _ => panic!("a foreign origin is refused in dev mode too"),
    }
    let mallory = server
        .http
        .post(&token_url)
        .json(&json!({"user_id": "mallory"}))
        .send()
        .await
        .expect("token");
    let mallory: serde_json::Value = mallory.json().await.expect("json");
    let mut client = server
        .connect("general", mallory["token"].as_str().expect("token"))
        .await;
    assert_eq!(
        client.expect_close().await,
        4403,
        "mallory is a member of nothing"
    );
    let bob = server
        .http
        .post(&token_url)
        .json(&json!({"user_id": "bob"}))
        .send()
        .await
        .expect("token");
    let bob: serde_json::Value = bob.json().await.expect("json");
    server
        .connect("random", bob["token"].as_str().expect("token"))
        .await
        .ready()
        .await;

    let preflight = server
        .http
        .request(reqwest::Method::OPTIONS, &token_url)
        .header("origin", page_origin)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], page_origin);
    let history = server
        .http
        .get(format!("{}/api/chats/general/messages", server.http_url()))
        .bearer_auth(&alice_token)
        .header("origin", page_origin)
        .send()
        .await
        .expect("history");
    assert_eq!(history.status(), 200);
    assert_eq!(history.headers()["access-control-allow-origin"], page_origin);
    let foreign = server
        .http
        .request(reqwest::Method::OPTIONS, &token_url)
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("preflight");
    assert!(foreign.headers().get("access-control-allow-origin").is_none());

    let index = server.http.get(server.http_url()).send().await.expect("index");
    assert_eq!(index.text().await.expect("body"), "<h1>hablar demo</h1>");
    let _ = std::fs::remove_dir_all(&www);
}

backend_tests!(history_answers_cors_only_for_allowed_origins);

async fn history_answers_cors_only_for_allowed_origins(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.allowed_origins = vec!["https://chat.example".into()]
    })
    .await;
    server.create_chat("room", &["alice"]).await;
    let url = format!("{}/api/chats/room/messages", server.http_url());
    for (origin, allowed) in [("https://chat.example", true), ("https://evil.example", false)] {
        let res = server
            .http
            .get(&url)
            .bearer_auth(tokens::token("alice"))
            .header("origin", origin)
            .send()
            .await
            .expect("history");
        assert_eq!(res.status(), 200);
        let header = res
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap_or(""));
        assert_eq!(header, allowed.then_some(origin), "{origin}");
    }
}

backend_tests!(
    history_past_its_budget_answers_429_with_retry_after,
    metrics_on_a_private_listener_answer_there_and_404_on_the_public_port,
);

async fn history_past_its_budget_answers_429_with_retry_after(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.limits.history_burst = 3;
        c.limits.history_rate_per_sec = 2.0;
    })
    .await;
    server.create_chat("room", &["alice", "bob"]).await;
    let alice = tokens::token("alice");
    let get = |token: String| {
        server
            .http
            .get(format!("{}/api/chats/room/messages", server.http_url()))
            .bearer_auth(token)
            .send()
    };
    // A page that is refused (no such chat) costs as much as one that is served.
    assert_eq!(server.history("nowhere", &alice, "").await.0, 404);
    for _ in 0..2 {
        assert_eq!(get(alice.clone()).await.expect("history").status(), 200);
    }
    let limited = get(alice.clone()).await.expect("history");
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds");
    assert_eq!(retry_after, 1, "a token every 0.5 s, rounded up to whole seconds");
    let body: serde_json::Value = limited.json().await.expect("json");
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(
        get(tokens::token("bob")).await.expect("history").status(),
        200,
        "each user has their own budget"
    );
    assert_eq!(server.metric("hablar_history_limited_total").await, 1.0);
    // A client that waits as long as it was told is served.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(get(alice).await.expect("history").status(), 200);
}

async fn metrics_on_a_private_listener_answer_there_and_404_on_the_public_port(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.metrics_bind = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await;
    let private = server.metrics_addr.expect("a metrics listener");
    assert_ne!(private, server.addr);
    server.create_chat("room", &["alice"]).await;
    let _alice = server.join("room", "alice").await;
    let public = server
        .http
        .get(format!("{}/metrics", server.http_url()))
        .send()
        .await
        .expect("public metrics");
    assert_eq!(public.status(), 404, "not on the public port");
    let res = server
        .http
        .get(format!("http://{private}/metrics"))
        .send()
        .await
        .expect("private metrics");
    assert_eq!(res.status(), 200);
    assert!(res.text().await.expect("body").contains("hablar_connections 1\n"));
    let health = server
        .http
        .get(format!("http://{private}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 404, "the private listener serves metrics only");
    server.shutdown().await.expect("both listeners stop");
}
