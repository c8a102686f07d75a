//! A client that resumes from far back and does not read its replay is closed like any
//! slow reader, or by whatever close signal comes first (removal, shutdown), and gives
//! back everything it held: its task, its connection slot, its presence, the gauge.

use std::time::Duration;

use hablar_protocol::events::{parse_server, ServerEvent};
use hablar_server::Config;
use hablar_tests::client::Frame;
use hablar_tests::server::no_rate_limit;
use hablar_tests::{backend_tests, tokens, Backend, Client, TestServer};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

backend_tests!(
    a_client_that_never_reads_its_replay_is_closed_and_releases_everything,
    a_client_that_sends_but_never_reads_its_replay_is_closed_as_too_slow,
    a_removal_ends_a_stuck_replay,
    a_shutdown_ends_a_stuck_replay,
);

/// Messages in the chat, each about 4 KB of JSON: 8 MB together, well over what the
/// loopback socket buffers take for a client that does not read (about 4 MB), so the
/// replay blocks on a full socket.
const MESSAGES: usize = 2_000;

/// How long the server may take to close a stuck connection and clean up: the time
/// limit that closes it, plus the 2 s the close handshake is given.
const BOUND: Duration = Duration::from_secs(10);

const CONNECTIONS: &str = "hablar_connections";

/// No rate limit, and a replay as long as the chat.
fn resumable(config: &mut Config) {
    no_rate_limit(config);
    config.limits.max_replay = MESSAGES;
}

/// Fills `room` with [`MESSAGES`] large messages sent by `user` and returns the epoch.
async fn fill(server: &TestServer, user: &str) -> String {
    let mut sender = server.connect("room", &tokens::token(user)).await;
    let epoch = sender.ready().await.epoch.as_str().to_owned();
    let content = "x".repeat(3_900);
    let frame = json!({"type": "new_message", "message": {"content": content}});
    for _ in 0..MESSAGES / 100 {
        for _ in 0..100 {
            sender.send_json(&frame).await;
        }
        for _ in 0..100 {
            sender
                .recv_until(|e| matches!(e, ServerEvent::NewMessage { .. }))
                .await;
        }
    }
    sender.close().await;
    epoch
}

/// A member that reads all the time, so that it answers pings and is never idle, and
/// hands over the events it reads. Dropping it drops the connection.
struct Watcher {
    events: mpsc::UnboundedReceiver<ServerEvent>,
    task: JoinHandle<()>,
}

