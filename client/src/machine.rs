//! The connection state machine: everything the SDK decides, with no I/O. The glue feeds
//! it what happened (socket opened, frame, close code, timer, `online`) and the current
//! time in ms, then carries out the [`Output`]s it queues and arms one timer for
//! [`Machine::next_deadline`].
//!
//! Layout: `config` the tunables, `input` the server frames it is fed, `output`
//! what it asks of the glue; here the connection's lifecycle (attempts, backoff, token
//! refresh, heartbeat, timers), in `frames` what each server frame changes.

mod config;
mod frames;
mod input;
mod output;

use hablar_protocol::close::CloseAction;
use hablar_protocol::CloseCode;

pub use self::config::Config;
pub use self::input::{Incoming, User, Verdict};
pub use self::output::{Frame, Output, ReloadReason, SendError, State, CLOSE_GIVING_UP};
use crate::backoff::{Backoff, Rng};
use crate::outbox::{Outbox, OutboxFull};
use crate::resume::Resume;
use crate::typing::{Typer, Typers, TypingSender};

/// Where the connection is, with what each step waits for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Before the first `connect()`: sends are queued.
    Idle,
    /// Getting a token and opening a socket, given up at `deadline`.
    Connecting { deadline: f64 },
    /// Socket open, waiting for `ready` until `ready_by`.
    Handshake { ready_by: f64 },
    /// Connected since `since`.
    Open { since: f64 },
    /// Waiting to reconnect at `at`.
    Waiting { at: f64 },
    /// Closed by the app: sends are refused.
    Closed,
    /// Failed for good: sends are refused.
    Failed,
}

/// The SDK's decisions for one chat connection. `M` is the encoded message the glue
/// wants back when a message must be (re)sent.
#[derive(Debug)]
pub struct Machine<M> {
    /// Tunables.
    cfg: Config,
    /// Where the connection is.
    phase: Phase,
    /// The last state told to the app, so each change is told once.
    state: State,
    /// Reconnect delays.
    backoff: Backoff,
    /// Jitter source.
    rng: Rng,
    /// A 4401 refresh was spent and no connection opened since: the next 4401 fails.
    refreshed: bool,
    /// The next attempt must ask the provider for a fresh token.
    refresh_next: bool,
    /// The peer sent `ready` on this connection: it speaks the extensions, so it
    /// answers pings and missing pongs mean a dead connection.
    extensions: bool,
    /// Some connection was open before: a later open is a reconnect.
    was_open: bool,
    /// When to send the next ping (extension peers, while open).
    ping_at: Option<f64>,
    /// A ping is out: no frame by then means the connection is dead.
    pong_by: Option<f64>,
    /// Our typing lease.
    typing: TypingSender,
    /// Others' typing leases.
    typers: Typers,
    /// Who is online, as `ready` and `presence_*` said.
    presence: Vec<User>,
    /// Sends waiting for their echo.
    outbox: Outbox<M>,
    /// Resume position and dedupe.
    resume: Resume,
    /// Our user id from `ready` (authoritative): whose echoes acknowledge our sends and
    /// whose typing is ours.
    ready_user: Option<String>,
    /// Our user id from the options or the token, for base-layer peers (no `ready`).
    user_hint: Option<String>,
    /// What the glue must do next.
    out: Vec<Output<M>>,
}

impl<M: Clone> Machine<M> {
    /// A machine in state `closed`, jitter seeded with `seed`.
    pub fn new(cfg: Config, seed: u64) -> Self {
        Self {
            backoff: Backoff::new(cfg.backoff_base_ms, cfg.backoff_cap_ms),
            outbox: Outbox::new(cfg.outbox_limit),
            cfg,
            phase: Phase::Idle,
            state: State::Closed,
            rng: Rng::new(seed),
            refreshed: false,
            refresh_next: false,
            extensions: false,
            was_open: false,
            ping_at: None,
            pong_by: None,
            typing: TypingSender::default(),
            typers: Typers::default(),
            presence: Vec::new(),
            resume: Resume::default(),
            ready_user: None,
            user_hint: None,
            out: Vec::new(),
        }
    }

    /// Everything queued for the glue to do, in order. Carrying these out may queue
    /// more: call again until it is empty. (Same order as [`Machine::poll`], without
    /// `Vec::remove`'s bounds check, whose message formatting costs size in the wasm.)
    pub fn take_outputs(&mut self) -> Vec<Output<M>> {
        std::mem::take(&mut self.out)
    }

