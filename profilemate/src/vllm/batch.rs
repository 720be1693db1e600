//! Per-step batches: the `SchedulerOutput` each step was launched with, and the CUDA graph
//! descriptor each replay used, read from the target (read-only) at the moment the frame
//! walker saw them.
//!
//! The walker keeps every frame's second argument (`localsplus[1]`); for
//! `*.execute_model(self, scheduler_output)` that is the step's `SchedulerOutput`, for
//! `*.run_fullgraph(self, desc)` the `BatchExecutionDescriptor` being replayed. The pointer
//! is captured atomically with the stack at a CUDA call; the object is then read at once
//! (it stays alive until the step's output is processed) and validated by type. Each
//! step's output is read once: the `num_scheduled_tokens` dict's version tag (unique per
//! dict modification in CPython 3.11-3.13) tells a new step's output from the same one seen
//! again, even when a freed output's address is reused.
//!
//! Owns those reads and their counters; not the names (`bundle`, `v0_33`), nor the payload
//! types (`model::batch`), nor what a batch means for the outputs (`profilers`).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::{
    bundle::Bundle,
    calls::{CallNames, CallReader, CallStats},
    state::{read_snapshot, StateError, StateNames, StateSnapshot, StrCache},
};
pub use crate::model::batch::{GraphDescriptor, NewRequest, Phase, StepBatch};
use crate::{
    model::{Correlated, PyFrameInfo, PyStack, StackReason},
    python::{
        objects::{object_layout, AttrCache, ObjectError, ObjectLayout, Objects, MAX_ITEMS},
        remote::ProcessMemory,
        Interpreter,
    },
};

/// A stack older than this when it reaches the reader is not used: a step's output lives
/// at least until the step completes (two steps with async scheduling), so a read within
/// this delay reads the object the walk saw, not a later one at a reused address. Engines
/// with shorter steps get a shorter bound (`ProcBatch::read_bound_ns`).
pub const MAX_READ_DELAY_NS: u64 = 5_000_000;

/// Intervals between consecutive new outputs remembered per process (the shortest one is
/// the step period the read bound follows).
const PERIODS_KEPT: usize = 16;

/// The names of the per-step objects, for one vLLM version range.
#[derive(Debug)]
pub struct BatchNames {
    /// vLLM versions the table was read from.
    pub versions: &'static str,
    /// Methods whose second argument is the step's `SchedulerOutput` (qualname suffixes;
    /// the innermost frame wins): the model runner's and worker's `execute_model`, the
    /// executor's, and `Scheduler.update_from_output`.
    pub output_frames: &'static [&'static str],
    /// Engine loops that keep a step's output alive across the next step (async
    /// scheduling's batch queue): there a late read still finds it; elsewhere the output
    /// is freed when its step ends.
    pub pipelined_step_frames: &'static [&'static str],
    /// `type(scheduler_output).__name__`.
    pub output_type: &'static str,
    /// `SchedulerOutput` fields.
    pub total_num_scheduled_tokens: &'static str,
    /// See `total_num_scheduled_tokens`.
    pub num_scheduled_tokens: &'static str,
    /// See `total_num_scheduled_tokens`.
    pub scheduled_new_reqs: &'static str,
    /// See `total_num_scheduled_tokens`.
    pub scheduled_cached_reqs: &'static str,
    /// See `total_num_scheduled_tokens`.
    pub scheduled_spec_decode_tokens: &'static str,
    /// See `total_num_scheduled_tokens`.
    pub scheduled_encoder_inputs: &'static str,
    /// See `total_num_scheduled_tokens`.
    pub preempted_req_ids: &'static str,
    /// See `total_num_scheduled_tokens`.
    pub finished_req_ids: &'static str,
    /// `NewRequestData.req_id`, `.prompt_token_ids`.
    pub new_req_id: &'static str,
    /// See `new_req_id`.
    pub new_req_prompt: &'static str,
    /// `CachedRequestData.req_ids`, `.resumed_req_ids`, `.num_output_tokens`.
    pub cached_req_ids: &'static str,
    /// See `cached_req_ids`.
    pub resumed_req_ids: &'static str,
    /// See `cached_req_ids`.
    pub num_output_tokens: &'static str,
    /// Methods whose second argument is the CUDA graph descriptor being replayed.
    pub descriptor_frames: &'static [&'static str],
    /// `type(desc).__name__` accepted.
    pub descriptor_types: &'static [&'static str],
    /// Descriptor fields: mode, tokens, requests, uniform token count, active LoRAs.
    pub desc_mode: &'static str,
    /// See `desc_mode`.
    pub desc_num_tokens: &'static str,
    /// See `desc_mode`.
    pub desc_num_reqs: &'static str,
    /// See `desc_mode`.
    pub desc_uniform: &'static str,
    /// See `desc_mode`.
    pub desc_loras: &'static str,
}

