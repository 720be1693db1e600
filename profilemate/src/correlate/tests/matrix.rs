//! The fixture matrix on a simulated GPU: the loop shapes of `tests/fixture-target` (eager,
//! graph, alternating, piecewise) x async depth 2 / synchronous x with / without a
//! device-to-host copy x event handles reused / fresh x with / without vLLM V1's
//! `prepare_inputs_event` x GPU-bound / CPU-bound, each also with per-kernel probes, with
//! Python stacks naming the recording functions, and with polls before the waits.
//!
//! Every cell must give exactly the loop's steps, each with its replays, bytes and first
//! call; exact rows within 2 % / 50 µs of the simulated GPU time; every other row's bounds
//! around it.

use std::{collections::HashMap, sync::Arc};

use super::*;
use crate::{probes::drain::StackReason, python::code::CodeInfo, vllm::ops::Operation};

const STEPS: usize = 400;
/// CPU time of one probed call, µs.
const CALL_US: u64 = 5;
/// A waiter wakes this long after the GPU finished, µs.
const WAKE_US: u64 = 10;
/// Pause between two polls, µs.
const POLL_GAP_US: u64 = 20;
const EXEC: u64 = 0xe0;
const PREP_EVENT: u64 = 0xd00;
const ALLOC_EVENT: u64 = 0xa00;
const TIMING_EVENT: u64 = 0x10_0000;
const STEP_EVENT: u64 = 0xe00;
const H2D: u64 = 1;
const D2H: u64 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Eager,
    Graph,
    Alternate,
    /// Graph replays with eager (attention) kernels between them.
    Piecewise,
}

#[derive(Clone, Copy, Debug)]
struct Cell {
    shape: Shape,
    async2: bool,
    d2h: bool,
    fresh_events: bool,
    prep_event: bool,
    gpu_bound: bool,
    /// Per-kernel probes see the eager kernels.
    kernels: bool,
    /// Stacks walked at the records name vLLM's recording functions.
    roles: bool,
    /// Every wait is preceded by polls until the event is done.
    polls: bool,
    /// V1's structured-output bitmask: an input copy after `prepare_inputs_event`.
    bitmask: bool,
    /// A timing event recorded at each step's start (fresh, never waited on).
    start_event: bool,
    /// A pinned-allocator event (from a pool of 4, never waited on) recorded after the
    /// step's event, before the wait.
    trailing_alloc_event: bool,
}

impl Cell {
    fn new(shape: Shape) -> Self {
        Self {
            shape,
            async2: true,
            d2h: true,
            fresh_events: false,
            prep_event: false,
            gpu_bound: true,
            kernels: false,
            roles: false,
            polls: false,
            bitmask: false,
            start_event: false,
            trailing_alloc_event: false,
        }
    }
}

/// One step of the loop as the simulated GPU ran it (µs).
#[derive(Debug)]
struct TruthStep {
    first_call: Option<u64>,
    gpu_start: u64,
    gpu_end: u64,
    graphs: u32,
    kernels: u32,
    h2d: u64,
    d2h: u64,
}

impl TruthStep {
    fn new() -> Self {
        Self {
            first_call: None,
            gpu_start: u64::MAX,
            gpu_end: 0,
            graphs: 0,
            kernels: 0,
            h2d: 0,
            d2h: 0,
        }
    }
}

/// The loop's probe stream, made against a one-queue GPU.
struct Sim {
    cell: Cell,
    s: Script,
    /// CPU clock of the loop's thread, µs.
    t: u64,
    gpu_free: u64,
    /// Event -> when the GPU passed its last record.
    done: HashMap<u64, u64>,
    truth: Vec<TruthStep>,
}

impl Sim {
    fn new(cell: Cell) -> Self {
        let mut s = Script::new();
        capture(&mut s, 0, 0xa0, EXEC);
        Self {
            cell,
            s,
            t: 1000,
            gpu_free: 0,
            done: HashMap::new(),
            truth: Vec::new(),
        }
    }

    fn step(&mut self) -> &mut TruthStep {
        self.truth.last_mut().expect("a step is open")
    }

    /// A launch-side call (`None`: not probed) that enqueues `dur` µs of GPU work.
    fn enqueue(&mut self, call: Option<(ApiId, &[u64])>, dur: u64) {
        let ts = self.t;
        if let Some((api, args)) = call {
            self.s.entry(ts, MAIN, api, args);
        }
        self.t += CALL_US;
        let start = ts.max(self.gpu_free);
        self.gpu_free = start + dur;
        let end = self.gpu_free;
        let st = self.step();
        st.gpu_start = st.gpu_start.min(start);
        st.gpu_end = st.gpu_end.max(end);
        if call.is_some() {
            st.first_call.get_or_insert(ts);
        }
    }

