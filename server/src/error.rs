//! The crate's one error type, and its mapping to HTTP responses (in one place).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::auth::AuthError;

/// What can go wrong in the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot run (bad flags, dev mode on a public address…).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Binding, accepting or serving failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A token was missing or refused (the reason never holds the token).
    #[error("unauthorized: {0}")]
    Auth(#[from] AuthError),
    /// An admin request without the right key.
    #[error("admin key missing or wrong")]
    AdminKey,
    /// The user is not a member of the chat.
    #[error("not a member of this chat")]
    NotMember,
    /// The chat, user or member does not exist.
    #[error("not found")]
    NotFound,
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The client asked too often; it may ask again after `retry_after`.
    #[error("too many requests")]
    TooManyRequests {
        /// How long until the client's bucket has a token again.
        retry_after: std::time::Duration,
    },
    /// The store or broker failed; the detail is logged, never sent.
    #[error("backend unavailable: {0}")]
    Backend(String),
}

/// The crate's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code, detail) = match &self {
            Self::Auth(reason) => (StatusCode::UNAUTHORIZED, "unauthorized", reason.to_string()),
            Self::AdminKey => (StatusCode::UNAUTHORIZED, "unauthorized", self.to_string()),
            Self::NotMember => (StatusCode::FORBIDDEN, "forbidden", self.to_string()),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found", self.to_string()),
            Self::BadRequest(detail) => (StatusCode::BAD_REQUEST, "bad_request", detail.clone()),
            Self::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; retry after the Retry-After seconds".to_owned(),
            ),
            Self::Backend(_) => {
                tracing::error!(error = %self, "backend error while answering a request");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "try again later".to_owned(),
                )
            }
            Self::Config(_) | Self::Io(_) => {
                tracing::error!(error = %self, "internal error while answering a request");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".to_owned(),
                )
            }
        };
        let mut response = (
            status,
            Json(serde_json::json!({ "error": code, "detail": detail })),
        )
            .into_response();
        if let Self::TooManyRequests { retry_after } = &self {
            // Whole seconds (RFC 9110 §10.2.3), rounded up so that a client that waits
            // exactly this long finds a token.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs.max(1)),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        for (wait, header) in [(200, "1"), (1000, "1"), (1500, "2"), (0, "1")] {
            let retry_after = Duration::from_millis(wait);
            let response = Error::TooManyRequests { retry_after }.into_response();
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(response.headers()["retry-after"], header, "{wait} ms");
        }
    }
}
