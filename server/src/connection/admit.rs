//! Admission: token, chat, membership and the per-user connection limit, before a
//! socket is let in.

use std::sync::atomic::AtomicBool;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hablar_protocol::events::PresenceUser;
use hablar_protocol::{names, ChatId, CloseCode};

use super::Admitted;
use crate::AppState;

/// Token, chat, membership, then the per-user limit last, so that no later failure of
/// the admission holds a slot.
pub(super) async fn admit(app: &AppState, chat: &str, token: Option<&str>) -> Result<Admitted, CloseCode> {
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

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
