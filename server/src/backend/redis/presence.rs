//! Presence across instances: this instance's leases per (chat, user), their ordering,
//! and the heartbeat that renews them (and the connection slots), announces expired
//! users and writes back leases lost after a stall.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use hablar_protocol::events::{PresenceUser, ServerEvent};
use hablar_protocol::{ChatId, UserId};

use super::slots::renew_slots;
use super::Inner;
use crate::backend::{ChatEvent, PresenceJoined};
use crate::error::Result;

/// This instance's connections of one user in one chat.
#[derive(Debug)]
pub(super) struct LocalPresence {
    pub(super) user: PresenceUser,
    pub(super) count: usize,
}

/// Stripes of [`Inner::presence_order`]: enough that connections of different users
/// rarely wait for each other's round trip, few enough to allocate up front.
pub(super) const PRESENCE_ORDER_STRIPES: usize = 256;

impl Inner {
    /// The lock that orders this instance's presence joins and leaves of `user` in `chat`.
    ///
    /// Only the same (chat, user) needs ordering: its local count and its one lease
    /// `{instance}:{user}` go together, while the scripts of different users touch
    /// different entries and each is atomic in Redis. A single lock for all of them made
    /// every connect and close of the instance wait its turn for one Redis round trip.
    /// A collision only makes two unrelated users wait for each other, as before.
    pub(super) fn presence_order(&self, chat: &ChatId, user: &UserId) -> &tokio::sync::Mutex<()> {
        let mut hasher = std::hash::DefaultHasher::new();
        (chat, user).hash(&mut hasher);
        // The remainder is below the stripe count, so it fits a usize.
        let stripe = (hasher.finish() % self.presence_order.len() as u64) as usize;
        &self.presence_order[stripe]
    }

    /// Removes this instance's lease of `user` in `chat` (the `presence_leave` script);
    /// `true` when no live lease of the user is left on any instance.
    pub(super) async fn remove_lease(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        let mut invocation = self.scripts.presence_leave.prepare_invoke();
        invocation
            .key(self.keys.presence(chat))
            .key(self.keys.presence_names(chat))
            .arg(format!("{}:{}", self.instance, user.as_str()))
            .arg(user.as_str());
        let mut conn = self.conn.clone();
        let last: i64 = self.run(invocation.invoke_async(&mut conn)).await?;
        Ok(last == 1)
    }

    pub(super) async fn presence_join(&self, chat: &ChatId, user: &PresenceUser) -> Result<PresenceJoined> {
        let _order = self.presence_order(chat, &user.user_id).lock().await;
        let key = (chat.clone(), user.user_id.clone());
        let local_first = {
            let mut local = self.presence.lock();
            let entry = local.entry(key.clone()).or_insert_with(|| LocalPresence {
                user: user.clone(),
                count: 0,
            });
            entry.count += 1;
            entry.user = user.clone();
            entry.count == 1
        };
        let mut invocation = self.scripts.presence_join.prepare_invoke();
        invocation
            .key(self.keys.presence(chat))
            .key(self.keys.presence_names(chat))
            .arg(format!("{}:{}", self.instance, user.user_id.as_str()))
            .arg(user.user_id.as_str())
            .arg(&user.username)
            .arg(self.opts.presence_ttl_ms.max(1));
        let mut conn = self.conn.clone();
        let reply: Vec<String> = match self.run(invocation.invoke_async(&mut conn)).await {
            Ok(reply) => reply,
            Err(err) => {
                let mut local = self.presence.lock();
                if let Some(entry) = local.get_mut(&key) {
                    entry.count -= 1;
                    if entry.count == 0 {
                        local.remove(&key);
                    }
                }
                return Err(err);
            }
        };
        let mut reply = reply.into_iter();
        let remote_first = reply.next().as_deref() == Some("1");
        let mut online = BTreeMap::new();
        while let (Some(id), Some(username)) = (reply.next(), reply.next()) {
            if let Ok(user_id) = UserId::new(id) {
                online.insert(user_id.clone(), PresenceUser { user_id, username });
            }
        }
        Ok(PresenceJoined {
            first: local_first && remote_first,
            online: online.into_values().collect(),
        })
    }

