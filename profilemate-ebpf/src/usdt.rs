//! One program for every USDT probe: the bpf cookie is the probe's slot in `USDT_SPECS`,
//! which says which probe it is and where its arguments live (decoded from the
//! `.note.stapsdt` argument specs by userspace).

use aya_ebpf::{
    helpers::generated::bpf_get_attach_cookie,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::uprobe,
    programs::ProbeContext,
    EbpfContext,
};
use profilemate_common::{
    python::{usdt_location, UsdtArgSpec, UsdtRecord, USDT_MAX_ARGS},
    record_kind, COUNTER_USDT_NO_SPEC, COUNTER_USDT_RING_FULL,
};

use crate::maps::{count, submit_flags, target_ids_counted, EVENTS, USDT_SPECS};

/// `struct pt_regs` on x86-64: 21 words.
const PT_REGS_BYTES: u32 = 21 * 8;

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

/// The value of one argument, or None when it could not be read. Registers are read one at
/// a time from the saved `pt_regs` (no shared buffer: uprobe programs are preemptible, so a
/// per-CPU copy could be overwritten by another hit on the same CPU).
#[inline(always)]
fn arg_value(spec: &UsdtArgSpec, regs: *const u8) -> Option<u64> {
    let reg = || {
        let off = u32::from(spec.reg_offset) & !7;
        if off >= PT_REGS_BYTES {
            return None;
        }
        // SAFETY: a bounded offset into the probed thread's saved registers, read through
        // the fault-tolerant helper.
        unsafe { bpf_probe_read_kernel(regs.wrapping_add(off as usize) as *const u64) }.ok()
    };
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
    let regs = ctx.regs as *const u8;
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
