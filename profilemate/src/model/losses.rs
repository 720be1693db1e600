//! What the session lost on the way, as far as a profiler's summary must say it (the full
//! account is the session's metadata report).
//!
//! Owns the figures handed to profilers; counting them is the reader's, the pipeline's and
//! the kernel programs'.

/// GC (USDT) events lost between the kernel and `gc_pauses.csv`, by where.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, PartialEq, Eq)]
pub struct GcLost {
    /// The kernel's ring buffer was full.
    pub ring_buffer_full: u64,
    /// The userspace queue was full.
    pub queue_full: u64,
    /// Read but not processed before the stop.
    pub unprocessed_at_stop: u64,
}

impl GcLost {
    /// All of them.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.ring_buffer_full + self.queue_full + self.unprocessed_at_stop
    }
}

/// Everything a profiler is told about the session's losses before it finishes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// GC (USDT) events lost.
    pub gc: GcLost,
}
