//! The store side of the backend: chats, profiles, messages (append, history, replay).

use std::collections::HashMap;

use hablar_protocol::events::{HistoryPage, Message};
use hablar_protocol::{ChatId, Epoch, Seq, UserId};
use redis::AsyncCommands as _;
use time::OffsetDateTime;

use super::keys::Keys;
use super::scripts::{draft, APPEND_LUA, ID_NEEDLE, SEQ_NEEDLE};
use super::{backend_error, Inner};
use crate::backend::rules::{new_epoch, oldest_retained, rfc3339, serve_replay};
use crate::backend::{Appended, NewMessage, Replay};
use crate::error::{Error, Result};

/// A stream entry as `XRANGE` and `XREVRANGE` return it: its id and its fields.
type StreamEntry = (String, HashMap<String, String>);

pub(super) fn parse_message(json: &str) -> Result<Message> {
    serde_json::from_str(json).map_err(|err| backend_error(format!("unreadable message in the store: {err}")))
}

/// A snapshot read by the `replay` script.
pub(super) struct Snapshot {
    pub(super) epoch: String,
    pub(super) last_seq: u64,
    /// The oldest retained seq; `None` when the stream is empty or not asked for.
    pub(super) oldest: Option<u64>,
    pub(super) messages: Vec<Message>,
}

impl Snapshot {
    /// The oldest retained seq, or the next one when the stream is empty (see
    /// [`oldest_retained`]).
    pub(super) fn oldest_retained(&self) -> Seq {
        oldest_retained(self.oldest.map(Seq), Seq(self.last_seq))
    }
}

