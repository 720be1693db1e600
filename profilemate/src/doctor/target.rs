//! Doctor checks of the target given with `--pid`: the process tree and titles (API server,
//! EngineCore, workers), and per process its CUDA libraries (reached through /proc/PID/root or,
//! deleted, through /proc/PID/map_files; the symbols ProfileMate probes present or not), its
//! memory (readable?), CPython (version, layout source, tested), USDT notes and semaphores,
//! vLLM version and name bundle, seccomp mode, free debug registers; and the tree's /metrics.
//!
//! Nothing is attached to the target and nothing in it changes: its /proc files, its mapped
//! files and its memory are read (`process_vm_readv`), its /metrics is read with one GET as
//! a monitoring system would, and its debug registers are counted with breakpoint events
//! created disabled (the kernel reserves a slot per event without loading any register).
//! Does not own: how each fact is found, which is the attach's own code (`discovery`,
//! `probes`, `python`, `vllm`).

use std::collections::HashMap;

use profilemate_common::{ApiId, Library};

use super::{privileges_fix, Check, Group};
use crate::{
    discovery::{self, library_name, MappedLibrary, ProcessInfo},
    preflight::{self, ReturnProbes, SeccompMode},
    probes::{
        breakpoints::{breakpoint_attr, MAX_WATCHED_PER_THREAD},
        perf_link::{open_event, FLAG_DISABLED},
        symbols::SymbolOffsets,
        usdt,
    },
    python::{self, PythonError},
    vllm,
};

/// What the tree-wide checks need from the per-process ones.
#[derive(Default)]
struct Seen {
    cuda_processes: usize,
    probeable_libraries: usize,
    python_walkable: usize,
    vllm: Option<String>,
}

/// Every check of the target tree rooted at `pid`.
#[must_use]
pub fn checks(pid: u32, children: bool) -> Vec<Check> {
    if let Err(e) = preflight::check_pid(pid) {
        let fix = match e {
            preflight::PreflightError::KernelThread { .. } => "pass the pid of a vLLM process (`pgrep -f 'vllm serve'`)",
            _ => "check the pid (`pgrep -f vllm`); a pid seen inside a container must be translated to the host's pid namespace",
        };
        return vec![Check::fail(Group::Target, "process", e.to_string(), fix).about(pid)];
    }
    let pids = discovery::process_tree(pid, children);
    let infos: Vec<ProcessInfo> = pids
        .iter()
        .filter_map(|p| discovery::process_info(*p).ok())
        .collect();
    let mut out = vec![tree(pid, &infos)];
    let mut seen = Seen::default();
    let release = preflight::kernel_release();
    let kernel = preflight::kernel_version(&release);
    for info in &infos {
        out.extend(process_checks(info, &mut seen, &release, kernel));
    }
    out.push(cuda_verdict(pid, children, &seen));
    out.push(python_verdict(&seen));
    out.push(vllm_verdict(&seen));
    out.push(metrics(&pids, seen.vllm.is_some()));
    out
}

/// The role a vLLM process title names.
fn role(info: &ProcessInfo) -> &'static str {
    let c = &info.cmdline;
    if c.contains("VLLM::EngineCore") || info.comm.starts_with("VLLM::EngineCor") {
        "EngineCore"
    } else if c.contains("VLLM::Worker") || info.comm.starts_with("VLLM::Worker") {
        "worker"
    } else if c.contains("VLLM::APIServer")
        || c.contains("vllm serve")
        || c.contains("vllm.entrypoints")
    {
        "API server"
    } else {
        "process"
    }
}

fn tree(root: u32, infos: &[ProcessInfo]) -> Check {
    let parts: Vec<String> = infos
        .iter()
        .map(|i| {
            let title: String = i.cmdline.chars().take(60).collect();
            format!("{} {} ({title})", role(i), i.pid)
        })
        .collect();
    Check::ok(
        Group::Target,
        "process_tree",
        format!("{} process(es): {}", infos.len(), parts.join("; ")),
    )
    .about(root)
}

fn process_checks(
    info: &ProcessInfo,
    seen: &mut Seen,
    release: &str,
    kernel: Option<(u32, u32)>,
) -> Vec<Check> {
    let pid = info.pid;
    let mut out = vec![memory(pid)];
    out.extend(cuda(pid, seen));
    out.extend(python_checks(pid, seen));
    out.push(seccomp(pid, release, kernel));
    out.push(debug_registers(pid));
    out
}

