//! The `HablarClient` JS class: the package's API. Each method validates what the app
//! passed, hands it to the machine with the time, and lets the client carry out the rest.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use hablar_protocol::limits::{MAX_CLIENT_ID_CHARS, MAX_CONTENT_CHARS, MAX_FRAME_BYTES};
use hablar_protocol::ChatId;
use js_sys::{Object, Promise, JSON};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::js::{self, get, get_ms, get_str, now, object, set};
use super::listeners::{PendingSend, Topic};
use super::page::page_listeners;
use super::payloads::{presence_js, send_error_detail, state_js, typers_js};
use super::socket::ws_base;
use super::token::TokenSource;
use super::types::{
    ChatUsers, ConnectionState, ErrorListener, HablarOptions, MessageListener, MessagePromise,
    OutgoingMessage, ReloadHistoryListener, StateListener, Unsubscribe, UsersListener,
};
use super::Inner;
use crate::machine::{Config, Machine};

/// A live connection to one chat. See the package README for a complete example.
#[wasm_bindgen]
pub struct HablarClient {
    pub(super) inner: Rc<Inner>,
}

#[wasm_bindgen]
impl HablarClient {
    /// Creates a client; nothing happens on the network until `connect()`.
    #[wasm_bindgen(constructor)]
    pub fn new(options: HablarOptions) -> Result<HablarClient, JsError> {
        let options: JsValue = options.into();
        // Read field by field: through `serde-wasm-bindgen` these reads measured 26510 ->
        // 46973 B gzip (client/scripts/size.sh), over the package's budget. See `js`.
        let url = get_str(&options, "url").ok_or_else(|| JsError::new("options.url must be a string"))?;
        let chat_id = get_str(&options, "chatId")
            .filter(|id| ChatId::new(id.as_str()).is_ok())
            .ok_or_else(|| JsError::new("options.chatId must be 1-128 characters of [A-Za-z0-9_-]"))?;
        let token = get(&options, "token");
        let token = if let Some(fixed) = token.as_string() {
            TokenSource::Fixed(fixed)
        } else if let Some(provider) = js::as_function(&token) {
            TokenSource::Provider(provider)
        } else {
            return Err(JsError::new("options.token must be a string or a function"));
        };
        let defaults = Config::default();
        let config = Config {
            backoff_base_ms: get_ms(&options, "backoffBaseMs", defaults.backoff_base_ms),
            backoff_cap_ms: get_ms(&options, "backoffCapMs", defaults.backoff_cap_ms),
            stable_after_ms: get_ms(&options, "stableAfterMs", defaults.stable_after_ms),
            ready_timeout_ms: get_ms(&options, "readyTimeoutMs", defaults.ready_timeout_ms),
            connect_timeout_ms: get_ms(&options, "connectTimeoutMs", defaults.connect_timeout_ms),
            ping_interval_ms: get_ms(&options, "pingIntervalMs", defaults.ping_interval_ms),
            pong_timeout_ms: get_ms(&options, "pongTimeoutMs", defaults.pong_timeout_ms),
            outbox_limit: get_ms(&options, "outboxLimit", defaults.outbox_limit as f64) as usize,
        };
        let mut machine = Machine::new(config, js::random_seed());
        let user_id = get_str(&options, "userId");
        let user_from_options = user_id.is_some();
        if let Some(user_id) = user_id {
            machine.set_user_hint(user_id);
        }
        let inner = Rc::new_cyclic(|me: &Weak<Inner>| Inner {
            me: me.clone(),
            machine: RefCell::new(machine),
            base_url: ws_base(&url),
            chat_id,
            token,
            cached_token: RefCell::new(None),
            user_from_options,
            socket: RefCell::new(None),
            graveyard: RefCell::new(Vec::new()),
            token_waits: RefCell::new(Vec::new()),
            attempt_gen: Cell::new(0),
            timer: RefCell::new(None),
            _page: page_listeners(me),
            subscriptions: RefCell::new(Vec::new()),
            next_subscription: Cell::new(0),
            pending: RefCell::new(Vec::new()),
        });
        Ok(HablarClient { inner })
    }

    /// Connects, and keeps reconnecting until `close()` or a `failed` state.
    pub fn connect(&self) {
        self.inner.sweep();
        self.inner.machine.borrow_mut().connect(now());
        self.inner.pump();
    }

    /// Closes the connection for good: sends `typing_stop` if typing, and rejects every
    /// send still waiting with code `closed`. `connect()` starts again.
    pub fn close(&self) {
        self.inner.sweep();
        self.inner.machine.borrow_mut().close();
        self.inner.pump();
    }

