//! One WebSocket connection: admission (token, chat, membership, per-user limit),
//! presence and the replay, then a reader task and a writer task (split socket) raced in
//! one `select!` with the close signals (hub, shutdown, token expiry), the close
//! handshake, and the cleanup after (the backend calls the client's last frames still
//! need, presence, typing lease). The reader pipelines its backend calls (`Calls`); the
//! writer writes `ready` and the replay as its first batch, then drains the connection's
//! [`Outbox`], each batch within a deadline. The socket's halves sit in locks that a dying
//! task lets go of, so that whatever task fails, the socket is still closed with 1011.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hablar_protocol::events::{
    encode, parse_client, ClientEvent, ErrorEvent, PresenceUser, Ready, ServerEvent,
};
use hablar_protocol::{names, ChatId, ClientId, CloseCode, Epoch, ErrorCode, Seq};
use serde::Deserialize;
use tokio::sync::{oneshot, watch, Mutex as AsyncMutex};
use tokio::task::{JoinError, JoinHandle};

use crate::backend::{ChatEvent, ConnectionSlot, NewMessage, Replay};
use crate::limits::{Budget, FrameLimiter, RateDecision};
use crate::outbox::{Next, Outbound, Outbox};
use crate::peer::PeerSlot;
use crate::rooms::{Closer, ConnHandle};
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
    let outbox = Arc::new(Outbox::new(limits.outbound_queue));
    let (closer, close_rx) = Closer::new();
    let handle = ConnHandle {
        user: user.clone(),
        outbox: outbox.clone(),
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
            outbox: outbox.clone(),
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
        session.calls.finish(&app, &admitted, &outbox).await;
    }
    cleanup(&app, &admitted, conn_id, typing).await;
    tracing::info!(%chat, user = %user, end = ?end, "disconnected");
}

/// A spawned task that is aborted when this handle is dropped: a connection's tasks never
/// outlive the task that owns them (a panic there would otherwise leave the reader and
/// the writer holding a socket nobody closes).
struct Owned<T>(JoinHandle<T>);

impl<T: Send + 'static> Owned<T> {
    fn spawn(task: impl Future<Output = T> + Send + 'static) -> Self {
        Self(tokio::spawn(task))
    }
}

impl<T> Future for Owned<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The socket's halves, each held by the task using it. A task that ends, panics or is
/// aborted lets go of its half, so that the close frame can still be sent.
#[derive(Clone)]
struct Socket {
    sink: Arc<AsyncMutex<SplitSink<WebSocket, WsMessage>>>,
    stream: Arc<AsyncMutex<SplitStream<WebSocket>>>,
}

impl Socket {
    /// Sends the close frame and waits for the reply (see [`finish`]), once both halves
    /// are free.
    async fn finish(&self, app: &AppState, end: End, flush_first: Option<(&Outbox, Seq)>) {
        let mut sink = self.sink.lock().await;
        let mut stream = self.stream.lock().await;
        finish(app, &mut sink, &mut stream, end, flush_first).await;
    }
}

/// Closes with 1011 the socket of a session whose task died. Its reader and writer are
/// aborted, which frees the halves at their next turn on the runtime; if they are not
/// free within a second the socket is left to be dropped (TCP closes without a frame).
async fn close_after_failure(app: &AppState, socket: &Socket) {
    let server_error = End::Close(CloseCode::ServerError);
    let closed = tokio::time::timeout(Duration::from_secs(1), async {
        let sink = socket.sink.clone().lock_owned().await;
        let stream = socket.stream.clone().lock_owned().await;
        (sink, stream)
    })
    .await;
    match closed {
        Ok((mut sink, mut stream)) => finish(app, &mut sink, &mut stream, server_error, None).await,
        Err(_) => app.metrics.close(CloseCode::ServerError),
    }
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

/// A connection's socket, its queue, and the reader's state.
struct Halves {
    socket: Socket,
    /// What the hub fans out to the connection and the reader's direct answers (errors,
    /// pongs, duplicate echoes); the writer's stop and ping signals.
    outbox: Arc<Outbox>,
    session: Session,
}

/// Why the writer returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    /// Told to stop between batches: everything it was handed is written.
    Told,
    /// Told to stop in the middle of a batch, whose rest is lost: nothing queued after
    /// it may be written (that would leave the client a gap; it resumes with `since`).
    Cut,
    /// The connection ends (the client is too slow, or gone).
    End(End),
}

