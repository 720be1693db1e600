//! `profilemate report`: one self-contained `report.html`, a Chrome/Perfetto `trace.json` and
//! a speedscope profile, made from a session directory's files.
//!
//! Owns: reading a session directory (any one: this machine's or a copy from another) into
//! a typed [`Model`], and writing the three derived files. Does not own: the session's own
//! files (the profilers write them; this module only reads them) or the plots, findings and
//! page (`svg`, `findings`, `html`), the flame graph (`flame`), the trace (`trace`) and the
//! speedscope file (`speedscope`).
//!
//! Every string read from the session (request ids, function and thread names, command
//! lines) came from the target: the page escapes all of them (`html::esc`) and its script
//! never parses data as markup.

pub mod findings;
pub mod flame;
pub mod html;
pub mod speedscope;
pub mod svg;
pub mod trace;

use std::{
    collections::HashMap,
    ffi::CString,
    io::Write,
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde_json::Value;

/// The report's file name in a session directory.
pub const REPORT_FILE: &str = "report.html";
/// The Chrome trace event file.
pub const TRACE_FILE: &str = "trace.json";
/// The speedscope profile.
pub const SPEEDSCOPE_FILE: &str = "cpu_profile.speedscope.json";

/// How a step's GPU completion was observed (forward_pass_timing.csv `completion`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// A wait blocked until the GPU finished.
    Exact,
    /// Seen unfinished, then finished within 0.1 ms.
    Bracketed,
    /// Seen finished only later: forward_time_ms is an upper bound.
    UpperBound,
}

/// One row of forward_pass_timing.csv.
#[derive(Clone, Debug)]
pub struct Step {
    /// Per-process step number.
    pub step: u64,
    /// Step start (session seconds).
    pub t: f64,
    /// Process.
    pub pid: u32,
    /// Launching thread.
    pub tid: u32,
    /// prefill / decode / mixed / empty / unknown.
    pub phase: String,
    /// Scheduled tokens (when the batch was read).
    pub tokens: Option<f64>,
    /// GPU time (an upper bound unless exact).
    pub gpu_ms: f64,
    /// Lower bound of the GPU time.
    pub lower_ms: f64,
    /// CPU launch time.
    pub launch_ms: f64,
    /// How the completion was seen.
    pub completion: Completion,
    /// The GPU had finished when the CPU began to wait.
    pub done_before_wait: bool,
    /// GPU start (session seconds).
    pub gpu_start: f64,
    /// Completion (session seconds).
    pub completion_sec: f64,
    /// Graph replays in the step.
    pub graph_launches: u32,
    /// Replayed graph ids.
    pub graph_ids: Vec<u32>,
    /// Descriptor tokens minus scheduled tokens (FULL graphs whose descriptor was read).
    pub padded: Option<f64>,
}

/// One row of batch_utilization.csv.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Time.
    pub t: f64,
    /// Sequences scheduled.
    pub seqs: f64,
    /// `max_num_seqs`.
    pub max_seqs: Option<f64>,
    /// Tokens scheduled.
    pub tokens: f64,
    /// `max_num_scheduled_tokens`.
    pub max_tokens: Option<f64>,
}

/// One row of scheduler_state.csv.
#[derive(Clone, Copy, Debug)]
pub struct Queues {
    /// Time.
    pub t: f64,
    /// Running requests.
    pub running: f64,
    /// Waiting requests.
    pub waiting: f64,
}

/// One row of kv_cache_usage.csv.
#[derive(Clone, Copy, Debug)]
pub struct Kv {
    /// Time.
    pub t: f64,
    /// Usage, 0-100.
    pub pct: f64,
}

/// One row of preemption_events.csv.
#[derive(Clone, Debug)]
pub struct Preemption {
    /// Time.
    pub t: f64,
    /// Process.
    pub pid: u32,
    /// The request (chosen by a client: untrusted).
    pub request: String,
    /// Why.
    pub reason: String,
}

