//! Churn: connect/close cycles from parallel workers, timed, with the system's cost.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{open_within, Target};
use crate::admin::Layout;
use crate::procfs;
use crate::stats::Latency;

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
