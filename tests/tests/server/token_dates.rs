//! Any signed token the server accepts is served and closed cleanly, whatever its `exp`
//! (far beyond any clock, a float, a fraction) or the configured leeway: never a
//! connection whose task died after `ready`.

use hablar_protocol::events::ServerEvent;
use hablar_tests::{backend_tests, tokens, Backend, TestServer};
use serde_json::{json, Value};

backend_tests!(
    a_token_with_an_exp_beyond_any_clock_is_served_and_closed_cleanly,
    a_huge_leeway_is_served_and_closed_cleanly,
);

/// Connects with `token`: either refused with 4401, or served (a ping gets its pong) and
/// closed normally; either way the connection is counted out.
async fn served_or_refused(server: &TestServer, token: &str, what: &str) {
    let mut client = server.connect("room", token).await;
    match client.next_frame(hablar_tests::client::TIMEOUT).await {
        Some(hablar_tests::client::Frame::Close(code)) => assert_eq!(code, 4401, "{what}"),
        Some(hablar_tests::client::Frame::Json(ready)) => {
            assert_eq!(ready["type"], "ready", "{what}");
            client.send_json(&json!({"type": "ping", "id": what})).await;
            let pong = client.recv_event().await;
            assert!(matches!(pong, ServerEvent::Pong { .. }), "{what}: {pong:?}");
            client.close().await;
        }
        None => panic!("{what}: no answer"),
    }
    server
        .wait_metric("hablar_connections", 0.0, std::time::Duration::from_secs(5))
        .await;
}

async fn a_token_with_an_exp_beyond_any_clock_is_served_and_closed_cleanly(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_chat("room", &["alice"]).await;
    let in_an_hour = tokens::now() + 3600;
    let exps: [(&str, Value); 5] = [
        ("2^63", json!(1u64 << 63)),
        ("u64::MAX", json!(u64::MAX)),
        ("1e300", json!(1e300)),
        ("a fraction", json!(in_an_hour as f64 + 0.5)),
        ("a float", json!(in_an_hour as f64)),
    ];
    for (what, exp) in exps {
        served_or_refused(&server, &tokens::token_with_exp("alice", exp), what).await;
    }
    assert_eq!(
        server.metric(r#"hablar_closes_total{code="1011"}"#).await,
        0.0,
        "no connection failed"
    );
}

async fn a_huge_leeway_is_served_and_closed_cleanly(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.jwt_leeway_secs = u64::MAX).await;
    server.create_chat("room", &["alice"]).await;
    served_or_refused(&server, &tokens::token("alice"), "a normal token").await;
    served_or_refused(
        &server,
        &tokens::token_expiring_in("alice", 0),
        "an expired token",
    )
    .await;
    assert_eq!(
        server.metric(r#"hablar_closes_total{code="1011"}"#).await,
        0.0,
        "no connection failed"
    );
}
