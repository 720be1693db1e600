//! Helpers shared by the end-to-end tests: locating the built artifacts, spawning fixture
//! targets that are killed on drop, running `profilemate attach`, and reading the fake CUDA
//! ground-truth log and the session files.

pub mod report_page;
pub mod seeds;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// Repository root.
#[must_use]
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn artifact(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env).map_or_else(|| root().join(default), PathBuf::from)
}

/// The profilemate binary (`cargo xtask build` puts it in target/release).
#[must_use]
pub fn profilemate_bin() -> PathBuf {
    artifact("PROFILEMATE_BIN", "target/release/profilemate")
}

/// The Rust fixture target.
#[must_use]
pub fn fixture_bin() -> PathBuf {
    artifact("PROFILEMATE_FIXTURE", "target/release/pm-fixture")
}

/// The directory with the fake libcudart.so.12/.13 and libcuda.so.1.
#[must_use]
pub fn fake_cuda_dir() -> PathBuf {
    artifact("PROFILEMATE_FAKE_CUDA", "target/fake-cuda")
}

/// Tests that attach run one at a time: parallel targets would distort the timing checks.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// True when the test may attach eBPF probes; otherwise prints why it is skipped.
#[must_use]
pub fn can_attach(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: needs root (eBPF uprobes); run `sudo -E cargo xtask test`");
        return false;
    }
    for p in [
        profilemate_bin(),
        fixture_bin(),
        fake_cuda_dir().join("libcuda.so.1"),
    ] {
        assert!(
            p.exists(),
            "{} missing: build with `cargo xtask build`",
            p.display()
        );
    }
    true
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Its stdout lines, read so far.
    pub lines: Vec<String>,
    reader: Option<BufReader<std::process::ChildStdout>>,
}

