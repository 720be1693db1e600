//! CPU time per vLLM operation: cpu_operations_timing.csv (per step, process, thread and
//! operation, streamed), cpu_timing_summary.json, and cpu_profile.folded (sampled Python
//! stacks, flame-graph ready).
//!
//! Methods, stated per row:
//! - `sampled`: cpu-clock ticks of the thread whose stack fell in the operation, times the
//!   sampling period (an estimate of on-CPU time, ±1 period per row and step).
//! - `bracketed`: first to last CUDA call made inside the operation in that step (a lower
//!   bound of its wall time, exact at both ends).
//! - `exact`: GC pauses, from CPython's own `gc__start`/`gc__done` probes.
//!
//! Step windows: step k of a process spans from its first launch-side call to step k+1's.
//! Threads of processes without steps of their own (the API server) are attributed on the
//! timeline of the first process that had steps.
//!
//! Owns computing those rows and summaries from the correlated records; not writing them
//! (the sinks: `output::csv` names the files and writes them) nor the records themselves.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{Emitted, Profiler};
use crate::output::csv::{Family, FamilyRow};
use crate::{
    correlate::{Correlated, GcPause, PyStack, Step},
    discovery,
    output::{folded, ms, sink::Sink, summary::Latency, OutputError, TimeBase},
    probes::drain::StackReason,
    vllm::ops::Operation,
};

/// Distinct stacks kept for cpu_profile.folded; further new stacks are counted as one line.
const MAX_FOLDED_STACKS: usize = 200_000;
/// Step starts remembered per timeline (late records still find their step).
const KEPT_STEP_STARTS: usize = 16;
/// Records held before any step is seen; past this they are written without a step.
const UNSTEPPED_FLUSH: usize = 20_000;
/// Records held in all; past this they are written into the last known step windows.
const MAX_PENDING: usize = 200_000;
/// Name of the operation of GC pause rows.
const GC_OPERATION: &str = "gc";

crate::csv_family! {
    pub struct Row in crate::output::csv::files::CPU_OPERATIONS_TIMING {
    step: Option<u64>,
    pid: u32,
    tid: u32,
    thread: String,
    operation: &'static str,
    method: &'static str,
    time_ms: f64,
    samples: Option<u64>,
    calls: Option<u64>,
    start_sec: f64,
    end_sec: f64,
    }
}

/// Something with a time that belongs to a step window.
#[derive(Clone, Copy)]
enum Item {
    Sample { op: Operation },
    CudaCall { op: Operation },
    Gc { end_ns: u64 },
}

#[derive(Clone, Copy)]
struct Timed {
    ts_ns: u64,
    pid: u32,
    tid: u32,
    item: Item,
}

/// Per (pid, tid, operation, method) accumulation within one step.
#[derive(Default, Clone, Copy)]
struct Acc {
    count: u64,
    first_ns: u64,
    last_ns: u64,
    /// Exact rows: summed duration.
    sum_ns: u64,
}

impl Acc {
    fn add(&mut self, ts: u64, end: u64) {
        if self.count == 0 || ts < self.first_ns {
            self.first_ns = ts;
        }
        self.last_ns = self.last_ns.max(end);
        self.count += 1;
        self.sum_ns += end.saturating_sub(ts);
    }
}

#[derive(Default)]
struct Timeline {
    /// (step index, start) of the last steps seen, oldest first.
    starts: Vec<(u64, u64)>,
    last_completion_ns: Option<u64>,
    steps: u64,
}

impl Timeline {
    fn step_of(&self, ts: u64) -> Option<u64> {
        self.starts
            .iter()
            .rev()
            .find(|(_, start)| *start <= ts)
            .map(|(i, _)| *i)
    }
}

#[derive(Default)]
struct OpTotals {
    sampled_ns: u64,
    samples: u64,
    bracketed_ns: u64,
    per_step: Latency,
}

#[derive(Serialize)]
/// One operation's CPU time.
pub struct OpSummary {
    sampled_ms: f64,
    samples: u64,
    /// Share of all samples (%).
    pub share_of_samples_pct: f64,
    mean_per_step_ms: Option<f64>,
    per_step_ms: Option<crate::output::summary::LatencySummary>,
    bracketed_ms: f64,
}

