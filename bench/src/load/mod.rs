//! Connections: the target, a run's shared state, opening a member's connection and
//! reading its deliveries, connecting a layout (counting connect time) and connecting again
//! the members a server closed; and the results one invocation writes. The scenarios that
//! use them are `sweep` (offered publish rates, open-loop, with end-to-end latency) and
//! `churn` (connect/disconnect cycles); idle connections are held by the caller.

mod churn;
mod sweep;
#[cfg(test)]
mod tests;

pub use churn::{churn, ChurnResult};
pub use sweep::{median_trial, sweep, StepResult, Sweep, NEAR_BOUND};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::admin::Layout;
use crate::payload::{self, Received};
use crate::procfs::{self, Usage};
use crate::stats::{Latency, Recorder};
use crate::wire::{self, Event, Reader, Writer};
use crate::{jwt, Error, Result};

/// The system under test, as the generator sees it.
#[derive(Debug, Clone)]
pub struct Target {
    /// WebSocket bases (`ws://127.0.0.1:PORT`); connection `j` goes to `ws[j % len]`,
    /// so members are split evenly across instances.
    pub ws: Vec<String>,
    /// hablar-server sends `ready` after admitting a connection; a base-layer peer and the
    /// ceiling send nothing, so for them "connected" is the WebSocket open.
    pub wait_ready: bool,
    /// `Origin` header to send (stock Channels refuses handshakes without one).
    pub origin: Option<String>,
    /// JWT signing key shared with the server.
    pub secret: String,
    /// Processes whose RSS and CPU are the system's cost (server(s), their Redis).
    pub pids: Vec<u32>,
}

/// Error counts shared by every connection of a run.
#[derive(Debug, Default)]
pub struct Counters {
    /// `error` events received.
    pub error_events: AtomicU64,
    /// Connections the server closed or lost while the benchmark still used them.
    pub unexpected_closes: AtomicU64,
    /// Sends that failed.
    pub send_errors: AtomicU64,
    /// Set when the run tears its connections down on purpose.
    pub closing: AtomicBool,
}

impl Counters {
    /// All errors counted so far.
    pub fn total(&self) -> u64 {
        self.error_events.load(Ordering::Relaxed)
            + self.unexpected_closes.load(Ordering::Relaxed)
            + self.send_errors.load(Ordering::Relaxed)
    }
}

/// Shared state of a run: the clock messages are stamped with, the recorder, the errors.
pub struct Run {
    /// Time zero of the payload timestamps.
    pub epoch: Instant,
    /// Where deliveries are recorded.
    pub recorder: Recorder,
    /// Error counts.
    pub counters: Counters,
}

impl Run {
    /// A fresh run.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            recorder: Recorder::new(16),
            counters: Counters::default(),
        })
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// What a received text message is (a message that is not UTF-8 is nothing we sent).
fn classify(text: &[u8]) -> Received {
    std::str::from_utf8(text).map_or(Received::Other, payload::classify)
}

/// Opens one connection of `user` to `chat` and waits until it counts as connected.
pub async fn open(target: &Target, base: &str, chat: &str, user: &str, jti: u64) -> Result<(Reader, Writer)> {
    let token = jwt::mint(&target.secret, user, 3600, jti);
    let path = format!("/ws/chat/{chat}/?token={token}");
    let host = base.trim_start_matches("ws://");
    let (mut reader, writer) = wire::connect(host, &path, target.origin.as_deref()).await?;
    if target.wait_ready {
        let mut admitted: Option<Result<()>> = None;
        while admitted.is_none() {
            let open = reader
                .read(&mut |event| match event {
                    Event::Text(text) if admitted.is_none() && classify(text) == Received::Ready => {
                        admitted = Some(Ok(()));
                    }
                    Event::Close(code) if admitted.is_none() => {
                        let code = code.unwrap_or(1005);
                        admitted = Some(Err(Error::Refused(format!("closed with {code}"))));
                    }
                    _ => {}
                })
                .await?;
            if !open && admitted.is_none() {
                return Err(Error::Refused("closed before ready".into()));
            }
        }
        admitted.expect("set by the loop")?;
    }
    Ok((reader, writer))
}

