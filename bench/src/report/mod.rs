//! Results → BENCHMARKS.md: the figures tables, the goals with their verdicts, and an
//! SVG chart of delivered messages/s against p99 latency (hand-written SVG, log axes).

mod chart;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::load::{RunResult, StepResult};
use crate::Result;

pub use chart::svg;

/// The latency bound the fan-out figures are quoted at.
pub const P99_BOUND_MS: f64 = 50.0;

/// The bare ceiling forwarding the client's own frame (100 B content, ~160 B frames).
const CEILING: &str = "ceiling";
/// The bare ceiling sending frames padded to the size hablar-server delivers: the same
/// bytes on the wire, so the fair limit for this protocol.
const CEILING_SAME_FRAMES: &str = "ceiling-same-frames";

/// Display order and colour of the systems.
const SYSTEMS: &[(&str, &str, &str)] = &[
    (CEILING, "bare ceiling (tokio broadcast)", "#7f7f7f"),
    (
        CEILING_SAME_FRAMES,
        "bare ceiling, frames as large as hablar-server's",
        "#17becf",
    ),
    ("hablar-memory", "hablar-server, embedded", "#1f77b4"),
    ("hablar-redis", "hablar-server, Redis, 1 instance", "#2ca02c"),
    ("hablar-redis-2x", "hablar-server, Redis, 2 instances", "#9467bd"),
    (
        "django-channels",
        "Django Channels (daphne + channels_redis)",
        "#d62728",
    ),
];

fn label(target: &str) -> &str {
    SYSTEMS
        .iter()
        .find(|s| s.0 == target)
        .map(|s| s.1)
        .unwrap_or(target)
}

fn colour(target: &str) -> &str {
    SYSTEMS
        .iter()
        .find(|s| s.0 == target)
        .map(|s| s.2)
        .unwrap_or("#000000")
}

fn order(target: &str) -> usize {
    SYSTEMS
        .iter()
        .position(|s| s.0 == target)
        .unwrap_or(SYSTEMS.len())
}

/// A step is within bounds when its p99 is at most 50 ms, it counted no error, and
/// (nearly) everything offered was delivered.
pub fn within_bounds(step: &StepResult) -> bool {
    step.within(P99_BOUND_MS)
}

/// The step with the highest delivered rate within bounds.
pub fn best(steps: &[StepResult]) -> Option<&StepResult> {
    steps
        .iter()
        .filter(|s| within_bounds(s))
        .max_by(|a, b| a.delivered_per_sec.total_cmp(&b.delivered_per_sec))
}

/// `a / b` as "12.3×", or "n/a".
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        (Some(_), Some(_)) => "∞ (other had no step within bounds)".into(),
        _ => "n/a".into(),
    }
}

/// Loads every `*.json` results file of `dir`, sorted by system then scenario.
///
/// A system and scenario swept more than once in the run (`bench.sh` sweeps every system
/// a goal compares three times, alternating, because the machine's noise drifts over
/// minutes) is reported by its median sweep, by fan-out figure, with every sweep's figure
/// in [`RunResult::sweep_figures`]. Files are read in name order, which is run order
/// (`NAME-SCENARIO.json`, then `NAME-SCENARIO.sweepN.json`).
pub fn load(dir: &Path) -> Result<Vec<RunResult>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut sweeps: BTreeMap<(String, String), Vec<RunResult>> = BTreeMap::new();
    for path in paths {
        let run = serde_json::from_str::<RunResult>(&std::fs::read_to_string(&path)?)?;
        sweeps
            .entry((run.target.clone(), run.scenario.clone()))
            .or_default()
            .push(run);
    }
    let mut runs: Vec<RunResult> = sweeps.into_values().map(median_sweep).collect();
    runs.sort_by(|a, b| (order(&a.target), &a.scenario).cmp(&(order(&b.target), &b.scenario)));
    Ok(runs)
}

/// The fan-out figure of a sweep: its best rate within the bound, 0 without one.
fn figure(run: &RunResult) -> f64 {
    best(&run.steps).map(|s| s.delivered_per_sec).unwrap_or(0.0)
}

/// The median of the sweeps of one system and scenario by fan-out figure (the lower of
/// the two middle ones for an even count), with every sweep's figure in run order. A
/// single sweep is returned as it is.
fn median_sweep(mut sweeps: Vec<RunResult>) -> RunResult {
    if sweeps.len() < 2 {
        return sweeps.pop().expect("a group has at least one sweep");
    }
    let figures: Vec<f64> = sweeps.iter().map(figure).collect();
    let mut by_figure: Vec<usize> = (0..sweeps.len()).collect();
    by_figure.sort_by(|&a, &b| figures[a].total_cmp(&figures[b]));
    let median = by_figure[(sweeps.len() - 1) / 2];
    let mut run = sweeps.swap_remove(median);
    run.sweep_figures = figures;
    run
}