/// One u64 of the target read with `process_vm_readv` at the start of its first readable
/// mapping: what every Python and vLLM read needs.
fn memory(pid: u32) -> Check {
    let name = "memory_read";
    let first = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.maps())
        .ok()
        .and_then(|maps| {
            maps.into_iter()
                .find(|m| m.perms.contains(procfs::process::MMPermissions::READ))
                .map(|m| m.address.0)
        });
    let Some(addr) = first else {
        return Check::fail(
            Group::Target,
            name,
            "cannot read its memory maps",
            privileges_fix(),
        )
        .about(pid);
    };
    let mut buf = [0u8; 8];
    let local = [std::io::IoSliceMut::new(&mut buf)];
    let remote = [nix::sys::uio::RemoteIoVec {
        base: addr as usize,
        len: 8,
    }];
    match nix::sys::uio::process_vm_readv(
        nix::unistd::Pid::from_raw(pid as i32),
        &mut { local },
        &remote,
    ) {
        Ok(8) => Check::ok(Group::Target, name, "readable (process_vm_readv)").about(pid),
        Ok(n) => Check::warn(
            Group::Target,
            name,
            format!("short read ({n} of 8 bytes)"),
            "retry; the process may be exiting",
        )
        .about(pid),
        Err(e) => Check::fail(
            Group::Target,
            name,
            format!("process_vm_readv: {e}: no Python stacks, vLLM state or symbols"),
            privileges_fix(),
        )
        .about(pid),
    }
}

/// The symbols of the probe table that a library of `kind` should export: (default set,
/// per-kernel set).
fn wanted_symbols(kind: Library) -> (Vec<&'static str>, Vec<&'static str>) {
    let of = |per_kernel: bool| {
        ApiId::all()
            .iter()
            .map(|a| a.spec())
            .filter(|s| s.library == kind && s.per_kernel == per_kernel)
            .map(|s| s.symbol)
            .collect::<Vec<_>>()
    };
    (of(false), of(true))
}

fn cuda(pid: u32, seen: &mut Seen) -> Vec<Check> {
    let libs = match discovery::cuda_libraries(pid) {
        Ok(l) => l,
        Err(e) => {
            return vec![Check::fail(
                Group::Target,
                "cuda_libraries",
                crate::probes::error_chain(&e),
                privileges_fix(),
            )
            .about(pid)]
        }
    };
    if libs.is_empty() {
        return Vec::new();
    }
    seen.cuda_processes += 1;
    libs.iter().map(|l| library(pid, l, seen)).collect()
}

fn library(pid: u32, lib: &MappedLibrary, seen: &mut Seen) -> Check {
    let name = "cuda_library";
    let (default, per_kernel) = wanted_symbols(lib.library);
    let mut all = default.clone();
    all.extend(&per_kernel);
    let reached = if lib.deleted {
        format!(
            "deleted on disk, reached through {}",
            lib.host_path.display()
        )
    } else {
        format!("reached through {}", lib.host_path.display())
    };
    let head = format!("{} {} ({reached})", library_name(lib.library), lib.path);
    let offsets = match SymbolOffsets::resolve(&lib.host_path, &all) {
        Ok(o) => o,
        Err(e) => {
            let fix = match crate::probes::FailureKind::of(&e) {
                crate::probes::FailureKind::Permission => privileges_fix(),
                _ => "attach from the target's host (not from inside another container), or restart the target if its libraries were removed".to_owned(),
            };
            return Check::fail(
                Group::Target,
                name,
                format!("{head}: {}", crate::probes::error_chain(&e)),
                fix,
            )
            .about(pid);
        }
    };
    let missing: Vec<&str> = default
        .iter()
        .copied()
        .filter(|s| offsets.get(s).is_none())
        .collect();
    let kernels = per_kernel
        .iter()
        .filter(|s| offsets.get(s).is_some())
        .count();
    let found = default.len() - missing.len();
    let mut counts = format!("{head}: {found} of {} probed calls exported", default.len());
    if !per_kernel.is_empty() {
        counts += &format!(
            ", {kernels} of {} kernel-launch calls (--kernels)",
            per_kernel.len()
        );
    }
    if found > 0 {
        seen.probeable_libraries += 1;
    }
    match (found, missing.is_empty()) {
        (_, true) => Check::ok(Group::Target, name, counts).about(pid),
        (0, _) => Check::warn(
            Group::Target,
            name,
            format!("{counts}: none to probe"),
            "check that this is NVIDIA's library (another vendor's shim exports other names)",
        )
        .about(pid),
        _ => Check::warn(
            Group::Target,
            name,
            format!("{counts}; missing: {}", missing.join(", ")),
            "another CUDA version: the missing calls are not seen (other calls still are)",
        )
        .about(pid),
    }
}