#[derive(Serialize)]
struct ThreadSummary {
    pid: u32,
    tid: u32,
    name: String,
    sampled_ms: f64,
    operations_ms: BTreeMap<&'static str, f64>,
}

#[derive(Serialize, Default)]
struct GapSummary {
    count: u64,
    total_ms: f64,
    attributed_ms: BTreeMap<&'static str, f64>,
    note: &'static str,
}

/// cpu_timing_summary.json.
#[derive(Serialize)]
pub struct Summary {
    sample_hz: u64,
    sample_period_ms: f64,
    method: &'static str,
    /// Per operation.
    pub operations: BTreeMap<&'static str, OpSummary>,
    /// GC pauses.
    pub gc: GcTotals,
    gpu_idle_gaps: GapSummary,
    threads: Vec<ThreadSummary>,
    folded_stacks: usize,
    folded_overflow_samples: u64,
}

#[derive(Serialize, Default, Clone, Copy)]
/// GC pauses in total.
pub struct GcTotals {
    /// Pauses.
    pub pauses: u64,
    /// Their total time (ms).
    pub total_ms: f64,
    max_ms: f64,
}

/// The CPU attribution profiler.
pub struct CpuAttribution {
    emitted: Emitted,
    time: TimeBase,
    hz: u64,
    period_ns: u64,
    pending: Vec<Timed>,
    timelines: HashMap<u32, Timeline>,
    reference: Option<u32>,
    thread_names: HashMap<(u32, u32), String>,
    folded: HashMap<String, u64>,
    folded_overflow: u64,
    ops: BTreeMap<Operation, OpTotals>,
    threads: BTreeMap<(u32, u32), BTreeMap<Operation, u64>>,
    gc: GcTotals,
    gaps: GapSummary,
}

impl CpuAttribution {
    /// Opens cpu_operations_timing.csv; `hz` is the sampling rate in use (0: no sampling).
    pub fn new(time: TimeBase, hz: u64) -> Self {
        Self {
            emitted: Emitted::default(),
            time,
            hz,
            period_ns: 1_000_000_000 / hz.max(1),
            pending: Vec::new(),
            timelines: HashMap::new(),
            reference: None,
            thread_names: HashMap::new(),
            folded: HashMap::new(),
            folded_overflow: 0,
            ops: BTreeMap::new(),
            threads: BTreeMap::new(),
            gc: GcTotals::default(),
            gaps: GapSummary::default(),
        }
    }

    fn thread_name(&mut self, pid: u32, tid: u32) -> String {
        self.thread_names
            .entry((pid, tid))
            .or_insert_with(|| discovery::thread_comm(pid, tid).unwrap_or_default())
            .clone()
    }

    /// The timeline a process's records are attributed on (None: no step seen yet).
    fn owner(&self, pid: u32) -> Option<u32> {
        if self.timelines.contains_key(&pid) {
            Some(pid)
        } else {
            self.reference
        }
    }

    fn fold(&mut self, st: &PyStack) {
        let comm = self.thread_name(st.pid, st.pid);
        let thread = self.thread_name(st.pid, st.tid);
        // Every name comes from the target: escaped, so it stays one frame of one line.
        let mut key = format!(
            "{} ({});{} ({})",
            folded::frame(&comm),
            st.pid,
            folded::frame(&thread),
            st.tid
        );
        if st.frames.is_empty() {
            key.push_str(";[native]");
        }
        for f in st.frames.iter().rev() {
            key.push(';');
            key.push_str(&folded::frame(&f.code.qualname));
            key.push_str(" (");
            key.push_str(&folded::frame(short_file(&f.code.filename)));
            key.push(':');
            key.push_str(&f.line.to_string());
            key.push(')');
        }
        if let Some(n) = self.folded.get_mut(&key) {
            *n += 1;
        } else if self.folded.len() < MAX_FOLDED_STACKS {
            self.folded.insert(key, 1);
        } else {
            self.folded_overflow += 1;
        }
    }

