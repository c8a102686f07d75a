//! One WebSocket connection from upgrade to cleanup, in order: [`run`] admits it, joins
//! the hub, runs the session in a task of its own (so that the cleanup runs even if it
//! panics), then cleans up. Each step has its file:
//! - `admit`: token, chat, membership, per-user limit.
//! - `start`: presence, then `ready` and the replay, encoded for the writer.
//! - `tasks`: the reader and writer tasks, raced against the close signals (hub,
//!   shutdown, token expiry); the socket's halves sit in locks that a dying task lets go
//!   of, so that whatever task fails, the socket is still closed with 1011.
//! - `reader` and `dispatch`: frames off the socket; each frame's budget, and the answer
//!   or backend call it needs.
//! - `calls`: the backend calls, pipelined in batches, outcomes answered in order.
//! - `writer`: `ready` and the replay, then the [`SendQueue`] in batches, within a deadline.
//! - `close`: the close handshake, and the cleanup after (hub, presence, typing lease).

mod admit;
mod calls;
mod close;
mod dispatch;
mod reader;
mod start;
mod tasks;
mod writer;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::WebSocket;
use futures_util::StreamExt;
use hablar_protocol::events::PresenceUser;
use hablar_protocol::{ChatId, CloseCode};
use serde::Deserialize;
use tokio::sync::{watch, Mutex as AsyncMutex};

use self::admit::admit;
use self::calls::Calls;
use self::close::{cleanup, close_after_failure, finish};
use self::start::start;
use self::tasks::{drive, Halves, Owned, Socket};
use crate::backend::ConnectionSlot;
use crate::limits::FrameLimiter;
use crate::peer::PeerSlot;
use crate::rooms::{Closer, ConnHandle};
use crate::send_queue::SendQueue;
use crate::AppState;

/// The handshake's query string, read leniently: a malformed `since` or `epoch` means
/// "cannot resume", not a refused handshake.
/// No `Debug`: it holds the token.
#[derive(Default, Deserialize)]
pub struct RawConnect {
    /// The access token.
    token: Option<String>,
    /// The last seq the client has.
    since: Option<String>,
    /// The epoch `since` belongs to.
    epoch: Option<String>,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The server closes with this code.
    Close(CloseCode),
    /// The client sent a close frame (its code, if any).
    ClientClosed(Option<u16>),
    /// The transport failed; no close frame can be sent.
    Gone,
}

/// Who is connected where, once admitted.
struct Admitted {
    me: PresenceUser,
    chat: ChatId,
    /// The token's `exp`, when the connection is closed with 4401.
    exp: u64,
    /// Whether `presence_join` succeeded: only then does the cleanup leave presence (a
    /// leave without a join would take another tab's presence away).
    present: AtomicBool,
    /// The per-user connection slot: released once the socket is gone (or on drop).
    slot: ConnectionSlot,
}

/// Per-connection state the reader keeps and the cleanup reads.
struct Session {
    /// Whether this connection's user is typing (a `typing_start` without a stop,
    /// message or close since), for the typing lease on close.
    typing: bool,
    /// The message and typing budgets.
    limiter: FrameLimiter,
    /// The backend calls of the client's frames.
    calls: Calls,
}

/// Closes a socket refused before admission (the limits per address) with `code`.
pub async fn refuse(app: Arc<AppState>, socket: WebSocket, code: CloseCode) {
    let _tracked = app.tracker.clone();
    let (mut sink, mut stream) = socket.split();
    finish(&app, &mut sink, &mut stream, End::Close(code), None).await;
}

