//! Browser tests of the SDK in headless Chromium, against the real server started by
//! `client/scripts/browser-test.sh` (which passes its URLs at compile time).
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use hablar_client::HablarClient;
use js_sys::{Array, Object, Promise, Reflect, JSON};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const HOW_TO_RUN: &str = "run the browser tests with client/scripts/browser-test.sh";

fn required(value: Option<&'static str>) -> &'static str {
    value.expect(HOW_TO_RUN)
}

/// The server's base URL.
fn server() -> &'static str {
    required(option_env!("HABLAR_TEST_SERVER"))
}

/// The harness's control endpoint (restart, proxy cut/restore).
fn control() -> &'static str {
    required(option_env!("HABLAR_TEST_CONTROL"))
}

/// A proxy in front of the server that the harness can cut.
fn proxy() -> &'static str {
    required(option_env!("HABLAR_TEST_PROXY"))
}

/// A base-layer peer (no extensions), standing in for a Django Channels backend.
fn base_layer() -> &'static str {
    required(option_env!("HABLAR_TEST_BASE"))
}

fn now() -> f64 {
    js_sys::Date::now()
}

fn get(v: &JsValue, key: &str) -> JsValue {
    Reflect::get(v, &key.into()).expect("readable field")
}

fn text(v: &JsValue, key: &str) -> String {
    get(v, key).as_string().unwrap_or_default()
}

fn object(fields: &[(&str, JsValue)]) -> JsValue {
    let o: JsValue = Object::new().into();
    for (k, v) in fields {
        Reflect::set(&o, &(*k).into(), v).expect("settable field");
    }
    o
}

async fn sleep(ms: i32) {
    let p = Promise::new(&mut |resolve, _| {
        web_sys::window()
            .expect("a window")
            .set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms)
            .expect("setTimeout");
    });
    JsFuture::from(p).await.expect("sleep");
}

/// Polls `cond` every 20 ms; fails the test with `what` after `timeout_ms`.
async fn wait_until(what: &str, timeout_ms: f64, cond: impl Fn() -> bool) {
    let deadline = now() + timeout_ms;
    while !cond() {
        assert!(now() < deadline, "timed out waiting for: {what}");
        sleep(20).await;
    }
}

async fn fetch(url: &str, method: &str, body: Option<&JsValue>, bearer: Option<&str>) -> JsValue {
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    let headers = object(&[("content-type", "application/json".into())]);
    if let Some(token) = bearer {
        let auth = String::from("Bearer ") + token;
        Reflect::set(&headers, &"authorization".into(), &auth.into()).expect("header");
    }
    init.set_headers(&headers);
    if let Some(body) = body {
        init.set_body(&JSON::stringify(body).expect("json body"));
    }
    let window = web_sys::window().expect("a window");
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str_and_init(url, &init))
        .await
        .expect("fetch")
        .unchecked_into();
    assert!(response.ok(), "{method} {url}: HTTP {}", response.status());
    JsFuture::from(response.text().expect("body"))
        .await
        .ok()
        .and_then(|t| t.as_string())
        .and_then(|t| JSON::parse(&t).ok())
        .unwrap_or(JsValue::NULL)
}

/// The HTTP status of `GET url` with `bearer`.
async fn status_of(url: &str, bearer: &str) -> u16 {
    let init = web_sys::RequestInit::new();
    init.set_method("GET");
    let auth = String::from("Bearer ") + bearer;
    init.set_headers(&object(&[("authorization", auth.into())]));
    let window = web_sys::window().expect("a window");
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str_and_init(url, &init))
        .await
        .expect("fetch")
        .unchecked_into();
    response.status()
}

/// Waits until the server refuses `token` as expired (401 on the history API), rather
/// than sleeping for its lifetime and guessing at the server's clock and leeway.
async fn until_expired(token: &str) {
    let url = String::from(server()) + "/api/chats/general/messages?limit=1";
    let deadline = now() + 10_000.0;
    while status_of(&url, token).await != 401 {
        assert!(now() < deadline, "the token never expired");
        sleep(50).await;
    }
}

/// A dev token for `user`, valid `ttl_secs` (server default when `None`).
async fn dev_token(user: &str, ttl_secs: Option<u32>) -> String {
    let mut fields = vec![("user_id", JsValue::from_str(user))];
    if let Some(ttl) = ttl_secs {
        fields.push(("ttl_secs", ttl.into()));
    }
    let url = String::from(server()) + "/api/dev/token";
    let reply = fetch(&url, "POST", Some(&object(&fields)), None).await;
    text(&reply, "token")
}

async fn harness(path: &str) {
    fetch(&(String::from(control()) + path), "POST", None, None).await;
}

/// Starts a harness request now; await the result later.
fn harness_start(path: &str) -> JsFuture {
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    let window = web_sys::window().expect("a window");
    JsFuture::from(window.fetch_with_str_and_init(&(String::from(control()) + path), &init))
}

