//! Opt-in: ProfileMate against the real vLLM v1 `Scheduler` (tests/real_vllm/engine.py), so
//! that the names, types and layouts read per step are vLLM's own, not the fixture's.
//!
//! Set `PROFILEMATE_REAL_VLLM_PYTHON` to a Python that has vLLM installed (the scheduler
//! runs on CPU: no model, no GPU; the fake CUDA runtime stands in for the device). Needs
//! root. Skips with a message otherwise; CI does not carry a vLLM installation.

use std::{path::PathBuf, process::Command, time::Duration};

use profilemate_tests::{
    can_attach, check_request_lifecycles, col, fake_cuda_dir, root, scratch, serial, truth_lines,
    Proc, Tracer,
};

fn truth(dir: &std::path::Path, kind: &str) -> Vec<serde_json::Value> {
    truth_lines(&dir.join("truth.jsonl"), kind)
}

#[test]
fn real_vllm_scheduler_outputs_preemptions_and_requests_match_the_engine() {
    let test = "real_vllm_scheduler_outputs_preemptions_and_requests_match_the_engine";
    let Some(python) = std::env::var_os("PROFILEMATE_REAL_VLLM_PYTHON").map(PathBuf::from) else {
        eprintln!("SKIP {test}: set PROFILEMATE_REAL_VLLM_PYTHON to a Python with vLLM installed");
        return;
    };
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let dir = scratch("real-vllm");
    let steps = 300;
    let mut cmd = Command::new(&python);
    cmd.arg(root().join("tests/real_vllm/engine.py"))
        .arg("--lib-dir")
        .arg(fake_cuda_dir())
        .arg("--truth")
        .arg(dir.join("truth.jsonl"))
        .args(["--steps", &steps.to_string(), "--start-on-sigusr1"])
        .env("FAKE_CUDA_LOG", dir.join("truth.log"))
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let mut engine = Proc::spawn(&mut cmd);
    engine.wait_line("ready");
    let mut tracer = Tracer::attach(engine.pid(), &dir, &[]);
    tracer.wait_attached();
    engine.signal(libc::SIGUSR1);
    assert_eq!(
        engine.wait_exit(Duration::from_secs(180)),
        0,
        "engine failed"
    );
    let session = tracer.finish(Duration::from_secs(30));
    let md = session.json("metadata.json");
    let t0 = md["monotonic_start_ns"].as_u64().expect("t0") as f64;
    let stats = &md["python"]["vllm_batches"];

    // Every output read equals what schedule() returned; misses are counted.
    let batches = truth(&dir, "batch");
    assert_eq!(batches.len(), steps);
    let u = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}"));
    let rows = session.csv("batch_utilization.csv");
    for r in &rows {
        let ts = t0 + col(r, "timestamp_sec") * 1e9;
        let i = batches.partition_point(|b| u(b, "ts_ns") as f64 <= ts);
        assert!(i > 0, "a batch read before any schedule");
        let b = &batches[i - 1];
        let got = [
            col(r, "num_seqs") as u64,
            col(r, "num_tokens") as u64,
            col(r, "new_reqs") as u64,
            col(r, "cached_reqs") as u64,
        ];
        let want = [
            u(b, "num_reqs"),
            u(b, "num_tokens"),
            u(b, "new_reqs"),
            u(b, "cached_reqs"),
        ];
        assert_eq!(got, want, "step {}: {r:?}", u(b, "step"));
    }
    let missed = (steps - rows.len()) as u64;
    let counted: u64 = ["stale", "torn", "wrong_type"]
        .iter()
        .map(|k| stats[*k].as_u64().unwrap_or(0))
        .sum();
    assert!(missed <= counted, "uncounted misses: {stats}");
    assert!(rows.len() >= steps * 8 / 10, "{} read: {stats}", rows.len());

    // Preemptions: the engine's own count, request by request.
    let preempted: usize = batches
        .iter()
        .map(|b| b["preempted"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(preempted > 0, "the workload must preempt");
    let events = session.csv("preemption_events.csv");
    assert_eq!(events.len(), preempted);

    // Requests: all seen; prompts exact (or unknown for a request whose only step was not
    // read), preemptions exact.
    let requests = truth(&dir, "request");
    let unknown = check_request_lifecycles(&session, &requests, |_, _| {});
    assert!(unknown as u64 <= missed, "{unknown} prompts unknown");

    // The scheduler was polled (the engine found from its busy loop's frame).
    let polls = md["python"]["vllm_state"][0]["polls"].as_u64().unwrap_or(0);
    assert!(polls > 0, "{}", md["python"]["vllm_state"]);
    eprintln!(
        "real vLLM: {} of {steps} outputs read, {preempted} preemptions, {} requests, {polls} polls; {stats}",
        rows.len(),
        requests.len()
    );
}