/// "(median of 3 sweeps: 320k / 640k / 538k)" for a result swept more than once.
fn sweeps_note(run: &RunResult) -> String {
    if run.sweep_figures.is_empty() {
        return String::new();
    }
    let figures: Vec<String> = run.sweep_figures.iter().map(|&f| fmt_rate(f)).collect();
    format!(
        " (median of {} sweeps: {})",
        run.sweep_figures.len(),
        figures.join(" / ")
    )
}

fn find<'a>(runs: &'a [RunResult], target: &str, scenario: &str) -> Option<&'a RunResult> {
    runs.iter().find(|r| r.target == target && r.scenario == scenario)
}

fn best_rate(runs: &[RunResult], target: &str, scenario: &str) -> Option<f64> {
    find(runs, target, scenario).map(figure)
}

/// The highest delivered rate of any step, whatever its latency.
pub fn peak(steps: &[StepResult]) -> Option<f64> {
    steps.iter().map(|s| s.delivered_per_sec).max_by(f64::total_cmp)
}

/// The rate a system is compared at: its best within bounds, or, when it has no step
/// within bounds (the baseline may never reach p99 ≤ 50 ms), its peak at any latency,
/// which flatters it. The flag says which.
fn comparable_rate(runs: &[RunResult], target: &str, scenario: &str) -> Option<(f64, bool)> {
    let run = find(runs, target, scenario)?;
    match best(&run.steps) {
        Some(s) => Some((s.delivered_per_sec, true)),
        None => peak(&run.steps).map(|p| (p, false)),
    }
}

/// Mean payload length of the frames a run delivered, over all its steps (weighted by
/// deliveries), or `None` for results written before it was measured.
pub fn mean_frame_bytes(run: &RunResult) -> Option<f64> {
    let (bytes, count) =
        run.steps
            .iter()
            .filter(|s| s.mean_frame_bytes > 0.0)
            .fold((0.0, 0u64), |(b, c), s| {
                (
                    b + s.mean_frame_bytes * s.latency.count as f64,
                    c + s.latency.count,
                )
            });
    (count > 0).then(|| bytes / count as f64)
}

/// The ceiling a scenario is judged against: the one sending frames as large as
/// hablar-server's when it was run, else the client-frame one.
fn ceiling_for(runs: &[RunResult], scenario: &str) -> &'static str {
    if find(runs, CEILING_SAME_FRAMES, scenario).is_some() {
        CEILING_SAME_FRAMES
    } else {
        CEILING
    }
}

/// "~160 B frames", from what a run delivered, when that was measured.
fn frames_of(runs: &[RunResult], target: &str, scenario: &str) -> Option<String> {
    let run = find(runs, target, scenario)?;
    let bytes = mean_frame_bytes(run).or(run.frame_bytes.map(|b| b as f64))?;
    Some(format!("~{bytes:.0} B frames"))
}