/// [`open`], given up after `timeout`.
async fn open_within(
    timeout: Duration,
    target: &Target,
    base: &str,
    chat: &str,
    user: &str,
    jti: u64,
) -> Result<(Reader, Writer)> {
    tokio::time::timeout(timeout, open(target, base, chat, user, jti))
        .await
        .unwrap_or_else(|_| Err(Error::Refused("connect timed out".into())))
}

/// A connected member: the write half (kept so the socket stays open, and used by
/// publishers) and the task reading and recording its deliveries.
pub struct Member {
    /// Index of the chat in the layout.
    pub chat: usize,
    /// The write half.
    pub writer: Writer,
    /// Cleared by the reader when the server closes or loses the connection, so the
    /// expected deliveries only count members still there.
    pub alive: Arc<AtomicBool>,
    reader: JoinHandle<()>,
    /// Where and as whom it connected, to connect again (see [`reconnect_lost`]).
    base: String,
    chat_name: String,
    user: String,
    jti: u64,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn spawn_reader(run: Arc<Run>, alive: Arc<AtomicBool>, mut reader: Reader) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut on_event = |event: Event<'_>| {
            if let Event::Text(text) = event {
                match classify(text) {
                    Received::Message { step, sent_us } => {
                        let now = run.now_us();
                        run.recorder.record(step, now.saturating_sub(sent_us), text.len());
                    }
                    Received::Error => {
                        run.counters.error_events.fetch_add(1, Ordering::Relaxed);
                    }
                    Received::Ready | Received::Other => {}
                }
            }
        };
        while let Ok(true) = reader.read(&mut on_event).await {}
        alive.store(false, Ordering::Relaxed);
        if !run.counters.closing.load(Ordering::Relaxed) {
            run.counters.unexpected_closes.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// How connecting a layout went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectResult {
    /// Connections attempted.
    pub attempted: usize,
    /// Connections that got through.
    pub connected: usize,
    /// Connections refused or failed.
    pub errors: usize,
    /// Wall time of the whole connect phase.
    pub secs: f64,
    /// Connections per second over the phase.
    pub per_sec: f64,
    /// Time of one connect (TCP + upgrade + `ready` where there is one).
    pub latency: Latency,
    /// First error text, if any (never contains a token).
    pub first_error: Option<String>,
}

/// Connects every member of `layout`, `concurrency` at a time.
pub async fn connect_layout(
    run: &Arc<Run>,
    target: &Target,
    layout: &Layout,
    concurrency: usize,
    timeout: Duration,
) -> (Vec<Member>, ConnectResult) {
    let started = Instant::now();
    let jobs = (0..layout.chats).flat_map(|i| (0..layout.members).map(move |k| (i, k)));
    let mut results = futures_util::stream::iter(jobs.enumerate().map(|(j, (i, k))| {
        let base = target.ws[j % target.ws.len()].clone();
        let (chat, user) = (layout.chat(i), layout.user(i, k));
        async move {
            let t0 = Instant::now();
            let opened = open_within(timeout, target, &base, &chat, &user, j as u64).await;
            let took = t0.elapsed();
            (i, opened.map(|ws| (ws, took, (base, chat, user, j as u64))))
        }
    }))
    .buffer_unordered(concurrency.max(1));
    let mut members = Vec::new();
    let mut times = Vec::new();
    let mut result = ConnectResult {
        attempted: layout.chats * layout.members,
        ..Default::default()
    };
    while let Some((chat, opened)) = results.next().await {
        match opened {
            Ok(((reader, writer), took, (base, chat_name, user, jti))) => {
                times.push(took);
                let alive = Arc::new(AtomicBool::new(true));
                let reader = spawn_reader(run.clone(), alive.clone(), reader);
                members.push(Member {
                    chat,
                    writer,
                    alive,
                    reader,
                    base,
                    chat_name,
                    user,
                    jti,
                });
            }
            Err(err) => {
                result.errors += 1;
                result.first_error.get_or_insert_with(|| err.to_string());
            }
        }
    }
    result.secs = started.elapsed().as_secs_f64();
    result.connected = members.len();
    result.per_sec = result.connected as f64 / result.secs.max(1e-9);
    result.latency = Latency::of_durations(&times);
    (members, result)
}

