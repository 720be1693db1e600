//! `cargo xtask bench`: target throughput with and without profilemate attached, the
//! events/s the pipeline sustains, tracer CPU per event and RSS. Needs root (it attaches).
//!
//! Method: each case runs the fixture target over the fake CUDA libraries (no ground-truth
//! log, so the fake adds no I/O), once without a tracer and once with `profilemate attach`
//! already waiting for the target (`--wait`), and compares the target's own throughput.
//! Tracer CPU is utime+stime of the profilemate process from /proc, RSS is its VmHWM.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{demo::profilemate_command, fake_cuda_dir, is_root, release_dir, root};

/// Options.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Hot-loop iterations (3 runtime calls each).
    #[arg(long, default_value_t = 300_000)]
    iterations: u64,
    /// Steps of the vLLM-shaped loop.
    #[arg(long, default_value_t = 3000)]
    steps: u64,
    /// Repetitions of each case; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Run one case only (default: all).
    #[arg(long, value_enum)]
    case: Option<Case>,
}

/// The benchmark's cases.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Case {
    /// The userspace pipeline on synthetic records.
    Pipeline,
    /// The fixture target's hot loop and vLLM-shaped step loop, detached and attached.
    Fixture,
    /// Python stack sampling on a CPU-bound loop.
    PythonSampling,
    /// Scheduler polls against the length of a real vLLM scheduler's waiting queue.
    StatePolls,
}

struct TargetRun {
    /// Target-reported or measured rate (calls/s or steps/s).
    rate: f64,
    /// Seconds between the target's `start` and `done` lines.
    seconds: f64,
}

/// Runs the fixture to completion without a tracer.
fn run_target(args: &[String]) -> Result<(TargetRun, u32)> {
    let mut child = Command::new(release_dir().join("pm-fixture"))
        .arg("--lib-dir")
        .arg(fake_cuda_dir())
        .args(args)
        .env_remove("FAKE_CUDA_LOG")
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start pm-fixture")?;
    let pid = child.id();
    let stdout = child.stdout.take().context("no stdout")?;
    let run = read_target(stdout, args)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("pm-fixture failed: {status}");
    }
    Ok((run, pid))
}

/// Reads the fixture's stdout to the end: its reported call rate (hot loop), or steps/s
/// timed from its `start` line (CUDA loaded, loop begins) to `done`.
fn read_target(stdout: std::process::ChildStdout, args: &[String]) -> Result<TargetRun> {
    let (mut start, mut rate, mut seconds) = (None, None, 0.0);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if line.contains(" start") {
            start = Some(Instant::now());
        }
        if let Some(v) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("calls_per_sec="))
        {
            rate = v.parse().ok();
        }
        if line.starts_with("done") {
            seconds = start.map_or(0.0, |r| r.elapsed().as_secs_f64());
        }
    }
    let steps: f64 = args
        .iter()
        .skip_while(|a| *a != "--steps")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let rate = rate.unwrap_or(if seconds > 0.0 { steps / seconds } else { 0.0 });
    Ok(TargetRun { rate, seconds })
}

struct TracerStats {
    cpu_sec: f64,
    rss_kb: u64,
    records: u64,
    drops: u64,
}

