//! The start of an admitted connection: presence, then `ready` and the replay, encoded
//! for the writer.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::ws::Utf8Bytes;
use hablar_protocol::events::{encode, Ready, ServerEvent};
use hablar_protocol::{CloseCode, Epoch, Seq};

use super::{Admitted, End, RawConnect};
use crate::backend::{ChatEvent, Replay};
use crate::send_queue::QueuedFrame;
use crate::AppState;

/// What a connection starts with, for its writer.
pub(super) struct Started {
    /// The seq up to which the replay delivers: live messages up to it are dropped.
    pub(super) delivered: Seq,
    /// `ready`, then the replayed messages: the writer's first batch.
    pub(super) frames: VecDeque<QueuedFrame>,
}

/// Presence and replay: returns `ready` and the replayed messages, encoded, and the seq
/// up to which live messages are already delivered. Writes nothing: the writer does,
/// while the close signals are watched.
pub(super) async fn start(app: &AppState, admitted: &Admitted, query: &RawConnect) -> Result<Started, End> {
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
    frames.extend(std::iter::once(ready).chain(messages).map(|text| QueuedFrame {
        text: Utf8Bytes::from(text),
        seq: None,
    }));
    Ok(Started {
        delivered: last_seq,
        frames,
    })
}