/// Everything a client told its app, with the time it was told.
type Log = Rc<RefCell<Vec<(f64, JsValue)>>>;

/// A client and recordings of its events, like an app that binds them to its UI.
struct Peer {
    client: HablarClient,
    states: Log,
    messages: Log,
    typing: Log,
    reloads: Log,
    errors: Log,
    token: String,
    _listeners: Vec<Closure<dyn FnMut(JsValue)>>,
}

impl Peer {
    /// A client of `chat` for `user` at `url` with quick reconnects, not yet connected.
    async fn new(user: &str, chat: &str, url: &str) -> Self {
        let token = dev_token(user, None).await;
        Self::with_token(chat, url, token.clone().into(), token).await
    }

    async fn with_token(chat: &str, url: &str, token: JsValue, token_text: String) -> Self {
        Self::with_options(chat, url, token, token_text, (200, 1000)).await
    }

    /// `backoff` is (base, cap) of the reconnect delays (quick by default in tests).
    async fn with_options(
        chat: &str,
        url: &str,
        token: JsValue,
        token_text: String,
        backoff: (u32, u32),
    ) -> Self {
        let options = object(&[
            ("url", url.into()),
            ("chatId", chat.into()),
            ("token", token),
            ("backoffBaseMs", backoff.0.into()),
            ("backoffCapMs", backoff.1.into()),
        ]);
        let client = HablarClient::new(options.unchecked_into()).expect("valid options");
        let mut peer = Peer {
            client,
            states: Log::default(),
            messages: Log::default(),
            typing: Log::default(),
            reloads: Log::default(),
            errors: Log::default(),
            token: token_text,
            _listeners: Vec::new(),
        };
        let listeners = [
            peer.states.clone(),
            peer.messages.clone(),
            peer.typing.clone(),
            peer.reloads.clone(),
            peer.errors.clone(),
        ]
        .map(|log| Closure::<dyn FnMut(JsValue)>::new(move |v: JsValue| log.borrow_mut().push((now(), v))));
        let f = |i: usize| listeners[i].as_ref().clone();
        peer.client.on_state(f(0).unchecked_into()).expect("subscribed");
        peer.client.on_message(f(1).unchecked_into()).expect("subscribed");
        peer.client.on_typing(f(2).unchecked_into()).expect("subscribed");
        peer.client
            .on_reload_history(f(3).unchecked_into())
            .expect("subscribed");
        peer.client.on_error(f(4).unchecked_into()).expect("subscribed");
        peer._listeners = listeners.into();
        peer
    }

    /// The codes of the errors the SDK reported to the app (`onError`).
    fn error_codes(&self) -> Vec<String> {
        self.errors
            .borrow()
            .iter()
            .map(|(_, e)| text(e, "code"))
            .collect()
    }

    /// Fails the test if the SDK reported any error to the app.
    fn assert_no_errors(&self) {
        let codes = self.error_codes();
        assert!(codes.is_empty(), "the SDK reported errors: {codes:?}");
    }

    fn state(&self) -> String {
        text(&self.client.state().into(), "state")
    }

    fn state_names(&self) -> Vec<String> {
        self.states
            .borrow()
            .iter()
            .map(|(_, s)| text(s, "state"))
            .collect()
    }

    async fn open(&self) {
        self.client.connect();
        wait_until("state open", 10_000.0, || self.state() == "open").await;
    }

    /// Contents of the messages delivered live, in delivery order.
    fn contents(&self) -> Vec<String> {
        self.messages
            .borrow()
            .iter()
            .map(|(_, m)| text(m, "content"))
            .collect()
    }

    fn typers(&self) -> Vec<String> {
        let list: JsValue = self.client.typing_users().into();
        Array::from(&list).iter().map(|u| text(&u, "userId")).collect()
    }

    /// Sends `content`, returning the promise as a future of the server's message.
    fn send(&self, content: &str) -> JsFuture {
        self.send_fields(&[("content", content.into())])
    }

    /// Sends `content` with the app's own `client_id`.
    fn send_with_id(&self, content: &str, client_id: &str) -> JsFuture {
        self.send_fields(&[("content", content.into()), ("client_id", client_id.into())])
    }

    fn send_fields(&self, fields: &[(&str, JsValue)]) -> JsFuture {
        let promise: Promise = self.client.send(object(fields).unchecked_into()).unchecked_into();
        JsFuture::from(promise)
    }

    /// `(sender id, content)` of the messages delivered live, in delivery order.
    fn senders_and_contents(&self) -> Vec<(String, String)> {
        self.messages
            .borrow()
            .iter()
            .map(|(_, m)| (text(&get(m, "sender"), "id"), text(m, "content")))
            .collect()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.client.close();
    }
}

