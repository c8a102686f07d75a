//! Server frames to [`Incoming`]: `JSON.parse` and `Reflect` reads of the few fields the
//! decisions need. The parsed object is kept, so the app gets every field the server
//! sent (extra message fields included) without a Rust copy of it.
//!
//! Field by field rather than `serde-wasm-bindgen`: its deserialiser is what costs
//! (measured on the options: 26510 -> 46973 B gzip with client/scripts/size.sh, over
//! the package's 32 KB budget), and a frame would need it just the same.

use hablar_protocol::types;
use js_sys::JSON;
use wasm_bindgen::JsValue;

use super::js::{get, get_id, get_str, get_u64};
use crate::machine::{Incoming, User};

/// Parses a text frame. `None` for anything that is not a JSON object with a string
/// `type`, or a known type missing what identifies it: such frames are ignored.
pub fn decode(text: &str) -> Option<(JsValue, Incoming)> {
    let frame = JSON::parse(text).ok()?;
    let kind = get_str(&frame, "type")?;
    let incoming = match kind.as_str() {
        types::READY => Incoming::Ready {
            user_id: get_id(&frame, "user_id"),
            epoch: get_str(&frame, "epoch"),
            last_seq: get_u64(&frame, "last_seq"),
            recovered: get(&frame, "recovered").as_bool().unwrap_or(false),
            presence: users(&get(&frame, "presence")),
        },
        types::NEW_MESSAGE => {
            let message = get(&frame, "message");
            Incoming::Message {
                seq: get_u64(&message, "seq"),
                id: get_id(&message, "id"),
                client_id: get_str(&message, "client_id"),
                sender_id: get_id(&get(&message, "sender"), "id"),
            }
        }
        types::TYPING_START => Incoming::TypingStart(user(&frame)?),
        types::TYPING_STOP => Incoming::TypingStop {
            user_id: get_id(&frame, "user_id")?,
        },
        types::PRESENCE_JOIN => Incoming::PresenceJoin(user(&frame)?),
        types::PRESENCE_LEAVE => Incoming::PresenceLeave {
            user_id: get_id(&frame, "user_id")?,
        },
        types::ERROR => Incoming::Error {
            code: get_str(&frame, "code").unwrap_or_default(),
            client_id: get_str(&frame, "client_id"),
        },
        _ => Incoming::Other,
    };
    Some((frame, incoming))
}

/// A `{user_id, username}` object; the id stands in for a missing name.
fn user(value: &JsValue) -> Option<User> {
    let user_id = get_id(value, "user_id")?;
    let username = get_str(value, "username").unwrap_or_else(|| user_id.clone());
    Some(User { user_id, username })
}

fn users(list: &JsValue) -> Vec<User> {
    if !js_sys::Array::is_array(list) {
        return Vec::new();
    }
    js_sys::Array::from(list)
        .iter()
        .filter_map(|u| user(&u))
        .collect()
}