/// Counts of the per-step reads, for metadata.json.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct BatchStats {
    /// Step outputs read.
    pub batches: u64,
    /// Stacks that carried an output already read.
    pub repeated: u64,
    /// Outputs dropped: they changed while read, or were freed (counted, never reported).
    pub torn: u64,
    /// Stacks with an `execute_model` frame whose argument was not a `SchedulerOutput`.
    pub wrong_type: u64,
    /// Stacks carrying an output that reached userspace too late to read it (the output may
    /// have been freed and its address reused): not used, counted.
    pub stale: u64,
    /// Graph descriptors read.
    pub descriptors: u64,
    /// Descriptors that could not be read.
    pub descriptor_errors: u64,
    /// The last read error, if any (what was not found, for another vLLM version).
    pub last_error: Option<String>,
    /// Delay from the walk to the reader for stacks carrying an output (µs): how far the
    /// tracer ran behind the target.
    pub read_delay_us: DelayPercentiles,
}

/// P50/P99/max of a delay, in µs.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct DelayPercentiles {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

struct ProcBatch {
    interp: Interpreter,
    mem: ProcessMemory,
    attrs: AttrCache,
    strings: StrCache,
    /// (output address, its `num_scheduled_tokens` dict, that dict's version tag).
    last: Option<(u64, u64, u64)>,
    scheduler: Option<u64>,
    /// When the last step's scheduler snapshot was taken (ns).
    last_snapshot_ns: u64,
    /// Whether stacks walked at CUDA calls carry this process's step outputs (the model
    /// runs here). Then those are the steps' batches, stamped at the launch; the output a
    /// watched `update_from_output` carries is read only where they are not (a scheduler
    /// without CUDA: the TP>1 EngineCore), stamped at the update.
    cuda_outputs: bool,
    /// How often new outputs come (the read bound follows it).
    cadence: StepCadence,
}

/// Stack time of the last new output, and the intervals between the last ones.
#[derive(Default)]
struct StepCadence {
    last_output_ns: u64,
    periods: std::collections::VecDeque<u64>,
}

impl StepCadence {
    /// How old a stack may be when its output is read: `MAX_READ_DELAY_NS` where the
    /// engine's batch queue keeps the output through the next step (`pipelined`: async
    /// scheduling), else half the shortest recent step period, at most that. A synchronous
    /// engine frees a step's output when the step ends (a real 0.33 scheduler stepping every
    /// 3 ms reused the address for the next step's output, read as this step's), and the
    /// stack was taken somewhere inside the step.
    fn read_bound_ns(&self, pipelined: bool) -> u64 {
        if pipelined {
            return MAX_READ_DELAY_NS;
        }
        self.periods
            .iter()
            .min()
            .map_or(MAX_READ_DELAY_NS, |&p| (p / 2).min(MAX_READ_DELAY_NS))
    }

    /// Notes a new output seen at stack time `ts_ns`.
    fn note_output(&mut self, ts_ns: u64) {
        if self.last_output_ns != 0 && ts_ns > self.last_output_ns {
            if self.periods.len() == PERIODS_KEPT {
                self.periods.pop_front();
            }
            self.periods.push_back(ts_ns - self.last_output_ns);
        }
        self.last_output_ns = ts_ns;
    }
}

/// Least time between two per-step scheduler snapshots of one process. A snapshot is two
/// agreeing reads of ~20 fields (~1-2 ms on a busy real server's host): at every step of a
/// 400-steps/s engine it took 70 % of the pipeline thread. At this spacing steps still get
/// queues and KV usage at 100 Hz, on top of the polls.
const MIN_SNAPSHOT_GAP_NS: u64 = 10_000_000;

