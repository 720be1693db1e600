//! Exact Python function entries from hardware breakpoints: a read/write breakpoint on the
//! first byte of a function's bytecode (`co_code_adaptive[0]`, the opcode of its first
//! instruction) fires when the interpreter fetches it, i.e. when the function is entered,
//! without touching the target's memory (the debug registers belong to the kernel, which
//! loads them per thread). One perf event per (thread, function); the linked program
//! (`py_breakpoint`) walks a few frames and carries the function's slot as its bpf cookie.
//!
//! Owns: which threads of which process watch which functions, the events' lifetime and
//! the report of what could not be watched (x86 has 4 debug registers per thread, and a
//! debugger may hold some; a VM may have none). Does not own: which functions to watch or
//! where their code lives (`vllm::calls` finds them) or what a hit means (`vllm::calls`).

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::BorrowedFd,
};

use serde::Serialize;

use super::perf_link::{
    open_linked, PerfEventAttr, PerfLink, PerfLinkError, FLAG_EXCLUDE_HV, FLAG_EXCLUDE_KERNEL,
};

/// `PERF_TYPE_BREAKPOINT`.
pub const PERF_TYPE_BREAKPOINT: u32 = 5;
/// `HW_BREAKPOINT_RW`: x86 has no read-only data breakpoints.
pub const HW_BREAKPOINT_RW: u32 = 3;
/// `HW_BREAKPOINT_LEN_1`: the opcode byte only. Some builds load an instruction's opcode and
/// its argument byte with two loads; watching both bytes would count such a fetch twice.
pub const HW_BREAKPOINT_LEN_1: u64 = 1;
/// Debug registers of one x86-64 thread.
pub const MAX_WATCHED_PER_THREAD: usize = 4;

/// One function to watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatchedFunction {
    /// `Scheduler.schedule`.
    pub qualname: String,
    /// Its code object.
    #[serde(serialize_with = "hex")]
    pub code: u64,
    /// The watched byte: `co_code_adaptive[0]`.
    #[serde(serialize_with = "hex")]
    pub address: u64,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde passes fields by reference"
)]
fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

/// What one process's breakpoints did, for metadata.json.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BreakpointReport {
    /// Process.
    pub pid: u32,
    /// How the functions were found.
    pub found_via: String,
    /// The functions, in slot order (the slot is the bpf cookie).
    pub functions: Vec<WatchedFunction>,
    /// Threads with every function watched.
    pub threads_watched: u64,
    /// Threads with at least one function not watched.
    pub threads_incomplete: u64,
    /// Events opened during the session (threads x functions).
    pub events_opened: u64,
    /// Events that could not be opened, by cause.
    pub failures: BTreeMap<String, u64>,
    /// What the session fell back to where breakpoints failed.
    pub fallback: Option<String>,
}

/// The breakpoints of every watched process.
#[derive(Default)]
pub struct Breakpoints {
    /// pid -> (functions, report).
    procs: HashMap<u32, (Vec<WatchedFunction>, BreakpointReport)>,
    /// (pid, tid) -> one link per function (None: could not be opened; not retried).
    threads: HashMap<(u32, u32), Vec<Option<PerfLink>>>,
}

impl Breakpoints {
    /// Sets `pid`'s watched functions (at most `MAX_WATCHED_PER_THREAD`), replacing any
    /// earlier set and its events.
    pub fn set_functions(&mut self, pid: u32, mut functions: Vec<WatchedFunction>, via: String) {
        functions.truncate(MAX_WATCHED_PER_THREAD);
        self.threads.retain(|(p, _), _| *p != pid);
        let report = BreakpointReport {
            pid,
            found_via: via,
            functions: functions.clone(),
            ..BreakpointReport::default()
        };
        self.procs.insert(pid, (functions, report));
    }

