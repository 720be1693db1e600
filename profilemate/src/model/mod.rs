//! The data model every stage passes on: the correlated records, the batch and scheduler
//! payloads, the stack reason, the vLLM operation vocabulary, code-object names, and the
//! monotonic clock with its session time base.
//!
//! A leaf: it imports nothing else from this crate, so every other module can depend on it
//! and the module graph stays acyclic (`cargo xtask modgraph` checks). It owns types and
//! their pure helpers, never I/O, reading the target or correlating.

pub mod batch;
pub mod clock;
pub mod code;
pub mod losses;
pub mod ops;
pub mod records;
pub mod scheduler;
pub mod stack;

pub use batch::{GraphDescriptor, NewRequest, Phase, StepBatch};
pub use clock::{monotonic_ns, ms, TimeBase};
pub use code::CodeInfo;
pub use losses::{GcLost, Lost};
pub use ops::{FrameName, Operation};
pub use records::{
    ApiCall, Completion, Correlated, GcPause, GraphCapture, GraphInstantiation, GraphReplay,
    PyFrameInfo, PyStack, Step,
};
pub use scheduler::{
    BlockEviction, BlockPoll, CallRole, RequestPoll, RequestState, SchedulerCall, StateSnapshot,
};
pub use stack::StackReason;