impl Inner {
    /// The chat's epoch and newest seq and, from `from` on, up to `count` messages.
    pub(super) async fn snapshot(&self, chat: &ChatId, from: Option<u64>, count: usize) -> Result<Snapshot> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.replay.prepare_invoke();
        invocation
            .key(k.meta(chat))
            .key(k.epoch(chat))
            .key(k.seq(chat))
            .key(k.messages(chat))
            .arg(new_epoch().as_str())
            .arg(from.map(|f| f.to_string()).unwrap_or_default())
            .arg(count.max(1));
        let reply: Vec<String> = self.run(invocation.invoke_async(&mut conn)).await?;
        let mut reply = reply.into_iter();
        match reply.next().as_deref() {
            Some("ok") => {}
            Some("missing") => return Err(Error::NotFound),
            _ => return Err(backend_error("unexpected reply from the replay script")),
        }
        let epoch = reply.next().unwrap_or_default();
        let last_seq = reply.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let oldest = reply.next().and_then(|s| s.parse().ok());
        let messages = reply.map(|m| parse_message(&m)).collect::<Result<_>>()?;
        Ok(Snapshot {
            epoch,
            last_seq,
            oldest,
            messages,
        })
    }

    pub(super) async fn create_chat(&self, chat: &ChatId) -> Result<bool> {
        let mut conn = self.conn.clone();
        let created_at = rfc3339(OffsetDateTime::now_utc());
        let (created,): (bool,) = self
            .run(
                redis::pipe()
                    .atomic()
                    .hset_nx(self.keys.meta(chat), "created_at", created_at)
                    .set_nx(self.keys.epoch(chat), new_epoch().as_str())
                    .ignore()
                    .query_async(&mut conn),
            )
            .await?;
        Ok(created)
    }

    pub(super) async fn chat_exists(&self, chat: &ChatId) -> Result<bool> {
        let mut conn = self.conn.clone();
        self.run(conn.exists(self.keys.meta(chat))).await
    }

    pub(super) async fn set_display_name(&self, user: &UserId, display_name: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        self.run(conn.hset::<_, _, _, ()>(self.keys.user(user), "display_name", display_name))
            .await
    }

    pub(super) async fn display_name(&self, user: &UserId) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        self.run(conn.hget(self.keys.user(user), "display_name")).await
    }

    pub(super) async fn append(&self, chat: &ChatId, message: NewMessage) -> Result<Appended> {
        self.append_batch(chat, vec![message])
            .await
            .pop()
            .unwrap_or_else(|| Err(backend_error("no outcome for the message")))
    }

    pub(super) async fn append_batch(
        &self,
        chat: &ChatId,
        messages: Vec<NewMessage>,
    ) -> Vec<Result<Appended>> {
        let k = &self.keys;
        let created_at = rfc3339(OffsetDateTime::now_utc());
        // Per message its arguments; the keys are the chat's, the same for every message.
        let mut calls: Vec<Vec<String>> = Vec::with_capacity(messages.len());
        let keys = vec![
            k.meta(chat),
            k.epoch(chat),
            k.seq(chat),
            k.messages(chat),
            k.members(chat),
            k.idempotency(chat),
        ];
        for message in messages {
            let idempotency = message
                .parts
                .client_id
                .as_ref()
                .map(|client_id| Keys::idempotency_member(&message.sender.user_id, client_id))
                .unwrap_or_default();
            let sender = message.sender.user_id.as_str().to_owned();
            let draft = draft(chat, message, created_at.clone());
            let template = serde_json::to_string(&draft).expect("a message serialises");
            let args = vec![
                new_epoch().to_string(),
                template,
                self.retention.to_string(),
                idempotency,
                k.channel(chat),
                self.event_prefix.clone(),
                self.event_suffix.clone(),
                ID_NEEDLE.to_owned(),
                SEQ_NEEDLE.to_owned(),
                sender,
            ];
            calls.push(args);
        }
        // One transaction: the batch runs in order and whole, nothing of another client
        // between. That also keeps the order when Redis has lost its script cache (a
        // restart): every EVALSHA of the batch fails alike, and the batch is sent again
        // whole with the script's text (EVAL), which cannot fail that way. (redis-rs'
        // own load-and-retry per call could be overtaken by a later call that found the
        // script loaded by another client.) Every key is the chat's (one hash tag), so
        // this holds on Redis Cluster too.
        let transaction = |by_text: bool| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for args in &calls {
                let cmd = if by_text {
                    pipe.cmd("EVAL").arg(APPEND_LUA)
                } else {
                    pipe.cmd("EVALSHA").arg(self.scripts.append.get_hash())
                };
                cmd.arg(keys.len()).arg(&keys).arg(args);
            }
            pipe
        };
        let mut conn = self.conn.clone();
        let replies: Result<Vec<Vec<String>>> = self
            .run(async {
                match transaction(false).query_async(&mut conn).await {
                    Err(err) if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        transaction(true).query_async(&mut conn).await
                    }
                    replies => replies,
                }
            })
            .await;
        let replies = match replies {
            Ok(replies) if replies.len() == calls.len() => replies,
            Ok(_) => {
                return calls
                    .iter()
                    .map(|_| Err(backend_error("unexpected reply from the append script")))
                    .collect()
            }
            Err(err) => {
                let text = err.to_string();
                return calls.iter().map(|_| Err(backend_error(&text))).collect();
            }
        };
        replies
            .into_iter()
            .map(|reply| match reply.as_slice() {
                [outcome, json] if outcome == "stored" || outcome == "duplicate" => Ok(Appended {
                    message: parse_message(json)?,
                    duplicate: outcome == "duplicate",
                }),
                [missing] if missing == "missing" => Err(Error::NotFound),
                [forbidden] if forbidden == "forbidden" => Err(Error::NotMember),
                _ => Err(backend_error("unexpected reply from the append script")),
            })
            .collect()
    }

    pub(super) async fn history(
        &self,
        chat: &ChatId,
        before: Option<Seq>,
        limit: usize,
    ) -> Result<HistoryPage> {
        let k = &self.keys;
        let end = match before {
            None => "+".to_owned(),
            Some(Seq(0 | 1)) => {
                return if self.chat_exists(chat).await? {
                    Ok(HistoryPage {
                        messages: Vec::new(),
                        has_more: false,
                    })
                } else {
                    Err(Error::NotFound)
                };
            }
            Some(Seq(before)) => (before - 1).to_string(),
        };
        let mut conn = self.conn.clone();
        let (exists, entries): (bool, Vec<StreamEntry>) = self
            .run(
                redis::pipe()
                    .atomic()
                    .exists(k.meta(chat))
                    .cmd("XREVRANGE")
                    .arg(k.messages(chat))
                    .arg(end)
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit.saturating_add(1))
                    .query_async(&mut conn),
            )
            .await?;
        if !exists {
            return Err(Error::NotFound);
        }
        let has_more = entries.len() > limit;
        let mut messages = entries
            .into_iter()
            .take(limit)
            .filter_map(|(_, fields)| fields.get("m").map(|m| parse_message(m)))
            .collect::<Result<Vec<_>>>()?;
        messages.reverse();
        Ok(HistoryPage { messages, has_more })
    }

    pub(super) async fn replay(
        &self,
        chat: &ChatId,
        since: Option<Seq>,
        epoch: Option<&Epoch>,
        max: usize,
    ) -> Result<Replay> {
        let from = since.map(|s| s.0.saturating_add(1));
        let snap = self.snapshot(chat, from, max.saturating_add(1)).await?;
        let current = Epoch::new(snap.epoch.clone()).map_err(backend_error)?;
        let oldest = snap.oldest_retained();
        Ok(serve_replay(
            current,
            Seq(snap.last_seq),
            oldest,
            since,
            epoch,
            max,
            snap.messages,
        ))
    }
}