/// A marker that keeps this test's messages apart from other tests' in a shared chat.
fn tag(name: &str) -> String {
    let mut t = String::from(name);
    t.push('-');
    t.push_str(&((js_sys::Math::random() * 1e9) as u64).to_string());
    t
}

fn with_tag(contents: Vec<String>, tag: &str) -> Vec<String> {
    contents.into_iter().filter(|c| c.starts_with(tag)).collect()
}

#[wasm_bindgen_test]
fn sdk_reports_protocol_version_one() {
    assert_eq!(hablar_client::protocol_version(), 1);
}

#[wasm_bindgen_test]
async fn connects_and_shows_open_with_who_is_online() {
    let alice = Peer::new("alice", "general", server()).await;
    assert_eq!(alice.state(), "closed");
    alice.open().await;
    assert_eq!(alice.state_names(), ["connecting", "open"]);
    assert_eq!(alice.client.user_id().as_deref(), Some("alice"));
    let online: JsValue = alice.client.presence().into();
    let online: Vec<String> = Array::from(&online).iter().map(|u| text(&u, "userId")).collect();
    assert!(online.contains(&"alice".to_owned()), "{online:?}");
    assert!(
        alice.reloads.borrow().is_empty(),
        "a first connect has nothing to reload"
    );
}

#[wasm_bindgen_test]
async fn a_message_sent_by_one_client_reaches_the_other_once() {
    let alice = Peer::new("alice", "general", server()).await;
    let bob = Peer::new("bob", "general", server()).await;
    alice.open().await;
    bob.open().await;
    let tag = tag("hello");
    let echo = bob.send(&(tag.clone() + " from bob")).await.expect("delivered");
    assert_eq!(text(&echo, "content"), tag.clone() + " from bob");
    assert_eq!(text(&get(&echo, "sender"), "id"), "bob");
    assert!(
        get(&echo, "seq").as_f64().is_some(),
        "the server's message, with its seq"
    );
    assert!(!text(&echo, "client_id").is_empty());
    // A second message, delivered after the first on each socket, shows that any
    // duplicate of the first would already be there.
    bob.send(&(tag.clone() + " end")).await.expect("delivered");
    wait_until("alice receives both of bob's messages", 5_000.0, || {
        with_tag(alice.contents(), &tag).len() >= 2
    })
    .await;
    wait_until("bob's echoes", 5_000.0, || {
        with_tag(bob.contents(), &tag).len() >= 2
    })
    .await;
    let expected = [tag.clone() + " from bob", tag.clone() + " end"];
    assert_eq!(with_tag(alice.contents(), &tag), expected);
    assert_eq!(
        with_tag(bob.contents(), &tag),
        expected,
        "the echo is delivered once"
    );
    alice.assert_no_errors();
    bob.assert_no_errors();
}

#[wasm_bindgen_test]
async fn typing_shows_up_is_refreshed_while_typing_and_goes_after_two_idle_seconds() {
    let alice = Peer::new("alice", "random", server()).await;
    let bob = Peer::new("bob", "random", server()).await;
    alice.open().await;
    bob.open().await;
    // Alice types for 4 s, a key every 200 ms.
    let started = now();
    alice.client.typing();
    wait_until("bob sees alice typing", 2_000.0, || bob.typers() == ["alice"]).await;
    assert!(alice.typers().is_empty(), "nobody sees themself typing");
    while now() - started < 4_000.0 {
        sleep(200).await;
        alice.client.typing();
        assert_eq!(bob.typers(), ["alice"], "the lease is refreshed, never lapses");
    }
    let last_key = now();
    wait_until("alice's typing ends", 5_000.0, || bob.typers().is_empty()).await;
    let idle = now() - last_key;
    assert!(
        (1_800.0..3_500.0).contains(&idle),
        "typing_stop after 2 s idle, took {idle} ms"
    );
    // Sending ends typing at once.
    alice.client.typing();
    wait_until("bob sees alice typing again", 2_000.0, || {
        bob.typers() == ["alice"]
    })
    .await;
    let sent = now();
    alice.send("done typing").await.expect("delivered");
    wait_until("typing ends with the message", 1_500.0, || {
        bob.typers().is_empty()
    })
    .await;
    assert!(now() - sent < 1_000.0);
}

