//! forward_pass_timing.csv (one row per GPU step) and forward_pass_summary.json.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Profiler;
use crate::{
    correlate::{Completion, Correlated, Step},
    output::{
        ms,
        summary::{Latency, LatencySummary},
        OutputError, SessionDir, TimeBase,
    },
};

/// Collects steps.
#[derive(Default)]
pub struct ForwardPass {
    steps: Vec<Step>,
}

/// The phase column; vLLM batch phase needs Python context, not read in this version.
const PHASE_UNKNOWN: &str = "unknown";

const HEADER: &[&str] = &[
    "step",
    "timestamp_sec",
    "pid",
    "tid",
    "phase",
    "forward_time_ms",
    "cpu_launch_ms",
    "num_kernel_launches",
    "num_graph_launches",
    "graph_ids",
    "h2d_bytes",
    "d2h_bytes",
    "completion",
    "gpu_start_sec",
    "completion_sec",
    "sync_tid",
    "sync_api",
    "sync_wait_ms",
];

#[derive(Serialize)]
struct Row<'a> {
    step: u64,
    timestamp_sec: f64,
    pid: u32,
    tid: u32,
    phase: &'a str,
    forward_time_ms: f64,
    cpu_launch_ms: f64,
    num_kernel_launches: Option<u32>,
    num_graph_launches: u32,
    graph_ids: String,
    h2d_bytes: u64,
    d2h_bytes: u64,
    completion: &'a str,
    gpu_start_sec: f64,
    completion_sec: f64,
    sync_tid: u32,
    sync_api: &'a str,
    sync_wait_ms: f64,
}

#[derive(Serialize, Default)]
struct PhaseSummary {
    count: u64,
    exact_count: u64,
    upper_bound_count: u64,
    forward_time_ms: Option<LatencySummary>,
    forward_time_exact_ms: Option<LatencySummary>,
    cpu_launch_ms: Option<LatencySummary>,
}

#[derive(Serialize)]
struct Summary {
    #[serde(flatten)]
    all: PhaseSummary,
    by_phase: BTreeMap<&'static str, PhaseSummary>,
    by_pid: BTreeMap<u32, PhaseSummary>,
    note: &'static str,
}

fn summarize<'a>(steps: impl Iterator<Item = &'a Step>) -> PhaseSummary {
    let (mut fwd, mut exact, mut cpu) =
        (Latency::default(), Latency::default(), Latency::default());
    let mut s = PhaseSummary::default();
    for st in steps {
        s.count += 1;
        fwd.record(st.forward_ns());
        cpu.record(st.cpu_launch_ns());
        match st.completion {
            Completion::Exact => {
                s.exact_count += 1;
                exact.record(st.forward_ns());
            }
            Completion::UpperBound => s.upper_bound_count += 1,
        }
    }
    s.forward_time_ms = fwd.summary();
    s.forward_time_exact_ms = exact.summary();
    s.cpu_launch_ms = cpu.summary();
    s
}

impl Profiler for ForwardPass {
    fn consume(&mut self, record: &Correlated) {
        if let Correlated::Step(s) = record {
            self.steps.push(s.clone());
        }
    }

    fn write(
        &mut self,
        dir: &SessionDir,
        time: TimeBase,
    ) -> Result<Vec<&'static str>, OutputError> {
        self.steps.sort_by_key(|s| (s.start_ns, s.pid, s.index));
        let rows = self.steps.iter().map(|s| Row {
            step: s.index,
            timestamp_sec: time.sec(s.start_ns),
            pid: s.pid,
            tid: s.tid,
            phase: PHASE_UNKNOWN,
            forward_time_ms: ms(s.forward_ns()),
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
            gpu_start_sec: time.sec(s.gpu_start_ns),
            completion_sec: time.sec(s.completion_ns),
            sync_tid: s.sync_tid,
            sync_api: s.sync_api.symbol(),
            sync_wait_ms: ms(s.sync_wait_ns),
        });
        dir.write_csv("forward_pass_timing.csv", HEADER, rows)?;
        let mut by_pid = BTreeMap::new();
        for pid in self
            .steps
            .iter()
            .map(|s| s.pid)
            .collect::<std::collections::BTreeSet<_>>()
        {
            by_pid.insert(pid, summarize(self.steps.iter().filter(|s| s.pid == pid)));
        }
        let summary = Summary {
            all: summarize(self.steps.iter()),
            by_phase: BTreeMap::from([(PHASE_UNKNOWN, summarize(self.steps.iter()))]),
            by_pid,
            note: "forward_time_ms = GPU completion (return of the wait that observed it) minus the later of the step's first launch-side call and the previous step's exact completion; upper_bound rows completed before their wait began",
        };
        dir.write_json("forward_pass_summary.json", &summary)?;
        Ok(vec!["forward_pass_timing.csv", "forward_pass_summary.json"])
    }
}
