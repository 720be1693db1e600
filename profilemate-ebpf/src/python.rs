//! The CPython frame walker: takes the current thread's `PyThreadState` from `PY_THREADS`
//! (userspace reads the interpreter's thread list at each rescan), checks it still belongs
//! to the thread, then follows `_PyInterpreterFrame.previous` from the current frame,
//! recording (code object, instruction offset, first line) per frame.
//!
//! Every read is `bpf_probe_read_user` (read-only, fault-tolerant): a thread that is
//! mid-update yields a shorter stack flagged `READ_FAILED`, never a fault in the target.

use aya_ebpf::{
    helpers::generated::{bpf_get_attach_cookie, bpf_get_smp_processor_id},
    EbpfContext,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::perf_event,
    programs::PerfEventContext,
};
use profilemate_common::{
    python::{
        stack_flags, stack_reason, PyFrame, PyProcConfig, PyStackRecord, BREAKPOINT_FRAMES,
        FRAME_SCRATCH_WORDS, MAX_PY_FRAMES, NO_OFFSET,
    },
    record_kind, COUNTER_STACK_RING_FULL,
};

use aya_ebpf::helpers::bpf_probe_read_user_buf;

use crate::maps::{
    count, submit_flags, target_ids, BPF_RB_FORCE_WAKEUP, EVENTS, PY_PROCS, PY_THREADS,
};

/// Bytes of a frame copied per step: every header field the walker reads lies in the first
/// 80, and `_PyInterpreterFrame` is at least that long in every supported version.
const FRAME_BYTES: usize = 80;
/// Bytes copied when the frame's `localsplus[1]` is wanted too (it ends by byte 96 in every
/// supported version; userspace sends `NO_OFFSET` otherwise).
const FRAME_BYTES_WITH_ARG: usize = 96;
/// The frame copy lives in the record being written (`PyStackRecord::scratch`): uprobe
/// programs run preemptible and a sampling tick can run its walk inside one, so a per-CPU
/// buffer would be overwritten mid-walk.
const FRAME_COPY_WORDS: usize = FRAME_SCRATCH_WORDS;

/// The 8-byte field at byte offset `off` of the copied frame.
#[inline(always)]
fn field(copy: *const [u64; FRAME_COPY_WORDS], off: u16) -> u64 {
    // SAFETY: the index is masked into the buffer.
    unsafe { (*copy)[((off >> 3) as usize) & (FRAME_COPY_WORDS - 1)] }
}

/// The byte at offset `off` of the copied frame.
#[inline(always)]
fn field_byte(copy: *const [u64; FRAME_COPY_WORDS], off: u16) -> u8 {
    (field(copy, off & !7) >> ((off & 7) * 8)) as u8
}

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: read of target memory through the fault-tolerant helper.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The current thread's `PyThreadState *`, if userspace found one and it still belongs to
/// this thread.
#[inline(always)]
fn thread_state(cfg: &PyProcConfig, tid: u32) -> Option<u64> {
    // SAFETY: plain value lookup, copied out.
    let t = unsafe { PY_THREADS.get(&tid) }.copied()?;
    (read_u64(t.tstate + cfg.tstate_native_tid as u64)? == t.native_tid).then_some(t.tstate)
}

/// Walks the current thread's Python stack into one ring-buffer record.
#[inline(always)]
pub fn walk_stack(tgid: u32, tid: u32, reason: u16, api: u16, ts_ns: u64) {
    walk_stack_at_most(tgid, tid, reason, api, ts_ns, MAX_PY_FRAMES as u32);
}