fn python_checks(pid: u32, seen: &mut Seen) -> Vec<Check> {
    let name = "python";
    let interp = match python::find(pid) {
        Ok(i) => i,
        Err(PythonError::NotPython) => {
            return vec![Check::ok(
                Group::Target,
                name,
                "not a CPython process (no mapped file defines _PyRuntime)",
            )
            .about(pid)];
        }
        Err(e) => {
            let fix = match e {
                PythonError::OldVersion(_) | PythonError::Layout(_) => "run vLLM on CPython 3.11-3.14 (vLLM itself needs >= 3.11); CUDA timing works regardless",
                PythonError::Read(_) => "run profilemate as root, or with CAP_SYS_PTRACE",
                _ => "send this line to the maintainers; CUDA timing works regardless",
            };
            return vec![Check::warn(
                Group::Target,
                name,
                format!(
                    "not walked: {}; no Python stacks, CPU attribution or vLLM state here",
                    crate::probes::error_chain(&e)
                ),
                fix,
            )
            .about(pid)];
        }
    };
    seen.python_walkable += 1;
    let l = &interp.layout;
    let detail = format!(
        "CPython {} ({}), layout {}, {} thread(s)",
        interp.version,
        interp.binary,
        match l.source {
            python::layout::LayoutSource::BuiltIn => "built in",
            python::layout::LayoutSource::DebugOffsets => "from its _Py_DebugOffsets",
        },
        interp.threads_at_attach
    );
    let mut out = vec![if l.tested {
        Check::ok(Group::Target, name, format!("{detail}; tested")).about(pid)
    } else {
        Check::warn(
            Group::Target,
            name,
            format!("{detail}; this version's layout is not covered by ProfileMate's tests"),
            "stacks are checked against memory before use; report wrong stacks to the maintainers",
        )
        .about(pid)
    }];
    out.push(usdt_notes(pid, &interp));
    out.extend(vllm_version(pid, seen));
    out
}

fn usdt_notes(pid: u32, interp: &python::Interpreter) -> Check {
    let name = "usdt";
    let probes = match usdt::probes(&interp.host_path) {
        Ok(p) => p,
        Err(e) => {
            return Check::warn(
                Group::Target,
                name,
                format!(
                    "cannot read the notes of {}: {}",
                    interp.binary,
                    crate::probes::error_chain(&e)
                ),
                "GC pauses are not measured; check that the interpreter file is reachable",
            )
            .about(pid)
        }
    };
    let good: Vec<usdt::UsdtProbe> = probes.into_iter().flatten().collect();
    let gc: Vec<String> = ["gc__start", "gc__done"]
        .iter()
        .filter_map(|n| good.iter().find(|p| p.provider == "python" && p.name == *n))
        .map(|p| {
            let sem = if p.semaphore_offset.is_some() {
                "semaphore raised by the kernel while attached"
            } else {
                "no semaphore"
            };
            format!("python:{} ({sem})", p.name)
        })
        .collect();
    if gc.len() == 2 {
        Check::ok(
            Group::Target,
            name,
            format!("{} of {} notes: {}", gc.len(), good.len(), gc.join(", ")),
        )
        .about(pid)
    } else {
        Check::warn(
            Group::Target,
            name,
            format!(
                "{} has no python:gc__start/gc__done notes ({} notes): GC pauses are not measured",
                interp.binary,
                good.len()
            ),
            "use a CPython built --with-dtrace (Debian's and Ubuntu's are) for exact GC pauses",
        )
        .about(pid)
    }
}