    fn kernel(&mut self, dur: u64) {
        let probed = self
            .cell
            .kernels
            .then_some((ApiId::cuLaunchKernel, &[][..]));
        self.enqueue(probed, dur);
        if self.cell.kernels {
            self.step().kernels += 1;
        }
    }

    fn graph(&mut self, dur: u64) {
        self.enqueue(Some((ApiId::cudaGraphLaunch, &[EXEC, STREAM])), dur);
        self.step().graphs += 1;
    }

    fn copy(&mut self, bytes: u64, kind: u64) {
        self.enqueue(
            Some((ApiId::cudaMemcpyAsync, &[0x10, 0x20, bytes, kind, STREAM])),
            2,
        );
        let st = self.step();
        match kind {
            H2D => st.h2d += bytes,
            _ => st.d2h += bytes,
        }
    }

    /// Records `ev`, walked (with `roles`) inside `recorder` (file, qualname).
    fn record(&mut self, ev: u64, recorder: (&str, &str)) {
        let ts = self.t;
        self.s
            .entry(ts, MAIN, ApiId::cudaEventRecordWithFlags, &[ev, STREAM, 0]);
        self.t += CALL_US;
        self.done.insert(ev, ts.max(self.gpu_free));
        if self.cell.roles {
            self.s
                .stack(ts, MAIN, ApiId::cudaEventRecordWithFlags, &[recorder]);
        }
    }

    /// Polls `ev` until it is done (with `polls`), then synchronizes it.
    fn wait(&mut self, ev: u64) {
        let c = self.done.get(&ev).copied().unwrap_or(0);
        while self.cell.polls {
            let entry = self.t;
            let ready = entry + 1 >= c;
            let rc = if ready { 0 } else { 600 };
            self.s.entry(entry, MAIN, ApiId::cudaEventQuery, &[ev]).ret(
                entry + 2,
                MAIN,
                ApiId::cudaEventQuery,
                rc,
                None,
            );
            self.t = entry + 2;
            if ready {
                break;
            }
            self.t += POLL_GAP_US;
        }
        let entry = self.t;
        let ret = (entry + 3).max(c + WAKE_US);
        self.s
            .entry(entry, MAIN, ApiId::cudaEventSynchronize, &[ev])
            .ret(ret, MAIN, ApiId::cudaEventSynchronize, 0, None);
        self.t = ret + 2;
    }

    fn forward(&mut self, i: usize) {
        let (kernel_us, graph_us) = if self.cell.gpu_bound {
            (200, 700)
        } else {
            (4, 10)
        };
        let graph = match self.cell.shape {
            Shape::Eager => false,
            Shape::Graph => true,
            Shape::Alternate => i % 2 == 1,
            Shape::Piecewise => {
                for _ in 0..3 {
                    self.graph(graph_us / 3);
                    self.kernel(kernel_us / 4);
                }
                return;
            }
        };
        if graph {
            self.graph(graph_us);
        } else {
            for _ in 0..4 {
                self.kernel(kernel_us);
            }
        }
    }
}

const STEP_END: (&str, &str) = (
    "/x/site-packages/vllm/v1/worker/gpu/async_utils.py",
    "AsyncOutput.__init__",
);
const TIMER: (&str, &str) = ("/x/loop.py", "main");
const INPUT_PREP: (&str, &str) = (
    "/x/site-packages/vllm/v1/worker/gpu_model_runner.py",
    "GPUModelRunner.synchronize_input_prep",
);

/// Runs the loop of `cell` for `STEPS` steps.
fn simulate(cell: Cell) -> (Script, Vec<TruthStep>) {
    let mut sim = Sim::new(cell);
    let gap_us = if cell.gpu_bound { 50 } else { 1500 };
    let event = |i: usize| {
        let i = i as u64;
        if cell.fresh_events {
            STEP_EVENT + 2 + i
        } else {
            STEP_EVENT + i % 2
        }
    };
    for i in 0..STEPS {
        // V1: `synchronize_input_prep` waits for the previous step's input copies first.
        if cell.prep_event && i > 0 {
            sim.wait(PREP_EVENT);
        }
        sim.truth.push(TruthStep::new());
        if cell.start_event {
            sim.record(TIMING_EVENT + i as u64, TIMER);
        }
        sim.copy(4096, H2D);
        if cell.prep_event {
            sim.record(PREP_EVENT, INPUT_PREP);
        }
        sim.forward(i);
        if cell.bitmask {
            sim.copy(64, H2D);
        }
        if cell.d2h {
            sim.copy(1024, D2H);
        }
        sim.record(event(i), STEP_END);
        if cell.trailing_alloc_event {
            sim.record(ALLOC_EVENT + i as u64 % 4, TIMER);
        }
        match (cell.async2, i) {
            (true, 0) => {}
            (true, _) => sim.wait(event(i - 1)),
            (false, _) => sim.wait(event(i)),
        }
        sim.t += gap_us;
    }
    if cell.async2 {
        sim.wait(event(STEPS - 1));
    }
    (sim.s, sim.truth)
}

