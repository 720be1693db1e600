//! The step (forward pass) machine of one process: which launch-side activity forms a step,
//! which wait completes it, and how closely its GPU completion is known.
//!
//! **Candidates.** In `events` timing every event record seals its thread's activity since
//! the previous record into a candidate. A wait on an event (from any thread, possibly after
//! the next step was launched: vLLM's async scheduling) completes the candidate its event
//! marked when the wait began, and every earlier candidate not completed yet merges into it:
//! events nobody waits on (PyTorch's pinned-memory allocator records one after each pinned
//! copy) never split a step.
//!
//! **Which completed candidate is a step.** One with GPU work besides host-to-device copies
//! (a graph replay, a device-to-host or other copy, a kernel seen with `--kernels`) is a
//! step. One whose only visible calls are input copies is ambiguous: a whole eager step
//! whose kernels the default probes do not see, or the input part of a step that goes on
//! (vLLM V1's `prepare_inputs_event`: recorded after the input copies, synchronized at the
//! start of the next `execute_model`). What the launching thread did next after the
//! candidate's record decides: another event record with no event wait and no input copy
//! in between means the step went on (the candidate is a helper and merges into the next);
//! an input copy (the next step's inputs) or an event wait (the end of a loop iteration)
//! means the step ended at that record. Until the thread does one of these the candidate
//! waits, undecided. Records that seal nothing are looked past (`decide_by_next`). A
//! candidate without any launch-side call is never a step of its own.
//! Where Python stacks are walked, the vLLM function that recorded the event decides first
//! (`vllm::events`).
//!
//! **Bounds.** A wait that blocked gives the completion exactly. Otherwise the completion
//! lies between the latest moment the GPU was known unfinished (the step's own record: it
//! cannot finish before its last launch; polls answering "not ready" of events recorded in
//! the step) and the earliest moment it was seen finished (the wait's return, a successful
//! poll of a later event on the same stream, a stream or device sync that returned).
//!
//! In `sync` timing any blocking wait completes the open activity of every thread that
//! started before the wait.

use std::collections::{HashMap, HashSet, VecDeque};

use profilemate_common::ApiId;

use super::{Completion, Correlated, CorrelatorStats, GraphReplay, Step};
use crate::vllm::events::EventRole;

/// A wait shorter than this may not have blocked at all, so its return only bounds the
/// completion from above. On the H100 machine (CUDA 13) a `cudaEventSynchronize` on an event
/// that had long completed took 6-43 µs, the slow ones right after a long CPU gap (cold
/// caches): at 20 µs such waits passed for exact and gave a step the whole gap as GPU time.
/// Real steps' waits that do block are far longer, and a blocking wait shorter than this
/// errs by less than this as an upper bound.
pub const BLOCKED_THRESHOLD_NS: u64 = 100_000;

/// A completion known between two times at most this far apart is `bracketed`: as close as
/// a short blocking wait would have given it.
pub const BRACKET_NS: u64 = 100_000;

/// `cudaErrorNotReady`: what `cudaEventQuery` returns while the event's work is pending.
pub const NOT_READY: u64 = 600;

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

/// The launch-side calls of a candidate.
#[derive(Clone, Debug, Default)]
struct Builder {
    /// First call; `None`: no call at all (an event record right after another).
    start_ns: Option<u64>,
    last_ns: u64,
    kernels: u32,
    graphs: Vec<GraphReplay>,
    h2d: u64,
    d2h: u64,
    /// GPU work besides host-to-device input copies was seen.
    has_work: bool,
}

impl Builder {
    fn add(&mut self, ts_ns: u64, work: Work) {
        self.start_ns.get_or_insert(ts_ns);
        self.last_ns = ts_ns;
        match work {
            Work::Graph(r) => {
                self.graphs.push(r);
                self.has_work = true;
            }
            Work::Kernel => {
                self.kernels = self.kernels.saturating_add(1);
                self.has_work = true;
            }
            // Byte counts come from the target's arguments: saturate, never overflow.
            Work::H2D(n) => self.h2d = self.h2d.saturating_add(n),
            Work::D2H(n) => {
                self.d2h = self.d2h.saturating_add(n);
                self.has_work = true;
            }
            Work::Copy => self.has_work = true,
        }
    }

