//! The `profilemate` command line.

#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use profilemate::{
    config::{AttachConfig, TimingMode},
    output::console,
    session,
};

#[derive(Parser)]
#[command(
    name = "profilemate",
    version,
    about = "Profile a running vLLM server from outside (eBPF; no restart, no code injected)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to a running process tree and record its CUDA activity until stopped.
    Attach(AttachArgs),
    /// Write report.html (one self-contained page: plots, findings, losses, flame graph),
    /// trace.json (Perfetto / chrome://tracing) and cpu_profile.speedscope.json from a
    /// session directory (any one, also a copy from another machine).
    Report(ReportArgs),
    /// Print, as JSON, every vLLM name (module, class, function, attribute, enum value) this
    /// build reads, for checking against a vLLM release's source.
    VllmNames,
}

#[derive(clap::Args)]
struct AttachArgs {
    /// Any pid of the server (the API server's children, EngineCore and workers, are followed).
    #[arg(long)]
    pid: u32,
    /// Stop after this long (e.g. 30s, 5m; at most 30 days); default: until Ctrl-C, SIGTERM,
    /// SIGHUP or SIGQUIT.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Base output directory [default: $VLLM_PROFILING_DIR or /tmp/vllm_profiling].
    #[arg(long)]
    out: Option<PathBuf>,
    /// How a step's GPU completion is detected.
    #[arg(long, value_enum, default_value = "events")]
    timing: TimingMode,
    /// Profile only the given pid, not its descendants.
    #[arg(long)]
    no_children: bool,
    /// Also probe every kernel launch (cuLaunchKernel[Ex]); adds ~2 µs per launch to the target.
    #[arg(long)]
    kernels: bool,
    /// Also probe the driver-level twins of runtime calls in processes that map libcudart
    /// (to see direct driver use, e.g. NCCL's own events; doubles those probe hits).
    #[arg(long)]
    driver_twins: bool,
    /// Keep watching when no CUDA library is loaded yet.
    #[arg(long)]
    wait: bool,
    /// Ring buffer size in MiB (power of two).
    #[arg(long, default_value_t = 32)]
    ring_mb: u32,
    /// Most memory (MiB) the records read from the ring but not yet processed may take; past
    /// half of it sampled stacks are shed, at it records are dropped (both counted).
    #[arg(long, default_value_t = 1024)]
    queue_mb: usize,
    /// Rescan interval for new processes and libraries (ms, 10 to 60000).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    rescan_ms: u64,
    /// Print only the session directory at the end.
    #[arg(long, short)]
    quiet: bool,
    /// Python stack samples per second of CPU time of each target thread (cpu-clock);
    /// 0 turns sampling off.
    #[arg(long, default_value_t = 199)]
    sample_hz: u64,
    /// At which CUDA calls the Python stack is walked: step boundaries (graph launches,
    /// event records and waits, syncs, copies, the first kernel launch after one), all calls,
    /// or none.
    #[arg(long, value_enum, default_value = "boundaries")]
    cuda_stacks: profilemate::probes::CudaStacks,
    /// Polls per second of vLLM's scheduler state (queues, KV cache blocks), read from the
    /// target's live objects; 0 turns it off.
    #[arg(long, default_value_t = 10)]
    state_hz: u64,
    /// Do not watch vLLM's scheduler methods (schedule, update_from_output, preemption,
    /// add_request) with hardware breakpoints; preemptions and arrivals then come from the
    /// step outputs and polls only.
    #[arg(long)]
    no_breakpoints: bool,
    /// Attach return probes even into a target under seccomp on Linux 6.11-6.13, where a
    /// filter that does not allow the `uretprobe` syscall kills the target (by default such a
    /// target gets entry probes only).
    #[arg(long)]
    allow_uretprobes: bool,
    /// Do not write report.html, trace.json and cpu_profile.speedscope.json at the end
    /// (`profilemate report DIR` writes them later).
    #[arg(long)]
    no_report: bool,
}

#[derive(clap::Args)]
struct ReportArgs {
    /// The session directory (session_YYYYmmdd_HHMMSS).
    session_dir: PathBuf,
    /// Where to write the page [default: SESSION_DIR/report.html]; trace.json and
    /// cpu_profile.speedscope.json go beside it.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The longest `--duration`: a session is a profile, not a service; longer values are
/// surely a typo (and past about 10^11 years they overflow the clock).
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// `--duration`: a humantime span, more than zero and at most [`MAX_DURATION`].
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 5m, 2h)"))?;
    if d.is_zero() {
        return Err("must be more than zero; leave --duration out to run until Ctrl-C".into());
    }
    if d > MAX_DURATION {
        return Err(format!(
            "must be at most 30 days ({}); leave --duration out to run until Ctrl-C",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

fn attach(args: AttachArgs) -> Result<()> {
    if args.sample_hz > 10_000 {
        anyhow::bail!(
            "--sample-hz must be at most 10000 (got {}); each sample walks the Python stack",
            args.sample_hz
        );
    }
    if !args.ring_mb.is_power_of_two() || args.ring_mb > 1024 {
        anyhow::bail!(
            "--ring-mb must be a power of two between 1 and 1024 (got {})",
            args.ring_mb
        );
    }
    let cfg = AttachConfig {
        pid: args.pid,
        duration: args.duration,
        out_dir: args.out.unwrap_or_else(AttachConfig::default_out_dir),
        timing: args.timing,
        follow_children: !args.no_children,
        kernels: args.kernels,
        driver_twins: args.driver_twins,
        wait: args.wait,
        rescan_interval: Duration::from_millis(args.rescan_ms),
        ring_bytes: args.ring_mb << 20,
        queue_bytes: args.queue_mb.max(1) << 20,
        quiet: args.quiet,
        sample_hz: args.sample_hz,
        cuda_stacks: args.cuda_stacks,
        state_hz: args.state_hz.min(1000),
        breakpoints: !args.no_breakpoints,
        allow_uretprobes: args.allow_uretprobes,
        report: !args.no_report,
    };
    let outcome = session::run(&cfg)?;
    match outcome.failure {
        Some(why) => anyhow::bail!("{why} (the session is in {})", outcome.dir.display()),
        None => Ok(()),
    }
}

/// `profilemate report`: writes the page, the trace and the speedscope file, and says where.
fn report(args: &ReportArgs) -> Result<()> {
    let w = profilemate::report::write_all(
        &args.session_dir,
        args.out.as_deref(),
        profilemate::report::Create::Replace,
    )?;
    for line in profilemate::report::written_lines(&w) {
        console::err_line(&line);
    }
    console::out_line(&format!("report: {}", w.report.display()))
        .context("cannot write the report path to stdout")
}

/// Prints the vLLM names manifest as JSON.
fn vllm_names() -> Result<()> {
    let json = serde_json::to_string_pretty(&profilemate::vllm::names::manifest())?;
    console::out_line(&json).context("cannot write the manifest to stdout")
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attach(a) => attach(a),
        Command::Report(a) => report(&a),
        Command::VllmNames => vllm_names(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            console::err_line(&format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}
