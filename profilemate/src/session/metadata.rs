//! metadata.json: what was profiled, how, and everything that was lost or unattributable.
//!
//! Owns the file's shape and its last conclusions (calibration, failure, notes); not the
//! counting (each stage keeps its own statistics) nor the terminal lines (`losses`, `summary`).

use serde::Serialize;

use crate::{
    config::TimingMode,
    correlate::{python::PythonStats, CorrelatorStats},
    discovery::{MappedLibrary, ProcessInfo},
    probes::{CudaStacks, KernelCounters, ProbeReport, ProgramCost, UsdtReport},
    python::Interpreter,
};

/// Whether a target's Python stacks are walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PythonStatus {
    /// Its stacks are walked.
    Walking,
    /// The process is not a Python interpreter.
    NotPython,
    /// It is one ProfileMate cannot walk (version, build, or setup failed).
    Unsupported,
}

/// What was found about one target's Python interpreter.
#[derive(Debug, Serialize)]
pub struct PythonRecord {
    /// Process.
    pub pid: u32,
    /// `walking`, `not_python` or `unsupported`.
    pub status: PythonStatus,
    /// Version, binary, layout and its source (when found).
    pub interpreter: Option<Interpreter>,
    /// Whether ProfileMate's tests cover this version's layout.
    pub tested: Option<bool>,
    /// Whether this version's objects are read (its row in `python::versions` has an object
    /// layout): without, the vLLM scheduler and batch reads stay off for the process.
    pub objects: Option<bool>,
    /// Why it is not walked.
    pub reason: Option<String>,
}

/// The Python side of the session.
#[derive(Debug, Serialize)]
pub struct PythonReport {
    /// Sampling rate (0: off).
    pub sample_hz: u64,
    /// CPUs sampled.
    pub sampled_cpus: usize,
    /// Why sampling is off, if it failed to start.
    pub sampling_error: Option<String>,
    /// Where stacks are walked at CUDA calls.
    pub cuda_stacks: CudaStacks,
    /// Per process.
    pub processes: Vec<PythonRecord>,
    /// USDT probes (GC) per process.
    pub usdt: Vec<UsdtReport>,
    /// Walk and symbolization counters.
    pub stats: PythonStats,
    /// The vLLM name bundle used (`vllm::bundle`; each process's own version and the bundle
    /// that fits it are in `vllm_state`).
    pub vllm_bundle: &'static str,
    /// Per-step `SchedulerOutput` and graph descriptor reads.
    pub vllm_batches: crate::vllm::batch::BatchStats,
    /// Scheduler-state polls per process.
    pub vllm_state: Vec<crate::vllm::watcher::StateReport>,
    /// Hardware breakpoints on the scheduler's methods.
    pub breakpoints: BreakpointSection,
}

/// The hardware breakpoints: what was watched where, and what the hits gave.
#[derive(Debug, Clone, Serialize)]
pub struct BreakpointSection {
    /// `--no-breakpoints` not given.
    pub enabled: bool,
    /// Per process.
    pub processes: Vec<crate::probes::breakpoints::BreakpointReport>,
    /// Hits and the calls they gave.
    pub calls: crate::vllm::calls::CallStats,
}

/// How the session's main loop kept its clock: rescans and the stop.
#[derive(Debug, Default, Clone, Serialize)]
pub struct MainLoopStats {
    /// Rescans of the process tree and mappings.
    pub rescans: u64,
    /// The longest rescan (ms): attaching to a new library happens in one.
    pub rescan_ms_max: f64,
    /// How late the `--duration` stop was taken (ms).
    pub deadline_late_ms: f64,
    /// Rescans that took longer than 100 ms: (seconds since start, ms), the first 32.
    pub slow_rescans: Vec<(f64, f64)>,
}

/// A target process as seen during the session.
#[derive(Debug, Serialize)]
pub struct TargetRecord {
    /// Identity at discovery.
    #[serde(flatten)]
    pub info: ProcessInfo,
    /// Seconds since session start when first seen.
    pub first_seen_sec: f64,
    /// Seconds since session start when found gone (None: alive at the end).
    pub exited_sec: Option<f64>,
    /// CUDA libraries found mapped.
    pub libraries: Vec<MappedLibrary>,
    /// Seccomp mode at discovery (None: unreadable).
    pub seccomp: Option<crate::preflight::SeccompMode>,
    /// Whether return probes went in (see `preflight::return_probes`).
    pub return_probes: crate::preflight::ReturnProbes,
    /// What is not measured in this process, when its return probes were left out.
    pub return_probes_lost: Option<&'static str>,
}

