//! The reader: the client's frames off the socket, each to its budget and handler, until
//! the connection ends.

use std::future::poll_fn;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use hablar_protocol::events::{parse_client, ClientEvent};
use hablar_protocol::{CloseCode, ErrorCode};

use super::dispatch::{handle_text, rate_limit, reply_error};
use super::{Admitted, End, Session};
use crate::limits::Budget;
use crate::send_queue::SendQueue;
use crate::AppState;

/// Reads and handles the client's frames until the connection ends. The backend calls
/// they need are queued in `session.calls`, and what is left of them when this returns
/// (or is dropped) is finished by `run`.
pub(super) async fn read_loop(
    app: &Arc<AppState>,
    admitted: &Admitted,
    stream: &mut SplitStream<WebSocket>,
    session: &mut Session,
    tx: &SendQueue,
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