    /// Puts `earlier`'s calls before these.
    fn prepend(&mut self, mut earlier: Builder) {
        self.start_ns = earlier.start_ns.or(self.start_ns);
        self.last_ns = self.last_ns.max(earlier.last_ns);
        self.kernels = self.kernels.saturating_add(earlier.kernels);
        earlier.graphs.append(&mut self.graphs);
        self.graphs = earlier.graphs;
        self.h2d = self.h2d.saturating_add(earlier.h2d);
        self.d2h = self.d2h.saturating_add(earlier.d2h);
        self.has_work |= earlier.has_work;
    }
}

/// What the launching thread did first after a candidate's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Recorded another event: the step went on.
    Record,
    /// Copied inputs host-to-device: a new step began.
    InputCopy,
    /// Waited for an event: the loop iteration ended.
    Wait,
}

/// What was seen of the GPU's progress past a candidate's record.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// The latest time the GPU was known not to have finished its work: its last
    /// launch-side call (work cannot end before it is launched; the record itself may come
    /// after the GPU went idle), polls that answered "not ready" for events recorded in it.
    unfinished_at_ns: u64,
    /// The earliest time it was seen past it (`u64::MAX`: not seen).
    finished_by_ns: u64,
    /// Entry of the first wait or poll on its event.
    first_wait_ns: Option<u64>,
}

impl Seen {
    fn new(work: &Builder) -> Self {
        Self {
            unfinished_at_ns: work.start_ns.map_or(0, |_| work.last_ns),
            finished_by_ns: u64::MAX,
            first_wait_ns: None,
        }
    }
}

/// One wait as the step machine needs it.
#[derive(Clone, Copy, Debug)]
struct Wait {
    call: WaitCall,
    /// A successful poll rather than a blocking wait.
    poll: bool,
}

impl Wait {
    /// A wait that blocked returned when the GPU finished. The tracer's own time inside the
    /// call does not count as blocking.
    fn blocked(&self) -> bool {
        !self.poll && self.call.waited_ns() >= BLOCKED_THRESHOLD_NS
    }
}

struct Candidate {
    /// Id of its (last) record; merged candidates keep the later id.
    id: u64,
    work: Builder,
    record_ns: u64,
    stream: u64,
    next: Option<Next>,
    role: EventRole,
    seen: Seen,
    /// The wait that completed it, while it is not yet decided.
    done: Option<Wait>,
    /// A later wait completed a candidate past the open one after it: that one ended nothing.
    successor_skipped: bool,
}

impl Candidate {
    /// Takes `earlier`'s calls and evidence (it merges into this one).
    fn absorb(&mut self, earlier: Candidate) {
        self.work.prepend(earlier.work);
        // The step ends after the earlier record: unfinished then, unfinished at this end.
        self.seen.unfinished_at_ns = self
            .seen
            .unfinished_at_ns
            .max(earlier.seen.unfinished_at_ns);
    }
}

/// Where an event was recorded: the thread, the candidate its record sealed, the stream.
#[derive(Clone, Copy, Debug)]
pub struct EventMark {
    tid: u32,
    candidate: u64,
    stream: u64,
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

/// Sealed candidates a thread may hold; more means its events are recorded but never waited
/// on, and the oldest two open ones are merged (memory stays bounded, nothing is dropped).
const MAX_SEALED: usize = 256;

/// Event handles remembered; beyond this (handles created fresh per step) those whose step
/// is gone are forgotten.
const MAX_EVENTS: usize = 4096;

/// The candidates of one launching thread, oldest first: completed ones (waiting for a
/// decision) before open ones.
#[derive(Default)]
struct Launcher {
    queue: VecDeque<Candidate>,
    /// Candidates with ids up to this were emitted.
    emitted_upto: u64,
}

impl Launcher {
    /// The candidate holding record `id`, if it was not emitted yet.
    fn holding(&mut self, id: u64) -> Option<&mut Candidate> {
        if id <= self.emitted_upto {
            return None;
        }
        self.queue.iter_mut().find(|c| c.id >= id)
    }

    /// Position of the candidate sealed by record `id` (not merged into another).
    fn position(&self, id: u64) -> Option<usize> {
        self.queue.iter().position(|c| c.id == id)
    }