impl Watcher {
    async fn join(server: &TestServer, user: &str) -> Self {
        let mut client = server.join("room", user).await;
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // The server's idle timeout is short here (the silent client must be closed
            // for it): the watcher pings on its own, so that on a loaded machine its
            // answers to the server's pings are not all it has to stay alive with.
            let mut id = 0u64;
            loop {
                match client.next_frame(Duration::from_millis(500)).await {
                    Some(Frame::Json(value)) => {
                        let event = parse_server(&value.to_string()).expect("server events parse");
                        if tx.send(event).is_err() {
                            break;
                        }
                    }
                    Some(Frame::Close(_)) => break,
                    None => {
                        id += 1;
                        if client
                            .send(Message::text(json!({"type": "ping", "id": id}).to_string()))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
        Self { events, task }
    }

    /// Waits for `user`'s presence join or leave (`join`), skipping other events.
    async fn presence(&mut self, user: &str, join: bool) {
        let wanted = |event: &ServerEvent| match event {
            ServerEvent::PresenceJoin(u) => join && u.user_id.as_str() == user,
            ServerEvent::PresenceLeave(u) => !join && u.user_id.as_str() == user,
            _ => false,
        };
        let seen = tokio::time::timeout(BOUND, async {
            while let Some(event) = self.events.recv().await {
                if wanted(&event) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(seen, Ok(true), "{user} joined ({join}) within {BOUND:?}");
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens a connection as `user` that resumes from the start of the chat and is never
/// read from, and waits until `watcher` sees it come online (its replay has begun).
async fn stuck(server: &TestServer, user: &str, epoch: &str, watcher: &mut Watcher) -> Client {
    let url = server.ws_url("room", &tokens::token(user), &format!("&since=0&epoch={epoch}"));
    let client = Client::connect(&url).await.expect("handshake");
    watcher.presence(user, true).await;
    // Let the writer fill the socket buffers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
}

async fn a_client_that_never_reads_its_replay_is_closed_and_releases_everything(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        resumable(c);
        // Short, yet long enough for a reading client on a loaded machine.
        c.limits.ping_interval_ms = 1_000;
        c.limits.idle_timeout_ms = 3_000;
        c.limits.max_connections_per_user = 1;
    })
    .await;
    server.create_chat("room", &["alice", "carol", "sloth"]).await;
    let epoch = fill(&server, "carol").await;
    let mut alice = Watcher::join(&server, "alice").await;
    let sloth = stuck(&server, "sloth", &epoch, &mut alice).await;

    // Closed for its silence, and counted out; the chat hears it left.
    server.wait_metric(CONNECTIONS, 1.0, BOUND).await;
    alice.presence("sloth", false).await;
    // Its one connection slot is free again (given back just after the presence_leave
    // is published: a refusal in between is retried).
    let mut again = None;
    for _ in 0..15 {
        let mut client = server.connect("room", &tokens::token("sloth")).await;
        match client.next_frame(Duration::from_secs(5)).await {
            Some(Frame::Json(ready)) if ready["type"] == "ready" => {
                again = Some(client);
                break;
            }
            Some(Frame::Close(4429)) => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("sloth's new connection: {other:?}"),
        }
    }
    let mut again = again.expect("sloth's slot is given back");
    again.send_json(&json!({"type": "ping", "id": 1})).await;
    assert!(matches!(
        again.recv_until(|e| matches!(e, ServerEvent::Pong { .. })).await,
        ServerEvent::Pong { .. }
    ));
    again.close().await;
    drop(alice);
    drop(sloth);
    server.wait_metric(CONNECTIONS, 0.0, BOUND).await;
}

async fn a_client_that_sends_but_never_reads_its_replay_is_closed_as_too_slow(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        resumable(c);
        // Short, yet long enough for a reading client on a loaded machine.
        c.limits.ping_interval_ms = 1_000;
        c.limits.idle_timeout_ms = 3_000;
    })
    .await;
    server.create_chat("room", &["alice", "carol", "sloth"]).await;
    let epoch = fill(&server, "carol").await;
    let mut alice = Watcher::join(&server, "alice").await;
    let mut sloth = stuck(&server, "sloth", &epoch, &mut alice).await;
    // It sends all the time, so it is never idle; it just never reads.
    let (stop, mut stopped) = oneshot::channel::<()>();
    let pinger = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    let ping = Message::text(r#"{"type":"ping"}"#);
                    if sloth.send(ping).await.is_err() {
                        break;
                    }
                }
            }
        }
    });

    server
        .wait_metric(r#"hablar_closes_total{code="4408"}"#, 1.0, BOUND)
        .await;
    server.wait_metric(CONNECTIONS, 1.0, BOUND).await;
    alice.presence("sloth", false).await;
    let _ = stop.send(());
    pinger.await.expect("pinger");
}

async fn a_removal_ends_a_stuck_replay(backend: Backend) {
    // The default idle timeout (60 s): only the removal can end it in time.
    let server = TestServer::start_with(backend, resumable).await;
    server.create_chat("room", &["alice", "carol", "sloth"]).await;
    let epoch = fill(&server, "carol").await;
    let mut alice = Watcher::join(&server, "alice").await;
    let _sloth = stuck(&server, "sloth", &epoch, &mut alice).await;

    assert_eq!(server.remove_member("room", "sloth").await, 204);
    server
        .wait_metric(r#"hablar_closes_total{code="4403"}"#, 1.0, BOUND)
        .await;
    server.wait_metric(CONNECTIONS, 1.0, BOUND).await;
    alice.presence("sloth", false).await;
}

async fn a_shutdown_ends_a_stuck_replay(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        resumable(c);
        // Longer than the test waits: `serve` returns in time only if every connection
        // task has ended.
        c.limits.shutdown_grace_ms = 60_000;
    })
    .await;
    server.create_chat("room", &["alice", "carol", "sloth"]).await;
    let epoch = fill(&server, "carol").await;
    let mut alice = Watcher::join(&server, "alice").await;
    let _sloth = stuck(&server, "sloth", &epoch, &mut alice).await;

    let stopped = tokio::spawn(server.shutdown());
    let stopped = tokio::time::timeout(BOUND, stopped).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "serve returns once the stuck connection is closed: {stopped:?}"
    );
}
