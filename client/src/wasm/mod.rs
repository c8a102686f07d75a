//! The browser glue: the `HablarClient` JS class. It feeds the [`Machine`] what the
//! browser reports (socket events, one timer, `online`, `visibilitychange`) with
//! `Date.now()`, and carries out the machine's [`Output`]s. It decides nothing itself.

mod decode;
mod js;
mod socket;
mod types;

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use hablar_protocol::limits::{MAX_CLIENT_ID_CHARS, MAX_CONTENT_CHARS, MAX_FRAME_BYTES};
use hablar_protocol::{ChatId, CloseCode};
use js_sys::{Function, Object, Promise, JSON};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::EventTarget;

use self::js::{get, get_ms, get_str, now, object, set};
use self::socket::Socket;
use self::types::{
    ChatUsers, ConnectionState, ErrorListener, HablarOptions, MessageListener, MessagePromise,
    OutgoingMessage, ReloadHistoryListener, StateListener, Unsubscribe, UsersListener,
};
use crate::machine::{Config, Frame, Incoming, Machine, Output, ReloadReason, State};

/// What the app subscribed to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Topic {
    State,
    Message,
    Typing,
    Presence,
    Error,
    ReloadHistory,
}

/// One listener.
struct Subscription {
    id: u32,
    topic: Topic,
    listener: Function,
}

/// A `send()` promise waiting for its echo.
struct PendingSend {
    client_id: String,
    resolve: Function,
    reject: Function,
}

/// The two callbacks of one provider promise.
struct TokenWait {
    generation: u32,
    _on_token: Closure<dyn FnMut(JsValue)>,
    _on_error: Closure<dyn FnMut(JsValue)>,
}

/// Where tokens come from.
enum TokenSource {
    /// A fixed token (a refresh gets the same one, so a second 4401 fails).
    Fixed(String),
    /// `() => string | Promise<string>`, called on the first connect and on 4401.
    Provider(Function),
}

/// The `online` and `visibilitychange` listeners, removed on drop.
struct PageListeners {
    global: EventTarget,
    document: Option<EventTarget>,
    on_online: Closure<dyn FnMut()>,
    on_visibility: Closure<dyn FnMut()>,
}

impl Drop for PageListeners {
    fn drop(&mut self) {
        let _ = self
            .global
            .remove_event_listener_with_callback("online", self.on_online.as_ref().unchecked_ref());
        if let Some(doc) = &self.document {
            let _ = doc.remove_event_listener_with_callback(
                "visibilitychange",
                self.on_visibility.as_ref().unchecked_ref(),
            );
        }
    }
}

/// The client's state, shared (weakly) with every callback.
pub struct Inner {
    /// Ourselves, for callbacks created later.
    me: Weak<Inner>,
    /// Every decision.
    machine: RefCell<Machine<String>>,
    /// `ws://host[:port]` without a trailing slash.
    base_url: String,
    /// The chat, already validated.
    chat_id: String,
    /// Where tokens come from.
    token: TokenSource,
    /// The token last obtained; reused on reconnects until a 4401 asks for a new one.
    cached_token: RefCell<Option<String>>,
    /// The app gave `userId`: the JWT is not consulted.
    user_from_options: bool,
    /// The socket of the current attempt.
    socket: RefCell<Option<Socket>>,
    /// Closures let go of while one of them may be running (a socket's close handler
    /// drops its socket): freed on the next entry that is none of theirs.
    graveyard: RefCell<Vec<Box<dyn std::any::Any>>>,
    /// The callbacks of token-provider promises not settled yet, by attempt: kept
    /// until their promise settles, however late.
    token_waits: RefCell<Vec<TokenWait>>,
    /// Counts connection attempts, so a token that arrives for an abandoned attempt
    /// is not used to open a socket.
    attempt_gen: Cell<u32>,
    /// The one wake-up timer (`setTimeout` id) and when it fires.
    timer: RefCell<Option<(JsValue, f64)>>,
    /// The timer's callback, created once and reused for every re-arm.
    timer_callback: Closure<dyn FnMut()>,
    /// `online` / `visibilitychange` (absent outside a page).
    _page: Option<PageListeners>,
    /// App listeners.
    subscriptions: RefCell<Vec<Subscription>>,
    /// The next subscription id.
    next_subscription: Cell<u32>,
    /// `send()` promises waiting for their echo.
    pending: RefCell<Vec<PendingSend>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some((id, _)) = self.timer.borrow_mut().take() {
            js::clear_timeout(&id);
        }
    }
}

