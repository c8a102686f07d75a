//! One chat's state in memory: members, the retained messages, idempotency keys and
//! presence counts, and the bookkeeping that keeps them within the retention.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use hablar_protocol::events::{Message, PresenceUser};
use hablar_protocol::{ClientId, Epoch, Seq, UserId};
use time::OffsetDateTime;

use crate::backend::rules::{new_epoch, oldest_retained};

/// One chat's state.
pub(super) struct Chat {
    /// Members, by user id.
    pub(super) members: HashSet<UserId>,
    /// Identity of this store; a restart makes a new one.
    pub(super) epoch: Epoch,
    /// The newest seq (0 when empty).
    pub(super) last_seq: Seq,
    /// The newest `retention` messages, oldest first.
    pub(super) messages: VecDeque<Message>,
    /// The seq stored under each idempotency key. Only keys of retained messages are
    /// kept: the echo of a duplicate is the stored message, and a key that outlived its
    /// message would let a flood of distinct `client_id`s grow memory for 24 h past the
    /// retention.
    pub(super) client_ids: HashMap<(UserId, ClientId), Seq>,
    /// Idempotency keys oldest first (by time and seq), to expire them without scanning.
    pub(super) client_id_order: VecDeque<(OffsetDateTime, Seq, UserId, ClientId)>,
    /// Online users and their connection counts. Ordered, so `presence` is stable.
    pub(super) presence: BTreeMap<UserId, (PresenceUser, usize)>,
}

impl Chat {
    pub(super) fn new() -> Self {
        Self {
            members: HashSet::new(),
            epoch: new_epoch(),
            last_seq: Seq(0),
            messages: VecDeque::new(),
            client_ids: HashMap::new(),
            client_id_order: VecDeque::new(),
            presence: BTreeMap::new(),
        }
    }

    /// Forgets idempotency keys older than `ttl` or whose message left the retention.
    pub(super) fn expire_client_ids(&mut self, now: OffsetDateTime, ttl: Duration) {
        let oldest = self.oldest_seq();
        while let Some((at, seq, _, _)) = self.client_id_order.front() {
            if now - *at < ttl && *seq >= oldest {
                break;
            }
            if let Some((_, _, user, key)) = self.client_id_order.pop_front() {
                self.client_ids.remove(&(user, key));
            }
        }
    }

    /// The retained message with `seq`.
    pub(super) fn retained(&self, seq: Seq) -> Option<&Message> {
        let index = seq.0.checked_sub(self.oldest_seq().0)?;
        let message = self.messages.get(usize::try_from(index).ok()?)?;
        (message.seq == Some(seq)).then_some(message)
    }

    pub(super) fn oldest_seq(&self) -> Seq {
        oldest_retained(self.messages.front().and_then(|m| m.seq), self.last_seq)
    }
}
