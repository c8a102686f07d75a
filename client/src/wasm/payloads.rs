//! The values the app receives: connection states, user lists and the details of the
//! SDK's own errors, shaped as the TypeScript types say.
//!
//! Built with `Reflect.set` rather than `serde-wasm-bindgen`: the same payloads through
//! `#[derive(Serialize)]` + `serde_wasm_bindgen::to_value` measured 26,510 -> 28,768 B
//! gzip (`client/scripts/size.sh`, +2,258 B, 8.6 %) for no change a user sees, and the
//! package's 32 KB budget must still hold the many-chat connection and the inbox. Reading
//! the options through its deserialiser measured 46,973 B gzip (see `js`).

use hablar_protocol::CloseCode;
use wasm_bindgen::JsValue;

use super::js::{object, set};
use crate::machine::{Machine, ReloadReason, State};

pub(super) fn send_error_detail(code: &str) -> &'static str {
    match code {
        "outbox_full" => "too many messages waiting to be sent",
        "closed" => "the client was closed before the message was delivered",
        _ => "the connection failed before the message was delivered",
    }
}

/// `{ state, ... }` as the TypeScript `ConnectionState` says.
pub(super) fn state_js(state: &State) -> JsValue {
    let out = object();
    let name = match state {
        State::Connecting { attempt } => {
            set(&out, "attempt", &JsValue::from(*attempt));
            "connecting"
        }
        State::Open => "open",
        State::Reconnecting { attempt, delay_ms } => {
            set(&out, "attempt", &JsValue::from(*attempt));
            set(&out, "delayMs", &JsValue::from(delay_ms.round()));
            "reconnecting"
        }
        State::Closed => "closed",
        State::Failed { code } => {
            set(&out, "code", &JsValue::from(*code));
            set(
                &out,
                "reason",
                &JsValue::from_str(CloseCode::from_u16(*code).reason()),
            );
            "failed"
        }
    };
    set(&out, "state", &JsValue::from_str(name));
    out
}

/// `{ reason }` as the TypeScript `ReloadHistoryEvent` says.
pub(super) fn reload_js(reason: ReloadReason) -> JsValue {
    let event = object();
    let reason = match reason {
        ReloadReason::NotRecovered => "not_recovered",
        ReloadReason::NoResume => "no_resume",
    };
    set(&event, "reason", &JsValue::from_str(reason));
    event
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
    let list = js_sys::Array::new();
    for (user_id, username) in users {
        list.push(&user_js(user_id, username));
    }
    list.into()
}

/// `{ userId, username }`.
pub(super) fn user_js(user_id: &str, username: &str) -> JsValue {
    let user = object();
    set(&user, "userId", &JsValue::from_str(user_id));
    set(&user, "username", &JsValue::from_str(username));
    user
}