/// How a CPU row was measured (cpu_operations_timing.csv `method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Sampled ticks x period.
    Sampled,
    /// First to last CUDA call inside the operation.
    Bracketed,
    /// GC pauses (USDT).
    Exact,
}

/// One row of cpu_operations_timing.csv, its strings interned in [`Model::names`].
#[derive(Clone, Copy, Debug)]
pub struct CpuRow {
    /// The step window (None before the first step).
    pub step: Option<u64>,
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// Thread name (index into `names`).
    pub thread: u32,
    /// Operation (index into `names`).
    pub op: u32,
    /// How it was measured.
    pub method: Method,
    /// Time.
    pub ms: f64,
    /// First record of the row.
    pub start: f64,
    /// Last record of the row.
    pub end: f64,
}

/// One row of gc_pauses.csv.
#[derive(Clone, Copy, Debug)]
pub struct Gc {
    /// Start.
    pub t: f64,
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// Generation.
    pub generation: u8,
    /// Pause.
    pub ms: f64,
}

/// One row of cuda_graph_usage.csv.
#[derive(Clone, Debug)]
pub struct GraphUse {
    /// Graph id.
    pub id: u32,
    /// Process.
    pub pid: u32,
    /// FULL / PIECEWISE / empty (descriptor not read).
    pub mode: String,
    /// Descriptor tokens.
    pub tokens: Option<f64>,
    /// Descriptor requests.
    pub reqs: Option<f64>,
    /// Replays.
    pub replays: u64,
}

/// One row of cuda_graph_timeline.csv.
#[derive(Clone, Copy, Debug)]
pub struct Replay {
    /// Time.
    pub t: f64,
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// Graph.
    pub graph: u32,
}

/// One row of request_lifecycle.csv.
#[derive(Clone, Debug)]
pub struct Request {
    /// The id (untrusted).
    pub id: String,
    /// Process.
    pub pid: u32,
    /// Arrival.
    pub arrival: Option<f64>,
    /// First scheduled.
    pub first_scheduled: Option<f64>,
    /// Finished.
    pub finished: Option<f64>,
    /// Final status.
    pub status: String,
    /// Preemptions in the session.
    pub preemptions: u64,
}

/// A session directory, read.
#[derive(Debug, Default)]
pub struct Model {
    /// The directory.
    pub dir: PathBuf,
    /// metadata.json (Null when absent).
    pub meta: Value,
    /// forward_pass_summary.json.
    pub forward_summary: Value,
    /// cpu_timing_summary.json.
    pub cpu_summary: Value,
    /// batch_utilization_summary.json.
    pub batch_summary: Value,
    /// gc_summary.json.
    pub gc_summary: Value,
    /// forward_pass_timing.csv.
    pub steps: Vec<Step>,
    /// batch_utilization.csv.
    pub batches: Vec<Batch>,
    /// scheduler_state.csv.
    pub queues: Vec<Queues>,
    /// kv_cache_usage.csv.
    pub kv: Vec<Kv>,
    /// preemption_events.csv.
    pub preemptions: Vec<Preemption>,
    /// cpu_operations_timing.csv.
    pub cpu: Vec<CpuRow>,
    /// Interned strings of `cpu`.
    pub names: Vec<String>,
    /// gc_pauses.csv.
    pub gc: Vec<Gc>,
    /// cuda_graph_usage.csv.
    pub graphs: Vec<GraphUse>,
    /// cuda_graph_timeline.csv.
    pub replays: Vec<Replay>,
    /// request_lifecycle.csv.
    pub requests: Vec<Request>,
    /// cpu_profile.folded: (stack, count).
    pub folded: Vec<(String, u64)>,
    /// Files that were absent or unreadable, with why.
    pub unreadable: Vec<(String, String)>,
    /// Rows skipped because a needed cell did not parse, per file.
    pub bad_rows: Vec<(String, u64)>,
}

