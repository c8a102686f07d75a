//! Server frames: `ready`, messages (their dedupe, gaps and the acks of our sends),
//! typing peers, presence, and errors about our sends.

use hablar_protocol::CloseCode;

use super::{Incoming, Machine, Output, Phase, ReloadReason, Verdict, CLOSE_GIVING_UP};
use crate::resume::Arrival;

/// How long a message the server could not store (`unavailable`) waits before it is
/// sent again on the same connection, in ms.
const UNAVAILABLE_RETRY_MS: f64 = 2_000.0;

impl<M: Clone> Machine<M> {
    /// A frame from the current socket.
    pub fn on_frame(&mut self, now: f64, frame: Incoming) -> Verdict {
        if !matches!(self.phase, Phase::Handshake { .. } | Phase::Open { .. }) {
            return Verdict::default();
        }
        // Any frame proves the connection alive.
        self.pong_by = None;
        if self.extensions {
            self.ping_at = Some(now + self.cfg.ping_interval_ms);
        }
        let mut verdict = Verdict::default();
        match frame {
            Incoming::Ready {
                user_id,
                epoch,
                last_seq,
                recovered,
                presence,
            } => {
                self.extensions = true;
                self.ping_at = Some(now + self.cfg.ping_interval_ms);
                if user_id.is_some() {
                    self.ready_user = user_id;
                }
                let reload = self.resume.on_ready(epoch.as_deref(), last_seq, recovered);
                self.presence = presence;
                self.out.push(Output::PresenceChanged);
                if let Phase::Handshake { .. } = self.phase {
                    self.enter_open(now);
                }
                if reload {
                    self.out.push(Output::ReloadHistory(ReloadReason::NotRecovered));
                }
            }
            Incoming::Message {
                seq,
                id,
                client_id,
                sender_id,
            } => {
                let arrival = self.resume.on_message(seq, id.as_deref());
                if arrival == Arrival::Gap {
                    // Messages before this one never came (a server that broke the
                    // order): resume from the newest we have; the replay brings them
                    // and this one, in order, and acknowledges this one then.
                    self.out.push(Output::Disconnect {
                        code: CLOSE_GIVING_UP,
                    });
                    self.lost(now, CloseCode::Abnormal.as_u16());
                    return Verdict::default();
                }
                if let Some(sender) = &sender_id {
                    self.typer_stopped(sender);
                }
                if let Some(client_id) = client_id {
                    if self.sent_by_us(sender_id.as_deref()) {
                        verdict.resolve = self.outbox.ack(&client_id);
                    }
                }
                // Delivered whoever sent it: another member's message that reuses one of
                // our `client_id`s is their message, not a duplicate of ours.
                verdict.deliver = arrival == Arrival::New;
            }
            Incoming::TypingStart(user) => {
                let own = self.user_id() == Some(user.user_id.as_str());
                if !own && self.typers.start(&user.user_id, &user.username, now) {
                    self.emit_typers();
                }
            }
            Incoming::TypingStop { user_id } => self.typer_stopped(&user_id),
            Incoming::PresenceJoin(user) => {
                if !self.presence.iter().any(|u| u.user_id == user.user_id) {
                    self.presence.push(user);
                    self.out.push(Output::PresenceChanged);
                }
            }
            Incoming::PresenceLeave { user_id } => {
                self.typer_stopped(&user_id);
                let before = self.presence.len();
                self.presence.retain(|u| u.user_id != user_id);
                if self.presence.len() != before {
                    self.out.push(Output::PresenceChanged);
                }
            }
            Incoming::Error { code, client_id } => {
                if let Some(client_id) = client_id {
                    if code == "unavailable" {
                        // Not stored: the same client_id again later is safe.
                        self.outbox.retry_at(&client_id, now + UNAVAILABLE_RETRY_MS);
                    } else {
                        verdict.reject = self.outbox.remove(&client_id);
                    }
                }
            }
            Incoming::Other => {}
        }
        verdict
    }

    /// Whether a message from `sender` is ours, so that its `client_id` may acknowledge
    /// one of our sends. Any member can put any `client_id` in a message: only the
    /// server-stamped sender tells our echo from a stranger's reuse of the key.
    fn sent_by_us(&self, sender: Option<&str>) -> bool {
        match self.user_id() {
            Some(me) => sender == Some(me),
            // No `ready`, no `userId` option and no readable `user_id` claim: nothing
            // to compare with. Matching by `client_id` alone keeps sends working there
            // (README: give `userId` to close this).
            None => true,
        }
    }

    fn typer_stopped(&mut self, user_id: &str) {
        if self.typers.stop(user_id) {
            self.emit_typers();
        }
    }
}