/// Runs the reader and the writer as two tasks until one ends or the connection is told
/// to close (hub, shutdown, token expiry), then closes. The writer starts with `ready`
/// and the replay, so these signals hold during the replay too. Returns how the
/// connection ended and the reader's state (`None` if the reader's task failed).
async fn drive(
    app: &Arc<AppState>,
    admitted: &Arc<Admitted>,
    halves: Halves,
    mut close_rx: watch::Receiver<Option<CloseCode>>,
    started: Started,
) -> (End, Option<Session>) {
    let Halves {
        socket,
        outbox,
        mut session,
    } = halves;
    let Started { delivered, frames } = started;
    // Before the reader starts: the echo of a resend may go out up to here, as it is
    // queued behind the replay.
    outbox.replayed_up_to(delivered);
    // Each task stops at once when told and lets go of its half, so that the close
    // frame can be written and the client's reply read.
    let (stop_reader, reader_stopped) = oneshot::channel::<()>();
    let mut reader = Owned::spawn({
        let (app, admitted, outbox) = (app.clone(), admitted.clone(), outbox.clone());
        let stream = socket.stream.clone();
        async move {
            let mut stream = stream.lock_owned().await;
            let end = tokio::select! {
                end = read_loop(&app, &admitted, &mut stream, &mut session, &outbox) => Some(end),
                _ = reader_stopped => None,
            };
            (end, session)
        }
    });
    let mut writer = Owned::spawn({
        let outbox = outbox.clone();
        let sink = socket.sink.clone();
        // A client that does not take a batch in this time is too slow, replay or not.
        let deadline = app.config.limits.idle_timeout();
        async move {
            let mut sink = sink.lock_owned().await;
            let wrote = write_loop(&mut sink, &outbox, delivered, frames, deadline).await;
            // Nothing pushed from now on would be written.
            outbox.close();
            wrote
        }
    });

    // The writer waits on its outbox alone; the keep-alive ping is asked for from here,
    // so that a fan-out wakes the writer for the frames and nothing else.
    let ping_every = app.config.limits.ping_interval();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let token_expiry = tokio::time::sleep_until(deadline(admitted.exp, app.config.jwt_leeway_secs));
    tokio::pin!(token_expiry);
    let mut shutdown = app.shutdown.clone();
    let server_error = End::Close(CloseCode::ServerError);
    let mut reader_out = None;
    let mut writer_out = None;
    let end = loop {
        tokio::select! {
            out = &mut reader => {
                let out = out.ok();
                let end = out.as_ref().and_then(|(end, _)| *end).unwrap_or(server_error);
                reader_out = Some(out);
                break end;
            }
            out = &mut writer => {
                let out = out.ok();
                let end = match out {
                    Some(Wrote::End(end)) => end,
                    _ => server_error,
                };
                writer_out = Some(out);
                break end;
            }
            code = close_rx.wait_for(Option::is_some) => {
                break End::Close(code.ok().and_then(|c| *c).unwrap_or(CloseCode::ServerError));
            }
            _ = shutdown.wait_for(|stop| *stop) => break End::Close(CloseCode::Restart),
            () = &mut token_expiry => break End::Close(CloseCode::Unauthorized),
            _ = ping.tick() => outbox.ping(),
        }
    };
    let _ = stop_reader.send(());
    outbox.stop();
    let reader_out = match reader_out {
        Some(out) => out,
        None => reader.await.ok(),
    };
    let writer_out = match writer_out {
        Some(out) => out,
        None => writer.await.ok(),
    };
    let end = if reader_out.is_none() || writer_out.is_none() {
        // The failed task let go of its half with its stack: the socket still closes.
        tracing::error!(chat = %admitted.chat, "connection task failed");
        server_error
    } else {
        end
    };
    // Graceful shutdown finishes what was queued before the 1012, unless the writer was
    // cut off in the middle of a batch.
    let flush_first = (end == End::Close(CloseCode::Restart) && writer_out == Some(Wrote::Told))
        .then_some((&*outbox, delivered));
    socket.finish(app, end, flush_first).await;
    (end, reader_out.map(|(_, session)| session))
}