/// Losses and attribution gaps, all in one place.
#[derive(Debug, Serialize)]
pub struct LossReport {
    /// Kernel-side counters (ring buffer full = records lost).
    pub kernel: KernelCounters,
    /// Ring-buffer records read.
    pub records_read: u64,
    /// Records that could not be decoded.
    pub decode_errors: u64,
    /// The reader thread: records shed or dropped at the userspace queue, by kind.
    pub reader: crate::probes::reader::ReaderStats,
    /// The processing thread: lag behind the target, time per stage, records left
    /// unprocessed at the stop.
    pub pipeline: crate::session::pipeline::PipelineStats,
    /// The main loop's own timing.
    pub main_loop: MainLoopStats,
    /// The longest /metrics scrape (ms), on the watcher thread.
    pub metrics_scrape_ms_max: f64,
    /// Correlator attribution counters.
    pub correlator: CorrelatorStats,
}

/// The whole file.
#[derive(Debug, Serialize)]
pub struct Metadata {
    /// "profilemate".
    pub tracer: &'static str,
    /// Tracer version.
    pub tracer_version: &'static str,
    /// `uname -r`.
    pub kernel: String,
    /// Hostname.
    pub hostname: String,
    /// The pid given.
    pub root_pid: u32,
    /// Descendants followed.
    pub follow_children: bool,
    /// Step completion detection.
    pub timing_mode: TimingMode,
    /// Per-kernel probes attached.
    pub kernel_probes: bool,
    /// Session start (RFC 3339, local time).
    pub start_time: String,
    /// Session end.
    pub end_time: String,
    /// Seconds profiled.
    pub duration_sec: f64,
    /// CLOCK_MONOTONIC at session start (ns): every `*_sec` column is seconds since this,
    /// so rows can be aligned with other traces of the same machine.
    pub monotonic_start_ns: u64,
    /// Why the session ended.
    pub stop_reason: String,
    /// Ring buffer size.
    pub ring_buffer_bytes: u32,
    /// Target processes.
    pub targets: Vec<TargetRecord>,
    /// Probes attached and failed.
    pub probes: ProbeReport,
    /// Python context: interpreters, sampling, USDT probes, walk counters.
    pub python: PythonReport,
    /// Kernel-measured cost per program (only with `kernel.bpf_stats_enabled=1`).
    pub program_costs: Vec<ProgramCost>,
    /// The API server's /metrics compared with ProfileMate's numbers (absent: no vLLM
    /// /metrics endpoint was reachable on localhost).
    pub vllm_metrics: Option<crate::vllm::metrics::MetricsCheck>,
    /// Losses.
    pub losses: LossReport,
    /// Caveats of this session's outputs.
    pub notes: Vec<String>,
    /// Why the session recorded nothing, with the fix (absent when it recorded); the exit
    /// status is then non-zero.
    pub failure: Option<String>,
    /// The calibration used (`profilemate calibrate`): its file and the figures taken from
    /// it; null when none was used (`calibration_none` says why).
    pub calibration: Option<crate::calibrate::attach::Used>,
    /// Why no calibration was used.
    pub calibration_none: Option<String>,
}

/// Completes `m` once everything is counted: the calibration used (or why none), why the
/// session recorded nothing (`nothing_attached`), and the caveats of its outputs.
pub(super) fn conclude(
    m: &mut Metadata,
    calibration: &crate::calibrate::attach::Resolution,
    nothing_attached: bool,
) {
    use crate::calibrate::attach::Resolution;
    m.calibration = match calibration {
        Resolution::Used(u) => Some(u.as_ref().clone()),
        Resolution::None(_) => None,
    };
    m.calibration_none = match calibration {
        Resolution::Used(_) => None,
        Resolution::None(why) => Some(why.clone()),
    };
    if nothing_attached {
        m.failure = Some(crate::verdict::empty_session_cause(&m.probes));
    }
    let gc_attached = m
        .python
        .usdt
        .iter()
        .any(|u| u.status == crate::probes::UsdtStatus::Attached);
    if gc_attached && m.python.stats.gc_pauses == 0 {
        m.notes.push(
            "GC probes were attached but no collection was observed: none happened during the session, or the probes did not fire".to_owned(),
        );
    }
}
