//! The wire ABI between `profilemate-ebpf` (kernel side) and `profilemate` (userspace).
//!
//! Owns: every record that crosses the BPF ring buffer, the map names and slot indices, the
//! bpf-cookie encoding, and the table of probed CUDA API functions. Owns no logic beyond
//! `const fn` lookups: both sides compile this crate, the kernel side without `std`.
#![cfg_attr(not(test), no_std)]

mod api;
pub mod python;
pub use api::{ApiId, ApiSpec, Library, OpClass, API_COUNT};

/// Name of the BPF ring buffer that carries every record.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU counter array (`u64` per slot, see `COUNTER_*`).
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the hash map `tgid -> 1` of processes the programs report on.
pub const TARGETS_MAP: &str = "TARGET_TGIDS";
/// Name of the hash map `(tid << 32 | api) -> user pointer` that carries an out-parameter
/// address from a function's entry to its return probe.
pub const OUT_PARAMS_MAP: &str = "OUT_PARAMS";

/// Default ring buffer size in bytes (power of two, multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;
/// Unread bytes in the ring buffer past which a submit wakes the reader. Below it the
/// reader finds the records on its next timer tick (`DRAIN_TICK_MS` in userspace).
pub const WAKEUP_WATERMARK_BYTES: u64 = 1 << 20;
/// Capacity of `TARGET_TGIDS`.
pub const MAX_TARGETS: u32 = 4096;
/// Capacity of `OUT_PARAMS`: one slot per thread inside an out-parameter call.
pub const OUT_PARAM_SLOTS: u32 = 16384;

/// Counter slot: a CUDA call record was lost because the ring buffer was full.
pub const COUNTER_RING_FULL: u32 = 0;
/// Counter slot: an out-parameter address could not be stashed (`OUT_PARAMS` full).
pub const COUNTER_STASH_FULL: u32 = 1;
/// Counter slot: the out-parameter value could not be read at return.
pub const COUNTER_OUT_READ_FAILED: u32 = 2;
/// Counter slot: probe hits from processes outside `TARGET_TGIDS` (filtered, not lost).
pub const COUNTER_FILTERED: u32 = 3;
/// Counter slot: a Python stack record was lost because the ring buffer was full.
pub const COUNTER_STACK_RING_FULL: u32 = 4;
/// Counter slot: a USDT record was lost because the ring buffer was full.
pub const COUNTER_USDT_RING_FULL: u32 = 5;
/// Counter slot: a USDT probe fired whose cookie has no spec (attach/spec mismatch).
pub const COUNTER_USDT_NO_SPEC: u32 = 6;
/// Number of counter slots.
pub const COUNTER_SLOTS: u32 = 7;

/// Record kinds: the first `u16` of every ring-buffer record. Plain `u16` constants rather
/// than an enum: a value read from shared memory must never be transmuted into an enum.
pub mod record_kind {
    /// A probed function was entered; `args` holds the six integer argument registers.
    pub const ENTRY: u16 = 1;
    /// A probed function returned; `args[0]` is the return value, `args[1]` the out-parameter
    /// value when `FLAG_OUT_VALID` is set.
    pub const RETURN: u16 = 2;
    /// A `python::PyStackRecord`.
    pub const PY_STACK: u16 = 3;
    /// A `python::UsdtRecord`.
    pub const USDT: u16 = 4;
}

/// `CudaCallRecord::flags`: `args[1]` holds the value read through the out-parameter.
pub const FLAG_OUT_VALID: u32 = 1;

/// One CUDA API call event. Fixed size, 8-byte aligned, explicit padding: the ring buffer
/// reserves exactly `size_of::<CudaCallRecord>()` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaCallRecord {
    /// One of `record_kind::*`.
    pub kind: u16,
    /// `ApiId as u16`.
    pub api: u16,
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Entry: rdi, rsi, rdx, rcx, r8, r9. Return: [rax, out value, 0, 0, 0, 0].
    pub args: [u64; 6],
}

const _: () = assert!(core::mem::size_of::<CudaCallRecord>() == 72);
const _: () = assert!(core::mem::align_of::<CudaCallRecord>() == 8);

#[cfg(feature = "user")]
// SAFETY: repr(C), only integer fields, no implicit padding (asserted size), any bit pattern valid.
unsafe impl aya::Pod for CudaCallRecord {}

/// The bpf cookie attached with every probe: which API it is and where its out-parameter is.
pub mod cookie {
    /// Low 16 bits: `ApiId`.
    pub const API_MASK: u64 = 0xffff;
    /// Bits 16..20: 1 + index of the pointer argument to read at return (0: none).
    pub const OUT_ARG_SHIFT: u64 = 16;
    /// Mask of the out-argument field once shifted down.
    pub const OUT_ARG_MASK: u64 = 0xf;

    /// Encodes a cookie for `api` whose out-parameter is argument `out_arg` (if any).
    #[must_use]
    pub const fn encode(api: u16, out_arg: Option<u8>) -> u64 {
        let out = match out_arg {
            Some(i) => (i as u64) + 1,
            None => 0,
        };
        (api as u64) | (out << OUT_ARG_SHIFT)
    }

    /// The `ApiId` value of a cookie.
    #[must_use]
    pub const fn api(cookie: u64) -> u16 {
        (cookie & API_MASK) as u16
    }

    /// The out-parameter argument index of a cookie, if any.
    #[must_use]
    pub const fn out_arg(cookie: u64) -> Option<usize> {
        let v = (cookie >> OUT_ARG_SHIFT) & OUT_ARG_MASK;
        if v == 0 {
            None
        } else {
            Some((v - 1) as usize)
        }
    }

    /// Key of the out-parameter stash for a thread and API.
    #[must_use]
    pub const fn stash_key(tid: u32, api: u16) -> u64 {
        ((tid as u64) << 32) | api as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_round_trips() {
        for api in 0..API_COUNT as u16 {
            for out in [None, Some(0u8), Some(1), Some(5)] {
                let c = cookie::encode(api, out);
                assert_eq!(cookie::api(c), api);
                assert_eq!(cookie::out_arg(c), out.map(usize::from));
            }
        }
    }
}
