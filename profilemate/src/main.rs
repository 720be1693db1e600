//! The `profilemate` command line.
//!
//! Owns parsing the arguments, printing (a session's summary and path, doctor and report
//! lines) and the exit status; the work itself is the library's.

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
    /// A live view of a running server (steps/s, GPU time by phase, batches, queues, KV cache,
    /// top operations and functions), refreshed every second; q or Ctrl-C detaches. Nothing
    /// is written unless --out is given. Without a terminal, prints a text block per second.
    Top(TopArgs),
    /// Check whether an attach can work here (kernel, privileges, output directory) and, with
    /// --pid, on that process tree (CUDA libraries, Python, vLLM, seccomp, debug registers,
    /// /metrics); nothing is attached to the target. Exit status 1 when any check fails.
    Doctor(DoctorArgs),
    /// On a GPU machine: run kernels of known length in the patterns vLLM uses while tracing
    /// ourselves through the attach's probes, and write the machine's wake-up latency, launch
    /// latency and probe costs to the calibration file attach reads.
    Calibrate(CalibrateArgs),
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
    /// The calibration file written by `profilemate calibrate` on this machine [default:
    /// /var/lib/profilemate/calibration.json for root, else
    /// $XDG_STATE_HOME/profilemate/calibration.json, used when present]; a file named here
    /// must be valid or the session does not start.
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,
    /// Do not write report.html, trace.json and cpu_profile.speedscope.json at the end
    /// (`profilemate report DIR` writes them later).
    #[arg(long)]
    no_report: bool,
}

#[derive(clap::Args)]
struct TopArgs {
    /// Any pid of the server (its descendants are followed, as by attach).
    #[arg(long)]
    pid: u32,
    /// Also write the session into this base directory, as attach does (default: nothing is
    /// written).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Watch only the given pid, not its descendants.
    #[arg(long)]
    no_children: bool,
    /// Python stack samples per second of CPU time of each target thread; 0 turns the
    /// operation and function tables off.
    #[arg(long, default_value_t = 199, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    sample_hz: u64,
    /// Polls per second of vLLM's scheduler state (queues, KV cache); 0 turns them off.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=1000))]
    state_hz: u64,
    /// The calibration file (as for attach).
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,
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

#[derive(clap::Args)]
struct CalibrateArgs {
    /// The GPU (CUDA device ordinal) to calibrate.
    #[arg(long, default_value_t = 0)]
    device: u32,
    /// Waits measured per pattern (each kernel length of the exactness sweep gets a fifth).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=100_000))]
    samples: u64,
    /// Where to write the calibration [default: where attach looks: /var/lib/profilemate/
    /// calibration.json for root, else $XDG_STATE_HOME/profilemate/calibration.json].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct DoctorArgs {
    /// A pid of the server to check (its descendants too, as attach follows them).
    #[arg(long)]
    pid: Option<u32>,
    /// Check only the given pid, not its descendants.
    #[arg(long)]
    no_children: bool,
    /// The output base directory to check [default: $VLLM_PROFILING_DIR or /tmp/vllm_profiling].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the report as JSON (one object: checks with group, name, pid, status, detail, fix).
    #[arg(long)]
    json: bool,
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
        calibration: args.calibration,
        report: !args.no_report,
    };
    let quiet = cfg.quiet;
    let finished = session::run(&cfg, &mut |a| {
        if !quiet {
            profilemate::say!(
                "profilemate: attached to {} process(es) ({} with Python stacks), {} probes; writing to {}; Ctrl-C to stop",
                a.processes,
                a.python,
                a.probes,
                a.dir.display()
            );
        }
    })?;
    let outcome = say_and_detach(&cfg, finished);
    match outcome.failure {
        Some(why) => anyhow::bail!("{why} (the session is in {})", outcome.dir.display()),
        None => Ok(()),
    }
}

/// Prints a finished session's summary and path, detaches its probes (slow: the results
/// are out first), then writes and names its report.
fn say_and_detach(cfg: &AttachConfig, finished: session::Finished) -> session::SessionOutcome {
    if !cfg.quiet {
        for line in &finished.outcome.summary {
            profilemate::say!("  {line}");
        }
    }
    // The path is the one line a script reads; the session is complete whether or not it can
    // be printed.
    let dir = finished.outcome.dir.clone();
    if let Err(e) = console::out_line(&format!("session: {}", dir.display())) {
        profilemate::say!(
            "warning: cannot print the session path to stdout ({e}); the session is in {}",
            dir.display()
        );
    }
    let n = finished.attached_probes();
    if !cfg.quiet {
        profilemate::say!("detaching {n} probes...");
    }
    let outcome = finished.detach();
    // After the detach (the target runs unprobed meanwhile) and after every session file:
    // a failure here is a warning, never a lost session or another exit status.
    if cfg.report {
        for line in profilemate::report::after_session(&dir) {
            if !cfg.quiet || line.starts_with("warning") {
                profilemate::say!("{line}");
            }
        }
    }
    outcome
}

