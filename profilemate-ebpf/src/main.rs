//! ProfileMate kernel-side programs: CUDA API entry and return uprobes, the CPython frame
//! walker (at CUDA calls and on perf sampling ticks), and USDT probes.
//!
//! Owns: the tgid filter, the ring-buffer record layout fill, the out-parameter stash and the
//! drop counters. Does not own: which symbols are probed or which interpreter layout applies
//! (userspace decides both and fills the maps), or any interpretation of the values.
#![no_std]
#![no_main]

mod cuda;
mod maps;
mod python;
mod usdt;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}
