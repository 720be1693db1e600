//! vLLM's live scheduler state, read from outside: the engine object is found as `self` of
//! its busy-loop frame, then the scheduler, its queues and the KV cache block pool are read
//! by attribute name (read-only, `process_vm_readv`) at every poll.
//!
//! Names come from one table per vLLM version range; a name the target's vLLM lacks makes
//! that value absent (with the missing name reported), never a guess.

pub use crate::model::scheduler::StateSnapshot;

use super::{
    blocks::{BlockPoll, BlockTracker},
    requests::{RequestPoll, RequestTracker},
};
use crate::python::{
    code::CodeCache,
    objects::{object_layout, AttrCache, ObjectError, Objects},
    remote::{field, ProcessMemory, RemoteMemory},
    Interpreter,
};

/// The names ProfileMate reads, for one vLLM version range.
#[derive(Debug)]
pub struct StateNames {
    /// vLLM versions the table was read from.
    pub versions: &'static str,
    /// What a file of the package has in its path (`vllm/`).
    pub package: &'static str,
    /// Frames whose `self` is the engine core (outermost loops first).
    pub engine_frames: &'static [&'static str],
    /// Frames whose `self` is the scheduler (when no engine frame is live).
    pub scheduler_frames: &'static [&'static str],
    /// `EngineCore.scheduler`.
    pub engine_scheduler: &'static str,
    /// `Scheduler.running` (list), `.waiting` (deque or heap), `.requests` (dict).
    pub running: &'static str,
    /// See `running`.
    pub waiting: &'static str,
    /// See `running`.
    pub requests: &'static str,
    /// `Scheduler.kv_cache_manager`.
    pub kv_cache_manager: &'static str,
    /// `KVCacheManager.block_pool`.
    pub block_pool: &'static str,
    /// `BlockPool.num_gpu_blocks`.
    pub num_gpu_blocks: &'static str,
    /// `BlockPool.free_block_queue`.
    pub free_block_queue: &'static str,
    /// `FreeKVCacheBlockQueue.num_free_blocks`.
    pub num_free_blocks: &'static str,
    /// `Scheduler.current_step`: schedule() calls so far.
    pub current_step: &'static str,
    /// `Scheduler.max_num_running_reqs` (= `max_num_seqs`).
    pub max_num_running_reqs: &'static str,
    /// `Scheduler.max_num_scheduled_tokens` (token budget per step).
    pub max_num_scheduled_tokens: &'static str,
    /// `BlockPool.cached_block_hash_to_block`: replaced by a new object at every prefix
    /// cache reset (so a changed address marks a reset).
    pub prefix_cache_map: &'static str,
    /// `BlockHashToBlockMap._cache`: the cached (prefix-hit-able) blocks (older vLLMs
    /// keep the dict itself in `prefix_cache_map`; both are read).
    pub prefix_cache_dict: &'static str,
    /// The class of the cached values (`vllm.v1.core.kv_cache_utils.KVCacheBlock`, a
    /// `__slots__` dataclass).
    pub block_type: &'static str,
    /// `KVCacheBlock.block_id` (int).
    pub block_id: &'static str,
    /// `KVCacheBlock.ref_cnt` (int: requests using the block; 0 while it is free).
    pub ref_cnt: &'static str,
    /// `Request` fields read per request.
    pub request: RequestNames,
}

/// `vllm.v1.request.Request` fields.
#[derive(Debug)]
pub struct RequestNames {
    /// `request_id` (str).
    pub request_id: &'static str,
    /// `status` (`RequestStatus`, an IntEnum).
    pub status: &'static str,
    /// `num_preemptions` (int, incremented by every preemption).
    pub num_preemptions: &'static str,
    /// `num_computed_tokens` (int).
    pub num_computed_tokens: &'static str,
    /// `num_prompt_tokens` (int).
    pub num_prompt_tokens: &'static str,
    /// `_output_token_ids` (list).
    pub output_token_ids: &'static str,
    /// `arrival_time` (float, `time.time()` seconds).
    pub arrival_time: &'static str,
    /// `RequestStatus` (an IntEnum) values and names.
    pub statuses: &'static [(i64, &'static str)],
}