/// Reads step outputs and graph descriptors off walked stacks.
pub struct BatchReader {
    names: &'static BatchNames,
    state: &'static StateNames,
    calls_names: &'static CallNames,
    procs: HashMap<u32, ProcBatch>,
    delays: hdrhistogram::Histogram<u64>,
    calls: CallReader,
    /// Counters.
    pub stats: BatchStats,
}

/// Why one read failed.
#[derive(Debug, thiserror::Error)]
enum ReadFailure {
    #[error("`{0}` not found on the {1}")]
    Missing(&'static str, &'static str),
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the object changed while it was read")]
    Changed,
}

impl BatchReader {
    /// A reader using `names` for outputs and `state` for the scheduler side.
    #[must_use]
    pub fn new(bundle: &'static Bundle) -> Self {
        Self {
            names: bundle.batch,
            state: bundle.state,
            calls_names: bundle.calls,
            procs: HashMap::new(),
            calls: CallReader::default(),
            // 3 significant digits; auto-resizing, so any delay fits.
            delays: hdrhistogram::Histogram::new(3).expect("3 significant digits are valid"),
            stats: BatchStats::default(),
        }
    }

    /// Starts reading `interp`'s process (versions without an object layout are skipped).
    pub fn add_interpreter(&mut self, interp: Interpreter) {
        if object_layout(interp.layout.version).is_none() {
            return;
        }
        self.procs.insert(
            interp.pid,
            ProcBatch {
                mem: ProcessMemory::new(interp.pid),
                interp,
                attrs: AttrCache::default(),
                strings: StrCache::default(),
                last: None,
                scheduler: None,
                last_snapshot_ns: 0,
                cadence: StepCadence::default(),
                cuda_outputs: false,
            },
        );
    }

    /// The counters with the delay percentiles filled in.
    #[must_use]
    pub fn final_stats(&self) -> BatchStats {
        let d = &self.delays;
        BatchStats {
            read_delay_us: DelayPercentiles {
                p50: d.value_at_quantile(0.5),
                p99: d.value_at_quantile(0.99),
                max: d.max(),
            },
            ..self.stats.clone()
        }
    }

    /// Forgets an exited process.
    pub fn remove_process(&mut self, pid: u32) {
        self.procs.remove(&pid);
        self.calls.remove_process(pid);
    }

    /// The counters of the watched scheduler calls.
    #[must_use]
    pub fn call_stats(&self) -> CallStats {
        self.calls.stats.clone()
    }

    /// The scheduler object of `pid`, found by its poller: per-step reads add its queues.
    pub fn set_scheduler(&mut self, pid: u32, scheduler: u64) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.scheduler = Some(scheduler);
        }
    }

    /// Looks at one symbolized stack walked at a CUDA call or at a watched function's entry.
    pub fn observe(&mut self, st: &PyStack, out: &mut impl FnMut(Correlated)) {
        if matches!(st.reason, StackReason::Sample) {
            return;
        }
        let Some(p) = self.procs.get_mut(&st.pid) else {
            return;
        };
        let names = self.names;
        let delay = crate::model::monotonic_ns().saturating_sub(st.ts_ns);
        // A batch queue keeps an output alive until its update, so a stack at a CUDA call may
        // be read later; at the update's own entry (a breakpoint) the output dies soon after
        // the update returns, and the next output can take its address.
        let pipelined = matches!(st.reason, StackReason::CudaCall(_))
            && st
                .frames
                .iter()
                .any(|f| ends_with_any(&f.code.qualname, names.pipelined_step_frames));
        let bound_ns = p.cadence.read_bound_ns(pipelined);
        let late = delay > bound_ns;
        if st.frames.iter().any(|f| carries_output(names, f)) {
            // An auto-resizing histogram: recording cannot fail short of memory.
            let _ = self.delays.record(delay / 1000);
            self.stats.stale += u64::from(late);
        }
        let Some(ol) = object_layout(p.interp.layout.version) else {
            return;
        };
        if !late {
            // The output first: its identity read is what the bound protects.
            let mut cx = ReadContext {
                names,
                state: self.state,
                stats: &mut self.stats,
                deadline_ns: st.ts_ns.saturating_add(bound_ns),
            };
            // The step's scheduler output: the innermost frame that carries one.
            let at_cuda_call = matches!(st.reason, StackReason::CudaCall(_));
            if at_cuda_call && st.frames.iter().any(|f| carries_output(names, f)) {
                p.cuda_outputs = true;
            }
            if at_cuda_call || !p.cuda_outputs {
                cx.step_output(p, ol, st, out);
            }
            cx.graph_descriptor(p, ol, st, out);
        }
        let mem = p.mem;
        let o = Objects::new(&mem, &p.interp.layout, ol).with_cache(&p.attrs);
        // A watched call counts however late it is read: its time came with the hit, and the
        // request it names outlives the call (checked by type before its id is read).
        if let Some(call) = self.calls.read(self.calls_names, st, &o, &mut p.strings) {
            out(Correlated::SchedulerCall(Box::new(call)));
        }
    }
}

