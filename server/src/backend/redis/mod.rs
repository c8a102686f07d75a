//! The Redis backend: any number of server instances share chats, history, presence and
//! the fan-out through one Redis.
//!
//! - Writes of a chat are Lua scripts over that chat's keys only (one hash tag, one
//!   Cluster slot): `append` checks membership and idempotency, takes the next seq, adds
//!   to the capped stream, records the idempotency entry (trimmed with the stream) and
//!   PUBLISHes, in one atomic step, so every instance sees one `seq` order and a removed
//!   member can store nothing.
//! - Each instance SUBSCRIBEs only to the chats it has local connections in, on one
//!   pub/sub connection owned by a supervisor task that reconnects and resubscribes.
//! - The pub/sub gap: the supervisor remembers, per subscribed chat, the epoch and the last
//!   seq it handed to the hub. A message that skips a seq, and every chat after a
//!   reconnect, is caught up from the stream, so local clients stay complete without
//!   reconnecting. Where the stream cannot fill the gap (trimmed, other epoch, Redis down
//!   again), the chat's local connections are closed with 1012 ([`ChatEvent::Resync`]) and
//!   clients resume with `since`, which answers `recovered: false` if it must.
//! - Removals: the admin API's removal is published ([`ChatEvent::MemberRemoved`]), and
//!   for what pub/sub cannot bring (an event missed while the link was down, a direct
//!   `SREM` by the app) every instance checks the membership of its local (chat, user)
//!   pairs after each pub/sub (re)connect and every `--redis-membership-check-ms`, in one
//!   pipelined round trip, and closes non-members with 4403.
//! - Presence is a sorted set per chat of `{instance}:{user}` scored by lease expiry,
//!   renewed by a heartbeat; a crashed instance's users expire, and the instance whose
//!   heartbeat removes them announces `presence_leave`. After a Redis stall nobody's
//!   lease is removed until every instance had a beat to renew its own, and a lease that
//!   was removed from a user still connected is written back with a `presence_join`.
//! - Connection slots (`--max-connections-per-user`) are a sorted set per user of
//!   `{instance}:{slot}` scored by lease expiry, taken by one script below the limit and
//!   renewed by the same heartbeat, so that the limit holds across instances.
//!
//! The key schema is in [`Keys`] and documented in the repository's `README.md`
//! (*Running it with Redis*, *Key schema*).
//!
//! Layout: this file holds the handle ([`RedisBackend`]), its shared state (`Inner`), the
//! connection and the [`Backend`] impl, which hands each method to its concern:
//! - `options`: the flags. `keys`: the key schema. `scripts`: the Lua scripts and the
//!   `append` script's message template.
//! - `store`: chats, profiles, append, history, replay. `membership`: members and the
//!   periodic membership check. `pubsub`: publish, subscribe, the supervisor and catch-up.
//! - `presence`: leases and the heartbeat. `slots`: connection slots across instances.

mod keys;
mod membership;
mod options;
mod presence;
mod pubsub;
mod scripts;
mod slots;
mod store;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hablar_protocol::events::{HistoryPage, PresenceUser};
use hablar_protocol::{ChatId, Epoch, Seq, UserId};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use tokio::task::JoinHandle;

pub use self::keys::Keys;
use self::membership::membership_checks;
pub use self::options::RedisOptions;
use self::presence::{heartbeat, LocalPresence, PRESENCE_ORDER_STRIPES};
use self::pubsub::{supervise, Cursor};
use self::scripts::{event_halves, Scripts};
use super::rules::new_epoch;
use super::{Appended, Backend, ChatEvent, ConnectionSlot, EventSink, NewMessage, PresenceJoined, Replay};
use crate::error::{Error, Result};
use crate::limits::ConnectionCounter;

/// The state shared by the backend and its background tasks.
struct Inner {
    /// Commands: multiplexed and pipelined, reconnects by itself.
    conn: ConnectionManager,
    /// For new pub/sub connections.
    client: redis::Client,
    keys: Keys,
    scripts: Scripts,
    opts: RedisOptions,
    /// Stream MAXLEN: messages a chat keeps.
    retention: usize,
    /// This process's random id in presence entries.
    instance: String,
    /// The hub.
    sink: Arc<dyn EventSink>,
    /// The chats with local connections, and what the hub got of each.
    subscribed: Mutex<HashMap<ChatId, Cursor>>,
    /// The live pub/sub connection's command half; `None` while Redis is unreachable.
    pubsub: tokio::sync::Mutex<Option<PubSubSink>>,
    /// Local connection counts per (chat, user): Redis holds one lease per instance.
    presence: Mutex<HashMap<(ChatId, UserId), LocalPresence>>,
    /// Orders this instance's presence joins and leaves of one (chat, user), so that a
    /// leave's ZREM never overtakes a later join's ZADD of the same entry (a script may be
    /// sent twice: EVALSHA, then EVAL on NOSCRIPT). Striped: see [`Inner::presence_order`].
    presence_order: Box<[tokio::sync::Mutex<()>]>,
    /// This instance's connection slots by id, with their user: the heartbeat renews
    /// their leases. A slot leaves this map before its entry leaves Redis, so that a
    /// renewal on its way is taken back (see [`slots::renew_slots`]).
    slots: Mutex<HashMap<u64, UserId>>,
    /// The id of the next connection slot.
    next_slot: AtomicU64,
    /// Pre-built halves of a `new_message` [`ChatEvent`] around the message JSON.
    event_prefix: String,
    event_suffix: String,
}

