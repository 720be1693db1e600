//! Checks made before anything is loaded: privileges, kernel features, the target pid.
//!
//! Owns those checks and their errors; not the fuller readiness report (`doctor`).
//! Each failure names its fix.

use std::path::Path;

/// A reason the session cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Missing privileges.
    #[error(
        "profilemate needs root or the capabilities CAP_SYS_ADMIN and CAP_SYS_PTRACE \
         (effective: {have}); run it with sudo, or `setcap cap_sys_admin,cap_sys_ptrace+ep` on the binary"
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

/// The capabilities a session needs without root, as found by experiment (Linux 6.18): the
/// kernel refuses uprobe perf events with EACCES under CAP_BPF + CAP_PERFMON (+
/// CAP_SYS_PTRACE) and accepts them with CAP_SYS_ADMIN, which also covers loading the
/// programs; CAP_SYS_PTRACE reaches another user's /proc/PID/root and memory.
pub const ATTACH_CAPS: &[&str] = &["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"];
/// [`ATTACH_CAPS`] as `setcap` spells them.
pub const SETCAP_LIST: &str = "cap_sys_admin,cap_sys_ptrace";

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

/// Which of the capabilities that matter to ProfileMate (CAP_SYS_ADMIN, CAP_SYS_PTRACE,
/// CAP_PERFMON, CAP_BPF) this process holds in its effective set.
#[must_use]
pub fn held_capabilities() -> Vec<&'static str> {
    let caps = effective_caps();
    [
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_BPF, "CAP_BPF"),
    ]
    .iter()
    .filter(|(b, _)| caps & (1u64 << *b) != 0)
    .map(|(_, n)| *n)
    .collect()
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
    let have = held_capabilities();
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

/// A process's seccomp mode (`Seccomp:` in /proc/PID/status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    /// No seccomp (0).
    Disabled,
    /// Strict mode (1): read, write, exit and sigreturn only.
    Strict,
    /// A BPF filter (2).
    Filter,
}

/// The seccomp mode of `pid`; None when its status cannot be read or says none.
#[must_use]
pub fn seccomp_mode(pid: u32) -> Option<SeccompMode> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    match status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))?
        .trim()
    {
        "0" => Some(SeccompMode::Disabled),
        "1" => Some(SeccompMode::Strict),
        "2" => Some(SeccompMode::Filter),
        _ => None,
    }
}

/// `(major, minor)` of a kernel release string ("6.12.3-arch1" -> (6, 12)).
#[must_use]
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Some((major, minor)),
        _ => None,
    }
}

/// Whether return probes (uretprobes) go into a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReturnProbes {
    /// Safe: no seccomp, or a kernel whose uretprobes need no syscall (< 6.11) or let it
    /// through seccomp (6.14+).
    Attach,
    /// The dangerous combination, attached anyway because `--allow-uretprobes` asked for it.
    AttachAllowed,
    /// The dangerous combination: entry probes only.
    EntryOnly,
}

/// The first kernel whose uretprobes return through the `uretprobe` syscall (x86-64).
const URETPROBE_SYSCALL_SINCE: (u32, u32) = (6, 11);
/// The first kernel that lets the `uretprobe` syscall through every seccomp filter.
const SECCOMP_PASSTHROUGH_SINCE: (u32, u32) = (6, 14);

/// Decides whether return probes may go into a process under `seccomp` on `kernel`.
/// Linux 6.11 to 6.13 return from a uretprobe through the `uretprobe` syscall and filter it
/// like any other: a strict process, or a filter written before the syscall existed
/// (allow-lists), kills the target at its first probed return. Unknown values count as the
/// dangerous ones; `allow` (`--allow-uretprobes`) attaches anyway.
#[must_use]
pub fn return_probes(
    kernel: Option<(u32, u32)>,
    seccomp: Option<SeccompMode>,
    allow: bool,
) -> ReturnProbes {
    let kernel_filters =
        kernel.is_none_or(|k| (URETPROBE_SYSCALL_SINCE..SECCOMP_PASSTHROUGH_SINCE).contains(&k));
    let confined = seccomp != Some(SeccompMode::Disabled);
    match (kernel_filters && confined, allow) {
        (false, _) => ReturnProbes::Attach,
        (true, true) => ReturnProbes::AttachAllowed,
        (true, false) => ReturnProbes::EntryOnly,
    }
}

