//! End-to-end: `profilemate attach` on fixture targets over the fake CUDA libraries, compared
//! with the libraries' ground-truth log. Needs root (eBPF); skips with a message otherwise.
//!
//! Tolerances: GPU step times are compared for rows with `completion=exact`. The error is the
//! wake-up latency of the waiting thread and of the probe (tens of µs on an idle machine);
//! the bounds allow a loaded 2-core CI machine: median |error| <= 0.1 ms, p95 <= 2 ms, every
//! row <= 5 ms (a waiting thread that is descheduled observes the completion late).

use std::{collections::HashMap, time::Duration};

use profilemate_tests::{can_attach, col, scratch, serial, Session, Target, Tracer, Truth};

const STEPS: u64 = 40;

/// Runs the fixture to completion with profilemate attached while it loads its model.
fn profile(test: &str, python: bool, fixture: &[&str], attach: &[&str]) -> (Session, Truth, u32) {
    let dir = scratch(test);
    let mut args = vec!["--wait-after-load-ms", "2500"];
    args.extend_from_slice(fixture);
    let mut target = if python {
        Target::python(&dir, &args)
    } else {
        Target::rust(&dir, &args)
    };
    target.proc.wait_line("ready");
    let pid = target.proc.pid();
    let mut tracer = Tracer::attach(pid, &dir, attach);
    tracer.wait_attached();
    assert_eq!(
        target.proc.wait_exit(Duration::from_secs(60)),
        0,
        "fixture failed"
    );
    let session = tracer.finish(Duration::from_secs(30));
    (session, target.truth(), pid)
}

fn sum(rows: &[HashMap<String, String>], k: &str) -> f64 {
    rows.iter().map(|r| col(r, k)).sum()
}