#[wasm_bindgen_test]
async fn a_typer_who_never_stops_expires_after_six_seconds() {
    let alice = Peer::new("alice", "random", server()).await;
    alice.open().await;
    // Bob's tab sends one typing_start and then nothing (a raw socket, no SDK).
    let token = dev_token("bob", None).await;
    let url = String::from(server()).replace("http", "ws") + "/ws/chat/random/?token=" + &token;
    let raw = web_sys::WebSocket::new(&url).expect("socket");
    wait_until("raw socket open", 5_000.0, || {
        raw.ready_state() == web_sys::WebSocket::OPEN
    })
    .await;
    raw.send_with_str(r#"{"type":"typing_start"}"#).expect("sent");
    wait_until("alice sees bob typing", 2_000.0, || alice.typers() == ["bob"]).await;
    let seen = now();
    wait_until("bob's lease expires", 9_000.0, || alice.typers().is_empty()).await;
    let lasted = now() - seen;
    assert!((5_500.0..7_000.0).contains(&lasted), "expired after {lasted} ms");
    raw.close().expect("closed");
}

#[wasm_bindgen_test]
async fn after_a_network_cut_the_client_resumes_without_gaps_or_duplicates() {
    // Alice goes through the cuttable proxy; bob and the server stay up.
    let alice = Peer::new("alice", "general", proxy()).await;
    let bob = Peer::new("bob", "general", server()).await;
    alice.open().await;
    bob.open().await;
    let tag = tag("cut");
    bob.send(&(tag.clone() + " 0")).await.expect("delivered");
    wait_until("alice has message 0", 5_000.0, || {
        with_tag(alice.contents(), &tag).len() == 1
    })
    .await;

    harness("/proxy/cut").await;
    wait_until("alice notices the cut", 5_000.0, || alice.state() != "open").await;
    // While alice is away: bob talks, alice writes (queued in her outbox).
    for i in 1..=3 {
        bob.send(&(tag.clone() + " " + &i.to_string()))
            .await
            .expect("delivered");
    }
    let offline = alice.send(&(tag.clone() + " from alice offline"));
    harness("/proxy/restore").await;

    let echo = offline
        .await
        .expect("the offline message is delivered on reconnect");
    assert_eq!(text(&get(&echo, "sender"), "id"), "alice");
    // Bob's last word comes after everything else: once both have it, a duplicate of
    // anything before it would be there too.
    bob.send(&(tag.clone() + " end")).await.expect("delivered");
    for peer in [&alice, &bob] {
        wait_until("everything, up to bob's last word", 5_000.0, || {
            with_tag(peer.contents(), &tag).last() == Some(&(tag.clone() + " end"))
        })
        .await;
    }
    let expected: Vec<String> = (0..=3)
        .map(|i| tag.clone() + " " + &i.to_string())
        .chain([tag.clone() + " from alice offline", tag.clone() + " end"])
        .collect();
    assert_eq!(with_tag(alice.contents(), &tag), expected, "once each, in order");
    assert_eq!(
        with_tag(bob.contents(), &tag),
        expected,
        "bob gets alice's offline message once"
    );
    let names = alice.state_names();
    assert!(names.contains(&"reconnecting".to_owned()), "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("open"));
    assert!(
        alice.reloads.borrow().is_empty(),
        "the gap was replayed, no reload needed"
    );
    alice.assert_no_errors();
    bob.assert_no_errors();
}

/// A server that sends a message before the one preceding it (what session 4's CI saw:
/// the echo of a resend overtaking the fan-out). Taking the later one would make the
/// earlier look seen when it came, and the app would lose it; the SDK resumes instead.
#[wasm_bindgen_test]
async fn messages_out_of_order_make_the_sdk_resume_and_the_app_loses_none() {
    let alice = Peer::new("alice", "general", proxy()).await;
    let bob = Peer::new("bob", "general", server()).await;
    alice.open().await;
    bob.open().await;
    let tag = tag("swap");
    harness("/proxy/swap").await;
    for i in 1..=2 {
        bob.send(&(tag.clone() + " " + &i.to_string()))
            .await
            .expect("delivered");
    }
    wait_until("alice has both", 5_000.0, || {
        with_tag(alice.contents(), &tag).len() >= 2
    })
    .await;
    bob.send(&(tag.clone() + " end")).await.expect("delivered");
    wait_until("alice has bob's last word", 5_000.0, || {
        with_tag(alice.contents(), &tag).last() == Some(&(tag.clone() + " end"))
    })
    .await;
    assert_eq!(
        with_tag(alice.contents(), &tag),
        [tag.clone() + " 1", tag.clone() + " 2", tag.clone() + " end"],
        "once each, in order"
    );
    let names = alice.state_names();
    assert!(
        names.contains(&"reconnecting".to_owned()),
        "she resumed: {names:?}"
    );
    assert_eq!(names.last().map(String::as_str), Some("open"));
    assert!(
        alice.reloads.borrow().is_empty(),
        "the two were replayed, no reload needed"
    );
    alice.assert_no_errors();
}

/// A member who sends a message with alice's pending `client_id` does not settle her
/// send: her message is still delivered, with her own echo, and the other member's
/// message reaches her as theirs. (Dev mode's `mallory` is in no chat, so `bob` plays
/// the hostile member.)
#[wasm_bindgen_test]
async fn another_members_message_with_our_client_id_does_not_settle_our_send() {
    let alice = Peer::new("alice", "general", proxy()).await;
    let mallory = Peer::new("bob", "general", server()).await;
    alice.open().await;
    mallory.open().await;
    let tag = tag("spoof");
    let client_id = tag.clone() + "-key";

    // Alice is offline, so her send waits in the outbox while mallory reuses its key.
    harness("/proxy/cut").await;
    wait_until("alice notices the cut", 5_000.0, || alice.state() != "open").await;
    let pending = alice.send_with_id(&(tag.clone() + " from alice"), &client_id);
    let spoof = mallory
        .send_with_id(&(tag.clone() + " from mallory"), &client_id)
        .await
        .expect("the server stores mallory's message");
    assert_eq!(text(&get(&spoof, "sender"), "id"), "bob");
    assert_eq!(text(&spoof, "client_id"), client_id);

    // Back online: the replay brings mallory's message first, then alice's echo.
    harness("/proxy/restore").await;
    let echo = pending.await.expect("alice's send resolves");
    assert_eq!(
        (text(&get(&echo, "sender"), "id"), text(&echo, "content")),
        ("alice".to_owned(), tag.clone() + " from alice"),
        "resolved with alice's own echo, not with mallory's message"
    );
    mallory.send(&(tag.clone() + " end")).await.expect("delivered");
    wait_until("alice has mallory's last word", 5_000.0, || {
        with_tag(alice.contents(), &tag).last() == Some(&(tag.clone() + " end"))
    })
    .await;
    let seen: Vec<(String, String)> = alice
        .senders_and_contents()
        .into_iter()
        .filter(|(_, c)| c.starts_with(&tag))
        .collect();
    assert_eq!(
        seen,
        [
            ("bob".to_owned(), tag.clone() + " from mallory"),
            ("alice".to_owned(), tag.clone() + " from alice"),
            ("bob".to_owned(), tag.clone() + " end"),
        ],
        "both delivered once, each as its sender's"
    );
    alice.assert_no_errors();
}

/// What an app does with `onReloadHistory`: fetch the latest page over HTTP.
async fn history(peer: &Peer, chat: &str) -> Vec<JsValue> {
    let url = String::from(server()) + "/api/chats/" + chat + "/messages?limit=100";
    let page = fetch(&url, "GET", None, Some(&peer.token)).await;
    Array::from(&get(&page, "messages")).iter().collect()
}

/// An app's view of the chat: live messages plus reloaded history, one per id, by seq.
fn timeline(live: &Log, reloaded: &[JsValue], tag: &str) -> Vec<String> {
    let mut all: Vec<(f64, String, String)> = live
        .borrow()
        .iter()
        .map(|(_, m)| m.clone())
        .chain(reloaded.iter().cloned())
        .map(|m| {
            (
                get(&m, "seq").as_f64().unwrap_or(0.0),
                text(&m, "id"),
                text(&m, "content"),
            )
        })
        .filter(|(_, _, c)| c.starts_with(tag))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.dedup_by(|a, b| a.1 == b.1);
    all.into_iter().map(|(_, _, c)| c).collect()
}

/// A bare browser WebSocket to `chat` as `user`, open, and the code it closes with.
async fn raw_socket(user: &str, chat: &str) -> (RawSocket, Rc<std::cell::Cell<Option<u16>>>) {
    let token = dev_token(user, None).await;
    let url = String::from(server()).replace("http", "ws") + "/ws/chat/" + chat + "/?token=" + &token;
    let socket = web_sys::WebSocket::new(&url).expect("socket");
    let closed_with = Rc::new(std::cell::Cell::new(None));
    let record = closed_with.clone();
    let on_close = Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
        record.set(get(&ev, "code").as_f64().map(|code| code as u16));
    });
    socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    wait_until("raw socket open", 5_000.0, || {
        socket.ready_state() == web_sys::WebSocket::OPEN
    })
    .await;
    (
        RawSocket {
            socket,
            _on_close: on_close,
        },
        closed_with,
    )
}

