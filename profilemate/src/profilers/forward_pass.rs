//! forward_pass_timing.csv (one row per GPU step, streamed) and forward_pass_summary.json.
//!
//! Owns computing those rows and summaries from the correlated records; not writing them
//! (the sinks: `output::csv` names the files and writes them) nor the records themselves.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;

use super::{keep_recent, launched_in, Profiler};
use crate::output::{
    csv::{Family, FamilyRow},
    sink::Sink,
};
use crate::vllm::bundle::Bundle;
use crate::{
    correlate::{Completion, Correlated, PyStack, Step},
    output::{
        ms,
        summary::{Latency, LatencySummary},
        OutputError, TimeBase,
    },
    probes::drain::StackReason,
    vllm::batch::{GraphDescriptor, StepBatch},
};

/// The phase of a step whose `SchedulerOutput` was not read (not vLLM, or not readable).
const PHASE_UNKNOWN: &str = "unknown";

/// CUDA-call stacks kept per thread until their step completes (async scheduling completes
/// step N after N+1 was launched, so a few steps' worth).
const STACKS_PER_THREAD: usize = 256;
/// Frames written into `launch_stack` (outermost vLLM frame inwards).
const LAUNCH_STACK_FRAMES: usize = 24;

crate::csv_family! {
    pub struct Row in crate::output::csv::files::FORWARD_PASS_TIMING {
    step: u64,
    timestamp_sec: f64,
    pid: u32,
    tid: u32,
    phase: &'static str,
    batch_size: Option<u64>,
    num_tokens: Option<u64>,
    forward_time_ms: f64,
    gpu_time_lower_ms: f64,
    cpu_launch_ms: f64,
    num_kernel_launches: Option<u32>,
    num_graph_launches: u32,
    graph_ids: String,
    h2d_bytes: u64,
    d2h_bytes: u64,
    completion: &'static str,
    gpu_done_before_wait: bool,
    gpu_start_sec: f64,
    completion_sec: f64,
    completion_lower_sec: f64,
    sync_tid: u32,
    sync_api: &'static str,
    sync_wait_ms: f64,
    launched_by: String,
    launch_stack: String,
    prefill_reqs: Option<u64>,
    decode_reqs: Option<u64>,
    prefill_tokens: Option<u64>,
    decode_tokens: Option<u64>,
    new_reqs: Option<u64>,
    cached_reqs: Option<u64>,
    cg_mode: Option<String>,
    padded_tokens: Option<u64>,
    }
}

/// Running statistics of a set of steps.
#[derive(Default)]
struct Stats {
    count: u64,
    exact: u64,
    bracketed: u64,
    upper_bound: u64,
    done_before_wait: u64,
    forward: Latency,
    forward_exact: Latency,
    gpu_time_lower: Latency,
    cpu_launch: Latency,
}

impl Stats {
    fn add(&mut self, s: &Step) {
        self.count += 1;
        self.forward.record(s.forward_ns());
        self.gpu_time_lower.record(s.gpu_time_lower_ns());
        self.cpu_launch.record(s.cpu_launch_ns());
        self.done_before_wait += u64::from(s.gpu_done_before_wait);
        match s.completion {
            Completion::Exact => {
                self.exact += 1;
                self.forward_exact.record(s.forward_ns());
            }
            Completion::Bracketed => self.bracketed += 1,
            Completion::UpperBound => self.upper_bound += 1,
        }
    }

    fn summary(&self) -> PhaseSummary {
        // One decimal: "in 99.5 % of steps".
        let pct = (self.count > 0)
            .then(|| (1000.0 * self.done_before_wait as f64 / self.count as f64).round() / 10.0);
        PhaseSummary {
            count: self.count,
            exact_count: self.exact,
            bracketed_count: self.bracketed,
            upper_bound_count: self.upper_bound,
            gpu_finished_before_wait_steps: self.done_before_wait,
            gpu_finished_before_wait_pct: pct,
            forward_time_ms: self.forward.summary(),
            forward_time_exact_ms: self.forward_exact.summary(),
            gpu_time_lower_ms: self.gpu_time_lower.summary(),
            cpu_launch_ms: self.cpu_launch.summary(),
        }
    }
}

/// The step figures of a phase (or of all steps).
#[derive(Serialize)]
pub struct PhaseSummary {
    /// Steps.
    pub count: u64,
    /// Of those, with an exact completion.
    pub exact_count: u64,
    bracketed_count: u64,
    upper_bound_count: u64,
    /// Steps whose GPU work was done when the CPU began waiting (CPU-bound steps): their
    /// forward_time_ms is an upper bound, set by the CPU's pace.
    gpu_finished_before_wait_steps: u64,
    /// The same as a percentage of `count` (one decimal); absent without steps.
    pub gpu_finished_before_wait_pct: Option<f64>,
    /// Step GPU time.
    pub forward_time_ms: Option<LatencySummary>,
    forward_time_exact_ms: Option<LatencySummary>,
    gpu_time_lower_ms: Option<LatencySummary>,
    cpu_launch_ms: Option<LatencySummary>,
}