/// Checks every count and the GPU times of a default-shaped fixture run.
fn check_counts_and_times(session: &Session, truth: &Truth, pid: u32, kernels: bool, twins: bool) {
    let steps = session.csv("forward_pass_timing.csv");
    assert_eq!(steps.len() as u64, STEPS, "one row per fixture step");
    assert!(steps.iter().all(|r| col(r, "pid") as u32 == pid));

    // Graph replays, input/output bytes, captures: exact.
    let launches = truth.app_calls("cudaGraphLaunch");
    assert_eq!(sum(&steps, "num_graph_launches") as usize, launches.len());
    let bytes = |kind: &str| -> f64 {
        truth
            .app_calls("cudaMemcpyAsync")
            .iter()
            .filter(|c| c.fields.get("kind").is_some_and(|k| k == kind))
            .map(|c| {
                c.fields
                    .get("bytes")
                    .and_then(|b| b.parse::<f64>().ok())
                    .unwrap_or(0.0)
            })
            .sum()
    };
    assert_eq!(sum(&steps, "h2d_bytes"), bytes("1"));
    assert_eq!(sum(&steps, "d2h_bytes"), bytes("2"));
    let captures = session.csv("cuda_graph_captures.csv");
    assert_eq!(
        captures.len(),
        truth.app_calls("cudaStreamEndCapture").len()
    );
    for c in &captures {
        assert_eq!(c["source"], "captured");
        assert!(
            !c["capture_ms"].is_empty() && !c["instantiate_ms"].is_empty(),
            "{c:?}"
        );
        if kernels {
            assert_eq!(
                c["captured_launches"], "3",
                "kernels recorded into each graph"
            );
        } else {
            assert_eq!(c["captured_launches"], "");
        }
    }
    let usage = session.csv("cuda_graph_usage.csv");
    assert_eq!(sum(&usage, "replay_count") as usize, launches.len());
    // Per executable: replays of each exec handle match the log.
    let mut truth_per_exec: HashMap<String, usize> = HashMap::new();
    for c in &launches {
        *truth_per_exec.entry(c.fields["exec"].clone()).or_default() += 1;
    }
    let timeline = session.csv("cuda_graph_timeline.csv");
    assert_eq!(timeline.len(), launches.len());
    let mut ours_per_exec: HashMap<String, usize> = HashMap::new();
    for r in &timeline {
        *ours_per_exec.entry(r["exec_handle"].clone()).or_default() += 1;
        assert!(!r["step"].is_empty(), "every replay belongs to a step");
    }
    assert_eq!(ours_per_exec, truth_per_exec);

    // Kernel launches per step (with --kernels): runtime launches + direct driver launches.
    if kernels {
        let truth_launches: usize = ["cudaLaunchKernel", "cuLaunchKernelEx"]
            .iter()
            .map(|a| {
                truth
                    .app_calls(a)
                    .iter()
                    .filter(|c| c.fields.get("capturing").is_none_or(|v| v == "0"))
                    .count()
            })
            .sum();
        assert_eq!(sum(&steps, "num_kernel_launches") as usize, truth_launches);
    } else {
        assert!(steps.iter().all(|r| r["num_kernel_launches"].is_empty()));
    }

    // API summary: every application call counted once, twins as calls via runtime.
    let api = session.json("cuda_api_summary.json");
    let p = &api["processes"][pid.to_string()];
    for name in [
        "cudaGraphLaunch",
        "cudaEventRecordWithFlags",
        "cudaEventSynchronize",
        "cudaMemcpyAsync",
        "cudaMalloc",
        "cudaFree",
    ] {
        assert_eq!(
            p[name]["calls"].as_u64(),
            Some(truth.app_calls(name).len() as u64),
            "{name}: {p}"
        );
    }
    if twins {
        // Both levels probed: each runtime operation's driver twin is seen and counted once.
        for (drv, rt) in [
            ("cuGraphLaunch", "cudaGraphLaunch"),
            ("cuEventSynchronize", "cudaEventSynchronize"),
        ] {
            assert_eq!(
                p[drv]["calls_via_runtime"].as_u64(),
                Some(truth.app_calls(rt).len() as u64),
                "{drv}"
            );
            assert_eq!(p[drv]["calls"].as_u64(), Some(0), "{drv}");
        }
    } else {
        // libcudart is mapped: the driver twins are left out, and metadata says so.
        assert!(p["cuGraphLaunch"].is_null(), "{p}");
        let meta = session.json("metadata.json");
        let skipped: Vec<&str> = meta["probes"]["skipped"].as_array().map_or(vec![], |a| {
            a.iter().filter_map(|x| x["symbol"].as_str()).collect()
        });
        assert!(
            skipped.contains(&"cuGraphLaunch") && skipped.contains(&"cuEventSynchronize"),
            "{skipped:?}"
        );
        assert!(
            !skipped.contains(&"cuLaunchKernelEx"),
            "kernel launches are counted at the driver"
        );
    }

    // GPU times against the simulated GPU's execution log. Most waits block for the previous
    // step's GPU work; the few that block for less than BLOCKED_THRESHOLD_NS (0.1 ms) are
    // reported as upper bounds.
    let exact = check_times(&steps, truth, pid);
    assert!(
        exact as u64 >= STEPS * 8 / 10,
        "most waits block: {exact} exact"
    );

    let meta = session.json("metadata.json");
    assert_eq!(meta["losses"]["kernel"]["ring_full_drops"], 0);
    assert_eq!(meta["losses"]["decode_errors"], 0);
    assert_eq!(meta["losses"]["correlator"]["incomplete_steps"], 0);
    assert_eq!(meta["stop_reason"], "all target processes exited");
}