    /// Completes candidate `pos`; the open candidates before it merge into it.
    fn complete(&mut self, pos: usize, wait: Wait) {
        let first_open = self
            .queue
            .iter()
            .position(|c| c.done.is_none())
            .unwrap_or(pos);
        if first_open < pos {
            if let Some(last_done) = first_open
                .checked_sub(1)
                .and_then(|i| self.queue.get_mut(i))
            {
                last_done.successor_skipped = true;
            }
        }
        for _ in first_open..pos {
            if let Some(earlier) = self.queue.remove(first_open) {
                if let Some(c) = self.queue.get_mut(first_open) {
                    c.absorb(earlier);
                }
            }
        }
        if let Some(c) = self.queue.get_mut(first_open) {
            c.done = Some(wait);
        }
    }

    /// Keeps the queue bounded when events are recorded and never waited on.
    fn bound(&mut self) {
        if self.queue.len() <= MAX_SEALED {
            return;
        }
        let Some(i) = self.queue.iter().position(|c| c.done.is_none()) else {
            return;
        };
        if i + 1 < self.queue.len() {
            if let Some(oldest) = self.queue.remove(i) {
                if let Some(next) = self.queue.get_mut(i) {
                    next.absorb(oldest);
                }
            }
        }
    }
}

/// What to do with a completed candidate at the front of its thread's queue.
enum Decision {
    Step,
    Helper,
    Undecided,
}

/// The decision for the front of `queue` (completed).
fn decide(queue: &VecDeque<Candidate>, at_end: bool) -> Decision {
    let Some(c) = queue.front() else {
        return Decision::Undecided;
    };
    match c.role {
        EventRole::StepEnd => Decision::Step,
        EventRole::Helper => Decision::Helper,
        EventRole::Unknown if c.work.has_work => Decision::Step,
        EventRole::Unknown if c.work.start_ns.is_none() => Decision::Helper,
        EventRole::Unknown => match decide_by_next(queue) {
            None if at_end => Decision::Step,
            None => Decision::Undecided,
            Some(d) => d,
        },
    }
}

/// An input-copy-only candidate: what its thread did next decides (`None`: not yet known).
/// Records that sealed nothing (right after another record) are looked past. A bare record
/// then a wait is the one ambiguous case: the step ended at the bare record when that
/// record's event is waited on (V1's step event after its `prepare_inputs_event`, in an
/// eager step without an output copy), at the candidate when a later wait passes over the
/// bare record (an event nobody waits on, recorded after the step's own).
fn decide_by_next(queue: &VecDeque<Candidate>) -> Option<Decision> {
    let front = queue.front()?;
    if front.successor_skipped {
        // Only a bare successor leaves a candidate undecided long enough to be passed over.
        return Some(Decision::Step);
    }
    let mut next = front.next;
    let mut bare = 0;
    for later in queue.iter().skip(1) {
        if next != Some(Next::Record) || later.work.start_ns.is_some() {
            break;
        }
        bare += 1;
        next = later.next;
    }
    let bare_waited = || queue.iter().skip(1).take(bare).any(|c| c.done.is_some());
    Some(match next? {
        Next::Record => Decision::Helper,
        Next::InputCopy => Decision::Step,
        Next::Wait if bare == 0 => Decision::Step,
        Next::Wait if bare_waited() => Decision::Helper,
        Next::Wait => return None,
    })
}

/// Steps of one process.
#[derive(Default)]
pub struct StepMachine {
    /// The process.
    pub pid: u32,
    /// Count kernel launches (per-kernel probes attached).
    pub kernels: bool,
    open: HashMap<u32, Builder>,
    launchers: HashMap<u32, Launcher>,
    events: HashMap<u64, EventMark>,
    /// Events that have been waited on: only their successful polls complete steps.
    waited: HashSet<u64>,
    next_candidate: u64,
    next_index: u64,
    prev: Prev,
}

/// What the steps emitted so far say about the next one's GPU start.
#[derive(Clone, Copy, Debug, Default)]
struct Prev {
    /// The latest exact completion (a blocked wait's return): the estimate exact rows use.
    exact_ns: u64,
    /// The latest hard lower bound of a completion (never a wait's return).
    earliest_ns: u64,
    /// The last step's latest completion.
    latest_ns: u64,
}

/// A step's completion and GPU start.
struct Timing {
    gpu_start_ns: u64,
    gpu_start_upper_ns: u64,
    completion_ns: u64,
    completion_lower_ns: u64,
    completion: Completion,
}

impl StepMachine {
    /// Steps of process `pid`; `kernels`: per-kernel probes are attached.
    #[must_use]
    pub fn new(pid: u32, kernels: bool) -> Self {
        Self {
            pid,
            kernels,
            next_candidate: 1,
            ..Self::default()
        }
    }

