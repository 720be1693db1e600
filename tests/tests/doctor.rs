//! `profilemate doctor` end to end, each state produced for real: a fixture over the fake CUDA
//! libraries, a Python fixture on a CPython with USDT notes, a process without CUDA, an
//! unsupported CPython, a target under a seccomp filter, a tracer without the capabilities,
//! an unknown pid. Asserts on the JSON report and the exit status. Needs root (the trials and
//! the setpriv'd tracer); skips elsewhere.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use profilemate_tests::{
    can_attach, fake_cuda_dir, fixture_bin, profilemate_bin, root, scratch, serial, Proc,
};
use serde_json::Value;

/// Runs `cmd doctor ARGS --json --out DIR/out`; (exit code, report).
fn doctor_with(mut cmd: Command, dir: &Path, args: &[&str]) -> (i32, Value) {
    let out = cmd
        .arg("doctor")
        .args(args)
        .arg("--json")
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .expect("run profilemate doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

fn doctor(dir: &Path, args: &[&str]) -> (i32, Value) {
    doctor_with(Command::new(profilemate_bin()), dir, args)
}

/// The checks called `name` (one per process for per-process checks).
fn checks<'a>(report: &'a Value, name: &str) -> Vec<&'a Value> {
    report["checks"]
        .as_array()
        .map(|a| a.iter().filter(|c| c["name"] == name).collect())
        .unwrap_or_default()
}

/// The one check called `name`.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    let found = checks(report, name);
    assert_eq!(found.len(), 1, "{name}: {report:#}");
    found[0]
}

fn status<'a>(report: &'a Value, name: &str) -> &'a str {
    check(report, name)["status"].as_str().unwrap_or_default()
}

/// Fails with every non-OK line of the report shown.
fn assert_no_failures(report: &Value, label: &str) {
    let bad: Vec<&Value> = report["checks"]
        .as_array()
        .map(|a| a.iter().filter(|c| c["status"] == "FAIL").collect())
        .unwrap_or_default();
    assert!(bad.is_empty(), "{label}: {bad:#?}");
    assert_eq!(report["fail"], 0, "{label}");
}

/// The Rust fixture on the fake CUDA libraries, loaded and waiting (long enough for a doctor
/// run on a loaded machine), then running a few steps.
fn fixture(extra: &[&str]) -> Proc {
    let mut cmd = Command::new(fixture_bin());
    cmd.arg("--lib-dir")
        .arg(fake_cuda_dir())
        .args(["--wait-after-load-ms", "8000", "--steps", "20"])
        .args(extra)
        .env("FAKE_CUDA_LOG", "/dev/null");
    let mut p = Proc::spawn(&mut cmd);
    p.wait_line("ready");
    p
}

#[test]
fn a_fixture_over_the_fake_cuda_libraries_is_ready() {
    let test = "a_fixture_over_the_fake_cuda_libraries_is_ready";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let dir = scratch("doctor-ready");
    let mut target = fixture(&[]);
    let pid = target.pid();
    let (code, r) = doctor(&dir, &["--pid", &pid.to_string()]);
    assert_eq!(code, 0, "{r:#}");
    assert_no_failures(&r, test);
    for name in [
        "kernel",
        "uprobe_pmu",
        "capabilities",
        "ring_buffer_map",
        "ebpf_programs",
        "uprobe_event",
        "uretprobe_event",
        "output_dir",
        "cuda",
    ] {
        assert_eq!(status(&r, name), "OK", "{name}: {r:#}");
    }
    let libs = checks(&r, "cuda_library");
    assert_eq!(libs.len(), 2, "libcudart and libcuda: {r:#}");
    for l in libs {
        assert_eq!(l["status"], "OK", "{l}");
        assert_eq!(l["pid"], pid, "{l}");
        let d = l["detail"].as_str().unwrap_or_default();
        assert!(d.contains(&format!("/proc/{pid}/root/")), "{d}");
    }
    assert_eq!(status(&r, "memory_read"), "OK");
    assert_eq!(status(&r, "seccomp"), "OK");
    assert!(
        check(&r, "debug_registers")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("free on thread")),
        "{r:#}"
    );
    // Nothing was attached and nothing changed: the target runs its steps and exits cleanly.
    assert_eq!(target.wait_exit(Duration::from_secs(60)), 0);
}