/// Graph replays emitted per step index.
fn replays_per_step(out: &[Correlated]) -> HashMap<u64, u32> {
    let mut m = HashMap::new();
    for r in out {
        if let Correlated::GraphReplay(g) = r {
            *m.entry(g.step.unwrap_or(u64::MAX)).or_default() += 1;
        }
    }
    m
}

/// The bounds of a row against the simulated GPU.
fn check_times(cell: Cell, s: &Step, t: &TruthStep) {
    let ctx = || format!("{cell:?}\nstep {}: {s:?}\ntruth {t:?}", s.index);
    let truth_ns = (t.gpu_end - t.gpu_start) * 1000;
    let end_ns = t.gpu_end * 1000;
    if s.completion == Completion::Exact {
        let err = s.forward_ns().abs_diff(truth_ns);
        assert!(err <= 50_000.max(truth_ns / 50), "{}", ctx());
        return;
    }
    assert!(
        s.completion_lower_ns <= end_ns && end_ns <= s.completion_ns,
        "{}",
        ctx()
    );
    assert!(
        s.gpu_time_lower_ns() <= truth_ns && truth_ns <= s.forward_ns(),
        "{}",
        ctx()
    );
    if s.completion == Completion::Bracketed {
        assert!(
            s.completion_ns - s.completion_lower_ns <= BRACKET_NS,
            "{}",
            ctx()
        );
    }
    if cell.gpu_bound {
        // The GPU still ran when the polls began.
        assert!(cell.polls && !s.gpu_done_before_wait, "{}", ctx());
    } else {
        assert!(s.gpu_done_before_wait, "{}", ctx());
    }
}

fn check(cell: Cell) {
    let (script, truth) = simulate(cell);
    let (out, stats) = script.run(TimingMode::Events, cell.kernels);
    let st = steps(&out);
    assert_eq!(st.len(), truth.len(), "{cell:?}: steps");
    let replays = replays_per_step(&out);
    for (i, (s, t)) in st.iter().zip(&truth).enumerate() {
        let ctx = || format!("{cell:?}\nstep {i}: {s:?}\ntruth {t:?}");
        assert_eq!(s.index, i as u64);
        assert_eq!(
            Some(s.start_ns),
            t.first_call.map(|us| us * 1000),
            "{}",
            ctx()
        );
        assert_eq!(
            (s.graph_launches, s.h2d_bytes, s.d2h_bytes),
            (t.graphs, t.h2d, t.d2h),
            "{}",
            ctx()
        );
        assert_eq!(replays.get(&(i as u64)).copied().unwrap_or(0), t.graphs);
        assert_eq!(s.kernel_launches, cell.kernels.then_some(t.kernels));
        check_times(cell, s, t);
    }
    assert_eq!(stats.incomplete_steps, 0, "{cell:?}");
    assert_eq!(
        replays.get(&u64::MAX),
        None,
        "{cell:?}: replays outside steps"
    );
}

/// Every combination of the structural dimensions for `shape`, each plain, with per-kernel
/// probes, with Python roles and with polls.
fn check_shape(shape: Shape) {
    for bits in 0..32u32 {
        let cell = Cell {
            async2: bits & 1 != 0,
            d2h: bits & 2 != 0,
            fresh_events: bits & 4 != 0,
            prep_event: bits & 8 != 0,
            gpu_bound: bits & 16 != 0,
            ..Cell::new(shape)
        };
        check(cell);
        check(Cell {
            kernels: true,
            ..cell
        });
        check(Cell {
            roles: true,
            ..cell
        });
        check(Cell {
            polls: true,
            ..cell
        });
    }
}

#[test]
fn eager_steps_without_visible_kernels_come_out_exactly() {
    check_shape(Shape::Eager);
}

#[test]
fn graph_steps_come_out_exactly() {
    check_shape(Shape::Graph);
}

#[test]
fn alternating_graph_and_eager_steps_come_out_exactly() {
    check_shape(Shape::Alternate);
}

