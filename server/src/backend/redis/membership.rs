//! Membership: adding and removing members, and the periodic check that closes the
//! sockets of users who are no longer members, however they were removed.

use std::sync::Arc;
use std::time::Duration;

use hablar_protocol::{ChatId, UserId};
use redis::AsyncCommands as _;

use super::{backend_error, Inner};
use crate::backend::ChatEvent;
use crate::error::Result;

impl Inner {
    pub(super) async fn add_member(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        if !self.chat_exists(chat).await? {
            return Ok(false);
        }
        let mut conn = self.conn.clone();
        self.run(conn.sadd::<_, _, ()>(self.keys.members(chat), user.as_str()))
            .await?;
        Ok(true)
    }

    pub(super) async fn remove_member(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        let event = ChatEvent::MemberRemoved {
            user_id: user.clone(),
        };
        let payload = serde_json::to_string(&event).map_err(backend_error)?;
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.remove_member.prepare_invoke();
        invocation
            .key(self.keys.members(chat))
            .arg(user.as_str())
            .arg(self.keys.channel(chat))
            .arg(payload);
        let removed: i64 = self.run(invocation.invoke_async(&mut conn)).await?;
        Ok(removed == 1)
    }

    pub(super) async fn is_member(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        let mut conn = self.conn.clone();
        self.run(conn.sismember(self.keys.members(chat), user.as_str()))
            .await
    }
}

/// Checks the membership of this instance's sockets every `--redis-membership-check-ms`.
pub(super) async fn membership_checks(inner: Arc<Inner>) {
    let every = Duration::from_millis(inner.opts.membership_check_ms.max(10));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        check_members(&inner).await;
    }
}

/// Closes, with 4403, the local sockets of users who are no longer members of their chat,
/// however they were removed: one pipelined round trip, `SMISMEMBER` per chat.
///
/// A chat whose `meta` key is missing is skipped: that is Redis having lost its data (or
/// the chat being deleted), not a removal, and a 4403 would stop the SDK for good, while
/// the app re-provisions the chat (see the README's *Faults*).
pub(super) async fn check_members(inner: &Inner) {
    let local = inner.sink.local_members();
    if local.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    for (chat, users) in &local {
        pipe.exists(inner.keys.meta(chat));
        pipe.cmd("SMISMEMBER")
            .arg(inner.keys.members(chat))
            .arg(users.iter().map(UserId::as_str).collect::<Vec<_>>());
    }
    let mut conn = inner.conn.clone();
    let replies: Vec<redis::Value> = match inner.run(pipe.query_async(&mut conn)).await {
        Ok(replies) => replies,
        Err(err) => {
            // The next check tries again; meanwhile the append refuses non-members.
            tracing::debug!(error = %err, "membership check failed");
            return;
        }
    };
    let mut replies = replies.into_iter();
    for (chat, users) in &local {
        let (Some(exists), Some(flags)) = (replies.next(), replies.next()) else {
            return;
        };
        let exists: bool = redis::from_redis_value(exists).unwrap_or(false);
        let Ok(flags) = redis::from_redis_value::<Vec<bool>>(flags) else {
            tracing::warn!(%chat, "unexpected reply to SMISMEMBER (Redis 6.2 or newer is needed)");
            continue;
        };
        if !exists {
            continue;
        }
        for (user, member) in users.iter().zip(flags) {
            if !member {
                tracing::info!(%chat, %user, "not a member any more; closing their sockets");
                let event = ChatEvent::MemberRemoved {
                    user_id: user.clone(),
                };
                inner.sink.deliver(chat, &event);
            }
        }
    }
}
