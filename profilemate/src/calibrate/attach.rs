//! Which calibration an attach uses, and what it takes from it.
//!
//! Owns: the lookup (`--calibration FILE`, else the default location), the choice between
//! refusing and going on (a file named on the command line must be good: the session stops
//! before anything is attached; a bad file at the default location is set aside with a
//! warning), and the figures written into metadata.json and forward_pass_summary.json. Does
//! not own: the schema (`file`) or any correction of the times: the figures state the error
//! bound of exact completions; the times themselves are left as observed (docs/ACCURACY.md
//! says why).

use std::path::Path;

use serde::Serialize;

use super::file::{default_path, Calibration, CalibrationError, GpuIdentity, Micros, ProbeCost};

/// The calibration figures a session used, for metadata.json `calibration`.
#[derive(Debug, Clone, Serialize)]
pub struct Used {
    /// The file read.
    pub path: String,
    /// When it was measured.
    pub created: String,
    /// Where it was measured.
    pub hostname: String,
    /// Whether that is this machine (a calibration is valid for one machine and driver).
    pub same_host: bool,
    /// The GPU and driver it belongs to.
    pub gpu: GpuIdentity,
    /// The wake-up latency of waits on this machine (all patterns).
    pub wake_up_us: Micros,
    /// From a launch call's entry to the kernel's start.
    pub launch_latency_us: Micros,
    /// What bounds an `exact` row's completion error: its completion is the wait's return,
    /// at most this much after the GPU finished (the measured wake-up P99).
    pub exact_completion_error_bound_us: f64,
    /// The shortest wait that was reliably `exact` there.
    pub min_reliably_exact_wait_us: Option<f64>,
    /// What the probes cost per hit there.
    pub probe_cost: ProbeCost,
    /// What was done with the figures.
    pub applied: &'static str,
}

/// What was used, or why nothing was.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// A calibration was read.
    Used(Box<Used>),
    /// None: why (said in metadata.json and, where a file was bad, on the terminal).
    None(String),
}

/// Said of every used calibration: the times are not shifted.
const APPLIED: &str = "bound only: exact rows' completions stay the wait's return as observed; \
     the true GPU end lies at most exact_completion_error_bound_us before it";

impl Used {
    fn of(path: &Path, cal: Calibration) -> Self {
        let here = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            path: path.display().to_string(),
            same_host: here == cal.hostname,
            created: cal.created,
            hostname: cal.hostname,
            gpu: cal.gpu,
            exact_completion_error_bound_us: cal.wake_up_us.all.p99,
            wake_up_us: cal.wake_up_us.all,
            launch_latency_us: cal.launch_latency_us,
            min_reliably_exact_wait_us: cal.min_reliably_exact_wait_us,
            probe_cost: cal.probe_cost,
            applied: APPLIED,
        }
    }
}

/// The calibration for a session: `explicit` (`--calibration FILE`) must load, or the session
/// does not start; otherwise the default location is tried.
pub fn resolve(explicit: Option<&Path>) -> Result<Resolution, CalibrationError> {
    if let Some(path) = explicit {
        let cal = Calibration::load(path)?;
        return Ok(Resolution::Used(Box::new(Used::of(path, cal))));
    }
    Ok(resolve_default(&default_path()))
}

/// The calibration at `path` (the default location), or why there is none.
#[must_use]
pub fn resolve_default(path: &Path) -> Resolution {
    if !path.exists() {
        return Resolution::None(format!(
            "no calibration file at {} (`profilemate calibrate` on this GPU machine writes it; \
             or pass --calibration FILE): exact rows carry no measured error bound",
            path.display()
        ));
    }
    match Calibration::load(path) {
        Ok(cal) => Resolution::Used(Box::new(Used::of(path, cal))),
        Err(e) => Resolution::None(format!("{e} (set aside; the session goes on without it)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_file_that_is_bad_stops_the_session_a_default_one_does_not() {
        let dir = std::env::temp_dir().join(format!("pm-cal-attach-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{\"schema_version\": 1}").expect("write");
        let e = resolve(Some(&bad)).expect_err("refused");
        assert!(e.to_string().contains("malformed"), "{e}");
        match resolve_default(&bad) {
            Resolution::None(why) => assert!(why.contains("set aside"), "{why}"),
            Resolution::Used(_) => panic!("a bad default file was used"),
        }
        match resolve_default(&dir.join("absent.json")) {
            Resolution::None(why) => assert!(why.contains("profilemate calibrate"), "{why}"),
            Resolution::Used(_) => panic!("nothing to use"),
        }
        let good = dir.join("good.json");
        crate::calibrate::file::tests::sample()
            .save(&good)
            .expect("save");
        match resolve(Some(&good)).expect("good") {
            Resolution::Used(u) => {
                assert!((u.exact_completion_error_bound_us - 15.0).abs() < 1e-9);
                assert_eq!(u.path, good.display().to_string());
            }
            Resolution::None(why) => panic!("{why}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
