//! The typing lease of PROTOCOL.md, both sides: [`TypingSender`] turns keystrokes into
//! few `typing_start`/`typing_stop` frames, [`Typers`] keeps who is typing now.

use hablar_protocol::limits::{TYPING_EXPIRY_MS, TYPING_IDLE_MS, TYPING_REFRESH_MS};

/// The sender side: at most one `typing_start` per 3 s while keys are pressed, and a
/// `typing_stop` after 2 s without a keystroke or when the message is sent.
#[derive(Debug, Clone, Default)]
pub struct TypingSender {
    /// When the last `typing_start` went out; `None` while not typing. The lease the
    /// others hold for us runs from here.
    started_at: Option<f64>,
    /// The last keystroke, from which the idle stop is timed.
    last_key_at: f64,
}

impl TypingSender {
    /// A keystroke at `now`. Returns `true` when a `typing_start` must be sent.
    pub fn keystroke(&mut self, now: f64) -> bool {
        self.last_key_at = now;
        let refresh = match self.started_at {
            None => true,
            Some(at) => now - at >= TYPING_REFRESH_MS as f64,
        };
        if refresh {
            self.started_at = Some(now);
        }
        refresh
    }

    /// When [`TypingSender::poll`] will want to send `typing_stop`, if typing.
    pub fn deadline(&self) -> Option<f64> {
        self.started_at.map(|_| self.last_key_at + TYPING_IDLE_MS as f64)
    }

    /// Returns `true` when the idle time has passed and `typing_stop` must be sent.
    pub fn poll(&mut self, now: f64) -> bool {
        match self.deadline() {
            Some(at) if now >= at => self.stop(),
            _ => false,
        }
    }

    /// Typing ends now (the message was sent, the input lost focus). Returns `true` when
    /// a `typing_stop` must be sent.
    pub fn stop(&mut self) -> bool {
        self.started_at.take().is_some()
    }

    /// The connection is gone: forget the lease without sending anything (the server
    /// stops it for us, and typing is never queued).
    pub fn reset(&mut self) {
        self.started_at = None;
    }
}

/// Someone typing now.
#[derive(Debug, Clone, PartialEq)]
pub struct Typer {
    /// Their user id.
    pub user_id: String,
    /// Their display name, as their `typing_start` said.
    pub username: String,
    /// When their lease runs out unless refreshed.
    expires_at: f64,
}

/// The receiver side: who is typing, oldest first, each with a 6 s lease.
#[derive(Debug, Clone, Default)]
pub struct Typers {
    /// Few entries (people typing in one chat at once), so a `Vec` beats a map.
    list: Vec<Typer>,
}

impl Typers {
    /// The users typing now, in the order they started.
    pub fn list(&self) -> &[Typer] {
        &self.list
    }

    /// A `typing_start` from `user_id`. Returns `true` when the list changed (a refresh
    /// of someone already listed only extends the lease).
    pub fn start(&mut self, user_id: &str, username: &str, now: f64) -> bool {
        let expires_at = now + TYPING_EXPIRY_MS as f64;
        if let Some(typer) = self.list.iter_mut().find(|t| t.user_id == user_id) {
            typer.expires_at = expires_at;
            if typer.username != username {
                typer.username = username.to_owned();
                return true;
            }
            return false;
        }
        self.list.push(Typer {
            user_id: user_id.to_owned(),
            username: username.to_owned(),
            expires_at,
        });
        true
    }

    /// `user_id` stopped (their `typing_stop`, their message, or they left). Returns
    /// `true` when they were listed.
    pub fn stop(&mut self, user_id: &str) -> bool {
        let before = self.list.len();
        self.list.retain(|t| t.user_id != user_id);
        self.list.len() != before
    }

    /// Drops every typer whose lease ran out by `now`. Returns `true` when any did.
    pub fn expire(&mut self, now: f64) -> bool {
        let before = self.list.len();
        self.list.retain(|t| t.expires_at > now);
        self.list.len() != before
    }

    /// When the next lease runs out.
    pub fn next_expiry(&self) -> Option<f64> {
        self.list.iter().map(|t| t.expires_at).reduce(f64::min)
    }

    /// Forgets everyone (the connection is gone, so their stops would be missed).
    /// Returns `true` when the list was not empty.
    pub fn clear(&mut self) -> bool {
        let had = !self.list.is_empty();
        self.list.clear();
        had
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuous_typing_sends_one_start_per_three_seconds() {
        let mut s = TypingSender::default();
        // A keystroke every 100 ms for 10 s.
        let starts: Vec<f64> = (0..100)
            .map(|i| f64::from(i) * 100.0)
            .filter(|&now| s.keystroke(now))
            .collect();
        assert_eq!(starts, vec![0.0, 3000.0, 6000.0, 9000.0]);
        assert!(!s.poll(9_900.0), "still typing");
    }

    #[test]
    fn typing_stop_follows_two_seconds_of_idle() {
        let mut s = TypingSender::default();
        assert!(s.keystroke(1000.0));
        assert!(!s.keystroke(1500.0));
        assert_eq!(s.deadline(), Some(3500.0));
        assert!(!s.poll(3499.0));
        assert!(s.poll(3500.0));
        assert!(!s.poll(3600.0), "one stop only");
        assert_eq!(s.deadline(), None);
        assert!(s.keystroke(4000.0), "typing again starts a new lease at once");
    }

    #[test]
    fn sending_stops_typing_once_and_a_lost_connection_sends_nothing() {
        let mut s = TypingSender::default();
        s.keystroke(0.0);
        assert!(s.stop());
        assert!(!s.stop());
        s.keystroke(10.0);
        s.reset();
        assert!(!s.stop());
        assert!(!s.poll(10_000.0));
    }

    #[test]
    fn a_typer_expires_six_seconds_after_their_last_start() {
        let mut t = Typers::default();
        assert!(t.start("bob", "Bob", 0.0));
        assert!(!t.start("bob", "Bob", 4000.0), "a refresh is no change");
        assert_eq!(t.next_expiry(), Some(10_000.0));
        assert!(!t.expire(9_999.0));
        assert_eq!(t.list().len(), 1);
        assert!(t.expire(10_000.0));
        assert!(t.list().is_empty());
        assert_eq!(t.next_expiry(), None);
    }

    #[test]
    fn typers_keep_start_order_and_stop_one_by_one() {
        let mut t = Typers::default();
        t.start("bob", "Bob", 0.0);
        t.start("carol", "Carol", 100.0);
        let names: Vec<&str> = t.list().iter().map(|x| x.username.as_str()).collect();
        assert_eq!(names, ["Bob", "Carol"]);
        assert!(t.stop("bob"));
        assert!(!t.stop("bob"));
        assert_eq!(t.list()[0].user_id, "carol");
        assert!(t.clear());
        assert!(!t.clear());
    }
}
