//! Rolling-window statistics for `profilemate top` (issue 11 §4).
//!
//! Owns: a [`Profiler`] that keeps the last [`WINDOW_NS`] of steps, batches, samples and
//! preemptions in a [`LiveStats`] shared through `Arc<Mutex<..>>`, and the [`Snapshot`] the
//! view draws from it. Does not own: drawing (`top`) or the session (`session`, which adds
//! this profiler to its set and reports the kernel's drop counters into it).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use crate::{
    correlate::{Completion, Correlated},
    output::{sink::Sink, OutputError},
    profilers::{keep_recent, Profiler},
    vllm::state::StateSnapshot,
};

/// The span the rates, percentiles and shares are computed over.
pub const WINDOW_NS: u64 = 10_000_000_000;
/// Batches kept per thread until their step completes.
const BATCHES_PER_THREAD: usize = 16;
/// Rows shown in the operation and function tables.
pub const TOP_ROWS: usize = 8;
/// Most samples kept in the window (199 Hz on a few busy threads fits many times over).
const MAX_SAMPLES: usize = 100_000;

/// The phases in display order; `unknown`: no batch was read for the step.
pub const PHASES: [&str; 4] = ["prefill", "decode", "mixed", "unknown"];

#[derive(Clone, Copy, Debug)]
struct StepEntry {
    ts_ns: u64,
    phase: &'static str,
    gpu_ms: f64,
    exact: bool,
    /// (tokens, requests) of the step's batch.
    batch: Option<(u64, u64)>,
}

/// What the live view knows, kept over a rolling window.
#[derive(Debug)]
pub struct LiveStats {
    started_ns: u64,
    steps: VecDeque<StepEntry>,
    /// (time, operation, innermost function).
    samples: VecDeque<(u64, &'static str, Arc<str>)>,
    /// (time, requests preempted).
    preemptions: VecDeque<(u64, u64)>,
    batches: HashMap<(u32, u32), VecDeque<crate::vllm::batch::StepBatch>>,
    state: Option<StateSnapshot>,
    steps_total: u64,
    /// Records the kernel could not hand over (ring buffer full), set by the session.
    pub kernel_drops: u64,
    /// Bytes read from the ring and not yet processed (the tracer's backlog), set by the
    /// session.
    pub queued_bytes: usize,
}

/// One phase's row.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseRow {
    /// prefill, decode, mixed, unknown.
    pub phase: &'static str,
    /// Steps in the window.
    pub steps: usize,
    /// GPU time P50 in ms.
    pub p50_ms: f64,
    /// GPU time P99 in ms.
    pub p99_ms: f64,
}

/// What the view shows at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The window actually covered, in seconds.
    pub window_s: f64,
    /// Steps since the start.
    pub steps_total: u64,
    /// Steps per second over the window.
    pub steps_per_s: f64,
    /// Per phase, those with steps only.
    pub phases: Vec<PhaseRow>,
    /// Share of exact completions in the window (None: no steps).
    pub exact_pct: Option<f64>,
    /// Mean tokens and requests per batch (None: no batch read).
    pub batch_mean: Option<(f64, f64)>,
    /// `max_num_scheduled_tokens`, `max_num_seqs`.
    pub limits: (Option<u64>, Option<u64>),
    /// Latest running / waiting / KV usage.
    pub running: Option<u64>,
    /// Waiting requests.
    pub waiting: Option<u64>,
    /// KV cache usage in percent.
    pub kv_pct: Option<f64>,
    /// Preempted requests per second.
    pub preemptions_per_s: f64,
    /// Samples in the window.
    pub samples: usize,
    /// (operation, share of samples in %), largest first.
    pub ops: Vec<(String, f64)>,
    /// (innermost Python function with its file's name, share of samples in %), largest
    /// first.
    pub functions: Vec<(String, f64)>,
    /// Records the kernel dropped since the start.
    pub kernel_drops: u64,
    /// Bytes read from the ring and not yet processed.
    pub queued_bytes: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short slice"
    )]
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counts far below 2^52 shown as shares"
)]
fn shares<'a>(names: impl Iterator<Item = &'a str>, total: usize) -> Vec<(String, f64)> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for n in names {
        *counts.entry(n).or_default() += 1;
    }
    let mut v: Vec<(String, f64)> = counts
        .into_iter()
        .map(|(k, c)| (k.to_owned(), 100.0 * c as f64 / total.max(1) as f64))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(TOP_ROWS);
    v
}