/// The calibrated error bound of exact completions (`profilemate calibrate` on this machine):
/// an exact row's completion is its wait's return, which follows the GPU's end by the
/// machine's wake-up latency.
#[derive(Debug, Clone, Serialize)]
pub struct ExactBound {
    /// The calibration file.
    pub calibration: String,
    /// Median wake-up latency there (µs).
    pub wake_up_p50_us: f64,
    /// The bound: an exact row's completion is at most this late (µs, the wake-up P99).
    pub completion_late_by_at_most_us: f64,
}

#[derive(Serialize)]
/// forward_pass_summary.json.
pub struct Summary {
    /// Every step.
    #[serde(flatten)]
    pub all: PhaseSummary,
    /// The calibrated bound of exact rows' completion error (absent: no calibration; see
    /// metadata.json `calibration_none`).
    exact_completion_error: Option<ExactBound>,
    by_phase: BTreeMap<&'static str, PhaseSummary>,
    by_pid: BTreeMap<u32, PhaseSummary>,
    /// Steps whose vLLM batch (`SchedulerOutput`) was read: phase and batch columns filled.
    steps_with_batch: u64,
    note: &'static str,
}

/// Streams step rows and keeps running statistics.
pub struct ForwardPass {
    /// The vLLM names in use.
    bundle: &'static Bundle,
    time: TimeBase,
    all: Stats,
    by_phase: BTreeMap<&'static str, Stats>,
    by_pid: BTreeMap<u32, Stats>,
    /// (pid, tid) -> recent CUDA-call stacks, oldest first (formatted only for the step
    /// rows that use them).
    stacks: HashMap<(u32, u32), VecDeque<PyStack>>,
    /// (pid, tid) -> recent step batches and graph descriptors, oldest first.
    batches: HashMap<(u32, u32), VecDeque<StepBatch>>,
    descriptors: HashMap<(u32, u32), VecDeque<GraphDescriptor>>,
    /// Steps whose batch was read.
    with_batch: u64,
    /// The calibrated bound, when a calibration was used.
    bound: Option<ExactBound>,
}

/// What a step row says about the Python code that launched it.
#[derive(Default)]
struct LaunchContext {
    launched_by: String,
    launch_stack: String,
}

impl LaunchContext {
    fn of(stack: &PyStack, bundle: &Bundle) -> Self {
        let label = |i: usize| {
            stack
                .frames
                .get(i)
                .map(|f| format!("{}:{}", f.code.qualname, f.line))
                .unwrap_or_default()
        };
        let launched_by = stack.op_frame.map(label).unwrap_or_default();
        // From the outermost vLLM frame (or the whole stack) inwards.
        let outer = stack
            .frames
            .iter()
            .rposition(|f| bundle.is_package_file(&f.code.filename))
            .unwrap_or(stack.frames.len().saturating_sub(1));
        let first = outer.saturating_sub(LAUNCH_STACK_FRAMES - 1);
        let launch_stack = (first..=outer)
            .rev()
            .filter(|&i| i < stack.frames.len())
            .map(label)
            .collect::<Vec<_>>()
            .join(";");
        Self {
            launched_by,
            launch_stack,
        }
    }
}

impl ForwardPass {
    /// A profiler stamping rows with `time`; `bundle` tells vLLM's own frames.
    #[must_use]
    pub fn new(time: TimeBase, bound: Option<ExactBound>, bundle: &'static Bundle) -> Self {
        Self {
            bundle,
            time,
            all: Stats::default(),
            by_phase: BTreeMap::new(),
            by_pid: BTreeMap::new(),
            stacks: HashMap::new(),
            batches: HashMap::new(),
            descriptors: HashMap::new(),
            with_batch: 0,
            bound,
        }
    }

    /// The stack walked at the step's first call, else at its first walked call.
    fn launch_context(&self, s: &Step) -> LaunchContext {
        let Some(q) = self.stacks.get(&(s.pid, s.tid)) else {
            return LaunchContext::default();
        };
        q.iter()
            .find(|st| st.ts_ns == s.start_ns)
            .or_else(|| {
                q.iter()
                    .find(|st| st.ts_ns >= s.start_ns && st.ts_ns <= s.launch_end_ns)
            })
            .map(|st| LaunchContext::of(st, self.bundle))
            .unwrap_or_default()
    }
}