/// Why a poll found nothing.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The interpreter version has no object layout.
    #[error("reading objects of CPython {0} is not supported")]
    Unsupported(String),
    /// No engine or scheduler frame is live in any thread.
    #[error(
        "no vLLM engine loop found in the Python frames ({0} frames seen in {1} threads; \
         looked for {2})"
    )]
    NoEngine(usize, usize, String),
    /// An attribute the table names does not exist.
    #[error("`{0}` not found on the {1} object (another vLLM version?)")]
    MissingName(&'static str, &'static str),
    /// A read failed.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The state changed, or the reads were held up, during every read attempt (dropped,
    /// counted).
    #[error(
        "the scheduler state changed (or its reads were held up) while it was read; poll dropped"
    )]
    Torn,
}

/// Polls one process's scheduler.
pub struct StatePoller {
    interp: Interpreter,
    names: &'static StateNames,
    mem: ProcessMemory,
    codes: CodeCache,
    scheduler: Option<u64>,
    /// The scheduler's limits, read once per scheduler object.
    limits: (Option<u64>, Option<u64>),
    attrs: AttrCache,
    requests: RequestTracker,
    blocks: BlockTracker,
    /// The last reason a poll found nothing (for metadata.json).
    pub last_error: Option<String>,
    /// How the scheduler object was found (frame and attribute), for metadata.json.
    pub found_via: Option<String>,
    /// Polls that returned a snapshot.
    pub polls: u64,
    /// Polls dropped because the state kept changing (or its reads were held up) while it
    /// was read.
    pub torn: u64,
    /// The scheduler object whose methods were last handed out to be watched.
    watched_for: Option<u64>,
    /// Which types are vLLM classes (kept across polls: the locals scan repeats until the
    /// scheduler is found, in every process of the tree).
    vllm_types: VllmTypes,
}

impl StatePoller {
    /// A poller for `interp`'s process.
    #[must_use]
    pub fn new(interp: Interpreter, names: &'static StateNames) -> Self {
        Self {
            mem: ProcessMemory::new(interp.pid),
            interp,
            names,
            codes: CodeCache::default(),
            scheduler: None,
            limits: (None, None),
            attrs: AttrCache::default(),
            requests: RequestTracker::default(),
            blocks: BlockTracker::default(),
            last_error: None,
            found_via: None,
            polls: 0,
            torn: 0,
            watched_for: None,
            vllm_types: VllmTypes::default(),
        }
    }

    /// The scheduler's methods to watch, once per scheduler object found (None when there
    /// is nothing new): the functions, the methods its class lacks, and how they were found.
    pub fn functions_to_watch(
        &mut self,
        names: &super::calls::CallNames,
    ) -> Option<Result<super::calls::FunctionWatch, String>> {
        let scheduler = self.scheduler.filter(|s| self.watched_for != Some(*s))?;
        self.watched_for = Some(scheduler);
        let ol = object_layout(self.interp.layout.version)?;
        let o = Objects::new(&self.mem, &self.interp.layout, ol).with_cache(&self.attrs);
        let found = super::calls::watched_functions(&o, &self.mem, &self.interp, names, scheduler);
        Some(match found {
            Ok((functions, missing)) => Ok(super::calls::FunctionWatch {
                pid: self.interp.pid,
                functions,
                missing,
                found_via: format!(
                    "methods of type(scheduler) at {scheduler:#x}, found as {}",
                    self.found_via.as_deref().unwrap_or("?")
                ),
            }),
            Err(e) => Err(crate::probes::error_chain(&e)),
        })
    }

