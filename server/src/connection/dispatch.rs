//! What a client frame does: its rate budget, then a direct answer or the backend call it
//! needs.

use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use hablar_protocol::events::{encode, ClientEvent, ErrorEvent, ServerEvent};
use hablar_protocol::{ClientId, CloseCode, ErrorCode};

use super::calls::Op;
use super::{Admitted, End, Session};
use crate::backend::{ChatEvent, NewMessage};
use crate::limits::{Budget, RateDecision};
use crate::send_queue::{QueuedFrame, SendQueue};
use crate::AppState;

/// Takes a token from the frame's budget: `Ok(true)` to handle the frame, `Ok(false)`
/// when it is dropped, `Err` to close for repeated abuse.
pub(super) fn rate_limit(
    admitted: &Admitted,
    session: &mut Session,
    tx: &SendQueue,
    budget: Budget,
) -> Result<bool, End> {
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
pub(super) fn handle_text(
    app: &AppState,
    admitted: &Admitted,
    session: &mut Session,
    tx: &SendQueue,
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

/// The `message.client_id` of a frame that did not parse, for the error event.
fn client_id_of(text: &str) -> Option<ClientId> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let id = value.get("message")?.get("client_id")?.as_str()?;
    ClientId::new(id).ok()
}

/// Queues a direct answer for this connection only.
pub(super) fn reply(tx: &SendQueue, event: &ServerEvent) {
    // A full queue means the hub is about to close this connection as too slow.
    let _ = tx.push(QueuedFrame {
        text: Utf8Bytes::from(encode(event)),
        seq: None,
    });
}

pub(super) fn reply_error(tx: &SendQueue, code: ErrorCode, detail: String, client_id: Option<ClientId>) {
    reply(
        tx,
        &ServerEvent::Error(ErrorEvent {
            code,
            detail,
            client_id,
        }),
    );
}
