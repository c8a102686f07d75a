//! The fan-out sweep: offer publish rates open-loop, measure end-to-end latency per step,
//! bisect towards the latency bound and re-measure steps near it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{reconnect_lost, Member, Run, Target};
use crate::pacing::Pacer;
use crate::payload::{self, Padding};
use crate::procfs;
use crate::stats::Latency;

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
