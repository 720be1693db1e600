//! ProfileMate against the real vLLM v1 `Scheduler` (tests/real_vllm/engine.py), so that the
//! names, types and layouts read per step are vLLM's own, not the fixture's. Everything is
//! compared with vLLM's own counters: `SchedulerOutput` per step, `Request.num_preemptions`,
//! `Scheduler.make_stats()` and `KVCacheManager.usage`.
//!
//! `PROFILEMATE_REAL_VLLM_PYTHON` is a Python with vLLM installed; `cargo xtask test` builds
//! one (target/real-vllm-venv, from tests/real_vllm/requirements.lock) and sets it, and CI
//! fails when it cannot. The scheduler runs on CPU: no model, no GPU. Needs root. Skips with
//! a message otherwise.

use std::{collections::HashMap, path::Path, path::PathBuf, process::Command, time::Duration};

use profilemate_tests::{
    assert_scheduler_methods_watched, can_attach, check_request_lifecycles, col, fake_cuda_dir,
    root, scratch, serial, truth_lines, Proc, Session, Tracer,
};

const STEPS: usize = 300;

fn truth(dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    truth_lines(&dir.join("truth.jsonl"), kind)
}

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// Runs engine.py (`plain`: the plain loop without CUDA) under the tracer; returns the
/// scratch directory and the session. `None`: skipped.
fn run(test: &str, plain: bool, attach: &[&str]) -> Option<(PathBuf, Session)> {
    run_with(test, plain, attach, &[])
}

/// `run` with more arguments for engine.py.
fn run_with(
    test: &str,
    plain: bool,
    attach: &[&str],
    engine_args: &[&str],
) -> Option<(PathBuf, Session)> {
    let Some(python) = std::env::var_os("PROFILEMATE_REAL_VLLM_PYTHON").map(PathBuf::from) else {
        eprintln!("SKIP {test}: set PROFILEMATE_REAL_VLLM_PYTHON to a Python with vLLM installed");
        return None;
    };
    if !can_attach(test) {
        return None;
    }
    let dir = scratch(test);
    let mut cmd = Command::new(&python);
    cmd.arg(root().join("tests/real_vllm/engine.py"));
    if plain {
        cmd.arg("--plain-loop");
    } else {
        cmd.arg("--lib-dir").arg(fake_cuda_dir());
    }
    cmd.arg("--truth")
        .arg(dir.join("truth.jsonl"))
        .args(["--steps", &STEPS.to_string(), "--start-on-sigusr1"])
        .args(engine_args)
        .env("FAKE_CUDA_LOG", dir.join("truth.log"))
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let mut engine = Proc::spawn(&mut cmd);
    engine.wait_line("ready");
    let mut tracer = Tracer::attach(engine.pid(), &dir, attach);
    tracer.wait_attached();
    engine.signal(libc::SIGUSR1);
    assert_eq!(
        engine.wait_exit(Duration::from_secs(180)),
        0,
        "engine failed"
    );
    Some((dir.clone(), tracer.finish(Duration::from_secs(30))))
}

