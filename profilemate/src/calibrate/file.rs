//! The calibration file: what `profilemate calibrate` measured on one machine and driver,
//! versioned, and where it lives.
//!
//! Owns: the schema (serde, `schema_version`), reading it back with every figure checked
//! (a malformed or implausible file is refused with the reason, never half used), writing it
//! (a temporary file renamed into place), and the default location an attach looks in. Does
//! not own: measuring (`measure`) or using the figures (`session`, `profilers::forward_pass`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Default file for root (an attach runs as root): beside other services' state.
const SYSTEM_PATH: &str = "/var/lib/profilemate/calibration.json";

/// A latency distribution in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Micros {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Micros {
    /// The distribution of `values_ns` (None when empty).
    #[must_use]
    pub fn of_ns(values_ns: &[i64]) -> Option<Self> {
        let mut v: Vec<i64> = values_ns.to_vec();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |q: f64| {
            let i = ((v.len() as f64 - 1.0) * q).round() as usize;
            v[i.min(v.len() - 1)] as f64 / 1e3
        };
        Some(Self {
            count: v.len() as u64,
            p50: round3(at(0.50)),
            p95: round3(at(0.95)),
            p99: round3(at(0.99)),
            max: round3(at(1.0)),
        })
    }

    fn check(&self, what: &str) -> Result<(), String> {
        let ordered = self.p50 <= self.p95 && self.p95 <= self.p99 && self.p99 <= self.max;
        let finite = [self.p50, self.p95, self.p99, self.max]
            .iter()
            .all(|v| v.is_finite() && v.abs() < 1e7);
        if self.count == 0 || !ordered || !finite {
            return Err(format!(
                "{what}: not a distribution (count {}, P50 {} <= P95 {} <= P99 {} <= max {} expected)",
                self.count, self.p50, self.p95, self.p99, self.max
            ));
        }
        Ok(())
    }
}

/// Microseconds with nanosecond resolution.
#[must_use]
pub fn round3(us: f64) -> f64 {
    (us * 1e3).round() / 1e3
}

/// The GPU and driver the figures belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuIdentity {
    /// Device ordinal calibrated.
    pub ordinal: u32,
    /// `cuDeviceGetName`.
    pub name: String,
    /// `cuDriverGetVersion` (13000 = CUDA 13.0).
    pub driver_api_version: i32,
    /// The libcuda file traced (its name carries the driver release, e.g. libcuda.so.580.95.05).
    pub driver_library: String,
    /// (major, minor).
    pub compute_capability: (i32, i32),
}

/// Wake-up latency (the wait's return as the return probe sees it, minus the moment the GPU
/// work ended) per synchronization pattern. Events are created as PyTorch's
/// `torch.cuda.Event()` creates them (timing disabled, spin-waited), except in
/// `blocking_event_sync_next_step` (`Event(blocking=True)`: the waiter sleeps and is woken).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WakeUp {
    /// The spin-waited patterns together (the events, graph and stream waits vLLM makes):
    /// the figures an attach uses.
    pub all: Micros,
    /// `cuEventSynchronize` on the previous step's event after the next step was launched
    /// (vLLM's async scheduling).
    pub event_sync_next_step: Option<Micros>,
    /// The same with blocking-sync events (kept apart from `all`).
    #[serde(default)]
    pub blocking_event_sync_next_step: Option<Micros>,
    /// A graph replay, then an event record and its synchronize.
    pub graph_replay: Option<Micros>,
    /// `cuStreamSynchronize` right after the launch.
    pub stream_sync: Option<Micros>,
}

/// What probing costs the traced process, per hit (µs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeCost {
    /// An entry uprobe (measured on `cuEventRecord`, entry only).
    pub uprobe_us: f64,
    /// An entry uprobe plus a return probe (measured on `cuEventSynchronize` of a finished event).
    pub uprobe_and_uretprobe_us: f64,
    /// The difference: the return probe alone.
    pub uretprobe_us: f64,
    /// A hardware breakpoint hit with the program attached (None: breakpoints unavailable).
    pub hw_breakpoint_us: Option<f64>,
    /// Why the breakpoint cost is absent.
    pub hw_breakpoint_error: Option<String>,
}

/// One kernel length of the exactness sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Kernel length asked for (µs).
    pub kernel_us: f64,
    /// Waits measured.
    pub waits: u64,
    /// Share of waits that blocked long enough to be `exact` (%).
    pub exact_pct: f64,
    /// How long the waits blocked, as the probes saw it.
    pub blocked_us: Micros,
    /// Their wake-up latency.
    pub wake_up_us: Micros,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// RFC 3339.
    pub created: String,
    /// Where it was measured.
    pub hostname: String,
    /// `uname -r`.
    pub kernel: String,
    /// The profilemate that measured it.
    pub tracer_version: String,
    /// The GPU.
    pub gpu: GpuIdentity,
    /// Wake-up latency per pattern.
    pub wake_up_us: WakeUp,
    /// From the launch call's entry probe to the kernel's start (the GPU idle before).
    pub launch_latency_us: Micros,
    /// Probe costs per hit.
    pub probe_cost: ProbeCost,
    /// The attach's rule for `exact` (a wait that blocked at least this long, µs).
    pub exact_threshold_us: f64,
    /// The shortest wait (µs, its 1st percentile) of the shortest kernel whose waits were
    /// exact in at least 99 % of cases (None: none in the sweep was).
    pub min_reliably_exact_wait_us: Option<f64>,
    /// The sweep behind it.
    pub exact_sweep: Vec<SweepPoint>,
    /// Caveats.
    pub notes: Vec<String>,
}

