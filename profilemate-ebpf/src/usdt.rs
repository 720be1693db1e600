//! One program for every USDT probe: the bpf cookie is the probe's slot in `USDT_SPECS`,
//! which says which probe it is and where its arguments live (decoded from the
//! `.note.stapsdt` argument specs by userspace).

use aya_ebpf::{
    helpers::generated::bpf_get_attach_cookie,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel_buf, bpf_probe_read_user},
    macros::uprobe,
    programs::ProbeContext,
    EbpfContext,
};
use profilemate_common::{
    python::{usdt_location, UsdtArgSpec, UsdtRecord, USDT_MAX_ARGS},
    record_kind, COUNTER_USDT_NO_SPEC, COUNTER_USDT_RING_FULL,
};

use aya_ebpf::{macros::map, maps::PerCpuArray};

use crate::maps::{count, submit_flags, target_ids_counted, EVENTS, USDT_SPECS};

/// `struct pt_regs` on x86-64 is 21 words; the copy is 32 so that any index masked with 31
/// stays inside it (the verifier rejects variable-offset reads it cannot bound).
const REGS_WORDS: usize = 32;
const PT_REGS_BYTES: u32 = 21 * 8;

/// Per-CPU copy of the probed thread's registers.
#[map]
static REGS_COPY: PerCpuArray<[u64; REGS_WORDS]> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn extend(raw: u64, size: u8, signed: bool) -> u64 {
    let bits = (size as u32).saturating_mul(8);
    if bits == 0 || bits >= 64 {
        return raw;
    }
    let shift = 64 - bits;
    if signed {
        (((raw << shift) as i64) >> shift) as u64
    } else {
        (raw << shift) >> shift
    }
}

/// The value of one argument, or None when it could not be read.
#[inline(always)]
fn arg_value(spec: &UsdtArgSpec, regs: *const [u64; REGS_WORDS]) -> Option<u64> {
    // SAFETY: `regs` points at the per-CPU map value; the index is masked into it.
    let reg = || Some(unsafe { (*regs)[((spec.reg_offset >> 3) as usize) & (REGS_WORDS - 1)] });
    let raw = match spec.location {
        usdt_location::REGISTER => reg()?,
        usdt_location::MEMORY => {
            let addr = reg()?.wrapping_add(spec.value as u64);
            // SAFETY: read of target memory through the fault-tolerant helper; 8 bytes, then
            // truncated to the argument's size below (little-endian).
            unsafe { bpf_probe_read_user(addr as *const u64) }.ok()?
        }
        usdt_location::CONSTANT => spec.value as u64,
        _ => return Some(0),
    };
    Some(extend(raw, spec.size, spec.signed != 0))
}

#[uprobe]
pub fn usdt_hit(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid)) = target_ids_counted() else {
        return 0;
    };
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the helper only reads the attach cookie of the running program.
    let slot = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let Some(spec) = USDT_SPECS.get(slot).copied() else {
        count(COUNTER_USDT_NO_SPEC);
        return 0;
    };
    if spec.probe == 0 {
        count(COUNTER_USDT_NO_SPEC);
        return 0;
    }
    let Some(regs) = REGS_COPY.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: copies the probed thread's saved user registers (the program's context) into
    // the per-CPU buffer, which nothing else uses while this program runs on this CPU.
    if unsafe {
        bpf_probe_read_kernel_buf(
            ctx.regs as *const u8,
            core::slice::from_raw_parts_mut(regs.cast::<u8>(), PT_REGS_BYTES as usize),
        )
    }
    .is_err()
    {
        count(COUNTER_USDT_NO_SPEC);
        return 0;
    }
    let mut args = [0u64; USDT_MAX_ARGS];
    let mut failed = 0u32;
    for (i, a) in spec.args.iter().enumerate() {
        if i >= spec.nargs as usize {
            break;
        }
        match arg_value(a, regs) {
            Some(v) => args[i] = v,
            None => failed |= 1 << i,
        }
    }
    match EVENTS.reserve::<UsdtRecord>(0) {
        Some(mut entry) => {
            entry.write(UsdtRecord {
                kind: record_kind::USDT,
                probe: spec.probe,
                tgid,
                tid,
                failed_args: failed,
                ts_ns,
                args,
            });
            entry.submit(submit_flags());
        }
        None => count(COUNTER_USDT_RING_FULL),
    }
    0
}