    /// The source file of the scheduler's class (`type(scheduler).schedule.__code__
    /// .co_filename`), once the scheduler is known: where the process's vLLM package is,
    /// when no compiled vLLM extension is mapped to say so.
    #[must_use]
    pub fn scheduler_source(&mut self) -> Option<String> {
        let scheduler = self.scheduler?;
        let ol = object_layout(self.interp.layout.version)?;
        let o = Objects::new(&self.mem, &self.interp.layout, ol).with_cache(&self.attrs);
        let method = self.names.scheduler_frames.first()?.rsplit('.').next()?;
        let func = o.class_attr(o.type_of(scheduler).ok()?, method).ok()??;
        let code = o.function_code(func).ok()??;
        let first_line = self
            .mem
            .read_i32(field(code, self.interp.layout.code_first_line).ok()?)
            .ok()?;
        let layout = &self.interp.layout;
        let info = self
            .codes
            .get(
                &self.mem,
                layout,
                self.interp.code_type_addr,
                code,
                first_line,
            )
            .ok()?;
        Some(info.filename.clone())
    }

    /// Finds the scheduler object from the live frames; says through which frame.
    fn find_scheduler(
        types: &VllmTypes,
        interp: &Interpreter,
        names: &StateNames,
        mem: &ProcessMemory,
        codes: &mut CodeCache,
        o: &Objects<'_>,
    ) -> Result<(u64, String), StateError> {
        let frames = interp.live_frames(mem, codes);
        let is_vllm = |f: &crate::python::LiveFrame| f.code.filename.contains(names.package);
        for f in frames.iter().filter(|f| is_vllm(f)) {
            if names.engine_frames.contains(&f.code.qualname.as_str()) && f.first_local != 0 {
                if let Some(s) = o.attr(f.first_local, names.engine_scheduler)? {
                    let via = format!(
                        "self.{} of frame {} (thread state {:#x})",
                        names.engine_scheduler, f.code.qualname, f.tstate
                    );
                    return Ok((s, via));
                }
                return Err(StateError::MissingName(
                    names.engine_scheduler,
                    "engine core",
                ));
            }
        }
        let scheduler = frames
            .iter()
            .filter(|f| is_vllm(f))
            .find(|f| names.scheduler_frames.contains(&f.code.qualname.as_str()))
            .filter(|f| f.first_local != 0);
        if let Some(f) = scheduler {
            let via = format!(
                "self of frame {} (thread state {:#x})",
                f.code.qualname, f.tstate
            );
            return Ok((f.first_local, via));
        }
        if let Some(found) = Self::scheduler_in_locals(types, interp, names, mem, &frames, o) {
            return Ok(found);
        }
        let threads: std::collections::HashSet<u64> = frames.iter().map(|f| f.tstate).collect();
        let wanted = names
            .engine_frames
            .iter()
            .chain(names.scheduler_frames)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        Err(StateError::NoEngine(frames.len(), threads.len(), wanted))
    }

    /// The scheduler among the locals of any live frame, in any file: a local that is a
    /// vLLM scheduler, or a vLLM object whose `scheduler` attribute is one. This finds it
    /// whatever loop drives it (an engine before its busy loop starts, a TP>1 EngineCore's
    /// own loop, a plain script), as long as some live frame holds it.
    fn scheduler_in_locals(
        types: &VllmTypes,
        interp: &Interpreter,
        names: &StateNames,
        mem: &ProcessMemory,
        frames: &[crate::python::LiveFrame],
        o: &Objects<'_>,
    ) -> Option<(u64, String)> {
        for f in frames {
            for (i, local) in f.locals(mem, &interp.layout).into_iter().enumerate() {
                if local == 0 || !types.holds(o, local) {
                    continue;
                }
                if types.is_scheduler(o, local) {
                    let via = format!(
                        "local #{i} of frame {} (thread state {:#x})",
                        f.code.qualname, f.tstate
                    );
                    return Some((local, via));
                }
                let inner = o.attr(local, names.engine_scheduler).ok().flatten();
                if let Some(s) = inner.filter(|&s| types.is_scheduler(o, s)) {
                    let via = format!(
                        "local #{i}.{} of frame {} (thread state {:#x})",
                        names.engine_scheduler, f.code.qualname, f.tstate
                    );
                    return Some((s, via));
                }
            }
        }
        None
    }