#[test]
fn a_python_target_with_usdt_notes_is_walkable() {
    let test = "a_python_target_with_usdt_notes_is_walkable";
    if !can_attach(test) {
        return;
    }
    let python = PathBuf::from("/usr/bin/python3.11");
    if !python.exists() {
        eprintln!("SKIPPED {test}: needs Debian's python3.11 (built --with-dtrace)");
        return;
    }
    let _g = serial();
    let dir = scratch("doctor-python");
    let mut cmd = Command::new(&python);
    cmd.arg(root().join("tests/scripts/fixture_loop.py"))
        .arg("--lib-dir")
        .arg(fake_cuda_dir())
        .arg("--forever")
        .env("FAKE_CUDA_LOG", "/dev/null")
        .env("PYTHONUNBUFFERED", "1");
    let mut target = Proc::spawn(&mut cmd);
    target.wait_line("ready");
    let (code, r) = doctor(&dir, &["--pid", &target.pid().to_string()]);
    assert_eq!(code, 0, "{r:#}");
    assert_no_failures(&r, test);
    let py = check(&r, "python");
    assert_eq!(py["status"], "OK", "{py}");
    let d = py["detail"].as_str().unwrap_or_default();
    assert!(d.contains("CPython 3.11") && d.contains("tested"), "{d}");
    let usdt = check(&r, "usdt");
    assert_eq!(usdt["status"], "OK", "{usdt}");
    assert!(
        usdt["detail"]
            .as_str()
            .is_some_and(|d| d.contains("python:gc__start") && d.contains("semaphore")),
        "{usdt}"
    );
    assert_eq!(status(&r, "python_stacks"), "OK");
}

#[test]
fn a_process_without_cuda_fails_with_the_fix() {
    let test = "a_process_without_cuda_fails_with_the_fix";
    if !can_attach(test) {
        return;
    }
    let dir = scratch("doctor-nocuda");
    let sleeper = Proc::spawn(Command::new("sleep").arg("30"));
    let (code, r) = doctor(&dir, &["--pid", &sleeper.pid().to_string()]);
    assert_eq!(code, 1, "{r:#}");
    let cuda = check(&r, "cuda");
    assert_eq!(cuda["status"], "FAIL", "{cuda}");
    assert!(
        cuda["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no CUDA library")),
        "{cuda}"
    );
    assert!(
        cuda["fix"].as_str().is_some_and(|f| f.contains("--wait")),
        "{cuda}"
    );
    assert!(checks(&r, "cuda_library").is_empty());
}

