//! `profilemate top` against the vLLM-shaped fixture (issue 11 §4): the full-screen view in a
//! tmux pane (steps counted, the queue and KV line filled, q detaches with status 0, the
//! terminal left cooked), the plain-text view on a pipe (SIGTERM detaches), and in both
//! cases the target runs on and no session directory is left anywhere.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use profilemate_tests::{can_attach, profilemate_bin, pythons, scratch, serial, Proc, Target};

/// tmux on a private socket, whose server is killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn pane(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // The server is gone already when the pane's shell has exited.
        let _ = self
            .cmd()
            .arg("kill-server")
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Whether tmux runs here; outside CI a missing tmux skips the test (`cargo xtask test`
/// installs it).
fn have_tmux(test: &str) -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: tmux is missing in CI (`cargo xtask test` installs it)"
        );
        eprintln!("SKIPPED {test}: tmux is not installed (`cargo xtask test` installs it)");
    }
    ok
}

/// The number after "steps: " in the view ("steps: 123 total, ...").
fn steps_shown(text: &str) -> Option<u64> {
    let rest = &text[text.find("steps: ")? + "steps: ".len()..];
    rest.split(' ').next()?.parse().ok()
}

/// "queue: running N, waiting M; kv: X%" with numbers read.
fn queue_line_filled(text: &str) -> bool {
    text.lines().any(|l| {
        l.contains("queue: running ")
            && !l.contains("running ?")
            && !l.contains("waiting ?")
            && l.split("kv: ")
                .nth(1)
                .is_some_and(|k| k.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// Nothing was written: the output base is absent or empty, and the scratch session under
/// TMPDIR was removed.
fn assert_nothing_written(label: &str, out: &Path, tmp: &Path) {
    let listed = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    assert!(
        listed(out).is_empty(),
        "{label}: top wrote into {}: {:?}",
        out.display(),
        listed(out)
    );
    assert!(
        listed(tmp).is_empty(),
        "{label}: top left files in TMPDIR: {:?}",
        listed(tmp)
    );
}

/// The vLLM fixture, running until killed.
fn start_target(dir: &Path) -> (String, Target) {
    let (label, python) = pythons().into_iter().next().expect("a CPython 3.11-3.13");
    let mut target = Target::vllm(dir, &python, &["--forever"]);
    target.proc.wait_line("ready");
    (label, target)
}

fn assert_target_runs(label: &str, target: &mut Target) {
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        target.proc.child.try_wait().expect("try_wait").is_none(),
        "{label}: the target exited while or after top watched it"
    );
}

#[test]
fn top_in_tmux_shows_steps_and_queues_and_q_detaches_cleanly() {
    let test = "top_in_tmux_shows_steps_and_queues_and_q_detaches_cleanly";
    let _g = serial();
    if !can_attach(test) || !have_tmux(test) {
        return;
    }
    if pythons().is_empty() {
        eprintln!("SKIPPED {test}: no CPython 3.11-3.13 found");
        return;
    }
    let dir = scratch("top-tmux");
    let (label, mut target) = start_target(&dir);
    let (out, tmp) = (dir.join("out"), dir.join("tmp"));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let (status, stty) = (dir.join("status"), dir.join("stty"));
    // The exit status and the terminal's modes once top has exited, from the pane's shell.
    let script = format!(
        "VLLM_PROFILING_DIR='{}' TMPDIR='{}' '{}' top --pid {}; echo $? > '{}'; stty -a > '{}'",
        out.display(),
        tmp.display(),
        profilemate_bin().display(),
        target.proc.pid(),
        status.display(),
        stty.display()
    );
    let tmux = Tmux {
        socket: format!("pm-top-{}", std::process::id()),
    };
    let started = tmux
        .cmd()
        .args([
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "160",
            "-y",
            "50",
            "sh",
            "-c",
            &script,
        ])
        .status()
        .expect("tmux new-session");
    assert!(started.success(), "tmux new-session failed");

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pane = String::new();
    while Instant::now() < deadline {
        pane = tmux.pane();
        if steps_shown(&pane).is_some_and(|n| n > 0) && queue_line_filled(&pane) {
            break;
        }
        assert!(
            !status.exists(),
            "{label}: top exited before showing steps; last pane:\n{pane}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        steps_shown(&pane).is_some_and(|n| n > 0) && queue_line_filled(&pane),
        "{label}: no steps or queue/KV line within 60 s; last pane:\n{pane}"
    );
    for want in ["gpu time ", "batch: ", "top vllm operations", "lost: "] {
        assert!(pane.contains(want), "{label}: {want:?} missing:\n{pane}");
    }

    let sent = tmux
        .cmd()
        .args(["send-keys", "-t", "top", "q"])
        .status()
        .expect("tmux send-keys");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(8);
    while !status.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let code = std::fs::read_to_string(&status).unwrap_or_else(|_| {
        panic!(
            "{label}: top did not exit within 8 s of q; pane:\n{}",
            tmux.pane()
        )
    });
    assert_eq!(code.trim(), "0", "{label}: top's exit status");
    let modes = std::fs::read_to_string(&stty).unwrap_or_default();
    let on = |flag: &str| modes.split_whitespace().any(|w| w == flag);
    assert!(
        on("icanon") && on("echo"),
        "{label}: the terminal was left in raw mode: {modes}"
    );
    assert_target_runs(&label, &mut target);
    assert_nothing_written(&label, &out, &tmp);
}

/// `profilemate top` with stdout on a pipe until SIGTERM; with `keep`, `--out` is given.
fn on_a_pipe(test: &str, keep: bool) {
    let _g = serial();
    if !can_attach(test) {
        return;
    }
    if pythons().is_empty() {
        eprintln!("SKIPPED {test}: no CPython 3.11-3.13 found");
        return;
    }
    let dir = scratch(test);
    let (label, mut target) = start_target(&dir);
    let (out, tmp) = (dir.join("out"), dir.join("tmp"));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let mut cmd = Command::new(profilemate_bin());
    cmd.args(["top", "--pid", &target.proc.pid().to_string()])
        .env("TMPDIR", &tmp);
    if keep {
        cmd.arg("--out").arg(&out);
    } else {
        cmd.env("VLLM_PROFILING_DIR", &out);
    }
    let mut top = Proc::spawn(&mut cmd);
    let started = Instant::now();
    loop {
        let line = top.wait_line("steps: ");
        if steps_shown(&line).is_some_and(|n| n > 0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{label}: no steps within 60 s: {:?}",
            top.lines
        );
    }
    // Every block has the queue line, and one more block follows a second later.
    top.wait_line("queue: running ");
    top.wait_line("steps: ");
    let blocks = top
        .lines
        .iter()
        .filter(|l| l.starts_with("steps: "))
        .count();
    assert!(blocks >= 2, "{label}: {:?}", top.lines);
    top.signal(libc::SIGTERM);
    assert_eq!(
        top.wait_exit(Duration::from_secs(if keep { 30 } else { 8 })),
        0,
        "{label}: top's exit status after SIGTERM: {:?}",
        top.rest()
    );
    let paths: Vec<String> = top
        .rest()
        .iter()
        .filter_map(|l| l.strip_prefix("session: ").map(str::to_owned))
        .collect();
    assert_target_runs(&label, &mut target);
    if keep {
        // Written as attach writes it, its path printed once.
        assert_eq!(paths.len(), 1, "{label}: {:?}", top.lines);
        let session = PathBuf::from(&paths[0]);
        assert!(session.starts_with(&out), "{label}: {}", session.display());
        for f in ["metadata.json", "forward_pass_timing.csv", "report.html"] {
            assert!(session.join(f).exists(), "{label}: {f} missing");
        }
        let rows = std::fs::read_to_string(session.join("forward_pass_timing.csv"))
            .unwrap_or_default()
            .lines()
            .count();
        assert!(rows > 1, "{label}: no steps written");
        assert!(
            std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_none()),
            "{label}: files left in TMPDIR"
        );
    } else {
        assert!(
            paths.is_empty(),
            "{label}: a session path was printed without --out"
        );
        assert_nothing_written(&label, &out, &tmp);
    }
}

#[test]
fn top_on_a_pipe_prints_a_block_per_second_and_sigterm_detaches() {
    on_a_pipe(
        "top_on_a_pipe_prints_a_block_per_second_and_sigterm_detaches",
        false,
    );
}

#[test]
fn top_with_out_writes_the_session_as_attach_does() {
    on_a_pipe("top_with_out_writes_the_session_as_attach_does", true);
}

#[test]
fn view_numbers_are_parsed_from_the_lines_top_prints() {
    assert_eq!(steps_shown("│steps: 42 total, 3.1/s over 10 s"), Some(42));
    assert!(queue_line_filled(
        "queue: running 3, waiting 0; kv: 12.5%; preemptions 0.00/s"
    ));
    assert!(!queue_line_filled(
        "queue: running ?, waiting ?; kv: ?; preemptions 0.00/s"
    ));
}
