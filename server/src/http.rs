//! The HTTP surface: the router, the WebSocket handshake (Origin check before the
//! upgrade, then the limits per client address), history (rate-limited per user),
//! health, metrics (or a router of its own for a private listener), and in dev mode the
//! token endpoint, CORS for loopback origins and the static files.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use axum_extra::headers::authorization::Bearer;
use axum_extra::headers::Authorization;
use axum_extra::typed_header::TypedHeaderRejection;
use axum_extra::TypedHeader;
use hablar_protocol::events::HistoryPage;
use hablar_protocol::limits::MAX_HISTORY_LIMIT;
use hablar_protocol::{ChatId, CloseCode, Seq, UserId};
use serde::Deserialize;
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

use crate::auth::{mint_hs256, AuthError};
use crate::connection::{self, RawConnect};
use crate::error::{Error, Result};
use crate::{admin, peer, AppState};

/// The server's routes; `/metrics` among them unless `private_metrics` (then it is served
/// by [`metrics_router`] on a listener of its own, and answers 404 here).
///
/// Serve it with `into_make_service_with_connect_info::<SocketAddr>()`: the limits per
/// client address need the peer's address, and without it every client counts as one.
pub fn router(app: Arc<AppState>, private_metrics: bool) -> Router {
    // The browser-facing JSON API answers CORS for the allowed origins (and loopback in
    // dev mode); the admin API is server-to-server and does not.
    let mut api = Router::new().route("/api/chats/{chat_id}/messages", get(history));
    if app.config.dev {
        api = api.route("/api/dev/token", post(dev_token));
    }
    let api = api.layer(cors(&app));
    let mut router = Router::new()
        .route("/ws/chat/{chat_id}/", get(ws_handshake))
        .route("/ws/chat/{chat_id}", get(ws_handshake))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(api)
        .merge(admin::routes(app.clone()));
    if !private_metrics {
        router = router.route("/metrics", get(metrics));
    }
    if app.config.dev {
        router = router
            .nest_service("/pkg", ServeDir::new(&app.config.pkg_dir))
            .fallback_service(ServeDir::new(&app.config.www_dir));
    }
    // Spans name the path only: the query holds the WebSocket token.
    let trace = TraceLayer::new_for_http().make_span_with(|request: &Request| {
        tracing::info_span!("http", method = %request.method(), path = %request.uri().path())
    });
    router.layer(trace).with_state(app)
}

/// `/metrics` alone, for a private listener (`--metrics-bind`).
pub fn metrics_router(app: Arc<AppState>) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(app)
}

/// Initial WebSocket read buffer per connection.
const READ_BUFFER_BYTES: usize = 4 * 1024;

