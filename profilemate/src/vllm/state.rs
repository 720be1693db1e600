//! vLLM's live scheduler state, read from outside: the engine object is found as `self` of
//! its busy-loop frame, then the scheduler, its queues and the KV cache block pool are read
//! by attribute name (read-only, `process_vm_readv`) at every poll.
//!
//! Names come from one table per vLLM version range; a name the target's vLLM lacks makes
//! that value absent (with the missing name reported), never a guess.

use serde::Serialize;

use crate::python::{
    code::CodeCache,
    objects::{object_layout, ObjectError, Objects},
    remote::ProcessMemory,
    Interpreter,
};

/// The names ProfileMate reads, for one vLLM version range.
#[derive(Debug)]
pub struct StateNames {
    /// vLLM versions the table was read from.
    pub versions: &'static str,
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
}

/// vLLM 0.33 (V1 engine core, V1/V2 scheduler).
pub static VLLM_0_33: StateNames = StateNames {
    versions: "0.33",
    engine_frames: &[
        "EngineCoreProc.run_busy_loop",
        "DPEngineCoreProc.run_busy_loop",
        "EngineCore.step_with_batch_queue",
        "EngineCore.step",
    ],
    scheduler_frames: &["Scheduler.schedule", "Scheduler.update_from_output"],
    engine_scheduler: "scheduler",
    running: "running",
    waiting: "waiting",
    requests: "requests",
    kv_cache_manager: "kv_cache_manager",
    block_pool: "block_pool",
    num_gpu_blocks: "num_gpu_blocks",
    free_block_queue: "free_block_queue",
    num_free_blocks: "num_free_blocks",
};

/// One poll of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StateSnapshot {
    /// Process.
    pub pid: u32,
    /// CLOCK_MONOTONIC ns when read.
    pub ts_ns: u64,
    /// `len(scheduler.running)`.
    pub running: Option<u64>,
    /// `len(scheduler.waiting)`.
    pub waiting: Option<u64>,
    /// `len(scheduler.requests)`.
    pub requests: Option<u64>,
    /// `block_pool.num_gpu_blocks`.
    pub total_blocks: Option<u64>,
    /// `block_pool.free_block_queue.num_free_blocks`.
    pub free_blocks: Option<u64>,
}

impl StateSnapshot {
    /// KV cache usage in percent, as vLLM computes it (`1 - free / (total - 1)`: block 0 is
    /// the reserved null block).
    #[must_use]
    pub fn kv_usage_pct(&self) -> Option<f64> {
        let (total, free) = (self.total_blocks?, self.free_blocks?);
        if total < 2 {
            return None;
        }
        Some(100.0 * (1.0 - free as f64 / (total - 1) as f64))
    }
}

/// Why a poll found nothing.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The interpreter version has no object layout.
    #[error("reading objects of CPython {0} is not supported")]
    Unsupported(String),
    /// No engine or scheduler frame is live in any thread.
    #[error("no vLLM engine loop found in the Python frames ({0} frames seen)")]
    NoEngine(usize),
    /// An attribute the table names does not exist.
    #[error("`{0}` not found on the {1} object (another vLLM version?)")]
    MissingName(&'static str, &'static str),
    /// A read failed.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The state changed during every read attempt (dropped, counted).
    #[error("the scheduler state changed while it was read; poll dropped")]
    Torn,
}