/// A bare socket that keeps its close listener and closes on drop.
struct RawSocket {
    socket: web_sys::WebSocket,
    _on_close: Closure<dyn FnMut(JsValue)>,
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        self.socket.set_onclose(None);
        let _ = self.socket.close();
    }
}

#[wasm_bindgen_test]
async fn a_server_restart_reconnects_and_loses_no_message() {
    let alice = Peer::new("alice", "general", server()).await;
    let bob = Peer::new("bob", "general", server()).await;
    alice.open().await;
    bob.open().await;
    let tag = tag("restart");
    // A bare socket beside them shows what the server says as it goes: 1012, restart.
    let (raw, closed_with) = raw_socket("carol", "general").await;

    // The server goes away for 1.5 s; both sides write while it is gone.
    let restart = harness_start("/restart?pause_ms=1500");
    wait_until("both notice the restart", 5_000.0, || {
        alice.state() != "open" && bob.state() != "open"
    })
    .await;
    let a = alice.send(&(tag.clone() + " alice offline"));
    let b1 = bob.send(&(tag.clone() + " bob 1"));
    let b2 = bob.send(&(tag.clone() + " bob 2"));
    restart.await.expect("restarted");
    assert_eq!(
        closed_with.get(),
        Some(1012),
        "a graceful restart closes with 1012"
    );
    drop(raw);
    let a = a.await.expect("alice's offline message is delivered");
    let b1 = b1.await.expect("bob's first offline message is delivered");
    let b2 = b2.await.expect("bob's second offline message is delivered");
    let seq = |m: &JsValue| get(m, "seq").as_f64().expect("a seq");
    assert!(seq(&b1) < seq(&b2), "kept in send order");
    assert_eq!(text(&get(&a, "sender"), "id"), "alice");

    for peer in [&alice, &bob] {
        let names = peer.state_names();
        let reconnecting = names.iter().position(|s| s == "reconnecting");
        assert!(reconnecting.is_some(), "{names:?}");
        assert_eq!(names.last().map(String::as_str), Some("open"), "{names:?}");
    }
    // Bob's last word is stored after the rest: once a peer has it, any duplicate of
    // the rest would be there too.
    let end = bob.send(&(tag.clone() + " end")).await.expect("delivered");
    for peer in [&alice, &bob] {
        wait_until("bob's last word", 5_000.0, || {
            with_tag(peer.contents(), &tag).last() == Some(&text(&end, "content"))
        })
        .await;
    }
    let mut expected = [&a, &b1, &b2];
    expected.sort_by(|x, y| seq(x).total_cmp(&seq(y)));
    let expected: Vec<String> = expected
        .iter()
        .map(|m| text(m, "content"))
        .chain([text(&end, "content")])
        .collect();
    // The restarted server has a new store (new epoch): whoever came back after the
    // other's messages were stored is told to reload history, and does, as an app would.
    for peer in [&alice, &bob] {
        let live = with_tag(peer.contents(), &tag);
        let mut unique = live.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(live.len(), unique.len(), "nothing delivered twice live: {live:?}");
        let reloaded = if peer.reloads.borrow().is_empty() {
            Vec::new()
        } else {
            history(peer, "general").await
        };
        assert_eq!(
            timeline(&peer.messages, &reloaded, &tag),
            expected,
            "every message once, in seq order"
        );
        peer.assert_no_errors();
    }
}

