//! The values the app receives: connection states, user lists and the history-reload
//! event, serialised with `serde-wasm-bindgen` into the shapes the TypeScript types say;
//! and the details of the SDK's own errors.
//!
//! Serialising these with `serde-wasm-bindgen` instead of building them with `Reflect`
//! cost 2258 B gzip (client/scripts/size.sh: 26510 -> 28768 B), which the package can
//! afford. Reading options and frames with it cannot be afforded: see `decode`.

use hablar_protocol::CloseCode;
use serde::Serialize;
use wasm_bindgen::JsValue;

use crate::machine::{Machine, ReloadReason, State};

/// `ConnectionState`.
#[derive(Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
enum StateJs {
    Connecting {
        attempt: u32,
    },
    Open,
    Reconnecting {
        attempt: u32,
        #[serde(rename = "delayMs")]
        delay_ms: f64,
    },
    Closed,
    Failed {
        code: u16,
        reason: &'static str,
    },
}

/// `ChatUser`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserJs<'a> {
    user_id: &'a str,
    username: &'a str,
}

/// `ReloadHistoryEvent`.
#[derive(Serialize)]
struct ReloadJs {
    reason: &'static str,
}

/// `value` as a plain JS object or array.
fn to_js(value: &impl Serialize) -> JsValue {
    // Cannot fail: every payload here is strings and numbers in structs and lists.
    serde_wasm_bindgen::to_value(value).unwrap_or(JsValue::UNDEFINED)
}

/// `{ state, ... }` as the TypeScript `ConnectionState` says.
pub(super) fn state_js(state: &State) -> JsValue {
    to_js(&match state {
        State::Connecting { attempt } => StateJs::Connecting { attempt: *attempt },
        State::Open => StateJs::Open,
        State::Reconnecting { attempt, delay_ms } => StateJs::Reconnecting {
            attempt: *attempt,
            delay_ms: delay_ms.round(),
        },
        State::Closed => StateJs::Closed,
        State::Failed { code } => StateJs::Failed {
            code: *code,
            reason: CloseCode::from_u16(*code).reason(),
        },
    })
}

/// Who is typing, as `ChatUser[]`.
pub(super) fn typers_js(machine: &Machine<String>) -> JsValue {
    users_js(machine.typers().iter().map(|t| (&*t.user_id, &*t.username)))
}

/// Who is online, as `ChatUser[]`.
pub(super) fn presence_js(machine: &Machine<String>) -> JsValue {
    users_js(machine.presence().iter().map(|u| (&*u.user_id, &*u.username)))
}

/// `(user_id, username)` pairs as `ChatUser[]`.
fn users_js<'a>(users: impl Iterator<Item = (&'a str, &'a str)>) -> JsValue {
    let users: Vec<UserJs> = users
        .map(|(user_id, username)| UserJs { user_id, username })
        .collect();
    to_js(&users)
}

/// `{ reason }` as the TypeScript `ReloadHistoryEvent` says.
pub(super) fn reload_js(reason: ReloadReason) -> JsValue {
    to_js(&ReloadJs {
        reason: match reason {
            ReloadReason::NotRecovered => "not_recovered",
            ReloadReason::NoResume => "no_resume",
        },
    })
}

/// The `detail` of a send the SDK itself rejected.
pub(super) fn send_error_detail(code: &str) -> &'static str {
    match code {
        "outbox_full" => "too many messages waiting to be sent",
        "closed" => "the client was closed before the message was delivered",
        _ => "the connection failed before the message was delivered",
    }
}
