//! Doctor checks of what this process may do, tested rather than assumed: each needed kernel
//! object is created on this process itself and closed at once (a BPF ring buffer map, the
//! embedded eBPF programs, a uprobe and a uretprobe perf event on this binary's entry point, a
//! hardware breakpoint on this thread).
//!
//! Owns: those trials and how a refusal is told (the capabilities that fix it). Does not own:
//! the capability rule an attach applies first (`preflight::check_privileges`, reported here
//! as one more line), or anything about the target (`target`).

use std::{
    ffi::CString,
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use super::{is_refusal, privileges_fix, Check, Group};
use crate::probes::{
    breakpoints::{breakpoint_attr, cause},
    perf_link::{open_event, PerfEventAttr, PerfLinkError},
    symbols::{file_offset, map_file, parse_elf},
};

/// Every privilege check.
#[must_use]
pub fn checks() -> Vec<Check> {
    vec![
        capabilities(),
        ring_buffer(),
        programs_load(),
        uprobe_event(false),
        uprobe_event(true),
        breakpoint_event(),
    ]
}

fn capabilities() -> Check {
    let name = "capabilities";
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let held = crate::preflight::held_capabilities();
    let who = format!(
        "uid {uid}, holding {}",
        if held.is_empty() {
            "none of CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_PERFMON, CAP_BPF".to_owned()
        } else {
            held.join(", ")
        }
    );
    match crate::preflight::check_privileges() {
        Ok(()) => Check::ok(Group::Privileges, name, who),
        Err(e) => Check::fail(
            Group::Privileges,
            name,
            format!("{who}: {e}"),
            privileges_fix(),
        ),
    }
}

/// The words for a trial that failed: a refusal names the capabilities, anything else the
/// error.
fn refused_or(name: &'static str, what: &str, e: &std::io::Error, other_fix: &str) -> Check {
    if is_refusal(e) {
        Check::fail(
            Group::Privileges,
            name,
            format!("{what}: refused ({e})"),
            privileges_fix(),
        )
    } else {
        Check::fail(Group::Privileges, name, format!("{what}: {e}"), other_fix)
    }
}

/// `bpf_attr` for `BPF_MAP_CREATE` (the fields up to `max_entries`, the rest zero).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    _rest: [u32; 28],
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;

fn ring_buffer() -> Check {
    let name = "ring_buffer_map";
    let attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_RINGBUF,
        max_entries: 1 << 16,
        ..MapCreateAttr::default()
    };
    // SAFETY: the bpf syscall reads `attr` (size given) and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreateAttr,
            std::mem::size_of::<MapCreateAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return refused_or(
            name,
            "creating a 64 KiB BPF ring buffer",
            &e,
            "a kernel with BPF ring buffers (5.8+, CONFIG_BPF_SYSCALL)",
        );
    }
    // SAFETY: a fresh descriptor owned by nothing else; dropping it frees the map.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Check::ok(
        Group::Privileges,
        name,
        "a BPF ring buffer was created and closed",
    )
}

fn programs_load() -> Check {
    let name = "ebpf_programs";
    match crate::probes::Probes::load(1 << 20, false, false) {
        Ok(probes) => {
            drop(probes);
            Check::ok(
                Group::Privileges,
                name,
                "the embedded programs passed the verifier and were unloaded",
            )
        }
        Err(e) => {
            let chain = crate::probes::error_chain(&e);
            let refused = matches!(
                crate::probes::FailureKind::of(&e),
                crate::probes::FailureKind::Permission
            );
            let fix = if refused {
                privileges_fix()
            } else {
                "a kernel the programs verify on (tested: 6.18); send this line with `uname -r` to the maintainers".to_owned()
            };
            Check::fail(Group::Privileges, name, chain, fix)
        }
    }
}

/// This binary and the file offset of its entry point: an instruction boundary that runs
/// once, at start, so a probe planted there for the trial is never hit.
fn own_entry_point() -> Result<(PathBuf, u64), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let map = map_file(&exe).map_err(|e| crate::probes::error_chain(&e))?;
    let elf = parse_elf(&exe, &map).map_err(|e| crate::probes::error_chain(&e))?;
    let entry = object::Object::entry(&elf);
    let offset =
        file_offset(&elf, entry).ok_or_else(|| "entry point outside any segment".to_owned())?;
    Ok((exe, offset))
}

