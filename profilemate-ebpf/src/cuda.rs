//! Entry and return probes shared by every CUDA API symbol; the bpf cookie says which API.
//!
//! Both programs are small on purpose: a uprobe hit costs ~2 µs of target time already
//! (DESIGN §4). The entry probe walks the Python stack only at the APIs userspace marked in
//! `CUDA_STACKS` (step boundaries, syncs, graph launches, the first launch after a boundary).

use aya_ebpf::{
    helpers::generated::bpf_get_attach_cookie,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use profilemate_common::{
    cookie,
    python::{cuda_stack, stack_reason},
    record_kind, CudaCallRecord, COUNTER_OUT_READ_FAILED, COUNTER_RING_FULL, COUNTER_STASH_FULL,
    FLAG_OUT_VALID,
};

use crate::{
    maps::{
        count, submit_flags, target_ids_counted, CUDA_STACKS, EVENTS, LAUNCH_ARMED, OUT_PARAMS,
    },
    python::walk_stack,
};

#[inline(always)]
fn emit(kind: u16, api: u16, tgid: u32, tid: u32, flags: u32, ts_ns: u64, args: [u64; 6]) {
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
            entry.submit(submit_flags());
        }
        None => count(COUNTER_RING_FULL),
    }
}

/// Whether this entry walks the Python stack (and arms/disarms the thread's next launch).
#[inline(always)]
fn wants_stack(api: u16, tid: u32) -> bool {
    match CUDA_STACKS.get(api as u32).copied() {
        Some(cuda_stack::ALWAYS) => {
            let _ = LAUNCH_ARMED.insert(&tid, &1, 0);
            true
        }
        Some(cuda_stack::FIRST_AFTER_BOUNDARY) => {
            // SAFETY: plain value lookup.
            if unsafe { LAUNCH_ARMED.get(&tid) }.is_some() {
                let _ = LAUNCH_ARMED.remove(&tid);
                true
            } else {
                false
            }
        }
        _ => false,
    }
}

#[uprobe]
pub fn cuda_entry(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid)) = target_ids_counted() else {
        return 0;
    };
    let ts_ns = unsafe { bpf_ktime_get_ns() };
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
    emit(record_kind::ENTRY, api, tgid, tid, 0, ts_ns, args);
    if wants_stack(api, tid) {
        walk_stack(tgid, tid, stack_reason::CUDA_CALL, api, ts_ns);
    }
    0
}

#[uretprobe]
pub fn cuda_return(ctx: RetProbeContext) -> u32 {
    let Some((tgid, tid)) = target_ids_counted() else {
        return 0;
    };
    let ts_ns = unsafe { bpf_ktime_get_ns() };
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
        ts_ns,
        [ret, out, 0, 0, 0, 0],
    );
    0
}
