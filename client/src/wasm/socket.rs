//! The WebSocket: the chat URL, one socket attempt with the closures that feed its events
//! to the client, and what the client does with those events. Dropping a socket unhooks
//! its handlers (so a stale socket can never reach the state machine) and closes it if
//! still open.

use std::rc::Weak;

use wasm_bindgen::prelude::*;
use web_sys::WebSocket;

use super::js::{self, get, get_str, now};
use super::listeners::Topic;
use super::{decode, Inner};
use crate::machine::Incoming;

/// A socket and its event handlers, owned together.
pub struct Socket {
    ws: WebSocket,
    /// Kept alive as long as the handler is set; dropped with the socket. The events
    /// are plain `JsValue`s read with `Reflect`: one closure type for every handler of
    /// the SDK keeps the `.wasm` and the glue smaller.
    _on_open: Closure<dyn FnMut()>,
    _on_message: Closure<dyn FnMut(JsValue)>,
    _on_close: Closure<dyn FnMut(JsValue)>,
}

impl Socket {
    /// Opens a socket to `url` whose events go to `client` (weakly: a socket does not
    /// keep a dropped client alive).
    pub fn open(url: &str, client: &Weak<Inner>) -> Result<Self, JsValue> {
        let ws = WebSocket::new(url)?;
        let weak = client.clone();
        let on_open = Closure::<dyn FnMut()>::new(move || {
            if let Some(inner) = weak.upgrade() {
                inner.on_socket_open();
            }
        });
        let weak = client.clone();
        let on_message = Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
            if let (Some(inner), Some(text)) = (weak.upgrade(), get(&ev, "data").as_string()) {
                inner.on_socket_frame(&text);
            }
        });
        let weak = client.clone();
        let on_close = Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
            if let Some(inner) = weak.upgrade() {
                // `CloseEvent.code` is an unsigned short; 0 stands in as web-sys did.
                let code = get(&ev, "code").as_f64().unwrap_or(0.0) as u16;
                inner.on_socket_close(code);
            }
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        Ok(Self {
            ws,
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        })
    }

    /// Sends a text frame; a socket that is not open drops it (the outbox resends
    /// messages, typing and pings are worthless late).
    pub fn send(&self, text: &str) {
        let _ = self.ws.send_with_str(text);
    }

    /// Starts the closing handshake with `code`.
    pub fn close(&self, code: u16) {
        let _ = self.ws.close_with_code(code);
    }

    /// Stops delivering events, so nothing more from this socket reaches the client.
    pub fn unhook(&self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.unhook();
        if matches!(self.ws.ready_state(), WebSocket::CONNECTING | WebSocket::OPEN) {
            let _ = self.ws.close_with_code(1000);
        }
    }
}

impl Inner {
    /// Opens the socket of the current attempt: `{base}/ws/chat/{chat}/?token=…`, with
    /// `since` and `epoch` when resuming.
    pub(super) fn open_socket(&self, token: &str, since: Option<(u64, String)>) {
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
    pub(super) fn retire_socket(&self) {
        if let Some(socket) = self.socket.borrow_mut().take() {
            socket.unhook();
            self.bury(socket);
        }
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
}

/// `http(s)://` becomes `ws(s)://`; a trailing slash goes.
pub(super) fn ws_base(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if let Some(rest) = url.strip_prefix("http") {
        let mut ws = String::from("ws");
        ws.push_str(rest);
        ws
    } else {
        url.to_owned()
    }
}