    /// Adds launch-side activity of `tid` at `ts_ns`, opening a step if none is open.
    pub fn work(
        &mut self,
        tid: u32,
        ts_ns: u64,
        work: Work,
        stats: &mut CorrelatorStats,
        out: &mut impl FnMut(Correlated),
    ) {
        if matches!(work, Work::H2D(_)) {
            self.thread_did(tid, Next::InputCopy, stats, out);
        }
        self.open.entry(tid).or_default().add(ts_ns, work);
    }

    /// Notes what `tid` did after its last record and decides what that makes decidable.
    fn thread_did(
        &mut self,
        tid: u32,
        next: Next,
        stats: &mut CorrelatorStats,
        out: &mut impl FnMut(Correlated),
    ) {
        let Some(last) = self
            .launchers
            .get_mut(&tid)
            .and_then(|l| l.queue.back_mut())
        else {
            return;
        };
        if last.next.is_none() {
            last.next = Some(next);
            self.resolve(tid, false, stats, out);
        }
    }

    /// `sync` timing: an event record by `tid` ends its launches so far (no candidate).
    pub fn extend_launch(&mut self, tid: u32, ts_ns: u64) {
        if let Some(b) = self.open.get_mut(&tid) {
            b.last_ns = ts_ns;
        }
    }

    /// `events` timing: an event was recorded by `tid` on `stream`.
    pub fn record_event(
        &mut self,
        tid: u32,
        (event, stream): (u64, u64),
        ts_ns: u64,
        stats: &mut CorrelatorStats,
        out: &mut impl FnMut(Correlated),
    ) {
        self.thread_did(tid, Next::Record, stats, out);
        let id = self.next_candidate;
        self.next_candidate += 1;
        let launcher = self.launchers.entry(tid).or_default();
        let work = self.open.remove(&tid).unwrap_or_default();
        launcher.queue.push_back(Candidate {
            id,
            seen: Seen::new(&work),
            work,
            record_ns: ts_ns,
            stream,
            next: None,
            role: EventRole::Unknown,
            done: None,
            successor_skipped: false,
        });
        launcher.bound();
        self.events.insert(
            event,
            EventMark {
                tid,
                candidate: id,
                stream,
            },
        );
        if self.events.len() > MAX_EVENTS {
            self.forget_old_events();
        }
    }

    /// Drops the handles whose step is gone (fresh handles per step would grow the maps).
    fn forget_old_events(&mut self) {
        let launchers = &self.launchers;
        self.events.retain(|_, m| {
            launchers
                .get(&m.tid)
                .is_some_and(|l| m.candidate > l.emitted_upto)
        });
        let events = &self.events;
        self.waited.retain(|e| events.contains_key(e));
    }

    /// Event handles remembered.
    #[cfg(test)]
    pub(super) fn tracked_events(&self) -> usize {
        self.events.len().max(self.waited.len())
    }

    /// Where `event` was last recorded, for a wait that begins now.
    #[must_use]
    pub fn mark(&self, event: u64) -> Option<EventMark> {
        self.events.get(&event).copied()
    }

    /// The vLLM function that recorded `tid`'s event at `record_ns` gave it `role`.
    pub fn set_role(
        &mut self,
        tid: u32,
        record_ns: u64,
        role: EventRole,
        stats: &mut CorrelatorStats,
        out: &mut impl FnMut(Correlated),
    ) {
        let Some(c) = self
            .launchers
            .get_mut(&tid)
            .and_then(|l| l.queue.iter_mut().rev().find(|c| c.record_ns == record_ns))
        else {
            return;
        };
        c.role = role;
        self.resolve(tid, false, stats, out);
    }

    /// A wait (or poll, `poll`) on `event` was entered by `tid`; returns where the event
    /// stands now (the wait completes that step, even if the event is recorded again).
    pub fn wait_begins(
        &mut self,
        tid: u32,
        event: u64,
        entry_ns: u64,
        poll: bool,
        stats: &mut CorrelatorStats,
        out: &mut impl FnMut(Correlated),
    ) -> Option<EventMark> {
        let mark = self.mark(event);
        if let Some(m) = mark {
            if let Some(l) = self.launchers.get_mut(&m.tid) {
                if let Some(c) = l.position(m.candidate).and_then(|p| l.queue.get_mut(p)) {
                    c.seen.first_wait_ns.get_or_insert(entry_ns);
                }
            }
        }
        if !poll {
            self.thread_did(tid, Next::Wait, stats, out);
        }
        mark
    }

