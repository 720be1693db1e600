//! Bad input gets a clear error that names the fix, and leaves no half-written session.

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use profilemate_tests::{can_attach, profilemate_bin, scratch, Proc};

fn attach_fails(args: &[&str]) -> String {
    let out = Command::new(profilemate_bin())
        .arg("attach")
        .args(args)
        .output()
        .expect("run profilemate");
    assert!(!out.status.success(), "expected failure for {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_pid_is_reported() {
    if !can_attach("unknown_pid_is_reported") {
        return;
    }
    let dir = scratch("nopid");
    let err = attach_fails(&[
        "--pid",
        "999999999",
        "--out",
        dir.to_str().unwrap_or("/tmp"),
    ]);
    assert!(err.contains("no process with pid 999999999"), "{err}");
}

#[test]
fn target_without_cuda_names_wait_flag_and_writes_nothing() {
    if !can_attach("target_without_cuda_names_wait_flag_and_writes_nothing") {
        return;
    }
    let dir = scratch("nocuda");
    let sleeper = Proc::spawn(Command::new("sleep").arg("30"));
    let out = dir.join("sessions");
    let err = attach_fails(&[
        "--pid",
        &sleeper.pid().to_string(),
        "--out",
        out.to_str().unwrap_or("/tmp"),
    ]);
    assert!(
        err.contains("no CUDA library") && err.contains("--wait"),
        "{err}"
    );
    let left = std::fs::read_dir(&out).map_or(0, Iterator::count);
    assert_eq!(left, 0, "no empty session directory left behind");
}

#[test]
fn unwritable_output_directory_is_reported() {
    if !can_attach("unwritable_output_directory_is_reported") {
        return;
    }
    let sleeper = Proc::spawn(Command::new("sleep").arg("30"));
    let err = attach_fails(&[
        "--pid",
        &sleeper.pid().to_string(),
        "--out",
        "/proc/self/no-such-dir",
    ]);
    assert!(err.contains("--out"), "{err}");
}

#[test]
fn unprivileged_user_is_told_how_to_fix_it() {
    if !can_attach("unprivileged_user_is_told_how_to_fix_it") {
        return;
    }
    // Drop to nobody with no capabilities.
    let has_setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_setpriv {
        eprintln!(
            "SKIPPED unprivileged_user_is_told_how_to_fix_it: setpriv (util-linux) not installed"
        );
        return;
    }
    // A copy nobody can reach: the checkout may live under a directory only root may enter.
    let dir = scratch("unprivileged");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = dir.join("profilemate");
    std::fs::copy(profilemate_bin(), &bin).expect("copy binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(&bin)
        .args(["attach", "--pid", "1"])
        .output()
        .expect("run setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("CAP_SYS_ADMIN") && err.contains("sudo"),
        "{err}"
    );
}

/// `--duration 0s` used to be accepted, and `--duration 500000000000y` panicked with an
/// overflow after attaching: both are refused at parsing, with the bound said.
#[test]
fn duration_of_zero_or_beyond_30_days_is_refused_at_parsing() {
    if !profilemate_bin().exists() {
        eprintln!("SKIPPED duration_of_zero_or_beyond_30_days_is_refused_at_parsing: no binary");
        return;
    }
    for (d, says) in [
        ("0s", "more than zero"),
        ("0ms", "more than zero"),
        ("31days", "at most 30 days"),
        ("500000000000y", "at most 30 days"),
    ] {
        let out = Command::new(profilemate_bin())
            .args(["attach", "--pid", "1", "--duration", d])
            .output()
            .expect("run profilemate");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{d}: a usage error: {err}");
        assert!(
            err.contains("--duration") && err.contains(says),
            "{d}: {err}"
        );
        assert!(!err.contains("panicked"), "{d}: {err}");
    }
}

/// Runs `profilemate attach ARGS`, killing it after `limit`; (exit code, stderr).
fn attach_within(args: &[&str], limit: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(profilemate_bin())
        .arg("attach")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run profilemate");
    let until = Instant::now().checked_add(limit);
    let code = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status.code();
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (code, err)
}

/// `--pid 2` (kthreadd) was told to pass --wait, and --wait then watched kernel threads
/// forever.
#[test]
fn a_kernel_thread_pid_is_named_a_kernel_thread() {
    let test = "a_kernel_thread_pid_is_named_a_kernel_thread";
    if !can_attach(test) {
        return;
    }
    let stat = std::fs::read_to_string("/proc/2/stat").unwrap_or_default();
    if !stat.contains("(kthreadd)") {
        eprintln!("SKIPPED {test}: pid 2 is not kthreadd here (a pid namespace)");
        return;
    }
    let dir = scratch("kthread");
    let out = dir.join("sessions");
    let out = out.to_str().unwrap_or("/tmp");
    for args in [
        &["--pid", "2", "--out", out][..],
        &["--pid", "2", "--wait", "--out", out],
        &["--pid", "2", "--wait", "--no-children", "--out", out],
    ] {
        let (code, err) = attach_within(args, Duration::from_secs(10));
        assert_eq!(code, Some(1), "{args:?} must fail at once: {err}");
        assert!(err.contains("kernel thread"), "{args:?}: {err}");
        assert!(!err.contains("--wait to"), "{args:?}: {err}");
    }
    let left = std::fs::read_dir(dir.join("sessions")).map_or(0, Iterator::count);
    assert_eq!(left, 0, "no session directory left behind");
}
