//! `profilemate calibrate` where there is no GPU, and `attach --calibration FILE`: a good file
//! is named in metadata.json with the figures used and bounds the exact rows in
//! forward_pass_summary.json; a malformed one stops the attach before anything is attached.
//! The measurement itself needs a GPU (tests/gpu on the GPU machine).

use std::{path::Path, process::Command, time::Duration};

use profilemate_tests::{can_attach, profilemate_bin, scratch, serial, Target, Tracer};

/// Whether an NVIDIA driver library is installed here (then this is no GPU-less machine).
fn has_nvidia_driver() -> bool {
    Command::new("ldconfig")
        .arg("-p")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("libcuda.so"))
}

#[test]
fn calibrate_without_a_gpu_says_so_and_fails() {
    let test = "calibrate_without_a_gpu_says_so_and_fails";
    if !profilemate_bin().exists() {
        eprintln!("SKIPPED {test}: no binary (cargo xtask build)");
        return;
    }
    if has_nvidia_driver() {
        eprintln!("SKIPPED {test}: an NVIDIA driver is installed here");
        return;
    }
    let dir = scratch("calibrate-nogpu");
    let file = dir.join("calibration.json");
    let out = Command::new(profilemate_bin())
        .args(["calibrate", "--out"])
        .arg(&file)
        .output()
        .expect("run profilemate calibrate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no NVIDIA GPU/driver found"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!file.exists(), "no calibration written");
}

/// A calibration file as `calibrate` writes it, with made-up figures (schema test data, not
/// a measurement).
fn calibration_json(p99: f64) -> String {
    let m = |p50: f64, p99: f64| serde_json::json!({"count": 100, "p50": p50, "p95": p99, "p99": p99, "max": p99});
    serde_json::json!({
        "schema_version": 1,
        "created": "2026-01-01T00:00:00+00:00",
        "hostname": "test",
        "kernel": "6.18.0",
        "tracer_version": "0.1.0",
        "gpu": {"ordinal": 0, "name": "test", "driver_api_version": 13000,
                "driver_library": "/x/libcuda.so.1", "compute_capability": [9, 0]},
        "wake_up_us": {"all": m(3.0, p99), "event_sync_next_step": null,
                       "graph_replay": null, "stream_sync": null},
        "launch_latency_us": m(4.0, 9.0),
        "probe_cost": {"uprobe_us": 1.0, "uprobe_and_uretprobe_us": 2.0, "uretprobe_us": 1.0,
                       "hw_breakpoint_us": null, "hw_breakpoint_error": "none"},
        "exact_threshold_us": 100.0,
        "min_reliably_exact_wait_us": 100.5,
        "exact_sweep": [],
        "notes": []
    })
    .to_string()
}

fn fixture(dir: &Path) -> Target {
    let mut t = Target::rust(
        dir,
        &[
            "--wait-after-load-ms",
            "2000",
            "--steps",
            "30",
            "--kernel-us",
            "300",
        ],
    );
    t.proc.wait_line("ready");
    t
}

#[test]
fn attach_names_the_calibration_it_used_and_states_the_bound() {
    let test = "attach_names_the_calibration_it_used_and_states_the_bound";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let dir = scratch("calibrated-attach");
    let file = dir.join("calibration.json");
    std::fs::write(&file, calibration_json(12.5)).expect("write calibration");
    let mut target = fixture(&dir);
    let path = file.to_str().unwrap_or_default();
    let mut tracer = Tracer::attach(target.proc.pid(), &dir, &["--calibration", path]);
    tracer.wait_attached();
    assert_eq!(target.proc.wait_exit(Duration::from_secs(60)), 0);
    let s = tracer.finish(Duration::from_secs(30));
    let md = s.json("metadata.json");
    let cal = &md["calibration"];
    assert_eq!(cal["path"], path, "{md:#}");
    assert_eq!(cal["exact_completion_error_bound_us"], 12.5, "{cal}");
    assert_eq!(cal["wake_up_us"]["p50"], 3.0, "{cal}");
    assert!(md["calibration_none"].is_null(), "{md:#}");
    let fp = s.json("forward_pass_summary.json");
    let bound = &fp["exact_completion_error"];
    assert_eq!(bound["completion_late_by_at_most_us"], 12.5, "{fp:#}");
    assert_eq!(bound["calibration"], path, "{fp:#}");
}

#[test]
fn attach_refuses_a_malformed_calibration_before_attaching() {
    let test = "attach_refuses_a_malformed_calibration_before_attaching";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let dir = scratch("bad-calibration");
    let file = dir.join("calibration.json");
    std::fs::write(&file, "{\"schema_version\": 1, \"wake_up_us\": 3}").expect("write");
    let mut target = fixture(&dir);
    let path = file.to_str().unwrap_or_default();
    let mut tracer = Tracer::attach(target.proc.pid(), &dir, &["--calibration", path]);
    let (code, stderr) = tracer.exit_code_and_stderr(Duration::from_secs(30));
    let said = stderr.join("\n");
    assert_ne!(code, 0, "{said}");
    assert!(said.contains("malformed") && said.contains(path), "{said}");
    assert!(
        said.contains("profilemate calibrate"),
        "says the fix: {said}"
    );
    let left = std::fs::read_dir(dir.join("sessions")).map_or(0, Iterator::count);
    assert_eq!(left, 0, "no session directory");
    assert_eq!(target.proc.wait_exit(Duration::from_secs(60)), 0);
}