/// `walk_stack` keeping at most `max_frames` frames (innermost first).
#[inline(always)]
fn walk_stack_at_most(tgid: u32, tid: u32, reason: u16, api: u16, ts_ns: u64, max_frames: u32) {
    // SAFETY: plain value lookup, copied out.
    let cfg = unsafe { PY_PROCS.get(&tgid) }.copied();
    if cfg.is_none() && reason != stack_reason::SAMPLE {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<PyStackRecord>(0) else {
        count(COUNTER_STACK_RING_FULL);
        return;
    };
    let rec = entry.as_mut_ptr();
    let mut flags = 0u16;
    let mut depth = 0u32;
    match cfg {
        None => flags |= stack_flags::NO_PYTHON,
        Some(cfg) => match thread_state(&cfg, tid) {
            None => flags |= stack_flags::NO_THREAD_STATE,
            Some(tstate) => {
                let (d, f) = walk_frames(&cfg, tstate, rec, max_frames);
                depth = d;
                flags |= f;
            }
        },
    }
    // SAFETY: `rec` points at the reserved record; header fields are written in place (the
    // frames past `depth` stay unwritten and are never read).
    unsafe {
        (*rec).kind = record_kind::PY_STACK;
        (*rec).reason = reason;
        (*rec).tgid = tgid;
        (*rec).tid = tid;
        (*rec).depth = depth as u16;
        (*rec).flags = flags;
        (*rec).ts_ns = ts_ns;
        (*rec).api = api;
        (*rec).cpu = bpf_get_smp_processor_id() as u16;
        (*rec).walk_ns = bpf_ktime_get_ns().saturating_sub(ts_ns).min(u64::from(u32::MAX)) as u32;
    }
    // No forced wake-up for stacks at CUDA calls and ticks: the reader thread drains every
    // 2 ms, soon enough to read a step's SchedulerOutput while the step holds it. A
    // breakpoint hit (a few per step) wakes it: the object its function was called with
    // (`update_from_output`'s SchedulerOutput) may live only as long as that call.
    let flags = if reason == stack_reason::BREAKPOINT {
        BPF_RB_FORCE_WAKEUP
    } else {
        submit_flags()
    };
    entry.submit(flags);
}

/// Follows the frame chain from `tstate`; returns (frames written, flags).
///
/// The loop body is kept nearly branch-free so the verifier's cost stays linear in
/// `MAX_PY_FRAMES`: frame i goes to slot i, a non-Python (shim) frame is written with
/// code 0 for userspace to drop, and the instruction offset is sent unchecked (userspace
/// validates it against the code object).
#[inline(always)]
fn walk_frames(
    cfg: &PyProcConfig,
    tstate: u64,
    rec: *mut PyStackRecord,
    max_frames: u32,
) -> (u32, u16) {
    let Some(mut frame) = read_u64(tstate + cfg.tstate_frame as u64) else {
        return (0, stack_flags::READ_FAILED);
    };
    if cfg.cframe_current_frame != NO_OFFSET && frame != 0 {
        match read_u64(frame + cfg.cframe_current_frame as u64) {
            Some(f) => frame = f,
            None => return (0, stack_flags::READ_FAILED),
        }
    }
    // SAFETY: `rec` is the reserved record; the scratch words are this walk's alone.
    let copy = unsafe { core::ptr::addr_of_mut!((*rec).scratch) };
    let arg_mask = 0u64.wrapping_sub(u64::from(cfg.frame_arg1 != NO_OFFSET));
    for i in 0..MAX_PY_FRAMES {
        if frame == 0 {
            return (i as u32, 0);
        }
        if i as u32 >= max_frames {
            return (i as u32, stack_flags::TRUNCATED);
        }
        // One read per frame into the scratch copy, then fields by offset. The copy that
        // includes the first arguments can run past the end of a frame at the very end of
        // its stack chunk: then the header alone is copied and the argument left unread.
        // (No range check on the offset here: it would let the compiler drop the index
        // mask that the verifier needs; userspace sends NO_OFFSET for an argument past
        // FRAME_BYTES_WITH_ARG, and that reads as 0.)
        let mut arg1 = 0;
        if read_frame(frame, copy, FRAME_BYTES_WITH_ARG) {
            arg1 = field(copy, cfg.frame_arg1) & cfg.code_pointer_mask & arg_mask;
        } else if !read_frame(frame, copy, FRAME_BYTES) {
            return (i as u32, stack_flags::READ_FAILED);
        }
        let previous = field(copy, cfg.frame_previous);
        let mut code = field(copy, cfg.frame_code) & cfg.code_pointer_mask;
        let instr = field(copy, cfg.frame_instr);
        if field_byte(copy, cfg.frame_owner) >= cfg.owner_skip_min {
            code = 0;
        }
        let first_line =
            unsafe { bpf_probe_read_user((code + cfg.code_first_line as u64) as *const i32) }
                .unwrap_or(-1);
        let instr_offset = instr.wrapping_sub(code + cfg.code_adaptive as u64) as u32;
        // SAFETY: `i` < MAX_PY_FRAMES; the record is reserved ring-buffer memory.
        unsafe {
            (*rec).frames[i] = PyFrame {
                code,
                instr_offset,
                first_line,
                arg1,
            };
        }
        frame = previous;
    }
    let flags = if frame != 0 {
        stack_flags::TRUNCATED
    } else {
        0
    };
    (MAX_PY_FRAMES as u32, flags)
}

/// Copies `len` bytes of the frame at `frame` into the per-CPU buffer; false on a fault.
#[inline(always)]
fn read_frame(frame: u64, copy: *mut [u64; FRAME_COPY_WORDS], len: usize) -> bool {
    // SAFETY: the destination is the per-CPU buffer (`len` <= its size); the source is
    // target memory read through the fault-tolerant helper.
    unsafe {
        bpf_probe_read_user_buf(
            frame as *const u8,
            core::slice::from_raw_parts_mut(copy.cast::<u8>(), len),
        )
    }
    .is_ok()
}

/// Perf sampling tick (cpu-clock, one event per CPU): walks the stack of the interrupted
/// thread when its process is a target.
#[perf_event]
pub fn py_sample(_ctx: PerfEventContext) -> u32 {
    // Ticks of other processes are the normal case here: not counted as filtered hits.
    let Some((tgid, tid)) = target_ids() else {
        return 0;
    };
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    walk_stack(tgid, tid, stack_reason::SAMPLE, 0, ts_ns);
    0
}

/// Hardware breakpoint on the first code unit of a watched Python function (one perf event
/// per watched thread and function; userspace opened them): the interpreter just fetched
/// the function's first instruction, so its frame is the current one. Walks a few frames:
/// the function with its first argument, and its callers.
#[perf_event]
pub fn py_breakpoint(ctx: PerfEventContext) -> u32 {
    let Some((tgid, tid)) = target_ids() else {
        return 0;
    };
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the helper reads the cookie of the link this program runs for.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u16;
    walk_stack_at_most(tgid, tid, stack_reason::BREAKPOINT, cookie, ts_ns, BREAKPOINT_FRAMES);
    0
}
