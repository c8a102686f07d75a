//! The admin HTTP API (`Authorization: Bearer {admin_key}`, checked by a route layer
//! before any handler runs): chats, members, profiles (display names stored cleaned, see
//! [`hablar_protocol::names`]).
//! Removing a member closes their sockets in the chat with 4403 through the backend's
//! control event, so it works across instances.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Json, Router};
use hablar_protocol::{names, ChatId, UserId};
use serde::Deserialize;
use serde_json::json;

use crate::auth::constant_time_eq;
use crate::error::{Error, Result};
use crate::http::{bearer_token, BearerHeader};
use crate::AppState;

/// The admin routes, each behind the admin-key check.
pub fn routes(app: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/admin/chats/{chat_id}", put(put_chat))
        .route(
            "/api/admin/chats/{chat_id}/members/{user_id}",
            put(put_member).delete(delete_member),
        )
        .route("/api/admin/users/{user_id}", put(put_user))
        // A route layer: a path that matches no admin route stays a 404.
        .route_layer(middleware::from_fn_with_state(app, require_admin_key))
}

/// Lets a request through only with the admin key, compared in constant time; 401
/// otherwise, and always when no key is configured.
async fn require_admin_key(
    State(app): State<Arc<AppState>>,
    authorization: BearerHeader,
    request: Request,
    next: Next,
) -> Result<Response> {
    let key = app.config.admin_key().ok_or(Error::AdminKey)?;
    let given = bearer_token(&authorization).ok_or(Error::AdminKey)?;
    if constant_time_eq(given.as_bytes(), key.expose().as_bytes()) {
        Ok(next.run(request).await)
    } else {
        Err(Error::AdminKey)
    }
}

fn chat_id(chat: String) -> Result<ChatId> {
    ChatId::new(chat).map_err(|err| Error::BadRequest(err.to_string()))
}

fn user_id(user: String) -> Result<UserId> {
    UserId::new(user).map_err(|err| Error::BadRequest(err.to_string()))
}

async fn put_chat(State(app): State<Arc<AppState>>, Path(chat): Path<String>) -> Result<Response> {
    let chat = chat_id(chat)?;
    let created = app.backend.create_chat(&chat).await?;
    tracing::info!(%chat, created, "admin: chat put");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "chat_id": chat, "created": created }))).into_response())
}

async fn put_member(
    State(app): State<Arc<AppState>>,
    Path((chat, user)): Path<(String, String)>,
) -> Result<StatusCode> {
    let (chat, user) = (chat_id(chat)?, user_id(user)?);
    if !app.backend.add_member(&chat, &user).await? {
        return Err(Error::NotFound);
    }
    tracing::info!(%chat, %user, "admin: member added");
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_member(
    State(app): State<Arc<AppState>>,
    Path((chat, user)): Path<(String, String)>,
) -> Result<StatusCode> {
    let (chat, user) = (chat_id(chat)?, user_id(user)?);
    if !app.backend.remove_member(&chat, &user).await? {
        return Err(Error::NotFound);
    }
    tracing::info!(%chat, %user, "admin: member removed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct Profile {
    display_name: String,
}

async fn put_user(
    State(app): State<Arc<AppState>>,
    Path(user): Path<String>,
    body: Bytes,
) -> Result<StatusCode> {
    // Read as bytes and parsed here, so that a bad body is a 400 with our error body,
    // not a `Json` extractor's 415/422.
    let profile: Profile = serde_json::from_slice(&body)
        .map_err(|_| Error::BadRequest("expected {\"display_name\": \"…\"}".into()))?;
    let user = user_id(user)?;
    // Stored as it will be shown (control and bidi characters removed, cut to 64
    // characters), so that every reader of the store gets the clean name; refused only
    // when nothing is left of it.
    let name = names::clean(&profile.display_name)
        .ok_or_else(|| Error::BadRequest("display_name has no visible characters".into()))?;
    app.backend.set_display_name(&user, &name).await?;
    tracing::info!(%user, "admin: profile put");
    Ok(StatusCode::NO_CONTENT)
}
