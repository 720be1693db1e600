//! Validated settings of one `profilemate attach` session (what the CLI resolved).
//!
//! Owns the settings and their defaults; not their parsing (`main.rs`) nor their use.

use std::{path::PathBuf, time::Duration};

/// How a step's GPU completion is detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TimingMode {
    /// A `cudaEventSynchronize` (or successful query) of an event recorded after the step's
    /// launches, matched by event handle.
    Events,
    /// Any blocking synchronization (stream, device, event, synchronous copy) after the launches.
    Sync,
}

/// At which CUDA calls the Python stack is walked (`--cuda-stacks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CudaStacks {
    /// Step boundaries: graph launches, event records and waits, stream/device syncs,
    /// copies, graph capture and instantiation, and the first kernel launch after one of those.
    Boundaries,
    /// Every probed call.
    All,
    /// None (sampling only).
    None,
}

/// Everything an attach session needs, resolved and checked.
#[derive(Clone, Debug)]
pub struct AttachConfig {
    /// The process given with `--pid`.
    pub pid: u32,
    /// Stop after this long (None: until Ctrl-C / SIGTERM / the targets exit).
    pub duration: Option<Duration>,
    /// Base output directory; the session directory is created inside it.
    pub out_dir: PathBuf,
    /// Step completion detection.
    pub timing: TimingMode,
    /// Follow descendants of `pid` (vLLM's EngineCore and workers are children).
    pub follow_children: bool,
    /// Attach the per-kernel launch probes.
    pub kernels: bool,
    /// Probe driver twins of runtime calls even where libcudart is mapped.
    pub driver_twins: bool,
    /// Keep watching when no CUDA library is mapped yet.
    pub wait: bool,
    /// How often the process tree and mappings are rescanned.
    pub rescan_interval: Duration,
    /// Ring buffer size in bytes.
    pub ring_bytes: u32,
    /// Bound of the queue between the ring-buffer reader and the pipeline, in bytes.
    pub queue_bytes: usize,
    /// Suppress the end-of-session summary on stdout.
    pub quiet: bool,
    /// Python stack sampling rate per CPU in Hz (0: off).
    pub sample_hz: u64,
    /// At which CUDA calls Python stacks are walked.
    pub cuda_stacks: CudaStacks,
    /// vLLM scheduler-state polls per second (0: off).
    pub state_hz: u64,
    /// Watch the scheduler's methods with hardware breakpoints.
    pub breakpoints: bool,
    /// Attach return probes even where seccomp may kill the target on them
    /// (`--allow-uretprobes`; see `preflight::return_probes`).
    pub allow_uretprobes: bool,
    /// `--calibration FILE` (None: the default location, if a file is there).
    pub calibration: Option<PathBuf>,
    /// Write report.html, trace.json and cpu_profile.speedscope.json at the end.
    pub report: bool,
}

impl AttachConfig {
    /// Output directory from the environment: `$VLLM_PROFILING_DIR` or `/tmp/vllm_profiling`.
    #[must_use]
    pub fn default_out_dir() -> PathBuf {
        std::env::var_os("VLLM_PROFILING_DIR")
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from("/tmp/vllm_profiling"), PathBuf::from)
    }
}