/// The uprobe PMU's perf event type and the config bit of a return probe.
fn uprobe_type() -> Result<(u32, u64), String> {
    let read = |f: &str| std::fs::read_to_string(Path::new(super::system::UPROBE_PMU).join(f));
    let ty = read("type")
        .map_err(|e| format!("no uprobe PMU: {e}"))?
        .trim()
        .parse::<u32>()
        .map_err(|e| format!("uprobe PMU type: {e}"))?;
    // "config:0" on every kernel so far.
    let bit = read("format/retprobe")
        .ok()
        .and_then(|f| f.trim().strip_prefix("config:")?.parse::<u32>().ok())
        .unwrap_or(0);
    Ok((ty, 1u64 << bit))
}

fn uprobe_event(is_return: bool) -> Check {
    let name = if is_return {
        "uretprobe_event"
    } else {
        "uprobe_event"
    };
    let what = if is_return { "uretprobe" } else { "uprobe" };
    let (exe, offset) = match own_entry_point() {
        Ok(x) => x,
        Err(e) => return Check::fail(
            Group::Privileges,
            name,
            e,
            "run the profilemate binary itself (not through a wrapper that hides /proc/self/exe)",
        ),
    };
    let (ty, ret_bit) = match uprobe_type() {
        Ok(x) => x,
        Err(e) => {
            return Check::fail(
                Group::Privileges,
                name,
                e,
                "a kernel with CONFIG_UPROBE_EVENTS",
            )
        }
    };
    let Ok(path) = CString::new(exe.as_os_str().as_encoded_bytes()) else {
        return Check::fail(
            Group::Privileges,
            name,
            "binary path with a NUL byte",
            "move the binary",
        );
    };
    let attr = PerfEventAttr {
        kind: ty,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: if is_return { ret_bit } else { 0 },
        sample_period: 1,
        config1: path.as_ptr() as u64,
        config2: offset,
        ..PerfEventAttr::default()
    };
    let pid = std::process::id();
    match open_event(&attr, pid) {
        Ok(fd) => {
            drop(fd);
            Check::ok(
                Group::Privileges,
                name,
                format!("a {what} perf event on this binary was opened and closed"),
            )
        }
        Err(PerfLinkError::Open(e) | PerfLinkError::Link(e)) => refused_or(
            name,
            &format!("opening a {what} perf event on this binary"),
            &e,
            "a kernel with CONFIG_UPROBE_EVENTS; see the error",
        ),
    }
}

/// A byte nothing reads or writes: the trial breakpoint's address.
static BREAKPOINT_TARGET: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

fn breakpoint_event() -> Check {
    let name = "hw_breakpoint_event";
    let attr = breakpoint_attr(std::ptr::addr_of!(BREAKPOINT_TARGET) as u64);
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    match open_event(&attr, tid) {
        Ok(fd) => {
            drop(fd);
            Check::ok(
                Group::Privileges,
                name,
                "a hardware breakpoint on this thread was opened and closed",
            )
        }
        Err(e) => {
            let why = cause(&e);
            let refused = matches!(e.errno(), Some(libc::EPERM | libc::EACCES));
            let fix = if refused {
                privileges_fix()
            } else {
                "vLLM's scheduler calls then come from polls and step outputs (or pass --no-breakpoints)".to_owned()
            };
            Check::warn(
                Group::Privileges,
                name,
                format!("opening a hardware breakpoint on this thread: {why}"),
                fix,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_entry_point_is_inside_the_binary() {
        let (exe, offset) = own_entry_point().expect("entry point");
        let len = std::fs::metadata(&exe).expect("binary").len();
        assert!(offset > 0 && offset < len, "{offset} of {len}");
    }

    #[test]
    fn every_trial_gives_a_verdict_with_a_fix_when_not_ok() {
        for c in checks() {
            assert!(
                c.status == crate::doctor::Status::Ok || c.fix.is_some(),
                "{c:?}"
            );
        }
    }
}
