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
//! The key schema is in [`Keys`] and documented in `notes/README-redis.md`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use hablar_protocol::events::{HistoryPage, Message, PresenceUser, Sender, ServerEvent};
use hablar_protocol::{ChatId, ClientId, Epoch, MessageId, Seq, UserId};
use parking_lot::Mutex;
use rand::distr::{Alphanumeric, SampleString as _};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::{AsyncCommands as _, Script};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use super::{Appended, Backend, ChatEvent, ConnectionSlot, EventSink, NewMessage, PresenceJoined, Replay};
use crate::error::{Error, Result};
use crate::limits::ConnectionCounter;

/// The Redis backend's settings (flags, each also from the environment).
#[derive(Debug, Clone, clap::Args)]
pub struct RedisOptions {
    /// Prefix of every Redis key and channel.
    #[arg(
        long = "redis-key-prefix",
        env = "HABLAR_REDIS_KEY_PREFIX",
        default_value = "hablar"
    )]
    pub key_prefix: String,
    /// How long one Redis command may take before the request fails as `unavailable`, ms.
    #[arg(
        long = "redis-timeout-ms",
        env = "HABLAR_REDIS_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    pub timeout_ms: u64,
    /// Longest wait between two reconnection attempts, ms.
    #[arg(
        long = "redis-reconnect-max-ms",
        env = "HABLAR_REDIS_RECONNECT_MAX_MS",
        default_value_t = 2_000
    )]
    pub reconnect_max_ms: u64,
    /// How often the pub/sub connection is pinged to notice a silent outage, ms.
    #[arg(
        long = "redis-health-interval-ms",
        env = "HABLAR_REDIS_HEALTH_INTERVAL_MS",
        default_value_t = 5_000
    )]
    pub health_interval_ms: u64,
    /// Presence lease: a crashed instance's users go offline after this long, ms. The
    /// heartbeat renews leases every third of it.
    #[arg(
        long = "redis-presence-ttl-ms",
        env = "HABLAR_REDIS_PRESENCE_TTL_MS",
        default_value_t = 30_000
    )]
    pub presence_ttl_ms: u64,
    /// Deprecated and ignored: a `client_id` makes a resend a no-op while its message is
    /// in the retained history (`--history-retention`), as on the embedded backend.
    /// Still accepted so that a deployment that sets it keeps starting; it logs a warning.
    #[arg(
        long = "redis-idempotency-ttl-secs",
        env = "HABLAR_REDIS_IDEMPOTENCY_TTL_SECS"
    )]
    pub idempotency_ttl_secs: Option<u64>,
    /// How often this instance checks, in one round trip, that the users of its sockets
    /// are still members of their chats, and closes those who are not with 4403, ms. It
    /// bounds how long a removal the pub/sub event did not bring (a direct `SREM`, or an
    /// event missed while the pub/sub link was down) leaves a socket open.
    #[arg(
        long = "redis-membership-check-ms",
        env = "HABLAR_REDIS_MEMBERSHIP_CHECK_MS",
        default_value_t = 2_000
    )]
    pub membership_check_ms: u64,
    /// Most messages the pub/sub catch-up reads from the stream for one chat; a larger
    /// gap closes the chat's local connections with 1012 instead.
    #[arg(
        long = "redis-max-catch-up",
        env = "HABLAR_REDIS_MAX_CATCH_UP",
        default_value_t = 1_000
    )]
    pub max_catch_up: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            key_prefix: "hablar".into(),
            timeout_ms: 2_000,
            reconnect_max_ms: 2_000,
            health_interval_ms: 5_000,
            presence_ttl_ms: 30_000,
            idempotency_ttl_secs: None,
            membership_check_ms: 2_000,
            max_catch_up: 1_000,
        }
    }
}

/// The key schema. Every key of a chat carries the chat id as its hash tag
/// (`{prefix}:{{chat}}:…`), so a chat lives on one Cluster slot and a script may touch
/// all of it.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `hablar` unless configured.
    prefix: String,
}