#[wasm_bindgen_test]
async fn a_non_member_fails_with_4403_and_never_retries() {
    let mallory = Peer::new("mallory", "general", server()).await;
    mallory.client.connect();
    wait_until("failed", 5_000.0, || mallory.state() == "failed").await;
    let state: JsValue = mallory.client.state().into();
    assert_eq!(get(&state, "code").as_f64(), Some(4403.0));
    assert_eq!(
        mallory.state_names(),
        ["connecting", "failed"],
        "never shown open"
    );
    // A retry would come within the backoff cap (1 s here): nothing to await but time.
    sleep(1_500).await;
    assert_eq!(
        mallory.state_names(),
        ["connecting", "failed"],
        "no further attempt"
    );
    mallory.assert_no_errors();
    let err = mallory.send("let me in").await.expect_err("refused");
    assert_eq!(text(&err, "code"), "failed");
    assert_eq!(text(&err, "name"), "HablarError");
}

#[wasm_bindgen_test]
async fn an_expired_token_is_refreshed_once_through_the_provider() {
    let expired = dev_token("alice", Some(1)).await;
    let fresh = dev_token("alice", None).await;
    until_expired(&expired).await;
    let calls = Rc::new(RefCell::new(0));
    let counter = calls.clone();
    let provider = Closure::<dyn FnMut() -> Promise>::new(move || {
        *counter.borrow_mut() += 1;
        let token = if *counter.borrow() == 1 { &expired } else { &fresh };
        Promise::resolve(&JsValue::from_str(token))
    });
    let peer = Peer::with_token("general", server(), provider.as_ref().clone(), String::new()).await;
    peer.open().await;
    assert_eq!(*calls.borrow(), 2, "one call to connect, one refresh after 4401");
    assert!(!peer.state_names().contains(&"failed".to_owned()));
    assert!(
        !peer.state_names().contains(&"reconnecting".to_owned()),
        "a refresh is not a backoff"
    );
    peer.assert_no_errors();
    drop(peer);
    drop(provider);
}

