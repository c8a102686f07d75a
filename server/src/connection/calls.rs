//! The pipeline of a connection's backend calls: queued by the reader, run in batches,
//! their outcomes answered in order.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use axum::extract::ws::Utf8Bytes;
use hablar_protocol::events::{encode, ServerEvent};
use hablar_protocol::{ChatId, ClientId, ErrorCode};

use super::dispatch::{reply, reply_error};
use super::Admitted;
use crate::backend::{ChatEvent, NewMessage};
use crate::send_queue::SendQueue;
use crate::AppState;

/// Backend calls of one connection waiting for the one in flight, at most. Beyond it
/// the reader stops reading (TCP pushes back on the client) until the batch in flight
/// completes.
const MAX_QUEUED_CALLS: usize = 64;

/// A backend call a frame needs.
pub(super) enum Op {
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
pub(super) struct Calls {
    queued: Vec<Op>,
    in_flight: Option<Pin<Box<dyn Future<Output = Vec<Outcome>> + Send>>>,
}

impl Calls {
    pub(super) fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.queued.is_empty()
    }

    pub(super) fn is_full(&self) -> bool {
        self.queued.len() >= MAX_QUEUED_CALLS
    }

    /// Queues a call and starts it at once if nothing is in flight (the embedded
    /// backend completes it right there).
    pub(super) fn push(&mut self, op: Op, app: &Arc<AppState>, admitted: &Admitted, tx: &SendQueue) {
        self.queued.push(op);
        let mut cx = Context::from_waker(Waker::noop());
        let _ = self.poll_progress(&mut cx, app, admitted, tx);
    }

    /// Handles a finished batch and starts the next. `Ready` once nothing is queued or
    /// in flight.
    pub(super) fn poll_progress(
        &mut self,
        cx: &mut Context<'_>,
        app: &Arc<AppState>,
        admitted: &Admitted,
        tx: &SendQueue,
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
    pub(super) async fn finish(&mut self, app: &Arc<AppState>, admitted: &Admitted, tx: &SendQueue) {
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

/// Answers what a backend call came to.
fn handle_outcome(app: &AppState, admitted: &Admitted, tx: &SendQueue, outcome: Outcome) {
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
