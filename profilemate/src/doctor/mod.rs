//! `profilemate doctor`: a readiness report before an attach, one check per line, each OK,
//! WARN or FAIL with its fix.
//!
//! Owns: the report's data model ([`Check`], [`Report`]), the order of the groups, and the
//! table the terminal shows. The checks live one group per file: `system` (kernel features,
//! sysctls, the output directory), `privileges` (what this process may do, found by trying it
//! on itself), `target` (the process tree given with `--pid`, read without attaching or
//! changing anything). Does not own: the facts themselves, which come from the modules an
//! attach uses (`preflight`, `discovery`, `probes`, `python`, `vllm`), so the doctor and the
//! attach cannot disagree; nor printing (main.rs prints what [`Report::table`] returns).

pub mod privileges;
pub mod system;
pub mod target;

use std::path::PathBuf;

use serde::Serialize;

/// The verdict of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Works as an attach needs it.
    Ok,
    /// An attach works, with something less than it could record (said in the detail).
    Warn,
    /// An attach fails or records nothing that this check covers.
    Fail,
}

impl Status {
    /// `OK`, `WARN`, `FAIL`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

/// Which part of the report a check belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// The kernel and its settings.
    System,
    /// What this process may do.
    Privileges,
    /// Where sessions are written.
    Output,
    /// The process tree given with `--pid`.
    Target,
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Its group.
    pub group: Group,
    /// A stable name (`uprobe_event`, `cuda_libraries`, ...), for scripts.
    pub name: &'static str,
    /// The process it is about (target checks per process).
    pub pid: Option<u32>,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it (always set for WARN and FAIL; sometimes a hint on OK).
    pub fix: Option<String>,
}

impl Check {
    /// An OK line.
    #[must_use]
    pub fn ok(group: Group, name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            group,
            name,
            pid: None,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A WARN line with its fix.
    #[must_use]
    pub fn warn(
        group: Group,
        name: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::ok(group, name, detail).with_fix(Status::Warn, fix)
    }

    /// A FAIL line with its fix.
    #[must_use]
    pub fn fail(
        group: Group,
        name: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::ok(group, name, detail).with_fix(Status::Fail, fix)
    }

    /// The same line with `status` and its fix.
    fn with_fix(self, status: Status, fix: impl Into<String>) -> Self {
        Self {
            status,
            fix: Some(fix.into()),
            ..self
        }
    }

    /// The same check, about process `pid`.
    #[must_use]
    pub fn about(mut self, pid: u32) -> Self {
        self.pid = Some(pid);
        self
    }

    /// The same check with a hint (an OK line's optional advice).
    #[must_use]
    pub fn hint(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// What to check.
#[derive(Clone, Debug)]
pub struct Options {
    /// The target (None: the machine and this process only).
    pub pid: Option<u32>,
    /// Follow the target's descendants, as an attach does by default.
    pub children: bool,
    /// The output base directory an attach would use.
    pub out_dir: PathBuf,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// "profilemate".
    pub tracer: &'static str,
    /// Tracer version.
    pub tracer_version: &'static str,
    /// `uname -r`.
    pub kernel: String,
    /// The pid given.
    pub pid: Option<u32>,
    /// Every check, in group order.
    pub checks: Vec<Check>,
    /// How many checks are OK.
    pub ok: usize,
    /// How many are WARN.
    pub warn: usize,
    /// How many are FAIL (the exit status is 1 when any).
    pub fail: usize,
}

/// Runs every check that applies. Nothing is attached to the target and nothing in it
/// changes: its files and memory are read, and what needs trying is tried on this process.
#[must_use]
pub fn run(opts: &Options) -> Report {
    let mut checks = system::checks();
    checks.extend(system::output_dir(&opts.out_dir));
    checks.extend(privileges::checks());
    if let Some(pid) = opts.pid {
        checks.extend(target::checks(pid, opts.children));
    }
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    Report {
        tracer: "profilemate",
        tracer_version: crate::VERSION,
        kernel: crate::preflight::kernel_release(),
        pid: opts.pid,
        ok: count(Status::Ok),
        warn: count(Status::Warn),
        fail: count(Status::Fail),
        checks,
    }
}

/// Widest check label shown in full; longer ones push their detail right.
const LABEL_WIDTH: usize = 28;

impl Report {
    /// Whether any check failed.
    #[must_use]
    pub fn has_failures(&self) -> bool {
        self.fail > 0
    }

    /// The report as terminal lines: `STATUS  check  detail  [fix: ...]`, then a total.
    #[must_use]
    pub fn table(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .checks
            .iter()
            .map(|c| {
                let label = match c.pid {
                    Some(pid) => format!("{}[{pid}]", c.name),
                    None => c.name.to_owned(),
                };
                let fix = c
                    .fix
                    .as_deref()
                    .map(|f| match c.status {
                        Status::Ok => format!("  [hint: {f}]"),
                        _ => format!("  [fix: {f}]"),
                    })
                    .unwrap_or_default();
                format!(
                    "{:<4}  {label:<LABEL_WIDTH$}  {}{fix}",
                    c.status.as_str(),
                    c.detail
                )
            })
            .collect();
        lines.push(format!(
            "{} OK, {} WARN, {} FAIL",
            self.ok, self.warn, self.fail
        ));
        lines
    }
}

/// The fix for anything refused for lack of privileges.
#[must_use]
pub fn privileges_fix() -> String {
    format!(
        "run profilemate as root (sudo), or give it {} (`sudo setcap {}+ep profilemate`)",
        crate::preflight::ATTACH_CAPS.join(" + "),
        crate::preflight::SETCAP_LIST
    )
}

/// Whether an OS error is a refusal (EPERM, EACCES).
#[must_use]
pub fn is_refusal(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(statuses: &[Status]) -> Report {
        let checks: Vec<Check> = statuses
            .iter()
            .map(|s| Check {
                status: *s,
                fix: (*s != Status::Ok).then(|| "do this".to_owned()),
                ..Check::ok(Group::System, "x", "found")
            })
            .collect();
        let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
        Report {
            tracer: "profilemate",
            tracer_version: "0",
            kernel: "6.18".into(),
            pid: None,
            ok: count(Status::Ok),
            warn: count(Status::Warn),
            fail: count(Status::Fail),
            checks,
        }
    }

    #[test]
    fn a_failure_anywhere_fails_the_report() {
        assert!(!report(&[Status::Ok, Status::Warn]).has_failures());
        assert!(report(&[Status::Ok, Status::Fail]).has_failures());
    }

    #[test]
    fn table_lines_lead_with_the_status_and_end_with_the_fix() {
        let r = report(&[Status::Ok, Status::Fail]);
        let t = r.table();
        assert!(t[0].starts_with("OK    x "), "{t:?}");
        assert!(!t[0].contains("fix:"), "{t:?}");
        assert!(
            t[1].starts_with("FAIL  x ") && t[1].ends_with("[fix: do this]"),
            "{t:?}"
        );
        assert_eq!(t[2], "1 OK, 0 WARN, 1 FAIL");
    }

    #[test]
    fn json_names_statuses_in_capitals_and_keeps_the_pid() {
        let c = Check::fail(Group::Target, "python", "3.10", "use 3.11+").about(7);
        let v = serde_json::to_value(&c).unwrap_or_default();
        assert_eq!(v["status"], "FAIL");
        assert_eq!(v["group"], "target");
        assert_eq!(v["pid"], 7);
        assert_eq!(v["fix"], "use 3.11+");
    }
}