/// A live connection to one chat. See the package README for a complete example.
#[wasm_bindgen]
pub struct HablarClient {
    inner: Rc<Inner>,
}

#[wasm_bindgen]
impl HablarClient {
    /// Creates a client; nothing happens on the network until `connect()`.
    #[wasm_bindgen(constructor)]
    pub fn new(options: HablarOptions) -> Result<HablarClient, JsError> {
        let options: JsValue = options.into();
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
        let inner = Rc::new_cyclic(|me: &Weak<Inner>| {
            let weak = me.clone();
            let timer_callback = Closure::<dyn FnMut()>::new(move || {
                if let Some(inner) = weak.upgrade() {
                    inner.on_timer();
                }
            });
            Inner {
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
                timer_callback,
                _page: page_listeners(me),
                subscriptions: RefCell::new(Vec::new()),
                next_subscription: Cell::new(0),
                pending: RefCell::new(Vec::new()),
            }
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

impl HablarClient {
    fn subscribe(&self, topic: Topic, listener: JsValue) -> Result<Unsubscribe, JsError> {
        let listener =
            js::as_function(&listener).ok_or_else(|| JsError::new("listener must be a function"))?;
        let id = self.inner.next_subscription.get();
        self.inner.next_subscription.set(id.wrapping_add(1));
        self.inner
            .subscriptions
            .borrow_mut()
            .push(Subscription { id, topic, listener });
        // An `FnMut()` like every other callback here, not `Closure::once_into_js` (its
        // own closure type costs ~1 KB of .wasm), made to throw on a second call just as
        // a called-once closure does. Freed when the JS function is garbage-collected.
        let mut weak = Some(Rc::downgrade(&self.inner));
        let unsubscribe = Closure::<dyn FnMut()>::new(move || {
            let Some(weak) = weak.take() else {
                wasm_bindgen::throw_str("closure invoked recursively or after being dropped");
            };
            if let Some(inner) = weak.upgrade() {
                inner.subscriptions.borrow_mut().retain(|s| s.id != id);
            }
        });
        Ok(unsubscribe.into_js_value().unchecked_into())
    }
}

impl Inner {
    /// Carries out everything the machine queued, then re-arms the timer. Borrows are
    /// released before any app listener runs, so listeners may call the client.
    fn pump(&self) {
        loop {
            let outputs = self.machine.borrow_mut().take_outputs();
            if outputs.is_empty() {
                break;
            }
            // New outputs queued meanwhile go after these, as with one-at-a-time polling.
            for output in outputs {
                self.execute(output);
            }
        }
        self.arm_timer();
    }

    fn execute(&self, output: Output<String>) {
        match output {
            Output::Connect { refresh_token, since } => self.start_attempt(refresh_token, since),
            Output::Disconnect { code } => {
                self.attempt_gen.set(self.attempt_gen.get().wrapping_add(1));
                if let Some(socket) = self.socket.borrow_mut().take() {
                    socket.unhook();
                    socket.close(code);
                    self.bury(socket);
                }
            }
            Output::Send(frame) => {
                let text = match &frame {
                    Frame::TypingStart => r#"{"type":"typing_start"}"#,
                    Frame::TypingStop => r#"{"type":"typing_stop"}"#,
                    Frame::Ping => r#"{"type":"ping"}"#,
                    Frame::Message(text) => text.as_str(),
                };
                if let Some(socket) = self.socket.borrow().as_ref() {
                    socket.send(text);
                }
            }
            Output::State(state) => self.emit(Topic::State, &state_js(&state)),
            Output::TypersChanged => {
                let typers = typers_js(&self.machine.borrow());
                self.emit(Topic::Typing, &typers);
            }
            Output::PresenceChanged => {
                let users = presence_js(&self.machine.borrow());
                self.emit(Topic::Presence, &users);
            }
            Output::ReloadHistory(reason) => {
                let event = object();
                let reason = match reason {
                    ReloadReason::NotRecovered => "not_recovered",
                    ReloadReason::NoResume => "no_resume",
                };
                set(&event, "reason", &JsValue::from_str(reason));
                self.emit(Topic::ReloadHistory, &event);
            }
            Output::CloseError { code } => {
                let reason = CloseCode::from_u16(code).reason();
                self.emit(Topic::Error, &js::error("too_large", reason, None));
            }
            Output::Reject { client_id, error } => {
                let err = js::error(error.code(), send_error_detail(error.code()), Some(&client_id));
                self.settle(&client_id, Err(err));
            }
        }
    }

    /// Gets a token (cached, fixed, or from the provider) and opens a socket.
    fn start_attempt(&self, refresh_token: bool, since: Option<(u64, String)>) {
        let generation = self.attempt_gen.get().wrapping_add(1);
        self.attempt_gen.set(generation);
        self.retire_socket();
        if refresh_token {
            self.cached_token.replace(None);
        }
        let cached = self.cached_token.borrow().clone();
        if let Some(token) = cached {
            return self.open_socket(&token, since);
        }
        match &self.token {
            TokenSource::Fixed(token) => self.token_arrived(token.clone(), since),
            TokenSource::Provider(provider) => {
                let Ok(value) = provider.call0(&JsValue::NULL) else {
                    return self.machine.borrow_mut().on_connect_error(now());
                };
                if let Some(token) = value.as_string() {
                    return self.token_arrived(token, since);
                }
                let weak = self.me.clone();
                let on_token = Closure::<dyn FnMut(JsValue)>::new(move |token: JsValue| {
                    if let Some(inner) = weak.upgrade() {
                        inner.token_settled(generation, token.as_string(), since.clone());
                    }
                });
                let weak = self.me.clone();
                let on_error = Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| {
                    if let Some(inner) = weak.upgrade() {
                        inner.token_settled(generation, None, None);
                    }
                });
                let _ = Promise::resolve(&value).then2(&on_token, &on_error);
                self.token_waits.borrow_mut().push(TokenWait {
                    generation,
                    _on_token: on_token,
                    _on_error: on_error,
                });
            }
        }
    }

    /// The provider's promise for attempt `generation` settled with `token` (`None`:
    /// rejected or not a string).
    fn token_settled(&self, generation: u32, token: Option<String>, since: Option<(u64, String)>) {
        self.sweep();
        let wait = {
            // Not `swap_remove`: its bounds-check message costs size in the wasm.
            let mut waits = self.token_waits.borrow_mut();
            let (mut settled, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut *waits)
                .into_iter()
                .partition(|w| w.generation == generation);
            *waits = waiting;
            settled.pop()
        };
        if let Some(wait) = wait {
            self.bury(wait); // one of its closures is running
        }
        if self.attempt_gen.get() != generation {
            return; // the attempt was abandoned meanwhile
        }
        match token {
            Some(token) => self.token_arrived(token, since),
            None => self.machine.borrow_mut().on_connect_error(now()),
        }
        self.pump();
    }

    fn token_arrived(&self, token: String, since: Option<(u64, String)>) {
        if !self.user_from_options {
            if let Some(user_id) = js::jwt_user_id(&token) {
                self.machine.borrow_mut().set_user_hint(user_id);
            }
        }
        self.open_socket(&token, since);
        self.cached_token.replace(Some(token));
    }

    fn open_socket(&self, token: &str, since: Option<(u64, String)>) {
        let mut url = String::with_capacity(self.base_url.len() + token.len() + 64);
        url.push_str(&self.base_url);
        url.push_str("/ws/chat/");
        url.push_str(&self.chat_id);
        url.push_str("/?token=");
        url.push_str(&String::from(js_sys::encode_uri_component(token)));
        if let Some((seq, epoch)) = since {
            url.push_str("&since=");
            js::push_u64(&mut url, seq);
            url.push_str("&epoch=");
            url.push_str(&String::from(js_sys::encode_uri_component(&epoch)));
        }
        match Socket::open(&url, &self.me) {
            Ok(socket) => {
                self.socket.replace(Some(socket));
            }
            Err(_) => self.machine.borrow_mut().on_connect_error(now()),
        }
    }

    /// Lets the current socket go: unhooked at once, its closures freed later (one of
    /// them may be running now).
    fn retire_socket(&self) {
        if let Some(socket) = self.socket.borrow_mut().take() {
            socket.unhook();
            self.bury(socket);
        }
    }

    fn bury(&self, thing: impl std::any::Any) {
        self.graveyard.borrow_mut().push(Box::new(thing));
    }

    /// Frees what was buried. Called on entries that cannot be a buried closure.
    fn sweep(&self) {
        let buried = std::mem::take(&mut *self.graveyard.borrow_mut());
        drop(buried);
    }

    fn on_socket_open(&self) {
        self.sweep();
        self.machine.borrow_mut().on_socket_open(now());
        self.pump();
    }

    fn on_socket_close(&self, code: u16) {
        self.sweep();
        self.retire_socket();
        self.machine.borrow_mut().on_socket_close(now(), code);
        self.pump();
    }

    fn on_socket_frame(&self, text: &str) {
        self.sweep();
        let Some((frame, incoming)) = decode::decode(text) else {
            return;
        };
        let (client_id, is_error) = match &incoming {
            Incoming::Message { client_id, .. } => (client_id.clone(), false),
            Incoming::Error { client_id, .. } => (client_id.clone(), true),
            _ => (None, false),
        };
        let verdict = self.machine.borrow_mut().on_frame(now(), incoming);
        if is_error {
            let code = get_str(&frame, "code").unwrap_or_default();
            let detail = get_str(&frame, "detail").unwrap_or_default();
            let err = js::error(&code, &detail, client_id.as_deref());
            if let (true, Some(id)) = (verdict.reject, &client_id) {
                self.settle(id, Err(err.clone()));
            }
            self.emit(Topic::Error, &err);
        } else {
            let message = get(&frame, "message");
            if let (true, Some(id)) = (verdict.resolve, &client_id) {
                self.settle(id, Ok(message.clone()));
            }
            if verdict.deliver {
                self.emit(Topic::Message, &message);
            }
        }
        self.pump();
    }

    fn on_timer(&self) {
        self.sweep();
        self.timer.replace(None);
        self.machine.borrow_mut().tick(now());
        self.pump();
    }

    /// Keeps exactly one `setTimeout` armed for the machine's next deadline.
    fn arm_timer(&self) {
        let next = self.machine.borrow().next_deadline();
        let mut timer = self.timer.borrow_mut();
        if timer.as_ref().map(|(_, at)| *at) == next {
            return;
        }
        if let Some((id, _)) = timer.take() {
            js::clear_timeout(&id);
        }
        if let Some(at) = next {
            let delay = (at - now()).max(0.0);
            let id = js::set_timeout(self.timer_callback.as_ref().unchecked_ref(), delay);
            *timer = Some((id, at));
        }
    }

    fn emit(&self, topic: Topic, payload: &JsValue) {
        let listeners: Vec<Function> = self
            .subscriptions
            .borrow()
            .iter()
            .filter(|s| s.topic == topic)
            .map(|s| s.listener.clone())
            .collect();
        for listener in &listeners {
            js::call(listener, payload);
        }
    }

    /// Resolves or rejects the `send()` promises of `client_id` (more than one when the
    /// app sent again with the same key before the echo).
    fn settle(&self, client_id: &str, result: Result<JsValue, JsValue>) {
        let settled: Vec<PendingSend> = {
            let mut list = self.pending.borrow_mut();
            let (settled, waiting) = std::mem::take(&mut *list)
                .into_iter()
                .partition(|p| p.client_id == client_id);
            *list = waiting;
            settled
        };
        for pending in &settled {
            match &result {
                Ok(message) => js::call(&pending.resolve, message),
                Err(err) => js::call(&pending.reject, err),
            }
        }
    }
}

/// Registers the `online` and `visibilitychange` listeners, where the host has them.
fn page_listeners(me: &Weak<Inner>) -> Option<PageListeners> {
    let global: EventTarget = js::global().dyn_into().ok()?;
    let weak = me.clone();
    let on_online = Closure::<dyn FnMut()>::new(move || {
        if let Some(inner) = weak.upgrade() {
            inner.sweep();
            inner.machine.borrow_mut().on_online(now());
            inner.pump();
        }
    });
    let document: Option<EventTarget> = get(&global, "document").dyn_into().ok();
    let weak = me.clone();
    let doc = document.clone();
    let on_visibility = Closure::<dyn FnMut()>::new(move || {
        let hidden = doc.as_ref().and_then(|d| get(d, "hidden").as_bool());
        if let (Some(inner), Some(false)) = (weak.upgrade(), hidden) {
            inner.sweep();
            inner.machine.borrow_mut().on_visible(now());
            inner.pump();
        }
    });
    let _ = global.add_event_listener_with_callback("online", on_online.as_ref().unchecked_ref());
    if let Some(doc) = &document {
        let _ =
            doc.add_event_listener_with_callback("visibilitychange", on_visibility.as_ref().unchecked_ref());
    }
    Some(PageListeners {
        global,
        document,
        on_online,
        on_visibility,
    })
}

/// `http(s)://` becomes `ws(s)://`; a trailing slash goes.
fn ws_base(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if let Some(rest) = url.strip_prefix("http") {
        let mut ws = String::from("ws");
        ws.push_str(rest);
        ws
    } else {
        url.to_owned()
    }
}

fn send_error_detail(code: &str) -> &'static str {
    match code {
        "outbox_full" => "too many messages waiting to be sent",
        "closed" => "the client was closed before the message was delivered",
        _ => "the connection failed before the message was delivered",
    }
}

/// `{ state, ... }` as the TypeScript `ConnectionState` says.
fn state_js(state: &State) -> JsValue {
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

fn typers_js(machine: &Machine<String>) -> JsValue {
    let list = js_sys::Array::new();
    for t in machine.typers() {
        list.push(&user_js(&t.user_id, &t.username));
    }
    list.into()
}

fn presence_js(machine: &Machine<String>) -> JsValue {
    let list = js_sys::Array::new();
    for u in machine.presence() {
        list.push(&user_js(&u.user_id, &u.username));
    }
    list.into()
}

/// `{ userId, username }`.
fn user_js(user_id: &str, username: &str) -> JsValue {
    let user = object();
    set(&user, "userId", &JsValue::from_str(user_id));
    set(&user, "username", &JsValue::from_str(username));
    user
}

/// A small allocator: the SDK's allocations are few and small, and dlmalloc's code is a
/// large share of the download. `LockedAllocator` needs no `unsafe` (wasm here is
/// single-threaded, so its lock is never contended).
#[global_allocator]
static ALLOCATOR: lol_alloc::LockedAllocator<lol_alloc::FreeListAllocator> =
    lol_alloc::LockedAllocator::new(lol_alloc::FreeListAllocator::new());