fn vs(ours: Option<f64>, other: Option<(f64, bool)>) -> String {
    match other {
        Some((rate, true)) => ratio(ours, Some(rate)),
        Some((rate, false)) => format!("{} (vs its peak at any p99)", ratio(ours, Some(rate))),
        None => "n/a".into(),
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 10_000.0 {
        format!("{:.0}k", r / 1000.0)
    } else {
        format!("{r:.0}")
    }
}

/// The markdown of the figures: tables and verdicts.
pub fn tables(runs: &[RunResult]) -> String {
    let mut md = String::new();
    let fanout: Vec<&RunResult> = runs.iter().filter(|r| !r.steps.is_empty()).collect();

    md.push_str("### Fan-out: highest delivered rate with p99 ≤ 50 ms\n\n");
    md.push_str("| system | scenario | delivered msgs/s | p50 ms | p99 ms | max ms | system CPU (cores) | generator CPU (cores) | peak delivered, any p99 | vs Django | vs ceiling |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &fanout {
        let ours = best_rate(runs, &r.target, &r.scenario);
        let scenario_base = r.scenario.trim_start_matches("e-");
        let against = |other: &str| {
            if r.target == other {
                "—".to_owned()
            } else {
                vs(ours, comparable_rate(runs, other, scenario_base))
            }
        };
        let vs_django = against("django-channels");
        let vs_ceiling = match ceiling_for(runs, scenario_base) {
            // No ratio of a ceiling to the other ceiling: both are the limit.
            _ if r.target == CEILING || r.target == CEILING_SAME_FRAMES => "—".to_owned(),
            CEILING_SAME_FRAMES => against(CEILING_SAME_FRAMES),
            _ if find(runs, CEILING, scenario_base).is_some() => {
                format!("{} (client-frame ceiling)", against(CEILING))
            }
            _ => against(CEILING),
        };
        let peak = peak(&r.steps).map(fmt_rate).unwrap_or_default();
        let figures = match best(&r.steps) {
            Some(s) => format!(
                "**{}**{} | {:.2} | {:.2} | {:.1} | {:.2} | {:.2}",
                fmt_rate(s.delivered_per_sec),
                sweeps_note(r),
                s.latency.p50_ms,
                s.latency.p99_ms,
                s.latency.max_ms,
                s.server_cpu,
                s.generator_cpu
            ),
            None => format!("none within bounds{} | | | | |", sweeps_note(r)),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {figures} | {peak} | {vs_django} | {vs_ceiling} |",
            label(&r.target),
            r.scenario
        );
    }

    md.push_str("\n### Every sweep step\n\n");
    md.push_str("| system | scenario | offered pub/s | expected deliveries/s | delivered/s | mean frame B | p50 ms | p99 ms | max ms | missing | errors | system CPU | generator CPU | system RSS MiB |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &fanout {
        for s in &r.steps {
            let frame = if s.mean_frame_bytes > 0.0 {
                format!("{:.0}", s.mean_frame_bytes)
            } else {
                "—".to_owned()
            };
            let p99 = if s.p99_trials_ms.is_empty() {
                format!("{:.2}", s.latency.p99_ms)
            } else {
                let trials: Vec<String> = s.p99_trials_ms.iter().map(|p| format!("{p:.1}")).collect();
                format!("{:.2} (median of {})", s.latency.p99_ms, trials.join(" / "))
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.0} | {:.0} | {frame} | {:.2} | {p99} | {:.1} | {} | {} | {:.2} | {:.2} | {:.1} |",
                r.target,
                r.scenario,
                s.offered_per_sec,
                s.expected_per_sec,
                s.delivered_per_sec,
                s.latency.p50_ms,
                s.latency.max_ms,
                s.missing,
                s.errors,
                s.server_cpu,
                s.generator_cpu,
                s.server_rss_kb as f64 / 1024.0
            );
        }
    }

    md.push_str("\n### Connecting, and idle connections\n\n");
    md.push_str("| system | scenario | connections | connects/s | connect p50 ms | connect p99 ms | connect errors | RSS before MiB | RSS idle MiB | **RSS per idle connection** | dropped while idle |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &fanout {
        if let (Some(c), Some(i)) = (&r.connect, &r.idle) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {} | {:.1} | {:.1} | **{:.1} KB** | {} |",
                label(&r.target),
                r.scenario,
                c.connected,
                c.per_sec,
                c.latency.p50_ms,
                c.latency.p99_ms,
                c.errors,
                i.rss_before_kb as f64 / 1024.0,
                i.rss_after_kb as f64 / 1024.0,
                i.bytes_per_connection / 1000.0,
                i.dropped
            );
        }
    }

    let churns: Vec<&RunResult> = runs.iter().filter(|r| r.churn.is_some()).collect();
    if !churns.is_empty() {
        md.push_str("\n### Connect/disconnect churn\n\n");
        md.push_str("| system | loops | cycles/s | connect p50 ms | connect p99 ms | errors | system CPU | generator CPU | system RSS after MiB |\n");
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in churns {
            let c = r.churn.as_ref().expect("filtered on churn");
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.1} | {:.1} | {} | {:.2} | {:.2} | {:.1} |",
                label(&r.target),
                c.concurrency,
                c.per_sec,
                c.latency.p50_ms,
                c.latency.p99_ms,
                c.errors,
                c.server_cpu,
                c.generator_cpu,
                c.server_rss_kb as f64 / 1024.0
            );
        }
    }
    md.push_str("\n### Goals\n\n");
    md.push_str(&verdicts(runs));
    md
}

