//! The pub/sub side: publishing, (un)subscribing, and the supervisor that owns the
//! pub/sub connection, hands each chat's messages to the hub gapless and in order, and
//! catches a gap up from the stream.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hablar_protocol::events::ServerEvent;
use hablar_protocol::{ChatId, Seq};
use redis::AsyncCommands as _;

use super::membership::check_members;
use super::{backend_error, Inner};
use crate::backend::rules::{epoch_of, gap_servable};
use crate::backend::ChatEvent;
use crate::error::{Error, Result};

/// What the supervisor has handed to the hub for one subscribed chat.
#[derive(Debug, Clone, Default)]
pub(super) struct Cursor {
    /// The epoch of the messages delivered; `None` until known.
    pub(super) epoch: Option<String>,
    /// The newest seq delivered (or known to be covered by every local replay).
    pub(super) last: u64,
    /// Whether `epoch`/`last` are known yet (set at subscribe or by the first message).
    pub(super) known: bool,
}

impl Inner {
    pub(super) async fn publish_event(&self, chat: &ChatId, event: &ChatEvent) -> Result<()> {
        let payload = serde_json::to_string(event).map_err(backend_error)?;
        let mut conn = self.conn.clone();
        let channel = self.keys.channel(chat);
        self.run(conn.publish::<_, _, ()>(channel, payload)).await
    }

    pub(super) async fn publish(&self, chat: &ChatId, event: ChatEvent) -> Result<()> {
        self.publish_event(chat, &event).await
    }

    pub(super) async fn subscribe(&self, chat: &ChatId) -> Result<()> {
        self.subscribed.lock().entry(chat.clone()).or_default();
        let confirmed = {
            let mut slot = self.pubsub.lock().await;
            match slot.as_mut() {
                Some(sink) => self.run(sink.subscribe(self.keys.channel(chat))).await,
                None => Err(backend_error("pub/sub connection is down")),
            }
        };
        // The hub's cursor starts at the chat's newest seq: every local connection reads
        // its replay after this returns, so anything older reaches it that way.
        let started = match confirmed {
            Ok(()) => self.snapshot(chat, None, 1).await,
            Err(err) => Err(err),
        };
        match started {
            Ok(snap) => {
                if let Some(cursor) = self.subscribed.lock().get_mut(chat) {
                    if !cursor.known {
                        *cursor = Cursor {
                            epoch: Some(snap.epoch),
                            last: snap.last_seq,
                            known: true,
                        };
                    }
                }
                Ok(())
            }
            Err(err) => {
                self.subscribed.lock().remove(chat);
                Err(err)
            }
        }
    }

    pub(super) async fn unsubscribe(&self, chat: &ChatId) -> Result<()> {
        self.subscribed.lock().remove(chat);
        let mut slot = self.pubsub.lock().await;
        match slot.as_mut() {
            Some(sink) => self.run(sink.unsubscribe(self.keys.channel(chat))).await,
            // A new pub/sub connection subscribes only to chats still in `subscribed`.
            None => Ok(()),
        }
    }
}

