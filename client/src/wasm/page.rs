//! The page's signals: `online` and `visibilitychange`, which wake a waiting reconnect
//! or check a connection that may have died while the tab slept.

use std::rc::Weak;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::EventTarget;

use super::js::{self, get, now};
use super::Inner;

/// The `online` and `visibilitychange` listeners, removed on drop.
pub(super) struct PageListeners {
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

/// Registers the `online` and `visibilitychange` listeners, where the host has them.
pub(super) fn page_listeners(me: &Weak<Inner>) -> Option<PageListeners> {
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