impl Keys {
    /// The schema under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    fn chat(&self, chat: &ChatId, what: &str) -> String {
        format!("{}:{{{}}}:{what}", self.prefix, chat.as_str())
    }

    /// Hash; the chat exists iff this key exists (field `created_at`).
    pub fn meta(&self, chat: &ChatId) -> String {
        self.chat(chat, "meta")
    }
    /// Set of member user ids.
    pub fn members(&self, chat: &ChatId) -> String {
        self.chat(chat, "members")
    }
    /// String: the message store's identity.
    pub fn epoch(&self, chat: &ChatId) -> String {
        self.chat(chat, "epoch")
    }
    /// String counter: the newest seq.
    pub fn seq(&self, chat: &ChatId) -> String {
        self.chat(chat, "seq")
    }
    /// Stream of messages, entry id `{seq}-0`, field `m` = the message JSON.
    pub fn messages(&self, chat: &ChatId) -> String {
        self.chat(chat, "messages")
    }
    /// Sorted set: one entry per retained message stored with a `client_id`, member
    /// [`Keys::idempotency_member`], score = its seq. Trimmed with the stream, so it holds
    /// at most the retention.
    pub fn idempotency(&self, chat: &ChatId) -> String {
        self.chat(chat, "idem")
    }
    /// The member of [`Keys::idempotency`] for a sender's `client_id`: a JSON pair, which
    /// keeps `user` and `client_id` apart whatever characters they hold.
    pub fn idempotency_member(user: &UserId, client_id: &ClientId) -> String {
        serde_json::to_string(&(user.as_str(), client_id.as_str())).expect("a pair of strings serialises")
    }
    /// Sorted set of `{instance}:{user}` scored by lease expiry (Unix ms, Redis clock).
    pub fn presence(&self, chat: &ChatId) -> String {
        self.chat(chat, "presence")
    }
    /// Hash user id → username of the users online in the chat.
    pub fn presence_names(&self, chat: &ChatId) -> String {
        self.chat(chat, "presence:names")
    }
    /// Hash with `last` (the last heartbeat of any instance in the chat) and `hold`
    /// (no lease is removed before it), Unix ms on the Redis clock.
    pub fn presence_beat(&self, chat: &ChatId) -> String {
        self.chat(chat, "presence:beat")
    }
    /// Sorted set of `{instance}:{slot}` scored by lease expiry: a user's open
    /// connections on every instance. (No chat: a user's limit spans chats.)
    pub fn connections(&self, user: &UserId) -> String {
        format!("{}:connections:{}", self.prefix, user.as_str())
    }
    /// Hash with `display_name`: a user's profile.
    pub fn user(&self, user: &UserId) -> String {
        format!("{}:user:{}", self.prefix, user.as_str())
    }
    /// The pub/sub channel of a chat (a channel, not a key).
    pub fn channel(&self, chat: &ChatId) -> String {
        self.chat(chat, "events")
    }
    /// The chat of a channel name made by [`Keys::channel`].
    pub fn chat_of_channel(&self, channel: &str) -> Option<ChatId> {
        let inner = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix("}:events")?;
        ChatId::new(inner).ok()
    }
}

/// The message id placeholder in an `append` template; the script replaces its first match.
const ID_NEEDLE: &str = "\"id\":\"__hablar_message_id__\"";
/// The seq placeholder in an `append` template.
const SEQ_NEEDLE: &str = "\"seq\":18446744073709551615";

/// The append script, also sent whole (`EVAL`) when Redis has lost its script cache.
const APPEND_LUA: &str = include_str!("append.lua");

/// The scripts, loaded once per Redis (`EVALSHA`, re-loaded after a Redis restart).
struct Scripts {
    append: Script,
    replay: Script,
    presence_join: Script,
    presence_leave: Script,
    presence_beat: Script,
    remove_member: Script,
    connection_acquire: Script,
    connection_renew: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            append: Script::new(APPEND_LUA),
            replay: Script::new(include_str!("replay.lua")),
            presence_join: Script::new(include_str!("presence_join.lua")),
            presence_leave: Script::new(include_str!("presence_leave.lua")),
            presence_beat: Script::new(include_str!("presence_beat.lua")),
            remove_member: Script::new(include_str!("remove_member.lua")),
            connection_acquire: Script::new(include_str!("connection_acquire.lua")),
            connection_renew: Script::new(include_str!("connection_renew.lua")),
        }
    }
}

/// What the supervisor has handed to the hub for one subscribed chat.
#[derive(Debug, Clone, Default)]
struct Cursor {
    /// The epoch of the messages delivered; `None` until known.
    epoch: Option<String>,
    /// The newest seq delivered (or known to be covered by every local replay).
    last: u64,
    /// Whether `epoch`/`last` are known yet (set at subscribe or by the first message).
    known: bool,
}

/// This instance's connections of one user in one chat.
#[derive(Debug)]
struct LocalPresence {
    user: PresenceUser,
    count: usize,
}

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
    /// renewal on its way is taken back (see [`renew_slots`]).
    slots: Mutex<HashMap<u64, UserId>>,
    /// The id of the next connection slot.
    next_slot: AtomicU64,
    /// Pre-built halves of a `new_message` [`ChatEvent`] around the message JSON.
    event_prefix: String,
    event_suffix: String,
}

/// Stripes of [`Inner::presence_order`]: enough that connections of different users
/// rarely wait for each other's round trip, few enough to allocate up front.
const PRESENCE_ORDER_STRIPES: usize = 256;

impl Inner {
    /// The lock that orders this instance's presence joins and leaves of `user` in `chat`.
    ///
    /// Only the same (chat, user) needs ordering: its local count and its one lease
    /// `{instance}:{user}` go together, while the scripts of different users touch
    /// different entries and each is atomic in Redis. A single lock for all of them made
    /// every connect and close of the instance wait its turn for one Redis round trip.
    /// A collision only makes two unrelated users wait for each other, as before.
    fn presence_order(&self, chat: &ChatId, user: &UserId) -> &tokio::sync::Mutex<()> {
        let mut hasher = std::hash::DefaultHasher::new();
        (chat, user).hash(&mut hasher);
        // The remainder is below the stripe count, so it fits a usize.
        let stripe = (hasher.finish() % self.presence_order.len() as u64) as usize;
        &self.presence_order[stripe]
    }
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

fn new_epoch() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 12)
}