/// Token, chat, membership, then the per-user limit last, so that no later failure of
/// the admission holds a slot.
async fn admit(app: &AppState, chat: &str, token: Option<&str>) -> Result<Admitted, CloseCode> {
    let token = token.filter(|t| !t.is_empty()).ok_or(CloseCode::Unauthorized)?;
    let claims = app.verifier.verify(token, unix_now()).map_err(|err| {
        tracing::info!(reason = %err, "token refused");
        CloseCode::Unauthorized
    })?;
    if !app.connect_rate.allow(&claims.user_id, Instant::now()) {
        return Err(CloseCode::TooMany);
    }
    let chat = ChatId::new(chat).map_err(|_| CloseCode::NotFound)?;
    let backend = &app.backend;
    let server_error = |err: crate::Error| {
        tracing::error!(error = %err, "backend failed during admission");
        CloseCode::ServerError
    };
    if !backend.chat_exists(&chat).await.map_err(server_error)? {
        return Err(CloseCode::NotFound);
    }
    if !backend
        .is_member(&chat, &claims.user_id)
        .await
        .map_err(server_error)?
    {
        return Err(CloseCode::Forbidden);
    }
    let username = match backend
        .display_name(&claims.user_id)
        .await
        .map_err(server_error)?
        // A backend may write profiles straight into the store: cleaned as read.
        .as_deref()
        .and_then(names::clean)
    {
        Some(name) => name,
        None => claims.fallback_name(),
    };
    let max = app.config.limits.max_connections_per_user;
    let slot = backend
        .acquire_connection(&app.connections, &claims.user_id, max)
        .await
        .map_err(server_error)?
        .ok_or(CloseCode::TooMany)?;
    Ok(Admitted {
        me: PresenceUser {
            user_id: claims.user_id,
            username,
        },
        chat,
        exp: claims.exp,
        present: AtomicBool::new(false),
        slot,
    })
}

/// What a connection starts with, for its writer.
struct Started {
    /// The seq up to which the replay delivers: live messages up to it are dropped.
    delivered: Seq,
    /// `ready`, then the replayed messages: the writer's first batch.
    frames: VecDeque<Outbound>,
}

/// Presence and replay: returns `ready` and the replayed messages, encoded, and the seq
/// up to which live messages are already delivered. Writes nothing: the writer does,
/// while the close signals are watched.
async fn start(app: &AppState, admitted: &Admitted, query: &RawConnect) -> Result<Started, End> {
    let backend = &app.backend;
    let chat = &admitted.chat;
    let server_error = |err: crate::Error| {
        tracing::error!(%chat, error = %err, "backend failed while starting a connection");
        End::Close(CloseCode::ServerError)
    };
    // A removal between the admission check and joining the hub published its 4403 to
    // nobody; now that this connection hears removals, look once more.
    if !backend
        .is_member(chat, &admitted.me.user_id)
        .await
        .map_err(server_error)?
    {
        return Err(End::Close(CloseCode::Forbidden));
    }
    let joined = backend
        .presence_join(chat, &admitted.me)
        .await
        .map_err(server_error)?;
    admitted.present.store(true, Relaxed);
    if joined.first {
        let event = ChatEvent::Broadcast {
            event: ServerEvent::PresenceJoin(admitted.me.clone()),
            skip_user: Some(admitted.me.user_id.clone()),
        };
        backend.publish(chat, event).await.map_err(server_error)?;
    }
    // A resume we cannot parse is a resume we cannot serve.
    let since = query.since.as_deref().map(|s| s.parse::<u64>().map(Seq));
    let epoch = query.epoch.as_deref().map(Epoch::new);
    let unreadable = matches!(since, Some(Err(_))) || matches!(epoch, Some(Err(_)));
    let since = since.and_then(Result::ok);
    let epoch = epoch.and_then(Result::ok);
    let max = app.config.limits.max_replay;
    let Replay {
        epoch,
        last_seq,
        messages,
        recovered,
    } = if unreadable {
        Replay {
            recovered: false,
            ..backend
                .replay(chat, None, None, max)
                .await
                .map_err(server_error)?
        }
    } else {
        backend
            .replay(chat, since, epoch.as_ref(), max)
            .await
            .map_err(server_error)?
    };
    let ready = ServerEvent::Ready(Ready {
        user_id: admitted.me.user_id.clone(),
        chat_id: chat.clone(),
        epoch,
        last_seq,
        recovered,
        presence: joined.online,
    });
    let mut frames = VecDeque::with_capacity(messages.len() + 1);
    let ready = encode(&ready);
    let messages = messages
        .into_iter()
        .map(|message| encode(&ServerEvent::NewMessage { message }));
    // Without a seq: the writer's `delivered` filter is for the fan-out's copies.
    frames.extend(std::iter::once(ready).chain(messages).map(|text| Outbound {
        text: Utf8Bytes::from(text),
        seq: None,
    }));
    Ok(Started {
        delivered: last_seq,
        frames,
    })
}

