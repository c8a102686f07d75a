//! The app's side: its listeners by topic, and the `send()` promises waiting for their
//! echo. Listeners run after every borrow is released, so they may call the client.

use std::rc::Rc;

use js_sys::Function;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::js;
use super::types::Unsubscribe;
use super::{HablarClient, Inner};

/// What the app subscribed to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Topic {
    State,
    Message,
    Typing,
    Presence,
    Error,
    ReloadHistory,
}

/// One listener.
pub(super) struct Subscription {
    id: u32,
    topic: Topic,
    listener: Function,
}

/// A `send()` promise waiting for its echo.
pub(super) struct PendingSend {
    pub(super) client_id: String,
    pub(super) resolve: Function,
    pub(super) reject: Function,
}

impl HablarClient {
    pub(super) fn subscribe(&self, topic: Topic, listener: JsValue) -> Result<Unsubscribe, JsError> {
        let listener =
            js::as_function(&listener).ok_or_else(|| JsError::new("listener must be a function"))?;
        let id = self.inner.next_subscription.get();
        self.inner.next_subscription.set(id.wrapping_add(1));
        self.inner
            .subscriptions
            .borrow_mut()
            .push(Subscription { id, topic, listener });
        // An `FnMut()` like every other callback here, not `Closure::once_into_js` (which
        // measured +192 B gzip with client/scripts/size.sh, gloo-timers'
        // `Closure::once` already in), made to throw on a second call just as a
        // called-once closure does. Freed when the JS function is garbage-collected.
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
    pub(super) fn emit(&self, topic: Topic, payload: &JsValue) {
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
    pub(super) fn settle(&self, client_id: &str, result: Result<JsValue, JsValue>) {
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
