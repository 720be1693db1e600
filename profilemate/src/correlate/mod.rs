//! Calls -> operations -> steps and CUDA graph records.
//!
//! Owns pairing, de-duplication and the step machine; not the record types (`model`), the
//! vLLM names that tell step events from helpers (`vllm::bundle`), nor any output.
//!
//! Per process and thread state machines, fed with decoded probe hits in ring-buffer order
//! (which is per-thread program order):
//! 1. **De-duplication across levels.** A runtime call (`cudaX`) reaches its driver twin
//!    (`cuX`) on the same thread; the driver hit inside the runtime call is `nested` and not
//!    a second operation. Runtime calls with a return probe bound the window exactly; for
//!    entry-only ones the twin is the next probed driver call of the same operation on that
//!    thread, within `NEST_WINDOW_NS` (it follows within microseconds, but a descheduled
//!    thread or a first-hit uprobe set-up can delay it by milliseconds).
//! 2. **Entry/return pairing** per thread (a call stack of probed calls with return probes).
//! 3. **Operations**: graph capture/instantiate/replay, copies, launches, event records,
//!    waits and polls (with their answers), fed to the step machine in `steps`; the Python
//!    stack walked at an event record tells the step machine which vLLM function recorded it.

pub mod python;

mod steps;

use std::collections::HashMap;

use profilemate_common::{ApiId, Library, OpClass};
use serde::Serialize;

pub use crate::model::records::{
    ApiCall, Completion, Correlated, GcPause, GraphCapture, GraphInstantiation, GraphReplay,
    PyFrameInfo, PyStack, Step,
};
pub use steps::{BLOCKED_THRESHOLD_NS, BRACKET_NS};

use crate::{
    config::TimingMode,
    probes::drain::{CallEvent, CallPhase, StackReason},
    vllm::{
        bundle,
        events::{classify_record, EventRole, EventRule},
    },
};
use steps::{EventMark, StepMachine, WaitCall, Work, NOT_READY};

/// A driver call this soon after an entry-only runtime call of the same operation on the
/// same thread is that runtime call's own driver twin.
pub const NEST_WINDOW_NS: u64 = 20_000_000;

/// `cudaMemcpyKind` values.
const MEMCPY_H2D: u64 = 1;
const MEMCPY_D2H: u64 = 2;

/// Counts of everything the correlator could not attribute; reported in metadata.json.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct CorrelatorStats {
    /// Probe hits processed.
    pub events: u64,
    /// Driver hits absorbed into their runtime call.
    pub nested_calls: u64,
    /// Returns with no matching entry (the call began before attach).
    pub unmatched_returns: u64,
    /// Entries whose return never came (an inner call returned first: longjmp/exception).
    pub abandoned_calls: u64,
    /// Calls still open when the session ended.
    pub calls_open_at_end: u64,
    /// Event waits on an event never recorded while attached.
    pub syncs_unknown_event: u64,
    /// Event waits whose step had already completed (repeat waits).
    pub repeat_syncs: u64,
    /// Waits on helper events (recorded in the middle of a step, such as vLLM V1's
    /// `prepare_inputs_event` after the input copies, or without any call of their own):
    /// merged into the next step.
    pub input_only_syncs: u64,
    /// Launch/copy activity that never saw a completing wait before the session ended.
    pub incomplete_steps: u64,
    /// Graph launches of executables instantiated before attach.
    pub unknown_graph_execs: u64,
    /// Instantiations of graphs not captured while attached.
    pub uncaptured_graphs: u64,
    /// Capture ends without a capture begin seen.
    pub capture_end_without_begin: u64,
    /// Out-parameters that could not be read (handle unknown).
    pub unreadable_out_params: u64,
    /// Stream captures that failed (non-zero status): no graph recorded.
    pub failed_captures: u64,
    /// Successful event polls on events never waited on (e.g. allocator bookkeeping): not
    /// taken as step completions (they bound earlier steps' completions on their stream).
    pub ignored_event_polls: u64,
    /// Event polls that answered "not ready" (each bounds its step's completion from below).
    pub not_ready_polls: u64,
    /// Event records whose recording vLLM function marked them a step end or a helper.
    pub records_with_role: u64,
}

struct OpenCall {
    api: ApiId,
    entry_ns: u64,
    args: [u64; 6],
    nested: bool,
    /// For event waits: which step the event marked when the wait began (a concurrent
    /// re-record of the same event must not redirect the wait).
    mark: Option<EventMark>,
    /// Time the tracer spent inside the call (the Python stack walk at its entry).
    own_ns: u64,
}

