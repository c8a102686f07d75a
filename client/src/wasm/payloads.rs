//! The values the app receives: connection states, user lists and the details of the
//! SDK's own errors, shaped as the TypeScript types say.

use hablar_protocol::CloseCode;
use wasm_bindgen::JsValue;

use super::js::{object, set};
use crate::machine::{Machine, State};

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

pub(super) fn typers_js(machine: &Machine<String>) -> JsValue {
    let list = js_sys::Array::new();
    for t in machine.typers() {
        list.push(&user_js(&t.user_id, &t.username));
    }
    list.into()
}

pub(super) fn presence_js(machine: &Machine<String>) -> JsValue {
    let list = js_sys::Array::new();
    for u in machine.presence() {
        list.push(&user_js(&u.user_id, &u.username));
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