async fn ws_handshake(
    State(app): State<Arc<AppState>>,
    Path(chat): Path<String>,
    query: Result<Query<RawConnect>, QueryRejection>,
    headers: HeaderMap,
    connect_info: Option<Extension<ConnectInfo<SocketAddr>>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // A header that is not visible ASCII cannot be on the list.
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if !app.origins.allows(origin) {
        // Debug: both are the client's raw text, escaped so they cannot forge log lines.
        tracing::warn!(chat = ?chat, origin = ?origin, "handshake from a foreign origin refused");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let max = app.config.limits.max_frame_bytes;
    let upgrade = upgrade
        // tungstenite zero-fills its whole read buffer (128 KiB by default) on the first
        // read, so the default would cost every idle connection 128 KiB of RSS. Client
        // frames are small; the buffer still grows for a large one (up to `max`).
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(max)
        .max_frame_size(max);
    // Without connect info (a router served without it) every client is one address.
    let peer = connect_info.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0 .0.ip());
    let client = peer::client_ip(peer, &headers, &app.config.trusted_proxies);
    match app.peers.admit(client, Instant::now()) {
        Ok(slot) => upgrade.on_upgrade(move |socket| connection::run(app, socket, chat, query, slot)),
        Err(why) => {
            // Refused after the upgrade, with a close code a browser can read, like the
            // other refusals; the token is never looked at. Debug level: a flood must not
            // flood the log too (the metric counts them).
            tracing::debug!(%client, ?why, "handshake refused by the limits per address");
            app.metrics.refused(why);
            upgrade.on_upgrade(move |socket| connection::refuse(app, socket, CloseCode::TooMany))
        }
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    before: Option<u64>,
    limit: Option<u32>,
}

async fn history(
    State(app): State<Arc<AppState>>,
    Path(chat): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
    authorization: BearerHeader,
) -> Result<Json<HistoryPage>> {
    let token = bearer_token(&authorization).ok_or(AuthError::Missing)?;
    let claims = app.verifier.verify(token, unix_now())?;
    // Charged before the store is read, whatever the answer: a 403 or 404 costs as much.
    if let Err(wait) = app.history_rate.take(&claims.user_id, Instant::now()) {
        app.metrics.history_limited.fetch_add(1, Relaxed);
        return Err(Error::TooManyRequests { retry_after: wait });
    }
    let Query(query) = query.map_err(|err| Error::BadRequest(err.body_text()))?;
    let chat = ChatId::new(chat).map_err(|_| Error::NotFound)?;
    if !app.backend.chat_exists(&chat).await? {
        return Err(Error::NotFound);
    }
    if !app.backend.is_member(&chat, &claims.user_id).await? {
        return Err(Error::NotMember);
    }
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_HISTORY_LIMIT) as usize;
    Ok(Json(
        app.backend.history(&chat, query.before.map(Seq), limit).await?,
    ))
}

/// The `Authorization: Bearer …` header; a rejection when it is missing or of another
/// scheme, which the handlers answer with 401 like a missing token.
pub(crate) type BearerHeader = Result<TypedHeader<Authorization<Bearer>>, TypedHeaderRejection>;

/// The token of an `Authorization: Bearer …` header, unless it is blank.
pub(crate) fn bearer_token(header: &BearerHeader) -> Option<&str> {
    header
        .as_ref()
        .ok()
        .map(|TypedHeader(authorization)| authorization.token().trim())
        .filter(|token| !token.is_empty())
}

async fn metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        app.metrics.render(),
    )
}

#[derive(Deserialize)]
struct DevTokenRequest {
    user_id: UserId,
    ttl_secs: Option<u64>,
}

/// Dev mode: a signed access token for any user, like simplejwt's token view.
async fn dev_token(
    State(app): State<Arc<AppState>>,
    Json(request): Json<DevTokenRequest>,
) -> Result<Json<serde_json::Value>> {
    let secret = app.config.jwt_secret().ok_or(Error::NotFound)?;
    let username = app
        .backend
        .display_name(&request.user_id)
        .await?
        .unwrap_or_else(|| request.user_id.to_string());
    let now = unix_now();
    let ttl = request.ttl_secs.unwrap_or(3600).clamp(1, 7 * 24 * 3600);
    let jti: u128 = rand::random();
    let claims = json!({
        "token_type": "access",
        "exp": now + ttl,
        "iat": now,
        "jti": format!("{jti:032x}"),
        "user_id": request.user_id,
        "username": username,
    });
    let token = mint_hs256(secret.expose().as_bytes(), &claims)?;
    tracing::info!(user = %request.user_id, ttl, "dev token issued");
    Ok(Json(
        json!({ "token": token, "user_id": request.user_id, "username": username }),
    ))
}

/// CORS for the origins the WebSocket accepts: the allow-list, and in dev mode any
/// loopback origin (browser tests run pages on random ports).
fn cors(app: &Arc<AppState>) -> CorsLayer {
    let origins = app.origins.clone();
    CorsLayer::new()
        // An origin that is not visible ASCII cannot be on the list.
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|origin| origins.allows(Some(origin)))
        }))
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
