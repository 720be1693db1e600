//! Doctor checks of the machine: the kernel's version and what it supports (BPF ring buffer,
//! uprobe PMU, BTF, how return probes meet seccomp, hardware breakpoints), the sysctls that
//! change what a session gets (`kernel.bpf_stats_enabled`, `kernel.perf_event_paranoid`), and
//! the output directory.
//!
//! Owns: reading these facts from /proc and /sys and the words for them. Does not own: trying
//! things (`privileges` creates maps and events; here only what the kernel declares is read),
//! nor the rules, which stay in `preflight` (kernel minimum, return probes under seccomp) and
//! `output` (which output directories are refused).

use std::path::Path;

use super::{Check, Group};
use crate::preflight::{self, ReturnProbes, SeccompMode};

/// The uprobe PMU's directory: its `type` is the perf event type of uprobes.
pub const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe";
/// The hardware breakpoint PMU's directory.
const BREAKPOINT_PMU: &str = "/sys/bus/event_source/devices/breakpoint";
/// The kernel's own type information.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The machine's checks: kernel and sysctls.
#[must_use]
pub fn checks() -> Vec<Check> {
    let release = preflight::kernel_release();
    let version = preflight::kernel_version(&release);
    vec![
        kernel(&release, version),
        uprobe_pmu(),
        btf(),
        return_probes(&release, version),
        breakpoint_pmu(),
        bpf_stats(),
        perf_event_paranoid(),
    ]
}

fn kernel(release: &str, version: Option<(u32, u32)>) -> Check {
    let name = "kernel";
    match version {
        Some(v) if v >= (5, 8) => Check::ok(
            Group::System,
            name,
            format!("Linux {release}: BPF ring buffers (5.8+) supported"),
        ),
        Some(_) => Check::fail(
            Group::System,
            name,
            format!("Linux {release} has no BPF ring buffer (needs 5.8+)"),
            "run on Linux 5.8 or newer (tested on 6.18)",
        ),
        None => Check::warn(
            Group::System,
            name,
            format!("cannot read a version from the release {release:?}"),
            "check `uname -r`: ProfileMate needs Linux 5.8+",
        ),
    }
}

fn uprobe_pmu() -> Check {
    let name = "uprobe_pmu";
    let ty = std::fs::read_to_string(Path::new(UPROBE_PMU).join("type"));
    let retprobe = std::fs::read_to_string(Path::new(UPROBE_PMU).join("format/retprobe"));
    match (ty, retprobe) {
        (Ok(t), Ok(r)) => Check::ok(
            Group::System,
            name,
            format!("perf type {}, return probes as {}", t.trim(), r.trim()),
        ),
        (Ok(t), Err(_)) => Check::warn(
            Group::System,
            name,
            format!(
                "perf type {} but no retprobe format: return probes cannot be opened",
                t.trim()
            ),
            "a kernel with CONFIG_UPROBE_EVENTS and the uprobe PMU's retprobe bit (4.17+)",
        ),
        (Err(e), _) => Check::fail(
            Group::System,
            name,
            format!("{UPROBE_PMU} unreadable ({e}): no uprobes"),
            "a kernel built with CONFIG_UPROBE_EVENTS and CONFIG_BPF_EVENTS",
        ),
    }
}

fn btf() -> Check {
    let detail = if Path::new(VMLINUX_BTF).exists() {
        "present (/sys/kernel/btf/vmlinux)"
    } else {
        "absent; not needed: the programs use no CO-RE relocations"
    };
    Check::ok(Group::System, "btf", detail)
}

/// How return probes meet seccomp on this kernel (the rule is `preflight::return_probes`).
fn return_probes(release: &str, version: Option<(u32, u32)>) -> Check {
    let name = "uretprobe_seccomp";
    let under_filter = preflight::return_probes(version, Some(SeccompMode::Filter), false);
    let syscall = version.is_some_and(|v| v >= (6, 11));
    match (under_filter, syscall) {
        (ReturnProbes::Attach, false) => Check::ok(
            Group::System,
            name,
            format!("Linux {release} returns from uprobes by a trap, no syscall: seccomp'd targets get return probes"),
        ),
        (ReturnProbes::Attach, true) => Check::ok(
            Group::System,
            name,
            format!("Linux {release} returns through the uretprobe syscall and lets it through seccomp (6.14+): seccomp'd targets get return probes"),
        ),
        _ => Check::warn(
            Group::System,
            name,
            format!("Linux {release} returns through the uretprobe syscall, which seccomp filters before 6.14: targets under seccomp get entry probes only (no step GPU times there)"),
            "where the target's filter allows `uretprobe` (or the kernel has the pass-through backported), pass --allow-uretprobes; or run on 6.14+",
        ),
    }
}

fn breakpoint_pmu() -> Check {
    let name = "hw_breakpoint_pmu";
    if Path::new(BREAKPOINT_PMU).exists() {
        Check::ok(
            Group::System,
            name,
            "present: exact scheduler calls by hardware breakpoints can be watched",
        )
    } else {
        Check::warn(
            Group::System,
            name,
            "no breakpoint PMU (a VM without debug registers?): vLLM's scheduler calls come from polls and step outputs only",
            "run on a machine (or VM) that exposes debug registers, or pass --no-breakpoints",
        )
    }
}

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|v| v.trim().to_owned())
}