    /// Reads the scheduler's queues and KV cache now, and with `requests` every request and
    /// the prefix-cached blocks. Each part is stamped with the time of its own read (the
    /// tracer may be descheduled in between on a busy machine).
    pub fn poll(&mut self, requests: bool) -> Result<Polled, StateError> {
        let (maj, min) = self.interp.layout.version;
        let ol = object_layout((maj, min))
            .ok_or_else(|| StateError::Unsupported(self.interp.version.clone()))?;
        let Self {
            interp,
            names,
            mem,
            codes,
            scheduler: known,
            limits,
            attrs,
            requests: tracker,
            blocks,
            polls,
            torn,
            found_via,
            vllm_types,
            ..
        } = self;
        let names: &StateNames = names;
        let o = Objects::new(&*mem, &interp.layout, ol).with_cache(attrs);
        let scheduler = match *known {
            // Still the same object? (a freed address would not be a Scheduler any more)
            Some(s) if o.type_name(s).is_ok_and(|t| t.contains("Scheduler")) => s,
            _ => {
                let (s, via) = Self::find_scheduler(vllm_types, interp, names, mem, codes, &o)?;
                *known = Some(s);
                *found_via = Some(via);
                *limits = (
                    optional_int(&o, s, names.max_num_running_reqs)?,
                    optional_int(&o, s, names.max_num_scheduled_tokens)?,
                );
                s
            }
        };
        let snap = match read_snapshot(&o, names, scheduler) {
            Ok(s) => s,
            Err(StateError::Torn) => {
                *torn += 1;
                return Err(StateError::Torn);
            }
            Err(e) => return Err(e),
        };
        *polls += 1;
        let snap = StateSnapshot {
            pid: interp.pid,
            max_num_seqs: limits.0,
            max_num_scheduled_tokens: limits.1,
            ..snap
        };
        let reqs = if requests {
            let ts_ns = crate::model::monotonic_ns();
            let r = tracker.poll(&o, names, scheduler)?;
            Some(RequestPoll {
                pid: interp.pid,
                ts_ns,
                ..r
            })
        } else {
            None
        };
        let blocks = if requests && snap.cached_blocks.is_some() {
            let pool = o
                .attr(scheduler, names.kv_cache_manager)?
                .and_then(|kvm| o.attr(kvm, names.block_pool).ok().flatten());
            pool.map(|pool| {
                let p = blocks.poll(&o, names, pool).unwrap_or_else(|e| BlockPoll {
                    ts_ns: crate::model::monotonic_ns(),
                    error: Some(crate::probes::error_chain(&e)),
                    ..BlockPoll::default()
                });
                BlockPoll {
                    pid: interp.pid,
                    ..p
                }
            })
        } else {
            None
        };
        Ok((snap, reqs, blocks))
    }
}

/// What one poll read: the scheduler's state, and with `requests` its request table and
/// its prefix-cached blocks.
pub type Polled = (StateSnapshot, Option<RequestPoll>, Option<BlockPoll>);

/// Whether types are classes of `vllm.` modules (their `__module__`), by type address:
/// a frame's locals are mostly of a few types, each looked up once.
#[derive(Default)]
struct VllmTypes(std::cell::RefCell<std::collections::HashMap<u64, bool>>);

impl VllmTypes {
    /// An instance of a class defined in a `vllm.` module.
    fn holds(&self, o: &Objects<'_>, obj: u64) -> bool {
        let Ok(ty) = o.type_of(obj) else {
            return false;
        };
        if let Some(&known) = self.0.borrow().get(&ty) {
            return known;
        }
        let vllm = o
            .class_attr(ty, "__module__")
            .ok()
            .flatten()
            .and_then(|m| o.str(m).ok())
            .is_some_and(|m| m.starts_with("vllm."));
        let mut map = self.0.borrow_mut();
        if map.len() >= 65_536 {
            map.clear();
        }
        map.insert(ty, vllm);
        vllm
    }

