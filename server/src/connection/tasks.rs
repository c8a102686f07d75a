//! The reader and the writer as tasks that never outlive their owner, raced against the
//! close signals (hub, shutdown, token expiry) until one of them ends the connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use hablar_protocol::{CloseCode, Seq};
use tokio::sync::{oneshot, watch, Mutex as AsyncMutex};
use tokio::task::{JoinError, JoinHandle};

use super::close::finish;
use super::reader::read_loop;
use super::start::Started;
use super::writer::{write_loop, Wrote};
use super::{Admitted, End, Session};
use crate::send_queue::SendQueue;
use crate::AppState;

/// A spawned task that is aborted when this handle is dropped: a connection's tasks never
/// outlive the task that owns them (a panic there would otherwise leave the reader and
/// the writer holding a socket nobody closes).
pub(super) struct Owned<T>(JoinHandle<T>);

impl<T: Send + 'static> Owned<T> {
    pub(super) fn spawn(task: impl Future<Output = T> + Send + 'static) -> Self {
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
pub(super) struct Socket {
    pub(super) sink: Arc<AsyncMutex<SplitSink<WebSocket, WsMessage>>>,
    pub(super) stream: Arc<AsyncMutex<SplitStream<WebSocket>>>,
}

impl Socket {
    /// Sends the close frame and waits for the reply (see [`finish`]), once both halves
    /// are free.
    pub(super) async fn finish(&self, app: &AppState, end: End, flush_first: Option<(&SendQueue, Seq)>) {
        let mut sink = self.sink.lock().await;
        let mut stream = self.stream.lock().await;
        finish(app, &mut sink, &mut stream, end, flush_first).await;
    }
}

/// A connection's socket, its queue, and the reader's state.
pub(super) struct Halves {
    pub(super) socket: Socket,
    /// What the hub fans out to the connection and the reader's direct answers (errors,
    /// pongs, duplicate echoes); the writer's stop and ping signals.
    pub(super) queue: Arc<SendQueue>,
    pub(super) session: Session,
}

/// Runs the reader and the writer as two tasks until one ends or the connection is told
/// to close (hub, shutdown, token expiry), then closes. The writer starts with `ready`
/// and the replay, so these signals hold during the replay too. Returns how the
/// connection ended and the reader's state (`None` if the reader's task failed).
pub(super) async fn drive(
    app: &Arc<AppState>,
    admitted: &Arc<Admitted>,
    halves: Halves,
    mut close_rx: watch::Receiver<Option<CloseCode>>,
    started: Started,
) -> (End, Option<Session>) {
    let Halves {
        socket,
        queue,
        mut session,
    } = halves;
    let Started { delivered, frames } = started;
    // Before the reader starts: the echo of a resend may go out up to here, as it is
    // queued behind the replay.
    queue.replayed_up_to(delivered);
    // Each task stops at once when told and lets go of its half, so that the close
    // frame can be written and the client's reply read.
    let (stop_reader, reader_stopped) = oneshot::channel::<()>();
    let mut reader = Owned::spawn({
        let (app, admitted, queue) = (app.clone(), admitted.clone(), queue.clone());
        let stream = socket.stream.clone();
        async move {
            let mut stream = stream.lock_owned().await;
            let end = tokio::select! {
                end = read_loop(&app, &admitted, &mut stream, &mut session, &queue) => Some(end),
                _ = reader_stopped => None,
            };
            (end, session)
        }
    });
    let mut writer = Owned::spawn({
        let queue = queue.clone();
        let sink = socket.sink.clone();
        // A client that does not take a batch in this time is too slow, replay or not.
        let deadline = app.config.limits.idle_timeout();
        async move {
            let mut sink = sink.lock_owned().await;
            let wrote = write_loop(&mut sink, &queue, delivered, frames, deadline).await;
            // Nothing pushed from now on would be written.
            queue.close();
            wrote
        }
    });

    // The writer waits on its queue alone; the keep-alive ping is asked for from here,
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
            _ = ping.tick() => queue.ping(),
        }
    };
    let _ = stop_reader.send(());
    queue.stop();
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
        .then_some((&*queue, delivered));
    socket.finish(app, end, flush_first).await;
    (end, reader_out.map(|(_, session)| session))
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
    use crate::connection::admit::unix_now;

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