fn vllm_version(pid: u32, seen: &mut Seen) -> Option<Check> {
    let name = "vllm";
    match vllm::version::of_process(pid)? {
        Ok(v) => {
            let detail = format!(
                "vLLM {} (from {}), names bundle {}",
                v.version, v.source, v.bundle
            );
            seen.vllm.get_or_insert_with(|| v.version.clone());
            Some(match v.note {
                None => Check::ok(Group::Target, name, detail).about(pid),
                Some(note) => Check::warn(Group::Target, name, format!("{detail}: {note}"), "names this bundle lacks are reported as not found; check docs/VLLM_VERSIONS.md").about(pid),
            })
        }
        Err(e) => Some(
            Check::warn(
                Group::Target,
                name,
                format!("a vLLM package is mapped but its version is unknown: {e}"),
                "the 0.26-0.33 names are tried",
            )
            .about(pid),
        ),
    }
}

fn seccomp(pid: u32, release: &str, kernel: Option<(u32, u32)>) -> Check {
    let name = "seccomp";
    let mode = preflight::seccomp_mode(pid);
    let shown = match mode {
        Some(SeccompMode::Disabled) => return Check::ok(Group::Target, name, "none").about(pid),
        Some(SeccompMode::Strict) => "strict mode (1)",
        Some(SeccompMode::Filter) => "a filter (2)",
        None => "unknown (status unreadable)",
    };
    match preflight::return_probes(kernel, mode, false) {
        ReturnProbes::Attach => Check::ok(
            Group::Target,
            name,
            format!(
                "{shown}: harmless on Linux {release} ({}): return probes attach",
                if kernel.is_some_and(|k| k >= (6, 14)) {
                    "6.14+ lets the uretprobe syscall through seccomp"
                } else {
                    "return probes need no syscall before 6.11"
                }
            ),
        )
        .about(pid),
        _ => Check::warn(
            Group::Target,
            name,
            format!("{shown} on Linux {release}: a filter that does not allow the uretprobe syscall would kill the target at a return probe, so it gets entry probes only ({})", preflight::ENTRY_ONLY_LOSS),
            "if the filter allows `uretprobe`, pass --allow-uretprobes; or run on Linux 6.14+",
        )
        .about(pid),
    }
}

/// A user address nothing maps (the first page is never mapped), for the counting events.
const UNMAPPED_ADDRESS: u64 = 0x1000;

/// Free debug registers of the process's main thread, counted by creating up to four
/// breakpoint events on it, disabled: each reserves a slot (a debugger's breakpoints hold
/// theirs) and none is ever loaded into a register, so the target runs as before.
fn debug_registers(pid: u32) -> Check {
    let name = "debug_registers";
    let mut attr = breakpoint_attr(UNMAPPED_ADDRESS);
    attr.flags |= FLAG_DISABLED;
    let mut held = Vec::new();
    let mut stop = None;
    while held.len() < MAX_WATCHED_PER_THREAD {
        match open_event(&attr, pid) {
            Ok(fd) => held.push(fd),
            Err(e) => {
                stop = Some(e);
                break;
            }
        }
    }
    let free = held.len();
    drop(held);
    let tracer = tracer_pid(pid).filter(|t| *t != 0);
    let traced = tracer
        .map(|t| format!("; traced by pid {t}"))
        .unwrap_or_default();
    let detail = format!("{free} of {MAX_WATCHED_PER_THREAD} free on thread {pid} (counted with disabled events: nothing armed){traced}");
    match (free, stop) {
        (MAX_WATCHED_PER_THREAD, _) => Check::ok(Group::Target, name, detail).about(pid),
        (_, Some(e)) if free == 0 && matches!(e.errno(), Some(libc::EPERM | libc::EACCES)) => {
            Check::warn(Group::Target, name, format!("{detail}: {}", crate::probes::breakpoints::cause(&e)), privileges_fix()).about(pid)
        }
        (_, e) => Check::warn(
            Group::Target,
            name,
            format!("{detail}{}", e.map(|e| format!(": {}", crate::probes::breakpoints::cause(&e))).unwrap_or_default()),
            "fewer than 4 scheduler methods are watched (a debugger holds the rest); detach the debugger, or the polls and step outputs cover the calls",
        )
        .about(pid),
    }
}

fn tracer_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()
}