    /// A vLLM scheduler: a vLLM class whose name ends in `Scheduler`.
    fn is_scheduler(&self, o: &Objects<'_>, obj: u64) -> bool {
        self.holds(o, obj) && o.type_name(obj).is_ok_and(|t| t.ends_with("Scheduler"))
    }
}

/// The scheduler's fields as they were at one moment (pid and limits left empty), stamped
/// with that moment. The fields are read one after another while the target keeps changing
/// them: a snapshot counts only when two consecutive reads agree (nothing changed across
/// both), stamped between them, and only when both took at most `MAX_READ_SPAN_NS`, so
/// that every value was read within that of the stamp (a reader descheduled mid-read on a
/// busy machine would otherwise stamp values read long before). Otherwise it is retried,
/// and after that dropped as torn.
pub fn read_snapshot(
    o: &Objects<'_>,
    n: &StateNames,
    scheduler: u64,
) -> Result<StateSnapshot, StateError> {
    let mut start = crate::model::monotonic_ns();
    let mut previous = read_scheduler_again(o, n, scheduler)?;
    for _ in 0..MAX_READ_ATTEMPTS {
        let ts_ns = crate::model::monotonic_ns();
        let again = read_scheduler_again(o, n, scheduler)?;
        let end = crate::model::monotonic_ns();
        if let (Some(a), Some(b)) = (&previous, &again) {
            if a == b && end.saturating_sub(start) <= MAX_READ_SPAN_NS {
                return Ok(StateSnapshot { ts_ns, ..*b });
            }
        }
        previous = again;
        start = ts_ns;
    }
    Err(StateError::Torn)
}

/// One read of the scheduler's fields; None when an object changed under the read (a list
/// replaced and freed between reading the pointer and its header): retried like a change.
/// A missing name or an unsupported layout is final.
fn read_scheduler_again(
    o: &Objects<'_>,
    n: &StateNames,
    scheduler: u64,
) -> Result<Option<StateSnapshot>, StateError> {
    match read_scheduler(o, n, scheduler) {
        Ok(s) => Ok(Some(s)),
        Err(StateError::Object(ObjectError::Implausible(_))) => Ok(None),
        Err(StateError::Object(ObjectError::Read(e))) if !e.gone => Ok(None),
        Err(e) => Err(e),
    }
}

/// An int attribute that older or newer vLLMs may lack (None then).
fn optional_int(o: &Objects<'_>, obj: u64, name: &str) -> Result<Option<u64>, StateError> {
    Ok(match o.attr(obj, name)? {
        Some(v) => u64::try_from(o.int(v)?).ok(),
        None => None,
    })
}

/// Strs and enum member names of one process, by object address (request ids and status
/// members live as long as their request; a str's hash is checked at each use so that a
/// reused address is read again).
#[derive(Default)]
pub struct StrCache {
    strs: std::collections::HashMap<u64, (u64, String)>,
}

/// Entries kept at most before the cache starts over.
const MAX_CACHED_STRS: usize = 65_536;

impl StrCache {
    /// The str at `obj`.
    pub fn get(&mut self, o: &Objects<'_>, obj: u64) -> Result<String, StateError> {
        let hash = o.str_hash(obj)?;
        if let Some((h, s)) = self.strs.get(&obj) {
            if *h == hash {
                return Ok(s.clone());
            }
        }
        let s = o.str(obj)?;
        if self.strs.len() >= MAX_CACHED_STRS {
            self.strs.clear();
        }
        self.strs.insert(obj, (hash, s.clone()));
        Ok(s)
    }

    /// The `_name_` of the enum member at `obj` (members are never freed; the name's str
    /// address is the identity check).
    pub fn enum_name(&mut self, o: &Objects<'_>, obj: u64) -> Result<String, StateError> {
        if let Some((_, s)) = self.strs.get(&obj) {
            return Ok(s.clone());
        }
        let s = o.enum_name(obj)?;
        if self.strs.len() >= MAX_CACHED_STRS {
            self.strs.clear();
        }
        self.strs.insert(obj, (0, s.clone()));
        Ok(s)
    }
}