impl LiveStats {
    /// Empty, counting its window from `now_ns` (CLOCK_MONOTONIC).
    #[must_use]
    pub fn new(now_ns: u64) -> Self {
        Self {
            started_ns: now_ns,
            steps: VecDeque::new(),
            samples: VecDeque::new(),
            preemptions: VecDeque::new(),
            batches: HashMap::new(),
            state: None,
            steps_total: 0,
            kernel_drops: 0,
            queued_bytes: 0,
        }
    }

    /// Takes one record.
    pub fn consume(&mut self, record: &Correlated) {
        match record {
            Correlated::Batch(b) => {
                if !b.preempted_req_ids.is_empty() {
                    self.preemptions
                        .push_back((b.ts_ns, b.preempted_req_ids.len() as u64));
                }
                keep_recent(
                    &mut self.batches,
                    (b.pid, b.tid),
                    crate::vllm::batch::StepBatch::clone(b),
                    BATCHES_PER_THREAD,
                );
            }
            Correlated::Step(s) => {
                let batch = self.batches.get(&(s.pid, s.tid)).and_then(|q| {
                    q.iter()
                        .find(|b| b.ts_ns >= s.start_ns && b.ts_ns <= s.launch_end_ns)
                });
                let phase = match batch.map(|b| b.phase) {
                    Some(crate::vllm::batch::Phase::Prefill) => "prefill",
                    Some(crate::vllm::batch::Phase::Decode) => "decode",
                    Some(crate::vllm::batch::Phase::Mixed) => "mixed",
                    _ => "unknown",
                };
                #[expect(clippy::cast_precision_loss, reason = "ns to ms for display")]
                let gpu_ms = s.forward_ns() as f64 / 1e6;
                self.steps.push_back(StepEntry {
                    ts_ns: s.completion_ns,
                    phase,
                    gpu_ms,
                    exact: s.completion == Completion::Exact,
                    batch: batch.map(|b| (b.num_tokens, b.num_reqs)),
                });
                self.steps_total += 1;
            }
            Correlated::PyStack(st) if matches!(st.reason, crate::model::StackReason::Sample) => {
                // py-spy top's "function (file)": the innermost frame, where the CPU was.
                let func: Arc<str> = st.frames.first().map_or_else(
                    || Arc::from("<no frame>"),
                    |f| {
                        let file = f.code.filename.rsplit('/').next().unwrap_or_default();
                        Arc::from(format!("{} ({file})", f.code.qualname))
                    },
                );
                if self.samples.len() >= MAX_SAMPLES {
                    self.samples.pop_front();
                }
                self.samples.push_back((st.ts_ns, st.op.as_str(), func));
            }
            Correlated::VllmState(s) => self.state = Some(*s),
            _ => {}
        }
    }

    /// Forgets what is older than the window before `now_ns`.
    fn trim(&mut self, now_ns: u64) {
        let from = now_ns.saturating_sub(WINDOW_NS);
        while self.steps.front().is_some_and(|s| s.ts_ns < from) {
            self.steps.pop_front();
        }
        while self.samples.front().is_some_and(|s| s.0 < from) {
            self.samples.pop_front();
        }
        while self.preemptions.front().is_some_and(|s| s.0 < from) {
            self.preemptions.pop_front();
        }
    }