/// Checks every row's GPU time against the fake GPU's log: exact rows within 50 µs or 2 %
/// of the truth at the median, and in the tail within the target's own wake-up lateness
/// (the fake logs when its wait returned) plus 2 ms at p95 / 5 ms at most; every other
/// row's bounds around the truth. Returns how many rows were exact.
fn check_times(steps: &[HashMap<String, String>], truth: &Truth, pid: u32) -> usize {
    let truth_gpu = truth.step_gpu_ns(pid);
    assert_eq!(truth_gpu.len(), steps.len(), "one truth span per row");
    let mut errors: Vec<f64> = Vec::new();
    // The error beyond the target's own late wake-up (a descheduled waiting thread on a
    // loaded 2-core machine returns from its wait milliseconds after the GPU finished).
    let mut excess: Vec<f64> = Vec::new();
    let mut worst = String::new();
    for (row, (start, end)) in steps.iter().zip(&truth_gpu) {
        let truth_ms = (end - start) as f64 / 1e6;
        let ours = col(row, "forward_time_ms");
        if row["completion"] != "exact" {
            // The lower bound's GPU start is the first call's entry; the fake GPU starts at
            // its submission inside the call, microseconds later (more on a loaded machine).
            let lower = col(row, "gpu_time_lower_ms");
            assert!(
                lower <= truth_ms + 0.1 && truth_ms <= ours,
                "bounds {lower}..{ours} ms around truth {truth_ms} ms: {row:?}"
            );
            continue;
        }
        let e = (ours - truth_ms).abs();
        let late_ms = truth.wake_up_lateness_ns(pid, *end) as f64 / 1e6;
        let beyond = (e - late_ms).max(0.0);
        if excess.iter().all(|x| *x < beyond) {
            worst = format!(
                "step {}: ours {ours} ms, truth {truth_ms} ms; row {row:?}",
                row["step"]
            );
        }
        errors.push(e);
        excess.push(beyond);
    }
    if errors.is_empty() {
        return 0;
    }
    errors.sort_by(f64::total_cmp);
    excess.sort_by(f64::total_cmp);
    let median = errors[errors.len() / 2];
    let p95 = excess[excess.len() * 95 / 100];
    let max = excess[excess.len() - 1];
    eprintln!(
        "forward_time_ms |error| vs ground truth: median {median:.4} ms, p95 {:.4} ms, max {:.4} ms over {} exact rows; beyond the target's own wake-up: p95 {p95:.4} ms, max {max:.4} ms",
        errors[errors.len() * 95 / 100],
        errors[errors.len() - 1],
        errors.len()
    );
    let typical = truth_gpu
        .iter()
        .map(|(s, e)| (e - s) as f64 / 1e6)
        .sum::<f64>()
        / truth_gpu.len() as f64;
    assert!(
        median <= 0.05_f64.max(typical * 0.02),
        "median error {median} ms"
    );
    // Beyond the target's own wake-up, the tracer's share: its timestamps are taken in the
    // probes, so only a descheduled probe or a merge of steps adds to it.
    assert!(p95 <= 2.0, "p95 error beyond the wake-up {p95} ms");
    assert!(max <= 5.0, "max error {max} ms at {worst}");
    errors.len()
}

/// Graph replays the fake GPU executed per step, in step order.
fn truth_graphs_per_step(truth: &Truth, pid: u32) -> Vec<usize> {
    let mut per_step: std::collections::BTreeMap<u64, usize> = std::collections::BTreeMap::new();
    for e in truth.execs.iter().filter(|e| e.pid == pid) {
        let Some(i) = e.tag.strip_prefix("step_").and_then(|s| s.parse().ok()) else {
            continue;
        };
        *per_step.entry(i).or_default() += usize::from(e.kind == "graph");
    }
    per_step.into_values().collect()
}

/// Profiles a 40-step run of `fixture`: exactly one row per fixture step, each with the
/// step's graph replays and bytes, GPU times checked by `check_times`. Returns the session.
fn steps_match_fixture(test: &str, fixture: &[&str], h2d: f64, d2h: f64) -> Session {
    let (s, truth, pid) = steps_match_fixture_counts(test, fixture, h2d, d2h);
    check_times(&s.csv("forward_pass_timing.csv"), &truth, pid);
    s
}

/// `steps_match_fixture` without the time check (the caller checks times its own way).
fn steps_match_fixture_counts(
    test: &str,
    fixture: &[&str],
    h2d: f64,
    d2h: f64,
) -> (Session, Truth, u32) {
    let mut args = vec!["--steps", "40"];
    args.extend_from_slice(fixture);
    let (s, truth, pid) = profile(test, false, &args, &[]);
    let rows = s.csv("forward_pass_timing.csv");
    let graphs = truth_graphs_per_step(&truth, pid);
    assert_eq!(rows.len(), 40, "one row per fixture step");
    assert_eq!(graphs.len(), 40, "40 steps in the fake GPU's log");
    for (i, (row, g)) in rows.iter().zip(&graphs).enumerate() {
        assert_eq!(col(row, "step") as usize, i);
        assert_eq!(
            col(row, "num_graph_launches") as usize,
            *g,
            "step {i}: {row:?}"
        );
        assert_eq!(
            (col(row, "h2d_bytes"), col(row, "d2h_bytes")),
            (h2d, d2h),
            "{row:?}"
        );
    }
    let meta = s.json("metadata.json");
    assert_eq!(meta["losses"]["correlator"]["incomplete_steps"], 0);
    (s, truth, pid)
}