    /// The next thing for the glue to do.
    pub fn poll(&mut self) -> Option<Output<M>> {
        // A plain Vec used as a short queue: smaller code than VecDeque in the wasm.
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.remove(0))
        }
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Who is typing now (never ourselves).
    pub fn typers(&self) -> &[Typer] {
        self.typers.list()
    }

    /// Who is online.
    pub fn presence(&self) -> &[User] {
        &self.presence
    }

    /// Our user id: from `ready`, else from the options or the token.
    pub fn user_id(&self) -> Option<&str> {
        self.ready_user.as_deref().or(self.user_hint.as_deref())
    }

    /// The newest message seq delivered (for history requests).
    pub fn last_seq(&self) -> Option<u64> {
        self.resume.last_seq()
    }

    /// Sets our user id for peers that send no `ready` (option `userId`, or the JWT's
    /// `user_id` claim).
    pub fn set_user_hint(&mut self, user_id: String) {
        self.user_hint = Some(user_id);
    }

    /// The app asked to connect. Starts at once from `closed` or `failed`; while
    /// waiting to reconnect, tries now.
    pub fn connect(&mut self, now: f64) {
        match self.phase {
            Phase::Idle | Phase::Closed | Phase::Failed => {
                self.backoff.reset();
                self.refreshed = false;
                self.attempt(now);
            }
            Phase::Waiting { .. } => self.attempt(now),
            Phase::Connecting { .. } | Phase::Handshake { .. } | Phase::Open { .. } => {}
        }
    }

    /// The app closed the client: stop typing, close the socket, reject waiting sends.
    pub fn close(&mut self) {
        match self.phase {
            Phase::Closed => return,
            Phase::Open { .. } => {
                if self.typing.stop() {
                    self.out.push(Output::Send(Frame::TypingStop));
                }
                self.out.push(Output::Disconnect { code: 1000 });
            }
            Phase::Connecting { .. } | Phase::Handshake { .. } => {
                self.out.push(Output::Disconnect { code: 1000 });
            }
            Phase::Idle | Phase::Waiting { .. } | Phase::Failed => {}
        }
        self.phase = Phase::Closed;
        self.connection_gone();
        self.set_state(State::Closed);
        self.reject_all(SendError::Closed);
    }

    /// The app sends a message. It goes out now when open, else waits in the outbox.
    /// Either way it stays there until its echo.
    pub fn send(&mut self, client_id: String, payload: M) -> Result<(), SendError> {
        match self.phase {
            Phase::Closed => return Err(SendError::Closed),
            Phase::Failed => return Err(SendError::Failed),
            _ => {}
        }
        self.outbox
            .push(client_id, payload.clone())
            .map_err(|OutboxFull| SendError::OutboxFull)?;
        if let Phase::Open { .. } = self.phase {
            if self.typing.stop() {
                self.out.push(Output::Send(Frame::TypingStop));
            }
            self.out.push(Output::Send(Frame::Message(payload)));
        }
        Ok(())
    }

    /// A keystroke. Typing is only sent while open, never queued.
    pub fn keystroke(&mut self, now: f64) {
        if let Phase::Open { .. } = self.phase {
            if self.typing.keystroke(now) {
                self.out.push(Output::Send(Frame::TypingStart));
            }
        }
    }

    /// Typing ended (input blurred or cleared).
    pub fn stop_typing(&mut self) {
        if self.typing.stop() {
            if let Phase::Open { .. } = self.phase {
                self.out.push(Output::Send(Frame::TypingStop));
            }
        }
    }

    /// The socket of the current attempt opened.
    pub fn on_socket_open(&mut self, now: f64) {
        if let Phase::Connecting { .. } = self.phase {
            self.phase = Phase::Handshake {
                ready_by: now + self.cfg.ready_timeout_ms,
            };
        }
    }

    /// The current socket closed with `code` (1006 when the browser saw no close frame).
    pub fn on_socket_close(&mut self, now: f64, code: u16) {
        if let Phase::Connecting { .. } | Phase::Handshake { .. } | Phase::Open { .. } = self.phase {
            self.lost(now, code);
        }
    }

    /// No token could be had, or the socket could not even be created: a network-like
    /// failure, retried with backoff.
    pub fn on_connect_error(&mut self, now: f64) {
        if let Phase::Connecting { .. } = self.phase {
            self.lost(now, CloseCode::Abnormal.as_u16());
        }
    }

    /// The browser is back online (`online` event).
    pub fn on_online(&mut self, now: f64) {
        self.wake(now);
    }

    /// The tab became visible again.
    pub fn on_visible(&mut self, now: f64) {
        self.wake(now);
    }

    /// Time passed: fire whatever is due at `now`.
    pub fn tick(&mut self, now: f64) {
        match self.phase {
            Phase::Waiting { at } if now >= at => self.attempt(now),
            Phase::Connecting { deadline } if now >= deadline => {
                self.out.push(Output::Disconnect {
                    code: CLOSE_GIVING_UP,
                });
                self.lost(now, CloseCode::Abnormal.as_u16());
            }
            Phase::Handshake { ready_by } if now >= ready_by => self.enter_open(now),
            Phase::Open { .. } => {
                if self.pong_by.is_some_and(|by| now >= by) {
                    // The browser has not noticed, but the peer is gone.
                    self.out.push(Output::Disconnect {
                        code: CLOSE_GIVING_UP,
                    });
                    self.lost(now, CloseCode::Abnormal.as_u16());
                } else {
                    if self.ping_at.is_some_and(|at| now >= at) {
                        self.send_ping(now);
                    }
                    if self.typing.poll(now) {
                        self.out.push(Output::Send(Frame::TypingStop));
                    }
                    for payload in self.outbox.due(now) {
                        self.out.push(Output::Send(Frame::Message(payload)));
                    }
                }
            }
            _ => {}
        }
        if self.typers.expire(now) {
            self.emit_typers();
        }
    }

    /// When [`Machine::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<f64> {
        let phase = match self.phase {
            Phase::Waiting { at } => Some(at),
            Phase::Connecting { deadline } => Some(deadline),
            Phase::Handshake { ready_by } => Some(ready_by),
            _ => None,
        };
        let open = if let Phase::Open { .. } = self.phase {
            [
                self.ping_at,
                self.pong_by,
                self.typing.deadline(),
                self.outbox.next_retry(),
            ]
        } else {
            [None; 4]
        };
        phase
            .into_iter()
            .chain(open.into_iter().flatten())
            .chain(self.typers.next_expiry())
            .reduce(f64::min)
    }

    /// Starts a connection attempt.
    fn attempt(&mut self, now: f64) {
        self.phase = Phase::Connecting {
            deadline: now + self.cfg.connect_timeout_ms,
        };
        self.set_state(State::Connecting {
            attempt: self.backoff.attempt(),
        });
        let since = self.resume.query().map(|(seq, epoch)| (seq, epoch.to_owned()));
        self.out.push(Output::Connect {
            refresh_token: std::mem::take(&mut self.refresh_next),
            since,
        });
    }

    /// The socket is usable: tell the app and send everything waiting.
    fn enter_open(&mut self, now: f64) {
        self.phase = Phase::Open { since: now };
        self.refreshed = false;
        self.set_state(State::Open);
        if self.was_open && !self.extensions {
            // A base-layer peer cannot replay what we missed.
            self.out.push(Output::ReloadHistory(ReloadReason::NoResume));
        }
        self.was_open = true;
        for payload in self.outbox.resend_all() {
            self.out.push(Output::Send(Frame::Message(payload)));
        }
    }

    /// The socket is gone, not by the app's wish: decide between reconnecting, a token
    /// refresh and giving up.
    fn lost(&mut self, now: f64, code: u16) {
        if let Phase::Open { since } = self.phase {
            if now - since >= self.cfg.stable_after_ms {
                self.backoff.reset();
            }
        }
        self.connection_gone();
        let close = CloseCode::from_u16(code);
        if close == CloseCode::TooBig {
            self.out.push(Output::CloseError { code });
        }
        match close.action() {
            CloseAction::Fail => self.fail(code),
            CloseAction::RefreshToken if !self.refreshed => {
                self.refreshed = true;
                self.refresh_next = true;
                self.attempt(now);
            }
            CloseAction::RefreshToken => self.fail(code),
            // A 1000 the app did not ask for (we would be `Closed`) is treated like any
            // other drop: staying silently offline is the worse failure.
            CloseAction::Stop | CloseAction::Reconnect => {
                let (attempt, delay_ms) = self.backoff.next_delay(self.rng.next_unit());
                self.phase = Phase::Waiting { at: now + delay_ms };
                self.set_state(State::Reconnecting { attempt, delay_ms });
            }
        }
    }

    /// Per-connection state that dies with the socket.
    fn connection_gone(&mut self) {
        self.typing.reset();
        self.extensions = false;
        self.ping_at = None;
        self.pong_by = None;
        if self.typers.clear() {
            self.emit_typers();
        }
    }

    fn fail(&mut self, code: u16) {
        self.phase = Phase::Failed;
        self.set_state(State::Failed { code });
        self.reject_all(SendError::Failed);
    }

    /// `online` or the tab is visible: reconnect now rather than after the delay, or
    /// check an open connection that may have died while the tab slept.
    fn wake(&mut self, now: f64) {
        match self.phase {
            Phase::Waiting { .. } => self.attempt(now),
            Phase::Open { .. } if self.extensions && self.pong_by.is_none() => {
                self.send_ping(now);
            }
            _ => {}
        }
    }

    fn send_ping(&mut self, now: f64) {
        self.out.push(Output::Send(Frame::Ping));
        self.ping_at = None;
        self.pong_by = Some(now + self.cfg.pong_timeout_ms);
    }

    fn emit_typers(&mut self) {
        self.out.push(Output::TypersChanged);
    }

    fn reject_all(&mut self, error: SendError) {
        for client_id in self.outbox.drain_ids() {
            self.out.push(Output::Reject { client_id, error });
        }
    }

    fn set_state(&mut self, state: State) {
        if self.state != state {
            self.state = state.clone();
            self.out.push(Output::State(state));
        }
    }
}

#[cfg(test)]
mod tests;
