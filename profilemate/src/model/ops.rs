//! The vLLM CPU operations a Python stack is attributed to, and the two names of a frame the
//! attribution looks at.
//!
//! Owns the vocabulary; which frames mean which operation (the per-version rule tables and
//! the classifier) is `vllm::ops`'s.

use serde::Serialize;

/// A vLLM CPU operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `Scheduler.schedule`.
    Schedule,
    /// `Scheduler.update_from_output`.
    UpdateFromOutput,
    /// Input preparation in the model runner (batch state, attention metadata, copies).
    PrepareInputs,
    /// Launching the model forward (eager modules, CUDA graph replay).
    ModelForward,
    /// Sampling.
    Sampling,
    /// Multimodal encoder.
    Encoder,
    /// Draft model proposals (speculative decoding).
    Draft,
    /// Output bookkeeping in the engine core (async output, post-step, output sockets).
    Bookkeeping,
    /// Detokenization and output processing in the API server.
    Detokenize,
    /// The engine waiting on worker processes.
    WaitWorker,
    /// Waiting for work (engine input queue, worker message queue).
    Idle,
    /// Engine step plumbing not covered above (executor dispatch, the step loop).
    EngineStep,
    /// Python code outside every vLLM operation.
    OtherPython,
    /// A thread without Python frames (native threads, C++ work).
    Native,
}

impl Operation {
    /// Every operation, in report order.
    pub const ALL: [Operation; 14] = [
        Self::Schedule,
        Self::PrepareInputs,
        Self::ModelForward,
        Self::Sampling,
        Self::Encoder,
        Self::Draft,
        Self::Bookkeeping,
        Self::UpdateFromOutput,
        Self::Detokenize,
        Self::WaitWorker,
        Self::Idle,
        Self::EngineStep,
        Self::OtherPython,
        Self::Native,
    ];

    /// The CSV spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::UpdateFromOutput => "update_from_output",
            Self::PrepareInputs => "prepare_inputs",
            Self::ModelForward => "model_forward",
            Self::Sampling => "sampling",
            Self::Encoder => "encoder",
            Self::Draft => "draft",
            Self::Bookkeeping => "bookkeeping",
            Self::Detokenize => "detokenize",
            Self::WaitWorker => "wait_worker",
            Self::Idle => "idle",
            Self::EngineStep => "engine_step",
            Self::OtherPython => "other_python",
            Self::Native => "native",
        }
    }

    /// Whether this is vLLM work (not idle, not unattributed).
    #[must_use]
    pub fn is_vllm_work(self) -> bool {
        !matches!(self, Self::Idle | Self::OtherPython | Self::Native)
    }
}

/// A frame as the matcher sees it.
pub trait FrameName {
    /// `co_filename`.
    fn filename(&self) -> &str;
    /// `co_qualname`.
    fn qualname(&self) -> &str;
}