    /// Whether `pid` has functions to watch.
    #[must_use]
    pub fn watches(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    /// Watches `pid`'s functions on every thread of `tids` not watched yet; forgets threads
    /// no longer listed. `prog`: the loaded `py_breakpoint` program.
    pub fn cover_threads(&mut self, pid: u32, tids: &[u32], prog: BorrowedFd<'_>) {
        let Some((functions, report)) = self.procs.get_mut(&pid) else {
            return;
        };
        // A thread leaves only when it has exited: the interpreter's thread list can be read
        // short while threads come and go, and closing a live thread's events would lose its
        // calls until the next rescan.
        self.threads.retain(|(p, t), _| {
            *p != pid
                || tids.contains(t)
                || std::path::Path::new(&format!("/proc/{p}/task/{t}")).exists()
        });
        for &tid in tids {
            if self.threads.contains_key(&(pid, tid)) {
                continue;
            }
            let links: Vec<Option<PerfLink>> = functions
                .iter()
                .enumerate()
                .map(|(slot, f)| match open(f.address, tid, prog, slot as u64) {
                    Ok(l) => {
                        report.events_opened += 1;
                        Some(l)
                    }
                    Err(e) => {
                        *report.failures.entry(cause(&e)).or_default() += 1;
                        None
                    }
                })
                .collect();
            if links.iter().all(Option::is_some) {
                report.threads_watched += 1;
            } else {
                report.threads_incomplete += 1;
                report.fallback = Some(
                    "some functions are not watched on some threads: their calls there are \
                     found by the scheduler polls and step outputs instead"
                        .to_owned(),
                );
            }
            self.threads.insert((pid, tid), links);
        }
    }

    /// Closes an exited process's events.
    pub fn remove_process(&mut self, pid: u32) {
        self.threads.retain(|(p, _), _| *p != pid);
    }

    /// Every process's report.
    #[must_use]
    pub fn reports(&self) -> Vec<BreakpointReport> {
        let mut out: Vec<BreakpointReport> = self.procs.values().map(|(_, r)| r.clone()).collect();
        out.sort_by_key(|r| r.pid);
        out
    }
}

/// The attributes of a one-byte read/write breakpoint on `address`, user mode only.
#[must_use]
pub fn breakpoint_attr(address: u64) -> PerfEventAttr {
    PerfEventAttr {
        kind: PERF_TYPE_BREAKPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        sample_period: 1,
        flags: FLAG_EXCLUDE_KERNEL | FLAG_EXCLUDE_HV,
        bp_type: HW_BREAKPOINT_RW,
        config1: address,
        config2: HW_BREAKPOINT_LEN_1,
        ..PerfEventAttr::default()
    }
}

/// Opens one breakpoint on `address` for thread `tid`, user mode only, with the program
/// linked to it.
pub fn open(
    address: u64,
    tid: u32,
    prog: BorrowedFd<'_>,
    slot: u64,
) -> Result<PerfLink, PerfLinkError> {
    open_linked(&breakpoint_attr(address), tid, prog, slot)
}

/// A short cause for the report, naming the likely reason.
#[must_use]
pub fn cause(e: &PerfLinkError) -> String {
    match (e, e.errno()) {
        (PerfLinkError::Open(_), Some(libc::ENOSPC)) => {
            "no free debug register (a debugger or another tracer holds them)".to_owned()
        }
        (PerfLinkError::Open(_), Some(libc::ENOENT | libc::EOPNOTSUPP | libc::EINVAL)) => {
            "hardware breakpoints unsupported here (a VM without debug registers?)".to_owned()
        }
        (PerfLinkError::Open(_), Some(libc::ESRCH)) => "thread exited".to_owned(),
        (PerfLinkError::Open(_), Some(libc::EACCES | libc::EPERM)) => {
            "not permitted (needs CAP_PERFMON or root)".to_owned()
        }
        _ => crate::probes::error_chain(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_four_functions_are_kept_per_process() {
        let mut b = Breakpoints::default();
        let f = |i: u64| WatchedFunction {
            qualname: format!("f{i}"),
            code: i,
            address: i + 100,
        };
        b.set_functions(7, (0..6).map(f).collect(), "test".to_owned());
        let r = b.reports();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].functions.len(), MAX_WATCHED_PER_THREAD);
        assert!(b.watches(7));
        assert!(!b.watches(8));
    }
}