/// One CSV row with its header.
struct Row<'a> {
    idx: &'a HashMap<String, usize>,
    rec: &'a csv::StringRecord,
}

impl Row<'_> {
    fn s(&self, k: &str) -> &str {
        self.idx.get(k).and_then(|&i| self.rec.get(i)).unwrap_or("")
    }

    fn f(&self, k: &str) -> Option<f64> {
        self.s(k)
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
    }

    fn u(&self, k: &str) -> Option<u64> {
        self.s(k).trim().parse().ok()
    }

    fn u32(&self, k: &str) -> Option<u32> {
        self.s(k).trim().parse().ok()
    }
}

impl Model {
    /// Reads every file of `dir` the report uses; a missing or broken file leaves its part
    /// empty and is listed in `unreadable` (the page says so where that part would be).
    ///
    /// # Errors
    ///
    /// `dir` is not a directory.
    pub fn load(dir: &Path) -> Result<Self> {
        anyhow::ensure!(dir.is_dir(), "{} is not a session directory", dir.display());
        let mut m = Self {
            dir: dir.to_owned(),
            ..Self::default()
        };
        m.meta = m.json("metadata.json");
        m.forward_summary = m.json("forward_pass_summary.json");
        m.cpu_summary = m.json("cpu_timing_summary.json");
        m.batch_summary = m.json("batch_utilization_summary.json");
        m.gc_summary = m.json("gc_summary.json");
        m.steps = m.rows("forward_pass_timing.csv", step_of);
        m.batches = m.rows("batch_utilization.csv", batch_of);
        m.queues = m.rows("scheduler_state.csv", queues_of);
        m.kv = m.rows("kv_cache_usage.csv", |r| {
            Some(Kv {
                t: r.f("timestamp_sec")?,
                pct: r.f("usage_pct")?,
            })
        });
        m.preemptions = m.rows("preemption_events.csv", |r| {
            Some(Preemption {
                t: r.f("timestamp_sec")?,
                pid: r.u32("pid")?,
                request: r.s("request_id").to_owned(),
                reason: r.s("reason").to_owned(),
            })
        });
        m.gc = m.rows("gc_pauses.csv", |r| {
            Some(Gc {
                t: r.f("timestamp_sec")?,
                pid: r.u32("pid")?,
                tid: r.u32("tid")?,
                generation: r.s("generation").parse().ok()?,
                ms: r.f("duration_ms")?,
            })
        });
        m.graphs = m.rows("cuda_graph_usage.csv", graph_of);
        m.replays = m.rows("cuda_graph_timeline.csv", |r| {
            Some(Replay {
                t: r.f("timestamp_sec")?,
                pid: r.u32("pid")?,
                tid: r.u32("tid")?,
                graph: r.u32("graph_id")?,
            })
        });
        m.requests = m.rows("request_lifecycle.csv", request_of);
        m.load_cpu();
        m.load_folded();
        Ok(m)
    }

    /// Session length in seconds (metadata, else the last timestamp seen).
    #[must_use]
    pub fn duration(&self) -> f64 {
        self.meta["duration_sec"]
            .as_f64()
            .filter(|d| *d > 0.0)
            .unwrap_or_else(|| {
                let last = self.steps.iter().map(|s| s.completion_sec);
                let kv = self.kv.iter().map(|k| k.t);
                last.chain(kv).fold(1.0, f64::max)
            })
    }

    /// The interned string `i`.
    #[must_use]
    pub fn name(&self, i: u32) -> &str {
        self.names.get(i as usize).map_or("", String::as_str)
    }

    /// Why `file` gave nothing, when it was absent or unreadable.
    #[must_use]
    pub fn why_unreadable(&self, file: &str) -> Option<&str> {
        self.unreadable
            .iter()
            .find(|(f, _)| f == file)
            .map(|(_, why)| why.as_str())
    }