fn rfc3339(at: OffsetDateTime) -> String {
    // Microseconds, like Django REST framework and the embedded backend.
    let at = at.replace_nanosecond(at.nanosecond() / 1000 * 1000).unwrap_or(at);
    at.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// The halves of the serialised `ChatEvent` around its message, so that the `append`
/// script publishes exactly what `serde` would.
fn event_halves() -> (String, String) {
    let message = Message {
        id: MessageId::new("x").expect("a valid id"),
        seq: Some(Seq(1)),
        chat_id: ChatId::new("x").expect("a valid chat id"),
        content: "x".into(),
        sender: Sender {
            id: UserId::new("x").expect("a valid user id"),
            username: "x".into(),
        },
        created_at: "x".into(),
        client_id: None,
        extra: Default::default(),
    };
    let inner = serde_json::to_string(&message).expect("a message serialises");
    let event = ChatEvent::Broadcast {
        event: ServerEvent::NewMessage { message },
        skip_user: None,
    };
    let whole = serde_json::to_string(&event).expect("an event serialises");
    let at = whole
        .find(&inner)
        .expect("the event holds the message JSON as it is");
    (whole[..at].to_owned(), whole[at + inner.len()..].to_owned())
}

/// The message the `append` script completes with its id and seq.
fn draft(chat: &ChatId, message: NewMessage, created_at: String) -> Message {
    Message {
        id: MessageId::new("__hablar_message_id__").expect("a valid id"),
        seq: Some(Seq(u64::MAX)),
        chat_id: chat.clone(),
        content: message.content,
        sender: Sender {
            id: message.sender.user_id,
            username: message.sender.username,
        },
        created_at,
        client_id: message.client_id,
        extra: message.extra,
    }
}

/// The message JSON the `append` script completes with its id and seq.
#[cfg(test)]
fn template(chat: &ChatId, message: NewMessage, created_at: String) -> String {
    serde_json::to_string(&draft(chat, message, created_at)).expect("a message serialises")
}

fn parse_message(json: &str) -> Result<Message> {
    serde_json::from_str(json).map_err(|err| backend_error(format!("unreadable message in the store: {err}")))
}

/// The epoch part of a message id `{epoch}-{seq}`.
fn epoch_of(message: &Message) -> Option<&str> {
    message.id.as_str().rsplit_once('-').map(|(epoch, _)| epoch)
}

/// A snapshot read by the `replay` script.
struct Snapshot {
    epoch: String,
    last_seq: u64,
    /// The oldest retained seq; `None` when the stream is empty or not asked for.
    oldest: Option<u64>,
    messages: Vec<Message>,
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
            instance: new_epoch(),
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
    /// Removes this instance's lease of `user` in `chat` (the `presence_leave` script);
    /// `true` when no live lease of the user is left on any instance.
    async fn remove_lease(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
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

    /// The entry of this instance's connection slot `slot` in its user's set.
    fn slot_member(&self, slot: u64) -> String {
        format!("{}:{slot}", self.instance)
    }

    /// Takes this instance's connection slot `slot` of `user` out of Redis.
    async fn remove_slot(&self, user: &UserId, slot: u64) -> Result<()> {
        let mut conn = self.conn.clone();
        self.run(conn.zrem(self.keys.connections(user), self.slot_member(slot)))
            .await
    }

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

    /// The chat's epoch and newest seq and, from `from` on, up to `count` messages.
    async fn snapshot(&self, chat: &ChatId, from: Option<u64>, count: usize) -> Result<Snapshot> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.replay.prepare_invoke();
        invocation
            .key(k.meta(chat))
            .key(k.epoch(chat))
            .key(k.seq(chat))
            .key(k.messages(chat))
            .arg(new_epoch())
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

    async fn publish_event(&self, chat: &ChatId, event: &ChatEvent) -> Result<()> {
        let payload = serde_json::to_string(event).map_err(backend_error)?;
        let mut conn = self.conn.clone();
        let channel = self.keys.channel(chat);
        self.run(conn.publish::<_, _, ()>(channel, payload)).await
    }
}

#[async_trait]
impl Backend for RedisBackend {
    async fn create_chat(&self, chat: &ChatId) -> Result<bool> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let created_at = rfc3339(OffsetDateTime::now_utc());
        let (created,): (bool,) = inner
            .run(
                redis::pipe()
                    .atomic()
                    .hset_nx(inner.keys.meta(chat), "created_at", created_at)
                    .set_nx(inner.keys.epoch(chat), new_epoch())
                    .ignore()
                    .query_async(&mut conn),
            )
            .await?;
        Ok(created)
    }

    async fn chat_exists(&self, chat: &ChatId) -> Result<bool> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        inner.run(conn.exists(inner.keys.meta(chat))).await
    }

    async fn add_member(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        if !self.chat_exists(chat).await? {
            return Ok(false);
        }
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        inner
            .run(conn.sadd::<_, _, ()>(inner.keys.members(chat), user.as_str()))
            .await?;
        Ok(true)
    }

    async fn remove_member(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        let inner = &self.inner;
        let event = ChatEvent::MemberRemoved {
            user_id: user.clone(),
        };
        let payload = serde_json::to_string(&event).map_err(backend_error)?;
        let mut conn = inner.conn.clone();
        let mut invocation = inner.scripts.remove_member.prepare_invoke();
        invocation
            .key(inner.keys.members(chat))
            .arg(user.as_str())
            .arg(inner.keys.channel(chat))
            .arg(payload);
        let removed: i64 = inner.run(invocation.invoke_async(&mut conn)).await?;
        Ok(removed == 1)
    }

    async fn is_member(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        inner
            .run(conn.sismember(inner.keys.members(chat), user.as_str()))
            .await
    }

    async fn set_display_name(&self, user: &UserId, display_name: &str) -> Result<()> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        inner
            .run(conn.hset::<_, _, _, ()>(inner.keys.user(user), "display_name", display_name))
            .await
    }

    async fn display_name(&self, user: &UserId) -> Result<Option<String>> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        inner.run(conn.hget(inner.keys.user(user), "display_name")).await
    }

    async fn append(&self, chat: &ChatId, message: NewMessage) -> Result<Appended> {
        self.append_batch(chat, vec![message])
            .await
            .pop()
            .unwrap_or_else(|| Err(backend_error("no outcome for the message")))
    }

    async fn append_batch(&self, chat: &ChatId, messages: Vec<NewMessage>) -> Vec<Result<Appended>> {
        let inner = &self.inner;
        let k = &inner.keys;
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
                .client_id
                .as_ref()
                .map(|client_id| Keys::idempotency_member(&message.sender.user_id, client_id))
                .unwrap_or_default();
            let sender = message.sender.user_id.as_str().to_owned();
            let draft = draft(chat, message, created_at.clone());
            let template = serde_json::to_string(&draft).expect("a message serialises");
            let args = vec![
                new_epoch(),
                template,
                inner.retention.to_string(),
                idempotency,
                k.channel(chat),
                inner.event_prefix.clone(),
                inner.event_suffix.clone(),
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
                    pipe.cmd("EVALSHA").arg(inner.scripts.append.get_hash())
                };
                cmd.arg(keys.len()).arg(&keys).arg(args);
            }
            pipe
        };
        let mut conn = inner.conn.clone();
        let replies: Result<Vec<Vec<String>>> = inner
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

    async fn history(&self, chat: &ChatId, before: Option<Seq>, limit: usize) -> Result<HistoryPage> {
        let inner = &self.inner;
        let k = &inner.keys;
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
        let mut conn = inner.conn.clone();
        let (exists, entries): (bool, Vec<(String, HashMap<String, String>)>) = inner
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

    async fn replay(
        &self,
        chat: &ChatId,
        since: Option<Seq>,
        epoch: Option<&Epoch>,
        max: usize,
    ) -> Result<Replay> {
        let from = since.map(|s| s.0.saturating_add(1));
        let snap = self.inner.snapshot(chat, from, max.saturating_add(1)).await?;
        let current = Epoch::new(snap.epoch.clone()).map_err(backend_error)?;
        let mut replay = Replay {
            epoch: current.clone(),
            last_seq: Seq(snap.last_seq),
            messages: Vec::new(),
            recovered: true,
        };
        let Some(Seq(since)) = since else {
            return Ok(replay);
        };
        let same_epoch = epoch.is_none_or(|e| *e == current);
        let missing = snap.last_seq.saturating_sub(since);
        // The first message the client lacks must still be retained.
        let oldest = snap.oldest.unwrap_or(snap.last_seq + 1);
        // `since` comes from the client's query and may be `u64::MAX`.
        let retained = since.saturating_add(1) >= oldest;
        if !same_epoch || since > snap.last_seq || !retained || missing > max as u64 {
            replay.recovered = false;
            return Ok(replay);
        }
        replay.messages = snap
            .messages
            .into_iter()
            .filter(|m| m.seq.is_some_and(|s| s.0 > since && s.0 <= snap.last_seq))
            .collect();
        Ok(replay)
    }

    async fn publish(&self, chat: &ChatId, event: ChatEvent) -> Result<()> {
        self.inner.publish_event(chat, &event).await
    }

    async fn subscribe(&self, chat: &ChatId) -> Result<()> {
        let inner = &self.inner;
        inner.subscribed.lock().entry(chat.clone()).or_default();
        let confirmed = {
            let mut slot = inner.pubsub.lock().await;
            match slot.as_mut() {
                Some(sink) => inner.run(sink.subscribe(inner.keys.channel(chat))).await,
                None => Err(backend_error("pub/sub connection is down")),
            }
        };
        // The hub's cursor starts at the chat's newest seq: every local connection reads
        // its replay after this returns, so anything older reaches it that way.
        let started = match confirmed {
            Ok(()) => inner.snapshot(chat, None, 1).await,
            Err(err) => Err(err),
        };
        match started {
            Ok(snap) => {
                if let Some(cursor) = inner.subscribed.lock().get_mut(chat) {
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
                inner.subscribed.lock().remove(chat);
                Err(err)
            }
        }
    }

    async fn unsubscribe(&self, chat: &ChatId) -> Result<()> {
        let inner = &self.inner;
        inner.subscribed.lock().remove(chat);
        let mut slot = inner.pubsub.lock().await;
        match slot.as_mut() {
            Some(sink) => inner.run(sink.unsubscribe(inner.keys.channel(chat))).await,
            // A new pub/sub connection subscribes only to chats still in `subscribed`.
            None => Ok(()),
        }
    }

    async fn presence_join(&self, chat: &ChatId, user: &PresenceUser) -> Result<PresenceJoined> {
        let inner = &self.inner;
        let _order = inner.presence_order(chat, &user.user_id).lock().await;
        let key = (chat.clone(), user.user_id.clone());
        let local_first = {
            let mut local = inner.presence.lock();
            let entry = local.entry(key.clone()).or_insert_with(|| LocalPresence {
                user: user.clone(),
                count: 0,
            });
            entry.count += 1;
            entry.user = user.clone();
            entry.count == 1
        };
        let mut invocation = inner.scripts.presence_join.prepare_invoke();
        invocation
            .key(inner.keys.presence(chat))
            .key(inner.keys.presence_names(chat))
            .arg(format!("{}:{}", inner.instance, user.user_id.as_str()))
            .arg(user.user_id.as_str())
            .arg(&user.username)
            .arg(inner.opts.presence_ttl_ms.max(1));
        let mut conn = inner.conn.clone();
        let reply: Vec<String> = match inner.run(invocation.invoke_async(&mut conn)).await {
            Ok(reply) => reply,
            Err(err) => {
                let mut local = inner.presence.lock();
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

    async fn presence_leave(&self, chat: &ChatId, user: &UserId) -> Result<bool> {
        let inner = &self.inner;
        let _order = inner.presence_order(chat, user).lock().await;
        let key = (chat.clone(), user.clone());
        {
            let mut local = inner.presence.lock();
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
        inner.remove_lease(chat, user).await
    }

    /// Counts across instances: see `connection_acquire.lua`. The slot's lease is the
    /// presence lease, renewed by the same heartbeat.
    async fn acquire_connection(
        &self,
        _local: &Arc<ConnectionCounter>,
        user: &UserId,
        max: usize,
    ) -> Result<Option<ConnectionSlot>> {
        let inner = &self.inner;
        let slot = inner.next_slot.fetch_add(1, Ordering::Relaxed);
        let mut invocation = inner.scripts.connection_acquire.prepare_invoke();
        invocation
            .key(inner.keys.connections(user))
            .arg(inner.slot_member(slot))
            .arg(max)
            .arg(inner.opts.presence_ttl_ms.max(3));
        let mut conn = inner.conn.clone();
        let taken: i64 = match inner.run(invocation.invoke_async(&mut conn)).await {
            Ok(taken) => taken,
            Err(err) => {
                // The script may have run all the same, after our time limit: take the
                // slot back rather than let it count for a whole lease.
                let (inner, user) = (inner.clone(), user.clone());
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
        inner.slots.lock().insert(slot, user.clone());
        let (inner, user) = (inner.clone(), user.clone());
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

/// Owns the pub/sub connection: connects, (re)subscribes the chats with local
/// connections, catches their gap up from the stream, then hands messages to the hub in
/// order until the connection fails, and starts over.
async fn supervise(inner: Arc<Inner>, mut up: Option<tokio::sync::oneshot::Sender<()>>) {
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
async fn on_message(inner: &Inner, channel: &str, payload: &[u8]) {
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
    let (Some(Seq(seq)), Some(epoch)) = (message.seq, epoch_of(message)) else {
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
async fn catch_up(inner: &Inner, chat: &ChatId) {
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
    let oldest = snap.oldest.unwrap_or(snap.last_seq + 1);
    let missing = snap.last_seq.saturating_sub(cursor.last);
    if missing == 0 {
        return;
    }
    if cursor.last + 1 < oldest || missing > max as u64 {
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

/// Checks the membership of this instance's sockets every `--redis-membership-check-ms`.
async fn membership_checks(inner: Arc<Inner>) {
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
async fn check_members(inner: &Inner) {
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

/// Renews this instance's presence leases and connection slots, and announces users
/// whose leases expired.
async fn heartbeat(inner: Arc<Inner>) {
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

/// Renews the leases of this instance's connection slots, one user's at a time, and
/// takes back any slot given back while its renewal was on its way (the renewal writes
/// back a missing entry, so it could have outlived the release by a whole lease).
async fn renew_slots(inner: &Inner) {
    let mut by_user: HashMap<UserId, Vec<u64>> = HashMap::new();
    for (slot, user) in inner.slots.lock().iter() {
        by_user.entry(user.clone()).or_default().push(*slot);
    }
    for (user, slots) in by_user {
        renew_user_slots(inner, &user, slots).await;
    }
}

/// Renews `slots` of `user`: this instance's, as they were when the renewal started.
async fn renew_user_slots(inner: &Inner, user: &UserId, slots: Vec<u64>) {
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

/// One chat's heartbeat: renews the leases of `users` (this instance's, as they were when
/// the beat started), announces the users of any instance whose last lease expired, then
/// announces again the users here whose lease had to be written back after another
/// instance removed it, and takes back the lease of anyone who left while the beat was on
/// its way.
///
/// The beat re-adds a lease that is missing (Redis may have lost it), so a user whose
/// `presence_leave` ran between the snapshot and the script came back as a ghost: shown
/// online for a whole lease, then announced as leaving a second time when it expired.
async fn beat(inner: &Inner, chat: &ChatId, users: Vec<PresenceUser>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_chat_shares_its_hash_tag() {
        let keys = Keys::new("hablar");
        let chat = ChatId::new("general").expect("chat");
        let user = UserId::new("a:b}{").expect("user");
        let client = ClientId::new("c:1").expect("client id");
        for key in [
            keys.meta(&chat),
            keys.members(&chat),
            keys.epoch(&chat),
            keys.seq(&chat),
            keys.messages(&chat),
            keys.idempotency(&chat),
            keys.presence(&chat),
            keys.presence_names(&chat),
            keys.presence_beat(&chat),
        ] {
            assert!(key.starts_with("hablar:{general}:"), "{key}");
        }
        assert_eq!(Keys::idempotency_member(&user, &client), r#"["a:b}{","c:1"]"#);
        assert_eq!(keys.user(&user), "hablar:user:a:b}{");
        // Its own namespace: no profile key `user:{id}` can be a user's connection set.
        assert_eq!(keys.connections(&user), "hablar:connections:a:b}{");
        assert_eq!(keys.chat_of_channel(&keys.channel(&chat)), Some(chat));
        assert_eq!(keys.chat_of_channel("other:{general}:events"), None);
    }

    #[test]
    fn idempotency_entries_keep_user_and_client_id_apart() {
        let a = Keys::idempotency_member(
            &UserId::new("a:b").expect("user"),
            &ClientId::new("c").expect("client id"),
        );
        let b = Keys::idempotency_member(
            &UserId::new("a").expect("user"),
            &ClientId::new("b:c").expect("client id"),
        );
        assert_ne!(a, b);
    }

    #[test]
    fn the_membership_check_flag_has_a_default_and_the_old_ttl_flag_is_still_accepted() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            redis: RedisOptions,
        }
        let defaults = Flags::try_parse_from(["hablar-server"]).expect("parses").redis;
        assert_eq!(defaults.membership_check_ms, 2_000);
        assert_eq!(defaults.idempotency_ttl_secs, None);
        let set = Flags::try_parse_from([
            "hablar-server",
            "--redis-membership-check-ms",
            "500",
            "--redis-idempotency-ttl-secs",
            "86400",
        ])
        .expect("a deployment that sets the deprecated flag still starts")
        .redis;
        assert_eq!(set.membership_check_ms, 500);
        assert_eq!(set.idempotency_ttl_secs, Some(86_400));
    }

    /// What the `append` script does to the template, in Rust.
    fn complete(template: &str, id: &str, seq: u64) -> String {
        let splice = |text: &str, needle: &str, value: &str| {
            let at = text.find(needle).expect("the needle is in the template");
            format!("{}{value}{}", &text[..at], &text[at + needle.len()..])
        };
        let text = splice(template, ID_NEEDLE, &format!("\"id\":\"{id}\""));
        splice(&text, SEQ_NEEDLE, &format!("\"seq\":{seq}"))
    }

    #[test]
    fn the_append_template_completes_to_the_message_and_its_event() {
        let chat = ChatId::new("general").expect("chat");
        let mut extra = hablar_protocol::events::Extra::new();
        // A pass-through field that holds the very placeholders must survive untouched.
        extra.insert(
            "reply_to".into(),
            serde_json::json!({"id": "__hablar_message_id__", "seq": u64::MAX}),
        );
        let new = NewMessage {
            sender: PresenceUser {
                user_id: UserId::new("alice").expect("user"),
                username: "Alice".into(),
            },
            content: "\"id\":\"__hablar_message_id__\"".into(),
            client_id: Some(ClientId::new("c1").expect("client id")),
            extra: extra.clone(),
        };
        let text = complete(&template(&chat, new, "2024-01-01T00:00:00Z".into()), "E-7", 7);
        let message = parse_message(&text).expect("a message");
        assert_eq!(message.id.as_str(), "E-7");
        assert_eq!(message.seq, Some(Seq(7)));
        assert_eq!(message.content, "\"id\":\"__hablar_message_id__\"");
        assert_eq!(message.extra, extra);
        assert_eq!(epoch_of(&message), Some("E"));

        let (prefix, suffix) = event_halves();
        let event: ChatEvent = serde_json::from_str(&format!("{prefix}{text}{suffix}")).expect("an event");
        assert_eq!(
            event,
            ChatEvent::Broadcast {
                event: ServerEvent::NewMessage { message },
                skip_user: None
            }
        );
    }

    /// A `redis-server` of the test's own on a free port (scripts/setup.sh installs it);
    /// killed on drop.
    struct TestRedis {
        child: std::process::Child,
        port: u16,
    }

    impl TestRedis {
        async fn start() -> Self {
            for _ in 0..5 {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port();
                let mut child = std::process::Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("redis-server (scripts/setup.sh installs it)");
                for _ in 0..100 {
                    if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                        return Self { child, port };
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            panic!("redis-server did not start on any of 5 free ports");
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/0", self.port)
        }
    }

    impl Drop for TestRedis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    struct Discard;

    impl EventSink for Discard {
        fn deliver(&self, _: &ChatId, _: &ChatEvent) {}
    }

    fn user(id: &str) -> PresenceUser {
        PresenceUser {
            user_id: UserId::new(id).expect("user"),
            username: id.to_uppercase(),
        }
    }

    /// A backend whose own heartbeat stays out of the way (one beat every 200 s), so that
    /// the test runs its beats itself.
    async fn backend_without_heartbeat(redis: &TestRedis) -> RedisBackend {
        let opts = RedisOptions {
            presence_ttl_ms: 600_000,
            ..RedisOptions::default()
        };
        RedisBackend::connect(&redis.url(), Arc::new(Discard), 100, opts)
            .await
            .expect("connect")
    }

    async fn leases(inner: &Inner, chat: &ChatId) -> (Vec<String>, HashMap<String, String>) {
        use redis::AsyncCommands;
        let mut conn = inner.conn.clone();
        let leases: Vec<String> = conn
            .zrange(inner.keys.presence(chat), 0, -1)
            .await
            .expect("zrange");
        let names: HashMap<String, String> = conn
            .hgetall(inner.keys.presence_names(chat))
            .await
            .expect("hgetall");
        (leases, names)
    }

    /// The race of a leave with a beat that had already taken its snapshot: the beat used
    /// to write the lease back, so she stayed online for a whole lease after leaving and
    /// was announced as leaving a second time when it expired.
    #[tokio::test]
    async fn a_beat_that_saw_a_user_before_she_left_does_not_bring_her_back() {
        let redis = TestRedis::start().await;
        let backend = backend_without_heartbeat(&redis).await;
        let chat = ChatId::new("c").expect("chat");
        let alice = user("alice");
        backend.presence_join(&chat, &alice).await.expect("join");
        // What the heartbeat holds when the beat starts.
        let snapshot = vec![alice.clone()];
        assert!(backend
            .presence_leave(&chat, &alice.user_id)
            .await
            .expect("leave"));
        beat(&backend.inner, &chat, snapshot).await;
        let (leases, names) = leases(&backend.inner, &chat).await;
        assert!(leases.is_empty(), "a lease outlived the leave: {leases:?}");
        assert!(names.is_empty(), "a name outlived the leave: {names:?}");
        let bob = user("bob");
        let joined = backend.presence_join(&chat, &bob).await.expect("join");
        assert_eq!(joined.online, vec![bob]);
    }

    fn message(sender: &PresenceUser, content: &str, client_id: &str) -> NewMessage {
        NewMessage {
            sender: sender.clone(),
            content: content.into(),
            client_id: Some(ClientId::new(client_id).expect("client id")),
            extra: Default::default(),
        }
    }

    /// The append re-checks membership with the store: a member removed by a direct
    /// `SREM` (no event published) can store nothing, whatever the batch holds.
    #[tokio::test]
    async fn a_removed_members_append_is_refused_with_nothing_stored() {
        use redis::AsyncCommands;
        let redis = TestRedis::start().await;
        let backend = backend_without_heartbeat(&redis).await;
        let chat = ChatId::new("c").expect("chat");
        let alice = user("alice");
        backend.create_chat(&chat).await.expect("create");
        backend.add_member(&chat, &alice.user_id).await.expect("add");
        backend
            .append(&chat, message(&alice, "before", "c1"))
            .await
            .expect("a member's send is stored");
        let mut conn = backend.inner.conn.clone();
        let _: () = conn
            .srem(backend.inner.keys.members(&chat), "alice")
            .await
            .expect("srem");
        let outcomes = backend
            .append_batch(
                &chat,
                vec![message(&alice, "after", "c1"), message(&alice, "after", "c2")],
            )
            .await;
        assert!(
            outcomes.iter().all(|o| matches!(o, Err(Error::NotMember))),
            "{outcomes:?}"
        );
        let page = backend.history(&chat, None, 10).await.expect("history");
        let stored: Vec<&str> = page.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(stored, ["before"]);
    }

    /// The idempotency entries are trimmed with the stream: a flood of distinct
    /// `client_id`s leaves no more of them than the retention, and a retained one still
    /// answers a resend with the stored message.
    #[tokio::test]
    async fn idempotency_entries_are_bounded_by_the_retained_history() {
        use redis::AsyncCommands;
        let redis = TestRedis::start().await;
        let opts = RedisOptions {
            presence_ttl_ms: 600_000,
            ..RedisOptions::default()
        };
        let backend = RedisBackend::connect(&redis.url(), Arc::new(Discard), 5, opts)
            .await
            .expect("connect");
        let chat = ChatId::new("c").expect("chat");
        let alice = user("alice");
        backend.create_chat(&chat).await.expect("create");
        backend.add_member(&chat, &alice.user_id).await.expect("add");
        let mut last = None;
        for i in 0..50 {
            let appended = backend
                .append(&chat, message(&alice, "flood", &format!("k{i}")))
                .await
                .expect("append");
            last = Some(appended.message);
        }
        let mut conn = backend.inner.conn.clone();
        let entries: Vec<(String, u64)> = conn
            .zrange_withscores(backend.inner.keys.idempotency(&chat), 0, -1)
            .await
            .expect("zrange");
        let seqs: Vec<u64> = entries.iter().map(|(_, seq)| *seq).collect();
        assert_eq!(seqs, [46, 47, 48, 49, 50], "the retained messages' entries only");
        let again = backend
            .append(&chat, message(&alice, "flood", "k49"))
            .await
            .expect("append");
        assert!(again.duplicate);
        assert_eq!(Some(again.message), last);
        let fresh = backend
            .append(&chat, message(&alice, "flood", "k0"))
            .await
            .expect("append");
        assert!(!fresh.duplicate, "past the retention a client_id is free again");
        assert_eq!(fresh.message.seq, Some(Seq(51)));
    }

    /// A crash gives nothing back: the slots of an instance that stops renewing them
    /// run out within one lease (`--redis-presence-ttl-ms`), as documented.
    #[tokio::test]
    async fn a_crashed_instances_connection_slots_run_out_within_a_lease() {
        let redis = TestRedis::start().await;
        let lease = Duration::from_millis(400);
        let opts = RedisOptions {
            presence_ttl_ms: 400,
            ..RedisOptions::default()
        };
        let url = redis.url();
        let connect = || RedisBackend::connect(&url, Arc::new(Discard), 100, opts.clone());
        let crashed = connect().await.expect("connect");
        let other = connect().await.expect("connect");
        let local = Arc::new(ConnectionCounter::default());
        let alice = UserId::new("alice").expect("user");
        for _ in 0..2 {
            let slot = crashed
                .acquire_connection(&local, &alice, 2)
                .await
                .expect("acquire")
                .expect("below the limit");
            // Never given back, as in a crash.
            std::mem::forget(slot);
        }
        // The heartbeat keeps them past their first lease while the instance lives.
        tokio::time::sleep(lease * 2).await;
        assert!(
            other
                .acquire_connection(&local, &alice, 2)
                .await
                .expect("acquire")
                .is_none(),
            "two slots taken on another instance fill the limit"
        );
        // The crash: the heartbeat stops, nothing is released.
        drop(crashed);
        let crashed_at = tokio::time::Instant::now();
        let slot = loop {
            if let Some(slot) = other
                .acquire_connection(&local, &alice, 2)
                .await
                .expect("acquire")
            {
                break slot;
            }
            assert!(
                crashed_at.elapsed() < lease + Duration::from_millis(300),
                "the crashed instance's slots outlived their lease"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let second = other
            .acquire_connection(&local, &alice, 2)
            .await
            .expect("acquire");
        assert!(second.is_some(), "both crashed slots ran out");
        assert!(other
            .acquire_connection(&local, &alice, 2)
            .await
            .expect("acquire")
            .is_none());
        // Given back at once when released.
        slot.release().await;
        assert!(other
            .acquire_connection(&local, &alice, 2)
            .await
            .expect("acquire")
            .is_some());
    }

    /// The race of a close with a renewal that had already taken its snapshot: the
    /// renewal writes back a missing entry, so without taking it back the closed
    /// connection would count against the user's limit for a whole lease.
    #[tokio::test]
    async fn a_renewal_that_saw_a_slot_before_it_was_released_does_not_bring_it_back() {
        use redis::AsyncCommands;
        let redis = TestRedis::start().await;
        let backend = backend_without_heartbeat(&redis).await;
        let local = Arc::new(ConnectionCounter::default());
        let alice = UserId::new("alice").expect("user");
        let slot = backend
            .acquire_connection(&local, &alice, 1)
            .await
            .expect("acquire")
            .expect("below the limit");
        // What the heartbeat holds when the renewal starts.
        let snapshot: Vec<u64> = backend.inner.slots.lock().keys().copied().collect();
        slot.release().await;
        renew_user_slots(&backend.inner, &alice, snapshot).await;
        let mut conn = backend.inner.conn.clone();
        let left: Vec<String> = conn
            .zrange(backend.inner.keys.connections(&alice), 0, -1)
            .await
            .expect("zrange");
        assert!(left.is_empty(), "a released slot outlived its release: {left:?}");
        assert!(backend
            .acquire_connection(&local, &alice, 1)
            .await
            .expect("acquire")
            .is_some());
    }

    /// What the beat is for still holds: it renews the leases of users still connected,
    /// and writes back those Redis lost.
    #[tokio::test]
    async fn a_beat_writes_back_the_leases_redis_lost_of_users_still_here() {
        use redis::AsyncCommands;
        let redis = TestRedis::start().await;
        let backend = backend_without_heartbeat(&redis).await;
        let chat = ChatId::new("c").expect("chat");
        let (carol, dave) = (user("carol"), user("dave"));
        backend.presence_join(&chat, &carol).await.expect("join");
        backend.presence_join(&chat, &dave).await.expect("join");
        let mut conn = backend.inner.conn.clone();
        let _: () = conn
            .del(&[
                backend.inner.keys.presence(&chat),
                backend.inner.keys.presence_names(&chat),
            ])
            .await
            .expect("del");
        beat(&backend.inner, &chat, vec![carol, dave]).await;
        let (mut leases, names) = leases(&backend.inner, &chat).await;
        leases.sort();
        let instance = &backend.inner.instance;
        assert_eq!(leases, [format!("{instance}:carol"), format!("{instance}:dave")]);
        assert_eq!(names.get("carol").map(String::as_str), Some("CAROL"));
        assert_eq!(names.get("dave").map(String::as_str), Some("DAVE"));
    }
}
