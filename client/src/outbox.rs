//! The outbox: every message sent and not yet acknowledged by its echo, bounded, in send
//! order. It is what makes "no lost messages" hold across reconnects: each open
//! connection resends all of it with the same `client_id`s, and the server's idempotency
//! stores each message once.

/// The outbox is full: the message was not accepted. The caller must tell the app
/// (a full outbox is never a silent drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxFull;

/// A message waiting for its echo.
#[derive(Debug, Clone)]
struct Pending<M> {
    /// The idempotency key; the echo carries it back.
    client_id: String,
    /// What to send again (the encoded frame in the wasm glue).
    payload: M,
    /// When a server that said `unavailable` should get it again, if it did.
    retry_at: Option<f64>,
}

/// Messages waiting for their echo, oldest first, at most `limit`.
#[derive(Debug, Clone)]
pub struct Outbox<M> {
    /// Most messages held at once.
    limit: usize,
    /// Send order is delivery order on resend.
    items: Vec<Pending<M>>,
}

impl<M: Clone> Outbox<M> {
    /// An empty outbox holding at most `limit` messages.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            items: Vec::new(),
        }
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Holds a message until its echo. A full outbox refuses it.
    pub fn push(&mut self, client_id: String, payload: M) -> Result<(), OutboxFull> {
        if self.items.len() >= self.limit {
            return Err(OutboxFull);
        }
        self.items.push(Pending {
            client_id,
            payload,
            retry_at: None,
        });
        Ok(())
    }

    /// The echo of `client_id` arrived. Returns `true` when it was waiting here.
    pub fn ack(&mut self, client_id: &str) -> bool {
        self.remove(client_id)
    }

    /// The server refused `client_id` for good. Returns `true` when it was waiting.
    pub fn remove(&mut self, client_id: &str) -> bool {
        let before = self.items.len();
        self.items.retain(|p| p.client_id != client_id);
        self.items.len() != before
    }

    /// The server could not store `client_id` now: send it again at `at`.
    /// Returns `true` when it was waiting.
    pub fn retry_at(&mut self, client_id: &str, at: f64) -> bool {
        match self.items.iter_mut().find(|p| p.client_id == client_id) {
            Some(p) => {
                p.retry_at = Some(at);
                true
            }
            None => false,
        }
    }

    /// Everything to send on a fresh connection, oldest first.
    pub fn resend_all(&mut self) -> Vec<M> {
        self.items
            .iter_mut()
            .map(|p| {
                p.retry_at = None;
                p.payload.clone()
            })
            .collect()
    }

    /// The messages whose retry time has come, oldest first.
    pub fn due(&mut self, now: f64) -> Vec<M> {
        self.items
            .iter_mut()
            .filter(|p| p.retry_at.is_some_and(|at| at <= now))
            .map(|p| {
                p.retry_at = None;
                p.payload.clone()
            })
            .collect()
    }

    /// The earliest retry time.
    pub fn next_retry(&self) -> Option<f64> {
        self.items.iter().filter_map(|p| p.retry_at).reduce(f64::min)
    }

    /// Empties the outbox (the client closed or failed) and returns the ids, so each
    /// waiting send can be rejected.
    pub fn drain_ids(&mut self) -> Vec<String> {
        self.items.drain(..).map(|p| p.client_id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_outbox_refuses_instead_of_dropping() {
        let mut o = Outbox::new(2);
        assert_eq!(o.push("a".into(), 1), Ok(()));
        assert_eq!(o.push("b".into(), 2), Ok(()));
        assert_eq!(o.push("c".into(), 3), Err(OutboxFull));
        assert_eq!(o.resend_all(), vec![1, 2], "the refused one was not kept");
        assert!(o.ack("a"));
        assert_eq!(o.push("c".into(), 3), Ok(()), "an echo frees a slot");
    }

    #[test]
    fn unacknowledged_messages_are_resent_in_send_order_until_their_echo() {
        let mut o = Outbox::new(10);
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            o.push(id.into(), i).expect("room");
        }
        assert_eq!(o.resend_all(), vec![0, 1, 2]);
        assert!(o.ack("b"));
        assert!(!o.ack("b"), "a second echo acknowledges nothing");
        assert!(!o.ack("zzz"));
        assert_eq!(o.resend_all(), vec![0, 2]);
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn unavailable_messages_come_due_at_their_retry_time() {
        let mut o = Outbox::new(10);
        o.push("a".into(), 'a').expect("room");
        o.push("b".into(), 'b').expect("room");
        assert!(o.retry_at("b", 2000.0));
        assert!(!o.retry_at("x", 2000.0));
        assert_eq!(o.next_retry(), Some(2000.0));
        assert!(o.due(1999.0).is_empty());
        assert_eq!(o.due(2000.0), vec!['b']);
        assert!(o.due(3000.0).is_empty(), "due once");
        assert_eq!(o.next_retry(), None);
    }

    #[test]
    fn draining_returns_every_waiting_id_for_rejection() {
        let mut o = Outbox::new(10);
        o.push("a".into(), ()).expect("room");
        o.push("b".into(), ()).expect("room");
        assert_eq!(o.drain_ids(), vec!["a".to_owned(), "b".to_owned()]);
        assert!(o.is_empty());
    }
}
