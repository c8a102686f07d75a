//! Connections and scenarios: connect a layout's members (counting connect time), sweep
//! offered publish rates open-loop and measure end-to-end latency, hold connections idle
//! for their memory, and churn connect/disconnect cycles.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::admin::Layout;
use crate::pacing::Pacer;
use crate::payload::{self, Padding, Received};
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

/// One step of a rate sweep.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepResult {
    /// Messages published per second (offered, open loop).
    pub offered_per_sec: f64,
    /// Deliveries per second that offer should produce (publishes × members).
    pub expected_per_sec: f64,
    /// Deliveries per second measured (deliveries of this step's messages / window).
    pub delivered_per_sec: f64,
    /// Deliveries expected in the window but not seen by the end of the drain.
    pub missing: u64,
    /// End-to-end latency, due time of the publish to receipt by a member.
    pub latency: Latency,
    /// Errors counted during the step.
    pub errors: u64,
    /// CPU seconds of the system under test per wall second (2.0 = both cores).
    pub server_cpu: f64,
    /// CPU seconds of the generator per wall second.
    pub generator_cpu: f64,
    /// RSS of the system under test at the end of the step, KiB.
    pub server_rss_kb: u64,
    /// Mean payload length of the frames counted in `delivered_per_sec`, bytes (0 in
    /// results written before it was measured).
    #[serde(default)]
    pub mean_frame_bytes: f64,
    /// When the step was measured more than once (its p99 fell near the bound): the p99
    /// of every trial, in ms. The step's figures are those of the median trial.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub p99_trials_ms: Vec<f64>,
}

impl StepResult {
    /// Within the bound: p99 at most `bound_ms`, no error, and at least 97 % of the
    /// offered deliveries seen.
    pub fn within(&self, bound_ms: f64) -> bool {
        self.latency.count > 0
            && self.latency.p99_ms <= bound_ms
            && self.errors == 0
            && self.delivered_per_sec >= 0.97 * self.expected_per_sec
    }
}

/// Knobs of a rate sweep.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// Publish rates to offer, in order.
    pub rates: Vec<f64>,
    /// Length of each measurement window.
    pub window: Duration,
    /// Longest wait for a window's deliveries after its last publish.
    pub drain: Duration,
    /// Size of each message (its content, or the whole frame).
    pub padding: Padding,
    /// Stop after the first step whose p99 exceeds this (ms), or which loses messages.
    pub stop_p99_ms: f64,
    /// The latency bound the figures are quoted at (ms): refinement brackets it.
    pub bound_p99_ms: f64,
    /// Bisection steps between the last rate within the bound and the first beyond it.
    pub refine: usize,
    /// Trials of a step whose p99 falls near the bound (within a factor of
    /// [`NEAR_BOUND`] of it); the median trial decides. 1 measures every step once.
    pub trials: usize,
}

/// How close to the bound (as a factor either way) a step's p99 must be to be measured
/// `trials` times: a single 3 s window on a shared 2-core machine has ±30 % p99 noise,
/// enough to put one lucky or unlucky step on the wrong side of the bound.
pub const NEAR_BOUND: f64 = 1.5;

/// The median (by p99) of a step's trials, with every trial's p99 recorded.
pub fn median_trial(mut trials: Vec<(StepResult, u64)>) -> Option<(StepResult, u64)> {
    if trials.len() <= 1 {
        return trials.pop();
    }
    let p99s: Vec<f64> = trials.iter().map(|(s, _)| s.latency.p99_ms).collect();
    trials.sort_by(|a, b| a.0.latency.p99_ms.total_cmp(&b.0.latency.p99_ms));
    let (mut median, expected) = trials.swap_remove(trials.len() / 2);
    median.p99_trials_ms = p99s;
    Some((median, expected))
}

