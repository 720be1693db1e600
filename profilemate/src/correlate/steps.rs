//! The step (forward pass) machine of one process.
//!
//! A step is the launch-side activity of one thread between two boundaries, completed by a
//! GPU wait. In `events` timing an event record seals the thread's open activity into a
//! candidate; a wait on that event (from any thread, later: vLLM's async scheduling waits for
//! step N after launching N+1) completes every candidate of that thread up to it. Candidates
//! that only copied inputs host-to-device (vLLM V1's `prepare_inputs_event`) are not steps on
//! their own and merge into the next. In `sync` timing any blocking wait completes the open
//! activity of every thread that started before the wait.

use std::collections::{HashMap, VecDeque};

use profilemate_common::ApiId;

use super::{Completion, Correlated, CorrelatorStats, GraphReplay, Step};

/// A wait shorter than this may not have blocked at all, so its return only bounds the
/// completion from above. On the H100 machine (CUDA 13) a `cudaEventSynchronize` on an event
/// that had long completed took 6-43 µs, the slow ones right after a long CPU gap (cold
/// caches): at 20 µs such waits passed for exact and gave a step the whole gap as GPU time.
/// Real steps' waits that do block are far longer, and a blocking wait shorter than this
/// errs by less than this as an upper bound.
pub const BLOCKED_THRESHOLD_NS: u64 = 100_000;

/// Launch-side activity that belongs to a step.
pub enum Work {
    /// A graph replay.
    Graph(GraphReplay),
    /// A kernel launch (per-kernel probes).
    Kernel,
    /// Host-to-device copy of n bytes (input preparation: not GPU work on its own).
    H2D(u64),
    /// Device-to-host copy of n bytes.
    D2H(u64),
    /// Another copy (device-to-device, default direction).
    Copy,
}

#[derive(Clone, Debug, Default)]
struct Builder {
    start_ns: u64,
    last_ns: u64,
    kernels: u32,
    graphs: Vec<GraphReplay>,
    h2d: u64,
    d2h: u64,
    has_work: bool,
}

impl Builder {
    fn merge(&mut self, later: Builder) {
        self.start_ns = self.start_ns.min(later.start_ns);
        self.last_ns = self.last_ns.max(later.last_ns);
        self.kernels = self.kernels.saturating_add(later.kernels);
        self.graphs.extend(later.graphs);
        self.h2d = self.h2d.saturating_add(later.h2d);
        self.d2h = self.d2h.saturating_add(later.d2h);
        self.has_work |= later.has_work;
    }
}

struct Candidate {
    id: u64,
    builder: Builder,
    record_ns: u64,
}

/// Where an event was recorded: the thread and the last candidate it sealed.
#[derive(Clone, Copy, Debug)]
pub struct EventMark {
    tid: u32,
    candidate: Option<u64>,
}

/// Sealed candidates a thread may hold; more means its events are recorded but never waited
/// on, and the oldest two are merged (memory stays bounded, nothing is dropped).
const MAX_SEALED: usize = 256;

/// Steps of one process.
#[derive(Default)]
pub struct StepMachine {
    /// The process.
    pub pid: u32,
    /// Count kernel launches (per-kernel probes attached).
    pub kernels: bool,
    open: HashMap<u32, Builder>,
    sealed: HashMap<u32, VecDeque<Candidate>>,
    events: HashMap<u64, EventMark>,
    /// Events that have been waited on: only their successful polls complete steps.
    waited: std::collections::HashSet<u64>,
    next_candidate: u64,
    next_index: u64,
    last_exact_completion_ns: u64,
}

/// One wait call as the correlator saw it.
#[derive(Debug, Clone, Copy)]
pub struct WaitCall {
    /// Thread that waited.
    pub tid: u32,
    /// The wait API.
    pub api: ApiId,
    /// Entry and return, CLOCK_MONOTONIC ns.
    pub entry_ns: u64,
    /// See `entry_ns`.
    pub ret_ns: u64,
    /// Time the tracer itself spent inside the call (a Python stack walk at its entry).
    pub own_ns: u64,
}