/// `profilemate top`: attach's session with attach's defaults, viewed live.
fn top(args: TopArgs) -> Result<()> {
    let keep = args.out.is_some();
    let cfg = AttachConfig {
        pid: args.pid,
        duration: None,
        out_dir: args.out.unwrap_or_else(AttachConfig::default_out_dir),
        timing: TimingMode::Events,
        follow_children: !args.no_children,
        kernels: false,
        driver_twins: false,
        wait: false,
        rescan_interval: Duration::from_millis(500),
        ring_bytes: 32 << 20,
        queue_bytes: 1024 << 20,
        quiet: true,
        sample_hz: args.sample_hz,
        cuda_stacks: profilemate::probes::CudaStacks::Boundaries,
        state_hz: args.state_hz,
        breakpoints: true,
        allow_uretprobes: false,
        calibration: args.calibration,
        report: true,
    };
    profilemate::top::run(cfg, keep)
}

/// Runs the doctor's checks and prints them; `Ok(false)` when a check failed.
fn doctor(args: DoctorArgs) -> Result<bool> {
    let report = profilemate::doctor::run(&profilemate::doctor::Options {
        pid: args.pid,
        children: !args.no_children,
        out_dir: args.out.unwrap_or_else(AttachConfig::default_out_dir),
    });
    if args.json {
        let json = serde_json::to_string_pretty(&report)?;
        console::out_line(&json).context("cannot write the report to stdout")?;
    } else {
        for line in report.table() {
            console::out_line(&line).context("cannot write the report to stdout")?;
        }
    }
    Ok(!report.has_failures())
}

/// Measures, writes the calibration file, and prints its main figures.
fn calibrate(args: CalibrateArgs) -> Result<()> {
    let path = args
        .out
        .unwrap_or_else(profilemate::calibrate::default_path);
    console::err_line(&format!(
        "profilemate calibrate: device {}, {} waits per pattern; tracing ourselves with the attach's probes...",
        args.device, args.samples
    ));
    let cal = profilemate::calibrate::run(&profilemate::calibrate::Options {
        ordinal: args.device,
        samples: usize::try_from(args.samples).unwrap_or(1000),
    })?;
    cal.save(&path)?;
    for line in calibration_lines(&cal) {
        console::out_line(&line).context("cannot write to stdout")?;
    }
    console::out_line(&format!("calibration: {}", path.display())).context("cannot write to stdout")
}

/// The figures of a calibration, one per line.
fn calibration_lines(c: &profilemate::calibrate::Calibration) -> Vec<String> {
    let m = |x: &profilemate::calibrate::file::Micros| {
        format!(
            "P50 {} / P95 {} / P99 {} µs (n={})",
            x.p50, x.p95, x.p99, x.count
        )
    };
    let w = &c.wake_up_us;
    let mut lines = vec![
        format!(
            "gpu: {} (driver API {}, {})",
            c.gpu.name, c.gpu.driver_api_version, c.gpu.driver_library
        ),
        format!("wake-up (wait return - GPU end), all: {}", m(&w.all)),
    ];
    for (name, v) in [
        ("event sync one step later", &w.event_sync_next_step),
        (
            "blocking-sync event one step later (not in all)",
            &w.blocking_event_sync_next_step,
        ),
        ("graph replay + event sync", &w.graph_replay),
        ("stream sync", &w.stream_sync),
    ] {
        if let Some(v) = v {
            lines.push(format!("  {name}: {}", m(v)));
        }
    }
    let p = &c.probe_cost;
    lines.extend([
        format!("launch latency: {}", m(&c.launch_latency_us)),
        format!(
            "probe cost per hit: uprobe {} µs, uprobe+uretprobe {} µs, uretprobe {} µs, hw breakpoint {}",
            p.uprobe_us,
            p.uprobe_and_uretprobe_us,
            p.uretprobe_us,
            p.hw_breakpoint_us.map_or_else(
                || format!("n/a ({})", p.hw_breakpoint_error.as_deref().unwrap_or("?")),
                |v| format!("{v} µs")
            )
        ),
        format!(
            "smallest reliably exact wait: {}",
            c.min_reliably_exact_wait_us
                .map_or_else(|| "none in the sweep".to_owned(), |v| format!("{v} µs"))
        ),
    ]);
    lines
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
        Command::Attach(a) => attach(a).map(|()| true),
        Command::Top(a) => top(a).map(|()| true),
        Command::Doctor(a) => doctor(a),
        Command::Calibrate(a) => calibrate(a).map(|()| true),
        Command::Report(a) => report(&a).map(|()| true),
        Command::VllmNames => vllm_names().map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            console::err_line(&format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}
