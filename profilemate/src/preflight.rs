//! Checks made before anything is loaded: privileges, kernel features, the target pid.
//! Each failure names its fix.

use std::path::Path;

/// A reason the session cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Missing privileges.
    #[error(
        "profilemate needs root or the capabilities CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE \
         (effective: {have}); run it with sudo, or `setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep` on the binary"
    )]
    NotPrivileged {
        /// The capabilities that are effective, as a readable list.
        have: String,
    },
    /// The pid does not exist.
    #[error("no process with pid {pid}: check the pid (`pgrep -f vllm`); a pid from inside a container must be translated to the host's pid namespace")]
    NoSuchProcess {
        /// The pid asked for.
        pid: u32,
    },
    /// The pid is a kernel thread.
    #[error("pid {pid} ({comm}) is a kernel thread: it has no user memory and no /proc/{pid}/exe, so no library to probe; pass the pid of a vLLM process (`pgrep -f 'vllm serve'`)")]
    KernelThread {
        /// The pid asked for.
        pid: u32,
        /// Its name.
        comm: String,
    },
    /// Kernel too old or built without a needed feature.
    #[error("kernel {release} lacks {what}: profilemate needs Linux >= 5.8 with BPF ring buffers and the uprobe PMU (CONFIG_BPF_EVENTS, CONFIG_UPROBE_EVENTS)")]
    KernelUnsupported {
        /// `uname -r`.
        release: String,
        /// The missing feature.
        what: &'static str,
    },
}

/// Bit numbers in the capability sets (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Kernel release string (`uname -r`).
#[must_use]
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Fails unless the process may load BPF programs, open uprobe perf events and read the
/// target's memory maps.
pub fn check_privileges() -> Result<(), PreflightError> {
    let caps = effective_caps();
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    let bpf_ok = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    if bpf_ok && (has(CAP_SYS_PTRACE) || has(CAP_SYS_ADMIN)) {
        return Ok(());
    }
    let names = [
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_BPF, "CAP_BPF"),
    ];
    let have: Vec<&str> = names
        .iter()
        .filter(|(b, _)| has(*b))
        .map(|(_, n)| *n)
        .collect();
    Err(PreflightError::NotPrivileged {
        have: if have.is_empty() {
            "none of them".to_owned()
        } else {
            have.join(", ")
        },
    })
}

/// Fails when `pid` does not exist or is a kernel thread (which `--wait` would watch
/// forever: no kernel thread ever maps a CUDA library).
pub fn check_pid(pid: u32) -> Result<(), PreflightError> {
    if pid == 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(PreflightError::NoSuchProcess { pid });
    }
    if crate::discovery::is_kernel_thread(pid) {
        let comm = crate::discovery::thread_comm(pid, pid).unwrap_or_default();
        return Err(PreflightError::KernelThread { pid, comm });
    }
    Ok(())
}

/// Fails on kernels without ring buffers (< 5.8) or without the uprobe PMU.
pub fn check_kernel() -> Result<(), PreflightError> {
    let release = kernel_release();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (5, 8) {
        return Err(PreflightError::KernelUnsupported {
            release,
            what: "BPF ring buffers (5.8+)",
        });
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        return Err(PreflightError::KernelUnsupported {
            release,
            what: "the uprobe PMU (/sys/bus/event_source/devices/uprobe)",
        });
    }
    Ok(())
}

/// Linux 6.11+ returns from uretprobes through a dedicated syscall; seccomp profiles written
/// before it may kill the target with SIGSYS. Returns a warning to print, if it applies.
#[must_use]
pub fn uretprobe_seccomp_warning(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let seccomp = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))?
        .trim()
        .to_owned();
    (seccomp == "2").then(|| {
        format!(
            "pid {pid} runs under a seccomp filter; on Linux 6.11+ return probes use the uretprobe \
             syscall, which old filters reject. If the target's filter predates it, use a profile \
             that allows `uretprobe` before attaching"
        )
    })
}