/// The Redis store and broker.
pub struct RedisBackend {
    inner: Arc<Inner>,
    /// The pub/sub supervisor and the presence heartbeat; aborted on drop.
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn backend_error(err: impl std::fmt::Display) -> Error {
    Error::Backend(format!("redis: {err}"))
}

impl RedisBackend {
    /// Connects to `url` and starts the pub/sub supervisor and presence heartbeat.
    /// Fails if Redis cannot be reached now; later outages are survived.
    pub async fn connect(
        url: &str,
        sink: Arc<dyn EventSink>,
        retention: usize,
        opts: RedisOptions,
    ) -> Result<Self> {
        let client = redis::Client::open(url).map_err(backend_error)?;
        let timeout = Duration::from_millis(opts.timeout_ms.max(1));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(opts.reconnect_max_ms.max(1)));
        let conn = tokio::time::timeout(timeout, client.get_connection_manager_with_config(config))
            .await
            .map_err(|_| backend_error("no answer from redis at start"))?
            .map_err(backend_error)?;
        let (event_prefix, event_suffix) = event_halves();
        let inner = Arc::new(Inner {
            conn,
            client,
            keys: Keys::new(opts.key_prefix.clone()),
            scripts: Scripts::new(),
            retention: retention.max(1),
            // Random like an epoch: new for every process, so never a crashed one's.
            instance: new_epoch().to_string(),
            sink,
            subscribed: Mutex::default(),
            pubsub: tokio::sync::Mutex::new(None),
            presence: Mutex::default(),
            presence_order: (0..PRESENCE_ORDER_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            slots: Mutex::default(),
            next_slot: AtomicU64::new(0),
            event_prefix,
            event_suffix,
            opts,
        });
        if inner.opts.idempotency_ttl_secs.is_some() {
            tracing::warn!(
                "--redis-idempotency-ttl-secs is deprecated and ignored: a client_id is \
                 remembered while its message is retained (--history-retention)"
            );
        }
        let (up_tx, up_rx) = tokio::sync::oneshot::channel();
        let tasks = vec![
            tokio::spawn(supervise(inner.clone(), Some(up_tx))),
            tokio::spawn(heartbeat(inner.clone())),
            tokio::spawn(membership_checks(inner.clone())),
        ];
        // Start with pub/sub up, so the first connections need not fail.
        let _ = tokio::time::timeout(timeout, up_rx).await;
        Ok(Self { inner, tasks })
    }
}

impl Inner {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.opts.timeout_ms.max(1))
    }

    /// Runs one Redis operation with the configured time limit.
    async fn run<T>(&self, op: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout(), op).await {
            Ok(result) => result.map_err(backend_error),
            Err(_) => Err(backend_error("no answer in time")),
        }
    }
}

/// Each method is done by the `Inner` method of the same name, in the module of its
/// concern (`store`, `membership`, `pubsub`, `presence`, `slots`).
#[async_trait]
impl Backend for RedisBackend {
    async fn create_chat(&self, chat: &ChatId) -> Result<bool> {
        self.inner.create_chat(chat).await
    }

    async fn chat_exists(&self, chat: &ChatId) -> Result<bool> {
        self.inner.chat_exists(chat).await
    }

    async fn add_member(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        self.inner.add_member(chat, user).await
    }

    async fn remove_member(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        self.inner.remove_member(chat, user).await
    }

    async fn is_member(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        self.inner.is_member(chat, user).await
    }

    async fn set_display_name(&self, user: &UserId, display_name: &str) -> Result<()> {
        self.inner.set_display_name(user, display_name).await
    }

    async fn display_name(&self, user: &UserId) -> Result<Option<String>> {
        self.inner.display_name(user).await
    }

    async fn append(&self, chat: &ChatId, message: NewMessage) -> Result<Appended> {
        self.inner.append(chat, message).await
    }

    async fn append_batch(&self, chat: &ChatId, messages: Vec<NewMessage>) -> Vec<Result<Appended>> {
        self.inner.append_batch(chat, messages).await
    }

    async fn history(&self, chat: &ChatId, before: Option<Seq>, limit: usize) -> Result<HistoryPage> {
        self.inner.history(chat, before, limit).await
    }

    async fn replay(
        &self,
        chat: &ChatId,
        since: Option<Seq>,
        epoch: Option<&Epoch>,
        max: usize,
    ) -> Result<Replay> {
        self.inner.replay(chat, since, epoch, max).await
    }

    async fn publish(&self, chat: &ChatId, event: ChatEvent) -> Result<()> {
        self.inner.publish(chat, event).await
    }

    async fn subscribe(&self, chat: &ChatId) -> Result<()> {
        self.inner.subscribe(chat).await
    }

    async fn unsubscribe(&self, chat: &ChatId) -> Result<()> {
        self.inner.unsubscribe(chat).await
    }

    async fn presence_join(&self, chat: &ChatId, user: &PresenceUser) -> Result<PresenceJoined> {
        self.inner.presence_join(chat, user).await
    }

    async fn presence_leave(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        self.inner.presence_leave(chat, user).await
    }

    async fn acquire_connection(
        &self,
        // The count is Redis's, across instances: this instance's own is not used.
        _local: &Arc<ConnectionCounter>,
        user: &UserId,
        max: usize,
    ) -> Result<Option<ConnectionSlot>> {
        self.inner.acquire_connection(user, max).await
    }
}