/// Backend calls of one connection waiting for the one in flight, at most. Beyond it
/// the reader stops reading (TCP pushes back on the client) until the batch in flight
/// completes.
const MAX_QUEUED_CALLS: usize = 64;

/// A backend call a frame needs.
enum Op {
    /// Store and publish the client's message.
    Append {
        client_id: Option<ClientId>,
        message: NewMessage,
    },
    /// Publish an event (typing, read receipt).
    Publish(ChatEvent),
}

/// What a backend call came to.
// Short-lived (one per call, moved once): boxing the append's result would only add an
// allocation per message.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    /// An append of the client's message.
    Appended {
        client_id: Option<ClientId>,
        result: crate::Result<crate::backend::Appended>,
    },
    /// A publish.
    Published(crate::Result<()>),
}

/// A connection's backend calls, pipelined: the reader queues one per frame and goes
/// on reading; everything queued goes to the backend as one batch while the previous
/// batch is in flight (one round trip per batch against Redis, instead of one per
/// message, which would cap a fast sender at one message per round trip). Order holds:
/// one batch at a time, each in the order its frames arrived (see
/// [`crate::backend::Backend::append_batch`]), outcomes handled in that order.
///
/// It lives outside the reader's loop, so that a connection closed under its reader
/// (slow, removed, shutdown) still finishes what the client sent: see `run`.
#[derive(Default)]
struct Calls {
    queued: Vec<Op>,
    in_flight: Option<Pin<Box<dyn Future<Output = Vec<Outcome>> + Send>>>,
}

impl Calls {
    fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.queued.is_empty()
    }

    fn is_full(&self) -> bool {
        self.queued.len() >= MAX_QUEUED_CALLS
    }

    /// Queues a call and starts it at once if nothing is in flight (the embedded
    /// backend completes it right there).
    fn push(&mut self, op: Op, app: &Arc<AppState>, admitted: &Admitted, tx: &Outbox) {
        self.queued.push(op);
        let mut cx = Context::from_waker(Waker::noop());
        let _ = self.poll_progress(&mut cx, app, admitted, tx);
    }

    /// Handles a finished batch and starts the next. `Ready` once nothing is queued or
    /// in flight.
    fn poll_progress(
        &mut self,
        cx: &mut Context<'_>,
        app: &Arc<AppState>,
        admitted: &Admitted,
        tx: &Outbox,
    ) -> Poll<()> {
        loop {
            if let Some(batch) = &mut self.in_flight {
                let outcomes = std::task::ready!(batch.as_mut().poll(cx));
                self.in_flight = None;
                for outcome in outcomes {
                    handle_outcome(app, admitted, tx, outcome);
                }
            }
            if self.queued.is_empty() {
                return Poll::Ready(());
            }
            let ops = std::mem::take(&mut self.queued);
            self.in_flight = Some(Box::pin(run_calls(app.clone(), admitted.chat.clone(), ops)));
        }
    }

    /// Completes everything queued and in flight (each call has the backend's own time
    /// limit).
    async fn finish(&mut self, app: &Arc<AppState>, admitted: &Admitted, tx: &Outbox) {
        poll_fn(|cx| self.poll_progress(cx, app, admitted, tx)).await;
    }
}

