//! `cargo xtask bench --case state-polls`: what the scheduler polls cost the tracer as vLLM's
//! waiting queue grows.
//!
//! Method: vLLM 0.33's real `Scheduler` in a plain loop (tests/real_vllm/engine.py, the
//! real-vLLM venv) with a backlog of requests that its small KV cache keeps waiting, one
//! new request a step; `profilemate attach` with default flags for a fixed time. The figures
//! come from the session's metadata.json: the watcher thread's CPU time per poll (its own
//! thread clock, so time spent descheduled does not count) and per second of session.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{demo::profilemate_command, demo::Reaped, root};

/// Waiting-queue lengths measured.
const BACKLOGS: [u64; 3] = [50, 1000, 4000];
/// Seconds attached per case.
pub const SECONDS: u64 = 12;

/// The table of one run per backlog.
pub fn state_polls() -> Result<String> {
    let Some(python) = crate::real_vllm::ensure()? else {
        bail!("the real-vLLM venv is not available (see the warning above)");
    };
    let mut out = String::from(
        "| waiting requests (held max) | polls | poll wall P50 ms | poll CPU P50 / P99 ms | \
         requests read per poll P50 / max (in full) | deferred at most | poll CPU, % of a core |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for backlog in BACKLOGS {
        let row = one(&python, backlog)
            .with_context(|| format!("state-poll benchmark with a backlog of {backlog}"))?;
        out.push_str(&row);
    }
    Ok(out)
}

/// One engine with `backlog` waiting requests, one attached session: its table row.
fn one(python: &Path, backlog: u64) -> Result<String> {
    let dir = root().join(format!("target/bench-polls/{backlog}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut engine = Reaped(
        Command::new(python)
            .arg(root().join("tests/real_vllm/engine.py"))
            .args(["--plain-loop", "--steps", "1000000", "--hold"])
            .arg(backlog.to_string())
            .arg("--truth")
            .arg(dir.join("truth.jsonl"))
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start tests/real_vllm/engine.py")?,
    );
    let stdout = engine.0.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    if !lines.any(|l| l.is_ok_and(|l| l.ends_with(" start"))) {
        bail!("engine.py did not start");
    }
    let tracer = profilemate_command()
        .args(["attach", "--quiet", "--pid", &engine.0.id().to_string()])
        .args(["--duration", &format!("{SECONDS}s"), "--out"])
        .arg(&dir)
        .output()
        .context("cannot run profilemate")?;
    if !tracer.status.success() {
        bail!(
            "profilemate failed: {}",
            String::from_utf8_lossy(&tracer.stderr)
        );
    }
    drop(engine);
    let session = String::from_utf8_lossy(&tracer.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("session: ").map(PathBuf::from))
        .context("profilemate printed no session path")?;
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(session.join("metadata.json"))?)?;
    row(&meta)
}

/// The table row of the polled process in a session's metadata.json.
fn row(meta: &serde_json::Value) -> Result<String> {
    let states = meta["python"]["vllm_state"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let s = states
        .iter()
        .find(|s| s["polls"].as_u64().unwrap_or(0) > 0)
        .context("no scheduler poll succeeded")?;
    let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    let seconds = meta["duration_sec"].as_f64().unwrap_or(f64::NAN);
    Ok(format!(
        "| {} | {} | {:.2} | {:.2} / {:.2} | {} / {} ({} / {}) | {} | {:.2} % |\n",
        n("requests_held_max"),
        n("polls"),
        f("poll_ms_p50"),
        f("poll_cpu_ms_p50"),
        f("poll_cpu_ms_p99"),
        n("requests_read_p50"),
        n("requests_read_max"),
        n("requests_read_in_full_p50"),
        n("requests_read_in_full_max"),
        n("requests_deferred_max"),
        100.0 * f("poll_cpu_sec") / seconds,
    ))
}