/// Whether `qualname` ends with one of `set`.
fn ends_with_any(qualname: &str, set: &[&str]) -> bool {
    set.iter().any(|s| qualname.ends_with(s))
}

/// Whether frame `f` carries a scheduler output (its argument, in a frame that takes one).
fn carries_output(names: &BatchNames, f: &PyFrameInfo) -> bool {
    f.arg1 != 0 && ends_with_any(&f.code.qualname, names.output_frames)
}

/// What the reads of one stack need of the reader.
struct ReadContext<'a> {
    names: &'static BatchNames,
    state: &'static StateNames,
    stats: &'a mut BatchStats,
    /// The stack's time plus the read bound: an identity read later may be another object's
    /// at a reused address (the reader can be descheduled between the bound's check and
    /// its reads on a busy machine), so it is dropped as stale.
    deadline_ns: u64,
}

impl ReadContext<'_> {
    /// Whether it is now past the deadline (what was just read is dropped).
    fn ended_late(&self) -> bool {
        crate::model::monotonic_ns() > self.deadline_ns
    }

    /// The descriptor of a graph replay, when a frame of the stack carries one.
    fn graph_descriptor(
        &mut self,
        p: &mut ProcBatch,
        ol: ObjectLayout,
        st: &PyStack,
        out: &mut impl FnMut(Correlated),
    ) {
        let names = self.names;
        let Some(f) = st
            .frames
            .iter()
            .find(|f| f.arg1 != 0 && ends_with_any(&f.code.qualname, names.descriptor_frames))
        else {
            return;
        };
        let mem = p.mem;
        let o = Objects::new(&mem, &p.interp.layout, ol).with_cache(&p.attrs);
        match read_descriptor(&o, names, f.arg1, &mut p.strings) {
            Ok(Some(_)) if self.ended_late() => self.stats.descriptor_errors += 1,
            Ok(Some((mode, num_tokens, num_reqs, uniform, loras))) => {
                self.stats.descriptors += 1;
                out(Correlated::GraphDescriptor(GraphDescriptor {
                    pid: st.pid,
                    tid: st.tid,
                    ts_ns: st.ts_ns,
                    mode,
                    num_tokens,
                    num_reqs,
                    uniform,
                    num_active_loras: loras,
                }));
            }
            Ok(None) => {}
            Err(e) => {
                self.stats.descriptor_errors += 1;
                self.stats.last_error = Some(format!("graph descriptor: {e}"));
            }
        }
    }

    /// The step's batch from the innermost frame carrying a `SchedulerOutput` (once per
    /// output; none when it changed while read).
    fn step_output(
        &mut self,
        p: &mut ProcBatch,
        ol: ObjectLayout,
        st: &PyStack,
        out: &mut impl FnMut(Correlated),
    ) {
        let names = self.names;
        let mem = p.mem;
        let o = Objects::new(&mem, &p.interp.layout, ol).with_cache(&p.attrs);
        for f in st.frames.iter().filter(|f| carries_output(names, f)) {
            let is_output = o.type_name(f.arg1).is_ok_and(|t| t == names.output_type);
            if !is_output {
                self.stats.wrong_type += 1;
                continue;
            }
            let key = match output_key(&o, names, f.arg1) {
                Ok(k) => k,
                Err(e) => {
                    self.stats.torn += 1;
                    self.stats.last_error = Some(format!("scheduler output: {e}"));
                    return;
                }
            };
            if p.last == Some(key) {
                self.stats.repeated += 1;
                return;
            }
            // The key read within the bound is the hit's object's (alive until then); the
            // same key after the read (a dict version tag is unique) proves nothing changed.
            // Read past the bound (the reader descheduled since the bound's check) it may be
            // another object at a reused address.
            if self.ended_late() {
                self.stats.stale += 1;
                return;
            }
            p.cadence.note_output(st.ts_ns);
            let read = read_output(&o, names, f.arg1, &mut p.strings).and_then(|mut b| {
                // Nothing of the output may have changed while it was read.
                if output_key(&o, names, f.arg1)? != key {
                    return Err(ReadFailure::Changed);
                }
                // Stamped when read (the queues may have moved since the stack was taken), as
                // polls are: two agreeing reads taken close together (none when torn).
                let due = st.ts_ns.saturating_sub(p.last_snapshot_ns) >= MIN_SNAPSHOT_GAP_NS;
                b.scheduler = match p.scheduler.filter(|_| due) {
                    Some(s) => read_snapshot(&o, self.state, s)
                        .ok()
                        .map(|snap| StateSnapshot {
                            pid: st.pid,
                            ..snap
                        }),
                    None => None,
                };
                Ok(b)
            });
            match read {
                Ok(b) => {
                    p.last = Some(key);
                    if b.scheduler.is_some() {
                        p.last_snapshot_ns = st.ts_ns;
                    }
                    self.stats.batches += 1;
                    out(Correlated::Batch(Box::new(StepBatch {
                        pid: st.pid,
                        tid: st.tid,
                        ts_ns: st.ts_ns,
                        ..b
                    })));
                }
                Err(e) => {
                    self.stats.torn += 1;
                    self.stats.last_error = Some(format!("scheduler output: {e}"));
                }
            }
            return;
        }
    }
}