/// Polls one process's scheduler.
pub struct StatePoller {
    interp: Interpreter,
    names: &'static StateNames,
    mem: ProcessMemory,
    codes: CodeCache,
    scheduler: Option<u64>,
    /// The last reason a poll found nothing (for metadata.json).
    pub last_error: Option<String>,
    /// Polls that returned a snapshot.
    pub polls: u64,
    /// Polls dropped because the state kept changing while it was read.
    pub torn: u64,
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
            last_error: None,
            polls: 0,
            torn: 0,
        }
    }

    /// Finds the scheduler object from the live frames.
    fn find_scheduler(&mut self, o: &Objects<'_>) -> Result<u64, StateError> {
        let frames = self.interp.live_frames(&self.mem, &mut self.codes);
        let n = frames.len();
        let is_vllm = |f: &crate::python::LiveFrame| f.code.filename.contains("vllm/");
        for f in frames.iter().filter(|f| is_vllm(f)) {
            if self.names.engine_frames.contains(&f.code.qualname.as_str()) && f.first_local != 0 {
                if let Some(s) = o.attr(f.first_local, self.names.engine_scheduler)? {
                    return Ok(s);
                }
                return Err(StateError::MissingName(
                    self.names.engine_scheduler,
                    "engine core",
                ));
            }
        }
        frames
            .iter()
            .filter(|f| is_vllm(f))
            .find(|f| {
                self.names
                    .scheduler_frames
                    .contains(&f.code.qualname.as_str())
            })
            .map(|f| f.first_local)
            .filter(|s| *s != 0)
            .ok_or(StateError::NoEngine(n))
    }

    /// Reads the scheduler's queues and KV cache now.
    pub fn poll(&mut self, ts_ns: u64) -> Result<StateSnapshot, StateError> {
        let (maj, min) = self.interp.layout.version;
        let ol = object_layout((maj, min))
            .ok_or_else(|| StateError::Unsupported(self.interp.version.clone()))?;
        let layout = self.interp.layout.clone();
        let mem = self.mem;
        let o = Objects::new(&mem, &layout, ol);
        let scheduler = match self.scheduler {
            // Still the same object? (a freed address would not be a Scheduler any more)
            Some(s) if o.type_name(s).is_ok_and(|t| t.contains("Scheduler")) => s,
            _ => {
                let s = self.find_scheduler(&o)?;
                self.scheduler = Some(s);
                s
            }
        };
        // The fields are read one after another while the target keeps changing them: a
        // snapshot counts only when two consecutive reads agree (nothing changed across
        // both); otherwise it is retried, and after that dropped and counted as torn.
        let mut previous = read_once(&o, self.names, scheduler)?;
        for _ in 0..MAX_READ_ATTEMPTS {
            let again = read_once(&o, self.names, scheduler)?;
            if again == previous {
                self.polls += 1;
                return Ok(StateSnapshot {
                    pid: self.interp.pid,
                    ts_ns,
                    ..again
                });
            }
            previous = again;
        }
        self.torn += 1;
        Err(StateError::Torn)
    }
}

/// Reads to try before a snapshot whose fields keep changing is dropped as torn.
const MAX_READ_ATTEMPTS: usize = 4;

/// One pass over the scheduler's fields (pid and time left 0).
fn read_once(o: &Objects<'_>, n: &StateNames, scheduler: u64) -> Result<StateSnapshot, StateError> {
    let len_of = |name: &'static str| -> Result<Option<u64>, StateError> {
        match o.attr(scheduler, name)? {
            Some(v) => Ok(Some(o.len(v)?)),
            None => Err(StateError::MissingName(name, "scheduler")),
        }
    };
    let get = |obj: u64, name: &'static str, what: &'static str| -> Result<u64, StateError> {
        o.attr(obj, name)?
            .ok_or(StateError::MissingName(name, what))
    };
    let running = len_of(n.running)?;
    let waiting = len_of(n.waiting)?;
    let requests = len_of(n.requests)?;
    let kvm = get(scheduler, n.kv_cache_manager, "scheduler")?;
    let pool = get(kvm, n.block_pool, "KV cache manager")?;
    let total = o.int(get(pool, n.num_gpu_blocks, "block pool")?)?;
    let queue = get(pool, n.free_block_queue, "block pool")?;
    let free = o.int(get(queue, n.num_free_blocks, "free block queue")?)?;
    Ok(StateSnapshot {
        pid: 0,
        ts_ns: 0,
        running,
        waiting,
        requests,
        total_blocks: u64::try_from(total).ok(),
        free_blocks: u64::try_from(free).ok(),
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
            running: None,
            waiting: None,
            requests: None,
            total_blocks: Some(101),
            free_blocks: Some(25),
        };
        assert!((s.kv_usage_pct().expect("usage") - 75.0).abs() < 1e-9);
        let empty = StateSnapshot {
            total_blocks: Some(1),
            ..s
        };
        assert_eq!(empty.kv_usage_pct(), None);
    }
}
