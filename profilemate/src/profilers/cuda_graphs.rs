//! cuda_graph_captures.csv, cuda_graph_usage.csv and cuda_graph_timeline.csv.
//!
//! Owns computing those rows and summaries from the correlated records; not writing them
//! (the sinks: `output::csv` names the files and writes them) nor the records themselves.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::{keep_recent, Profiler};
use crate::output::{
    csv::{Family, FamilyRow},
    sink::Sink,
};
use crate::{
    correlate::{Correlated, GraphCapture, GraphInstantiation},
    output::{ms, OutputError, TimeBase},
    vllm::batch::GraphDescriptor,
};

/// Keeps the graph registry and per-graph replay counts; streams every replay.
pub struct CudaGraphs {
    time: TimeBase,
    captures: BTreeMap<(u32, u32), GraphCapture>,
    instantiations: BTreeMap<(u32, u32), Vec<GraphInstantiation>>,
    usage: BTreeMap<(u32, u32), UsageRow>,
    /// Descriptors read at graph launches, waiting for their replay record.
    pending: HashMap<(u32, u32), VecDeque<GraphDescriptor>>,
    /// (pid, graph id) -> the descriptor its replays were launched with.
    descriptors: BTreeMap<(u32, u32), GraphDescriptor>,
    /// Replays of one graph launched with a different descriptor than its first (counted).
    descriptor_conflicts: u64,
}

/// Descriptors kept per thread until their replay is correlated (replays are emitted when
/// their step completes, a few steps later at most).
const PENDING_DESCRIPTORS: usize = 1024;

fn same_shape(a: &GraphDescriptor, b: &GraphDescriptor) -> bool {
    (
        &a.mode,
        a.num_tokens,
        a.num_reqs,
        a.uniform,
        a.num_active_loras,
    ) == (
        &b.mode,
        b.num_tokens,
        b.num_reqs,
        b.uniform,
        b.num_active_loras,
    )
}

impl CudaGraphs {
    /// A profiler stamping rows with `time`.
    pub fn new(time: TimeBase) -> Self {
        Self {
            time,
            captures: BTreeMap::new(),
            instantiations: BTreeMap::new(),
            usage: BTreeMap::new(),
            pending: HashMap::new(),
            descriptors: BTreeMap::new(),
            descriptor_conflicts: 0,
        }
    }
}

fn usage_row(pid: u32, graph_id: u32) -> UsageRow {
    UsageRow {
        runtime_mode: None,
        num_tokens: None,
        num_reqs: None,
        uniform: None,
        has_lora: None,
        replay_count: 0,
        graph_id,
        pid,
        first_replay_sec: None,
        last_replay_sec: None,
        replays_in_steps: 0,
        uniform_token_count: None,
    }
}

// The seeds' columns come first, in the seeds' order (their analyses index columns by
// position: `sort -t',' -k6 -rn cuda_graph_usage.csv` sorts by replay_count); ours follow.
fn hex(v: u64) -> String {
    format!("{v:#x}")
}

crate::csv_family! {
    pub struct CaptureRow in crate::output::csv::files::CUDA_GRAPH_CAPTURES {
    runtime_mode: Option<String>,
    num_tokens: Option<u64>,
    num_reqs: Option<u64>,
    /// Whether the batch is uniform (the seeds' boolean); the token count per request vLLM
    /// keeps for it is `uniform_token_count`.
    uniform: Option<bool>,
    has_lora: Option<bool>,
    capture_time_sec: Option<f64>,
    graph_id: u32,
    pid: u32,
    tid: u32,
    stream: Option<String>,
    capture_end_sec: Option<f64>,
    capture_ms: Option<f64>,
    instantiate_sec: Option<f64>,
    instantiate_ms: Option<f64>,
    num_instantiations: usize,
    captured_launches: Option<u32>,
    graph_handle: Option<String>,
    exec_handles: String,
    source: &'static str,
    uniform_token_count: Option<u64>,
    }
}

impl CaptureRow {
    fn with(self, d: Option<&GraphDescriptor>) -> Self {
        match d {
            Some(d) => Self {
                runtime_mode: Some(d.mode.clone()),
                num_tokens: Some(d.num_tokens),
                num_reqs: d.num_reqs,
                uniform: Some(d.uniform.is_some()),
                has_lora: Some(d.num_active_loras > 0),
                uniform_token_count: d.uniform,
                ..self
            },
            None => self,
        }
    }
}

crate::csv_family! {
    pub struct UsageRow in crate::output::csv::files::CUDA_GRAPH_USAGE {
    runtime_mode: Option<String>,
    num_tokens: Option<u64>,
    num_reqs: Option<u64>,
    /// Whether the batch is uniform (the seeds' boolean); the token count per request vLLM
    /// keeps for it is `uniform_token_count`.
    uniform: Option<bool>,
    has_lora: Option<bool>,
    replay_count: u64,
    graph_id: u32,
    pid: u32,
    first_replay_sec: Option<f64>,
    last_replay_sec: Option<f64>,
    replays_in_steps: u64,
    uniform_token_count: Option<u64>,
    }
}