    /// The view at `now_ns` (CLOCK_MONOTONIC); forgets what left the window.
    #[must_use]
    #[expect(
        clippy::cast_precision_loss,
        reason = "counts far below 2^52 shown as rates"
    )]
    pub fn snapshot(&mut self, now_ns: u64) -> Snapshot {
        self.trim(now_ns);
        let span_ns = now_ns.saturating_sub(self.started_ns).clamp(1, WINDOW_NS);
        let window_s = span_ns as f64 / 1e9;
        let phases = PHASES
            .iter()
            .filter_map(|&phase| {
                let mut ms: Vec<f64> = self
                    .steps
                    .iter()
                    .filter(|s| s.phase == phase)
                    .map(|s| s.gpu_ms)
                    .collect();
                if ms.is_empty() {
                    return None;
                }
                ms.sort_by(f64::total_cmp);
                Some(PhaseRow {
                    phase,
                    steps: ms.len(),
                    p50_ms: percentile(&ms, 50.0),
                    p99_ms: percentile(&ms, 99.0),
                })
            })
            .collect();
        let n = self.steps.len();
        let exact_pct = (n > 0)
            .then(|| 100.0 * self.steps.iter().filter(|s| s.exact).count() as f64 / n as f64);
        let batches: Vec<(u64, u64)> = self.steps.iter().filter_map(|s| s.batch).collect();
        let batch_mean = (!batches.is_empty()).then(|| {
            let k = batches.len() as f64;
            (
                batches.iter().map(|b| b.0 as f64).sum::<f64>() / k,
                batches.iter().map(|b| b.1 as f64).sum::<f64>() / k,
            )
        });
        let st = self.state.as_ref();
        let samples = self.samples.len();
        Snapshot {
            window_s,
            steps_total: self.steps_total,
            steps_per_s: n as f64 / window_s,
            phases,
            exact_pct,
            batch_mean,
            limits: (
                st.and_then(|s| s.max_num_scheduled_tokens),
                st.and_then(|s| s.max_num_seqs),
            ),
            running: st.and_then(|s| s.running),
            waiting: st.and_then(|s| s.waiting),
            kv_pct: st.and_then(StateSnapshot::kv_usage_pct),
            preemptions_per_s: self.preemptions.iter().map(|p| p.1).sum::<u64>() as f64 / window_s,
            samples,
            ops: shares(self.samples.iter().map(|s| s.1), samples),
            functions: shares(self.samples.iter().map(|s| &*s.2), samples),
            kernel_drops: self.kernel_drops,
            queued_bytes: self.queued_bytes,
        }
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

impl Snapshot {
    /// The view as plain-text lines (the terminal view draws the same lines).
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "steps: {} total, {:.1}/s over {:.0} s; exact completions: {} (GPU time of the others is an upper bound)",
            self.steps_total,
            self.steps_per_s,
            self.window_s,
            self.exact_pct
                .map_or_else(|| "-".to_owned(), |p| format!("{p:.0}%"))
        )];
        if self.phases.is_empty() {
            out.push("gpu time: no completed steps in the window".to_owned());
        }
        for p in &self.phases {
            out.push(format!(
                "gpu time {:<8} {:>6} steps  P50 {:>8.3} ms  P99 {:>8.3} ms",
                p.phase, p.steps, p.p50_ms, p.p99_ms
            ));
        }
        out.push(match self.batch_mean {
            Some((tokens, seqs)) => format!(
                "batch: {tokens:.1} tokens / {} max, {seqs:.1} seqs / {} max",
                opt(self.limits.0),
                opt(self.limits.1)
            ),
            None => format!(
                "batch: not read (limits {} tokens, {} seqs)",
                opt(self.limits.0),
                opt(self.limits.1)
            ),
        });
        out.push(format!(
            "queue: running {}, waiting {}; kv: {}; preemptions {:.2}/s",
            opt(self.running),
            opt(self.waiting),
            self.kv_pct
                .map_or_else(|| "?".to_owned(), |p| format!("{p:.1}%")),
            self.preemptions_per_s
        ));
        out.push(format!("top vllm operations ({} samples):", self.samples));
        for (name, pct) in &self.ops {
            out.push(format!("  {pct:5.1}%  {name}"));
        }
        out.push("top python functions:".to_owned());
        for (name, pct) in &self.functions {
            out.push(format!("  {pct:5.1}%  {name}"));
        }
        out.push(format!(
            "lost: {} ring-buffer drops; backlog {} KiB",
            self.kernel_drops,
            self.queued_bytes / 1024
        ));
        out
    }
}

/// The [`Profiler`] that feeds a shared [`LiveStats`].
pub struct Live(pub Arc<Mutex<LiveStats>>);

impl Profiler for Live {
    fn consume(&mut self, record: &Correlated, _out: &mut dyn Sink) {
        if let Ok(mut s) = self.0.lock() {
            s.consume(record);
        }
    }