    /// Writes the rows of every pending record of timeline `tl` (None: records of no
    /// timeline, written without a step) older than `before`.
    fn flush(&mut self, tl: Option<u32>, before: u64) {
        let pending = std::mem::take(&mut self.pending);
        let (mine, rest): (Vec<Timed>, Vec<Timed>) = pending
            .into_iter()
            .partition(|t| self.owner(t.pid) == tl && t.ts_ns < before);
        self.pending = rest;
        if mine.is_empty() {
            return;
        }
        let timeline = tl.and_then(|tl| self.timelines.get(&tl));
        // (step, pid, tid, operation name, method) -> accumulation
        let mut groups: BTreeMap<(Option<u64>, u32, u32, &'static str, &'static str), Acc> =
            BTreeMap::new();
        let mut per_step_op: BTreeMap<(Option<u64>, Operation), u64> = BTreeMap::new();
        for t in &mine {
            let step = timeline.and_then(|l| l.step_of(t.ts_ns));
            let (name, method, end) = match t.item {
                Item::Sample { op } => {
                    *per_step_op.entry((step, op)).or_default() += 1;
                    (op.as_str(), "sampled", t.ts_ns)
                }
                Item::CudaCall { op } => (op.as_str(), "bracketed", t.ts_ns),
                Item::Gc { end_ns } => (GC_OPERATION, "exact", end_ns),
            };
            groups
                .entry((step, t.pid, t.tid, name, method))
                .or_default()
                .add(t.ts_ns, end);
        }
        for ((step, op), n) in per_step_op {
            if step.is_some() {
                self.ops
                    .entry(op)
                    .or_default()
                    .per_step
                    .record(n * self.period_ns);
            }
        }
        let time = self.time;
        let period_ns = self.period_ns;
        for ((step, pid, tid, operation, method), acc) in groups {
            let thread = self.thread_name(pid, tid);
            let (time_ms, samples, calls) = match method {
                "sampled" => (ms(acc.count * period_ns), Some(acc.count), None),
                "bracketed" => (ms(acc.last_ns - acc.first_ns), None, Some(acc.count)),
                _ => (ms(acc.sum_ns), None, Some(acc.count)),
            };
            if method == "bracketed" {
                if let Some(op) = Operation::ALL.iter().find(|o| o.as_str() == operation) {
                    self.ops.entry(*op).or_default().bracketed_ns += acc.last_ns - acc.first_ns;
                }
            }
            self.emitted.push(Row {
                step,
                pid,
                tid,
                thread,
                operation,
                method,
                time_ms,
                samples,
                calls,
                start_sec: time.sec(acc.first_ns),
                end_sec: time.sec(acc.last_ns),
            });
        }
    }

    fn on_step(&mut self, s: &Step) {
        if self.reference.is_none() {
            self.reference = Some(s.pid);
        }
        // GPU-idle gap before this step: samples of its timeline inside it, by operation.
        let prev_completion = self
            .timelines
            .get(&s.pid)
            .and_then(|t| t.last_completion_ns);
        if let Some(c) = prev_completion {
            if s.gpu_start_ns > c {
                self.gaps.count += 1;
                self.gaps.total_ms += ms(s.gpu_start_ns - c);
                let period = self.period_ns;
                let mut filled: Vec<Operation> = Vec::new();
                for t in &self.pending {
                    if let Item::Sample { op } = t.item {
                        if t.ts_ns >= c
                            && t.ts_ns < s.gpu_start_ns
                            && self.owner(t.pid) == Some(s.pid)
                        {
                            filled.push(op);
                        }
                    }
                }
                for op in filled {
                    *self.gaps.attributed_ms.entry(op.as_str()).or_default() += ms(period);
                }
            }
        }
        let tl = self.timelines.entry(s.pid).or_default();
        tl.steps += 1;
        tl.last_completion_ns = Some(s.completion_ns);
        // Everything before this step's start belongs to earlier windows: write it.
        self.flush(Some(s.pid), s.start_ns);
        let tl = self.timelines.entry(s.pid).or_default();
        tl.starts.push((s.index, s.start_ns));
        if tl.starts.len() > KEPT_STEP_STARTS {
            tl.starts.remove(0);
        }
    }
}