/// Issue: eager steps whose only visible call is the input copy (no output copy; the
/// default probes do not see kernel launches) gave 0 of 400 steps.
#[test]
fn eager_steps_without_an_output_copy_are_each_a_step() {
    let test = "eager_steps_without_an_output_copy_are_each_a_step";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let s = steps_match_fixture(test, &["--shape", "eager", "--d2h-bytes", "0"], 4096.0, 0.0);
    let exact = s
        .csv("forward_pass_timing.csv")
        .iter()
        .filter(|r| r["completion"] == "exact")
        .count();
    assert!(exact >= 32, "the fixture's waits block: {exact} exact");
}

/// Issue: alternating graph and eager steps without an output copy gave half the steps,
/// each eager one merged into the next graph step (twice its time).
#[test]
fn alternating_steps_without_an_output_copy_are_each_a_step() {
    let test = "alternating_steps_without_an_output_copy_are_each_a_step";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    steps_match_fixture(
        test,
        &[
            "--shape",
            "alternate",
            "--d2h-bytes",
            "0",
            "--events",
            "fresh",
        ],
        4096.0,
        0.0,
    );
}

/// vLLM V1's `prepare_inputs_event` (recorded after the input copies, waited on at the
/// start of the next step) is not a step of its own, even when the rest of the step shows
/// nothing but its event.
#[test]
fn an_input_event_waited_on_at_the_next_step_does_not_split_steps() {
    let test = "an_input_event_waited_on_at_the_next_step_does_not_split_steps";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let s = steps_match_fixture(
        test,
        &[
            "--prep-event",
            "--shape",
            "eager",
            "--d2h-bytes",
            "0",
            "--events",
            "fresh",
        ],
        4096.0,
        0.0,
    );
    let meta = s.json("metadata.json");
    assert_eq!(
        meta["losses"]["correlator"]["input_only_syncs"], 39,
        "one per later step"
    );
}