    fn finish(&mut self, _out: &mut dyn Sink) -> Result<(), OutputError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        correlate::Step,
        vllm::batch::{Phase, StepBatch},
    };

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    fn step(index: u64, start_ns: u64, gpu_ms: u64, completion: Completion) -> Correlated {
        Correlated::Step(Step {
            index,
            pid: 1,
            tid: 1,
            start_ns,
            launch_end_ns: start_ns + MS,
            gpu_start_ns: start_ns,
            gpu_start_upper_ns: start_ns,
            completion_ns: start_ns + gpu_ms * MS,
            completion_lower_ns: start_ns + gpu_ms * MS,
            completion,
            gpu_done_before_wait: false,
            kernel_launches: None,
            graph_launches: 0,
            graph_ids: Vec::new(),
            h2d_bytes: 0,
            d2h_bytes: 0,
            sync_tid: 1,
            sync_api: profilemate_common::ApiId::cudaEventSynchronize,
            sync_wait_ns: 0,
        })
    }

    fn batch(ts_ns: u64, phase: Phase, tokens: u64, reqs: u64, preempted: usize) -> Correlated {
        Correlated::Batch(Box::new(StepBatch {
            pid: 1,
            tid: 1,
            ts_ns,
            num_reqs: reqs,
            num_tokens: tokens,
            new_reqs: 0,
            cached_reqs: 0,
            resumed_reqs: 0,
            prefill_reqs: 0,
            decode_reqs: 0,
            prefill_tokens: 0,
            decode_tokens: 0,
            spec_tokens: 0,
            encoder_inputs: 0,
            scheduled: Vec::new(),
            new_requests: Vec::new(),
            resumed_req_ids: Vec::new(),
            preempted_req_ids: (0..preempted).map(|i| format!("r{i}")).collect(),
            finished_req_ids: Vec::new(),
            phase,
            scheduler: None,
        }))
    }

    fn state(ts_ns: u64, running: u64, waiting: u64) -> Correlated {
        Correlated::VllmState(StateSnapshot {
            pid: 1,
            ts_ns,
            scheduler: 0,
            running: Some(running),
            waiting: Some(waiting),
            requests: None,
            total_blocks: Some(101),
            free_blocks: Some(75),
            current_step: None,
            max_num_seqs: Some(256),
            max_num_scheduled_tokens: Some(8192),
            prefix_cache_map: None,
            cached_blocks: None,
        })
    }

    #[test]
    fn rolling_window_rates_percentiles_and_trim() {
        let t0 = 100 * S;
        let mut live = LiveStats::new(t0);
        // An old prefill step that leaves the window, then 100 decode steps of 1..=100 ms
        // (one every 50 ms, each with its batch) and 10 steps with no batch read.
        live.consume(&batch(t0 + MS / 2, Phase::Prefill, 4096, 4, 2));
        live.consume(&step(0, t0, 30, Completion::Exact));
        let from = t0 + 5 * S;
        for i in 0..100 {
            let start = from + i * 50 * MS;
            live.consume(&batch(start + MS / 2, Phase::Decode, 32, 32, 0));
            live.consume(&step(
                1 + i,
                start,
                i + 1,
                if i % 4 == 0 {
                    Completion::UpperBound
                } else {
                    Completion::Exact
                },
            ));
        }
        for i in 0..10 {
            live.consume(&step(
                101 + i,
                from + i * 100 * MS + 10 * MS,
                2,
                Completion::Exact,
            ));
        }
        live.consume(&batch(from + 3 * S, Phase::Decode, 0, 0, 3));
        live.consume(&state(from + 4 * S, 32, 7));

        // 10 s after the first decode step: the prefill step (and its preemptions) are older.
        let snap = live.snapshot(t0 + 15 * S);
        assert_eq!(snap.steps_total, 111);
        assert!((snap.window_s - 10.0).abs() < 1e-9);
        assert!(
            (snap.steps_per_s - 11.0).abs() < 1e-9,
            "{}",
            snap.steps_per_s
        );
        assert_eq!(
            snap.phases,
            vec![
                PhaseRow {
                    phase: "decode",
                    steps: 100,
                    p50_ms: 51.0,
                    p99_ms: 99.0
                },
                PhaseRow {
                    phase: "unknown",
                    steps: 10,
                    p50_ms: 2.0,
                    p99_ms: 2.0
                },
            ]
        );
        assert!((snap.exact_pct.unwrap_or_default() - 85.0 / 110.0 * 100.0).abs() < 1e-9);
        assert_eq!(snap.batch_mean, Some((32.0, 32.0)));
        assert_eq!(snap.limits, (Some(8192), Some(256)));
        assert_eq!((snap.running, snap.waiting), (Some(32), Some(7)));
        assert_eq!(snap.kv_pct, Some(25.0));
        assert!((snap.preemptions_per_s - 0.3).abs() < 1e-9);
        let text = snap.lines().join("\n");
        assert!(text.contains("steps: 111 total, 11.0/s"), "{text}");
        assert!(
            text.contains("queue: running 32, waiting 7; kv: 25.0%"),
            "{text}"
        );

        // Right after the start the window is the time since then, not 10 s.
        let mut young = LiveStats::new(t0);
        young.consume(&step(0, t0, 1, Completion::Exact));
        let s = young.snapshot(t0 + 2 * S);
        assert!((s.steps_per_s - 0.5).abs() < 1e-9);
        assert_eq!(s.phases[0].phase, "unknown");

        // Past the window everything rolls out but the total.
        let s = live.snapshot(t0 + 60 * S);
        assert_eq!(
            (s.steps_total, s.steps_per_s, s.phases.len()),
            (111, 0.0, 0)
        );
        assert_eq!(s.exact_pct, None);
    }
}