/// The path after `site-packages/` or `dist-packages/` (where vLLM's files live), else the
/// whole name.
fn short_file(path: &str) -> &str {
    for marker in ["site-packages/", "dist-packages/"] {
        if let Some(i) = path.rfind(marker) {
            return &path[i + marker.len()..];
        }
    }
    path
}

impl CpuAttribution {
    /// One record: its rows go to `emitted`.
    fn take(&mut self, record: &Correlated) {
        match record {
            Correlated::PyStack(st) => {
                let item = match st.reason {
                    StackReason::Sample => {
                        self.fold(st);
                        let totals = self.ops.entry(st.op).or_default();
                        totals.samples += 1;
                        totals.sampled_ns += self.period_ns;
                        *self
                            .threads
                            .entry((st.pid, st.tid))
                            .or_default()
                            .entry(st.op)
                            .or_default() += 1;
                        Item::Sample { op: st.op }
                    }
                    StackReason::CudaCall(_) => Item::CudaCall { op: st.op },
                    // A few frames at a function entry: not a sample of where time goes.
                    StackReason::Breakpoint(_) => return,
                };
                self.pending.push(Timed {
                    ts_ns: st.ts_ns,
                    pid: st.pid,
                    tid: st.tid,
                    item,
                });
                self.bound_pending();
            }
            Correlated::GcPause(g) => self.on_gc(g),
            Correlated::Step(s) => self.on_step(s),
            _ => {}
        }
    }
}

impl Profiler for CpuAttribution {
    fn families(&self) -> &'static [&'static Family] {
        &[&Row::FAMILY]
    }

    fn consume(&mut self, record: &Correlated, out: &mut dyn Sink) {
        self.take(record);
        self.emitted.drain_to(out);
    }

    fn finish(&mut self, out: &mut dyn Sink) -> Result<(), OutputError> {
        // What is left belongs to the last step of its timeline (or to no step).
        let timelines: Vec<u32> = self.timelines.keys().copied().collect();
        for tl in timelines {
            self.flush(Some(tl), u64::MAX);
        }
        self.flush(None, u64::MAX);
        let total_samples: u64 = self.ops.values().map(|o| o.samples).sum();
        let steps: u64 = self
            .reference
            .and_then(|r| self.timelines.get(&r))
            .map_or(0, |t| t.steps);
        let operations = self
            .ops
            .iter()
            .map(|(op, t)| {
                (
                    op.as_str(),
                    OpSummary {
                        sampled_ms: ms(t.sampled_ns),
                        samples: t.samples,
                        share_of_samples_pct: if total_samples > 0 {
                            (t.samples as f64 * 1000.0 / total_samples as f64).round() / 10.0
                        } else {
                            0.0
                        },
                        mean_per_step_ms: (steps > 0).then(|| ms(t.sampled_ns / steps)),
                        per_step_ms: t.per_step.summary(),
                        bracketed_ms: ms(t.bracketed_ns),
                    },
                )
            })
            .collect();
        let period_ns = self.period_ns;
        let mut threads = Vec::new();
        let keys: Vec<(u32, u32)> = self.threads.keys().copied().collect();
        for (pid, tid) in keys {
            let name = self.thread_name(pid, tid);
            let ops = &self.threads[&(pid, tid)];
            threads.push(ThreadSummary {
                pid,
                tid,
                name,
                sampled_ms: ms(ops.values().sum::<u64>() * period_ns),
                operations_ms: ops
                    .iter()
                    .map(|(op, n)| (op.as_str(), ms(n * period_ns)))
                    .collect(),
            });
        }
        self.gaps.note = "GPU idle between a step's previous completion and its GPU start, with the sampled CPU work that filled it";
        let summary = Summary {
            sample_hz: self.hz,
            sample_period_ms: ms(self.period_ns),
            method: "sampled: cpu-clock ticks x period per operation (innermost vLLM frame decides); bracketed: first to last CUDA call inside the operation; exact: GC pauses from CPython's USDT probes",
            operations,
            gc: self.gc,
            gpu_idle_gaps: std::mem::take(&mut self.gaps),
            threads,
            folded_stacks: self.folded.len(),
            folded_overflow_samples: self.folded_overflow,
        };
        out.summary(crate::output::csv::files::CPU_TIMING_SUMMARY, &summary)?;
        let mut stacks: Vec<(&str, u64)> =
            self.folded.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        stacks.sort_unstable();
        let text = folded::text(stacks, self.folded_overflow);
        out.text(crate::output::csv::files::CPU_PROFILE, &text)?;
        self.emitted.drain_to(out);
        Ok(())
    }
}