/// Probed calls with a return probe a thread may have open at once; deeper means returns
/// are missing (a return probe that failed to attach), and the oldest are dropped.
const MAX_OPEN_CALLS: usize = 64;

struct Capture {
    stream: u64,
    begin_ns: u64,
    launches: u32,
}

#[derive(Default)]
struct ThreadState {
    /// The innermost runtime call that may still reach its driver twin.
    runtime_open: Option<(OpClass, u64, bool)>,
    stack: Vec<OpenCall>,
    capture: Option<Capture>,
    /// The capture whose end call is in progress.
    capture_ending: Option<Capture>,
}

#[derive(Default)]
struct ProcState {
    threads: HashMap<u32, ThreadState>,
    graphs: HashMap<u64, u32>,
    execs: HashMap<u64, u32>,
    next_graph_id: u32,
    steps: StepMachine,
}

impl ProcState {
    /// `cudaStreamEndCapture` returned: the captured graph (none for a failed capture).
    fn capture_end(
        &mut self,
        pid: u32,
        tid: u32,
        op: &Op,
        kernels: bool,
        stats: &mut CorrelatorStats,
        out: &mut impl FnMut(Correlated),
    ) {
        let cap = self
            .threads
            .get_mut(&tid)
            .and_then(|t| t.capture_ending.take());
        if op.ret != 0 {
            // Invalidated or failed capture: no graph; *pGraph holds nothing valid.
            stats.failed_captures += 1;
            return;
        }
        if cap.is_none() {
            stats.capture_end_without_begin += 1;
        }
        if op.out.is_none() {
            stats.unreadable_out_params += 1;
        }
        let graph_id = self.new_graph_id();
        if let Some(handle) = op.out {
            self.graphs.insert(handle, graph_id);
        }
        out(Correlated::GraphCaptured(GraphCapture {
            graph_id,
            pid,
            tid,
            stream: Some(cap.as_ref().map_or(op.args[0], |c| c.stream)),
            begin_ns: cap.as_ref().map(|c| c.begin_ns),
            end_ns: Some(op.ret_ns.unwrap_or(op.entry_ns)),
            graph_handle: op.out,
            captured_launches: if kernels {
                cap.map(|c| c.launches)
            } else {
                None
            },
        }));
    }

    /// A graph was instantiated: its executable (none for a failed instantiation).
    fn instantiate(
        &mut self,
        pid: u32,
        tid: u32,
        op: &Op,
        stats: &mut CorrelatorStats,
        out: &mut impl FnMut(Correlated),
    ) {
        let graph = op.args[1];
        let graph_id = match self.graphs.get(&graph) {
            Some(id) => *id,
            None => {
                stats.uncaptured_graphs += 1;
                let id = self.graph_from_before_attach(tid, Some(graph), out);
                self.graphs.insert(graph, id);
                id
            }
        };
        // A failed instantiation (non-zero status) produced no executable.
        match op.out {
            Some(exec) if op.ret == 0 => {
                self.execs.insert(exec, graph_id);
                out(Correlated::GraphInstantiated(GraphInstantiation {
                    graph_id,
                    pid,
                    ts_ns: op.entry_ns,
                    duration_ns: op.ret_ns.unwrap_or(op.entry_ns).saturating_sub(op.entry_ns),
                    exec_handle: exec,
                }));
            }
            _ => stats.unreadable_out_params += 1,
        }
    }

    /// A graph replay: work of the launching thread's step.
    fn graph_launch(
        &mut self,
        pid: u32,
        tid: u32,
        op: &Op,
        stats: &mut CorrelatorStats,
        out: &mut impl FnMut(Correlated),
    ) {
        let exec = op.args[0];
        let graph_id = match self.execs.get(&exec) {
            Some(id) => *id,
            None => {
                stats.unknown_graph_execs += 1;
                let id = self.graph_from_before_attach(tid, None, out);
                self.execs.insert(exec, id);
                id
            }
        };
        let replay = GraphReplay {
            graph_id,
            pid,
            tid,
            ts_ns: op.entry_ns,
            exec_handle: exec,
            stream: op.args[1],
            step: None,
        };
        self.steps
            .work(tid, op.entry_ns, Work::Graph(replay), stats, out);
    }

    fn new_graph_id(&mut self) -> u32 {
        let id = self.next_graph_id;
        self.next_graph_id += 1;
        id
    }

