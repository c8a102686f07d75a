//! Resume bookkeeping: the `since`/`epoch` to reconnect with, and deduplication of
//! messages that arrive twice (replay after resume, idempotent echoes of resends).

/// How many seq-less message ids (base-layer peers) are remembered for deduplication.
const RECENT_IDS: usize = 256;

/// What the arrival of a message means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// New: it goes to the app.
    New,
    /// Already had (a replay, or the echo of a resend).
    Seen,
    /// Its seq skips messages after the newest one we have: they never came. Neither it
    /// nor anything is taken; the client resumes from the newest it has, and the replay
    /// brings the missing ones and this one, in order.
    Gap,
}

/// What the client knows of the chat's message stream.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// The store identity `last_seq` belongs to, from `ready`.
    epoch: Option<String>,
    /// The newest `seq` delivered to the app; anything at or below it is a duplicate.
    last_seq: Option<u64>,
    /// Ids of recent messages without `seq` (base layer), the only way to spot their
    /// duplicates. Bounded: old ids are forgotten first.
    recent_ids: Vec<String>,
}

impl Resume {
    /// The `since` and `epoch` to put in the handshake, when the client has both.
    pub fn query(&self) -> Option<(u64, &str)> {
        Some((self.last_seq?, self.epoch.as_deref()?))
    }

    /// The newest `seq` delivered.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// The server's `ready`. Returns `true` when the client had asked to resume and the
    /// server could not: the app must reload history, the gap is not replayed.
    pub fn on_ready(&mut self, epoch: Option<&str>, last_seq: Option<u64>, recovered: bool) -> bool {
        let asked = self.query().is_some();
        let same_epoch = epoch.is_some() && self.epoch.as_deref() == epoch;
        if asked && recovered && same_epoch {
            // The replay of `seq > since` follows; keep our position.
            return false;
        }
        // A first connection, or a reset store: live messages start after the server's
        // newest, even if that is below ours (a new epoch counts from 1 again).
        self.epoch = epoch.map(str::to_owned);
        self.last_seq = last_seq;
        asked
    }

    /// A message arrived: new, seen, or past a gap. Seqs are taken strictly in order
    /// (PROTOCOL.md: no gap and no duplicate); taking one past a gap would make the ones
    /// before it look seen when they come, and they would be lost.
    pub fn on_message(&mut self, seq: Option<u64>, id: Option<&str>) -> Arrival {
        if let Some(seq) = seq {
            return match self.last_seq {
                Some(last) if seq <= last => Arrival::Seen,
                Some(last) if seq - last > 1 => Arrival::Gap,
                _ => {
                    self.last_seq = Some(seq);
                    Arrival::New
                }
            };
        }
        let Some(id) = id else {
            // Nothing to recognise it by: deliver rather than lose it.
            return Arrival::New;
        };
        if self.recent_ids.iter().any(|seen| seen == id) {
            return Arrival::Seen;
        }
        if self.recent_ids.len() == RECENT_IDS {
            // Drops the oldest; `remove(0)` would bring its panic message's integer
            // formatting into the wasm.
            let mut oldest = true;
            self.recent_ids.retain(|_| !std::mem::take(&mut oldest));
        }
        self.recent_ids.push(id.to_owned());
        Arrival::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(r: &mut Resume, seq: Option<u64>, id: Option<&str>) -> bool {
        r.on_message(seq, id) == Arrival::New
    }

    #[test]
    fn a_seq_past_a_gap_is_not_taken_and_the_resume_asks_for_the_gap() {
        let mut r = Resume::default();
        r.on_ready(Some("e1"), Some(14), true);
        assert_eq!(r.on_message(Some(16), Some("m16")), Arrival::Gap);
        assert_eq!(r.query(), Some((14, "e1")), "resumes from 14, not 16");
        // The replay after the resume brings 15 and 16, in order.
        r.on_ready(Some("e1"), Some(16), true);
        assert_eq!(r.on_message(Some(15), Some("m15")), Arrival::New);
        assert_eq!(r.on_message(Some(16), Some("m16")), Arrival::New);
        assert_eq!(r.on_message(Some(16), Some("m16")), Arrival::Seen);
    }

    #[test]
    fn a_first_connection_starts_after_the_servers_newest_message() {
        let mut r = Resume::default();
        assert_eq!(r.query(), None);
        assert!(!r.on_ready(Some("e1"), Some(7), true), "nothing to reload");
        assert_eq!(r.query(), Some((7, "e1")));
        assert!(!new(&mut r, Some(7), Some("m7")), "history, not live");
        assert!(new(&mut r, Some(8), Some("m8")));
        assert_eq!(r.query(), Some((8, "e1")));
    }

    #[test]
    fn a_recovered_resume_delivers_the_replay_once_in_order() {
        let mut r = Resume::default();
        r.on_ready(Some("e1"), Some(3), true);
        assert!(new(&mut r, Some(4), None));
        // Reconnect with since=4.
        assert_eq!(r.query(), Some((4, "e1")));
        assert!(!r.on_ready(Some("e1"), Some(6), true));
        let delivered: Vec<u64> = [4, 5, 5, 6, 6, 7]
            .into_iter()
            .filter(|&s| new(&mut r, Some(s), None))
            .collect();
        assert_eq!(delivered, [5, 6, 7]);
    }

    #[test]
    fn an_unrecovered_resume_asks_for_a_history_reload_and_follows_the_new_epoch() {
        let mut r = Resume::default();
        r.on_ready(Some("e1"), Some(10), true);
        assert!(r.on_ready(Some("e2"), Some(2), false));
        assert_eq!(r.query(), Some((2, "e2")));
        assert!(new(&mut r, Some(3), None), "the new epoch counts from 1 again");
        // A changed epoch is a reset even if the server claimed recovery.
        assert!(r.on_ready(Some("e3"), Some(0), true));
        assert!(new(&mut r, Some(1), None));
    }

    #[test]
    fn messages_without_seq_are_deduplicated_by_id() {
        let mut r = Resume::default();
        assert!(new(&mut r, None, Some("42")));
        assert!(!new(&mut r, None, Some("42")));
        assert!(new(&mut r, None, Some("43")));
        assert!(new(&mut r, None, None));
        assert!(
            new(&mut r, None, None),
            "unrecognisable messages are never dropped"
        );
        for i in 0..RECENT_IDS {
            new(&mut r, None, Some(&format!("x{i}")));
        }
        assert!(
            new(&mut r, None, Some("42")),
            "old ids are forgotten, memory stays bounded"
        );
        assert_eq!(r.query(), None, "no seq, no resume");
    }
}