#[test]
fn piecewise_steps_come_out_exactly() {
    check_shape(Shape::Piecewise);
}

/// V1 with structured output copies the grammar bitmask to the GPU after
/// `prepare_inputs_event`: in an eager step that copy is the first visible call after the
/// input event, which the structural rule reads as the next step's inputs. The recording
/// function (Python stacks) decides it.
#[test]
fn an_input_copy_after_the_input_event_needs_the_recording_function() {
    let cell = Cell {
        prep_event: true,
        bitmask: true,
        d2h: false,
        roles: true,
        ..Cell::new(Shape::Eager)
    };
    check(cell);
    check(Cell {
        async2: false,
        ..cell
    });
    let (script, _) = simulate(Cell {
        roles: false,
        ..cell
    });
    let (out, _) = script.run(TimingMode::Events, false);
    // Without stacks: two per cycle (but the last, whose input event is never waited on).
    assert_eq!(steps(&out).len(), 2 * STEPS - 1);
}

/// Events nobody waits on around a step's event: a timing event recorded at each step's
/// start (the record right after a step's end opens the next one), and an allocator event
/// recorded after the step's event (known unwaited from its handle's history).
#[test]
fn unwaited_events_around_a_step_do_not_move_its_end() {
    for bits in 0..16u32 {
        let cell = Cell {
            async2: bits & 1 != 0,
            fresh_events: bits & 2 != 0,
            prep_event: bits & 4 != 0,
            gpu_bound: bits & 8 != 0,
            d2h: false,
            ..Cell::new(Shape::Eager)
        };
        check(Cell {
            start_event: true,
            ..cell
        });
        check(Cell {
            trailing_alloc_event: true,
            ..cell
        });
    }
}

/// A launcher that never waits (the waits are on another thread, as with vLLM's
/// WorkerAsyncOutputCopy): an input-copy-only step is decided when the launcher copies the
/// next step's inputs.
#[test]
fn a_step_waited_on_by_another_thread_is_decided_at_the_next_input_copy() {
    let mut s = Script::new();
    for i in 0..3u64 {
        let t = 1000 + i * 1000;
        s.entry(t, MAIN, ApiId::cudaMemcpyAsync, &[1, 2, 64, 1, STREAM])
            .entry(t + 10, MAIN, ApiId::cudaEventRecord, &[0xe0 + i, STREAM])
            .entry(t + 20, 777, ApiId::cudaEventSynchronize, &[0xe0 + i])
            .ret(t + 500, 777, ApiId::cudaEventSynchronize, 0, None);
    }
    let (out, stats) = s.run(TimingMode::Events, false);
    let st = steps(&out);
    assert_eq!(st.len(), 3);
    for (i, step) in st.iter().enumerate() {
        assert_eq!(step.start_ns, (1000 + i as u64 * 1000) * 1000);
        assert_eq!(step.sync_tid, 777);
        assert_eq!(step.completion, Completion::Exact);
    }
    assert_eq!(stats.incomplete_steps, 0);
}

/// vLLM V2 creates a fresh event per step: the handle table stays bounded.
#[test]
fn fresh_event_handles_do_not_accumulate() {
    let cell = Cell {
        fresh_events: true,
        ..Cell::new(Shape::Graph)
    };
    let mut c = Correlator::new(TimingMode::Events, false);
    let (script, _) = simulate(cell);
    for n in 0..15 {
        for item in &script.evs {
            if let Item::Call(ev) = item {
                // Shift the handles so every round uses new ones.
                let mut ev = *ev;
                if let CallPhase::Entry { args } = &mut ev.phase {
                    if args[0] >= STEP_EVENT {
                        args[0] += n * 0x10_0000;
                    }
                }
                c.handle(ev, &mut |_| {});
            }
        }
    }
    assert!(c.tracked_events() <= 4096 + 1, "{}", c.tracked_events());
}

/// Builds a walked stack for `Script::stack`.
pub(super) fn stack(ts_us: u64, tid: u32, api: ApiId, frames: &[(&str, &str)]) -> PyStack {
    PyStack {
        pid: PID,
        tid,
        ts_ns: ts_us * 1000,
        reason: StackReason::CudaCall(api),
        flags: 0,
        frames: frames
            .iter()
            .map(|(file, qualname)| PyFrameInfo {
                code: Arc::new(CodeInfo::new(qualname, file, 1, Vec::new())),
                line: 1,
                arg1: 0,
            })
            .collect(),
        op: Operation::OtherPython,
        op_frame: None,
    }
}