    fn json(&mut self, name: &str) -> Value {
        let path = self.dir.join(name);
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()));
        parsed.unwrap_or_else(|why| {
            self.unreadable.push((name.to_owned(), why));
            Value::Null
        })
    }

    /// Reads `name`, one `parse` per row; rows it refuses are counted.
    fn rows<T>(&mut self, name: &str, mut parse: impl FnMut(&Row) -> Option<T>) -> Vec<T> {
        let mut out = Vec::new();
        let mut bad = 0;
        let result = each_row(&self.dir.join(name), |row| match parse(row) {
            Some(v) => out.push(v),
            None => bad += 1,
        });
        if let Err(e) = result {
            self.unreadable.push((name.to_owned(), format!("{e:#}")));
        }
        if bad > 0 {
            self.bad_rows.push((name.to_owned(), bad));
        }
        out
    }

    fn load_cpu(&mut self) {
        let mut interned: HashMap<String, u32> = HashMap::new();
        let mut names = std::mem::take(&mut self.names);
        let mut intern = |s: &str| -> u32 {
            if let Some(&i) = interned.get(s) {
                return i;
            }
            let i = names.len() as u32;
            names.push(s.to_owned());
            interned.insert(s.to_owned(), i);
            i
        };
        self.cpu = self.rows("cpu_operations_timing.csv", |r| {
            let method = match r.s("method") {
                "sampled" => Method::Sampled,
                "bracketed" => Method::Bracketed,
                "exact" => Method::Exact,
                _ => return None,
            };
            Some(CpuRow {
                step: r.u("step"),
                pid: r.u32("pid")?,
                tid: r.u32("tid")?,
                thread: intern(r.s("thread")),
                op: intern(r.s("operation")),
                method,
                ms: r.f("time_ms")?,
                start: r.f("start_sec")?,
                end: r.f("end_sec")?,
            })
        });
        self.names = names;
    }

    fn load_folded(&mut self) {
        let name = "cpu_profile.folded";
        match std::fs::read_to_string(self.dir.join(name)) {
            Ok(text) => {
                self.folded = text
                    .lines()
                    .filter_map(|l| {
                        let (stack, n) = l.rsplit_once(' ')?;
                        Some((stack.to_owned(), n.trim().parse().ok()?))
                    })
                    .collect();
            }
            Err(e) => self.unreadable.push((name.to_owned(), e.to_string())),
        }
    }
}

/// Calls `f` on every row of the CSV file at `path`.
fn each_row(path: &Path, mut f: impl FnMut(&Row)) -> Result<()> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let idx: HashMap<String, usize> = rdr
        .headers()
        .context("no header")?
        .iter()
        .enumerate()
        .map(|(i, h)| (h.to_owned(), i))
        .collect();
    let mut rec = csv::StringRecord::new();
    // A truncated last line (a session killed while writing) ends the file early.
    while rdr.read_record(&mut rec).unwrap_or(false) {
        f(&Row {
            idx: &idx,
            rec: &rec,
        });
    }
    Ok(())
}

fn step_of(r: &Row) -> Option<Step> {
    let completion = match r.s("completion") {
        "exact" => Completion::Exact,
        "bracketed" => Completion::Bracketed,
        _ => Completion::UpperBound,
    };
    Some(Step {
        step: r.u("step")?,
        t: r.f("timestamp_sec")?,
        pid: r.u32("pid")?,
        tid: r.u32("tid")?,
        phase: r.s("phase").to_owned(),
        tokens: r.f("num_tokens"),
        gpu_ms: r.f("forward_time_ms")?,
        lower_ms: r.f("gpu_time_lower_ms").unwrap_or(0.0),
        launch_ms: r.f("cpu_launch_ms").unwrap_or(0.0),
        completion,
        done_before_wait: r.s("gpu_done_before_wait") == "true",
        gpu_start: r.f("gpu_start_sec")?,
        completion_sec: r.f("completion_sec")?,
        graph_launches: r.u32("num_graph_launches").unwrap_or(0),
        graph_ids: r
            .s("graph_ids")
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
        padded: r.f("padded_tokens"),
    })
}

