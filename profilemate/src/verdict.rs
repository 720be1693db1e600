//! Whether a session can record anything. A session in which CUDA libraries were found but
//! not one probe could be attached records nothing: the session stops at once, is written
//! whole (metadata.json `failure` says why), and the tool exits non-zero with the cause and
//! its fix.
//!
//! Owns: telling an empty session from a working one, and the words for it. Does not own:
//! attaching (`probes`) or stopping (`session`).

use crate::probes::{FailedProbe, FailureKind, ProbeReport};

/// True when probes were tried and not one went in.
#[must_use]
pub fn nothing_attached(report: &ProbeReport) -> bool {
    report.attached_count == 0 && !report.failed.is_empty()
}

/// The failure that explains the others: a refusal first (it is what blocks a privileged
/// fix), then a missing file, a missing symbol, anything else.
fn leading_failure(report: &ProbeReport) -> Option<&FailedProbe> {
    [
        FailureKind::Permission,
        FailureKind::FileGone,
        FailureKind::NoSymbol,
        FailureKind::Other,
    ]
    .iter()
    .find_map(|k| report.failed.iter().find(|f| f.kind == Some(*k)))
}

/// The fix for a failure of `kind`.
fn fix(kind: Option<FailureKind>) -> String {
    match kind {
        Some(FailureKind::Permission) => format!(
            "run profilemate as root (sudo), or give it the capabilities {} \
             (`sudo setcap {}+ep profilemate`)",
            crate::preflight::ATTACH_CAPS.join(" + "),
            crate::preflight::SETCAP_LIST
        ),
        Some(FailureKind::FileGone) => "the target's library files cannot be reached from here: \
             attach from the target's host (not from inside another container), or restart the \
             target if its libraries were removed"
            .to_owned(),
        Some(FailureKind::NoSymbol) => "the mapped libraries export none of the CUDA calls \
             ProfileMate probes: check that they are NVIDIA's libcudart/libcuda (see \
             metadata.json probes.failed)"
            .to_owned(),
        _ => "see metadata.json probes.failed for each failure".to_owned(),
    }
}

/// Cause and fix of a session in which nothing could be attached.
#[must_use]
pub fn empty_session_cause(report: &ProbeReport) -> String {
    let Some(first) = leading_failure(report) else {
        return "no probe could be attached".to_owned();
    };
    let what = if first.symbol.is_empty() {
        first.library.clone()
    } else {
        format!("{} in {}", first.symbol, first.library)
    };
    format!(
        "no probe could be attached ({} attempts failed, none succeeded), so the session recorded \
         nothing. First cause: {what}: {}. Fix: {}",
        report.failed.len(),
        first.reason,
        fix(first.kind)
    )
}

/// The terminal line for a session in which some probes failed (None when none did).
#[must_use]
pub fn failed_probes_line(report: &ProbeReport) -> Option<String> {
    let first = leading_failure(report)?;
    Some(format!(
        "{} probes could not be attached (first: {} {}: {}); see metadata.json probes.failed",
        report.failed.len(),
        first.library,
        first.symbol,
        first.reason
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(symbol: &str, kind: FailureKind, reason: &str) -> FailedProbe {
        FailedProbe {
            pid: 7,
            library: "/usr/lib/libcudart.so.12".to_owned(),
            symbol: symbol.to_owned(),
            reason: reason.to_owned(),
            kind: Some(kind),
        }
    }

    #[test]
    fn a_session_is_empty_only_when_attempts_failed_and_none_succeeded() {
        let mut report = ProbeReport::default();
        assert!(!nothing_attached(&report), "nothing tried yet (--wait)");
        report
            .failed
            .push(failed("cudaGraphLaunch", FailureKind::Other, "x"));
        assert!(nothing_attached(&report));
        report.attached_count = 1;
        assert!(!nothing_attached(&report));
    }

    #[test]
    fn a_refusal_names_the_privileges_that_fix_it() {
        let mut report = ProbeReport::default();
        report.failed.push(failed(
            "cudaGraphLaunch",
            FailureKind::NoSymbol,
            "libcudart does not export this symbol",
        ));
        report.failed.push(failed(
            "cudaEventRecord",
            FailureKind::Permission,
            "`perf_event_open` failed: Permission denied (os error 13)",
        ));
        let msg = empty_session_cause(&report);
        assert!(msg.contains("Permission denied"), "{msg}");
        assert!(
            msg.contains("sudo") && msg.contains("CAP_SYS_ADMIN"),
            "{msg}"
        );
        assert!(
            msg.contains("cudaEventRecord in /usr/lib/libcudart.so.12"),
            "{msg}"
        );
    }

    #[test]
    fn os_errors_are_classified_through_the_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("attach failed")]
        struct Outer(#[source] std::io::Error);
        let kind = |code| FailureKind::of(&Outer(std::io::Error::from_raw_os_error(code)));
        assert_eq!(kind(libc::EACCES), FailureKind::Permission);
        assert_eq!(kind(libc::EPERM), FailureKind::Permission);
        assert_eq!(kind(libc::ENOENT), FailureKind::FileGone);
        assert_eq!(kind(libc::EINVAL), FailureKind::Other);
    }
}