/// Runs a batch of calls in order: consecutive appends as one `append_batch`.
async fn run_calls(app: Arc<AppState>, chat: ChatId, ops: Vec<Op>) -> Vec<Outcome> {
    let backend = &app.backend;
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut ops = ops.into_iter().peekable();
    while let Some(op) = ops.next() {
        match op {
            Op::Publish(event) => outcomes.push(Outcome::Published(backend.publish(&chat, event).await)),
            Op::Append { client_id, message } => {
                let mut client_ids = vec![client_id];
                let mut messages = vec![message];
                while let Some(Op::Append { client_id, message }) =
                    ops.next_if(|op| matches!(op, Op::Append { .. }))
                {
                    client_ids.push(client_id);
                    messages.push(message);
                }
                let results = backend.append_batch(&chat, messages).await;
                let mut results = results.into_iter();
                for client_id in client_ids {
                    let result = results
                        .next()
                        .unwrap_or_else(|| Err(crate::Error::Backend("no outcome for the message".into())));
                    outcomes.push(Outcome::Appended { client_id, result });
                }
            }
        }
    }
    outcomes
}

/// Reads and handles the client's frames until the connection ends. The backend calls
/// they need are queued in `session.calls`, and what is left of them when this returns
/// (or is dropped) is finished by `run`.
async fn read_loop(
    app: &Arc<AppState>,
    admitted: &Admitted,
    stream: &mut SplitStream<WebSocket>,
    session: &mut Session,
    tx: &Outbox,
) -> End {
    let idle = app.config.limits.idle_timeout();
    loop {
        let frame = tokio::select! {
            biased;
            () = poll_fn(|cx| session.calls.poll_progress(cx, app, admitted, tx)), if !session.calls.is_idle() => continue,
            frame = tokio::time::timeout(idle, stream.next()), if !session.calls.is_full() => frame,
        };
        let frame = match frame {
            Err(_) => {
                tracing::info!(chat = %admitted.chat, "idle timeout");
                return End::Close(CloseCode::GoingAway);
            }
            Ok(None) => return End::Gone,
            Ok(Some(Err(err))) => return read_error(&err),
            Ok(Some(Ok(frame))) => frame,
        };
        match frame {
            WsMessage::Text(text) => {
                app.metrics.messages_in.fetch_add(1, Relaxed);
                let event = parse_client(text.as_str());
                let budget = match event {
                    Ok(ClientEvent::TypingStart | ClientEvent::TypingStop) => Budget::Typing,
                    _ => Budget::Messages,
                };
                match rate_limit(admitted, session, tx, budget) {
                    Err(end) => return end,
                    Ok(false) => continue,
                    Ok(true) => {}
                }
                if let Some(op) = handle_text(app, admitted, session, tx, text.as_str(), event) {
                    session.calls.push(op, app, admitted, tx);
                }
            }
            WsMessage::Binary(_) => {
                app.metrics.messages_in.fetch_add(1, Relaxed);
                match rate_limit(admitted, session, tx, Budget::Messages) {
                    Err(end) => return end,
                    Ok(false) => continue,
                    Ok(true) => {}
                }
                let detail = "frames must be UTF-8 text JSON".into();
                reply_error(tx, ErrorCode::BadJson, detail, None);
            }
            // tungstenite answers pings itself; any frame proves the peer is alive.
            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            WsMessage::Close(frame) => return End::ClientClosed(frame.map(|f| f.code)),
        }
    }
}

/// Maps a read error to how the connection ends.
fn read_error(err: &axum::Error) -> End {
    // axum does not re-export tungstenite's error type, so the size limit is recognised
    // by tungstenite's text for `Error::Capacity` (the integration tests pin it: 1009).
    let text = err.to_string();
    if text.contains("Space limit exceeded") {
        End::Close(CloseCode::TooBig)
    } else if text.contains("UTF-8") || text.contains("utf-8") {
        End::Close(CloseCode::Other(1007))
    } else if text.contains("Protocol error") {
        End::Close(CloseCode::Other(1002))
    } else {
        End::Gone
    }
}