    pub(super) async fn presence_leave(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        let _order = self.presence_order(chat, user).lock().await;
        let key = (chat.clone(), user.clone());
        {
            let mut local = self.presence.lock();
            let Some(entry) = local.get_mut(&key) else {
                return Ok(false);
            };
            entry.count = entry.count.saturating_sub(1);
            if entry.count > 0 {
                return Ok(false);
            }
            local.remove(&key);
        }
        // On failure the lease runs out and another instance's heartbeat announces it.
        self.remove_lease(chat, user).await
    }
}

/// Renews this instance's presence leases and connection slots, and announces users
/// whose leases expired.
pub(super) async fn heartbeat(inner: Arc<Inner>) {
    let ttl = inner.opts.presence_ttl_ms.max(3);
    let mut tick = tokio::time::interval(Duration::from_millis(ttl / 3));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        renew_slots(&inner).await;
        let mut by_chat: HashMap<ChatId, Vec<PresenceUser>> = HashMap::new();
        for ((chat, _), local) in inner.presence.lock().iter() {
            by_chat.entry(chat.clone()).or_default().push(local.user.clone());
        }
        for (chat, users) in by_chat {
            beat(&inner, &chat, users).await;
        }
    }
}

/// One chat's heartbeat: renews the leases of `users` (this instance's, as they were when
/// the beat started), announces the users of any instance whose last lease expired, then
/// announces again the users here whose lease had to be written back after another
/// instance removed it, and takes back the lease of anyone who left while the beat was on
/// its way.
///
/// The beat re-adds a lease that is missing (Redis may have lost it), so a user whose
/// `presence_leave` ran between the snapshot and the script came back as a ghost: shown
/// online for a whole lease, then announced as leaving a second time when it expired.
pub(super) async fn beat(inner: &Inner, chat: &ChatId, users: Vec<PresenceUser>) {
    let ttl = inner.opts.presence_ttl_ms.max(3);
    let mut invocation = inner.scripts.presence_beat.prepare_invoke();
    invocation
        .key(inner.keys.presence(chat))
        .key(inner.keys.presence_names(chat))
        .key(inner.keys.presence_beat(chat))
        .arg(ttl);
    for user in &users {
        invocation
            .arg(format!("{}:{}", inner.instance, user.user_id.as_str()))
            .arg(user.user_id.as_str())
            .arg(&user.username);
    }
    let mut conn = inner.conn.clone();
    let (gone, back): (Vec<String>, Vec<String>) = match inner.run(invocation.invoke_async(&mut conn)).await {
        Ok(reply) => reply,
        Err(err) => {
            tracing::debug!(%chat, error = %err, "presence heartbeat failed");
            return;
        }
    };
    for pair in gone.chunks_exact(2) {
        let Ok(user_id) = UserId::new(pair[0].clone()) else {
            continue;
        };
        let event = ChatEvent::Broadcast {
            event: ServerEvent::PresenceLeave(PresenceUser {
                user_id,
                username: pair[1].clone(),
            }),
            skip_user: None,
        };
        if let Err(err) = inner.publish_event(chat, &event).await {
            tracing::debug!(%chat, error = %err, "presence leave of an expired lease not sent");
        }
    }
    let back: HashSet<&str> = back.chunks_exact(2).map(|pair| pair[0].as_str()).collect();
    for user in users {
        let written_back = back.contains(user.user_id.as_str());
        let key = (chat.clone(), user.user_id);
        if !written_back && inner.presence.lock().contains_key(&key) {
            continue;
        }
        // Ordered with this user's joins and leaves, and checked again under the lock: a
        // user who came back meanwhile keeps the lease the join wrote, and a user who
        // leaves now is announced leaving after the join below, not before it.
        let _order = inner.presence_order(chat, &key.1).lock().await;
        let here = inner.presence.lock().get(&key).map(|local| local.user.clone());
        match here {
            Some(user) => {
                // Another instance removed their lease (after a stall of this instance's
                // link to Redis) and announced the leave, to their own tabs too; they are
                // still connected here, so everyone is told they are back.
                let event = ChatEvent::Broadcast {
                    event: ServerEvent::PresenceJoin(user),
                    skip_user: None,
                };
                if let Err(err) = inner.publish_event(chat, &event).await {
                    tracing::debug!(%chat, error = %err, "presence join of a written-back lease not sent");
                }
            }
            // Their leave was announced already; this only takes the renewed lease back out.
            None => {
                if let Err(err) = inner.remove_lease(chat, &key.1).await {
                    tracing::debug!(%chat, error = %err, "a lease renewed after its leave was not taken back");
                }
            }
        }
    }
}