/// Runs one upgraded connection to its end. `peer` counts it against its client address
/// until then, and hears of a refused admission.
pub async fn run(app: Arc<AppState>, socket: WebSocket, chat: String, query: RawConnect, peer: PeerSlot) {
    let _tracked = app.tracker.clone();
    let (mut sink, mut stream) = socket.split();
    if *app.shutdown.borrow() {
        return finish(&app, &mut sink, &mut stream, End::Close(CloseCode::Restart), None).await;
    }
    let admitted = match admit(&app, &chat, query.token.as_deref()).await {
        Ok(admitted) => Arc::new(admitted),
        Err(code) => {
            peer.refused(code, Instant::now());
            // `chat` is the raw, percent-decoded path: Debug escapes any newline in it, so
            // that it cannot forge log lines.
            tracing::info!(chat = ?chat, code = code.as_u16(), reason = code.reason(), "handshake refused");
            return finish(&app, &mut sink, &mut stream, End::Close(code), None).await;
        }
    };
    app.metrics.connections.fetch_add(1, Relaxed);
    app.metrics.connections_total.fetch_add(1, Relaxed);
    let user = admitted.me.user_id.clone();
    tracing::info!(chat = %admitted.chat, user = %user, "connected");

    let limits = &app.config.limits;
    let queue = Arc::new(SendQueue::new(limits.outbound_queue));
    let (closer, close_rx) = Closer::new();
    let handle = ConnHandle {
        user: user.clone(),
        queue: queue.clone(),
        closer,
    };
    let chat = admitted.chat.clone();
    let conn_id = match app.rooms.join(&*app.backend, &chat, handle).await {
        Ok(id) => id,
        Err(err) => {
            tracing::error!(%chat, error = %err, "subscribe failed");
            app.metrics.connections.fetch_sub(1, Relaxed);
            admitted.slot.release().await;
            return finish(
                &app,
                &mut sink,
                &mut stream,
                End::Close(CloseCode::ServerError),
                None,
            )
            .await;
        }
    };

    // The session runs in a task of its own so that the cleanup below runs whether it
    // returns or panics: a panic must not leave the user online and in the hub forever.
    let socket = Socket {
        sink: Arc::new(AsyncMutex::new(sink)),
        stream: Arc::new(AsyncMutex::new(stream)),
    };
    let session = Owned::spawn(live(
        app.clone(),
        admitted.clone(),
        query,
        Halves {
            socket: socket.clone(),
            queue: queue.clone(),
            session: Session {
                typing: false,
                limiter: FrameLimiter::new(limits, Instant::now()),
                calls: Calls::default(),
            },
        },
        close_rx,
    ));
    let (end, session) = match session.await {
        Ok(ended) => ended,
        Err(err) => {
            tracing::error!(%chat, user = %user, error = %err, "connection task failed");
            // Its reader and writer were aborted with it and let go of the socket.
            close_after_failure(&app, &socket).await;
            (End::Close(CloseCode::ServerError), None)
        }
    };
    // The socket is gone: the gauge says so before the chat hears of it, so that whoever
    // sees the presence_leave below also sees the connection counted out.
    app.metrics.connections.fetch_sub(1, Relaxed);
    // Free for the client's reconnect, on any instance, before the cleanup's round trips.
    admitted.slot.release().await;
    // Whether it was typing is lost with a failed task: a stray typing_stop is harmless,
    // a missing one leaves "is typing" up on base-layer frontends.
    let typing = session.as_ref().is_none_or(|session| session.typing);
    if let Some(mut session) = session {
        // What the client sent before the end is stored and published before its
        // presence_leave, even when the connection was closed under its reader.
        session.calls.finish(&app, &admitted, &queue).await;
    }
    cleanup(&app, &admitted, conn_id, typing).await;
    tracing::info!(%chat, user = %user, end = ?end, "disconnected");
}

/// The admitted connection from presence and replay to its close. Returns how it ended
/// and the reader's state (`None` if its task failed).
async fn live(
    app: Arc<AppState>,
    admitted: Arc<Admitted>,
    query: RawConnect,
    halves: Halves,
    close_rx: watch::Receiver<Option<CloseCode>>,
) -> (End, Option<Session>) {
    match start(&app, &admitted, &query).await {
        Err(end) => {
            halves.socket.finish(&app, end, None).await;
            (end, Some(halves.session))
        }
        Ok(started) => drive(&app, &admitted, halves, close_rx, started).await,
    }
}
