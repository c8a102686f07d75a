//! One WebSocket attempt and the closures that feed its events to the client. Dropping
//! it unhooks the handlers (so a stale socket can never reach the state machine) and
//! closes it if still open.

use std::rc::Weak;

use wasm_bindgen::prelude::*;
use web_sys::WebSocket;

use super::js::get;
use super::Inner;

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
