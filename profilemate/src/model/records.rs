//! The correlated records: what the correlator produces and every profiler consumes (calls,
//! steps, graphs, symbolized Python stacks, GC pauses, and the vLLM payloads passed through).
//!
//! Owns the record types only; pairing and step detection are `correlate`'s, the payloads'
//! reading is `vllm`'s.

use profilemate_common::ApiId;

/// How a step's GPU completion time is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// A blocking wait returned when the GPU finished: completion = return time.
    Exact,
    /// The GPU was seen unfinished and then finished within `BRACKET_NS`: the completion lies
    /// between `completion_lower_ns` and `completion_ns`, at most 0.1 ms apart.
    Bracketed,
    /// The wait was short (under `BLOCKED_THRESHOLD_NS`: the GPU was done, or nearly) or a
    /// poll succeeded, and nothing brackets it closer: the completion is at or before
    /// `completion_ns` and after `completion_lower_ns`.
    UpperBound,
}

impl Completion {
    /// CSV spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Bracketed => "bracketed",
            Self::UpperBound => "upper_bound",
        }
    }
}

/// Every probed call, de-duplicated across levels (`nested` = a driver call made by a probed
/// runtime call; counted under its own symbol but not as a separate operation).
#[derive(Clone, Copy, Debug)]
pub struct ApiCall {
    /// Process.
    pub pid: u32,
    /// Symbol.
    pub api: ApiId,
    /// Entry time.
    pub entry_ns: u64,
    /// Duration, for symbols with a return probe.
    pub duration_ns: Option<u64>,
    /// Made by a probed runtime call.
    pub nested: bool,
    /// Bytes moved or allocated (copies, allocations).
    pub bytes: Option<u64>,
}

/// One forward pass (GPU step) as seen from the CUDA API.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Per-process step number, from 0.
    pub index: u64,
    /// Process.
    pub pid: u32,
    /// Thread that launched the step.
    pub tid: u32,
    /// First per-step call (step start).
    pub start_ns: u64,
    /// Last launch-side call of the step (the event record that marks its end, if any).
    pub launch_end_ns: u64,
    /// Earliest possible GPU start: the later of the step start and the previous step's
    /// earliest completion (one device queue: the step cannot start before that finished).
    pub gpu_start_ns: u64,
    /// Latest possible GPU start: the later of the step start and the previous step's latest
    /// completion.
    pub gpu_start_upper_ns: u64,
    /// GPU completion: the wait's return for exact rows, else the earliest time the GPU was
    /// seen past the step (an upper bound).
    pub completion_ns: u64,
    /// The latest time the GPU was known not to have finished the step (its last launch, a
    /// poll answering "not ready"); equals `completion_ns` for exact rows.
    pub completion_lower_ns: u64,
    /// Exact, bracketed or upper bound.
    pub completion: Completion,
    /// The GPU had finished (or finished within 0.1 ms) when the CPU began waiting for it:
    /// the completing wait did not block and no poll saw the step unfinished after the wait
    /// began (a CPU-bound step).
    pub gpu_done_before_wait: bool,
    /// Kernel launches (only with per-kernel probes).
    pub kernel_launches: Option<u32>,
    /// Graph replays.
    pub graph_launches: u32,
    /// Graph ids replayed, in order.
    pub graph_ids: Vec<u32>,
    /// Host-to-device bytes.
    pub h2d_bytes: u64,
    /// Device-to-host bytes.
    pub d2h_bytes: u64,
    /// Thread whose wait completed the step.
    pub sync_tid: u32,
    /// The waiting call.
    pub sync_api: ApiId,
    /// How long that call blocked.
    pub sync_wait_ns: u64,
}

impl Step {
    /// GPU time of the step in ns (exact rows), or an upper bound of it.
    #[must_use]
    pub fn forward_ns(&self) -> u64 {
        self.completion_ns.saturating_sub(self.gpu_start_ns)
    }

    /// A lower bound of the step's GPU time in ns: the earliest possible completion minus the
    /// latest possible start (0 when the bounds overlap).
    #[must_use]
    pub fn gpu_time_lower_ns(&self) -> u64 {
        self.completion_lower_ns
            .saturating_sub(self.gpu_start_upper_ns)
    }

    /// CPU time spent launching it in ns.
    #[must_use]
    pub fn cpu_launch_ns(&self) -> u64 {
        self.launch_end_ns.saturating_sub(self.start_ns)
    }
}