fn bpf_stats() -> Check {
    let name = "bpf_stats_enabled";
    match read_sysctl("/proc/sys/kernel/bpf_stats_enabled").as_deref() {
        Some("1") => Check::ok(
            Group::System,
            name,
            "1: metadata.json program_costs gets the kernel-measured cost of each probe program",
        ),
        Some(v) => Check::ok(
            Group::System,
            name,
            format!("{v}: program run costs are not recorded (optional)"),
        )
        .hint("`sudo sysctl kernel.bpf_stats_enabled=1` to record them"),
        None => Check::ok(
            Group::System,
            name,
            "absent: program run costs are not recorded (optional)",
        ),
    }
}

fn perf_event_paranoid() -> Check {
    let name = "perf_event_paranoid";
    let Some(v) = read_sysctl("/proc/sys/kernel/perf_event_paranoid") else {
        return Check::ok(Group::System, name, "absent");
    };
    let meaning = match v.parse::<i32>() {
        Ok(n) if n <= 1 => "every user may open CPU-wide events",
        Ok(2) => "unprivileged users: own processes, user space only",
        Ok(_) => "unprivileged users: no perf events",
        Err(_) => "unknown value",
    };
    Check::ok(
        Group::System,
        name,
        format!("{v} ({meaning}); not limiting: ProfileMate runs with CAP_SYS_ADMIN, which overrides it"),
    )
}

/// The output directory an attach would write into: refused as `attach` would refuse it
/// (symbolic link, another user's, writable by others), and tried: a directory is created in
/// it and removed.
#[must_use]
pub fn output_dir(base: &Path) -> Vec<Check> {
    let name = "output_dir";
    let shown = base.display();
    let fix = "choose another with --out DIR or VLLM_PROFILING_DIR";
    match crate::output::inspect_base(base) {
        Err(e) => vec![Check::fail(Group::Output, name, e.to_string(), fix)],
        Ok(None) => vec![creatable(base, fix)],
        Ok(Some(_)) => match try_write(base) {
            Ok(()) => vec![Check::ok(
                Group::Output,
                name,
                format!("{shown}: a directory, not a link, writable (tried)"),
            )],
            Err(e) => vec![Check::fail(
                Group::Output,
                name,
                format!("{shown}: cannot create a session directory in it ({e})"),
                fix,
            )],
        },
    }
}

/// A base that does not exist yet: its nearest existing ancestor must take a new directory.
fn creatable(base: &Path, fix: &str) -> Check {
    let name = "output_dir";
    let ancestor = base.ancestors().skip(1).find(|a| a.is_dir());
    let Some(ancestor) = ancestor else {
        return Check::fail(
            Group::Output,
            name,
            format!("{}: no existing parent directory", base.display()),
            fix,
        );
    };
    match try_write(ancestor) {
        Ok(()) => Check::ok(
            Group::Output,
            name,
            format!(
                "{}: does not exist yet; will be created (its parent {} is writable, tried)",
                base.display(),
                ancestor.display()
            ),
        ),
        Err(e) => Check::fail(
            Group::Output,
            name,
            format!(
                "{}: does not exist and {} takes no new directory ({e})",
                base.display(),
                ancestor.display()
            ),
            fix,
        ),
    }
}

/// Creates a uniquely named directory in `dir` and removes it.
fn try_write(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".profilemate-doctor-{}", std::process::id()));
    std::fs::create_dir(&probe)?;
    std::fs::remove_dir(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn return_probes_under_seccomp_are_judged_by_kernel_version() {
        assert_eq!(return_probes("6.18.1", Some((6, 18))).status, Status::Ok);
        assert_eq!(return_probes("6.6.1", Some((6, 6))).status, Status::Ok);
        let risky = return_probes("6.12.1", Some((6, 12)));
        assert_eq!(risky.status, Status::Warn);
        assert!(risky.fix.unwrap_or_default().contains("--allow-uretprobes"));
    }

    #[test]
    fn old_kernels_fail() {
        assert_eq!(kernel("5.4.0", Some((5, 4))).status, Status::Fail);
        assert_eq!(kernel("6.18.0", Some((6, 18))).status, Status::Ok);
    }

    #[test]
    fn output_directories_are_judged_as_attach_would() {
        let dir = std::env::temp_dir().join(format!("pm-doctor-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ok = output_dir(&dir);
        assert_eq!(ok[0].status, Status::Ok, "{ok:?}");
        let missing = output_dir(&dir.join("a/b"));
        assert_eq!(missing[0].status, Status::Ok, "{missing:?}");
        assert!(missing[0].detail.contains("will be created"));
        let link = dir.join("link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        let refused = output_dir(&link);
        assert_eq!(refused[0].status, Status::Fail, "{refused:?}");
        assert!(refused[0].detail.contains("symbolic link"));
        assert!(!dir.join("a").exists(), "nothing created");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