/// A CPU-bound loop (the GPU finishes each step long before the CPU waits): no row claims
/// an exact time, each brackets the truth, and the summary says the GPU was done first.
#[test]
fn cpu_bound_steps_are_bounded_and_said_to_be() {
    let test = "cpu_bound_steps_are_bounded_and_said_to_be";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let (s, truth, pid) = steps_match_fixture_counts(
        test,
        &[
            "--shape",
            "piecewise",
            "--kernel-us",
            "5",
            "--step-gap-us",
            "3000",
        ],
        4096.0,
        1024.0,
    );
    let rows = s.csv("forward_pass_timing.csv");
    // A wait that was preempted for 0.1 ms looks like one that blocked (uprobes see only
    // its entry and return): on a loaded 2-core machine 1 of 40 such waits was seen. Those
    // rows claim exact with the wait's return; every other row must bound the truth.
    let exact: Vec<usize> = (0..rows.len())
        .filter(|i| rows[*i]["completion"] == "exact")
        .collect();
    assert!(
        exact.len() <= 2,
        "{} of 40 claim exact: {rows:?}",
        exact.len()
    );
    for (i, (row, (start, end))) in rows.iter().zip(truth.step_gpu_ns(pid)).enumerate() {
        if exact.contains(&i) {
            continue;
        }
        let truth_ms = (end - start) as f64 / 1e6;
        let (lower, upper) = (col(row, "gpu_time_lower_ms"), col(row, "forward_time_ms"));
        assert!(
            lower <= truth_ms + 0.1 && truth_ms <= upper,
            "bounds {lower}..{upper} ms around truth {truth_ms} ms: {row:?}"
        );
        assert_eq!(row["gpu_done_before_wait"], "true", "{row:?}");
    }
    let summary = s.json("forward_pass_summary.json");
    let pct = summary["gpu_finished_before_wait_pct"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(pct >= 95.0, "{pct} % of steps said CPU-bound");
}

/// Polls of the step's event before its wait bracket the completion: the CPU waited while
/// the GPU ran, and the completion is known within the polling interval.
#[test]
fn polls_bracket_the_completion() {
    let test = "polls_bracket_the_completion";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let s = steps_match_fixture(
        test,
        &["--async-depth", "1", "--poll-us", "20", "--shape", "graph"],
        4096.0,
        1024.0,
    );
    let rows = s.csv("forward_pass_timing.csv");
    let bracketed = rows
        .iter()
        .filter(|r| r["completion"] == "bracketed")
        .count();
    // How close two polls land depends on the machine (a 20 µs sleep between them took
    // several hundred µs on a loaded 2-core CI machine: 13 of 40 within 0.1 ms there). What
    // must hold everywhere: polls bracket the completion, and the bracket is poll-sized,
    // far below the 4 ms the GPU runs (the bounds' truth is checked by steps_match_fixture).
    assert!(bracketed >= 1, "{bracketed} of 40 bracketed");
    let mut widths: Vec<f64> = rows
        .iter()
        .map(|r| col(r, "completion_sec") - col(r, "completion_lower_sec"))
        .collect();
    widths.sort_by(f64::total_cmp);
    let median = widths[widths.len() / 2];
    assert!(median < 1e-3, "median bracket {median} s: {widths:?}");
    assert!(
        rows.iter().all(|r| r["gpu_done_before_wait"] == "false"),
        "{rows:?}"
    );
    let summary = s.json("forward_pass_summary.json");
    assert_eq!(summary["gpu_finished_before_wait_pct"].as_f64(), Some(0.0));
}

/// One ground-truth comparison: profile a 40-step fixture run with `attach` flags, then
/// check every count and the GPU times.
fn ground_truth_case(test: &str, python: bool, attach: &[&str]) {
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    // The Python fixture launches more slowly than the Rust one: 400 µs kernels keep its
    // GPU busier than its CPU, so the waits block (what the exact rows are checked on).
    let fixture: &[&str] = if python {
        &["--steps", "40", "--kernel-us", "400"]
    } else {
        &["--steps", "40"]
    };
    let (s, truth, pid) = profile(test, python, fixture, attach);
    let kernels = attach.contains(&"--kernels");
    let twins = attach.contains(&"--driver-twins");
    check_counts_and_times(&s, &truth, pid, kernels, twins);
}

#[test]
fn rust_fixture_default_probes_match_ground_truth() {
    ground_truth_case("rust_fixture_default_probes_match_ground_truth", false, &[]);
}

#[test]
fn rust_fixture_kernel_probes_match_ground_truth() {
    ground_truth_case(
        "rust_fixture_kernel_probes_match_ground_truth",
        false,
        &["--kernels"],
    );
}

#[test]
fn rust_fixture_with_driver_twins_counts_each_operation_once() {
    ground_truth_case(
        "rust_fixture_with_driver_twins_counts_each_operation_once",
        false,
        &["--kernels", "--driver-twins"],
    );
}

#[test]
fn python_fixture_default_probes_match_ground_truth() {
    ground_truth_case(
        "python_fixture_default_probes_match_ground_truth",
        true,
        &[],
    );
}

#[test]
fn python_fixture_kernel_probes_match_ground_truth() {
    ground_truth_case(
        "python_fixture_kernel_probes_match_ground_truth",
        true,
        &["--kernels"],
    );
}

#[test]
fn sync_timing_mode_completes_steps_at_stream_waits() {
    if !can_attach("sync_timing_mode_completes_steps_at_stream_waits") {
        return;
    }
    let _g = serial();
    let (s, truth, _) = profile(
        "sync-mode",
        false,
        &["--steps", "40", "--sync-mode", "stream"],
        &["--timing", "sync"],
    );
    let steps = s.csv("forward_pass_timing.csv");
    assert_eq!(steps.len(), 40);
    assert_eq!(truth.app_calls("cudaStreamSynchronize").len(), 40);
    assert!(steps
        .iter()
        .all(|r| r["sync_api"] == "cudaStreamSynchronize"));
    assert!(steps.iter().filter(|r| r["completion"] == "exact").count() >= 38);
}

#[test]
fn attach_before_the_cuda_library_is_loaded() {
    if !can_attach("attach_before_the_cuda_library_is_loaded") {
        return;
    }
    let _g = serial();
    let dir = scratch("late-load");
    let mut target = Target::rust(
        &dir,
        &[
            "--wait-before-load-ms",
            "3000",
            "--wait-after-load-ms",
            "500",
            "--steps",
            "40",
        ],
    );
    target.proc.wait_line("waiting");
    let mut tracer = Tracer::attach(target.proc.pid(), &dir, &["--wait"]);
    tracer.wait_attached();
    assert_eq!(target.proc.wait_exit(Duration::from_secs(60)), 0);
    let s = tracer.finish(Duration::from_secs(30));
    let truth = target.truth();
    assert_eq!(s.csv("forward_pass_timing.csv").len(), 40);
    assert_eq!(
        s.csv("cuda_graph_timeline.csv").len(),
        truth.app_calls("cudaGraphLaunch").len()
    );
    let meta = s.json("metadata.json");
    let libs = meta["targets"][0]["libraries"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(libs, 2, "libcudart and libcuda found after attach: {meta}");
}

#[test]
fn child_process_spawned_after_attach_is_followed() {
    if !can_attach("child_process_spawned_after_attach_is_followed") {
        return;
    }
    let _g = serial();
    let dir = scratch("child");
    let mut target = Target::rust(
        &dir,
        &[
            "--wait-after-load-ms",
            "2500",
            "--steps",
            "40",
            "--spawn-child-after-ms",
            "1500",
        ],
    );
    target.proc.wait_line("ready");
    let mut tracer = Tracer::attach(target.proc.pid(), &dir, &[]);
    tracer.wait_attached();
    assert_eq!(target.proc.wait_exit(Duration::from_secs(60)), 0);
    let s = tracer.finish(Duration::from_secs(30));
    let truth = target.truth();
    let pids: std::collections::BTreeSet<u32> = truth.calls.iter().map(|c| c.pid).collect();
    assert_eq!(pids.len(), 2, "parent and child both ran");
    let steps = s.csv("forward_pass_timing.csv");
    for pid in pids {
        let n = steps.iter().filter(|r| col(r, "pid") as u32 == pid).count();
        assert_eq!(n, 40, "steps of pid {pid}");
    }
    let meta = s.json("metadata.json");
    assert_eq!(meta["targets"].as_array().map_or(0, Vec::len), 2);
}

#[test]
fn target_exiting_mid_trace_flushes_what_completed() {
    if !can_attach("target_exiting_mid_trace_flushes_what_completed") {
        return;
    }
    let _g = serial();
    let (s, truth, _) = profile(
        "exit-mid",
        false,
        &["--steps", "100", "--exit-after-steps", "20"],
        &[],
    );
    let steps = s.csv("forward_pass_timing.csv");
    let syncs = truth.app_calls("cudaEventSynchronize").len();
    assert_eq!(steps.len(), syncs, "every completed wait is a step");
    assert!((19..=20).contains(&steps.len()), "{} steps", steps.len());
    let meta = s.json("metadata.json");
    assert_eq!(meta["stop_reason"], "all target processes exited");
    assert!(meta["losses"]["correlator"]["incomplete_steps"].as_u64() <= Some(1));
}

/// A Rust target stepping forever, with a session attached for 1.5 s of it.
fn attached_for_a_while(dir: &std::path::Path) -> (Target, Tracer) {
    let mut target = Target::rust(dir, &["--forever", "--wait-after-load-ms", "500"]);
    target.proc.wait_line("ready");
    let mut tracer = Tracer::attach(target.proc.pid(), dir, &[]);
    tracer.wait_attached();
    std::thread::sleep(Duration::from_millis(1500));
    (target, tracer)
}

/// Stops a session on a running target with `signal`; everything must be written and the
/// target must keep running.
fn signal_stops_and_flushes_everything(test: &str, signal: i32, reason: &str) {
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let dir = scratch(test);
    let (mut target, mut tracer) = attached_for_a_while(&dir);
    tracer.proc.signal(signal);
    let s = tracer.finish(Duration::from_secs(20));
    let steps = s.csv("forward_pass_timing.csv");
    assert!(steps.len() > 50, "{} steps", steps.len());
    let meta = s.json("metadata.json");
    assert_eq!(meta["stop_reason"], reason);
    let summary = s.json("forward_pass_summary.json");
    assert_eq!(summary["count"].as_u64(), Some(steps.len() as u64));
    for f in [
        "cuda_graph_captures.csv",
        "cuda_graph_usage.csv",
        "cuda_graph_timeline.csv",
        "cuda_api_summary.json",
    ] {
        assert!(s.dir.join(f).exists(), "{f}");
    }
    // The target keeps running, untouched.
    assert!(
        target.proc.child.try_wait().expect("try_wait").is_none(),
        "target must survive detach"
    );
    target.proc.signal(libc::SIGTERM);
    assert_eq!(target.proc.wait_exit(Duration::from_secs(10)), 0);
}

#[test]
fn sigint_stops_and_flushes_everything() {
    signal_stops_and_flushes_everything(
        "sigint_stops_and_flushes_everything",
        libc::SIGINT,
        "interrupted (SIGINT)",
    );
}

#[test]
fn sigterm_stops_and_flushes_everything() {
    signal_stops_and_flushes_everything(
        "sigterm_stops_and_flushes_everything",
        libc::SIGTERM,
        "terminated (SIGTERM)",
    );
}

/// A closed terminal or a dropped SSH session sends SIGHUP: the session must end as
/// cleanly as with Ctrl-C, not be killed with nothing written.
#[test]
fn sighup_stops_and_flushes_everything() {
    signal_stops_and_flushes_everything(
        "sighup_stops_and_flushes_everything",
        libc::SIGHUP,
        "hung up (SIGHUP)",
    );
}

/// Ctrl-\ (SIGQUIT) would dump core by default.
#[test]
fn sigquit_stops_and_flushes_everything() {
    signal_stops_and_flushes_everything(
        "sigquit_stops_and_flushes_everything",
        libc::SIGQUIT,
        "quit (SIGQUIT)",
    );
}

/// An impatient second Ctrl-C (or the SIGHUP of the terminal closing) while the files are
/// written may cut the catching-up short, never lose the session.
#[test]
fn a_second_signal_during_the_flush_keeps_the_session() {
    let test = "a_second_signal_during_the_flush_keeps_the_session";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let dir = scratch(test);
    let (_target, mut tracer) = attached_for_a_while(&dir);
    tracer.proc.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(30));
    for sig in [libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGTERM] {
        tracer.proc.signal(sig);
    }
    let s = tracer.finish(Duration::from_secs(20));
    let meta = s.json("metadata.json");
    assert_eq!(meta["stop_reason"], "interrupted (SIGINT)");
    let steps = s.csv("forward_pass_timing.csv");
    assert!(!steps.is_empty());
    let summary = s.json("forward_pass_summary.json");
    assert_eq!(summary["count"].as_u64(), Some(steps.len() as u64));
    assert!(s.dir.join("gc_summary.json").exists());
}

#[test]
fn duration_limit_stops_the_session() {
    if !can_attach("duration_limit_stops_the_session") {
        return;
    }
    let _g = serial();
    let dir = scratch("duration");
    let mut target = Target::rust(&dir, &["--forever"]);
    target.proc.wait_line("ready");
    let mut tracer = Tracer::attach(target.proc.pid(), &dir, &["--duration", "1500ms"]);
    tracer.wait_attached();
    let s = tracer.finish(Duration::from_secs(10));
    let meta = s.json("metadata.json");
    assert_eq!(meta["stop_reason"], "duration elapsed");
    let d = meta["duration_sec"].as_f64().unwrap_or(0.0);
    assert!((1.4..3.0).contains(&d), "duration {d}");
    assert!(!s.csv("forward_pass_timing.csv").is_empty());
}