/// (address, `num_scheduled_tokens` dict, its version tag): the identity of one step's
/// output.
fn output_key(o: &Objects<'_>, n: &BatchNames, so: u64) -> Result<(u64, u64, u64), ReadFailure> {
    let dict = o
        .attr(so, n.num_scheduled_tokens)?
        .ok_or(ReadFailure::Missing(
            n.num_scheduled_tokens,
            "scheduler output",
        ))?;
    Ok((so, dict, o.dict_version(dict)?))
}

/// Ids of a set, list or tuple of strs (None: empty).
fn id_list(
    o: &Objects<'_>,
    strings: &mut StrCache,
    v: Option<u64>,
) -> Result<Vec<String>, ReadFailure> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    if o.is_none(v)? {
        return Ok(Vec::new());
    }
    let items = match o.set_items(v, MAX_ITEMS) {
        Ok(items) => items,
        Err(ObjectError::WrongType { .. }) => o.list_items(v, MAX_ITEMS)?,
        Err(e) => return Err(e.into()),
    };
    items
        .into_iter()
        .map(|s| strings.get(o, s).map_err(ReadFailure::from))
        .collect()
}

/// Reads a `SchedulerOutput` (pid, tid and time left empty).
fn read_output(
    o: &Objects<'_>,
    n: &BatchNames,
    so: u64,
    strings: &mut StrCache,
) -> Result<StepBatch, ReadFailure> {
    let [total, per_req, new, cached, spec, encoder, preempted, finished] = o.attrs(
        so,
        [
            n.total_num_scheduled_tokens,
            n.num_scheduled_tokens,
            n.scheduled_new_reqs,
            n.scheduled_cached_reqs,
            n.scheduled_spec_decode_tokens,
            n.scheduled_encoder_inputs,
            n.preempted_req_ids,
            n.finished_req_ids,
        ],
    )?;
    let what = "scheduler output";
    let need = |v: Option<u64>, name: &'static str| v.ok_or(ReadFailure::Missing(name, what));
    let num_tokens = u64::try_from(o.int(need(total, n.total_num_scheduled_tokens)?)?).unwrap_or(0);
    let tokens = scheduled_tokens(o, need(per_req, n.num_scheduled_tokens)?, strings)?;
    let new_requests = new_requests(o, n, need(new, n.scheduled_new_reqs)?, strings)?;
    let cached = cached_requests(o, n, need(cached, n.scheduled_cached_reqs)?, strings)?;
    // Draft tokens per request (speculative decoding).
    let mut spec_of: HashMap<String, u64> = HashMap::new();
    if let Some(d) = spec {
        if !o.is_none(d)? {
            for (k, v) in o.dict_items(d, MAX_ITEMS)? {
                spec_of.insert(strings.get(o, k)?, o.len(v)?);
            }
        }
    }
    let mut encoder_inputs = 0;
    if let Some(d) = encoder {
        if !o.is_none(d)? {
            for (_, v) in o.dict_items(d, MAX_ITEMS)? {
                encoder_inputs += o.len(v)?;
            }
        }
    }
    let mut b = StepBatch {
        pid: 0,
        tid: 0,
        ts_ns: 0,
        num_reqs: tokens.len() as u64,
        num_tokens,
        new_reqs: new_requests.len() as u64,
        cached_reqs: cached.ids.len() as u64,
        resumed_reqs: cached.resumed.len() as u64,
        prefill_reqs: 0,
        decode_reqs: 0,
        prefill_tokens: 0,
        decode_tokens: 0,
        spec_tokens: spec_of.values().sum(),
        encoder_inputs,
        scheduled: Vec::new(),
        new_requests,
        resumed_req_ids: cached.resumed,
        preempted_req_ids: id_list(o, strings, preempted)?,
        finished_req_ids: id_list(o, strings, finished)?,
        phase: Phase::Empty,
        scheduler: None,
    };
    split_phases(&mut b, tokens, &cached.ids, &cached.output_tokens, &spec_of);
    Ok(b)
}