    /// Registers a graph first seen after its capture (created before attach).
    fn graph_from_before_attach(
        &mut self,
        tid: u32,
        graph_handle: Option<u64>,
        out: &mut impl FnMut(Correlated),
    ) -> u32 {
        let graph_id = self.new_graph_id();
        out(Correlated::GraphCaptured(GraphCapture {
            graph_id,
            pid: self.steps.pid,
            tid,
            stream: None,
            begin_ns: None,
            end_ns: None,
            graph_handle,
            captured_launches: None,
        }));
        graph_id
    }
}

/// A call ready for operation-level processing.
struct Op {
    api: ApiId,
    entry_ns: u64,
    ret_ns: Option<u64>,
    args: [u64; 6],
    ret: u64,
    out: Option<u64>,
    mark: Option<EventMark>,
    own_ns: u64,
}

/// The correlator. Feed `handle` in ring-buffer order; call `finish` at the end.
pub struct Correlator {
    timing: TimingMode,
    kernels: bool,
    event_roles: &'static [EventRule],
    procs: HashMap<u32, ProcState>,
    /// Attribution counters.
    pub stats: CorrelatorStats,
}

fn is_twin(runtime: OpClass, driver: OpClass) -> bool {
    runtime == driver
        || (runtime == OpClass::Memcpy && matches!(driver, OpClass::CopyH2D | OpClass::CopyD2H))
}

impl Correlator {
    /// A correlator for one session.
    #[must_use]
    pub fn new(timing: TimingMode, kernels: bool) -> Self {
        Self {
            timing,
            kernels,
            event_roles: bundle::session_default().events,
            procs: HashMap::new(),
            stats: CorrelatorStats::default(),
        }
    }

    /// Uses `table` to tell which vLLM functions record step-end and helper events.
    #[must_use]
    pub fn with_event_roles(mut self, table: &'static [EventRule]) -> Self {
        self.event_roles = table;
        self
    }

    /// A Python stack was symbolized. One walked at an event record names the function that
    /// recorded the event, which tells a step's end from a helper event (`vllm::events`).
    /// Feed every stack walked at a CUDA call here, in ring-buffer order, before its
    /// process's later calls when possible (the call record precedes its stack).
    pub fn python_stack(&mut self, st: &PyStack, out: &mut impl FnMut(Correlated)) {
        let StackReason::CudaCall(api) = st.reason else {
            return;
        };
        if api.spec().class != OpClass::EventRecord || api.spec().library != Library::Runtime {
            return;
        }
        let role = classify_record(self.event_roles, &st.frames);
        if role == EventRole::Unknown {
            return;
        }
        let Some(proc) = self.procs.get_mut(&st.pid) else {
            return;
        };
        self.stats.records_with_role += 1;
        proc.steps
            .set_role(st.tid, st.ts_ns, role, &mut self.stats, out);
    }

    /// A Python stack was walked at the entry of `tid`'s call entered at `entry_ns`: the
    /// walk's time is the tracer's, not the call's.
    pub fn walked(&mut self, pid: u32, tid: u32, entry_ns: u64, walk_ns: u64) {
        let open = self
            .procs
            .get_mut(&pid)
            .and_then(|p| p.threads.get_mut(&tid))
            .and_then(|t| t.stack.last_mut())
            .filter(|c| c.entry_ns == entry_ns);
        if let Some(call) = open {
            call.own_ns += walk_ns;
        }
    }

    /// Processes one probe hit, emitting what it completes into `out`.
    pub fn handle(&mut self, ev: CallEvent, out: &mut impl FnMut(Correlated)) {
        self.stats.events += 1;
        let kernels = self.kernels;
        self.procs.entry(ev.pid).or_insert_with(|| ProcState {
            steps: StepMachine::new(ev.pid, kernels),
            ..ProcState::default()
        });
        match ev.phase {
            CallPhase::Entry { args } => self.entry(&ev, args, out),
            CallPhase::Return {
                ret,
                out: out_value,
            } => self.exit(&ev, ret, out_value, out),
        }
    }

