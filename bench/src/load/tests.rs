//! Tests of the connections and the sweep's trials.

use super::*;

fn trial(p99_ms: f64) -> (StepResult, u64) {
    let mut step = StepResult::default();
    step.latency.p99_ms = p99_ms;
    (step, 7)
}

#[test]
fn the_median_trial_by_p99_is_kept_with_every_trials_p99() {
    let (median, expected) = median_trial(vec![trial(70.0), trial(40.0), trial(48.0)]).expect("trials");
    assert_eq!(median.latency.p99_ms, 48.0);
    assert_eq!(expected, 7);
    assert_eq!(median.p99_trials_ms, [70.0, 40.0, 48.0], "in the order measured");
}

/// Members the server closed are connected again, as the same users of the same chats
/// with fresh tokens, and read again; members still open are left alone.
#[tokio::test]
async fn members_the_server_closed_are_connected_again() {
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let host = listener.local_addr().expect("addr").to_string();
    // Every request line the server saw, and the sockets of the first three.
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let (close_tx, mut close_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let server_seen = seen.clone();
    tokio::spawn(async move {
        let mut first = Vec::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (mut socket, _) = accepted.expect("accept");
                    let head = crate::wire::accept_upgrade(&mut socket, &[]).await;
                    server_seen.lock().push(head.lines().next().expect("request line").to_owned());
                    first.push(socket);
                }
                Some(()) = close_rx.recv() => {
                    // Close the first two as a server closes slow readers: 4408.
                    for mut socket in first.drain(..2) {
                        socket.write_all(&[0x88, 2, 0x11, 0x38]).await.expect("close");
                    }
                }
            }
        }
    });
    let run = Run::new();
    let target = Target {
        ws: vec![format!("ws://{host}")],
        wait_ready: false,
        origin: None,
        secret: "bench-test".into(),
        pids: Vec::new(),
    };
    let layout = Layout {
        prefix: "r".into(),
        chats: 1,
        members: 3,
    };
    let (mut members, connected) = connect_layout(&run, &target, &layout, 3, Duration::from_secs(5)).await;
    assert_eq!(connected.connected, 3);
    close_tx.send(()).expect("server");
    let deadline = Instant::now() + Duration::from_secs(5);
    while members.iter().filter(|m| m.alive.load(Ordering::Relaxed)).count() > 1 {
        assert!(Instant::now() < deadline, "the closes did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lost: Vec<String> = members
        .iter()
        .filter(|m| !m.alive.load(Ordering::Relaxed))
        .map(|m| m.user.clone())
        .collect();
    assert_eq!(reconnect_lost(&run, &target, &mut members, 1, 10).await, 0);
    assert!(members.iter().all(|m| m.alive.load(Ordering::Relaxed)));
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 5, "three connects, then two again: {seen:?}");
    // The same chat, with tokens of the same users that were not used before.
    assert!(
        seen.iter().all(|l| l.starts_with("GET /ws/chat/r0/?token=")),
        "{seen:?}"
    );
    let tokens: std::collections::HashSet<&str> = seen.iter().map(|l| l.as_str()).collect();
    assert_eq!(tokens.len(), 5, "a token was reused: {seen:?}");
    let user_of = |line: &String| {
        let token = line
            .split("token=")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .expect("token");
        let claims = token.split('.').nth(1).expect("claims");
        let claims = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims)
            .expect("base64");
        let claims: serde_json::Value = serde_json::from_slice(&claims).expect("json");
        claims["user_id"].as_str().expect("user_id").to_owned()
    };
    let mut again: Vec<String> = seen[3..].iter().map(user_of).collect();
    let mut lost = lost;
    again.sort();
    lost.sort();
    assert_eq!(again, lost, "the lost members, each once");
}

#[test]
fn a_single_trial_is_kept_as_it_is() {
    let (single, _) = median_trial(vec![trial(12.0)]).expect("trial");
    assert!(single.p99_trials_ms.is_empty());
    assert!(median_trial(Vec::new()).is_none());
}