crate::csv_family! {
    pub struct TimelineRow in crate::output::csv::files::CUDA_GRAPH_TIMELINE {
    timestamp_sec: f64,
    pid: u32,
    tid: u32,
    graph_id: u32,
    exec_handle: String,
    stream: String,
    step: Option<u64>,
    }
}

impl Profiler for CudaGraphs {
    fn families(&self) -> &'static [&'static Family] {
        &[&CaptureRow::FAMILY, &UsageRow::FAMILY, &TimelineRow::FAMILY]
    }

    fn consume(&mut self, record: &Correlated, out: &mut dyn Sink) {
        match record {
            Correlated::GraphCaptured(c) => {
                self.captures.insert((c.pid, c.graph_id), c.clone());
            }
            Correlated::GraphInstantiated(i) => self
                .instantiations
                .entry((i.pid, i.graph_id))
                .or_default()
                .push(i.clone()),
            Correlated::GraphReplay(r) => {
                let sec = self.time.sec(r.ts_ns);
                // The descriptor read from the stack walked at this very launch.
                if let Some(q) = self.pending.get_mut(&(r.pid, r.tid)) {
                    if let Some(i) = q.iter().position(|d| d.ts_ns == r.ts_ns) {
                        if let Some(d) = q.remove(i) {
                            let known = self.descriptors.entry((r.pid, r.graph_id));
                            match known {
                                std::collections::btree_map::Entry::Vacant(v) => {
                                    v.insert(d);
                                }
                                std::collections::btree_map::Entry::Occupied(o) => {
                                    if !same_shape(o.get(), &d) {
                                        self.descriptor_conflicts += 1;
                                    }
                                }
                            }
                        }
                    }
                }
                let u = self
                    .usage
                    .entry((r.pid, r.graph_id))
                    .or_insert_with(|| usage_row(r.pid, r.graph_id));
                u.replay_count += 1;
                u.first_replay_sec.get_or_insert(sec);
                u.last_replay_sec = Some(sec);
                u.replays_in_steps += u64::from(r.step.is_some());
                out.row(&TimelineRow {
                    timestamp_sec: sec,
                    pid: r.pid,
                    tid: r.tid,
                    graph_id: r.graph_id,
                    exec_handle: hex(r.exec_handle),
                    stream: hex(r.stream),
                    step: r.step,
                });
            }
            Correlated::Call(_)
            | Correlated::Step(_)
            | Correlated::PyStack(_)
            | Correlated::SchedulerCall(_)
            | Correlated::GcPause(_)
            | Correlated::VllmState(_)
            | Correlated::Requests(_)
            | Correlated::Blocks(_)
            | Correlated::Batch(_) => {}
            Correlated::GraphDescriptor(d) => {
                let key = (d.pid, d.tid);
                keep_recent(&mut self.pending, key, d.clone(), PENDING_DESCRIPTORS);
            }
        }
    }

    fn finish(&mut self, out: &mut dyn Sink) -> Result<(), OutputError> {
        let time = self.time;
        let empty = Vec::new();
        let captures = self.captures.values().map(|c| {
            let inst = self
                .instantiations
                .get(&(c.pid, c.graph_id))
                .unwrap_or(&empty);
            let first = inst.first();
            CaptureRow {
                runtime_mode: None,
                num_tokens: None,
                num_reqs: None,
                uniform: None,
                has_lora: None,
                capture_time_sec: c.begin_ns.map(|t| time.sec(t)),
                graph_id: c.graph_id,
                pid: c.pid,
                tid: c.tid,
                stream: c.stream.map(hex),
                capture_end_sec: c.end_ns.map(|t| time.sec(t)),
                capture_ms: c
                    .begin_ns
                    .zip(c.end_ns)
                    .map(|(b, e)| ms(e.saturating_sub(b))),
                instantiate_sec: first.map(|i| time.sec(i.ts_ns)),
                instantiate_ms: first.map(|i| ms(i.duration_ns)),
                num_instantiations: inst.len(),
                captured_launches: c.captured_launches,
                graph_handle: c.graph_handle.map(hex),
                exec_handles: inst
                    .iter()
                    .map(|i| hex(i.exec_handle))
                    .collect::<Vec<_>>()
                    .join(" "),
                source: if c.end_ns.is_some() {
                    "captured"
                } else {
                    "before_attach"
                },
                uniform_token_count: None,
            }
            .with(self.descriptors.get(&(c.pid, c.graph_id)))
        });
        for row in captures {
            out.row(&row);
        }

        for c in self.captures.values() {
            self.usage
                .entry((c.pid, c.graph_id))
                .or_insert_with(|| usage_row(c.pid, c.graph_id));
        }
        for (key, u) in &mut self.usage {
            if let Some(d) = self.descriptors.get(key) {
                u.runtime_mode = Some(d.mode.clone());
                u.num_tokens = Some(d.num_tokens);
                u.num_reqs = d.num_reqs;
                u.uniform = Some(d.uniform.is_some());
                u.has_lora = Some(d.num_active_loras > 0);
                u.uniform_token_count = d.uniform;
            }
        }
        for row in self.usage.values() {
            out.row(row);
        }
        Ok(())
    }
}
