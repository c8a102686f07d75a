//! Connection slots: a user's open connections on every instance, counted in Redis
//! against `--max-connections-per-user`, leased and renewed by the heartbeat.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hablar_protocol::UserId;
use redis::AsyncCommands as _;

use super::Inner;
use crate::backend::ConnectionSlot;
use crate::error::Result;

impl Inner {
    /// The entry of this instance's connection slot `slot` in its user's set.
    pub(super) fn slot_member(&self, slot: u64) -> String {
        format!("{}:{slot}", self.instance)
    }

    /// Takes this instance's connection slot `slot` of `user` out of Redis.
    pub(super) async fn remove_slot(&self, user: &UserId, slot: u64) -> Result<()> {
        let mut conn = self.conn.clone();
        self.run(conn.zrem(self.keys.connections(user), self.slot_member(slot)))
            .await
    }

    /// Counts across instances: see `connection_acquire.lua`. The slot's lease is the
    /// presence lease, renewed by the same heartbeat.
    pub(super) async fn acquire_connection(
        self: &Arc<Self>,
        user: &UserId,
        max: usize,
    ) -> Result<Option<ConnectionSlot>> {
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let mut invocation = self.scripts.connection_acquire.prepare_invoke();
        invocation
            .key(self.keys.connections(user))
            .arg(self.slot_member(slot))
            .arg(max)
            .arg(self.opts.presence_ttl_ms.max(3));
        let mut conn = self.conn.clone();
        let taken: i64 = match self.run(invocation.invoke_async(&mut conn)).await {
            Ok(taken) => taken,
            Err(err) => {
                // The script may have run all the same, after our time limit: take the
                // slot back rather than let it count for a whole lease.
                let (inner, user) = (self.clone(), user.clone());
                tokio::spawn(async move {
                    let _ = inner.remove_slot(&user, slot).await;
                });
                return Err(err);
            }
        };
        if taken != 1 {
            return Ok(None);
        }
        // Renewed from the next heartbeat on; the lease just written lasts until then.
        self.slots.lock().insert(slot, user.clone());
        let (inner, user) = (self.clone(), user.clone());
        Ok(Some(ConnectionSlot::new(move || {
            // First out of the renewals, then out of Redis: see `renew_slots`.
            inner.slots.lock().remove(&slot);
            Box::pin(async move {
                if let Err(err) = inner.remove_slot(&user, slot).await {
                    tracing::debug!(error = %err, "a connection slot not given back runs out with its lease");
                }
            })
        })))
    }
}

/// Renews the leases of this instance's connection slots, one user's at a time, and
/// takes back any slot given back while its renewal was on its way (the renewal writes
/// back a missing entry, so it could have outlived the release by a whole lease).
pub(super) async fn renew_slots(inner: &Inner) {
    let mut by_user: HashMap<UserId, Vec<u64>> = HashMap::new();
    for (slot, user) in inner.slots.lock().iter() {
        by_user.entry(user.clone()).or_default().push(*slot);
    }
    for (user, slots) in by_user {
        renew_user_slots(inner, &user, slots).await;
    }
}

/// Renews `slots` of `user`: this instance's, as they were when the renewal started.
pub(super) async fn renew_user_slots(inner: &Inner, user: &UserId, slots: Vec<u64>) {
    let mut invocation = inner.scripts.connection_renew.prepare_invoke();
    invocation
        .key(inner.keys.connections(user))
        .arg(inner.opts.presence_ttl_ms.max(3));
    for slot in &slots {
        invocation.arg(inner.slot_member(*slot));
    }
    let mut conn = inner.conn.clone();
    if let Err(err) = inner.run(invocation.invoke_async::<i64>(&mut conn)).await {
        tracing::debug!(error = %err, "connection slots not renewed");
    }
    // Even after an error: the script may have run after our time limit.
    let released: Vec<u64> = {
        let local = inner.slots.lock();
        slots
            .into_iter()
            .filter(|slot| !local.contains_key(slot))
            .collect()
    };
    for slot in released {
        if let Err(err) = inner.remove_slot(user, slot).await {
            tracing::debug!(error = %err, "a renewed slot of a closed connection not taken back");
        }
    }
}