/// A graph that was captured (or first seen at instantiation/launch when captured before attach).
#[derive(Clone, Debug, PartialEq)]
pub struct GraphCapture {
    /// Per-process graph id, from 0.
    pub graph_id: u32,
    /// Process.
    pub pid: u32,
    /// Capturing thread.
    pub tid: u32,
    /// Captured stream.
    pub stream: Option<u64>,
    /// `cudaStreamBeginCapture` time (None: began before attach).
    pub begin_ns: Option<u64>,
    /// `cudaStreamEndCapture` return (None: not captured while attached).
    pub end_ns: Option<u64>,
    /// `cudaGraph_t` handle.
    pub graph_handle: Option<u64>,
    /// Kernel launches recorded into the graph (only with per-kernel probes).
    pub captured_launches: Option<u32>,
}

/// An executable graph instantiated from a graph.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphInstantiation {
    /// Graph id.
    pub graph_id: u32,
    /// Process.
    pub pid: u32,
    /// Call entry.
    pub ts_ns: u64,
    /// Call duration.
    pub duration_ns: u64,
    /// `cudaGraphExec_t` handle.
    pub exec_handle: u64,
}

/// One replay of an executable graph.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphReplay {
    /// Graph id.
    pub graph_id: u32,
    /// Process.
    pub pid: u32,
    /// Launching thread.
    pub tid: u32,
    /// Launch call time.
    pub ts_ns: u64,
    /// Executable handle.
    pub exec_handle: u64,
    /// Stream.
    pub stream: u64,
    /// Index of the step it belongs to, filled when the step completes (None: never completed).
    pub step: Option<u64>,
}

/// Everything the correlator emits, in order.
#[derive(Clone, Debug)]
pub enum Correlated {
    /// A probed call (all of them).
    Call(ApiCall),
    /// A completed step.
    Step(Step),
    /// A captured graph.
    GraphCaptured(GraphCapture),
    /// A graph instantiation.
    GraphInstantiated(GraphInstantiation),
    /// Graph replays of a step, emitted when the step completes (or at the end if it never does).
    GraphReplay(GraphReplay),
    /// A Python stack (sampled, or at a CUDA call).
    PyStack(Box<PyStack>),
    /// A GC pause.
    GcPause(GcPause),
    /// A poll of vLLM's scheduler state (side channel: live objects of the target).
    VllmState(super::scheduler::StateSnapshot),
    /// A poll of every request of vLLM's scheduler.
    Requests(Box<super::scheduler::RequestPoll>),
    /// A poll of the prefix-cached KV blocks (evictions seen since the previous one).
    Blocks(Box<super::scheduler::BlockPoll>),
    /// The batch a step was launched with (its `SchedulerOutput`).
    Batch(Box<super::batch::StepBatch>),
    /// The CUDA graph descriptor a replay used.
    GraphDescriptor(super::batch::GraphDescriptor),
    /// A watched scheduler method was entered (hardware breakpoint).
    SchedulerCall(Box<super::scheduler::SchedulerCall>),
}

/// One symbolized Python frame.
#[derive(Clone, Debug)]
pub struct PyFrameInfo {
    /// The code object's names.
    pub code: std::sync::Arc<super::code::CodeInfo>,
    /// Current line.
    pub line: i32,
    /// The frame's second local (`localsplus[1]`, the argument after `self`) at walk time.
    pub arg1: u64,
}

impl super::ops::FrameName for PyFrameInfo {
    fn filename(&self) -> &str {
        &self.code.filename
    }
    fn qualname(&self) -> &str {
        &self.code.qualname
    }
}

/// A symbolized Python stack of one thread at one instant.
#[derive(Clone, Debug)]
pub struct PyStack {
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// When it was walked.
    pub ts_ns: u64,
    /// A sampling tick, or the CUDA call it was walked at.
    pub reason: super::stack::StackReason,
    /// `stack_flags::*` from the walker.
    pub flags: u16,
    /// Frames, innermost first (unreadable code objects appear as `<unknown>`).
    pub frames: Vec<PyFrameInfo>,
    /// The vLLM operation of the stack.
    pub op: super::ops::Operation,
    /// Index of the frame that decided `op`.
    pub op_frame: Option<usize>,
}

/// One garbage collection pause (`gc__start` .. `gc__done` on one thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcPause {
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// `gc__start`.
    pub start_ns: u64,
    /// `gc__done`.
    pub end_ns: u64,
    /// Generation collected.
    pub generation: i64,
    /// Objects collected (`gc__done`'s argument: collected + uncollectable).
    pub collected: i64,
}