/// Publishes at each rate of the sweep (round-robin over the chats, each chat's first
/// live member publishing) and measures every step. At the first step beyond the latency
/// bound it bisects (in log space) between that rate and the highest rate within the
/// bound, `refine` times, so the figure is not quantised to the ×2 grid; this happens
/// before the sweep goes on into overload, which may cost members (a server closes
/// readers that fall too far behind). Stops at the first overloaded step.
pub async fn sweep(
    run: &Arc<Run>,
    target: &Target,
    members: &mut [Member],
    sweep: &Sweep,
) -> Vec<StepResult> {
    let mut steps: Vec<StepResult> = Vec::new();
    let mut refined = false;
    for &rate in &sweep.rates {
        let id = steps.len() as u32;
        let Some((result, expected)) = measure_trials(run, target, members, sweep, id, rate).await else {
            break;
        };
        let overloaded = result.latency.p99_ms > sweep.stop_p99_ms
            || result.missing as f64 > 0.01 * expected as f64
            || result.errors > 0;
        let beyond = !result.within(sweep.bound_p99_ms);
        steps.push(result);
        if beyond && !refined {
            refined = true;
            let good = steps
                .iter()
                .filter(|s| s.offered_per_sec < rate && s.within(sweep.bound_p99_ms))
                .map(|s| s.offered_per_sec)
                .max_by(f64::total_cmp);
            if let Some(good) = good {
                refine(run, target, members, sweep, &mut steps, good, rate).await;
            }
        }
        if overloaded {
            break;
        }
        // Let queues from this step settle before the next one starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    steps.sort_by(|a, b| a.offered_per_sec.total_cmp(&b.offered_per_sec));
    steps
}

/// Bisects between `good` (within the bound) and `bad` (beyond it) `sweep.refine` times.
async fn refine(
    run: &Arc<Run>,
    target: &Target,
    members: &mut [Member],
    sweep: &Sweep,
    steps: &mut Vec<StepResult>,
    mut good: f64,
    mut bad: f64,
) {
    for round in 0..sweep.refine {
        // The last step was beyond the bound: give the system time to recover, and bring
        // back the members it closed.
        tokio::time::sleep(Duration::from_secs(2)).await;
        reconnect_lost(run, target, members, steps.len() as u64 + round as u64, 100).await;
        let rate = (good * bad).sqrt();
        let id = steps.len() as u32;
        let Some((result, _)) = measure_trials(run, target, members, sweep, id, rate).await else {
            return;
        };
        if result.within(sweep.bound_p99_ms) {
            good = rate;
        } else {
            bad = rate;
        }
        steps.push(result);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Measures a step; if its p99 falls near the bound (and it lost nothing), measures it
/// again up to `sweep.trials` times in all and keeps the median trial.
async fn measure_trials(
    run: &Arc<Run>,
    target: &Target,
    members: &mut [Member],
    sweep: &Sweep,
    step: u32,
    rate: f64,
) -> Option<(StepResult, u64)> {
    let first = measure_step(run, target, members, sweep, step, rate).await?;
    let p99 = first.0.latency.p99_ms;
    let near = p99 >= sweep.bound_p99_ms / NEAR_BOUND && p99 <= sweep.bound_p99_ms * NEAR_BOUND;
    let clean = first.0.errors == 0 && first.0.missing == 0;
    let mut trials = vec![first];
    if near && clean {
        while trials.len() < sweep.trials {
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Each trial is a window of its own: a late delivery of the previous trial
            // is stale, not counted in this one.
            let window = step + 10_000 * trials.len() as u32;
            let Some(trial) = measure_step(run, target, members, sweep, window, rate).await else {
                break;
            };
            trials.push(trial);
        }
    }
    let median = median_trial(trials)?;
    if !median.0.p99_trials_ms.is_empty() {
        eprintln!(
            "  step {step}: median of {} trials (p99 {:?} ms)",
            median.0.p99_trials_ms.len(),
            median.0.p99_trials_ms
        );
    }
    Some(median)
}

/// One measurement window at `rate`: publish, drain, read the figures. Returns the
/// result and the deliveries expected, or `None` when no member is left to publish.
async fn measure_step(
    run: &Arc<Run>,
    target: &Target,
    members: &mut [Member],
    sweep: &Sweep,
    step: u32,
    rate: f64,
) -> Option<(StepResult, u64)> {
    // Members per chat still connected, and each chat's publisher (its first live
    // member): a member the server dropped is an error, not an expected delivery.
    let chats = members.iter().map(|m| m.chat + 1).max().unwrap_or(0);
    let mut per_chat = vec![0u64; chats];
    let mut publisher: Vec<Option<usize>> = vec![None; chats];
    for (index, member) in members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.alive.load(Ordering::Relaxed))
    {
        per_chat[member.chat] += 1;
        publisher[member.chat].get_or_insert(index);
    }
    let publishers: Vec<(usize, u64)> = (0..chats)
        .filter_map(|c| publisher[c].map(|p| (p, per_chat[c])))
        .collect();
    if publishers.is_empty() {
        return None;
    }
    let pacer = Pacer::new(rate);
    let count = pacer.count_in(sweep.window).max(1);
    let errors_before = run.counters.total();
    let (sys_before, gen_before) = (procfs::usage_sum(&target.pids), procfs::own());
    run.recorder.open(step);
    let start = tokio::time::Instant::now();
    let mut expected = 0u64;
    for n in 0..count {
        let due = start + pacer.due(n);
        tokio::time::sleep_until(due).await;
        let (index, fan) = publishers[(n as usize) % publishers.len()];
        let sent_us = (due.into_std() - run.epoch).as_micros() as u64;
        let frame = payload::new_message(step, sent_us, n, sweep.padding);
        if members[index].writer.send_text(&frame).await.is_err() {
            run.counters.send_errors.fetch_add(1, Ordering::Relaxed);
        } else {
            expected += fan;
        }
    }
    let published = start.elapsed();
    // Drain: until everything arrived, or no progress for 1.5 s (a slow system may
    // start a fan-out a second after the publish), or the drain limit.
    let drain_start = Instant::now();
    let (mut last, mut last_change) = (run.recorder.delivered(), Instant::now());
    while last < expected && drain_start.elapsed() < sweep.drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = run.recorder.delivered();
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > Duration::from_millis(1500) {
            break;
        }
    }
    let window = run.recorder.take();
    let wall = start.elapsed().as_secs_f64();
    let (sys_after, gen_after) = (procfs::usage_sum(&target.pids), procfs::own());
    let secs = sweep.window.as_secs_f64().max(published.as_secs_f64());
    let result = StepResult {
        offered_per_sec: rate,
        // From what was actually sent: a window of 3 s at 0.5/s sends 2 messages, not 1.5.
        expected_per_sec: expected as f64 / secs,
        delivered_per_sec: window.delivered as f64 / secs,
        missing: expected.saturating_sub(window.delivered),
        latency: Latency::of(&window.hist),
        errors: run.counters.total() - errors_before,
        server_cpu: (sys_after.cpu_secs - sys_before.cpu_secs) / wall,
        generator_cpu: (gen_after.cpu_secs - gen_before.cpu_secs) / wall,
        server_rss_kb: sys_after.rss_kb,
        mean_frame_bytes: window.mean_frame_bytes(),
        p99_trials_ms: Vec::new(),
    };
    eprintln!(
        "  step {step}: offered {rate:.1}/s → delivered {:.0}/s (expected {:.0}/s), frame {:.0} B, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, missing {}, errors {}, cpu server {:.2} gen {:.2}",
        result.delivered_per_sec, result.expected_per_sec, result.mean_frame_bytes, result.latency.p50_ms,
        result.latency.p99_ms, result.latency.max_ms, result.missing, result.errors, result.server_cpu,
        result.generator_cpu
    );
    Some((result, expected))
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

/// Churn: connect, (ready), close, again, from `concurrency` workers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChurnResult {
    /// Parallel connect/close loops.
    pub concurrency: usize,
    /// Completed connect+close cycles.
    pub cycles: u64,
    /// Cycles per second.
    pub per_sec: f64,
    /// Connect time per cycle.
    pub latency: Latency,
    /// Failed cycles.
    pub errors: u64,
    /// First error text, if any.
    pub first_error: Option<String>,
    /// CPU of the system under test per wall second.
    pub server_cpu: f64,
    /// CPU of the generator per wall second.
    pub generator_cpu: f64,
    /// RSS of the system under test after the churn, KiB (leaks show here).
    pub server_rss_kb: u64,
}

/// Runs connect/close cycles for `duration` over the users of `layout`.
pub async fn churn(target: &Target, layout: &Layout, concurrency: usize, duration: Duration) -> ChurnResult {
    let (sys_before, gen_before) = (procfs::usage_sum(&target.pids), procfs::own());
    let started = Instant::now();
    let users = layout.chats * layout.members;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let target = target.clone();
        let layout = layout.clone();
        workers.spawn(async move {
            let (mut times, mut errors, mut first_error) = (Vec::new(), 0u64, None);
            let mut j = w;
            let mut jti = (w as u64) << 32;
            while started.elapsed() < duration {
                let (i, k) = ((j % users) / layout.members, (j % users) % layout.members);
                let base = &target.ws[j % target.ws.len()];
                let t0 = Instant::now();
                jti += 1;
                let opened = open_within(
                    Duration::from_secs(10),
                    &target,
                    base,
                    &layout.chat(i),
                    &layout.user(i, k),
                    jti,
                )
                .await;
                match opened {
                    Ok((mut reader, writer)) => {
                        times.push(t0.elapsed());
                        // A clean close: send ours, read until the server's close arrives.
                        let _ = writer.close(1000).await;
                        let _ = tokio::time::timeout(Duration::from_secs(5), async {
                            while let Ok(true) = reader.read(&mut |_| {}).await {}
                        })
                        .await;
                    }
                    Err(err) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| err.to_string());
                    }
                }
                j += concurrency;
            }
            (times, errors, first_error)
        });
    }
    let mut result = ChurnResult {
        concurrency,
        ..Default::default()
    };
    let mut times = Vec::new();
    while let Some(done) = workers.join_next().await {
        if let Ok((t, e, f)) = done {
            times.extend(t);
            result.errors += e;
            if result.first_error.is_none() {
                result.first_error = f;
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let (sys_after, gen_after) = (procfs::usage_sum(&target.pids), procfs::own());
    result.cycles = times.len() as u64;
    result.per_sec = result.cycles as f64 / wall;
    result.latency = Latency::of_durations(&times);
    result.server_cpu = (sys_after.cpu_secs - sys_before.cpu_secs) / wall;
    result.generator_cpu = (gen_after.cpu_secs - gen_before.cpu_secs) / wall;
    result.server_rss_kb = sys_after.rss_kb;
    result
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

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(p99_ms: f64) -> (StepResult, u64) {
        let mut step = StepResult::default();
        step.latency.p99_ms = p99_ms;
        (step, 7)
    }

    #[test]
    fn the_median_trial_by_p99_is_kept_with_every_trials_p99() {
        let (median, expected) = median_trial(vec![trial(70.0), trial(40.0), trial(48.0)]).expect("trials");
        assert_eq!(median.latency.p99_ms, 48.0);
        assert_eq!(expected, 7);
        assert_eq!(median.p99_trials_ms, [70.0, 40.0, 48.0], "in the order measured");
    }

    /// Members the server closed are connected again, as the same users of the same chats
    /// with fresh tokens, and read again; members still open are left alone.
    #[tokio::test]
    async fn members_the_server_closed_are_connected_again() {
        use tokio::io::AsyncWriteExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let host = listener.local_addr().expect("addr").to_string();
        // Every request line the server saw, and the sockets of the first three.
        let seen = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
        let (close_tx, mut close_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let server_seen = seen.clone();
        tokio::spawn(async move {
            let mut first = Vec::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let (mut socket, _) = accepted.expect("accept");
                        let head = crate::wire::accept_upgrade(&mut socket, &[]).await;
                        server_seen.lock().push(head.lines().next().expect("request line").to_owned());
                        first.push(socket);
                    }
                    Some(()) = close_rx.recv() => {
                        // Close the first two as a server closes slow readers: 4408.
                        for mut socket in first.drain(..2) {
                            socket.write_all(&[0x88, 2, 0x11, 0x38]).await.expect("close");
                        }
                    }
                }
            }
        });
        let run = Run::new();
        let target = Target {
            ws: vec![format!("ws://{host}")],
            wait_ready: false,
            origin: None,
            secret: "bench-test".into(),
            pids: Vec::new(),
        };
        let layout = Layout {
            prefix: "r".into(),
            chats: 1,
            members: 3,
        };
        let (mut members, connected) =
            connect_layout(&run, &target, &layout, 3, Duration::from_secs(5)).await;
        assert_eq!(connected.connected, 3);
        close_tx.send(()).expect("server");
        let deadline = Instant::now() + Duration::from_secs(5);
        while members.iter().filter(|m| m.alive.load(Ordering::Relaxed)).count() > 1 {
            assert!(Instant::now() < deadline, "the closes did not arrive");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lost: Vec<String> = members
            .iter()
            .filter(|m| !m.alive.load(Ordering::Relaxed))
            .map(|m| m.user.clone())
            .collect();
        assert_eq!(reconnect_lost(&run, &target, &mut members, 1, 10).await, 0);
        assert!(members.iter().all(|m| m.alive.load(Ordering::Relaxed)));
        let seen = seen.lock().clone();
        assert_eq!(seen.len(), 5, "three connects, then two again: {seen:?}");
        // The same chat, with tokens of the same users that were not used before.
        assert!(
            seen.iter().all(|l| l.starts_with("GET /ws/chat/r0/?token=")),
            "{seen:?}"
        );
        let tokens: std::collections::HashSet<&str> = seen.iter().map(|l| l.as_str()).collect();
        assert_eq!(tokens.len(), 5, "a token was reused: {seen:?}");
        let user_of = |line: &String| {
            let token = line
                .split("token=")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .expect("token");
            let claims = token.split('.').nth(1).expect("claims");
            let claims = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims)
                .expect("base64");
            let claims: serde_json::Value = serde_json::from_slice(&claims).expect("json");
            claims["user_id"].as_str().expect("user_id").to_owned()
        };
        let mut again: Vec<String> = seen[3..].iter().map(user_of).collect();
        let mut lost = lost;
        again.sort();
        lost.sort();
        assert_eq!(again, lost, "the lost members, each once");
    }

    #[test]
    fn a_single_trial_is_kept_as_it_is() {
        let (single, _) = median_trial(vec![trial(12.0)]).expect("trial");
        assert!(single.p99_trials_ms.is_empty());
        assert!(median_trial(Vec::new()).is_none());
    }
}