/// Tokens scheduled per request id (`num_scheduled_tokens`); small ints are shared
/// objects, so each distinct value is read once.
fn scheduled_tokens(
    o: &Objects<'_>,
    dict: u64,
    strings: &mut StrCache,
) -> Result<HashMap<String, u64>, ReadFailure> {
    let mut ints: HashMap<u64, u64> = HashMap::new();
    let mut tokens: HashMap<String, u64> = HashMap::new();
    for (k, v) in o.dict_items(dict, MAX_ITEMS)? {
        let t = match ints.get(&v) {
            Some(t) => *t,
            None => {
                let t = u64::try_from(o.int(v)?).unwrap_or(0);
                ints.insert(v, t);
                t
            }
        };
        tokens.insert(strings.get(o, k)?, t);
    }
    Ok(tokens)
}

/// The requests scheduled for the first time (`scheduled_new_reqs`).
fn new_requests(
    o: &Objects<'_>,
    n: &BatchNames,
    list: u64,
    strings: &mut StrCache,
) -> Result<Vec<NewRequest>, ReadFailure> {
    let mut new_requests = Vec::new();
    for r in o.list_items(list, MAX_ITEMS)? {
        let [id, prompt] = o.attrs(r, [n.new_req_id, n.new_req_prompt])?;
        let id = id.ok_or(ReadFailure::Missing(n.new_req_id, "new request data"))?;
        let prompt_tokens = match prompt {
            Some(p) if !o.is_none(p)? => Some(o.len(p)?),
            _ => None,
        };
        new_requests.push(NewRequest {
            id: strings.get(o, id)?,
            prompt_tokens,
        });
    }
    Ok(new_requests)
}

/// What `scheduled_cached_reqs` says.
struct Cached {
    /// Request ids, in order.
    ids: Vec<String>,
    /// Of those, resumed after a preemption.
    resumed: Vec<String>,
    /// Output tokens so far, per request in `ids` order (empty when not read).
    output_tokens: Vec<u64>,
}

