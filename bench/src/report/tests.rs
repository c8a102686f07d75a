//! Tests of the report: bounds, median sweeps, the tables, the verdicts and the chart.

use super::*;
use crate::stats::Latency;

fn step(delivered: f64, expected: f64, p99: f64) -> StepResult {
    StepResult {
        delivered_per_sec: delivered,
        expected_per_sec: expected,
        latency: Latency {
            count: 10,
            p99_ms: p99,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn best_is_the_fastest_step_within_the_latency_bound() {
    let steps = vec![
        step(1000.0, 1000.0, 2.0),
        step(4000.0, 4000.0, 30.0),
        step(7000.0, 8000.0, 400.0),
    ];
    assert_eq!(best(&steps).map(|s| s.delivered_per_sec), Some(4000.0));
}

#[test]
fn a_step_that_loses_messages_is_not_within_bounds() {
    assert!(!within_bounds(&step(900.0, 1000.0, 1.0)));
    assert!(within_bounds(&step(990.0, 1000.0, 1.0)));
    assert!(best(&[step(10.0, 100.0, 1.0)]).is_none());
}

#[test]
fn ratios_read_as_multiples() {
    assert_eq!(ratio(Some(300.0), Some(10.0)), "30.00×");
    assert_eq!(ratio(Some(1.0), None), "n/a");
    assert!(ratio(Some(1.0), Some(0.0)).starts_with('∞'));
}

/// The result of one sweep of `target` in `scenario`, made of `steps`.
fn result(target: &str, scenario: &str, steps: Vec<StepResult>) -> RunResult {
    RunResult {
        target: target.into(),
        scenario: scenario.into(),
        steps,
        ..Default::default()
    }
}

#[test]
fn the_chart_has_one_line_per_sweep_and_the_bound() {
    let run = result(
        "hablar-memory",
        "a",
        vec![step(1000.0, 1000.0, 2.0), step(2000.0, 2000.0, 3.0)],
    );
    let svg = svg(&[run]);
    assert!(svg.starts_with("<svg"));
    assert_eq!(svg.matches("<polyline").count(), 1);
    assert_eq!(svg.matches("<circle").count(), 2);
    assert!(svg.contains("p99 = 50 ms"));
}

#[test]
fn two_instances_are_judged_against_one_redis_instance_with_embedded_beside() {
    let mk = |target: &str, scenario: &str, rate: f64| result(target, scenario, vec![step(rate, rate, 40.0)]);
    let runs = vec![
        mk("hablar-memory", "a", 600_000.0),
        mk("hablar-redis", "a", 300_000.0),
        mk("hablar-redis-2x", "e-a", 160_000.0),
        mk("hablar-memory", "b", 60_000.0),
        mk("hablar-redis", "b", 40_000.0),
        mk("hablar-redis-2x", "e-b", 19_000.0),
    ];
    let text = verdicts(&runs);
    assert!(
        text.contains(
            "**PASS**: scenario (e) on the (a) layout: two instances + Redis within 2× of one \
             instance (one Redis instance): 160k vs 300k msgs/s = 0.53× (vs the embedded \
             server, 600k msgs/s: 0.27×)"
        ),
        "{text}"
    );
    assert!(
        text.contains("**SHORT**: scenario (e) on the (b) layout: two instances + Redis within 2× of one instance (one Redis instance): 19k vs 40k msgs/s = 0.47×"),
        "{text}"
    );
    let without_one = &runs[..1];
    assert!(verdicts(without_one).contains("**NOT MEASURED**: scenario (e) on the (a) layout"));
}

#[test]
fn a_baseline_that_never_meets_the_bound_is_compared_at_its_peak_and_said_so() {
    let mk = |target: &str, steps: Vec<StepResult>| result(target, "a", steps);
    let runs = vec![
        mk("hablar-memory", vec![step(300_000.0, 300_000.0, 20.0)]),
        mk(
            "django-channels",
            vec![step(600.0, 1000.0, 900.0), step(800.0, 2000.0, 1900.0)],
        ),
    ];
    let text = verdicts(&runs);
    assert!(
        text.contains("**PASS**: scenario (a): ours ≥ 30× Django"),
        "{text}"
    );
    assert!(text.contains("375.00× (vs its peak at any p99)"), "{text}");
    let table = tables(&runs);
    assert!(
        table.contains("| Django Channels (daphne + channels_redis) | a | none within bounds"),
        "{table}"
    );
}

#[test]
fn verdicts_say_pass_or_short() {
    let mk = |target: &str, rate: f64| result(target, "a", vec![step(rate, rate, 5.0)]);
    let runs = vec![
        mk("hablar-memory", 300_000.0),
        mk("django-channels", 5_000.0),
        mk("ceiling", 500_000.0),
    ];
    let text = verdicts(&runs);
    assert!(
        text.contains("**PASS**: scenario (a): ours ≥ 30× Django"),
        "{text}"
    );
    // Without a same-frame run the client-frame ceiling judges, and the line says so.
    assert!(
        text.contains(
            "**SHORT**: scenario (a): ours ≥ 70% of the bare ceiling: 300k vs 500k msgs/s \
             (client-frame ceiling; no run of the ceiling with frames as large as ours) = 0.60×"
        ),
        "{text}"
    );
    let table = tables(&runs);
    assert!(table.contains("| 0.60× (client-frame ceiling) |"), "{table}");
}

#[test]
fn a_ceiling_without_a_step_within_the_bound_gives_no_verdict() {
    let mk = |target: &str, rate: f64, p99: f64| result(target, "a", vec![step(rate, rate, p99)]);
    let runs = vec![
        mk("hablar-memory", 300_000.0, 5.0),
        mk("ceiling-same-frames", 500_000.0, 80.0),
    ];
    let text = verdicts(&runs);
    assert!(
        text.contains("**NOT MEASURED**: scenario (a): ours ≥ 70% of the bare ceiling")
            && text.contains("the ceiling had no step within the bound"),
        "{text}"
    );
}

fn run_with_frames(target: &str, rate: f64, frame_bytes: f64) -> RunResult {
    let frames = StepResult {
        mean_frame_bytes: frame_bytes,
        ..step(rate, rate, 5.0)
    };
    result(target, "a", vec![frames])
}

#[test]
fn the_ceiling_goal_is_judged_at_equal_frame_sizes_and_shows_the_client_frame_ratio() {
    let runs = vec![
        run_with_frames("hablar-memory", 300_000.0, 301.0),
        run_with_frames("ceiling", 500_000.0, 160.0),
        run_with_frames("ceiling-same-frames", 400_000.0, 301.0),
    ];
    let text = verdicts(&runs);
    // 300k / 400k = 0.75 passes; against the client-frame ceiling (0.60) it would not.
    assert!(
        text.contains(
            "**PASS**: scenario (a): ours ≥ 70% of the bare ceiling: 300k vs 400k msgs/s \
             (ceiling sending frames as large as ours, ~301 B frames) = 0.75× \
             (vs the client-frame ceiling, ~160 B frames: 500k msgs/s, 0.60×)"
        ),
        "{text}"
    );
    let table = tables(&runs);
    let row = |label: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| {label} | a | **")))
            .unwrap_or_else(|| panic!("no row for {label} in {table}"))
            .to_owned()
    };
    assert!(row("hablar-server, embedded").ends_with("| 0.75× |"), "{table}");
    // Neither ceiling is put against the other.
    assert!(
        row("bare ceiling (tokio broadcast)").ends_with("| — |"),
        "{table}"
    );
    assert!(
        row("bare ceiling, frames as large as hablar-server's").ends_with("| — |"),
        "{table}"
    );
    // Every step shows the size of what it delivered.
    assert!(
        table.contains("| ceiling-same-frames | a | 0.0 | 400000 | 400000 | 301 |"),
        "{table}"
    );
    let chart = svg(&runs);
    assert_eq!(chart.matches("<polyline").count(), 3);
    assert!(chart.contains(r##"stroke="#17becf""##), "{chart}");
}

#[test]
fn results_written_before_frame_sizes_were_measured_still_load() {
    let mut run = serde_json::to_value(run_with_frames("ceiling", 1000.0, 160.0)).expect("json");
    run.as_object_mut().expect("object").remove("frame_bytes");
    run["steps"][0]
        .as_object_mut()
        .expect("object")
        .remove("mean_frame_bytes");
    let old: RunResult = serde_json::from_value(run).expect("older results load");
    assert_eq!(old.frame_bytes, None);
    assert_eq!(old.steps[0].mean_frame_bytes, 0.0);
    // Unknown, not zero-sized: the sizes are left out of the text.
    assert_eq!(mean_frame_bytes(&old), None);
    assert!(tables(&[old]).contains("| ceiling | a | 0.0 | 1000 | 1000 | — |"));
}

#[test]
fn a_runs_frame_size_is_the_mean_over_its_deliveries() {
    let mut run = run_with_frames("hablar-memory", 1000.0, 300.0);
    run.steps.push(StepResult {
        mean_frame_bytes: 310.0,
        latency: Latency {
            count: 30,
            ..Default::default()
        },
        ..Default::default()
    });
    // 10 frames of 300 B and 30 of 310 B.
    assert_eq!(mean_frame_bytes(&run), Some(307.5));
}

#[test]
fn a_system_swept_several_times_is_reported_by_its_median_sweep() {
    let dir = std::env::temp_dir().join(format!("hablar-report-sweeps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    // (system, scenario, sweep, figure, p99), written under the names bench.sh gives.
    let sweeps = [
        ("hablar-redis", "a", 1, 905_000.0, 40.0),
        ("hablar-redis", "a", 2, 1_280_000.0, 40.0),
        ("hablar-redis", "a", 3, 640_000.0, 40.0),
        // Its second sweep has no step within the bound: a figure of 0, not skipped.
        ("hablar-redis-2x", "e-a", 1, 320_000.0, 40.0),
        ("hablar-redis-2x", "e-a", 2, 640_000.0, 80.0),
        ("hablar-redis-2x", "e-a", 3, 538_000.0, 40.0),
        ("hablar-memory", "a", 1, 1_522_000.0, 40.0),
    ];
    for (target, scenario, sweep, rate, p99) in sweeps {
        let run = result(target, scenario, vec![step(rate, rate, p99)]);
        let suffix = if sweep > 1 {
            format!(".sweep{sweep}")
        } else {
            String::new()
        };
        let name = format!("{target}-{scenario}{suffix}.json");
        std::fs::write(dir.join(name), serde_json::to_string(&run).expect("json")).expect("write");
    }
    let runs = load(&dir).expect("load");
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(runs.len(), 3, "one result per system and scenario");
    let one = find(&runs, "hablar-redis", "a").expect("one instance");
    assert_eq!(figure(one), 905_000.0);
    assert_eq!(one.sweep_figures, vec![905_000.0, 1_280_000.0, 640_000.0]);
    let two = find(&runs, "hablar-redis-2x", "e-a").expect("two instances");
    assert_eq!(figure(two), 320_000.0);
    assert_eq!(two.sweep_figures, vec![320_000.0, 0.0, 538_000.0]);
    // Swept once: as it was, with no sweep list.
    assert!(find(&runs, "hablar-memory", "a")
        .expect("embedded")
        .sweep_figures
        .is_empty());

    let text = verdicts(&runs);
    assert!(
        text.contains(
            "**SHORT**: scenario (e) on the (a) layout: two instances + Redis within 2× of one \
             instance (one Redis instance): 320k (median of 3 sweeps: 320k / 0 / 538k) vs 905k \
             (median of 3 sweeps: 905k / 1280k / 640k) msgs/s = 0.35×"
        ),
        "{text}"
    );
    let table = tables(&runs);
    assert!(
        table.contains(
            "| hablar-server, Redis, 1 instance | a | **905k** (median of 3 sweeps: 905k / 1280k / 640k) |"
        ),
        "{table}"
    );
}

#[test]
fn of_two_sweeps_the_lower_is_kept() {
    let mk = |rate: f64| result("hablar-redis", "a", vec![step(rate, rate, 40.0)]);
    let kept = median_sweep(vec![mk(900.0), mk(400.0)]);
    assert_eq!(figure(&kept), 400.0);
    assert_eq!(kept.sweep_figures, vec![900.0, 400.0]);
    let single = median_sweep(vec![mk(700.0)]);
    assert_eq!(figure(&single), 700.0);
    assert!(single.sweep_figures.is_empty());
}