/// Reads to try before a snapshot whose fields keep changing is dropped as torn (a real
/// vLLM 0.26 engine changes its queues every ~2.5 ms: several tries are needed).
const MAX_READ_ATTEMPTS: usize = 6;

/// Longest two agreeing reads of a snapshot may take. Agreeing values held at both reads,
/// so at the stamp between them; the bound only limits a change and its undoing (A-B-A)
/// between the two. A pair takes about 0.1 ms on the CI VM and ~1 ms on a busy real
/// vLLM server's host (0.5 ms tore every poll there).
const MAX_READ_SPAN_NS: u64 = 2_000_000;

/// One pass over the scheduler's fields (pid, time and limits left empty).
pub fn read_scheduler(
    o: &Objects<'_>,
    n: &StateNames,
    scheduler: u64,
) -> Result<StateSnapshot, StateError> {
    let get = |obj: u64, name: &'static str, what: &'static str| -> Result<u64, StateError> {
        o.attr(obj, name)?
            .ok_or(StateError::MissingName(name, what))
    };
    let [running, waiting, requests, kvm, current_step] = o.attrs(
        scheduler,
        [
            n.running,
            n.waiting,
            n.requests,
            n.kv_cache_manager,
            n.current_step,
        ],
    )?;
    let len_of = |v: Option<u64>, name: &'static str| -> Result<Option<u64>, StateError> {
        Ok(Some(o.len(
            v.ok_or(StateError::MissingName(name, "scheduler"))?,
        )?))
    };
    let running = len_of(running, n.running)?;
    let waiting = len_of(waiting, n.waiting)?;
    let requests = len_of(requests, n.requests)?;
    let kvm = kvm.ok_or(StateError::MissingName(n.kv_cache_manager, "scheduler"))?;
    let current_step = match current_step {
        Some(v) => u64::try_from(o.int(v)?).ok(),
        None => None,
    };
    let pool = get(kvm, n.block_pool, "KV cache manager")?;
    let [total, queue, prefix_map] = o.attrs(
        pool,
        [n.num_gpu_blocks, n.free_block_queue, n.prefix_cache_map],
    )?;
    let total = o.int(total.ok_or(StateError::MissingName(n.num_gpu_blocks, "block pool"))?)?;
    let queue = queue.ok_or(StateError::MissingName(n.free_block_queue, "block pool"))?;
    let free = o.int(get(queue, n.num_free_blocks, "free block queue")?)?;
    let cached_blocks = match prefix_map {
        Some(m) => match o.attr(m, n.prefix_cache_dict)? {
            Some(d) => Some(o.len(d)?),
            None => None,
        },
        None => None,
    };
    Ok(StateSnapshot {
        pid: 0,
        ts_ns: 0,
        scheduler,
        running,
        waiting,
        requests,
        total_blocks: u64::try_from(total).ok(),
        free_blocks: u64::try_from(free).ok(),
        current_step,
        max_num_seqs: None,
        max_num_scheduled_tokens: None,
        prefix_cache_map: prefix_map,
        cached_blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_computed_as_vllm_does() {
        let s = StateSnapshot {
            pid: 1,
            ts_ns: 0,
            scheduler: 0,
            running: None,
            waiting: None,
            requests: None,
            total_blocks: Some(101),
            free_blocks: Some(25),
            current_step: None,
            max_num_seqs: None,
            max_num_scheduled_tokens: None,
            prefix_cache_map: None,
            cached_blocks: None,
        };
        assert!((s.kv_usage_pct().expect("usage") - 75.0).abs() < 1e-9);
        let empty = StateSnapshot {
            total_blocks: Some(1),
            ..s
        };
        assert_eq!(empty.kv_usage_pct(), None);
    }
}