fn proc_cpu_sec(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

fn proc_hwm_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs the target with profilemate waiting for it; returns both sides' numbers.
fn run_attached(target_args: &[String], extra: &[&str]) -> Result<(TargetRun, TracerStats)> {
    let out = root().join("target/bench-sessions");
    // The tracer follows the fixture by pid, so start the fixture paused before loading CUDA.
    let mut args = target_args.to_vec();
    args.extend(
        [
            "--wait-before-load-ms",
            "1000",
            "--wait-after-load-ms",
            "500",
        ]
        .map(str::to_owned),
    );
    let fixture = Command::new(release_dir().join("pm-fixture"))
        .arg("--lib-dir")
        .arg(fake_cuda_dir())
        .args(&args)
        .env_remove("FAKE_CUDA_LOG")
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start pm-fixture")?;
    let fpid = fixture.id();
    let mut tracer = profilemate_command()
        .args([
            "attach",
            "--wait",
            "--quiet",
            "--rescan-ms",
            "50",
            "--pid",
            &fpid.to_string(),
            "--out",
        ])
        .arg(&out)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start profilemate")?;
    let tpid = tracer.id();
    let mut fixture = crate::demo::Reaped(fixture);
    let stdout = fixture.0.stdout.take().context("no stdout")?;
    let (mut cpu, mut rss) = (0.0, 0);
    let run = read_target(stdout, target_args)?;
    // Reap the target so the tracer sees it gone, sampling the tracer until it exits.
    let _ = fixture.0.wait();
    let deadline = Instant::now().checked_add(Duration::from_secs(30));
    while deadline.is_some_and(|d| Instant::now() < d) {
        if let Some(c) = proc_cpu_sec(tpid) {
            cpu = c;
        }
        if let Some(r) = proc_hwm_kb(tpid) {
            rss = rss.max(r);
        }
        if let Ok(Some(_)) = tracer.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = tracer.wait_with_output()?;
    let session = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("session: ").map(PathBuf::from))
        .context("profilemate printed no session path")?;
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(session.join("metadata.json"))?)?;
    let records = meta["losses"]["records_read"].as_u64().unwrap_or(0);
    let drops = meta["losses"]["kernel"]["ring_full_drops"]
        .as_u64()
        .unwrap_or(0);
    Ok((
        run,
        TracerStats {
            cpu_sec: cpu,
            rss_kb: rss,
            records,
            drops,
        },
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn pipeline() -> Result<String> {
    let out = Command::new("cargo")
        .current_dir(root())
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "profilemate",
            "--example",
            "pipeline_bench",
            "--",
            "300000",
        ])
        .output()
        .context("cannot run the pipeline benchmark")?;
    if !out.status.success() {
        bail!(
            "pipeline benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Python stack sampling on a CPU-bound Python loop (tests/scripts/py_overhead.py): the
/// kernel-measured cost per walk, and throughput against an unprofiled control process.
fn python_sampling(python: &str, hz: u32) -> Result<String> {
    let out = Command::new(python)
        .current_dir(root())
        .arg("tests/scripts/py_overhead.py")
        .arg(root().join("target/release/profilemate"))
        .args(["--python", python, "--hz", &hz.to_string()])
        .output()
        .context("cannot run tests/scripts/py_overhead.py")?;
    if !out.status.success() {
        bail!(
            "python sampling benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask bench attaches eBPF probes: run it as root");
    }
    let wanted = |c: Case| args.case.is_none_or(|only| only == c);
    if wanted(Case::Pipeline) {
        println!(
            "## userspace pipeline (synthetic vLLM-like records, one thread)\n{}",
            pipeline()?
        );
    }
    if wanted(Case::Fixture) {
        fixture(args)?;
    }
    if wanted(Case::PythonSampling) {
        for hz in [199, 997] {
            println!(
                "## Python stack sampling at {hz} Hz (40-frame-deep CPU-bound loop, /usr/bin/python3.11)\n{}",
                python_sampling("/usr/bin/python3.11", hz)?
            );
        }
    }
    if wanted(Case::StatePolls) {
        println!(
            "## scheduler polls against the waiting queue (vLLM 0.33 Scheduler, plain loop, default flags, {} s each)\n{}",
            crate::bench_polls::SECONDS,
            crate::bench_polls::state_polls()?
        );
    }
    Ok(())
}

/// The fixture target detached and attached.
fn fixture(args: &BenchArgs) -> Result<()> {
    let hot: Vec<String> = ["--hot-loop".to_owned(), args.iterations.to_string()].to_vec();
    let step: Vec<String> = [
        "--steps",
        &args.steps.to_string(),
        "--graphs",
        "2",
        "--kernel-us",
        "20",
        "--eager-kernels",
        "8",
        "--step-gap-us",
        "0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for (name, target, modes) in [
        ("hot loop of probed calls (cudaEventRecordWithFlags + cudaEventQuery + cudaMemcpyAsync)", &hot, vec![vec![]]),
        ("vLLM-shaped step loop (graph + eager steps, 20 µs kernels, async event waits)", &step, vec![vec![], vec!["--kernels"]]),
    ] {
        println!("## {name}");
        let base = median((0..args.repeat).map(|_| run_target(target).map(|r| r.0.rate)).collect::<Result<Vec<_>>>()?);
        println!("baseline: {base:.0}/s");
        for extra in modes {
            let mut rates = Vec::new();
            let mut last = None;
            for _ in 0..args.repeat {
                let (t, s) = run_attached(target, &extra)?;
                rates.push(t.rate);
                last = Some((t, s));
            }
            let rate = median(rates);
            let Some((t, s)) = last else { continue };
            let mode = if extra.is_empty() { "default probes" } else { "--kernels" };
            println!(
                "{mode}: {rate:.0}/s ({:+.2}% vs baseline); probe records {} in {:.2}s = {:.0} events/s; drops {}; tracer CPU {:.3}s = {:.2} µs/event; tracer RSS {} MiB",
                (rate / base - 1.0) * 100.0,
                s.records,
                t.seconds,
                s.records as f64 / t.seconds.max(1e-9),
                s.drops,
                s.cpu_sec,
                s.cpu_sec * 1e6 / (s.records.max(1) as f64),
                s.rss_kb / 1024
            );
        }
    }
    Ok(())
}
