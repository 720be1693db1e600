//! ProfileMate kernel-side programs: CUDA API entry and return uprobes.
//!
//! Owns: the tgid filter, the ring-buffer record layout fill, the out-parameter stash and the
//! drop counters. Does not own: which symbols are probed (userspace attaches by the table in
//! `profilemate-common`) or any interpretation of the arguments.
#![no_std]
#![no_main]

mod cuda;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}
