//! A connection task that panics still cleans up after itself: the socket is closed with
//! 1011 (not left open but dead), the user goes offline (presence_leave), and the
//! connection gauge and hub forget the connection.
//!
//! The server runs on a backend of this test's own ([`TestServer::start_with_backend`])
//! that panics in `replay` for one `since`, as `since=u64::MAX` once did (an overflow in
//! debug builds), and in `publish` of a `typing_start` (a panic after `ready`, in the
//! reader's task), so nothing in the server exists for this test.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use hablar_protocol::events::{HistoryPage, PresenceUser, ServerEvent};
use hablar_protocol::{ChatId, Epoch, Seq, UserId};
use hablar_server::backend::{
    Appended, Backend, ChatEvent, MemoryBackend, NewMessage, PresenceJoined, Replay,
};
use hablar_server::Result;
use hablar_tests::client::Frame;
use hablar_tests::{tokens, Client, TestServer};

/// `since` at which `replay` panics.
const POISON: Seq = Seq(666);

/// The memory backend, except that `replay` from [`POISON`] panics, and so does
/// publishing a `typing_start`.
struct Panicky(MemoryBackend);

#[async_trait]
impl Backend for Panicky {
    async fn create_chat(&self, chat: &ChatId) -> Result<bool> {
        self.0.create_chat(chat).await
    }
    async fn chat_exists(&self, chat: &ChatId) -> Result<bool> {
        self.0.chat_exists(chat).await
    }
    async fn add_member(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        self.0.add_member(chat, user).await
    }
    async fn remove_member(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        self.0.remove_member(chat, user).await
    }
    async fn is_member(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        self.0.is_member(chat, user).await
    }
    async fn set_display_name(&self, user: &UserId, display_name: &str) -> Result<()> {
        self.0.set_display_name(user, display_name).await
    }
    async fn display_name(&self, user: &UserId) -> Result<Option<String>> {
        self.0.display_name(user).await
    }
    async fn append(&self, chat: &ChatId, message: NewMessage) -> Result<Appended> {
        self.0.append(chat, message).await
    }
    async fn history(&self, chat: &ChatId, before: Option<Seq>, limit: usize) -> Result<HistoryPage> {
        self.0.history(chat, before, limit).await
    }
    async fn replay(
        &self,
        chat: &ChatId,
        since: Option<Seq>,
        epoch: Option<&Epoch>,
        max: usize,
    ) -> Result<Replay> {
        assert_ne!(since, Some(POISON), "a bug in the backend");
        self.0.replay(chat, since, epoch, max).await
    }
    async fn publish(&self, chat: &ChatId, event: ChatEvent) -> Result<()> {
        if let ChatEvent::Broadcast {
            event: ServerEvent::TypingStart { .. },
            ..
        } = &event
        {
            panic!("a bug in the backend");
        }
        self.0.publish(chat, event).await
    }
    async fn subscribe(&self, chat: &ChatId) -> Result<()> {
        self.0.subscribe(chat).await
    }
    async fn unsubscribe(&self, chat: &ChatId) -> Result<()> {
        self.0.unsubscribe(chat).await
    }
    async fn presence_join(&self, chat: &ChatId, user: &PresenceUser) -> Result<PresenceJoined> {
        self.0.presence_join(chat, user).await
    }
    async fn presence_leave(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        self.0.presence_leave(chat, user).await
    }
}

/// A server on a [`Panicky`] backend with chat `room` of alice and bob.
async fn serve_panicky() -> TestServer {
    let server = TestServer::start_with_backend(|_| {}, |sink| Panicky(MemoryBackend::new(sink, 100))).await;
    server.create_chat("room", &["alice", "bob"]).await;
    server
}

/// WebSocket connections open on `server`.
async fn connections(server: &TestServer) -> f64 {
    server.metric("hablar_connections").await
}

fn url(addr: SocketAddr, user: &str, extra: &str) -> String {
    format!("ws://{addr}/ws/chat/room/?token={}{extra}", tokens::token(user))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_connection_still_leaves_presence_and_the_hub() {
    let server = serve_panicky().await;
    let addr = server.addr;
    let url = |user: &str, extra: &str| url(addr, user, extra);

    let mut alice = Client::connect(&url("alice", "")).await.expect("connect");
    alice.ready().await;
    let mut bob = Client::connect(&url("bob", &format!("&since={}", POISON.0)))
        .await
        .expect("connect");
    let joined = alice
        .recv_until(|e| matches!(e, ServerEvent::PresenceJoin(_)))
        .await;
    assert!(matches!(joined, ServerEvent::PresenceJoin(u) if u.user_id.as_str() == "bob"));
    // bob's connection task panics on its replay; its socket is still closed.
    let frame = bob.next_frame(Duration::from_secs(5)).await;
    assert_eq!(frame, Some(Frame::Close(1011)), "bob's socket closes as failed");
    let left = alice
        .recv_until(|e| matches!(e, ServerEvent::PresenceLeave(_)))
        .await;
    assert!(
        matches!(&left, ServerEvent::PresenceLeave(u) if u.user_id.as_str() == "bob"),
        "bob is not left online for ever: {left:?}"
    );
    assert_eq!(connections(&server).await, 1.0, "only alice is connected");

    // bob can come back, and is counted once.
    let mut bob = Client::connect(&url("bob", "")).await.expect("connect");
    let ready = bob.ready().await;
    let online: Vec<&str> = ready.presence.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(online, ["alice", "bob"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_panics_after_ready_closes_the_socket_with_1011_and_cleans_up() {
    let server = serve_panicky().await;
    let addr = server.addr;
    let mut bob = Client::connect(&url(addr, "bob", "")).await.expect("connect");
    bob.ready().await;
    let mut alice = Client::connect(&url(addr, "alice", "")).await.expect("connect");
    alice.ready().await;
    bob.recv_until(|e| matches!(e, ServerEvent::PresenceJoin(_)))
        .await;
    assert_eq!(connections(&server).await, 2.0);

    // The reader's task panics in the backend's publish.
    alice
        .send_json(&serde_json::json!({"type": "typing_start"}))
        .await;
    let frame = alice.next_frame(Duration::from_secs(5)).await;
    assert_eq!(
        frame,
        Some(Frame::Close(1011)),
        "alice's socket is closed, as failed"
    );
    let left = bob
        .recv_until(|e| matches!(e, ServerEvent::PresenceLeave(_)))
        .await;
    assert!(
        matches!(&left, ServerEvent::PresenceLeave(u) if u.user_id.as_str() == "alice"),
        "alice is not left online: {left:?}"
    );
    assert_eq!(connections(&server).await, 1.0, "only bob is connected");

    // alice can come back and is served.
    let mut alice = Client::connect(&url(addr, "alice", "")).await.expect("connect");
    alice.ready().await;
    alice
        .send_json(&serde_json::json!({"type": "ping", "id": 1}))
        .await;
    assert!(matches!(alice.recv_event().await, ServerEvent::Pong { .. }));
}
