//! Why a Python stack was walked: the reason every stack record carries from the ring buffer
//! to the profilers.
//!
//! Owns the tag only; decoding the ring record is `probes::drain`'s.

use profilemate_common::ApiId;

/// Why a Python stack was walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackReason {
    /// A sampling tick.
    Sample,
    /// Entry of this CUDA API.
    CudaCall(ApiId),
    /// Entry of the watched Python function of this slot (a hardware breakpoint hit).
    Breakpoint(u16),
}