/// A calibration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// Reading failed.
    #[error("cannot read the calibration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not the schema (bad JSON, a missing or mistyped field).
    #[error("the calibration file {path} is malformed: {why}; run `profilemate calibrate` again on this machine")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Another schema version.
    #[error("the calibration file {path} has schema version {found}, this profilemate reads {SCHEMA_VERSION}; run `profilemate calibrate` again")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Writing failed.
    #[error("cannot write the calibration file {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Calibration {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, CalibrationError> {
        let text = std::fs::read_to_string(path).map_err(|source| CalibrationError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks `text` (read from `path`).
    pub fn parse(path: &Path, text: &str) -> Result<Self, CalibrationError> {
        let malformed = |why: String| CalibrationError::Malformed {
            path: path.to_owned(),
            why,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        let found = value["schema_version"]
            .as_u64()
            .ok_or_else(|| malformed("no schema_version".to_owned()))?;
        if found != u64::from(SCHEMA_VERSION) {
            return Err(CalibrationError::Version {
                path: path.to_owned(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
            });
        }
        let cal: Self = serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
        cal.check().map_err(malformed)?;
        Ok(cal)
    }

    /// The figures an attach relies on must be distributions of plausible values.
    fn check(&self) -> Result<(), String> {
        self.wake_up_us.all.check("wake_up_us.all")?;
        self.launch_latency_us.check("launch_latency_us")?;
        if self.wake_up_us.all.p50 < 0.0 {
            return Err("wake_up_us.all.p50 is negative".to_owned());
        }
        Ok(())
    }

    /// Writes the file at `path` (its directory created), through a temporary file renamed
    /// into place so a reader never sees half of it.
    pub fn save(&self, path: &Path) -> Result<(), CalibrationError> {
        let write_err = |source| CalibrationError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        let json =
            serde_json::to_string_pretty(self).map_err(|e| write_err(std::io::Error::other(e)))?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, json + "\n").map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            write_err(e)
        })
    }
}

/// Where `calibrate` writes and `attach` looks when no `--calibration FILE` is given:
/// /var/lib/profilemate/calibration.json for root; otherwise
/// `$XDG_STATE_HOME/profilemate/calibration.json` (default `~/.local/state`).
#[must_use]
pub fn default_path() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from(SYSTEM_PATH);
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("profilemate/calibration.json")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Calibration {
        let m = |p50: f64| Micros {
            count: 100,
            p50,
            p95: p50 * 2.0,
            p99: p50 * 3.0,
            max: p50 * 4.0,
        };
        Calibration {
            schema_version: SCHEMA_VERSION,
            created: "2026-01-01T00:00:00+00:00".into(),
            hostname: "gpu".into(),
            kernel: "6.18.0".into(),
            tracer_version: "0.1.0".into(),
            gpu: GpuIdentity {
                ordinal: 0,
                name: "NVIDIA H200".into(),
                driver_api_version: 13000,
                driver_library: "/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05".into(),
                compute_capability: (9, 0),
            },
            wake_up_us: WakeUp {
                all: m(5.0),
                event_sync_next_step: Some(m(5.0)),
                blocking_event_sync_next_step: None,
                graph_replay: Some(m(6.0)),
                stream_sync: None,
            },
            launch_latency_us: m(4.0),
            probe_cost: ProbeCost {
                uprobe_us: 1.0,
                uprobe_and_uretprobe_us: 2.5,
                uretprobe_us: 1.5,
                hw_breakpoint_us: None,
                hw_breakpoint_error: Some("no debug registers".into()),
            },
            exact_threshold_us: 100.0,
            min_reliably_exact_wait_us: Some(101.0),
            exact_sweep: Vec::new(),
            notes: vec!["test".into()],
        }
    }

    #[test]
    fn a_calibration_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("pm-cal-{}", std::process::id()));
        let path = dir.join("sub/calibration.json");
        let cal = sample();
        cal.save(&path).expect("save");
        assert_eq!(Calibration::load(&path).expect("load"), cal);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_malformed_file_is_refused_with_the_reason() {
        let p = Path::new("/x/calibration.json");
        let good = serde_json::to_value(sample()).expect("json");
        let e = Calibration::parse(p, "{not json").expect_err("bad json");
        assert!(e.to_string().contains("malformed"), "{e}");
        assert!(e.to_string().contains("profilemate calibrate"), "{e}");
        let mut missing = good.clone();
        missing["wake_up_us"]["all"] = serde_json::Value::Null;
        let e = Calibration::parse(p, &missing.to_string()).expect_err("missing");
        assert!(e.to_string().contains("malformed"), "{e}");
        let mut unordered = good.clone();
        unordered["wake_up_us"]["all"]["p99"] = serde_json::json!(1.0);
        let e = Calibration::parse(p, &unordered.to_string()).expect_err("p99 < p95");
        assert!(e.to_string().contains("wake_up_us.all"), "{e}");
        let mut other = good;
        other["schema_version"] = serde_json::json!(99);
        let e = Calibration::parse(p, &other.to_string()).expect_err("version");
        assert!(e.to_string().contains("schema version 99"), "{e}");
    }

    #[test]
    fn percentiles_of_nanoseconds_in_microseconds() {
        let v: Vec<i64> = (1..=100).map(|i| i * 1000).collect();
        let m = Micros::of_ns(&v).expect("values");
        assert_eq!((m.count, m.p50, m.p99, m.max), (100, 51.0, 99.0, 100.0));
        assert!(Micros::of_ns(&[]).is_none());
    }
}