impl Proc {
    /// Spawns `cmd` with stdout piped.
    #[must_use]
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let reader = child.stdout.take().map(BufReader::new);
        Self {
            child,
            lines: Vec::new(),
            reader,
        }
    }

    /// Pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout until a line contains `needle`; panics at EOF.
    pub fn wait_line(&mut self, needle: &str) -> String {
        let reader = self.reader.as_mut().expect("stdout piped");
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read stdout");
            assert!(
                n > 0,
                "process ended before printing {needle:?}; output so far: {:?}",
                self.lines
            );
            let line = line.trim_end().to_owned();
            self.lines.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Waits for exit (with a timeout) and returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s.code().unwrap_or(-1);
            }
            assert!(
                deadline.is_none_or(|d| Instant::now() < d),
                "process {} did not exit within {timeout:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: signal to our own child.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// The rest of stdout after exit.
    pub fn rest(&mut self) -> Vec<String> {
        if let Some(r) = self.reader.take() {
            self.lines.extend(r.lines().map_while(Result::ok));
        }
        self.lines.clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fixture target writing its ground truth into a fresh log.
pub struct Target {
    /// The process.
    pub proc: Proc,
    /// Ground-truth log path.
    pub log: PathBuf,
}

/// A scratch directory unique to a test.
#[must_use]
pub fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("profilemate-e2e-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

impl Target {
    /// Starts the Rust fixture with `args` (the library directory is added).
    #[must_use]
    pub fn rust(dir: &Path, args: &[&str]) -> Self {
        let log = dir.join("truth.log");
        let mut cmd = Command::new(fixture_bin());
        cmd.arg("--lib-dir")
            .arg(fake_cuda_dir())
            .args(args)
            .env("FAKE_CUDA_LOG", &log);
        Self {
            proc: Proc::spawn(&mut cmd),
            log,
        }
    }

    /// Starts the Python fixture (tests/scripts/fixture_loop.py) with `args`.
    #[must_use]
    pub fn python(dir: &Path, args: &[&str]) -> Self {
        let log = dir.join("truth.log");
        let mut cmd = Command::new("python3");
        cmd.arg(root().join("tests/scripts/fixture_loop.py"))
            .arg("--lib-dir")
            .arg(fake_cuda_dir())
            .args(args)
            .env("FAKE_CUDA_LOG", &log)
            .env("PYTHONUNBUFFERED", "1");
        Self {
            proc: Proc::spawn(&mut cmd),
            log,
        }
    }

    /// Starts the vLLM-shaped Python fixture (tests/scripts/vllm_fixture.py) under `python`
    /// over the fake CUDA runtime; its own ground truth goes to `DIR/py_truth.jsonl`.
    #[must_use]
    pub fn vllm(dir: &Path, python: &Path, args: &[&str]) -> Self {
        Self::vllm_shaped(dir, python, args, true)
    }

    /// The vLLM-shaped fixture without any CUDA library (a scheduler-only process, as the
    /// EngineCore is with tensor parallelism).
    #[must_use]
    pub fn vllm_without_cuda(dir: &Path, python: &Path, args: &[&str]) -> Self {
        Self::vllm_shaped(dir, python, args, false)
    }

    fn vllm_shaped(dir: &Path, python: &Path, args: &[&str], cuda: bool) -> Self {
        let log = dir.join("truth.log");
        let mut cmd = Command::new(python);
        cmd.arg(root().join("tests/scripts/vllm_fixture.py"));
        if cuda {
            cmd.arg("--lib-dir").arg(fake_cuda_dir());
        }
        cmd.arg("--truth")
            .arg(dir.join("py_truth.jsonl"))
            .args(args)
            .env("FAKE_CUDA_LOG", &log)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        Self {
            proc: Proc::spawn(&mut cmd),
            log,
        }
    }

    /// Ground truth, after the target has exited.
    #[must_use]
    pub fn truth(&self) -> Truth {
        Truth::parse(
            &std::fs::read_to_string(&self.log)
                .unwrap_or_else(|e| panic!("read {}: {e}", self.log.display())),
        )
    }
}

/// A running `profilemate attach`.
pub struct Tracer {
    /// The process.
    pub proc: Proc,
    stderr: Option<BufReader<ChildStderr>>,
    /// Stderr lines read so far.
    pub stderr_lines: Vec<String>,
}

impl Tracer {
    /// Starts `profilemate attach --pid PID --out DIR/sessions` plus `args`.
    #[must_use]
    pub fn attach(pid: u32, dir: &Path, args: &[&str]) -> Self {
        Self::attach_with(Command::new(profilemate_bin()), pid, dir, args)
    }

    /// `attach` through `cmd`, a command that runs the tracer (`profilemate` itself, or a
    /// launcher such as `setpriv ... /path/to/profilemate` that changes its privileges).
    pub fn attach_with(mut cmd: Command, pid: u32, dir: &Path, args: &[&str]) -> Self {
        cmd.args([
            "attach",
            "--pid",
            &pid.to_string(),
            "--rescan-ms",
            "50",
            "--out",
        ])
        .arg(dir.join("sessions"))
        .args(args)
        .stderr(Stdio::piped());
        let mut proc = Proc::spawn(&mut cmd);
        let stderr = proc.child.stderr.take().map(BufReader::new);
        Self {
            proc,
            stderr,
            stderr_lines: Vec::new(),
        }
    }

    /// Waits for the tracer to exit; its exit code and stderr lines.
    pub fn exit_code_and_stderr(&mut self, timeout: Duration) -> (i32, Vec<String>) {
        let code = self.proc.wait_exit(timeout);
        if let Some(r) = self.stderr.take() {
            self.stderr_lines.extend(r.lines().map_while(Result::ok));
        }
        (code, self.stderr_lines.clone())
    }

    /// Waits until the tracer reports it is attached.
    pub fn wait_attached(&mut self) {
        let r = self.stderr.as_mut().expect("stderr piped");
        loop {
            let mut line = String::new();
            let n = r.read_line(&mut line).expect("read stderr");
            assert!(
                n > 0,
                "profilemate exited before attaching: {:?}",
                self.stderr_lines
            );
            self.stderr_lines.push(line.trim_end().to_owned());
            if line.contains("attached to") {
                return;
            }
        }
    }

    /// Waits for exit; returns the session directory it printed.
    pub fn finish(&mut self, timeout: Duration) -> Session {
        let code = self.proc.wait_exit(timeout);
        if let Some(r) = self.stderr.take() {
            self.stderr_lines.extend(r.lines().map_while(Result::ok));
        }
        let out = self.proc.rest();
        assert_eq!(
            code, 0,
            "profilemate failed; stderr: {:#?}",
            self.stderr_lines
        );
        let dir = out
            .iter()
            .find_map(|l| l.strip_prefix("session: "))
            .unwrap_or_else(|| panic!("no session line in {out:?}"));
        Session {
            dir: PathBuf::from(dir),
        }
    }
}

/// One call line of the ground-truth log.
#[derive(Debug, Clone)]
pub struct TruthCall {
    /// Entry ns (CLOCK_MONOTONIC).
    pub ts: u64,
    /// Return ns.
    pub end: u64,
    /// Process.
    pub pid: u32,
    /// Symbol.
    pub api: String,
    /// Made by a runtime call of the fake.
    pub nested: bool,
    /// Other fields.
    pub fields: HashMap<String, String>,
}

/// One executed GPU work item.
#[derive(Debug, Clone)]
pub struct TruthExec {
    /// kernel|copy|graph|event.
    pub kind: String,
    /// Start ns.
    pub start: u64,
    /// End ns.
    pub end: u64,
    /// Mark (step tag) when it was enqueued.
    pub tag: String,
    /// Process.
    pub pid: u32,
}

/// The parsed ground-truth log.
#[derive(Debug, Default)]
pub struct Truth {
    /// Calls.
    pub calls: Vec<TruthCall>,
    /// Executed work.
    pub execs: Vec<TruthExec>,
}

fn kv(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn num(f: &HashMap<String, String>, k: &str) -> u64 {
    f.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl Truth {
    /// Parses the log text.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let mut t = Self::default();
        for line in text.lines() {
            let f = kv(line);
            if line.starts_with("call ") {
                t.calls.push(TruthCall {
                    ts: num(&f, "ts"),
                    end: num(&f, "end"),
                    pid: num(&f, "pid") as u32,
                    api: f.get("api").cloned().unwrap_or_default(),
                    nested: f.get("nested").is_some_and(|v| v == "1"),
                    fields: f,
                });
            } else if line.starts_with("exec ") {
                t.execs.push(TruthExec {
                    kind: f.get("kind").cloned().unwrap_or_default(),
                    start: num(&f, "start"),
                    end: num(&f, "end"),
                    tag: f.get("tag").cloned().unwrap_or_default(),
                    pid: num(&f, "pid") as u32,
                });
            }
        }
        t
    }

    /// Application-level calls of `api` (not made by the fake's own runtime).
    #[must_use]
    pub fn app_calls(&self, api: &str) -> Vec<&TruthCall> {
        self.calls
            .iter()
            .filter(|c| c.api == api && !c.nested)
            .collect()
    }

    /// GPU busy span (first start to last end, ns) of the work each step tag enqueued,
    /// events excluded, in step order.
    #[must_use]
    pub fn step_gpu_ns(&self, pid: u32) -> Vec<(u64, u64)> {
        let mut by_step: std::collections::BTreeMap<u64, (u64, u64)> =
            std::collections::BTreeMap::new();
        for e in self
            .execs
            .iter()
            .filter(|e| e.pid == pid && e.kind != "event")
        {
            let Some(i) = e.tag.strip_prefix("step_").and_then(|s| s.parse().ok()) else {
                continue;
            };
            let span = by_step.entry(i).or_insert((u64::MAX, 0));
            span.0 = span.0.min(e.start);
            span.1 = span.1.max(e.end);
        }
        by_step.into_values().collect()
    }

    /// How late the target itself woke up after the GPU finished at `gpu_end`: the return of
    /// a synchronize call of `pid` that was blocked across that moment, minus it (0 when no
    /// call was waiting then). No tracer can see a completion before the target's own wait
    /// returns, so this is the part of an exact row's error that belongs to the machine.
    pub fn wake_up_lateness_ns(&self, pid: u32, gpu_end: u64) -> u64 {
        self.calls
            .iter()
            .filter(|c| c.pid == pid && c.api.contains("Synchronize"))
            .filter(|c| c.ts <= gpu_end && gpu_end <= c.end)
            .map(|c| c.end - gpu_end)
            .min()
            .unwrap_or(0)
    }
}

/// A finished session directory.
pub struct Session {
    /// The directory.
    pub dir: PathBuf,
}

impl Session {
    /// Rows of a CSV file as header -> value maps.
    #[must_use]
    pub fn csv(&self, name: &str) -> Vec<HashMap<String, String>> {
        let mut r =
            csv::Reader::from_path(self.dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let headers = r.headers().expect("header").clone();
        r.records()
            .map(|rec| {
                let rec = rec.expect("csv row");
                headers
                    .iter()
                    .zip(rec.iter())
                    .map(|(h, v)| (h.to_owned(), v.to_owned()))
                    .collect()
            })
            .collect()
    }

    /// A JSON file.
    #[must_use]
    pub fn json(&self, name: &str) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
    }
}

/// The JSON lines of one `kind` in a target's own ground-truth file.
#[must_use]
pub fn truth_lines(path: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// Checks request_lifecycle.csv against the target's `request` truth lines: every request
/// seen, its preemptions exact, its prompt exact or empty (a request shorter than a poll
/// period whose only step was not read). `more` checks a (truth, row) pair further.
/// Returns how many prompts were empty.
pub fn check_request_lifecycles(
    session: &Session,
    requests: &[serde_json::Value],
    mut more: impl FnMut(&serde_json::Value, &HashMap<String, String>),
) -> usize {
    let rows = session.csv("request_lifecycle.csv");
    let by_id: HashMap<&str, &HashMap<String, String>> =
        rows.iter().map(|r| (r["request_id"].as_str(), r)).collect();
    let num = |t: &serde_json::Value, k: &str| t[k].as_u64().unwrap_or_else(|| panic!("{k}"));
    let mut unknown_prompts = 0;
    for t in requests {
        let id = t["req"].as_str().unwrap_or_default();
        let r = by_id.get(id).unwrap_or_else(|| panic!("{id} missing"));
        if r["prompt_tokens"].is_empty() {
            unknown_prompts += 1;
        } else {
            assert_eq!(
                col(r, "prompt_tokens") as u64,
                num(t, "prompt_tokens"),
                "{id}"
            );
        }
        assert_eq!(col(r, "preemptions") as u64, num(t, "preemptions"), "{id}");
        more(t, r);
    }
    unknown_prompts
}

/// Column `k` of a row parsed as a number (0 when empty).
#[must_use]
pub fn col(row: &HashMap<String, String>, k: &str) -> f64 {
    row.get(k).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// The Python interpreters to test against that exist here: Debian's python3.11 (with USDT
/// notes, labelled `debian 3.11`) and the pyenv 3.11 / 3.12 / 3.13 builds. (label, path).
#[must_use]
pub fn pythons() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let debian = PathBuf::from("/usr/bin/python3.11");
    if debian.exists() {
        out.push(("debian 3.11 (/usr/bin/python3.11)".to_owned(), debian));
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    for minor in ["3.11", "3.12", "3.13"] {
        let Ok(dir) = std::fs::read_dir(home.join(".pyenv/versions")) else {
            continue;
        };
        let mut found: Vec<PathBuf> = dir
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{minor}."))
            })
            .map(|e| e.path().join(format!("bin/python{minor}")))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        if let Some(p) = found.pop() {
            out.push((format!("{minor} ({})", p.display()), p));
        }
    }
    out
}

/// One line of the Python fixture's ground truth.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PyTruthLine {
    /// meta | op | gc | step.
    pub kind: String,
    /// `file:qualname` (op).
    #[serde(default)]
    pub op: String,
    /// Thread.
    #[serde(default)]
    pub tid: u64,
    /// Step.
    #[serde(default)]
    pub step: i64,
    /// Start (op, step).
    #[serde(default)]
    pub start_ns: u64,
    /// End (op, step).
    #[serde(default)]
    pub end_ns: u64,
    /// CPU time (op).
    #[serde(default)]
    pub cpu_ns: u64,
    /// Line of the burn call (op).
    #[serde(default)]
    pub line: i64,
    /// start | stop (gc).
    #[serde(default)]
    pub phase: String,
    /// GC generation.
    #[serde(default)]
    pub generation: i64,
    /// Timestamp (gc, state).
    #[serde(default)]
    pub ts_ns: u64,
    /// Right before the change a state line records (the change happened between this and
    /// `ts_ns`).
    #[serde(default)]
    pub since_ns: u64,
    /// Scheduler queues (state).
    #[serde(default)]
    pub running: u64,
    /// See `running`.
    #[serde(default)]
    pub waiting: u64,
    /// See `running`.
    #[serde(default)]
    pub requests: u64,
    /// KV cache blocks (state).
    #[serde(default)]
    pub free_blocks: u64,
    /// See `free_blocks`.
    #[serde(default)]
    pub total_blocks: u64,
}

/// The Python fixture's ground truth file.
#[must_use]
pub fn py_truth(dir: &Path) -> Vec<PyTruthLine> {
    let text = std::fs::read_to_string(dir.join("py_truth.jsonl")).expect("python truth file");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("truth line {l}: {e}")))
        .collect()
}

/// Asserts that metadata.json's breakpoints watched the scheduler's preemption, arrival and
/// step methods in the first process that has them.
pub fn assert_scheduler_methods_watched(md: &serde_json::Value, label: &str) {
    let bp = &md["python"]["breakpoints"];
    let watched: Vec<&str> = bp["processes"][0]["functions"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f["qualname"].as_str()).collect())
        .unwrap_or_default();
    for q in [
        "Scheduler._preempt_request",
        "Scheduler.add_request",
        "Scheduler.schedule",
    ] {
        assert!(watched.contains(&q), "{label}: {q} not watched: {bp}");
    }
}