#[wasm_bindgen_test]
async fn a_base_layer_peer_without_extensions_still_connects_types_sends_and_reconnects() {
    let alice = Peer::new("alice", "general", base_layer()).await;
    let bob = Peer::new("bob", "general", base_layer()).await;
    // No `ready` ever comes: open after the ready timeout, not never.
    alice.open().await;
    bob.open().await;
    assert_eq!(alice.state_names(), ["connecting", "open"]);
    assert_eq!(alice.client.user_id().as_deref(), Some("alice"), "from the JWT");

    alice.client.typing();
    wait_until("bob sees alice typing", 2_000.0, || bob.typers() == ["alice"]).await;

    let tag = tag("base");
    let echo = bob
        .send(&(tag.clone() + " 1"))
        .await
        .expect("acknowledged by its echo");
    assert!(get(&echo, "id").as_f64().is_some(), "the base layer's integer id");
    wait_until("alice gets it", 2_000.0, || {
        with_tag(alice.contents(), &tag).len() == 1
    })
    .await;
    // The peer relayed alice's typing back to her before bob's message: by now she has
    // it, and filtered it; bob never typed.
    assert!(
        alice.typers().is_empty(),
        "the peer echoes alice's typing; it is filtered: {:?}",
        alice.typers()
    );

    // The peer drops every socket without a close frame (1006 in the browser).
    harness("/base/drop").await;
    wait_until("alice is back", 10_000.0, || {
        alice.state_names().contains(&"reconnecting".to_owned()) && alice.state() == "open"
    })
    .await;
    let reasons: Vec<String> = alice
        .reloads
        .borrow()
        .iter()
        .map(|(_, e)| text(e, "reason"))
        .collect();
    assert_eq!(
        reasons,
        ["no_resume"],
        "missed messages cannot be replayed: reload"
    );
    wait_until("bob is back", 10_000.0, || bob.state() == "open").await;
    alice
        .send(&(tag.clone() + " 2"))
        .await
        .expect("sending works again");
    alice.send(&(tag.clone() + " 3")).await.expect("delivered");
    wait_until("bob gets alice's last word", 2_000.0, || {
        with_tag(bob.contents(), &tag).last() == Some(&(tag.clone() + " 3"))
    })
    .await;
    assert_eq!(
        with_tag(bob.contents(), &tag),
        [tag.clone() + " 1", tag.clone() + " 2", tag.clone() + " 3"]
    );
    alice.assert_no_errors();
    bob.assert_no_errors();
}

/// Cuts alice's proxy until her pending reconnect delay is long (10 s or more, of up
/// to 60 s drawn uniformly), so that only a page event can bring her back soon; the
/// proxy is restored. Returns the delay.
async fn until_a_long_reconnect_delay(alice: &Peer) -> f64 {
    for _ in 0..8 {
        harness("/proxy/cut").await;
        wait_until("alice notices the cut", 5_000.0, || {
            alice.state() == "reconnecting"
        })
        .await;
        harness("/proxy/restore").await;
        let waiting: JsValue = alice.client.state().into();
        let delay = get(&waiting, "delayMs").as_f64().expect("a pending delay");
        if delay >= 10_000.0 {
            return delay;
        }
        // Too short to tell a page event from the timer: let it run out, and draw again.
        wait_until("alice is back by her timer", delay + 5_000.0, || {
            alice.state() == "open"
        })
        .await;
    }
    panic!("eight reconnect delays of up to 60 s were all under 10 s");
}

/// A client whose reconnect delays are drawn from [0, 60 s), open through the proxy.
async fn slow_to_retry(user: &str) -> Peer {
    let token = dev_token(user, None).await;
    let peer = Peer::with_options("general", proxy(), token.clone().into(), token, (60_000, 60_000)).await;
    peer.open().await;
    peer
}

#[wasm_bindgen_test]
async fn the_browser_coming_back_online_reconnects_without_waiting_for_the_backoff() {
    let alice = slow_to_retry("alice").await;
    let delay = until_a_long_reconnect_delay(&alice).await;
    let online = web_sys::Event::new("online").expect("event");
    web_sys::window()
        .expect("a window")
        .dispatch_event(&online)
        .expect("dispatched");
    let back = now();
    wait_until("alice reconnects at once", 3_000.0, || alice.state() == "open").await;
    let took = now() - back;
    assert!(
        took < 2_000.0,
        "back after {took} ms (backoff delay was {delay} ms)"
    );
    alice.assert_no_errors();
}

#[wasm_bindgen_test]
async fn the_tab_becoming_visible_reconnects_without_waiting_for_the_backoff() {
    let alice = slow_to_retry("alice").await;
    let delay = until_a_long_reconnect_delay(&alice).await;
    let window = web_sys::window().expect("a window");
    let document: web_sys::EventTarget = get(&window, "document").unchecked_into();
    assert_eq!(
        get(&document, "hidden").as_bool(),
        Some(false),
        "the test page is visible"
    );
    let visible = web_sys::Event::new("visibilitychange").expect("event");
    document.dispatch_event(&visible).expect("dispatched");
    let back = now();
    wait_until("alice reconnects at once", 3_000.0, || alice.state() == "open").await;
    let took = now() - back;
    assert!(
        took < 2_000.0,
        "back after {took} ms (backoff delay was {delay} ms)"
    );
    alice.assert_no_errors();
}