    /// A call entered: nested or not, held open until its return or an operation now.
    fn entry(&mut self, ev: &CallEvent, args: [u64; 6], out: &mut impl FnMut(Correlated)) {
        let spec = ev.api.spec();
        let Some(proc) = self.procs.get_mut(&ev.pid) else {
            return;
        };
        let thread = proc.threads.entry(ev.tid).or_default();
        let nested = spec.library == Library::Driver
            && thread.runtime_open.is_some_and(|(class, ts, exact)| {
                is_twin(class, spec.class)
                    && (exact || ev.ts_ns.saturating_sub(ts) <= NEST_WINDOW_NS)
            });
        match spec.library {
            Library::Runtime => {
                thread.runtime_open = Some((spec.class, ev.ts_ns, spec.needs_return));
            }
            // An entry-only runtime call reaches its twin once, and before any other
            // probed driver call on its thread.
            Library::Driver if thread.runtime_open.is_some_and(|(_, _, exact)| !exact) => {
                thread.runtime_open = None;
            }
            Library::Driver => {}
        }
        if nested {
            self.stats.nested_calls += 1;
        }
        if spec.needs_return {
            let poll = spec.class == OpClass::EventQuery;
            let mark = match spec.class {
                OpClass::EventSync | OpClass::EventQuery if !nested => {
                    let (tid, ts) = (ev.tid, ev.ts_ns);
                    proc.steps
                        .wait_begins(tid, args[0], ts, poll, &mut self.stats, out)
                }
                _ => None,
            };
            let thread = proc.threads.entry(ev.tid).or_default();
            // The capture is over once its end is entered, whatever the return says.
            if spec.class == OpClass::CaptureEnd && !nested {
                thread.capture_ending = thread.capture.take();
            }
            if thread.stack.len() >= MAX_OPEN_CALLS {
                thread.stack.remove(0);
                self.stats.abandoned_calls += 1;
            }
            thread.stack.push(OpenCall {
                api: ev.api,
                entry_ns: ev.ts_ns,
                args,
                nested,
                mark,
                own_ns: 0,
            });
            return;
        }
        out(Correlated::Call(ApiCall {
            pid: ev.pid,
            api: ev.api,
            entry_ns: ev.ts_ns,
            duration_ns: None,
            nested,
            bytes: call_bytes(ev.api, &args),
        }));
        if !nested {
            let op = Op {
                api: ev.api,
                entry_ns: ev.ts_ns,
                ret_ns: None,
                args,
                ret: 0,
                out: None,
                mark: None,
                own_ns: 0,
            };
            self.operation(ev.pid, ev.tid, op, out);
        }
    }

    /// A call returned: paired with its entry, then an operation unless nested.
    fn exit(
        &mut self,
        ev: &CallEvent,
        ret: u64,
        out_value: Option<u64>,
        out: &mut impl FnMut(Correlated),
    ) {
        let Some(thread) = self
            .procs
            .get_mut(&ev.pid)
            .map(|p| p.threads.entry(ev.tid).or_default())
        else {
            return;
        };
        let Some(pos) = thread.stack.iter().rposition(|c| c.api == ev.api) else {
            self.stats.unmatched_returns += 1;
            return;
        };
        self.stats.abandoned_calls += (thread.stack.len() - pos - 1) as u64;
        thread.stack.truncate(pos + 1);
        let Some(call) = thread.stack.pop() else {
            return;
        };
        if ev.api.spec().library == Library::Runtime {
            thread.runtime_open = None;
        }
        out(Correlated::Call(ApiCall {
            pid: ev.pid,
            api: ev.api,
            entry_ns: call.entry_ns,
            duration_ns: Some(
                ev.ts_ns
                    .saturating_sub(call.entry_ns)
                    .saturating_sub(call.own_ns),
            ),
            nested: call.nested,
            bytes: call_bytes(ev.api, &call.args),
        }));
        if !call.nested {
            let op = Op {
                api: ev.api,
                entry_ns: call.entry_ns,
                ret_ns: Some(ev.ts_ns),
                args: call.args,
                ret,
                out: out_value,
                mark: call.mark,
                own_ns: call.own_ns,
            };
            self.operation(ev.pid, ev.tid, op, out);
        }
    }

