//! Every map the programs share, and the small helpers around them (target filter, drop
//! counters, ring-buffer submit policy).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use profilemate_common::{
    python::{PyProcConfig, PyThreadRef, UsdtSpec, MAX_PY_PROCS, MAX_PY_THREADS, USDT_SPEC_SLOTS},
    API_COUNT, COUNTER_FILTERED, COUNTER_SLOTS, DEFAULT_RING_BYTES, MAX_TARGETS, OUT_PARAM_SLOTS,
    WAKEUP_WATERMARK_BYTES,
};

/// `bpf_ringbuf_query` / `bpf_ringbuf_submit` flags (uapi/linux/bpf.h).
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
pub const BPF_RB_FORCE_WAKEUP: u64 = 2;

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map]
pub static TARGET_TGIDS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map]
pub static OUT_PARAMS: HashMap<u64, u64> = HashMap::with_max_entries(OUT_PARAM_SLOTS, 0);

#[map]
pub static PY_PROCS: HashMap<u32, PyProcConfig> = HashMap::with_max_entries(MAX_PY_PROCS, 0);

#[map]
pub static PY_THREADS: HashMap<u32, PyThreadRef> = HashMap::with_max_entries(MAX_PY_THREADS, 0);

#[map]
pub static CUDA_STACKS: Array<u32> = Array::with_max_entries(API_COUNT as u32, 0);

#[map]
pub static USDT_SPECS: Array<UsdtSpec> = Array::with_max_entries(USDT_SPEC_SLOTS, 0);

/// Threads whose next kernel launch walks the stack (armed at step-boundary calls).
#[map]
pub static LAUNCH_ARMED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *p += 1 };
    }
}

/// (tgid, tid) of the current thread when its process is a target.
#[inline(always)]
pub fn target_ids() -> Option<(u32, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: read-only lookup of a plain value.
    if unsafe { TARGET_TGIDS.get(&tgid) }.is_none() {
        return None;
    }
    Some((tgid, pid_tgid as u32))
}

/// Submit flags: wake the reader only past the watermark. Userspace drains on a timer
/// anyway, and a wake-up per record would add a scheduler round trip to every probed call.
#[inline(always)]
pub fn submit_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) > WAKEUP_WATERMARK_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// `target_ids`, counting the filtered hit (probe hits in other processes mapping the same
/// library file).
#[inline(always)]
pub fn target_ids_counted() -> Option<(u32, u32)> {
    let ids = target_ids();
    if ids.is_none() {
        count(COUNTER_FILTERED);
    }
    ids
}