impl WaitCall {
    /// How long the target waited: the call's duration less the tracer's own time in it.
    fn waited_ns(&self) -> u64 {
        self.ret_ns
            .saturating_sub(self.entry_ns)
            .saturating_sub(self.own_ns)
    }
}

/// How a completing wait ended.
struct Wait {
    call: WaitCall,
    completion_ns: u64,
    completion: Completion,
}

impl Wait {
    /// A wait that blocked gives an exact completion (its return); a short one or a
    /// successful poll only bounds it (its return: the GPU may have finished during a short
    /// wait, so its entry would not be a bound). The tracer's own time inside the call does
    /// not count as blocking.
    fn new(call: WaitCall, poll: bool) -> Self {
        let blocked = !poll && call.waited_ns() >= BLOCKED_THRESHOLD_NS;
        let (completion_ns, completion) = if blocked {
            (call.ret_ns, Completion::Exact)
        } else {
            (call.ret_ns, Completion::UpperBound)
        };
        Self {
            call,
            completion_ns,
            completion,
        }
    }
}

impl StepMachine {
    /// Steps of process `pid`; `kernels`: per-kernel probes are attached.
    #[must_use]
    pub fn new(pid: u32, kernels: bool) -> Self {
        Self {
            pid,
            kernels,
            ..Self::default()
        }
    }

    /// Adds launch-side activity of `tid` at `ts_ns`, opening a step if none is open.
    pub fn work(&mut self, tid: u32, ts_ns: u64, work: Work) {
        let b = self.open.entry(tid).or_insert_with(|| Builder {
            start_ns: ts_ns,
            ..Builder::default()
        });
        b.last_ns = ts_ns;
        match work {
            Work::Graph(r) => {
                b.graphs.push(r);
                b.has_work = true;
            }
            Work::Kernel => {
                b.kernels = b.kernels.saturating_add(1);
                b.has_work = true;
            }
            // Byte counts come from the target's arguments: saturate, never overflow.
            Work::H2D(n) => b.h2d = b.h2d.saturating_add(n),
            Work::D2H(n) => {
                b.d2h = b.d2h.saturating_add(n);
                b.has_work = true;
            }
            Work::Copy => b.has_work = true,
        }
    }

    /// An event was recorded by `tid`.
    pub fn record_event(
        &mut self,
        tid: u32,
        event: u64,
        _stream: u64,
        ts_ns: u64,
        timing: crate::config::TimingMode,
    ) {
        if timing == crate::config::TimingMode::Sync {
            if let Some(b) = self.open.get_mut(&tid) {
                b.last_ns = ts_ns;
            }
            return;
        }
        let queue = self.sealed.entry(tid).or_default();
        if let Some(builder) = self.open.remove(&tid) {
            let id = self.next_candidate;
            self.next_candidate += 1;
            queue.push_back(Candidate {
                id,
                builder,
                record_ns: ts_ns,
            });
            if queue.len() > MAX_SEALED {
                if let (Some(oldest), Some(mut next)) = (queue.pop_front(), queue.pop_front()) {
                    let later = std::mem::take(&mut next.builder);
                    next.builder = oldest.builder;
                    next.builder.merge(later);
                    queue.push_front(next);
                }
            }
        }
        self.events.insert(
            event,
            EventMark {
                tid,
                candidate: queue.back().map(|c| c.id),
            },
        );
    }

    /// Where `event` was last recorded, for a wait that begins now.
    #[must_use]
    pub fn mark(&self, event: u64) -> Option<EventMark> {
        self.events.get(&event).copied()
    }