/// The goals BENCHMARKS.md judges, each with its measured figure and PASS or SHORT.
pub fn verdicts(runs: &[RunResult]) -> String {
    let mut md = String::new();
    let mut line = |ok: Option<bool>, text: String| {
        let mark = match ok {
            Some(true) => "PASS",
            Some(false) => "SHORT",
            None => "NOT MEASURED",
        };
        let _ = writeln!(md, "- **{mark}**: {text}");
    };
    for scenario in ["a", "b"] {
        let ours = best_rate(runs, "hablar-memory", scenario);
        let django = comparable_rate(runs, "django-channels", scenario);
        let judged_by = ceiling_for(runs, scenario);
        let ceiling = best_rate(runs, judged_by, scenario);
        let vs_django = match (ours, django) {
            (Some(o), Some((d, _))) => Some(if d > 0.0 { o / d >= 30.0 } else { o > 0.0 }),
            _ => None,
        };
        let django_text = match django {
            Some((d, true)) => format!("{} msgs/s", fmt_rate(d)),
            Some((d, false)) => {
                format!(
                    "{} msgs/s (its peak at any p99: none of its steps met p99 ≤ 50 ms)",
                    fmt_rate(d)
                )
            }
            None => "n/a".into(),
        };
        line(
            vs_django,
            format!(
                "scenario ({scenario}): ours ≥ 30× Django Channels at p99 ≤ 50 ms: {} vs {} = {}",
                opt(ours),
                django_text,
                vs(ours, django)
            ),
        );
        let client_frames = frames_of(runs, CEILING, scenario);
        let text = if judged_by == CEILING_SAME_FRAMES {
            // Judged at equal bytes on the wire; the client-frame figure for transparency.
            let same = frames_of(runs, CEILING_SAME_FRAMES, scenario)
                .map(|f| format!(", {f}"))
                .unwrap_or_default();
            let client = best_rate(runs, CEILING, scenario);
            let client = if client.is_some() {
                format!(
                    "vs the client-frame ceiling{}: {} msgs/s, {}",
                    client_frames.map(|f| format!(", {f}")).unwrap_or_default(),
                    opt(client),
                    ratio(ours, client)
                )
            } else {
                "the client-frame ceiling: not measured".to_owned()
            };
            format!(
                "{} vs {} msgs/s (ceiling sending frames as large as ours{same}) = {} ({client})",
                opt(ours),
                opt(ceiling),
                ratio(ours, ceiling)
            )
        } else {
            format!(
                "{} vs {} msgs/s (client-frame ceiling{}; no run of the ceiling with frames as large as ours) = {}",
                opt(ours),
                opt(ceiling),
                client_frames.map(|f| format!(", {f}")).unwrap_or_default(),
                ratio(ours, ceiling)
            )
        };
        // A ceiling with no step within the bound is a failed measurement of the limit,
        // not a limit of zero: no verdict, rather than a SHORT (or PASS) against "∞".
        let verdict = match (ours, ceiling) {
            (_, Some(c)) if c <= 0.0 => None,
            (ours, ceiling) => ours.zip(ceiling).map(|(o, c)| o / c >= 0.70),
        };
        let text = if ceiling.is_some_and(|c| c <= 0.0) {
            format!("{text}; the ceiling had no step within the bound, so its run needs a look")
        } else {
            text
        };
        line(
            verdict,
            format!("scenario ({scenario}): ours ≥ 70% of the bare ceiling: {text}"),
        );
    }
    let idle = find(runs, "hablar-memory", "b").and_then(|r| r.idle.as_ref());
    line(
        idle.map(|i| i.bytes_per_connection < 16_000.0),
        format!(
            "idle memory per connection < 16 KB (embedded, {} connections): {}",
            idle.map(|i| i.connections).unwrap_or(0),
            idle.map(|i| format!("{:.1} KB", i.bytes_per_connection / 1000.0))
                .unwrap_or_else(|| "n/a".into())
        ),
    );
    // Scenario (e) is judged against one instance on the same backend: what the second
    // instance and the split membership cost. The embedded server (no Redis at all) is
    // given next to it; BENCHMARKS.md says why it is not the yardstick.
    for scenario in ["a", "b"] {
        let e = format!("e-{scenario}");
        let two = best_rate(runs, "hablar-redis-2x", &e);
        let one_redis = best_rate(runs, "hablar-redis", scenario);
        let embedded = best_rate(runs, "hablar-memory", scenario);
        let note =
            |target: &str, scenario: &str| find(runs, target, scenario).map(sweeps_note).unwrap_or_default();
        line(
            two.zip(one_redis).map(|(t, o)| t > 0.0 && o / t <= 2.0),
            format!(
                "scenario (e) on the ({scenario}) layout: two instances + Redis within 2× of one instance (one Redis instance): {}{} vs {}{} msgs/s = {} (vs the embedded server, {} msgs/s: {})",
                opt(two),
                note("hablar-redis-2x", &e),
                opt(one_redis),
                note("hablar-redis", scenario),
                ratio(two, one_redis),
                opt(embedded),
                ratio(two, embedded)
            ),
        );
    }
    md
}

fn opt(rate: Option<f64>) -> String {
    rate.map(fmt_rate).unwrap_or_else(|| "n/a".into())
}

/// Renders BENCHMARKS.md from the template and writes the chart.
pub fn write_all(
    results: &Path,
    template: &Path,
    machine: &Path,
    out: &Path,
    svg_path: &Path,
    svg_link: &str,
) -> Result<()> {
    let runs = load(results)?;
    std::fs::write(svg_path, svg(&runs))?;
    let chart = format!("![delivered msgs/s vs p99 latency]({svg_link})");
    let text = std::fs::read_to_string(template)?
        .replace("{{MACHINE}}", std::fs::read_to_string(machine)?.trim_end())
        .replace("{{RESULTS}}", tables(&runs).trim_end())
        .replace("{{CHART}}", &chart);
    std::fs::write(out, text)?;
    Ok(())
}
