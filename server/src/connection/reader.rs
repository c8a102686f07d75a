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
            Ok(Some(Err(err))) => return read_error(err),
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

/// Maps a read error to how the connection ends, by the type of tungstenite's error
/// (which axum boxes): a frame over the size limit is 1009, text that is not UTF-8 1007,
/// a protocol violation 1002 (RFC 6455, 7.4.1). A transport that failed, the client gone
/// without a close frame included, leaves no close frame to send.
fn read_error(err: axum::Error) -> End {
    use tungstenite::error::ProtocolError;
    let err = err.into_inner();
    match err.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Close(CloseCode::TooBig),
        Some(tungstenite::Error::Utf8(_)) => End::Close(CloseCode::Other(1007)),
        Some(tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => End::Gone,
        Some(tungstenite::Error::Protocol(_)) => End::Close(CloseCode::Other(1002)),
        _ => End::Gone,
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use tungstenite::error::{CapacityError, ProtocolError};

    use super::*;

    fn end_of(err: tungstenite::Error) -> End {
        read_error(axum::Error::new(err))
    }

    #[test]
    fn read_errors_choose_their_close_code_by_type() {
        let too_long = CapacityError::MessageTooLong { size: 2, max_size: 1 };
        assert_eq!(
            end_of(tungstenite::Error::Capacity(too_long)),
            End::Close(CloseCode::TooBig)
        );
        let not_utf8 = tungstenite::Error::Utf8("invalid utf-8 sequence".into());
        assert_eq!(end_of(not_utf8), End::Close(CloseCode::Other(1007)));
        let reserved = tungstenite::Error::Protocol(ProtocolError::NonZeroReservedBits);
        assert_eq!(end_of(reserved), End::Close(CloseCode::Other(1002)));
    }

    #[test]
    fn a_transport_that_failed_ends_without_a_close_frame() {
        let reset = tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake);
        assert_eq!(end_of(reset), End::Gone);
        let io = tungstenite::Error::Io(io::ErrorKind::ConnectionReset.into());
        assert_eq!(end_of(io), End::Gone);
        // Not tungstenite's error at all: nothing to say to the client.
        let other = axum::Error::new(io::Error::other("Space limit exceeded"));
        assert_eq!(read_error(other), End::Gone);
    }
}