    /// A wait on (or successful query of) `event` returned; `mark` is where the event stood
    /// when the wait began.
    pub fn complete_event(
        &mut self,
        event: u64,
        mark: Option<EventMark>,
        call: WaitCall,
        query: bool,
        stats: &mut CorrelatorStats,
        out: &mut impl FnMut(Correlated),
    ) {
        if query && !self.waited.contains(&event) {
            stats.ignored_event_polls += 1;
            return;
        }
        if !query {
            self.waited.insert(event);
        }
        let Some(mark) = mark else {
            stats.syncs_unknown_event += 1;
            return;
        };
        let (tid, Some(upto)) = (mark.tid, mark.candidate) else {
            stats.repeat_syncs += 1;
            return;
        };
        let Some(queue) = self.sealed.get_mut(&tid) else {
            return;
        };
        let mut merged: Option<Candidate> = None;
        while queue.front().is_some_and(|c| c.id <= upto) {
            let Some(c) = queue.pop_front() else { break };
            match merged.as_mut() {
                Some(m) => {
                    m.builder.merge(c.builder);
                    m.record_ns = c.record_ns;
                    m.id = c.id;
                }
                None => merged = Some(c),
            }
        }
        let Some(merged) = merged else {
            stats.repeat_syncs += 1;
            return;
        };
        if !merged.builder.has_work {
            stats.input_only_syncs += 1;
            queue.push_front(merged);
            return;
        }
        let wait = Wait::new(call, query);
        self.emit(tid, merged.builder, merged.record_ns, &wait, out);
    }

    /// A blocking wait returned (`sync` timing): completes every thread's open activity that
    /// started before the wait was entered.
    pub fn complete_all(&mut self, call: WaitCall, out: &mut impl FnMut(Correlated)) {
        let entry_ns = call.entry_ns;
        let mut tids: Vec<u32> = self
            .open
            .iter()
            .filter(|(_, b)| b.has_work && b.start_ns < entry_ns)
            .map(|(t, _)| *t)
            .collect();
        tids.sort_unstable();
        let wait = Wait::new(call, false);
        for tid in tids {
            if let Some(b) = self.open.remove(&tid) {
                let launch_end = b.last_ns;
                self.emit(tid, b, launch_end, &wait, out);
            }
        }
    }

    fn emit(
        &mut self,
        tid: u32,
        b: Builder,
        launch_end_ns: u64,
        wait: &Wait,
        out: &mut impl FnMut(Correlated),
    ) {
        let index = self.next_index;
        self.next_index += 1;
        // The GPU cannot start this step before the previous one finished (one device queue).
        let prev = self.last_exact_completion_ns;
        let gpu_start_ns = if prev > b.start_ns && prev <= wait.completion_ns {
            prev
        } else {
            b.start_ns
        };
        if wait.completion == Completion::Exact {
            self.last_exact_completion_ns = self.last_exact_completion_ns.max(wait.completion_ns);
        }
        let pid = self.pid;
        let graph_ids = b.graphs.iter().map(|g| g.graph_id).collect();
        let graph_launches = u32::try_from(b.graphs.len()).unwrap_or(u32::MAX);
        for mut r in b.graphs {
            r.step = Some(index);
            out(Correlated::GraphReplay(r));
        }
        out(Correlated::Step(Step {
            index,
            pid,
            tid,
            start_ns: b.start_ns,
            launch_end_ns: launch_end_ns.max(b.start_ns),
            gpu_start_ns,
            completion_ns: wait.completion_ns,
            completion: wait.completion,
            kernel_launches: self.kernels.then_some(b.kernels),
            graph_launches,
            graph_ids,
            h2d_bytes: b.h2d,
            d2h_bytes: b.d2h,
            sync_tid: wait.call.tid,
            sync_api: wait.call.api,
            sync_wait_ns: wait.call.waited_ns(),
        }));
    }

    /// Session end: what never completed is counted, its replays still reported.
    pub fn finish(&mut self, stats: &mut CorrelatorStats, out: &mut impl FnMut(Correlated)) {
        let mut rest: Vec<Builder> = self.open.drain().map(|(_, b)| b).collect();
        for (_, q) in self.sealed.drain() {
            rest.extend(q.into_iter().map(|c| c.builder));
        }
        for b in rest {
            if b.has_work {
                stats.incomplete_steps += 1;
            }
            for r in b.graphs {
                out(Correlated::GraphReplay(r));
            }
        }
    }
}