/// Takes a token from the frame's budget: `Ok(true)` to handle the frame, `Ok(false)`
/// when it is dropped, `Err` to close for repeated abuse.
fn rate_limit(admitted: &Admitted, session: &mut Session, tx: &Outbox, budget: Budget) -> Result<bool, End> {
    match session.limiter.check(budget, Instant::now()) {
        RateDecision::Allow => Ok(true),
        // Typing over its budget is dropped without an answer: it is a lease that the
        // next refresh repairs, and an answer to each frame would double a flood.
        RateDecision::Limited if budget == Budget::Typing => Ok(false),
        RateDecision::Limited => {
            let detail = "too many events; slow down".into();
            reply_error(tx, ErrorCode::RateLimited, detail, None);
            Ok(false)
        }
        RateDecision::Close => {
            tracing::info!(chat = %admitted.chat, user = %admitted.me.user_id, "rate limit abuse");
            Err(End::Close(CloseCode::Policy))
        }
    }
}

/// Handles one (rate-checked) text frame, parsed as `event`: answers it directly, or
/// returns the backend call it needs.
fn handle_text(
    app: &AppState,
    admitted: &Admitted,
    session: &mut Session,
    tx: &Outbox,
    text: &str,
    event: hablar_protocol::Result<ClientEvent>,
) -> Option<Op> {
    let event = match event {
        Ok(event) => event,
        Err(err) => {
            reply_error(tx, err.code(), err.to_string(), client_id_of(text));
            return None;
        }
    };
    let me = &admitted.me;
    match event {
        ClientEvent::TypingStart | ClientEvent::TypingStop => {
            session.typing = matches!(event, ClientEvent::TypingStart);
            let event = if session.typing {
                ServerEvent::TypingStart {
                    user_id: me.user_id.clone(),
                    username: me.username.clone(),
                }
            } else {
                ServerEvent::TypingStop {
                    user_id: me.user_id.clone(),
                }
            };
            // A user's own typing is not echoed to their own tabs.
            let skip_user = Some(me.user_id.clone());
            Some(Op::Publish(ChatEvent::Broadcast { event, skip_user }))
        }
        ClientEvent::NewMessage { message } => {
            let client_id = message.client_id.clone();
            let parts = match message.into_parts(app.config.limits.message_limits()) {
                Ok(parts) => parts,
                Err(err) => {
                    // `invalid_message`, or `too_large` for a message over the size limit.
                    reply_error(tx, err.code(), err.to_string(), client_id);
                    return None;
                }
            };
            session.typing = false;
            Some(Op::Append {
                client_id: parts.client_id.clone(),
                message: NewMessage {
                    sender: me.clone(),
                    parts,
                },
            })
        }
        ClientEvent::Ping { id } => {
            reply(tx, &ServerEvent::Pong { id });
            None
        }
        ClientEvent::MarkRead { up_to } => {
            let event = ServerEvent::Read {
                user_id: me.user_id.clone(),
                up_to,
            };
            Some(Op::Publish(ChatEvent::Broadcast {
                event,
                skip_user: None,
            }))
        }
    }
}

/// Answers what a backend call came to.
fn handle_outcome(app: &AppState, admitted: &Admitted, tx: &Outbox, outcome: Outcome) {
    let chat = &admitted.chat;
    match outcome {
        Outcome::Appended {
            result: Ok(appended), ..
        } if appended.duplicate => {
            let seq = appended.message.seq;
            let echo = ServerEvent::NewMessage {
                message: appended.message,
            };
            match seq {
                // Not ahead of the fan-out; if not queued, the fan-out brings it.
                Some(seq) => {
                    let _ = tx.push_echo(Utf8Bytes::from(encode(&echo)), seq);
                }
                None => reply(tx, &echo),
            }
        }
        Outcome::Appended { result: Ok(_), .. } => {
            app.metrics.messages_stored.fetch_add(1, Relaxed);
        }
        Outcome::Appended {
            result: Err(crate::Error::NotMember),
            ..
        } => {
            // Removed, however and wherever: the backend refused the message with the
            // append, and the user's sockets in the chat close with 4403 through the hub,
            // as for a removal it heard of.
            tracing::info!(%chat, user = %admitted.me.user_id, "send of a removed member refused");
            let removed = ChatEvent::MemberRemoved {
                user_id: admitted.me.user_id.clone(),
            };
            crate::backend::EventSink::deliver(&*app.rooms, chat, &removed);
        }
        Outcome::Appended {
            client_id,
            result: Err(err),
        } => {
            tracing::error!(%chat, error = %err, "append failed");
            let detail = "message not stored; send it again with the same client_id".into();
            reply_error(tx, ErrorCode::Unavailable, detail, client_id);
        }
        Outcome::Published(Ok(())) => {}
        Outcome::Published(Err(err)) => {
            tracing::error!(%chat, error = %err, "publish failed");
        }
    }
}

