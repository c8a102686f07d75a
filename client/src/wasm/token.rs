//! A connection attempt's token: the cached one, the fixed one, or the provider's (a
//! string or a promise of one), with the attempt counter that makes a late token for an
//! abandoned attempt harmless.

use js_sys::{Function, Promise};
use wasm_bindgen::prelude::*;

use super::js::{self, now};
use super::Inner;

/// The two callbacks of one provider promise.
pub(super) struct TokenWait {
    generation: u32,
    _on_token: Closure<dyn FnMut(JsValue)>,
    _on_error: Closure<dyn FnMut(JsValue)>,
}

/// Where tokens come from.
pub(super) enum TokenSource {
    /// A fixed token (a refresh gets the same one, so a second 4401 fails).
    Fixed(String),
    /// `() => string | Promise<string>`, called on the first connect and on 4401.
    Provider(Function),
}

impl Inner {
    /// Gets a token (cached, fixed, or from the provider) and opens a socket.
    pub(super) fn start_attempt(&self, refresh_token: bool, since: Option<(u64, String)>) {
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
}