/// Connects again the members the server closed, `concurrency` at a time, and returns
/// how many could not be. A step past the peak may close every member (hablar-server
/// closes a reader that is 256 frames behind with 4408); the bisection below that step
/// needs the whole layout back, or it could not measure at all.
pub async fn reconnect_lost(
    run: &Arc<Run>,
    target: &Target,
    members: &mut [Member],
    round: u64,
    concurrency: usize,
) -> usize {
    let lost: Vec<usize> = (0..members.len())
        .filter(|&i| !members[i].alive.load(Ordering::Relaxed))
        .collect();
    if lost.is_empty() {
        return 0;
    }
    let jobs: Vec<_> = lost
        .iter()
        .map(|&i| {
            let m = &members[i];
            // A token of its own: the first connection's may not be reused.
            let jti = m.jti | (round << 40);
            (i, m.base.clone(), m.chat_name.clone(), m.user.clone(), jti)
        })
        .collect();
    let opened: Vec<_> =
        futures_util::stream::iter(jobs.into_iter().map(|(i, base, chat, user, jti)| async move {
            (
                i,
                open_within(Duration::from_secs(10), target, &base, &chat, &user, jti).await,
            )
        }))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut missing = 0;
    for (i, opened) in opened {
        match opened {
            Ok((reader, writer)) => {
                let member = &mut members[i];
                member.reader.abort();
                let alive = Arc::new(AtomicBool::new(true));
                member.reader = spawn_reader(run.clone(), alive.clone(), reader);
                member.alive = alive;
                member.writer = writer;
            }
            Err(_) => missing += 1,
        }
    }
    eprintln!(
        "  connected again {} of the {} members the last step lost",
        lost.len() - missing,
        lost.len()
    );
    missing
}

/// Memory of idle connections.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdleResult {
    /// Idle connections held.
    pub connections: usize,
    /// RSS of the system under test before connecting, KiB.
    pub rss_before_kb: u64,
    /// RSS with every connection open and settled, KiB.
    pub rss_after_kb: u64,
    /// (after − before) / connections, bytes.
    pub bytes_per_connection: f64,
    /// Connections lost while idle.
    pub dropped: u64,
}

/// Everything one invocation measured: the unit `report` reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    /// System under test (`hablar-memory`, `django-channels`, …).
    pub target: String,
    /// Scenario id (`a`, `b`, `d`, `e-a`, …) and its description.
    pub scenario: String,
    /// Human description of the scenario.
    pub description: String,
    /// Chats in the layout.
    pub chats: usize,
    /// Members per chat.
    pub members: usize,
    /// Content bytes per message (unless `frame_bytes` is set).
    pub content_bytes: usize,
    /// Size of every frame sent, bytes, when the content was padded to a frame size
    /// instead (`--frame-bytes`).
    #[serde(default)]
    pub frame_bytes: Option<usize>,
    /// The connect phase.
    pub connect: Option<ConnectResult>,
    /// Memory of the connections before any message.
    pub idle: Option<IdleResult>,
    /// The sweep.
    pub steps: Vec<StepResult>,
    /// The churn.
    pub churn: Option<ChurnResult>,
    /// Deliveries that arrived after their window was closed.
    pub stale: u64,
    /// Generator CPU seconds over the whole invocation.
    pub generator_cpu_secs: f64,
    /// Generator peak RSS at the end, KiB.
    pub generator_rss_kb: u64,
    /// Set by `report` when the run swept this system and scenario more than once: the
    /// fan-out figure of every sweep, in run order (0 for a sweep with no step within the
    /// bound). This result is the median sweep; see `report::load`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sweep_figures: Vec<f64>,
}

/// Reads the summed usage of the target's processes.
pub fn system_usage(target: &Target) -> Usage {
    procfs::usage_sum(&target.pids)
}
