//! The decisions every backend makes alike, as pure functions: when a resume is served,
//! how an epoch is made, how a message id and a timestamp are written.
//!
//! The Redis `append` script writes message ids in Lua; it follows [`message_id`], and
//! the pub/sub catch-up reads them back with [`epoch_of`].

use hablar_protocol::events::Message;
use hablar_protocol::{Epoch, MessageId, Seq};
use rand::distr::{Alphanumeric, SampleString as _};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::Replay;

/// A fresh epoch: 12 random alphanumerics, new for every store (or store reset).
pub fn new_epoch() -> Epoch {
    Epoch::new(Alphanumeric.sample_string(&mut rand::rng(), 12)).expect("12 alphanumerics are a valid epoch")
}

/// `created_at` of a message: RFC 3339 in UTC with microseconds, like Django REST
/// framework.
pub fn rfc3339(at: OffsetDateTime) -> String {
    let at = at.replace_nanosecond(at.nanosecond() / 1000 * 1000).unwrap_or(at);
    at.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// The id of the message stored as `seq` under `epoch`: `{epoch}-{seq}`, unique across
/// store resets.
pub fn message_id(epoch: &Epoch, seq: Seq) -> MessageId {
    // At most 64 + 1 + 20 bytes: within a message id's 128.
    MessageId::new(format!("{epoch}-{seq}")).expect("an epoch and a seq make a valid message id")
}

/// The epoch part of a message id made by [`message_id`]. An epoch may hold `-`, a seq
/// cannot: the last `-` separates them.
pub fn epoch_of(id: &MessageId) -> Option<&str> {
    id.as_str().rsplit_once('-').map(|(epoch, _)| epoch)
}

/// The oldest retained seq: `first`, the seq of the oldest message kept, or, when none
/// is kept, the seq the next message will get.
pub fn oldest_retained(first: Option<Seq>, last_seq: Seq) -> Seq {
    first.unwrap_or(last_seq.next())
}

/// Whether the messages after `since` can be served from a store whose newest seq is
/// `last_seq` and oldest retained one `oldest` (see [`oldest_retained`]): `since` is
/// not ahead of the store, the first message after it is still retained, and at most
/// `max` messages are missing.
pub fn gap_servable(since: Seq, last_seq: Seq, oldest: Seq, max: usize) -> bool {
    // `since` comes from the client's query and may be `u64::MAX`: no `+ 1` on it may
    // overflow.
    let retained = since.0.saturating_add(1) >= oldest.0;
    let missing = last_seq.0.saturating_sub(since.0);
    since <= last_seq && retained && missing <= u64::try_from(max).unwrap_or(u64::MAX)
}

/// Whether a resume from `since` in `asked` (the store's `current` epoch when the client
/// gave none) is `recovered`: same epoch, and the gap can be served ([`gap_servable`]).
pub fn recovered(
    asked: Option<&Epoch>,
    current: &Epoch,
    since: Seq,
    last_seq: Seq,
    oldest: Seq,
    max: usize,
) -> bool {
    asked.is_none_or(|epoch| epoch == current) && gap_servable(since, last_seq, oldest, max)
}

/// What a connection that resumes from `since` (in `asked`) gets: the store's `current`
/// epoch and newest seq, and, when the resume is [`recovered`], the messages after
/// `since` up to `last_seq` in order. `read` is what the store read from `since` on: it
/// is only walked when recovered (the embedded backend hands its whole log, lazily).
pub fn serve_replay(
    current: Epoch,
    last_seq: Seq,
    oldest: Seq,
    since: Option<Seq>,
    asked: Option<&Epoch>,
    max: usize,
    read: impl IntoIterator<Item = Message>,
) -> Replay {
    let mut replay = Replay {
        epoch: current,
        last_seq,
        messages: Vec::new(),
        recovered: true,
    };
    let Some(since) = since else {
        return replay;
    };
    if !recovered(asked, &replay.epoch, since, last_seq, oldest, max) {
        replay.recovered = false;
        return replay;
    }
    replay.messages = read
        .into_iter()
        .filter(|m| m.seq.is_some_and(|seq| seq > since && seq <= last_seq))
        .collect();
    replay
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn epoch(text: &str) -> Epoch {
        Epoch::new(text).expect("epoch")
    }

    #[test]
    fn new_epochs_are_twelve_alphanumerics_and_differ() {
        let (a, b) = (new_epoch(), new_epoch());
        assert_eq!(a.as_str().len(), 12);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let at = OffsetDateTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        assert_eq!(rfc3339(at), "2023-11-14T22:13:20.123456Z");
        let whole = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(whole), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn a_message_id_is_epoch_dash_seq_and_gives_its_epoch_back() {
        let id = message_id(&epoch("Ab3"), Seq(42));
        assert_eq!(id.as_str(), "Ab3-42");
        assert_eq!(epoch_of(&id), Some("Ab3"));
        let dashed = message_id(&epoch("a-b_c"), Seq(u64::MAX));
        assert_eq!(epoch_of(&dashed), Some("a-b_c"));
        let longest = message_id(&epoch(&"x".repeat(64)), Seq(u64::MAX));
        assert_eq!(epoch_of(&longest), Some("x".repeat(64).as_str()));
        assert_eq!(
            epoch_of(&MessageId::new("no-dash-here").expect("id")),
            Some("no-dash")
        );
        assert_eq!(epoch_of(&MessageId::new("plain").expect("id")), None);
    }

    #[test]
    fn the_oldest_retained_seq_of_an_empty_store_is_the_next_one() {
        assert_eq!(oldest_retained(Some(Seq(3)), Seq(5)), Seq(3));
        assert_eq!(oldest_retained(None, Seq(5)), Seq(6));
        assert_eq!(oldest_retained(None, Seq(0)), Seq(1));
    }

    /// A store with seqs 3..=5 retained (1 and 2 trimmed), resumed with `max` 10 unless
    /// said otherwise.
    #[test]
    fn a_resume_is_recovered_only_in_its_epoch_within_the_retention_and_max() {
        let current = epoch("now");
        let resume = |asked: Option<&Epoch>, since: u64, max: usize| {
            recovered(asked, &current, Seq(since), Seq(5), Seq(3), max)
        };
        assert!(resume(Some(&current), 3, 10), "4 and 5 are retained");
        assert!(resume(Some(&current), 2, 10), "3 is still retained");
        assert!(resume(None, 2, 10), "no epoch is the current one");
        assert!(resume(Some(&current), 5, 10), "nothing missing");
        assert!(!resume(Some(&current), 1, 10), "2 is gone");
        assert!(!resume(Some(&current), 0, 10), "1 and 2 are gone");
        assert!(!resume(Some(&epoch("before")), 4, 10), "another epoch");
        assert!(!resume(Some(&current), 6, 10), "ahead of the store");
        assert!(
            !resume(Some(&current), u64::MAX, 10),
            "a hostile since, no overflow"
        );
        assert!(resume(Some(&current), 3, 2), "exactly max missing");
        assert!(!resume(Some(&current), 2, 2), "more than max missing");
        assert!(resume(Some(&current), 5, 0), "nothing missing needs no room");
    }

    #[test]
    fn an_empty_store_serves_a_resume_from_its_newest_seq_only() {
        // Everything trimmed up to 5, nothing retained: `oldest` is 6.
        let oldest = oldest_retained(None, Seq(5));
        assert!(gap_servable(Seq(5), Seq(5), oldest, 10));
        assert!(!gap_servable(Seq(4), Seq(5), oldest, 10));
        // A fresh store: seq 0, nothing stored.
        assert!(gap_servable(Seq(0), Seq(0), oldest_retained(None, Seq(0)), 0));
    }

    #[test]
    fn a_replay_serves_what_follows_since_up_to_the_newest_seq_and_only_when_recovered() {
        use hablar_protocol::events::Sender;
        use hablar_protocol::{ChatId, UserId};
        let e = epoch("E");
        let message = |seq: u64| Message {
            id: message_id(&e, Seq(seq)),
            seq: Some(Seq(seq)),
            chat_id: ChatId::new("c").expect("chat"),
            content: seq.to_string(),
            sender: Sender {
                id: UserId::new("u").expect("user"),
                username: "U".into(),
            },
            created_at: "2026-12-07T00:00:00Z".into(),
            client_id: None,
            extra: Default::default(),
        };
        let read = || (1..=6).map(message);
        let seqs = |r: &Replay| {
            r.messages
                .iter()
                .filter_map(|m| m.seq)
                .map(|s| s.0)
                .collect::<Vec<_>>()
        };
        // Seq 6 was read after the snapshot's newest seq (5): it comes live, not here.
        let resumed = serve_replay(e.clone(), Seq(5), Seq(1), Some(Seq(2)), Some(&e), 10, read());
        assert!(resumed.recovered);
        assert_eq!(seqs(&resumed), [3, 4, 5]);
        let fresh = serve_replay(e.clone(), Seq(5), Seq(1), None, None, 10, read());
        assert!(fresh.recovered && fresh.messages.is_empty());
        let other = serve_replay(
            e.clone(),
            Seq(5),
            Seq(1),
            Some(Seq(2)),
            Some(&epoch("F")),
            10,
            read(),
        );
        assert!(!other.recovered && other.messages.is_empty());
        let too_long = serve_replay(e.clone(), Seq(5), Seq(1), Some(Seq(2)), None, 2, read());
        assert!(!too_long.recovered && too_long.messages.is_empty());
        assert_eq!(too_long.last_seq, Seq(5));
    }
}
