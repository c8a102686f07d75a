//! `hablar-bench`: runs one scenario against one system and writes its results as JSON,
//! or turns a directory of results into BENCHMARKS.md and its chart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hablar_bench::admin::{self, Layout};
use hablar_bench::load::{self, IdleResult, Run, RunResult, Sweep, Target};
use hablar_bench::payload::Padding;
use hablar_bench::{pacing, procfs, report};

#[derive(Parser)]
#[command(name = "hablar-bench", about = "Hablar's load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect a layout (idle memory), then sweep publish rates (fan-out latency).
    Fanout(FanoutArgs),
    /// Connect/disconnect cycles.
    Churn(ChurnArgs),
    /// Results directory → BENCHMARKS.md and the SVG chart.
    Report(ReportArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Name of the system under test in the results (`hablar-memory`, …).
    #[arg(long)]
    target_name: String,
    /// Scenario id (`a`, `b`, `d`, `e-a`, …).
    #[arg(long)]
    scenario: String,
    /// One line describing the scenario.
    #[arg(long, default_value = "")]
    description: String,
    /// WebSocket base URL, repeatable: members are split across them.
    #[arg(long = "ws", required = true)]
    ws: Vec<String>,
    /// Pid of a process of the system under test, repeatable (RSS and CPU are summed).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Wait for hablar-server's `ready` before a connection counts as connected.
    #[arg(long)]
    wait_ready: bool,
    /// Origin header to send.
    #[arg(long)]
    origin: Option<String>,
    /// JWT signing key.
    #[arg(long, env = "HABLAR_JWT_SECRET", default_value = "hablar-bench-secret")]
    secret: String,
    /// Seed the layout through hablar-server's admin API at this address first.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Admin API key.
    #[arg(long, env = "HABLAR_ADMIN_KEY", default_value = "hablar-bench-admin")]
    admin_key: String,
    /// Chat id prefix of the layout.
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Chats.
    #[arg(long)]
    chats: usize,
    /// Members per chat.
    #[arg(long)]
    members: usize,
    /// Results file (JSON).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Connections opened at a time.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Give up on one connect after this many seconds.
    #[arg(long, default_value_t = 30)]
    connect_timeout_secs: u64,
    /// Seconds the connections are held idle before the idle RSS is read.
    #[arg(long, default_value_t = 3)]
    idle_secs: u64,
    /// First offered publish rate (messages/s over all chats).
    #[arg(long)]
    start_rate: f64,
    /// Each step offers this factor more.
    #[arg(long, default_value_t = 2.0)]
    factor: f64,
    /// Highest rate offered.
    #[arg(long)]
    max_rate: f64,
    /// Measurement window per step, seconds.
    #[arg(long, default_value_t = 3.0)]
    window_secs: f64,
    /// Longest drain after a step, seconds.
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,
    /// Content bytes per message.
    #[arg(long, default_value_t = 100)]
    content_bytes: usize,
    /// Pad each message's content so that the frame sent is exactly this many bytes
    /// (overrides --content-bytes): to make a system that forwards the client's frame
    /// deliver frames as large as a system that wraps the content in an envelope.
    #[arg(long)]
    frame_bytes: Option<usize>,
    /// Stop the sweep after the first step with p99 above this (ms).
    #[arg(long, default_value_t = 250.0)]
    stop_p99_ms: f64,
    /// The p99 bound the figures are quoted at (ms).
    #[arg(long, default_value_t = 50.0)]
    bound_p99_ms: f64,
    /// Bisection steps around the bound after the sweep.
    #[arg(long, default_value_t = 2)]
    refine: usize,
    /// Trials of a step whose p99 is near the bound (within ×1.5 either way); the median
    /// trial's figures are kept
    #[arg(long, default_value_t = 3)]
    trials: usize,
    /// Exit non-zero unless every connection connected, every step delivered, and no
    /// error was counted (the smoke test).
    #[arg(long)]
    strict: bool,
}

#[derive(Args)]
struct ChurnArgs {
    #[command(flatten)]
    common: Common,
    /// Parallel connect/close loops.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of churn.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
}

#[derive(Args)]
struct ReportArgs {
    /// Directory of results JSON files.
    #[arg(long)]
    results: PathBuf,
    /// Markdown template with {{MACHINE}}, {{RESULTS}} and {{CHART}}.
    #[arg(long)]
    template: PathBuf,
    /// Text file describing the machine (lscpu, kernel, versions).
    #[arg(long)]
    machine: PathBuf,
    /// Where BENCHMARKS.md goes.
    #[arg(long)]
    out: PathBuf,
    /// Where the SVG chart goes (linked from the markdown by its file name).
    #[arg(long)]
    svg: PathBuf,
    /// The chart's path as the markdown links it.
    #[arg(long)]
    svg_link: String,
}

fn target(common: &Common) -> Target {
    Target {
        ws: common.ws.clone(),
        wait_ready: common.wait_ready,
        origin: common.origin.clone(),
        secret: common.secret.clone(),
        pids: common.pids.clone(),
    }
}

fn layout(common: &Common) -> Layout {
    Layout {
        prefix: common.prefix.clone(),
        chats: common.chats,
        members: common.members,
    }
}