fn batch_of(r: &Row) -> Option<Batch> {
    Some(Batch {
        t: r.f("timestamp_sec")?,
        seqs: r.f("num_seqs")?,
        max_seqs: r.f("max_num_seqs"),
        tokens: r.f("num_tokens")?,
        max_tokens: r.f("max_num_scheduled_tokens"),
    })
}

fn queues_of(r: &Row) -> Option<Queues> {
    Some(Queues {
        t: r.f("timestamp_sec")?,
        running: r.f("running")?,
        waiting: r.f("waiting")?,
    })
}

fn graph_of(r: &Row) -> Option<GraphUse> {
    Some(GraphUse {
        id: r.u32("graph_id")?,
        pid: r.u32("pid")?,
        mode: r.s("runtime_mode").to_owned(),
        tokens: r.f("num_tokens"),
        reqs: r.f("num_reqs"),
        replays: r.u("replay_count")?,
    })
}

fn request_of(r: &Row) -> Option<Request> {
    Some(Request {
        id: r.s("request_id").to_owned(),
        pid: r.u32("pid")?,
        arrival: r.f("arrival_sec"),
        first_scheduled: r.f("first_scheduled_sec"),
        finished: r.f("finished_sec"),
        status: r.s("final_status").to_owned(),
        preemptions: r.u("preemptions").unwrap_or(0),
    })
}

/// What [`write_all`] wrote.
#[derive(Debug)]
pub struct Written {
    /// The report.
    pub report: PathBuf,
    /// Its size in bytes.
    pub report_bytes: usize,
    /// The trace, or why it was not written.
    pub trace: Result<PathBuf, String>,
    /// The speedscope profile, or why it was not written.
    pub speedscope: Result<PathBuf, String>,
}

/// Terminal lines for what [`write_all`] wrote (and what failed: a warning each).
#[must_use]
pub fn written_lines(w: &Written) -> Vec<String> {
    let mut lines = vec![format!(
        "report: {} ({} KiB)",
        w.report.display(),
        w.report_bytes.div_ceil(1024)
    )];
    for (what, r) in [("trace", &w.trace), ("speedscope profile", &w.speedscope)] {
        lines.push(match r {
            Ok(p) => format!("{what}: {}", p.display()),
            Err(e) => format!("warning: the {what} was not written: {e}"),
        });
    }
    lines
}

/// Writes the report files at the end of `attach`. Never fails the session: a failure (or a
/// panic) is a warning line, and the session's files stay as they are.
#[must_use]
pub fn after_session(dir: &Path) -> Vec<String> {
    let run = std::panic::catch_unwind(|| write_all(dir, None, Create::New));
    match run {
        Ok(Ok(w)) => written_lines(&w),
        Ok(Err(e)) => vec![format!(
            "warning: report.html was not written ({e:#}); the session's files are complete: \
             run `profilemate report {}` to retry",
            dir.display()
        )],
        Err(_) => vec![format!(
            "warning: writing report.html failed (a bug: please report it); the session's files \
             are complete in {}",
            dir.display()
        )],
    }
}

/// How a derived file is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    /// A new file only (the end of `attach`: the session directory was just made).
    New,
    /// Replace an existing file atomically (`profilemate report` run again).
    Replace,
}