    /// A poll entered at `entry_ns` answered "not ready": the GPU had not reached the
    /// event's record then, so its step had not finished.
    pub fn not_ready(&mut self, mark: Option<EventMark>, entry_ns: u64) {
        if let Some(c) = mark.and_then(|m| {
            self.launchers
                .get_mut(&m.tid)
                .and_then(|l| l.holding(m.candidate))
        }) {
            c.seen.unfinished_at_ns = c.seen.unfinished_at_ns.max(entry_ns);
        }
    }

    /// The GPU was seen past the event `mark` points to at `ts_ns` (a successful poll of an
    /// event nobody waits on): it was past every record before it on the same stream.
    fn seen_past(&mut self, mark: EventMark, ts_ns: u64) {
        if let Some(l) = self.launchers.get_mut(&mark.tid) {
            for c in l.queue.iter_mut() {
                if c.id <= mark.candidate && c.stream == mark.stream {
                    c.seen.finished_by_ns = c.seen.finished_by_ns.min(ts_ns);
                }
            }
        }
    }

    /// A stream (`Some`) or device (`None`) sync entered at `entry_ns` returned at
    /// `ret_ns`: every record made before its entry (on that stream) had been passed.
    pub fn synced(&mut self, stream: Option<u64>, entry_ns: u64, ret_ns: u64) {
        for c in self.launchers.values_mut().flat_map(|l| l.queue.iter_mut()) {
            if c.record_ns < entry_ns && stream.is_none_or(|s| s == c.stream) {
                c.seen.finished_by_ns = c.seen.finished_by_ns.min(ret_ns);
            }
        }
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
            if let Some(m) = mark {
                self.seen_past(m, call.ret_ns);
            }
            return;
        }
        if !query {
            self.waited.insert(event);
        }
        let Some(mark) = mark else {
            stats.syncs_unknown_event += 1;
            return;
        };
        // Its record must still be a candidate of its own: one merged into a later step (whose
        // wait came first) or emitted was waited on again.
        let launcher = self.launchers.get_mut(&mark.tid);
        let Some((pos, launcher)) = launcher.and_then(|l| Some((l.position(mark.candidate)?, l)))
        else {
            stats.repeat_syncs += 1;
            return;
        };
        if launcher.queue.get(pos).is_some_and(|c| c.done.is_some()) {
            stats.repeat_syncs += 1;
            return;
        }
        launcher.complete(pos, Wait { call, poll: query });
        self.resolve(mark.tid, false, stats, out);
    }

    /// Emits or merges the completed candidates at the front of `tid`'s queue, as far as
    /// they can be decided (`at_end`: nothing more will come).
    fn resolve(
        &mut self,
        tid: u32,
        at_end: bool,
        stats: &mut CorrelatorStats,
        out: &mut impl FnMut(Correlated),
    ) {
        loop {
            let Some(launcher) = self.launchers.get_mut(&tid) else {
                return;
            };
            let Some(front) = launcher.queue.front() else {
                return;
            };
            if front.done.is_none() {
                return;
            }
            let decision = decide(&launcher.queue, at_end);
            match decision {
                Decision::Undecided => return,
                Decision::Helper => {
                    stats.input_only_syncs += 1;
                    let Some(mut helper) = launcher.queue.pop_front() else {
                        return;
                    };
                    match launcher.queue.front_mut() {
                        Some(next) => next.absorb(helper),
                        None => {
                            // Its step goes on after it: the wait on that step completes it.
                            helper.done = None;
                            launcher.queue.push_front(helper);
                            return;
                        }
                    }
                }
                Decision::Step => {
                    let Some(c) = launcher.queue.pop_front() else {
                        return;
                    };
                    launcher.emitted_upto = c.id;
                    self.emit(tid, c, out);
                }
            }
        }
    }