/// Preemptions: every one vLLM made (`SchedulerOutput.preempted_req_ids`, summed per step),
/// once. Requests: all seen, prompts exact (or unknown for a request whose only step was not
/// read, at most `missed`), preemptions per request exact (`Request.num_preemptions`), and
/// the finished ones finished. Returns (preemptions, requests, finished).
fn check_preemptions_and_requests(
    dir: &Path,
    session: &Session,
    missed: u64,
) -> (usize, usize, usize) {
    let batches = truth(dir, "batch");
    let preempted: usize = batches
        .iter()
        .map(|b| b["preempted"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(preempted > 0, "the workload must preempt");
    let events = session.csv("preemption_events.csv");
    assert_eq!(events.len(), preempted, "preemption_events.csv");
    let requests = truth(dir, "request");
    assert_eq!(requests.len(), STEPS);
    let by_truth: usize = requests.iter().map(|r| u(r, "preemptions") as usize).sum();
    assert_eq!(
        by_truth, preempted,
        "Request.num_preemptions vs the step outputs"
    );
    // Known gap (docs/ACCURACY.md): with no successful scheduler poll, a request that never
    // left the waiting queue is in no step output and so not in request_lifecycle.csv, and
    // final_status stays empty; every request vLLM scheduled is checked.
    let scheduled: Vec<_> = requests
        .iter()
        .filter(|r| r["status"] != "WAITING")
        .cloned()
        .collect();
    let mut finished = 0;
    let unknown = check_request_lifecycles(session, &scheduled, |t, r| {
        let done = t["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("FINISHED"));
        finished += usize::from(done);
        // Known gap: a finish in a step output that was not read leaves finished_sec
        // empty (no poll fills it in); a finish it reports is a real one.
        if !r["finished_sec"].is_empty() {
            assert!(
                done,
                "{} reported finished, vLLM says {}",
                t["req"], t["status"]
            );
        }
    });
    assert!(unknown as u64 <= missed, "{unknown} prompts unknown");
    assert!(finished > 0, "no request finished");
    (preempted, scheduled.len(), finished)
}

/// KV usage and queue lengths polled vs vLLM's own counters, recorded after every
/// `add_request()`, `schedule()` and `update_from_output()`: every poll inside the loop
/// equals a state vLLM held within 1 ms of it (blocks exact, the percentage to the CSV's 3
/// decimals), or lies between two such states: one vLLM passed through inside `schedule()`,
/// which moves requests and allocates blocks one at a time.
/// Returns (polls checked, largest usage difference in percentage points).
fn check_kv(dir: &Path, session: &Session, t0: f64) -> (usize, f64) {
    let kv = truth(dir, "kv");
    let ts = |v: &serde_json::Value| u(v, "ts_ns") as f64;
    let (lo, hi) = (ts(&kv[0]), ts(&kv[kv.len() - 1]));
    let around = |at: f64| {
        let first = kv.partition_point(|s| ts(s) <= at - 1e6).saturating_sub(1);
        let last = kv.partition_point(|s| ts(s) <= at + 1e6) + 1;
        &kv[first..last.min(kv.len())]
    };
    let mut checked = 0;
    let mut worst: f64 = 0.0;
    for r in &session.csv("kv_cache_usage.csv") {
        let at = t0 + col(r, "timestamp_sec") * 1e9;
        if at <= lo || at >= hi {
            continue;
        }
        checked += 1;
        assert_eq!(
            col(r, "total_blocks") as u64,
            u(&kv[0], "total_blocks"),
            "{r:?}"
        );
        let pct = col(r, "usage_pct");
        let free = col(r, "free_blocks") as u64;
        let same = around(at)
            .iter()
            .filter(|s| u(s, "free_blocks") == free)
            .map(|s| (s["usage"].as_f64().unwrap_or(-1.0) * 100.0 - pct).abs())
            .fold(f64::MAX, f64::min);
        if same <= 0.0005 + 1e-9 {
            worst = worst.max(same);
        } else {
            let total = u(&kv[0], "total_blocks") as f64;
            let formula = 100.0 * (1.0 - free as f64 / (total - 1.0));
            assert!(
                within(around(at), "free_blocks", free) && (formula - pct).abs() <= 0.0005 + 1e-9,
                "KV poll {r:?} matches no state of vLLM's around it: {:?}",
                around(at)
            );
        }
    }
    assert!(checked >= 20, "{checked} KV polls inside the loop");
    let mut queues = 0;
    for r in &session.csv("scheduler_state.csv") {
        let at = t0 + col(r, "timestamp_sec") * 1e9;
        if at <= lo || at >= hi {
            continue;
        }
        queues += 1;
        let got = (col(r, "running") as u64, col(r, "waiting") as u64);
        let states = around(at);
        assert!(
            states
                .iter()
                .any(|s| (u(s, "running"), u(s, "waiting")) == got)
                || (within(states, "running", got.0) && within(states, "waiting", got.1)),
            "queues {r:?} match no make_stats() around them: {:?}",
            around(at)
        );
    }
    assert_eq!(queues, checked, "scheduler_state.csv vs kv_cache_usage.csv");
    (checked, worst)
}

/// Whether `v` lies between the least and the greatest `key` of `states`.
fn within(states: &[serde_json::Value], key: &str, v: u64) -> bool {
    let vals = states.iter().map(|s| u(s, key));
    let (lo, hi) = (vals.clone().min(), vals.max());
    lo.zip(hi).is_some_and(|(lo, hi)| (lo..=hi).contains(&v))
}

/// Each batch_utilization.csv row against vLLM's `SchedulerOutput` of the step it was read
/// in (the latest `schedule()` before its stamp) or the one before: (seqs, tokens, new,
/// cached) exact. Returns how many rows were the step before's.
fn check_step_rows(
    rows: &[HashMap<String, String>],
    batches: &[serde_json::Value],
    t0: f64,
) -> usize {
    let mut late = 0;
    for r in rows {
        let ts = t0 + col(r, "timestamp_sec") * 1e9;
        let i = batches.partition_point(|b| u(b, "ts_ns") as f64 <= ts);
        assert!(i > 0, "a batch read before any schedule: {r:?}");
        let got = [
            col(r, "num_seqs") as u64,
            col(r, "num_tokens") as u64,
            col(r, "new_reqs") as u64,
            col(r, "cached_reqs") as u64,
        ];
        let want = |b: &serde_json::Value| {
            [
                u(b, "num_reqs"),
                u(b, "num_tokens"),
                u(b, "new_reqs"),
                u(b, "cached_reqs"),
            ]
        };
        if got == want(&batches[i - 1]) {
            continue;
        }
        assert!(
            i >= 2 && got == want(&batches[i - 2]),
            "step {}: {r:?} is neither this step's output {:?} nor the one before",
            u(&batches[i - 1], "step"),
            want(&batches[i - 1])
        );
        late += 1;
    }
    late
}

fn dropped(stats: &serde_json::Value) -> u64 {
    ["stale", "torn", "wrong_type"]
        .iter()
        .map(|k| stats[*k].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn real_vllm_scheduler_outputs_preemptions_and_requests_match_the_engine() {
    let test = "real_vllm_scheduler_outputs_preemptions_and_requests_match_the_engine";
    let _g = serial();
    let Some((dir, session)) = run(test, false, &[]) else {
        return;
    };
    let md = session.json("metadata.json");
    let t0 = md["monotonic_start_ns"].as_u64().expect("t0") as f64;
    let stats = &md["python"]["vllm_batches"];

    // Every output read equals what schedule() returned at that step, or at the step before
    // (a row is stamped when read, up to a few ms later: it can fall after the next
    // schedule()); misses are counted.
    let batches = truth(&dir, "batch");
    assert_eq!(batches.len(), STEPS);
    let rows = session.csv("batch_utilization.csv");
    let late = check_step_rows(&rows, &batches, t0);
    let missed = (STEPS - rows.len()) as u64;
    assert!(missed <= dropped(stats), "uncounted misses: {stats}");
    assert!(rows.len() >= STEPS * 8 / 10, "{} read: {stats}", rows.len());

    let (preempted, requests, finished) = check_preemptions_and_requests(&dir, &session, missed);

    // The scheduler is found at attach, before the loop starts, among the locals of a live
    // frame (here `main`'s engine); the version from the dist-info beside the package.
    let state = &md["python"]["vllm_state"][0];
    assert!(
        state["scheduler_found_via"]
            .as_str()
            .is_some_and(|v| v.contains("of frame")),
        "{state}"
    );
    assert_eq!(state["vllm"]["version"], "0.33.0", "{state}");
    let polls = state["polls"].as_u64().unwrap_or(0);
    assert!(polls > 0, "{state}");
    let (polls_checked, kv_diff) = check_kv(&dir, &session, t0);
    eprintln!(
        "real vLLM (engine loop, CUDA): {} of {STEPS} step outputs exact ({late} read in the next \
         step), {preempted} of \
         {preempted} preemptions, {requests} requests ({finished} finished), {polls_checked} KV \
         polls exact (largest usage diff {kv_diff:.4} pp), {polls} polls; {stats}",
        rows.len()
    );
}

#[test]
fn real_vllm_plain_loop_without_cuda_gives_exact_preemptions_requests_steps_and_kv() {
    let test = "real_vllm_plain_loop_without_cuda_gives_exact_preemptions_requests_steps_and_kv";
    let _g = serial();
    // The TP>1 EngineCore's shape: schedule() -> fake model output -> update_from_output() in
    // a plain function, no engine-loop frame, no CUDA call. Only the breakpoints on the
    // scheduler's methods see steps.
    let Some((dir, session)) = run(test, true, &["--wait"]) else {
        return;
    };
    let md = session.json("metadata.json");
    let t0 = md["monotonic_start_ns"].as_u64().expect("t0") as f64;
    let stats = &md["python"]["vllm_batches"];
    let bp = &md["python"]["breakpoints"];
    // Without an engine-loop frame the scheduler is found among the locals of a live frame
    // (the script's `main`), before its loop starts, and the breakpoints armed from it.
    let state = &md["python"]["vllm_state"][0];
    assert!(
        state["polls"].as_u64().unwrap_or(0) > 0,
        "no scheduler poll: {state}; {bp}"
    );
    assert!(
        state["scheduler_found_via"]
            .as_str()
            .is_some_and(|v| v.contains("of frame main")),
        "{state}"
    );
    assert_scheduler_methods_watched(&md, test);

    // Step batches, read from update_from_output's SchedulerOutput: every row is the step's
    // exactly, and every step after the first row read (or counted as dropped).
    let batches = truth(&dir, "batch");
    assert_eq!(batches.len(), STEPS);
    let rows = session.csv("batch_utilization.csv");
    assert!(
        !rows.is_empty(),
        "no step batch read without CUDA: {stats} {bp}"
    );
    let ns = |r: &HashMap<String, String>| t0 + col(r, "timestamp_sec") * 1e9;
    let late = check_step_rows(&rows, &batches, t0);
    let first = rows.iter().map(&ns).fold(f64::MAX, f64::min);
    let later = batches
        .iter()
        .filter(|b| u(b, "ts_ns") as f64 >= first)
        .count();
    assert!(
        rows.len() as u64 + dropped(stats) + 1 >= later as u64 && rows.len() * 100 >= later * 80,
        "{} rows for {later} steps {stats}",
        rows.len()
    );
    let missed = (STEPS - rows.len()) as u64;

    let (preempted, requests, finished) = check_preemptions_and_requests(&dir, &session, missed);
    let events = session.csv("preemption_events.csv");
    let by_bp = events
        .iter()
        .filter(|e| e["source"] == "breakpoint")
        .count();
    assert!(by_bp > 0, "no preemption seen by breakpoint: {bp}");
    let (polls_checked, kv_diff) = check_kv(&dir, &session, t0);
    eprintln!(
        "real vLLM (plain loop, no CUDA calls): {} of {STEPS} step outputs exact ({later} after \
         the first, {late} read in the next step), {preempted} of {preempted} preemptions ({by_bp} by breakpoint), {requests} \
         requests ({finished} finished), {polls_checked} KV polls exact (largest usage diff \
         {kv_diff:.4} pp); {stats}; breakpoints {}",
        rows.len(),
        bp["calls"]
    );
}

/// kv_cache_evictions.csv against the evictions vLLM made (issue 11 §1): the real
/// `BlockPool` with prefix caching, its own record of every eviction taken inside the test
/// target (engine.py wraps `BlockPool._maybe_evict_cached_block`, `_insert_block_hash` and
/// `free_blocks` there; ProfileMate only reads the pool). Every row is a true eviction of
/// that block within the row's resolution, its lifetime and idle time within it too; most
/// evictions are found; the seeds' one-liner counts what the file says.
#[test]
fn real_vllm_prefix_cache_evictions_match_the_block_pool() {
    let test = "real_vllm_prefix_cache_evictions_match_the_block_pool";
    let _g = serial();
    let Some((dir, session)) = run_with(
        test,
        false,
        &["--state-hz", "200"],
        &["--prefix-caching", "--step-sleep-ms", "10"],
    ) else {
        return;
    };
    let md = session.json("metadata.json");
    let t0 = md["monotonic_start_ns"].as_u64().expect("t0") as f64;
    let state = &md["python"]["vllm_state"][0];
    assert!(state["blocks_error"].is_null(), "{state}");
    let truth = truth(&dir, "evict");
    assert!(
        truth.len() >= 100,
        "{} evictions: the workload must evict",
        truth.len()
    );
    let rows = session.csv("kv_cache_evictions.csv");
    let header = std::fs::read_to_string(session.dir.join("kv_cache_evictions.csv"))
        .expect("evictions file");
    assert!(
        header.starts_with("timestamp_sec,lifetime_sec,idle_sec,"),
        "{header:.80}"
    );
    let summary = session.json("kv_cache_evictions_summary.json");
    let s = &summary["processes"][0];
    let ns = |r: &HashMap<String, String>, k: &str| t0 + col(r, k) * 1e9;
    // Stamps of one clock, taken a few µs from the change they stand for.
    let slack = 1e6;
    let mut used = vec![false; truth.len()];
    let mut worst: f64 = 0.0;
    let mut reused_in_poll = 0usize;
    for r in &rows {
        let (at, res) = (ns(r, "timestamp_sec"), col(r, "resolution_sec") * 1e9);
        let block = col(r, "block_id") as u64;
        let i = truth
            .iter()
            .enumerate()
            .position(|(i, t)| {
                !used[i]
                    && u(t, "block") == block
                    && (at - res - slack..=at + slack).contains(&(u(t, "ts_ns") as f64))
            })
            .unwrap_or_else(|| panic!("row {r:?} matches no eviction of block {block}"));
        used[i] = true;
        let t = &truth[i];
        let evicted = u(t, "ts_ns") as f64;
        let cached = t["cached_ns"].as_f64().expect("cached_ns");
        let freed = t["freed_ns"].as_f64().unwrap_or(evicted);
        let lifetime = (evicted - cached) / 1e9;
        let idle = (evicted - freed.max(cached)) / 1e9;
        let (dl, di) = (
            (col(r, "lifetime_sec") - lifetime).abs(),
            (col(r, "idle_sec") - idle).abs(),
        );
        let bound = res / 1e9 + slack / 1e9;
        assert!(dl <= bound, "lifetime {r:?} vs {lifetime} (truth {t})");
        // A known race (docs/OUTPUTS.md): vLLM evicts a free cached block when it hands it
        // out again, so a poll that read the cache map just before that and the block's
        // ref_cnt just after sees the block's next use as its last one: idle too short,
        // its last use within one resolution of the eviction stamp. Counted, kept rare.
        let last_use_at_eviction =
            col(r, "timestamp_sec") - col(r, "last_used_sec") <= res / 1e9 + slack / 1e9;
        if di > bound && col(r, "idle_sec") < idle && last_use_at_eviction {
            reused_in_poll += 1;
            continue;
        }
        assert!(di <= bound, "idle {r:?} vs {idle} (truth {t})");
        worst = worst.max(dl).max(di);
    }
    // Evictions after the first poll of the map: found with a row (caching seen), seen
    // without one (cached before the first poll), or counted unseen (cached and evicted
    // between two polls); the unseen count never exceeds what was missed.
    let first_poll = rows
        .iter()
        .map(|r| ns(r, "cached_sec"))
        .fold(f64::MAX, f64::min);
    let after: Vec<usize> = (0..truth.len())
        .filter(|&i| {
            truth[i]["cached_ns"]
                .as_f64()
                .is_some_and(|c| c > first_poll)
        })
        .collect();
    let found = after.iter().filter(|&&i| used[i]).count();
    let unseen = s["unseen_evictions"].as_u64().unwrap_or(0) as usize;
    assert!(
        rows.len() + unseen <= truth.len(),
        "{} rows + {unseen} unseen > {} evictions: {s}",
        rows.len(),
        truth.len()
    );
    assert!(
        found * 100 >= after.len() * 80,
        "{found} of {} evictions found: {s}",
        after.len()
    );
    assert_eq!(s["rows"].as_u64(), Some(rows.len() as u64), "{s}");
    // The seeds' snippet: "blocks evicted quickly" = rows with lifetime_sec < 10.
    let out = Command::new("sh")
        .arg("-c")
        .arg("awk -F',' 'NR>1 && $2<10 {count++} END {print count \" blocks evicted quickly\"}' kv_cache_evictions.csv")
        .current_dir(&session.dir)
        .output()
        .expect("sh");
    let quick = rows
        .iter()
        .filter(|r| col(r, "lifetime_sec") < 10.0)
        .count();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{quick} blocks evicted quickly")
    );
    assert_eq!(s["evicted_quickly"].as_u64(), Some(quick as u64), "{s}");
    assert!(
        reused_in_poll * 50 <= rows.len().max(50),
        "{reused_in_poll} of {} rows saw the block's next use as its last",
        rows.len()
    );
    eprintln!(
        "real vLLM prefix cache: {} evictions, {} rows ({found} of {} cached after the first \
         poll found), {unseen} counted unseen, {reused_in_poll} idle cut by reuse within a poll, largest lifetime/idle error {worst:.4} s; {s}; \
         refs per poll p50 {} max {}",
        truth.len(),
        rows.len(),
        after.len(),
        state["block_refs_read_p50"],
        state["block_refs_read_max"]
    );
}
