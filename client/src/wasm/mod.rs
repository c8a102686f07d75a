//! The browser glue, which decides nothing itself: it feeds the [`Machine`] what the
//! browser reports (socket events, one timer, `online`, `visibilitychange`) with
//! `Date.now()`, and carries out the machine's [`Output`]s.

//!
//! Layout: [`client`] the JS class, [`listeners`] the app's listeners and waiting sends,
//! [`token`] a connection attempt's token, [`socket`] the WebSocket and its events,
//! [`decode`] server frames, [`timer`] the one wake-up timer, [`page`] `online` and
//! `visibilitychange`, [`payloads`] what the app receives, [`types`] the TypeScript
//! types, [`js`] small JS helpers. Here: the client's shared state, and carrying out
//! the machine's outputs.

mod client;
mod decode;
mod js;
mod listeners;
mod page;
mod payloads;
mod socket;
mod timer;
mod token;
mod types;

use std::cell::{Cell, RefCell};
use std::rc::Weak;

use hablar_protocol::CloseCode;

pub use self::client::HablarClient;
use self::listeners::{PendingSend, Subscription, Topic};
use self::page::PageListeners;
use self::payloads::{presence_js, reload_js, send_error_detail, state_js, typers_js};
use self::socket::Socket;
use self::timer::Timer;
use self::token::{TokenSource, TokenWait};
use crate::machine::{Frame, Machine, Output};

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
    /// The one wake-up timer, for the machine's next deadline (cleared when dropped).
    timer: RefCell<Option<Timer>>,
    /// `online` / `visibilitychange` (absent outside a page).
    _page: Option<PageListeners>,
    /// App listeners.
    subscriptions: RefCell<Vec<Subscription>>,
    /// The next subscription id.
    next_subscription: Cell<u32>,
    /// `send()` promises waiting for their echo.
    pending: RefCell<Vec<PendingSend>>,
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
            Output::ReloadHistory(reason) => self.emit(Topic::ReloadHistory, &reload_js(reason)),
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

    fn bury(&self, thing: impl std::any::Any) {
        self.graveyard.borrow_mut().push(Box::new(thing));
    }

    /// Frees what was buried. Called on entries that cannot be a buried closure.
    fn sweep(&self) {
        let buried = std::mem::take(&mut *self.graveyard.borrow_mut());
        drop(buried);
    }
}

/// A small allocator: the SDK's allocations are few and small, and dlmalloc's code is a
/// large share of the download. `LockedAllocator` needs no `unsafe` (wasm here is
/// single-threaded, so its lock is never contended).
#[global_allocator]
static ALLOCATOR: lol_alloc::LockedAllocator<lol_alloc::FreeListAllocator> =
    lol_alloc::LockedAllocator::new(lol_alloc::FreeListAllocator::new());