fn cached_requests(
    o: &Objects<'_>,
    n: &BatchNames,
    cached: u64,
    strings: &mut StrCache,
) -> Result<Cached, ReadFailure> {
    let [cached_ids, resumed, out_tokens] = o.attrs(
        cached,
        [n.cached_req_ids, n.resumed_req_ids, n.num_output_tokens],
    )?;
    let cached_ids =
        cached_ids.ok_or(ReadFailure::Missing(n.cached_req_ids, "scheduler output"))?;
    let ids = id_list(o, strings, Some(cached_ids))?;
    let resumed = id_list(o, strings, resumed)?;
    let output_tokens: Vec<u64> = match out_tokens {
        Some(l) => o
            .list_items(l, MAX_ITEMS)?
            .into_iter()
            .map(|v| o.int(v).map(|t| u64::try_from(t).unwrap_or(0)))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(Cached {
        ids,
        resumed,
        output_tokens,
    })
}

/// Splits the scheduled requests into prefill and decode, and names the batch's phase. A
/// request prefills when it is new, resumed (recomputes its tokens), has produced no output
/// yet (chunked prefill), or computes more than one token plus its drafts.
fn split_phases(
    b: &mut StepBatch,
    tokens: HashMap<String, u64>,
    cached_ids: &[String],
    out_tokens: &[u64],
    spec_of: &HashMap<String, u64>,
) {
    let mut prefill: HashSet<&str> = b.new_requests.iter().map(|r| r.id.as_str()).collect();
    prefill.extend(b.resumed_req_ids.iter().map(String::as_str));
    for (i, id) in cached_ids.iter().enumerate() {
        let t = tokens.get(id).copied().unwrap_or(0);
        let drafts = spec_of.get(id).copied().unwrap_or(0);
        if out_tokens.get(i) == Some(&0) || t > 1 + drafts {
            prefill.insert(id);
        }
    }
    let (mut prefill_reqs, mut decode_reqs, mut prefill_tokens, mut decode_tokens) = (0, 0, 0, 0);
    for (id, t) in &tokens {
        if prefill.contains(id.as_str()) {
            prefill_reqs += 1;
            prefill_tokens += t;
        } else {
            decode_reqs += 1;
            decode_tokens += t;
        }
    }
    b.prefill_reqs = prefill_reqs;
    b.decode_reqs = decode_reqs;
    b.prefill_tokens = prefill_tokens;
    b.decode_tokens = decode_tokens;
    b.scheduled = tokens.into_iter().collect();
    b.phase = match (b.prefill_reqs, b.decode_reqs) {
        (0, 0) => Phase::Empty,
        (_, 0) => Phase::Prefill,
        (0, _) => Phase::Decode,
        _ => Phase::Mixed,
    };
}

/// (mode, tokens, requests, uniform count, LoRAs) of a graph descriptor.
type DescriptorFields = (String, u64, Option<u64>, Option<u64>, u64);

/// The fields of a graph descriptor; None when the argument is not one.
fn read_descriptor(
    o: &Objects<'_>,
    n: &BatchNames,
    desc: u64,
    strings: &mut StrCache,
) -> Result<Option<DescriptorFields>, ReadFailure> {
    let ty = o.type_name(desc)?;
    if !n.descriptor_types.contains(&ty.as_str()) {
        return Ok(None);
    }
    let [mode, tokens, reqs, uniform, loras] = o.attrs(
        desc,
        [
            n.desc_mode,
            n.desc_num_tokens,
            n.desc_num_reqs,
            n.desc_uniform,
            n.desc_loras,
        ],
    )?;
    let opt_int = |v: Option<u64>| -> Result<Option<u64>, ReadFailure> {
        match v {
            Some(v) if !o.is_none(v)? => Ok(u64::try_from(o.int(v)?).ok()),
            _ => Ok(None),
        }
    };
    let mode = match mode {
        Some(m) => strings.enum_name(o, m)?,
        None => "unknown".to_owned(),
    };
    let tokens =
        opt_int(tokens)?.ok_or(ReadFailure::Missing(n.desc_num_tokens, "graph descriptor"))?;
    Ok(Some((
        mode,
        tokens,
        opt_int(reqs)?,
        opt_int(uniform)?,
        opt_int(loras)?.unwrap_or(0),
    )))
}

/// Replays what the reader is given (stacks, the fields of a read output); no process, no
/// root.
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{CodeInfo, Operation};

    fn empty_batch(new: &[&str], resumed: &[&str]) -> StepBatch {
        StepBatch {
            pid: 0,
            tid: 0,
            ts_ns: 0,
            num_reqs: 0,
            num_tokens: 0,
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
            new_requests: new
                .iter()
                .map(|id| NewRequest {
                    id: (*id).to_owned(),
                    prompt_tokens: Some(100),
                })
                .collect(),
            resumed_req_ids: resumed.iter().map(|s| (*s).to_owned()).collect(),
            preempted_req_ids: Vec::new(),
            finished_req_ids: Vec::new(),
            phase: Phase::Empty,
            scheduler: None,
        }
    }

    #[test]
    fn requests_are_prefill_when_new_resumed_chunked_or_past_their_drafts() {
        let tokens: HashMap<String, u64> = [
            ("new", 100),
            ("resumed", 60),
            ("chunked", 1),
            ("drafted", 3),
            ("too_many", 4),
            ("decoding", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let cached: Vec<String> = ["resumed", "chunked", "drafted", "too_many", "decoding"]
            .map(String::from)
            .to_vec();
        // Output tokens so far, in `cached` order: "chunked" has produced none yet.
        let out_tokens = [9, 0, 5, 5, 7];
        let spec: HashMap<String, u64> = [("drafted".to_owned(), 2), ("too_many".to_owned(), 2)]
            .into_iter()
            .collect();
        let mut b = empty_batch(&["new"], &["resumed"]);
        split_phases(&mut b, tokens, &cached, &out_tokens, &spec);
        assert_eq!((b.prefill_reqs, b.prefill_tokens), (4, 100 + 60 + 1 + 4));
        assert_eq!((b.decode_reqs, b.decode_tokens), (2, 3 + 1));
        assert_eq!(b.phase, Phase::Mixed);
        assert_eq!(b.scheduled.len(), 6);
    }

    #[test]
    fn a_batch_of_only_decodes_or_nothing_is_named_so() {
        let mut b = empty_batch(&[], &[]);
        let one: HashMap<String, u64> = [("a".to_owned(), 1)].into_iter().collect();
        split_phases(&mut b, one, &["a".to_owned()], &[3], &HashMap::new());
        assert_eq!(b.phase, Phase::Decode);
        let mut e = empty_batch(&[], &[]);
        split_phases(&mut e, HashMap::new(), &[], &[], &HashMap::new());
        assert_eq!(e.phase, Phase::Empty);
    }

    fn stack(reason: StackReason, qualname: &str) -> PyStack {
        PyStack {
            pid: 42,
            tid: 42,
            ts_ns: crate::model::monotonic_ns(),
            reason,
            flags: 0,
            frames: vec![PyFrameInfo {
                code: Arc::new(CodeInfo::new(
                    qualname,
                    "vllm/v1/worker/x.py",
                    1,
                    Vec::new(),
                )),
                line: 1,
                arg1: 0x1000,
            }],
            op: Operation::ModelForward,
            op_frame: None,
        }
    }

    #[test]
    fn sampled_stacks_and_processes_never_added_are_not_read() {
        let mut reader = BatchReader::new(&crate::vllm::v0_33::BUNDLE);
        let mut out = Vec::new();
        for st in [
            stack(StackReason::Sample, "GPUModelRunner.execute_model"),
            stack(
                StackReason::CudaCall(profilemate_common::ApiId::cudaGraphLaunch),
                "GPUModelRunner.execute_model",
            ),
        ] {
            reader.observe(&st, &mut |c| out.push(c));
        }
        assert!(out.is_empty());
        assert_eq!(reader.stats, BatchStats::default());
    }

    #[test]
    fn an_output_is_carried_only_by_a_frame_that_takes_one() {
        let names = &crate::vllm::v0_33::BATCH;
        let frame = |q: &str, arg1| PyFrameInfo {
            code: Arc::new(CodeInfo::new(q, "x.py", 1, Vec::new())),
            line: 1,
            arg1,
        };
        assert!(carries_output(
            names,
            &frame("GPUModelRunner.execute_model", 8)
        ));
        assert!(carries_output(
            names,
            &frame("Scheduler.update_from_output", 8)
        ));
        assert!(!carries_output(
            names,
            &frame("GPUModelRunner.execute_model", 0)
        ));
        assert!(!carries_output(names, &frame("Scheduler.schedule", 8)));
    }
}
