//! Small JS helpers: field access with `Reflect`, object building, the SDK's error
//! objects, and a few globals. The options and frames are read with these instead of
//! `serde-wasm-bindgen`'s deserialiser, which brings `core::fmt` and serde's error
//! formatting into the `.wasm`: reading the options alone through it measured 26510 ->
//! 46973 B gzip (client/scripts/size.sh), over the package's 32 KB budget.

use js_sys::{Function, Object, Reflect, JSON};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

#[wasm_bindgen]
extern "C" {
    /// The global `atob`, to read a JWT payload.
    #[wasm_bindgen(catch, js_name = atob)]
    fn atob(data: &str) -> Result<String, JsValue>;
    /// `globalThis`, which every host able to run this `.wasm` (externref) has.
    /// `js_sys::global()` also probes `self`, `window` and `global`, at a cost in size.
    #[wasm_bindgen(thread_local_v2, js_name = globalThis)]
    static GLOBAL_THIS: JsValue;
}

/// The global object (`window` in a page).
pub fn global() -> JsValue {
    GLOBAL_THIS.with(JsValue::clone)
}

/// The current time in ms (wall clock: the only clock every JS host has).
pub fn now() -> f64 {
    js_sys::Date::now()
}

/// `value[key]`, `undefined` when absent or not an object.
pub fn get(value: &JsValue, key: &str) -> JsValue {
    if !value.is_object() {
        return JsValue::UNDEFINED;
    }
    Reflect::get(value, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// `value[key]` if it is a string.
pub fn get_str(value: &JsValue, key: &str) -> Option<String> {
    get(value, key).as_string()
}

/// `value[key]` as an id: a string, or an integer read as its decimal text (Django's
/// primary keys, simplejwt's `user_id`).
pub fn get_id(value: &JsValue, key: &str) -> Option<String> {
    let field = get(value, key);
    if let Some(text) = field.as_string() {
        return Some(text);
    }
    let n = field.as_f64()?;
    if n.is_finite() && n.fract() == 0.0 && n >= 0.0 {
        let mut text = String::new();
        push_u64(&mut text, n as u64);
        return Some(text);
    }
    None
}

/// `value[key]` if it is a non-negative integer.
pub fn get_u64(value: &JsValue, key: &str) -> Option<u64> {
    get(value, key)
        .as_f64()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| n as u64)
}

/// `value[key]` if it is a finite number `>= 0`, else `default`.
pub fn get_ms(value: &JsValue, key: &str, default: f64) -> f64 {
    get(value, key)
        .as_f64()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .unwrap_or(default)
}

/// `target[key] = value`.
pub fn set(target: &JsValue, key: &str, value: &JsValue) {
    // Setting a plain property on a fresh object cannot fail.
    let _ = Reflect::set(target, &JsValue::from_str(key), value);
}

/// A fresh `{}`.
pub fn object() -> JsValue {
    Object::new().into()
}

/// A `HablarError`: an `Error` with `name`, `code`, `detail` and maybe `clientId`.
pub fn error(code: &str, detail: &str, client_id: Option<&str>) -> JsValue {
    let err = js_sys::Error::new(detail);
    err.set_name("HablarError");
    let err: JsValue = err.into();
    set(&err, "code", &JsValue::from_str(code));
    set(&err, "detail", &JsValue::from_str(detail));
    if let Some(id) = client_id {
        set(&err, "clientId", &JsValue::from_str(id));
    }
    err
}

/// Calls `f(arg)`, swallowing what it throws: one app listener's bug must not break
/// the connection or the other listeners.
pub fn call(f: &Function, arg: &JsValue) {
    let _ = f.call1(&JsValue::NULL, arg);
}

/// Appends `n` in decimal (no `core::fmt`, and no indexing whose bounds-check message
/// would bring it in).
pub fn push_u64(out: &mut String, n: u64) {
    if n >= 10 {
        push_u64(out, n / 10);
    }
    out.push(char::from(b'0' + (n % 10) as u8));
}

/// Appends `n` as 13 lowercase hex digits (52 bits).
fn push_hex52(out: &mut String, n: u64) {
    for shift in (0..13).rev() {
        let nibble = ((n >> (shift * 4)) & 0xf) as u8;
        out.push(char::from(if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        }));
    }
}

/// A fresh `client_id`: 104 random bits, 26 hex characters. `Math.random` is enough
/// here: the key only has to be unique among one chat's recent messages.
pub fn new_client_id() -> String {
    let mut id = String::with_capacity(26);
    for _ in 0..2 {
        push_hex52(&mut id, (js_sys::Math::random() * 4_503_599_627_370_496.0) as u64);
    }
    id
}

/// A fresh jitter seed.
pub fn random_seed() -> u64 {
    (js_sys::Math::random() * 9_007_199_254_740_992.0) as u64
}

/// The `user_id` claim of a JWT, read without verifying anything: it only tells the SDK,
/// on a server that sends no `ready`, which typing events are the user's own and which
/// echoes acknowledge the user's sends. Nothing is granted on it (the server checks the
/// token); a wrong claim can only make the user's own sends wait.
pub fn jwt_user_id(token: &str) -> Option<String> {
    // Byte positions and `get`: `split_once` brings in slicing panics and their messages.
    let dot = |s: &str| s.bytes().position(|b| b == b'.');
    let rest = token.get(dot(token)? + 1..)?;
    let payload = rest.get(..dot(rest)?)?;
    let mut b64: String = payload
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !b64.len().is_multiple_of(4) {
        b64.push('=');
    }
    let json = atob(&b64).ok()?;
    let claims = JSON::parse(&json).ok()?;
    get_id(&claims, "user_id")
}

/// Unicode scalar values in `text`. (`chars().count()` pulls in a large specialised
/// counter; a chat message is short.)
pub fn char_count(text: &str) -> usize {
    text.chars().fold(0, |n, _| n + 1)
}

/// `value` as a function, if it is one.
pub fn as_function(value: &JsValue) -> Option<Function> {
    value.dyn_ref::<Function>().cloned()
}