/// What a target loses without return probes, for the terminal and metadata.json.
pub const ENTRY_ONLY_LOSS: &str = "no return probes: step GPU times (a step completes when a \
     wait returns), call durations, graph handles from instantiation and out-parameters are \
     not measured; calls, bytes and graph launches are still counted";

/// The terminal line for a process whose return probes are decided as `decision`.
#[must_use]
pub fn return_probes_warning(
    pid: u32,
    release: &str,
    seccomp: Option<SeccompMode>,
    decision: ReturnProbes,
) -> Option<String> {
    let mode = match seccomp {
        Some(SeccompMode::Strict) => "seccomp strict mode",
        Some(SeccompMode::Filter) => "a seccomp filter",
        _ => "an unknown seccomp mode",
    };
    let risk = format!(
        "pid {pid} runs under {mode}, and Linux {release} returns from return probes through \
         the `uretprobe` syscall, which seccomp filters before 6.14 (a filter that does not allow \
         it kills the target)"
    );
    match decision {
        ReturnProbes::Attach => None,
        ReturnProbes::AttachAllowed => Some(format!(
            "{risk}; return probes attached anyway (--allow-uretprobes)"
        )),
        ReturnProbes::EntryOnly => Some(format!(
            "{risk}: entry probes only, {ENTRY_ONLY_LOSS}. If the target's filter allows \
             `uretprobe`, or the kernel has the seccomp pass-through backported, pass \
             --allow-uretprobes"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse_from_release_strings() {
        assert_eq!(kernel_version("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(kernel_version("6.12.3-arch1-1"), Some((6, 12)));
        assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(kernel_version("unknown"), None);
    }

    /// Kernel version x seccomp mode x `--allow-uretprobes`.
    #[test]
    fn return_probes_are_left_out_only_where_seccomp_can_kill_the_target() {
        use ReturnProbes::{Attach, AttachAllowed, EntryOnly};
        use SeccompMode::{Disabled, Filter, Strict};
        let cases = [
            // No uretprobe syscall yet: always safe.
            (Some((5, 15)), Some(Filter), false, Attach),
            (Some((6, 10)), Some(Strict), false, Attach),
            // 6.11-6.13 filter the syscall.
            (Some((6, 11)), Some(Filter), false, EntryOnly),
            (Some((6, 12)), Some(Strict), false, EntryOnly),
            (Some((6, 13)), Some(Filter), false, EntryOnly),
            (Some((6, 13)), Some(Filter), true, AttachAllowed),
            (Some((6, 12)), Some(Disabled), false, Attach),
            (Some((6, 12)), Some(Disabled), true, Attach),
            // Unknown seccomp mode counts as confined.
            (Some((6, 12)), None, false, EntryOnly),
            // 6.14+ let it through.
            (Some((6, 14)), Some(Filter), false, Attach),
            (Some((6, 18)), Some(Strict), false, Attach),
            (Some((7, 0)), Some(Filter), false, Attach),
            // Unknown kernel counts as dangerous under seccomp only.
            (None, Some(Filter), false, EntryOnly),
            (None, Some(Disabled), false, Attach),
            (None, Some(Filter), true, AttachAllowed),
        ];
        for (kernel, seccomp, allow, want) in cases {
            assert_eq!(
                return_probes(kernel, seccomp, allow),
                want,
                "{kernel:?} {seccomp:?} allow={allow}"
            );
        }
    }

    #[test]
    fn only_decisions_with_a_risk_are_said() {
        let r = "6.12.1";
        let f = Some(SeccompMode::Filter);
        assert!(return_probes_warning(1, r, f, ReturnProbes::Attach).is_none());
        let off = return_probes_warning(1, r, f, ReturnProbes::EntryOnly).unwrap_or_default();
        assert!(
            off.contains("entry probes only") && off.contains("--allow-uretprobes"),
            "{off}"
        );
        assert!(off.contains("step GPU times"), "says what is lost: {off}");
        let on = return_probes_warning(1, r, f, ReturnProbes::AttachAllowed).unwrap_or_default();
        assert!(on.contains("attached anyway"), "{on}");
    }

    #[test]
    fn own_seccomp_mode_is_read() {
        assert!(seccomp_mode(std::process::id()).is_some());
    }
}