fn cuda_verdict(pid: u32, children: bool, seen: &Seen) -> Check {
    let name = "cuda";
    let who = if children {
        format!("pid {pid} or its children")
    } else {
        format!("pid {pid}")
    };
    if seen.cuda_processes == 0 {
        return Check::fail(
            Group::Target,
            name,
            format!("no CUDA library (libcudart*.so*, libcuda.so*) is mapped in {who}: nothing to time"),
            "the process has not initialized CUDA yet (attach with --wait), or pass the EngineCore/Worker pid",
        );
    }
    if seen.probeable_libraries == 0 {
        return Check::fail(
            Group::Target,
            name,
            format!("the CUDA libraries in {who} export none of the probed calls"),
            "check that they are NVIDIA's libcudart/libcuda",
        );
    }
    Check::ok(
        Group::Target,
        name,
        format!(
            "{} process(es) with CUDA, {} library file(s) to probe",
            seen.cuda_processes, seen.probeable_libraries
        ),
    )
}

fn python_verdict(seen: &Seen) -> Check {
    if seen.python_walkable > 0 {
        return Check::ok(
            Group::Target,
            "python_stacks",
            format!(
                "{} process(es) with a walkable CPython",
                seen.python_walkable
            ),
        );
    }
    Check::warn(
        Group::Target,
        "python_stacks",
        "no walkable CPython in the tree: no Python stacks, CPU attribution or vLLM state (CUDA timing works)",
        "attach to the vLLM server's processes (CPython 3.11-3.14)",
    )
}

fn vllm_verdict(seen: &Seen) -> Check {
    match &seen.vllm {
        Some(v) => Check::ok(Group::Target, "vllm_found", format!("vLLM {v}")),
        None => Check::warn(
            Group::Target,
            "vllm_found",
            "no vLLM package with compiled extensions is mapped in the tree: not a vLLM server, or a CPU-only install (then the version is read beside the scheduler's source once the attach finds it)",
            "attach to the vLLM server (`pgrep -f 'vllm serve'`)",
        ),
    }
}

/// The API server's /metrics, read once (a GET, as any monitoring system makes).
fn metrics(pids: &[u32], has_vllm: bool) -> Check {
    let name = "metrics_endpoint";
    let found = vllm::metrics::scrape(
        pids,
        &mut HashMap::new(),
        &mut vllm::metrics::Ports::default(),
    );
    match found.first() {
        Some(s) => Check::ok(
            Group::Target,
            name,
            format!("{} (pid {}): {} vLLM series read", s.url, s.pid, s.values.len()),
        ),
        None if has_vllm => Check::warn(
            Group::Target,
            name,
            "no vLLM /metrics on the tree's localhost ports: metadata.json has no cross-check with the server's own counters",
            "attach from the API server's host and include its pid (the API server is the tree's root)",
        ),
        None => Check::ok(
            Group::Target,
            name,
            "none on the tree's localhost ports (not a vLLM API server)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(comm: &str, cmdline: &str) -> ProcessInfo {
        ProcessInfo {
            pid: 1,
            ppid: 0,
            comm: comm.into(),
            cmdline: cmdline.into(),
        }
    }

    #[test]
    fn roles_come_from_vllm_process_titles() {
        assert_eq!(
            role(&info("vllm", "/usr/bin/python3 /usr/bin/vllm serve m")),
            "API server"
        );
        assert_eq!(
            role(&info("VLLM::EngineCor", "VLLM::EngineCore")),
            "EngineCore"
        );
        assert_eq!(role(&info("VLLM::Worker_TP", "VLLM::Worker_TP1")), "worker");
        assert_eq!(role(&info("sleep", "sleep 30")), "process");
    }

    #[test]
    fn both_library_kinds_have_default_probes() {
        for kind in [Library::Runtime, Library::Driver] {
            let (default, _) = wanted_symbols(kind);
            assert!(!default.is_empty());
        }
        assert!(wanted_symbols(Library::Driver)
            .1
            .contains(&"cuLaunchKernel"));
    }

    #[test]
    fn an_unknown_pid_fails_with_the_fix() {
        let c = checks(999_999_999, true);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, crate::doctor::Status::Fail);
        assert!(
            c[0].detail.contains("no process with pid 999999999"),
            "{c:?}"
        );
    }

    #[test]
    fn own_process_has_free_debug_registers_or_says_why() {
        let c = debug_registers(std::process::id());
        assert!(c.detail.contains("free on thread"), "{c:?}");
    }
}