/// Owns the pub/sub connection: connects, (re)subscribes the chats with local
/// connections, catches their gap up from the stream, then hands messages to the hub in
/// order until the connection fails, and starts over.
pub(super) async fn supervise(inner: Arc<Inner>, mut up: Option<tokio::sync::oneshot::Sender<()>>) {
    let mut backoff = Duration::from_millis(20);
    let max_backoff = Duration::from_millis(inner.opts.reconnect_max_ms.max(20));
    loop {
        let connected = async {
            let pubsub = inner.run(inner.client.get_async_pubsub()).await?;
            let (mut sink, stream) = pubsub.split();
            // Hold the slot while resubscribing, so a concurrent subscribe waits for us.
            let mut slot = inner.pubsub.lock().await;
            let chats: Vec<ChatId> = inner.subscribed.lock().keys().cloned().collect();
            if !chats.is_empty() {
                let channels: Vec<String> = chats.iter().map(|c| inner.keys.channel(c)).collect();
                inner.run(sink.subscribe(channels)).await?;
            }
            *slot = Some(sink.clone());
            Ok::<_, Error>((sink, stream, chats))
        }
        .await;
        let (mut sink, mut stream, chats) = match connected {
            Ok(parts) => parts,
            Err(err) => {
                tracing::warn!(error = %err, "redis pub/sub unavailable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
        };
        backoff = Duration::from_millis(20);
        if let Some(up) = up.take() {
            let _ = up.send(());
        }
        tracing::info!(chats = chats.len(), "redis pub/sub connected");
        // A removal published while the link was down never comes: close removed members
        // before the catch-up hands the chats' missed messages to their sockets.
        check_members(&inner).await;
        for chat in &chats {
            catch_up(&inner, chat).await;
        }
        let mut health = tokio::time::interval(Duration::from_millis(inner.opts.health_interval_ms.max(10)));
        health.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    on_message(&inner, msg.get_channel_name(), msg.get_payload_bytes()).await;
                }
                _ = health.tick() => {
                    if inner.run(sink.ping::<redis::Value>()).await.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::warn!("redis pub/sub connection lost; reconnecting");
        *inner.pubsub.lock().await = None;
    }
}

/// Hands one pub/sub message to the hub, keeping each chat's messages gapless and in order.
pub(super) async fn on_message(inner: &Inner, channel: &str, payload: &[u8]) {
    let Some(chat) = inner.keys.chat_of_channel(channel) else {
        return;
    };
    let event: ChatEvent = match serde_json::from_slice(payload) {
        Ok(event) => event,
        Err(err) => {
            tracing::warn!(%chat, error = %err, "unreadable event on the chat channel");
            return;
        }
    };
    let ChatEvent::Broadcast {
        event: ServerEvent::NewMessage { message },
        ..
    } = &event
    else {
        if inner.subscribed.lock().contains_key(&chat) {
            inner.sink.deliver(&chat, &event);
        }
        return;
    };
    let (Some(Seq(seq)), Some(epoch)) = (message.seq, epoch_of(&message.id)) else {
        return;
    };
    enum Next {
        Deliver,
        Skip,
        Gap,
        NewEpoch,
    }
    let next = {
        let mut subscribed = inner.subscribed.lock();
        let Some(cursor) = subscribed.get_mut(&chat) else {
            return;
        };
        if !cursor.known {
            cursor.epoch = Some(epoch.to_owned());
            cursor.last = seq;
            cursor.known = true;
            Next::Deliver
        } else if cursor.epoch.as_deref().is_some_and(|e| e != epoch) {
            cursor.epoch = Some(epoch.to_owned());
            cursor.last = seq;
            Next::NewEpoch
        } else if seq <= cursor.last {
            Next::Skip
        } else if seq == cursor.last + 1 {
            cursor.epoch = Some(epoch.to_owned());
            cursor.last = seq;
            Next::Deliver
        } else {
            Next::Gap
        }
    };
    match next {
        Next::Deliver => inner.sink.deliver(&chat, &event),
        Next::Skip => {}
        Next::NewEpoch => {
            tracing::warn!(%chat, "the chat's store was reset; local clients resume");
            inner.sink.deliver(&chat, &ChatEvent::Resync);
        }
        Next::Gap => {
            catch_up(inner, &chat).await;
            // The catch-up read happened after `seq` was published, so it normally
            // delivered it; if it could not, the chat was resynced and starts over here.
            let deliver = {
                let mut subscribed = inner.subscribed.lock();
                match subscribed.get_mut(&chat) {
                    Some(cursor) if !cursor.known || cursor.last + 1 == seq => {
                        *cursor = Cursor {
                            epoch: Some(epoch.to_owned()),
                            last: seq,
                            known: true,
                        };
                        true
                    }
                    _ => false,
                }
            };
            if deliver {
                inner.sink.deliver(&chat, &event);
            }
        }
    }
}

/// Delivers what the hub missed of `chat` since its cursor, from the stream. If that
/// cannot be done, closes the chat's local connections with 1012 so their clients resume.
pub(super) async fn catch_up(inner: &Inner, chat: &ChatId) {
    let cursor = inner.subscribed.lock().get(chat).cloned();
    let Some(cursor) = cursor else {
        return;
    };
    let resync = |why: &str| {
        tracing::warn!(%chat, why, "local clients of the chat resume from the store");
        if let Some(c) = inner.subscribed.lock().get_mut(chat) {
            // Every local client reconnects and replays; the cursor restarts with the
            // next message.
            c.known = false;
        }
        inner.sink.deliver(chat, &ChatEvent::Resync);
    };
    if !cursor.known {
        resync("no known position");
        return;
    }
    let max = inner.opts.max_catch_up.max(1);
    // Right after an outage the command connection may still be reconnecting: give it
    // a few short tries before making every local client reconnect.
    let give_up = tokio::time::Instant::now() + (inner.timeout() * 4).max(Duration::from_secs(1));
    let mut pause = Duration::from_millis(25);
    let snap = loop {
        match inner.snapshot(chat, Some(cursor.last + 1), max + 1).await {
            Ok(snap) => break snap,
            Err(Error::NotFound) => {
                resync("the chat is gone from the store");
                return;
            }
            Err(err) if tokio::time::Instant::now() + pause < give_up => {
                tracing::debug!(%chat, error = %err, "catch-up read failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            Err(err) => {
                tracing::warn!(%chat, error = %err, "catch-up read failed");
                resync("catch-up read failed");
                return;
            }
        }
    };
    if cursor.epoch.as_deref().is_some_and(|e| e != snap.epoch) {
        if let Some(c) = inner.subscribed.lock().get_mut(chat) {
            c.epoch = Some(snap.epoch.clone());
            c.last = snap.last_seq;
        }
        resync("the chat's store was reset");
        return;
    }
    if snap.last_seq <= cursor.last {
        return;
    }
    if !gap_servable(Seq(cursor.last), Seq(snap.last_seq), snap.oldest_retained(), max) {
        resync("the gap is no longer in the stream");
        return;
    }
    let mut subscribed = inner.subscribed.lock();
    let Some(live) = subscribed.get_mut(chat) else {
        return;
    };
    for message in snap.messages {
        let Some(Seq(seq)) = message.seq else {
            continue;
        };
        if seq != live.last + 1 {
            continue;
        }
        live.last = seq;
        let event = ChatEvent::Broadcast {
            event: ServerEvent::NewMessage { message },
            skip_user: None,
        };
        inner.sink.deliver(chat, &event);
    }
}