    fn operation(&mut self, pid: u32, tid: u32, op: Op, out: &mut impl FnMut(Correlated)) {
        let timing = self.timing;
        let kernels = self.kernels;
        let stats = &mut self.stats;
        let Some(proc) = self.procs.get_mut(&pid) else {
            return;
        };
        let capturing = proc.threads.get(&tid).is_some_and(|t| t.capture.is_some());
        let ret_ns = op.ret_ns.unwrap_or(op.entry_ns);
        let wait = WaitCall {
            tid,
            api: op.api,
            entry_ns: op.entry_ns,
            ret_ns,
            own_ns: op.own_ns,
        };
        match op.api.spec().class {
            OpClass::CaptureBegin => {
                if let Some(t) = proc.threads.get_mut(&tid) {
                    t.capture = Some(Capture {
                        stream: op.args[0],
                        begin_ns: op.entry_ns,
                        launches: 0,
                    });
                }
            }
            OpClass::CaptureEnd => proc.capture_end(pid, tid, &op, kernels, stats, out),
            OpClass::Instantiate => proc.instantiate(pid, tid, &op, stats, out),
            OpClass::GraphLaunch => {
                if !capturing {
                    proc.graph_launch(pid, tid, &op, stats, out);
                }
            }
            OpClass::KernelLaunch => {
                match proc.threads.get_mut(&tid).and_then(|t| t.capture.as_mut()) {
                    Some(cap) => cap.launches += 1,
                    None => proc.steps.work(tid, op.entry_ns, Work::Kernel, stats, out),
                }
            }
            OpClass::Memcpy | OpClass::CopyH2D | OpClass::CopyD2H => {
                if capturing {
                    return;
                }
                let (bytes, kind) = match op.api.spec().class {
                    OpClass::CopyH2D => (op.args[2], MEMCPY_H2D),
                    OpClass::CopyD2H => (op.args[2], MEMCPY_D2H),
                    _ => (op.args[2], op.args[3]),
                };
                let work = match kind {
                    MEMCPY_H2D => Work::H2D(bytes),
                    MEMCPY_D2H => Work::D2H(bytes),
                    _ => Work::Copy,
                };
                proc.steps.work(tid, op.entry_ns, work, stats, out);
                // A synchronous copy is a blocking wait too.
                if op.ret_ns.is_some() && timing == TimingMode::Sync {
                    proc.steps.complete_all(wait, out);
                }
            }
            OpClass::EventRecord
            | OpClass::EventSync
            | OpClass::EventQuery
            | OpClass::StreamSync
            | OpClass::DeviceSync => {
                event_op(&mut proc.steps, capturing, &op, wait, timing, stats, out);
            }
            OpClass::Malloc | OpClass::Free => {}
        }
    }

    /// Event handles the step machines remember (bounded).
    #[cfg(test)]
    fn tracked_events(&self) -> usize {
        self.procs.values().map(|p| p.steps.tracked_events()).sum()
    }

    /// Ends the session: counts what never completed and emits replays of incomplete steps.
    pub fn finish(&mut self, out: &mut impl FnMut(Correlated)) {
        for proc in self.procs.values_mut() {
            for t in proc.threads.values() {
                self.stats.calls_open_at_end += t.stack.len() as u64;
            }
            proc.steps.finish(&mut self.stats, out);
        }
    }
}

/// Event records, waits, polls and stream/device syncs: the step machine's boundaries and
/// its evidence of the GPU's progress.
fn event_op(
    steps: &mut StepMachine,
    capturing: bool,
    op: &Op,
    wait: WaitCall,
    timing: TimingMode,
    stats: &mut CorrelatorStats,
    out: &mut impl FnMut(Correlated),
) {
    let class = op.api.spec().class;
    let query = class == OpClass::EventQuery;
    match (class, timing) {
        (OpClass::EventRecord, _) if capturing => {}
        (OpClass::EventRecord, TimingMode::Sync) => steps.extend_launch(wait.tid, op.entry_ns),
        (OpClass::EventRecord, TimingMode::Events) => {
            let event_stream = (op.args[0], op.args[1]);
            steps.record_event(wait.tid, event_stream, op.entry_ns, stats, out);
        }
        (OpClass::EventQuery, _) if op.ret == NOT_READY => {
            stats.not_ready_polls += 1;
            steps.not_ready(op.mark, op.entry_ns);
        }
        // An error (invalid handle, ...): no information.
        _ if op.ret != 0 => {}
        (OpClass::EventSync | OpClass::EventQuery, TimingMode::Events) => {
            steps.complete_event(op.args[0], op.mark, wait, query, stats, out);
        }
        (OpClass::EventQuery, TimingMode::Sync) => {}
        (_, TimingMode::Sync) => steps.complete_all(wait, out),
        // Not a step boundary, but the GPU was past everything recorded before it.
        (_, TimingMode::Events) => {
            let stream = (class == OpClass::StreamSync).then_some(op.args[0]);
            steps.synced(stream, op.entry_ns, wait.ret_ns);
        }
    }
}

/// Bytes moved or allocated by a call, from its arguments.
fn call_bytes(api: ApiId, args: &[u64; 6]) -> Option<u64> {
    match api.spec().class {
        OpClass::Memcpy | OpClass::CopyH2D | OpClass::CopyD2H => Some(args[2]),
        OpClass::Malloc => Some(args[1]),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