fn base_result(common: &Common) -> RunResult {
    RunResult {
        target: common.target_name.clone(),
        scenario: common.scenario.clone(),
        description: common.description.clone(),
        chats: common.chats,
        members: common.members,
        ..Default::default()
    }
}

fn write(common: &Common, result: &mut RunResult) -> hablar_bench::Result<()> {
    let me = procfs::own();
    result.generator_cpu_secs = me.cpu_secs;
    result.generator_rss_kb = me.rss_kb;
    if let Some(out) = &common.out {
        std::fs::write(out, serde_json::to_string_pretty(result)?)?;
    }
    Ok(())
}

async fn seed(common: &Common) -> hablar_bench::Result<()> {
    if let Some(addr) = common.admin {
        let t0 = std::time::Instant::now();
        admin::seed(addr, &common.admin_key, &layout(common)).await?;
        eprintln!(
            "  seeded {} chats × {} members in {:.1} s",
            common.chats,
            common.members,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn fanout(args: FanoutArgs) -> hablar_bench::Result<bool> {
    let common = &args.common;
    // Checked before anything connects, so a bad size fails at once.
    let padding = match args.frame_bytes {
        Some(bytes) => Padding::frame(bytes)?,
        None => Padding::Content(args.content_bytes),
    };
    eprintln!(
        "[{}] scenario {}: {} chats × {} members, {}",
        common.target_name,
        common.scenario,
        common.chats,
        common.members,
        match padding {
            Padding::Frame(bytes) => format!("{bytes} B frames"),
            Padding::Content(bytes) => format!("{bytes} B content"),
        }
    );
    seed(common).await?;
    let target = target(common);
    let layout = layout(common);
    let run = Run::new();
    let mut result = base_result(common);
    result.content_bytes = args.content_bytes;
    result.frame_bytes = args.frame_bytes;

    let rss_before = load::system_usage(&target).rss_kb;
    let (mut members, connect) = load::connect_layout(
        &run,
        &target,
        &layout,
        args.connect_concurrency,
        Duration::from_secs(args.connect_timeout_secs),
    )
    .await;
    eprintln!(
        "  connected {}/{} in {:.1} s ({:.0}/s, p99 {:.1} ms){}",
        connect.connected,
        connect.attempted,
        connect.secs,
        connect.per_sec,
        connect.latency.p99_ms,
        connect
            .first_error
            .as_deref()
            .map(|e| format!(", first error: {e}"))
            .unwrap_or_default()
    );
    let connected_all = connect.errors == 0;
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let rss_after = load::system_usage(&target).rss_kb;
    let idle = IdleResult {
        connections: connect.connected,
        rss_before_kb: rss_before,
        rss_after_kb: rss_after,
        bytes_per_connection: (rss_after.saturating_sub(rss_before) * 1024) as f64
            / connect.connected.max(1) as f64,
        dropped: run.counters.unexpected_closes.load(Ordering::Relaxed),
    };
    eprintln!(
        "  idle: RSS {} → {} KiB, {:.0} B per connection, {} dropped",
        idle.rss_before_kb, idle.rss_after_kb, idle.bytes_per_connection, idle.dropped
    );
    result.connect = Some(connect);
    result.idle = Some(idle);

    let sweep = Sweep {
        rates: pacing::sweep(args.start_rate, args.factor, args.max_rate),
        window: Duration::from_secs_f64(args.window_secs),
        drain: Duration::from_secs_f64(args.drain_secs),
        padding,
        stop_p99_ms: args.stop_p99_ms,
        bound_p99_ms: args.bound_p99_ms,
        refine: args.refine,
        trials: args.trials.max(1),
    };
    result.steps = load::sweep(&run, &target, &mut members, &sweep).await;
    run.counters.closing.store(true, Ordering::Relaxed);
    drop(members);
    result.stale = run.recorder.stale();
    write(common, &mut result)?;
    let ok = connected_all
        && !result.steps.is_empty()
        && result
            .steps
            .iter()
            .all(|s| s.delivered_per_sec > 0.0 && s.errors == 0 && s.missing == 0);
    Ok(!args.strict || ok)
}

async fn churn(args: ChurnArgs) -> hablar_bench::Result<bool> {
    let common = &args.common;
    eprintln!(
        "[{}] scenario {}: churn, {} loops",
        common.target_name, common.scenario, args.concurrency
    );
    seed(common).await?;
    let mut result = base_result(common);
    let churn = load::churn(
        &target(common),
        &layout(common),
        args.concurrency,
        Duration::from_secs(args.duration_secs),
    )
    .await;
    eprintln!(
        "  {} cycles, {:.0}/s, connect p50 {:.1} ms p99 {:.1} ms, {} errors{}",
        churn.cycles,
        churn.per_sec,
        churn.latency.p50_ms,
        churn.latency.p99_ms,
        churn.errors,
        churn
            .first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    result.churn = Some(churn);
    write(common, &mut result)?;
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Report(args) = cli.command {
        return match report::write_all(
            &args.results,
            &args.template,
            &args.machine,
            &args.out,
            &args.svg,
            &args.svg_link,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("hablar-bench report: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Fanout(args) => fanout(args).await,
            Command::Churn(args) => churn(args).await,
            Command::Report(_) => unreachable!("handled above"),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("hablar-bench: the run was not clean (see above)");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("hablar-bench: {err}");
            ExitCode::FAILURE
        }
    }
}