    /// A blocking wait returned (`sync` timing): completes every thread's open activity that
    /// started before the wait was entered.
    pub fn complete_all(&mut self, call: WaitCall, out: &mut impl FnMut(Correlated)) {
        let entry_ns = call.entry_ns;
        let mut tids: Vec<u32> = self
            .open
            .iter()
            .filter(|(_, b)| b.has_work && b.start_ns.is_some_and(|s| s < entry_ns))
            .map(|(t, _)| *t)
            .collect();
        tids.sort_unstable();
        for tid in tids {
            if let Some(work) = self.open.remove(&tid) {
                let record_ns = work.last_ns;
                let c = Candidate {
                    id: 0,
                    seen: Seen::new(&work),
                    work,
                    record_ns,
                    stream: 0,
                    next: None,
                    role: EventRole::Unknown,
                    done: Some(Wait { call, poll: false }),
                    successor_skipped: false,
                };
                self.emit(tid, c, out);
            }
        }
    }

    /// The completion and GPU start of a completed candidate, from its evidence and the
    /// previous step's; remembers this step's for the next.
    fn timing(&mut self, c: &Candidate, wait: &Wait, start_ns: u64) -> Timing {
        let p = self.prev;
        let ret_ns = wait.call.ret_ns;
        // Hard bounds. A blocked wait's return is the measurement of an exact row, but not a
        // hard bound for the next step: a descheduled waiter wakes late.
        let latest = ret_ns.min(c.seen.finished_by_ns);
        // One device queue: not before the previous step's earliest completion either.
        let earliest = c.seen.unfinished_at_ns.max(p.earliest_ns).min(latest);
        let exact = wait.blocked();
        let (completion_ns, completion_lower_ns, completion, start_floor) = if exact {
            let floor = p.exact_ns.max(p.earliest_ns);
            (ret_ns, ret_ns, Completion::Exact, floor)
        } else if latest - earliest <= BRACKET_NS {
            (latest, earliest, Completion::Bracketed, p.earliest_ns)
        } else {
            (latest, earliest, Completion::UpperBound, p.earliest_ns)
        };
        // The GPU cannot start this step before the previous one finished (one device queue).
        let gpu_start_ns = if start_floor > start_ns && start_floor <= completion_ns {
            start_floor
        } else {
            start_ns
        };
        self.prev = Prev {
            exact_ns: if exact {
                p.exact_ns.max(ret_ns)
            } else {
                p.exact_ns
            },
            earliest_ns: p.earliest_ns.max(earliest),
            latest_ns: latest,
        };
        Timing {
            gpu_start_ns,
            gpu_start_upper_ns: gpu_start_ns.max(p.latest_ns),
            completion_ns,
            completion_lower_ns,
            completion,
        }
    }

    fn emit(&mut self, tid: u32, c: Candidate, out: &mut impl FnMut(Correlated)) {
        let Some(wait) = c.done else {
            return;
        };
        let index = self.next_index;
        self.next_index += 1;
        let start_ns = c.work.start_ns.unwrap_or(c.record_ns);
        let t = self.timing(&c, &wait, start_ns);
        let first_wait_ns = c.seen.first_wait_ns.unwrap_or(wait.call.entry_ns);
        let b = c.work;
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
            start_ns,
            launch_end_ns: c.record_ns.max(start_ns),
            gpu_start_ns: t.gpu_start_ns,
            gpu_start_upper_ns: t.gpu_start_upper_ns,
            completion_ns: t.completion_ns,
            completion_lower_ns: t.completion_lower_ns,
            completion: t.completion,
            gpu_done_before_wait: t.completion != Completion::Exact
                && c.seen.unfinished_at_ns < first_wait_ns,
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

    /// Session end: completed candidates still undecided are steps; what never completed is
    /// counted, its replays still reported.
    pub fn finish(&mut self, stats: &mut CorrelatorStats, out: &mut impl FnMut(Correlated)) {
        let mut tids: Vec<u32> = self.launchers.keys().copied().collect();
        tids.sort_unstable();
        for tid in tids {
            self.resolve(tid, true, stats, out);
        }
        let mut rest: Vec<Builder> = self.open.drain().map(|(_, b)| b).collect();
        for (_, l) in self.launchers.drain() {
            rest.extend(l.queue.into_iter().map(|c| c.work));
        }
        for b in rest {
            if b.start_ns.is_some() {
                stats.incomplete_steps += 1;
            }
            for r in b.graphs {
                out(Correlated::GraphReplay(r));
            }
        }
    }
}