/// A CPython older than 3.11 (pyenv's 3.10 where installed).
fn python_310() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let mut found: Vec<PathBuf> = std::fs::read_dir(home.join(".pyenv/versions"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("3.10."))
        .map(|e| e.path().join("bin/python3.10"))
        .chain([PathBuf::from("/usr/bin/python3.10")])
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

#[test]
fn an_unsupported_python_is_a_warning_with_the_versions_that_work() {
    let test = "an_unsupported_python_is_a_warning_with_the_versions_that_work";
    if !can_attach(test) {
        return;
    }
    let Some(python) = python_310() else {
        eprintln!("SKIPPED {test}: no CPython 3.10 here");
        return;
    };
    let dir = scratch("doctor-py310");
    let target = Proc::spawn(Command::new(python).args(["-c", "import time; time.sleep(30)"]));
    std::thread::sleep(Duration::from_millis(500));
    let (_, r) = doctor(&dir, &["--pid", &target.pid().to_string()]);
    let py = check(&r, "python");
    assert_eq!(py["status"], "WARN", "{py}");
    assert!(
        py["detail"]
            .as_str()
            .is_some_and(|d| d.contains("3.10 is not supported")),
        "{py}"
    );
    assert!(
        py["fix"].as_str().is_some_and(|f| f.contains("3.11-3.14")),
        "{py}"
    );
    assert_eq!(status(&r, "python_stacks"), "WARN");
}

#[test]
fn a_seccomp_target_is_judged_for_this_kernel() {
    let test = "a_seccomp_target_is_judged_for_this_kernel";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let dir = scratch("doctor-seccomp");
    let mut target = fixture(&["--seccomp-kill-uretprobe"]);
    let (code, r) = doctor(&dir, &["--pid", &target.pid().to_string()]);
    assert_eq!(code, 0, "{r:#}");
    let s = check(&r, "seccomp");
    let d = s["detail"].as_str().unwrap_or_default();
    assert!(d.contains("a filter (2)"), "{s}");
    // What it means depends on the kernel: 6.11-6.13 filter the uretprobe syscall.
    let kernel = r["kernel"].as_str().unwrap_or_default();
    let mut v = kernel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    if ((6, 11)..(6, 14)).contains(&version) {
        assert_eq!(s["status"], "WARN", "{s}");
        assert!(d.contains("entry probes only"), "{s}");
    } else {
        assert_eq!(s["status"], "OK", "{s}");
        assert!(d.contains("return probes attach"), "{s}");
    }
    assert_eq!(
        target.wait_exit(Duration::from_secs(60)),
        0,
        "the target under seccomp was not disturbed"
    );
}

#[test]
fn a_tracer_without_the_capabilities_fails_naming_them() {
    let test = "a_tracer_without_the_capabilities_fails_naming_them";
    if !can_attach(test) {
        return;
    }
    if !Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("SKIPPED {test}: needs setpriv (util-linux)");
        return;
    }
    let dir = scratch("doctor-nocaps");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = dir.join("profilemate");
    std::fs::copy(profilemate_bin(), &bin).expect("copy profilemate");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    std::os::unix::fs::chown(&out, Some(65534), Some(65534)).expect("chown");
    let target = fixture(&[]);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args([
            "--inh-caps=-all,+sys_ptrace",
            "--ambient-caps=-all,+sys_ptrace",
        ])
        .arg(&bin);
    let (code, r) = doctor_with(cmd, &dir, &["--pid", &target.pid().to_string()]);
    assert_eq!(code, 1, "{r:#}");
    let caps = check(&r, "capabilities");
    assert_eq!(caps["status"], "FAIL", "{caps}");
    let fix = caps["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains("CAP_SYS_ADMIN") && fix.contains("CAP_SYS_PTRACE"),
        "{caps}"
    );
    assert!(
        caps["detail"]
            .as_str()
            .is_some_and(|d| d.contains("CAP_SYS_PTRACE")),
        "says what it holds: {caps}"
    );
    // Tried, not assumed: the kernel refuses the objects an attach needs.
    for name in ["ring_buffer_map", "uprobe_event"] {
        let c = check(&r, name);
        assert_eq!(c["status"], "FAIL", "{c}");
        assert!(
            c["fix"]
                .as_str()
                .is_some_and(|f| f.contains("CAP_SYS_ADMIN")),
            "{c}"
        );
    }
    assert_eq!(status(&r, "output_dir"), "OK", "its own output directory");
}

#[test]
fn an_unknown_pid_fails() {
    if !can_attach("an_unknown_pid_fails") {
        return;
    }
    let dir = scratch("doctor-nopid");
    let (code, r) = doctor(&dir, &["--pid", "999999999"]);
    assert_eq!(code, 1, "{r:#}");
    let p = check(&r, "process");
    assert_eq!(p["status"], "FAIL");
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no process with pid 999999999")),
        "{p}"
    );
    assert_eq!(r["pid"], 999_999_999);
}

#[test]
fn without_a_pid_the_table_has_one_line_per_check_and_a_total() {
    if !can_attach("without_a_pid_the_table_has_one_line_per_check_and_a_total") {
        return;
    }
    let dir = scratch("doctor-table");
    let out = Command::new(profilemate_bin())
        .args(["doctor", "--out"])
        .arg(dir.join("out"))
        .output()
        .expect("run profilemate doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 10, "{text}");
    for l in &lines[..lines.len() - 1] {
        assert!(
            ["OK  ", "WARN", "FAIL"].iter().any(|s| l.starts_with(s)),
            "{l}"
        );
    }
    assert!(lines.last().is_some_and(|l| l.ends_with(" FAIL")), "{text}");
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!dir.join("out").exists(), "the doctor creates nothing");
}
