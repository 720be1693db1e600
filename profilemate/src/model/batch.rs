//! The batch payloads: what a step's `SchedulerOutput` said (`StepBatch`) and which CUDA
//! graph descriptor a replay used.
//!
//! Owns the data only; reading them from the target is `vllm::batch`'s.

use serde::Serialize;

use super::scheduler::StateSnapshot;

/// What kind of work a step's batch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Every scheduled request is computing prompt tokens.
    Prefill,
    /// Every scheduled request generates (one token, plus speculative ones).
    Decode,
    /// Both.
    Mixed,
    /// No tokens scheduled.
    Empty,
}

impl Phase {
    /// The CSV/JSON spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prefill => "prefill",
            Self::Decode => "decode",
            Self::Mixed => "mixed",
            Self::Empty => "empty",
        }
    }
}

/// One step's batch, as its `SchedulerOutput` said.
#[derive(Clone, Debug, PartialEq)]
pub struct StepBatch {
    /// Process that read it (the model runner's).
    pub pid: u32,
    /// Thread whose stack carried it.
    pub tid: u32,
    /// The walked CUDA call that carried it.
    pub ts_ns: u64,
    /// Requests scheduled (`len(num_scheduled_tokens)`).
    pub num_reqs: u64,
    /// `total_num_scheduled_tokens`.
    pub num_tokens: u64,
    /// Requests scheduled for the first time.
    pub new_reqs: u64,
    /// Requests scheduled before (running, or resumed).
    pub cached_reqs: u64,
    /// Cached requests resumed after a preemption.
    pub resumed_reqs: u64,
    /// Requests computing prompt tokens (new, resumed, or continuing a chunked prefill).
    pub prefill_reqs: u64,
    /// Requests generating.
    pub decode_reqs: u64,
    /// Tokens of the prefill requests.
    pub prefill_tokens: u64,
    /// Tokens of the decode requests (speculative tokens included).
    pub decode_tokens: u64,
    /// Speculative draft tokens scheduled.
    pub spec_tokens: u64,
    /// Multimodal encoder inputs scheduled.
    pub encoder_inputs: u64,
    /// (request id, tokens scheduled) per request.
    pub scheduled: Vec<(String, u64)>,
    /// The new requests.
    pub new_requests: Vec<NewRequest>,
    /// Ids of the resumed requests.
    pub resumed_req_ids: Vec<String>,
    /// Requests preempted since the previous step (`preempted_req_ids`).
    pub preempted_req_ids: Vec<String>,
    /// Requests finished since the previous step (`finished_req_ids`).
    pub finished_req_ids: Vec<String>,
    /// Prefill, decode, mixed.
    pub phase: Phase,
    /// The scheduler's queues and KV cache read right after (same process only).
    pub scheduler: Option<StateSnapshot>,
}

/// The CUDA graph descriptor a replay used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphDescriptor {
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// The walked `cudaGraphLaunch` (equal to the replay's launch time).
    pub ts_ns: u64,
    /// `CUDAGraphMode` name (FULL, PIECEWISE, ...).
    pub mode: String,
    /// Padded tokens the graph was captured for.
    pub num_tokens: u64,
    /// Padded requests (None: any).
    pub num_reqs: Option<u64>,
    /// Uniform tokens per request (None: not uniform).
    pub uniform: Option<u64>,
    /// Active LoRA adapters.
    pub num_active_loras: u64,
}

/// One request scheduled for the first time (or, with model runner V2, resumed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRequest {
    /// `req_id`.
    pub id: String,
    /// `len(prompt_token_ids)`; None when the prompt came as embeddings.
    pub prompt_tokens: Option<u64>,
}