impl Profiler for ForwardPass {
    fn families(&self) -> &'static [&'static Family] {
        &[&Row::FAMILY]
    }

    fn consume(&mut self, record: &Correlated, out: &mut dyn Sink) {
        let s = match record {
            Correlated::PyStack(st) if matches!(st.reason, StackReason::CudaCall(_)) => {
                keep_recent(
                    &mut self.stacks,
                    (st.pid, st.tid),
                    PyStack::clone(st),
                    STACKS_PER_THREAD,
                );
                return;
            }
            Correlated::Batch(b) => {
                keep_recent(
                    &mut self.batches,
                    (b.pid, b.tid),
                    StepBatch::clone(b),
                    STACKS_PER_THREAD,
                );
                return;
            }
            Correlated::GraphDescriptor(d) => {
                keep_recent(
                    &mut self.descriptors,
                    (d.pid, d.tid),
                    d.clone(),
                    STACKS_PER_THREAD,
                );
                return;
            }
            Correlated::Step(s) => s,
            _ => return,
        };
        let time = self.time;
        let launch = self.launch_context(s);
        let batch = launched_in(&self.batches, s, |b| b.ts_ns);
        let desc = launched_in(&self.descriptors, s, |d| d.ts_ns);
        let phase = batch.map_or(PHASE_UNKNOWN, |b| b.phase.as_str());
        self.with_batch += u64::from(batch.is_some());
        out.row(&Row {
            step: s.index,
            timestamp_sec: time.sec(s.start_ns),
            pid: s.pid,
            tid: s.tid,
            phase,
            batch_size: batch.map(|b| b.num_reqs),
            num_tokens: batch.map(|b| b.num_tokens),
            forward_time_ms: ms(s.forward_ns()),
            gpu_time_lower_ms: ms(s.gpu_time_lower_ns()),
            cpu_launch_ms: ms(s.cpu_launch_ns()),
            num_kernel_launches: s.kernel_launches,
            num_graph_launches: s.graph_launches,
            graph_ids: s
                .graph_ids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            h2d_bytes: s.h2d_bytes,
            d2h_bytes: s.d2h_bytes,
            completion: s.completion.as_str(),
            gpu_done_before_wait: s.gpu_done_before_wait,
            gpu_start_sec: time.sec(s.gpu_start_ns),
            completion_sec: time.sec(s.completion_ns),
            completion_lower_sec: time.sec(s.completion_lower_ns),
            sync_tid: s.sync_tid,
            sync_api: s.sync_api.symbol(),
            sync_wait_ms: ms(s.sync_wait_ns),
            launched_by: launch.launched_by,
            launch_stack: launch.launch_stack,
            prefill_reqs: batch.map(|b| b.prefill_reqs),
            decode_reqs: batch.map(|b| b.decode_reqs),
            prefill_tokens: batch.map(|b| b.prefill_tokens),
            decode_tokens: batch.map(|b| b.decode_tokens),
            new_reqs: batch.map(|b| b.new_reqs),
            cached_reqs: batch.map(|b| b.cached_reqs),
            cg_mode: desc.map(|d| d.mode.clone()),
            padded_tokens: desc
                .zip(batch)
                .map(|(d, b)| d.num_tokens.saturating_sub(b.num_tokens)),
        });
        self.all.add(s);
        self.by_phase.entry(phase).or_default().add(s);
        self.by_pid.entry(s.pid).or_default().add(s);
    }

    fn finish(&mut self, out: &mut dyn Sink) -> Result<(), OutputError> {
        let summary = Summary {
            all: self.all.summary(),
            exact_completion_error: self.bound.clone(),
            by_phase: self.by_phase.iter().map(|(k, v)| (*k, v.summary())).collect(),
            by_pid: self.by_pid.iter().map(|(k, v)| (*k, v.summary())).collect(),
            steps_with_batch: self.with_batch,
            note: "forward_time_ms = GPU completion minus GPU start (the later of the step's first launch-side call and the previous step's earliest completion). exact: a wait blocked until the GPU finished; bracketed: the GPU was seen unfinished and finished within 0.1 ms; upper_bound: it finished before the CPU looked, forward_time_ms is an upper bound and gpu_time_lower_ms a lower bound (from the step's last launch and polls). gpu_finished_before_wait_pct: share of steps the GPU had finished when the CPU began waiting (CPU-bound steps). phase, batch_size and num_tokens come from the step's SchedulerOutput (prefill: every request computes prompt tokens; decode: every request generates; mixed: both; unknown: not read)",
        };
        out.summary(crate::output::csv::files::FORWARD_PASS_SUMMARY, &summary)?;
        Ok(())
    }
}
