//! The end of a connection: the close handshake, and the cleanup after (hub, presence,
//! typing lease).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hablar_protocol::events::ServerEvent;
use hablar_protocol::{CloseCode, Seq};

use super::tasks::Socket;
use super::{Admitted, End};
use crate::backend::ChatEvent;
use crate::send_queue::SendQueue;
use crate::AppState;

/// Closes with 1011 the socket of a session whose task died. Its reader and writer are
/// aborted, which frees the halves at their next turn on the runtime; if they are not
/// free within a second the socket is left to be dropped (TCP closes without a frame).
pub(super) async fn close_after_failure(app: &AppState, socket: &Socket) {
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

/// Sends the close frame (after the queued frames when `flush_first`, but for the
/// messages up to the seq given with it, which the replay sent) and waits for the
/// client's reply, within a time limit, and counts the close.
pub(super) async fn finish(
    app: &AppState,
    sink: &mut SplitSink<WebSocket, WsMessage>,
    stream: &mut SplitStream<WebSocket>,
    end: End,
    flush_first: Option<(&SendQueue, Seq)>,
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
        if let Some((queue, delivered)) = flush_first {
            let mut batch = VecDeque::new();
            queue.take(&mut batch);
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
pub(super) async fn cleanup(app: &AppState, admitted: &Admitted, conn_id: u64, typing: bool) {
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