/// The `message.client_id` of a frame that did not parse, for the error event.
fn client_id_of(text: &str) -> Option<ClientId> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let id = value.get("message")?.get("client_id")?.as_str()?;
    ClientId::new(id).ok()
}

/// Queues a direct answer for this connection only.
fn reply(tx: &Outbox, event: &ServerEvent) {
    // A full queue means the hub is about to close this connection as too slow.
    let _ = tx.push(Outbound {
        text: Utf8Bytes::from(encode(event)),
        seq: None,
    });
}

fn reply_error(tx: &Outbox, code: ErrorCode, detail: String, client_id: Option<ClientId>) {
    reply(
        tx,
        &ServerEvent::Error(ErrorEvent {
            code,
            detail,
            client_id,
        }),
    );
}

/// Writes `first` (`ready` and the replay), then what the outbox hands over, in batches
/// (feed, then one flush), and the keep-alive pings it asks for. A batch not written
/// within `deadline` ends the connection as too slow (4408): a client that stopped
/// reading must not hold its task, its slot and its presence for ever.
async fn write_loop(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    outbox: &Outbox,
    delivered: Seq,
    first: VecDeque<Outbound>,
    deadline: Duration,
) -> Wrote {
    let mut batch = first;
    let mut ping = false;
    loop {
        let write = async {
            if ping {
                sink.feed(WsMessage::Ping(Default::default())).await?;
            }
            for item in batch.drain(..) {
                // The replay already sent messages up to `delivered`.
                if item.seq.is_some_and(|seq| seq <= delivered) {
                    continue;
                }
                sink.feed(WsMessage::Text(item.text)).await?;
            }
            sink.flush().await
        };
        // A client that stopped reading blocks the write for good: stopping must still
        // get the socket back, to close it.
        let written = tokio::select! {
            biased;
            written = tokio::time::timeout(deadline, write) => written,
            () = poll_fn(|cx| outbox.poll_stop(cx)) => return Wrote::Cut,
        };
        match written {
            Err(_) => {
                tracing::info!("a write did not complete in time: too slow");
                return Wrote::End(End::Close(CloseCode::TooSlow));
            }
            Ok(Err(_)) => return Wrote::End(End::Gone),
            Ok(Ok(())) => {}
        }
        // A burst (or the replay) grew the batch; an idle connection should not keep
        // that memory.
        batch.clear();
        if batch.capacity() > 64 {
            batch.shrink_to(16);
        }
        ping = match poll_fn(|cx| outbox.poll_next(cx, &mut batch)).await {
            Next::Stop => return Wrote::Told,
            Next::Write { ping } => ping,
        };
    }
}

/// Sends the close frame (after the queued frames when `flush_first`, but for the
/// messages up to the seq given with it, which the replay sent) and waits for the
/// client's reply, within a time limit, and counts the close.
async fn finish(
    app: &AppState,
    sink: &mut SplitSink<WebSocket, WsMessage>,
    stream: &mut SplitStream<WebSocket>,
    end: End,
    flush_first: Option<(&Outbox, Seq)>,
) {
    let code = match end {
        End::Close(code) => code,
        End::ClientClosed(code) => {
            // tungstenite queued the close reply; flushing sends it.
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.flush()).await;
            app.metrics
                .close(code.map_or(CloseCode::Normal, CloseCode::from_u16));
            return;
        }
        End::Gone => {
            app.metrics.close(CloseCode::Abnormal);
            return;
        }
    };
    app.metrics.close(code);
    let close = async {
        if let Some((outbox, delivered)) = flush_first {
            let mut batch = VecDeque::new();
            outbox.take(&mut batch);
            for item in batch {
                if item.seq.is_some_and(|seq| seq <= delivered) {
                    continue;
                }
                sink.feed(WsMessage::Text(item.text)).await?;
            }
        }
        let frame = CloseFrame {
            code: code.as_u16(),
            reason: Utf8Bytes::from_static(code.reason()),
        };
        sink.send(WsMessage::Close(Some(frame))).await?;
        // Wait for the client's close reply before the TCP connection goes: closing
        // with unread data makes the kernel send a reset, and the client could lose
        // the close frame (and see 1006 instead of our code).
        while let Some(Ok(frame)) = stream.next().await {
            if matches!(frame, WsMessage::Close(_)) {
                break;
            }
        }
        Ok::<_, axum::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
}

