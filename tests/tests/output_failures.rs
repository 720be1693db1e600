//! End-to-end: a terminal that goes away (stdout or stderr a closed pipe, stdout a full
//! device) must not end a session in a panic; the session is written whole and the exit
//! status is 0. Needs root (eBPF); skips with a message otherwise.

use std::{
    fs::File,
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use profilemate_tests::{can_attach, profilemate_bin, scratch, serial, Target};

/// The write end of a pipe whose read end is already closed: every write gets EPIPE.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: a valid array of two fds for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

fn dev_full() -> Stdio {
    Stdio::from(
        File::options()
            .write(true)
            .open("/dev/full")
            .expect("open /dev/full"),
    )
}

/// Profiles the Rust fixture for 2 s with the given stdout and stderr; returns the exit
/// code and the session directory.
fn session_with(test: &str, stdout: Stdio, stderr: Stdio) -> (Option<i32>, PathBuf) {
    let dir = scratch(test);
    let mut target = Target::rust(&dir, &["--forever", "--wait-after-load-ms", "500"]);
    target.proc.wait_line("ready");
    let out = dir.join("sessions");
    let mut child = Command::new(profilemate_bin())
        .args(["attach", "--pid", &target.proc.pid().to_string()])
        .args(["--rescan-ms", "50", "--duration", "2s", "--out"])
        .arg(&out)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("run profilemate");
    let until = Instant::now().checked_add(Duration::from_secs(40));
    let code = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status.code();
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{test}: profilemate did not exit within 40 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let sessions: Vec<PathBuf> = std::fs::read_dir(&out)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(
        sessions.len(),
        1,
        "{test}: one session in {}",
        out.display()
    );
    (code, sessions[0].clone())
}

fn assert_complete(test: &str, code: Option<i32>, session: &Path) {
    assert_eq!(code, Some(0), "{test}: exit status (101 is a panic)");
    let text = std::fs::read_to_string(session.join("metadata.json"))
        .unwrap_or_else(|e| panic!("{test}: metadata.json: {e}"));
    let meta: serde_json::Value = serde_json::from_str(&text).expect("metadata.json parses");
    assert_eq!(meta["stop_reason"], "duration elapsed", "{test}");
    for f in [
        "forward_pass_timing.csv",
        "forward_pass_summary.json",
        "cuda_api_summary.json",
        "gc_summary.json",
        "cpu_profile.folded",
    ] {
        assert!(session.join(f).exists(), "{test}: {f} missing");
    }
}

#[test]
fn stdout_to_a_full_device_still_completes_the_session() {
    let test = "stdout_to_a_full_device_still_completes_the_session";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let (code, session) = session_with(test, dev_full(), Stdio::null());
    assert_complete(test, code, &session);
}

#[test]
fn stdout_to_a_closed_pipe_still_completes_the_session() {
    let test = "stdout_to_a_closed_pipe_still_completes_the_session";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let (code, session) = session_with(test, closed_pipe(), Stdio::null());
    assert_complete(test, code, &session);
}

#[test]
fn stderr_to_a_closed_pipe_still_completes_the_session() {
    let test = "stderr_to_a_closed_pipe_still_completes_the_session";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let (code, session) = session_with(test, Stdio::null(), closed_pipe());
    assert_complete(test, code, &session);
}

#[test]
fn stdout_and_stderr_both_closed_still_complete_the_session() {
    let test = "stdout_and_stderr_both_closed_still_complete_the_session";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let (code, session) = session_with(test, closed_pipe(), closed_pipe());
    assert_complete(test, code, &session);
}