/// A client of `general` whose token provider answers the first call with `first()`
/// and every later one with a valid token; returns it with its call count.
async fn with_provider(
    first: impl Fn() -> JsValue + 'static,
) -> (Peer, Rc<RefCell<u32>>, Closure<dyn FnMut() -> JsValue>) {
    let fresh = dev_token("alice", None).await;
    let calls = Rc::new(RefCell::new(0));
    let counter = calls.clone();
    let provider = Closure::<dyn FnMut() -> JsValue>::new(move || {
        *counter.borrow_mut() += 1;
        if *counter.borrow() == 1 {
            first()
        } else {
            Promise::resolve(&JsValue::from_str(&fresh)).into()
        }
    });
    let peer = Peer::with_token("general", server(), provider.as_ref().clone(), String::new()).await;
    (peer, calls, provider)
}

/// The provider failed once: the SDK treats it as a failed attempt (backoff, then the
/// provider again), never as a token, and never gives up.
async fn recovers_from_a_failed_provider(first: impl Fn() -> JsValue + 'static) {
    let (peer, calls, provider) = with_provider(first).await;
    peer.client.connect();
    wait_until("open after the provider's failure", 10_000.0, || {
        peer.state() == "open"
    })
    .await;
    assert_eq!(*calls.borrow(), 2, "asked again after the failure");
    let names = peer.state_names();
    assert!(names.contains(&"reconnecting".to_owned()), "a backoff: {names:?}");
    assert!(!names.contains(&"failed".to_owned()), "{names:?}");
    peer.assert_no_errors();
    drop(peer);
    drop(provider);
}

#[wasm_bindgen_test]
async fn a_token_provider_that_rejects_is_retried_after_a_backoff() {
    recovers_from_a_failed_provider(|| Promise::reject(&JsValue::from_str("no session")).into()).await;
}

#[wasm_bindgen_test]
async fn a_token_provider_that_throws_is_retried_after_a_backoff() {
    recovers_from_a_failed_provider(|| {
        let thrower = js_sys::Function::new_no_args("throw new Error('provider broke')");
        thrower
            .call0(&JsValue::NULL)
            .unwrap_or_else(|err| wasm_bindgen::throw_val(err))
    })
    .await;
}

#[wasm_bindgen_test]
async fn a_token_provider_that_returns_a_non_string_is_retried_after_a_backoff() {
    recovers_from_a_failed_provider(|| Promise::resolve(&JsValue::from_f64(42.0)).into()).await;
}

#[wasm_bindgen_test]
async fn a_second_4401_after_a_refresh_fails_the_client() {
    let expired = dev_token("alice", Some(1)).await;
    until_expired(&expired).await;
    let calls = Rc::new(RefCell::new(0));
    let counter = calls.clone();
    let provider = Closure::<dyn FnMut() -> Promise>::new(move || {
        *counter.borrow_mut() += 1;
        Promise::resolve(&JsValue::from_str(&expired))
    });
    let peer = Peer::with_token("general", server(), provider.as_ref().clone(), String::new()).await;
    peer.client.connect();
    wait_until("failed", 10_000.0, || peer.state() == "failed").await;
    let state: JsValue = peer.client.state().into();
    assert_eq!(get(&state, "code").as_f64(), Some(4401.0));
    assert_eq!(*calls.borrow(), 2, "one call to connect, one refresh, no more");
    assert_eq!(peer.state_names(), ["connecting", "failed"], "never shown open");
    drop(peer);
    drop(provider);
}

/// The SDK reconnects when the server closes with 1000 unasked: only the app's
/// `close()` ends a session. (The harness's proxy sends the 1000.)
#[wasm_bindgen_test]
async fn an_unrequested_1000_close_reconnects_and_resumes() {
    let alice = Peer::new("alice", "general", proxy()).await;
    let bob = Peer::new("bob", "general", server()).await;
    alice.open().await;
    bob.open().await;
    harness("/proxy/close?code=1000").await;
    wait_until("alice notices the close", 5_000.0, || alice.state() != "open").await;
    let tag = tag("normal-close");
    bob.send(&(tag.clone() + " while away")).await.expect("delivered");
    wait_until("alice is back with the message", 10_000.0, || {
        alice.state() == "open" && with_tag(alice.contents(), &tag).len() == 1
    })
    .await;
    let names = alice.state_names();
    assert!(names.contains(&"reconnecting".to_owned()), "{names:?}");
    assert!(!names.contains(&"closed".to_owned()), "{names:?}");
    assert!(
        alice.reloads.borrow().is_empty(),
        "resumed: {:?}",
        alice.reloads.borrow().len()
    );
    alice.assert_no_errors();
}