/// Reads the session in `dir` and writes `report` (default `dir/report.html`) and, in the
/// report's directory, trace.json and cpu_profile.speedscope.json.
///
/// # Errors
///
/// The session could not be read or the report not written. The trace and the speedscope
/// file fail on their own (their error is in [`Written`]).
pub fn write_all(dir: &Path, report: Option<&Path>, how: Create) -> Result<Written> {
    let model = Model::load(dir)?;
    let report = report.map_or_else(|| dir.join(REPORT_FILE), Path::to_path_buf);
    let beside = report
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let page = html::page(&model);
    write_file(&report, how, |w| Ok(w.write_all(page.as_bytes())?))?;
    let trace_path = beside.join(TRACE_FILE);
    let trace = write_file(&trace_path, how, |w| trace::write(&model, w))
        .map(|()| trace_path)
        .map_err(|e| format!("{e:#}"));
    let ss_path = beside.join(SPEEDSCOPE_FILE);
    let speedscope = speedscope::to_json(&model)
        .and_then(|bytes| write_file(&ss_path, how, |w| Ok(w.write_all(&bytes)?)))
        .map(|()| ss_path)
        .map_err(|e| format!("{e:#}"));
    Ok(Written {
        report,
        report_bytes: page.len(),
        trace,
        speedscope,
    })
}

/// Writes `bytes` to `path`, never through a symbolic link: a new file (`O_EXCL`), or a
/// temporary one renamed over the old (a rename replaces a link, it does not follow it).
/// Under sudo the file goes to the invoking user, like the session's files.
fn write_file(
    path: &Path,
    how: Create,
    fill: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    let target = match how {
        Create::New => path.to_path_buf(),
        Create::Replace => {
            let name = path
                .file_name()
                .map_or_else(|| "report".to_owned(), |n| n.to_string_lossy().into_owned());
            path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
        }
    };
    let c =
        CString::new(target.as_os_str().as_encoded_bytes()).context("a path with a NUL byte")?;
    // SAFETY: NUL-terminated path; the returned fd is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot create {}", target.display()));
    }
    // SAFETY: fd was just returned by open and is owned by nobody else.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if let (Ok(uid), Ok(gid)) = (std::env::var("SUDO_UID"), std::env::var("SUDO_GID")) {
        if let (Ok(uid), Ok(gid)) = (uid.parse(), gid.parse()) {
            let _ = std::os::unix::fs::fchown(&file, Some(uid), Some(gid));
        }
    }
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let written = fill(&mut w).and_then(|()| Ok(w.flush()?));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&target);
        return Err(e.context(format!("cannot write {}", target.display())));
    }
    if how == Create::Replace {
        std::fs::rename(&target, path).with_context(|| {
            let _ = std::fs::remove_file(&target);
            format!("cannot rename {} to {}", target.display(), path.display())
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("pm-report-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    #[test]
    fn an_empty_directory_gives_a_page_that_says_what_is_missing() {
        let dir = tmp("empty");
        let w = write_all(&dir, None, Create::New).expect("report");
        let page = std::fs::read_to_string(&w.report).expect("read");
        assert!(page.contains("forward_pass_timing.csv"), "names the file");
        assert!(page.contains("data-plot-absent"), "absent plots say so");
        assert!(w.trace.is_ok() && w.speedscope.is_ok(), "{w:?}");
        // Run again: replaced, not refused.
        assert!(write_all(&dir, None, Create::Replace).is_ok());
        assert!(
            write_all(&dir, None, Create::New).is_err(),
            "New never overwrites"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn replace_does_not_write_through_a_symlink() {
        let dir = tmp("link");
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep").expect("write");
        std::os::unix::fs::symlink(&victim, dir.join("report.html")).expect("symlink");
        write_file(&dir.join("report.html"), Create::Replace, |w| {
            Ok(w.write_all(b"new")?)
        })
        .expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep");
        assert!(write_file(&dir.join("victim"), Create::New, |_| Ok(())).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn rows_with_unparsable_cells_are_counted_not_fatal() {
        let dir = tmp("rows");
        std::fs::write(
            dir.join("kv_cache_usage.csv"),
            "timestamp_sec,usage_pct\n0.1,50\nx,60\n0.3,70\n0.4,",
        )
        .expect("write");
        let m = Model::load(&dir).expect("load");
        assert_eq!(m.kv.len(), 2);
        assert_eq!(m.bad_rows, vec![("kv_cache_usage.csv".to_owned(), 2)]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
