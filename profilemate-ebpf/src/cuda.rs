//! Entry and return probes shared by every CUDA API symbol; the bpf cookie says which API.
//!
//! Both programs are tiny on purpose: a uprobe hit costs ~2 µs of target time already
//! (DESIGN §4), so the program does one map lookup, one ring-buffer reservation, and no loops.

use aya_ebpf::{
    helpers::generated::bpf_get_attach_cookie,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use profilemate_common::{
    cookie, record_kind, CudaCallRecord, COUNTER_FILTERED, COUNTER_OUT_READ_FAILED,
    COUNTER_RING_FULL, COUNTER_SLOTS, COUNTER_STASH_FULL, DEFAULT_RING_BYTES, FLAG_OUT_VALID,
    MAX_TARGETS, OUT_PARAM_SLOTS, WAKEUP_WATERMARK_BYTES,
};

/// `bpf_ringbuf_query` / `bpf_ringbuf_submit` flags (uapi/linux/bpf.h).
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map]
static TARGET_TGIDS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map]
static OUT_PARAMS: HashMap<u64, u64> = HashMap::with_max_entries(OUT_PARAM_SLOTS, 0);

#[inline(always)]
fn count(slot: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *p += 1 };
    }
}

/// Returns (tgid, tid) when the current process is a target.
#[inline(always)]
fn target_ids() -> Option<(u32, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: read-only lookup of a plain value.
    if unsafe { TARGET_TGIDS.get(&tgid) }.is_none() {
        count(COUNTER_FILTERED);
        return None;
    }
    Some((tgid, pid_tgid as u32))
}

#[inline(always)]
fn emit(kind: u16, api: u16, tgid: u32, tid: u32, flags: u32, args: [u64; 6]) {
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    match EVENTS.reserve::<CudaCallRecord>(0) {
        Some(mut entry) => {
            entry.write(CudaCallRecord {
                kind,
                api,
                tgid,
                tid,
                flags,
                ts_ns,
                args,
            });
            // Wake the reader only past the watermark: userspace drains on a timer anyway, and a
            // wake-up per record would add a scheduler round trip to every probed call.
            let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) > WAKEUP_WATERMARK_BYTES {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(flags);
        }
        None => count(COUNTER_RING_FULL),
    }
}

#[uprobe]
pub fn cuda_entry(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid)) = target_ids() else {
        return 0;
    };
    // SAFETY: the helper only reads the attach cookie of the running program.
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let api = cookie::api(c);
    let args = [
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<u64>(1).unwrap_or(0),
        ctx.arg::<u64>(2).unwrap_or(0),
        ctx.arg::<u64>(3).unwrap_or(0),
        ctx.arg::<u64>(4).unwrap_or(0),
        ctx.arg::<u64>(5).unwrap_or(0),
    ];
    if let Some(i) = cookie::out_arg(c) {
        let ptr = match i {
            0 => args[0],
            1 => args[1],
            2 => args[2],
            _ => args[3],
        };
        if OUT_PARAMS
            .insert(&cookie::stash_key(tid, api), &ptr, 0)
            .is_err()
        {
            count(COUNTER_STASH_FULL);
        }
    }
    emit(record_kind::ENTRY, api, tgid, tid, 0, args);
    0
}

#[uretprobe]
pub fn cuda_return(ctx: RetProbeContext) -> u32 {
    let Some((tgid, tid)) = target_ids() else {
        return 0;
    };
    // SAFETY: the helper only reads the attach cookie of the running program.
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let api = cookie::api(c);
    let ret: u64 = ctx.ret();
    let mut flags = 0;
    let mut out = 0u64;
    if cookie::out_arg(c).is_some() {
        let key = cookie::stash_key(tid, api);
        // SAFETY: plain u64 value copied out before the entry is removed.
        if let Some(ptr) = unsafe { OUT_PARAMS.get(&key) }.copied() {
            // Read-only copy from the target's memory; a fault just fails the read.
            match unsafe { bpf_probe_read_user(ptr as *const u64) } {
                Ok(v) => {
                    out = v;
                    flags |= FLAG_OUT_VALID;
                }
                Err(_) => count(COUNTER_OUT_READ_FAILED),
            }
            let _ = OUT_PARAMS.remove(&key);
        }
    }
    emit(
        record_kind::RETURN,
        api,
        tgid,
        tid,
        flags,
        [ret, out, 0, 0, 0, 0],
    );
    0
}
