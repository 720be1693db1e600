//! The scheduler payloads: a poll of vLLM's queues and KV cache (`StateSnapshot`), a poll of
//! its request table (`RequestPoll`), a watched scheduler method's entry (`SchedulerCall`)
//! and a poll of the prefix-cached KV blocks (`BlockPoll`).
//!
//! Owns the data only; polling and reading are `vllm::state`, `vllm::requests`,
//! `vllm::calls` and `vllm::blocks`'s.

use serde::Serialize;

/// One poll of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StateSnapshot {
    /// Process.
    pub pid: u32,
    /// CLOCK_MONOTONIC ns when read.
    pub ts_ns: u64,
    /// Address of the scheduler object (for per-step reads of the same process).
    #[serde(skip)]
    pub scheduler: u64,
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
    /// `scheduler.current_step` (schedule() calls so far).
    pub current_step: Option<u64>,
    /// `scheduler.max_num_running_reqs` (max_num_seqs).
    pub max_num_seqs: Option<u64>,
    /// `scheduler.max_num_scheduled_tokens`.
    pub max_num_scheduled_tokens: Option<u64>,
    /// Address of the prefix cache map (a new one after every prefix cache reset).
    #[serde(skip)]
    pub prefix_cache_map: Option<u64>,
    /// Cached blocks in the prefix cache map.
    pub cached_blocks: Option<u64>,
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

/// One request as a poll saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestState {
    /// `request_id`.
    pub id: String,
    /// `RequestStatus` member name (`RUNNING`, `PREEMPTED`, `FINISHED_STOPPED`, ...).
    pub status: String,
    /// `num_preemptions`.
    pub num_preemptions: u64,
    /// `num_computed_tokens`.
    pub num_computed_tokens: u64,
    /// `num_prompt_tokens`.
    pub num_prompt_tokens: u64,
    /// `len(_output_token_ids)`.
    pub num_output_tokens: u64,
    /// `arrival_time` (Unix seconds).
    pub arrival_time: Option<f64>,
}

/// What one poll of the scheduler's requests found, against the previous poll.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestPoll {
    /// Process.
    pub pid: u32,
    /// CLOCK_MONOTONIC ns when read.
    pub ts_ns: u64,
    /// Requests seen for the first time or changed since they were last read.
    pub changed: Vec<RequestState>,
    /// Ids of requests gone from the scheduler since the previous poll (vLLM drops a
    /// request from `requests` when it finishes). Only a complete read of the table says
    /// so: a table resized under the read reports none that poll.
    pub gone: Vec<String>,
    /// Requests the scheduler held.
    pub held: u64,
    /// Requests whose fields were read this poll (batched or in full).
    pub read: u64,
    /// Of those, read in full by name (new, or their batched read did not hold).
    pub read_in_full: u64,
    /// New requests left for a later poll (the per-poll bound was reached).
    pub deferred: u64,
    /// Requests that could not be read consistently (retried next poll).
    pub unreadable: u64,
}

/// What a watched method's entry means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallRole {
    /// `Scheduler.schedule`: a step is being scheduled.
    Schedule,
    /// `Scheduler.update_from_output(scheduler_output, model_runner_output)`: a step's
    /// output is processed.
    UpdateFromOutput,
    /// `Scheduler._preempt_request(request, ...)`.
    Preempt,
    /// `Scheduler.add_request(request)`.
    AddRequest,
}

/// One watched call.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerCall {
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// When the function was entered (CLOCK_MONOTONIC ns).
    pub ts_ns: u64,
    /// What was called.
    pub role: CallRole,
    /// The request of a preemption or an arrival.
    pub request_id: Option<String>,
    /// Why a request was preempted (from the caller).
    pub reason: Option<&'static str>,
    /// `Request.arrival_time` of an arrival (`time.time()` seconds).
    pub arrival_time: Option<f64>,
}

/// One evicted cached block, with the bounds of each time (CLOCK_MONOTONIC ns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockEviction {
    /// `KVCacheBlock.block_id` (None: not decoded within the per-poll bound).
    pub block_id: Option<i64>,
    /// The first poll that saw it cached (None: cached before the first poll).
    pub born_ns: Option<u64>,
    /// The poll before: the birth lies after it.
    pub born_after_ns: u64,
    /// The last read that saw it in use (`ref_cnt > 0`), or `born_ns` when none did.
    pub last_used_ns: Option<u64>,
    /// The read after that (or the eviction): its last use ended before it.
    pub last_used_until_ns: u64,
    /// The poll that saw it gone.
    pub evicted_ns: u64,
    /// The last poll that saw it cached: the eviction lies after it.
    pub evicted_after_ns: u64,
    /// Still in the map, but only under other keys (evicted and cached again between two
    /// polls).
    pub rehashed: bool,
}

/// What one poll of the cached blocks found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BlockPoll {
    /// Process.
    pub pid: u32,
    /// CLOCK_MONOTONIC ns of the map read.
    pub ts_ns: u64,
    /// Blocks seen evicted since the previous poll.
    pub evictions: Vec<BlockEviction>,
    /// The map object was replaced (a prefix cache reset): the blocks cached before left
    /// without eviction rows.
    pub reset: bool,
    /// Cached blocks now.
    pub cached: u64,
    /// Blocks first seen cached this poll.
    pub born: u64,
    /// Blocks cached and evicted since the previous poll, never seen (exact unless
    /// `unseen_is_lower_bound`).
    pub unseen: u64,
    /// The table was resized in between: `unseen` is a lower bound.
    pub unseen_is_lower_bound: bool,
    /// `ref_cnt`s read this poll.
    pub refs_read: u64,
    /// Cached blocks whose `ref_cnt` waited for a later poll (the per-poll bound).
    pub refs_deferred: u64,
    /// The map's head was unchanged: its entries were not read again.
    pub map_unchanged: bool,
    /// Entry slots read (0 when unchanged).
    pub slots_read: u64,
    /// The map changed during both reads of it: nothing concluded this poll.
    pub torn: bool,
    /// Why the blocks could not be followed (None: they were).
    pub error: Option<String>,
}