/// Leaves the hub, and tells the chat when this was the user's last connection.
async fn cleanup(app: &AppState, admitted: &Admitted, conn_id: u64, typing: bool) {
    let chat = &admitted.chat;
    let backend = &app.backend;
    app.rooms.leave(&**backend, chat, conn_id).await;
    // Only a presence this connection took is given back: a refused start (a backend
    // error in presence_join, say) must not take the user's other tabs offline.
    let last = if admitted.present.load(Relaxed) {
        match backend.presence_leave(chat, &admitted.me.user_id).await {
            Ok(last) => last,
            Err(err) => {
                tracing::error!(%chat, error = %err, "presence leave failed");
                // The typing lease below still ends, even if presence could not be told.
                false
            }
        }
    } else {
        false
    };
    let me = &admitted.me;
    let mut events = Vec::with_capacity(2);
    // The typing lease: the connection that held it is gone and nobody is left to send
    // its typing_stop. Sent whether or not the user has other tabs open: a tab that
    // closes mid-word would otherwise leave "alice is typing" up while her other,
    // idle tab stays (a base-layer frontend has no lease expiry and no presence_leave
    // to fall back on). A second tab that really is typing refreshes within 3 s.
    if typing {
        events.push(ServerEvent::TypingStop {
            user_id: me.user_id.clone(),
        });
    }
    if last {
        events.push(ServerEvent::PresenceLeave(me.clone()));
    }
    for event in events {
        if let Err(err) = backend
            .publish(
                chat,
                ChatEvent::Broadcast {
                    event,
                    skip_user: None,
                },
            )
            .await
        {
            tracing::error!(%chat, error = %err, "publish on leave failed");
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// When a token with `exp` stops being valid, as a tokio instant. Any `exp` and leeway
/// the verifier accepted is served (the issuer signed it): one too far off for the
/// clocks is clamped, never a panic.
fn deadline(exp: u64, leeway: u64) -> tokio::time::Instant {
    // A far-future `exp` must not overflow the timer.
    const FAR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
    let left = match UNIX_EPOCH.checked_add(Duration::from_secs(exp.saturating_add(leeway))) {
        Some(valid_until) => valid_until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
        None => FAR,
    };
    tokio::time::Instant::now() + left.min(FAR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_deadline_never_panics_and_is_clamped() {
        let now = tokio::time::Instant::now();
        let far = now + Duration::from_secs(9 * 365 * 24 * 3600);
        for (exp, leeway) in [(1 << 63, 0), (u64::MAX, 0), (u64::MAX, u64::MAX), (1, u64::MAX)] {
            assert!(deadline(exp, leeway) > far, "exp {exp} leeway {leeway}");
        }
        assert!(deadline(0, 0) <= tokio::time::Instant::now(), "long expired");
        let in_an_hour = deadline(unix_now() + 3600, 0);
        assert!(in_an_hour > now + Duration::from_secs(3590) && in_an_hour < now + Duration::from_secs(3610));
    }

    #[tokio::test]
    async fn an_owned_task_is_aborted_when_its_owner_goes() {
        let (held, released) = oneshot::channel::<()>();
        let task = Owned::spawn(async move {
            // Holds `held` until aborted.
            let _held = held;
            std::future::pending::<()>().await;
        });
        drop(task);
        let released = tokio::time::timeout(Duration::from_secs(5), released).await;
        assert!(
            matches!(released, Ok(Err(_))),
            "the task was aborted and dropped what it held"
        );
    }
}