impl CpuAttribution {
    fn on_gc(&mut self, g: &GcPause) {
        let d = g.end_ns.saturating_sub(g.start_ns);
        self.gc.pauses += 1;
        self.gc.total_ms += ms(d);
        self.gc.max_ms = self.gc.max_ms.max(ms(d));
        self.pending.push(Timed {
            ts_ns: g.start_ns,
            pid: g.pid,
            tid: g.tid,
            item: Item::Gc { end_ns: g.end_ns },
        });
        self.bound_pending();
    }

    /// Without any step (a target that never completes one), records cannot wait for a
    /// window: write them without a step before they pile up.
    fn bound_pending(&mut self) {
        if self.reference.is_none() && self.pending.len() >= UNSTEPPED_FLUSH {
            self.flush(None, u64::MAX);
        }
        // Steps stopped coming (the stepping process exited or stalled): write what is held
        // into the last known windows rather than holding it for the rest of the session.
        if self.pending.len() >= MAX_PENDING {
            let timelines: Vec<u32> = self.timelines.keys().copied().collect();
            for tl in timelines {
                self.flush(Some(tl), u64::MAX);
            }
            self.flush(None, u64::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{correlate::PyFrameInfo, python::code::CodeInfo};

    fn profiler(name: &str) -> (CpuAttribution, std::path::PathBuf) {
        let base = std::env::temp_dir().join(format!("pm-cpu-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let time = TimeBase {
            t0_ns: 0,
            unix_t0_sec: 0.0,
        };
        std::fs::create_dir_all(&base).expect("scratch dir");
        (CpuAttribution::new(time, 100), base)
    }

    fn stack(pid: u32, tid: u32, qualname: &str, file: &str) -> PyStack {
        PyStack {
            pid,
            tid,
            ts_ns: 1,
            reason: StackReason::Sample,
            flags: 0,
            frames: vec![PyFrameInfo {
                code: Arc::new(CodeInfo::new(qualname, file, 1, Vec::new())),
                line: 7,
                arg1: 0,
            }],
            op: Operation::Schedule,
            op_frame: None,
        }
    }

    #[test]
    fn folded_stacks_stay_one_line_whatever_the_frame_names() {
        let (mut p, base) = profiler("folded");
        p.fold(&stack(u32::MAX, u32::MAX, "evil\nmain;x 99", "/a;b/m.py"));
        let keys: Vec<&String> = p.folded.keys().collect();
        assert_eq!(keys.len(), 1);
        let key = keys[0];
        assert!(!key.contains('\n'), "{key:?}");
        // process, thread, one frame: three fields.
        assert_eq!(key.split(';').count(), 3, "{key:?}");
        assert!(
            key.ends_with(";evil\u{FFFD}main:x 99 (/a:b/m.py:7)"),
            "{key:?}"
        );
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn a_thread_name_that_is_not_utf8_is_written_lossily() {
        let (mut p, base) = profiler("comm");
        let name = std::thread::spawn(move || {
            // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes; getpid
            // and gettid have no preconditions.
            let (pid, tid) = unsafe {
                libc::prctl(libc::PR_SET_NAME, c"bad\xff\xfename".as_ptr());
                (libc::getpid() as u32, libc::gettid() as u32)
            };
            p.thread_name(pid, tid)
        })
        .join();
        let Ok(name) = name else {
            panic!("thread panicked");
        };
        assert_eq!(name, "bad\u{FFFD}\u{FFFD}name");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