    /// Sends a message. Resolves with the server's message (its echo: sent by this user,
    /// with this `client_id`; another member's message that reuses the `client_id` is
    /// not it); rejects with a `HablarError` (`outbox_full`, `invalid_message`,
    /// `closed`, `failed`, or the server's error code). While offline the message waits
    /// in the outbox and is sent on reconnect with the same `client_id`.
    pub fn send(&self, message: OutgoingMessage) -> MessagePromise {
        self.inner.sweep();
        let message: JsValue = message.into();
        let content_chars = get_str(&message, "content")
            .map(|c| js::char_count(c.trim()))
            .unwrap_or(0);
        if content_chars == 0 || content_chars > MAX_CONTENT_CHARS {
            let err = js::error("invalid_message", "content must be 1-4000 characters", None);
            return Promise::reject(&err).unchecked_into();
        }
        let client_id = get_str(&message, "client_id")
            .filter(|id| (1..=MAX_CLIENT_ID_CHARS).contains(&js::char_count(id)))
            .unwrap_or_else(js::new_client_id);
        let body: JsValue = Object::assign(&Object::new(), message.unchecked_ref()).into();
        set(&body, "client_id", &JsValue::from_str(&client_id));
        let frame = object();
        set(
            &frame,
            "type",
            &JsValue::from_str(hablar_protocol::types::NEW_MESSAGE),
        );
        set(&frame, "message", &body);
        let Some(text) = JSON::stringify(&frame).ok().and_then(|s| s.as_string()) else {
            let err = js::error("invalid_message", "message is not serialisable", None);
            return Promise::reject(&err).unchecked_into();
        };
        if text.len() > MAX_FRAME_BYTES {
            // The server would close with 1009, and the resend after the reconnect would
            // do it again, forever.
            let err = js::error("too_large", "message is larger than the server accepts", None);
            return Promise::reject(&err).unchecked_into();
        }
        let mut settle = None;
        let promise = Promise::new(&mut |resolve, reject| settle = Some((resolve, reject)));
        let Some((resolve, reject)) = settle else {
            return promise.unchecked_into();
        };
        let sent = self.inner.machine.borrow_mut().send(client_id.clone(), text);
        match sent {
            Ok(()) => self.inner.pending.borrow_mut().push(PendingSend {
                client_id,
                resolve,
                reject,
            }),
            Err(e) => js::call(
                &reject,
                &js::error(e.code(), send_error_detail(e.code()), Some(&client_id)),
            ),
        }
        self.inner.pump();
        promise.unchecked_into()
    }

    /// Call on every keystroke: sends at most one `typing_start` per 3 s, and
    /// `typing_stop` after 2 s without a keystroke. Ignored while not connected.
    pub fn typing(&self) {
        self.inner.sweep();
        self.inner.machine.borrow_mut().keystroke(now());
        self.inner.pump();
    }

    /// Typing ended without a send (input cleared or blurred): sends `typing_stop`.
    #[wasm_bindgen(js_name = "stopTyping")]
    pub fn stop_typing(&self) {
        self.inner.sweep();
        self.inner.machine.borrow_mut().stop_typing();
        self.inner.pump();
    }

    /// The connection state now.
    #[wasm_bindgen(getter)]
    pub fn state(&self) -> ConnectionState {
        state_js(self.inner.machine.borrow().state()).unchecked_into()
    }

    /// Who is typing now (never the user themself).
    #[wasm_bindgen(getter, js_name = "typingUsers")]
    pub fn typing_users(&self) -> ChatUsers {
        typers_js(&self.inner.machine.borrow()).unchecked_into()
    }

    /// Who is online now (from `ready` and presence events; empty with base-layer peers).
    #[wasm_bindgen(getter)]
    pub fn presence(&self) -> ChatUsers {
        presence_js(&self.inner.machine.borrow()).unchecked_into()
    }

    /// The user's id: from `ready`, the `userId` option, or the token's `user_id` claim.
    #[wasm_bindgen(getter, js_name = "userId")]
    pub fn user_id(&self) -> Option<String> {
        self.inner.machine.borrow().user_id().map(str::to_owned)
    }

    /// The newest message `seq` received (use as `before` bound when reloading history).
    #[wasm_bindgen(getter, js_name = "lastSeq")]
    pub fn last_seq(&self) -> Option<f64> {
        self.inner.machine.borrow().last_seq().map(|s| s as f64)
    }

    /// `listener(state)` on every connection state change.
    #[wasm_bindgen(js_name = "onState")]
    pub fn on_state(&self, listener: StateListener) -> Result<Unsubscribe, JsError> {
        self.subscribe(Topic::State, listener.into())
    }

    /// `listener(message)` for every new message, own echoes included, once each, in
    /// order.
    #[wasm_bindgen(js_name = "onMessage")]
    pub fn on_message(&self, listener: MessageListener) -> Result<Unsubscribe, JsError> {
        self.subscribe(Topic::Message, listener.into())
    }

    /// `listener(users)` whenever the list of users typing changes.
    #[wasm_bindgen(js_name = "onTyping")]
    pub fn on_typing(&self, listener: UsersListener) -> Result<Unsubscribe, JsError> {
        self.subscribe(Topic::Typing, listener.into())
    }

    /// `listener(users)` whenever the list of online users changes.
    #[wasm_bindgen(js_name = "onPresence")]
    pub fn on_presence(&self, listener: UsersListener) -> Result<Unsubscribe, JsError> {
        self.subscribe(Topic::Presence, listener.into())
    }

    /// `listener(error)` for every `error` event from the server.
    #[wasm_bindgen(js_name = "onError")]
    pub fn on_error(&self, listener: ErrorListener) -> Result<Unsubscribe, JsError> {
        self.subscribe(Topic::Error, listener.into())
    }

    /// `listener({ reason })` when messages may have been missed and history should be
    /// reloaded over HTTP.
    #[wasm_bindgen(js_name = "onReloadHistory")]
    pub fn on_reload_history(&self, listener: ReloadHistoryListener) -> Result<Unsubscribe, JsError> {
        self.subscribe(Topic::ReloadHistory, listener.into())
    }
}
