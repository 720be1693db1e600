//! The measurements of `profilemate calibrate`: kernels of known length run in the patterns
//! vLLM uses, each wait's return as the attach's return probe stamps it compared with the
//! moment the GPU work ended (seen by a thread polling the kernel's last store to pinned host
//! memory), launch latency, what a probe hit costs, and which waits the attach's rule calls
//! `exact`.
//!
//! Owns: the patterns, the matching of probe records to our own calls (by time window on our
//! thread), and the statistics. Does not own: the driver calls (`gpu`), attaching to
//! ourselves (`trace`), or the file (`file`).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU8, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use profilemate_common::ApiId;

use super::{
    file::{
        round3, Calibration, GpuIdentity, Micros, ProbeCost, SweepPoint, WakeUp, SCHEMA_VERSION,
    },
    gpu::{FlagsView, Gpu, GpuError},
    trace::{SelfTrace, TraceError},
};
use crate::{
    correlate::BLOCKED_THRESHOLD_NS,
    output::monotonic_ns,
    probes::drain::{CallEvent, CallPhase},
};

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Device ordinal.
    pub ordinal: u32,
    /// Waits per pattern (the sweep uses a fifth of it per kernel length).
    pub samples: usize,
}

/// Calibration could not run.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    /// No GPU, no driver, or a driver call failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// Not allowed to load and attach the probes.
    #[error(transparent)]
    Privileges(#[from] crate::preflight::PreflightError),
    /// Tracing ourselves failed.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// Too few waits could be matched with their probe records.
    #[error("only {matched} of {total} waits were seen by the probes (ring-buffer drops: {drops}); run calibrate again on an idle machine")]
    Unmatched {
        /// Matched waits.
        matched: usize,
        /// Waits made.
        total: usize,
        /// Records lost.
        drops: u64,
    },
}

/// Kernel length of the wake-up patterns: long enough that every wait blocks.
const WAKE_KERNEL_NS: u64 = 500_000;
/// Kernel lengths of the exactness sweep (µs).
const SWEEP_US: &[u64] = &[10, 25, 50, 75, 100, 125, 150, 200, 300, 500, 1000];
/// Calls per probe-cost batch, and batches (the median is kept).
const COST_CALLS: usize = 20_000;
const COST_BATCHES: usize = 5;
/// Share of a sweep point's waits that must be exact for it to count as reliably exact.
const RELIABLY_EXACT_PCT: f64 = 99.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pattern {
    EventNextStep,
    BlockingEventNextStep,
    GraphReplay,
    StreamSync,
    Sweep(usize),
}

/// One wait, as made from here.
#[derive(Clone, Copy, Debug)]
struct Sample {
    pattern: Pattern,
    /// Launch number of the kernel whose end the wait waited for.
    seq: u64,
    /// CPU time window of the wait call, and its symbol.
    wait: (u64, u64),
    wait_api: ApiId,
    /// Window and symbol of the launch of `seq`, when the GPU was idle at it.
    launch: Option<((u64, u64), ApiId)>,
}

/// Runs `f` and returns the CLOCK_MONOTONIC window around it.
fn timed(f: impl FnOnce() -> Result<(), GpuError>) -> Result<(u64, u64), GpuError> {
    let t0 = monotonic_ns();
    f()?;
    Ok((t0, monotonic_ns()))
}

/// The CPU side of the samples.
struct Runner<'a> {
    gpu: &'a Gpu,
    /// Kernels launched so far (the next one to run writes this + 1).
    executed: u64,
    samples: Vec<Sample>,
}

impl Runner<'_> {
    /// vLLM's async scheduling: launch step k, record its event, wait on step k-1's event
    /// (`blocking`: events that put the waiting thread to sleep).
    fn event_next_step(&mut self, n: usize, blocking: bool) -> Result<(), GpuError> {
        let pattern = if blocking {
            Pattern::BlockingEventNextStep
        } else {
            Pattern::EventNextStep
        };
        let evs = [self.gpu.event(blocking)?, self.gpu.event(blocking)?];
        let mut prev = None;
        for k in 0..=n {
            self.gpu.launch(WAKE_KERNEL_NS)?;
            self.executed += 1;
            self.gpu.record(evs[k % 2])?;
            if let Some(seq) = prev {
                let wait = timed(|| self.gpu.wait_event(evs[(k + 1) % 2]))?;
                self.samples.push(Sample {
                    pattern,
                    seq,
                    wait,
                    wait_api: ApiId::cuEventSynchronize,
                    launch: None,
                });
            }
            prev = Some(self.executed);
        }
        self.gpu.wait_stream()
    }

    /// A graph replay, an event recorded after it, and the wait on that event.
    fn graph_replay(&mut self, n: usize) -> Result<(), GpuError> {
        let exec = self.gpu.graph(WAKE_KERNEL_NS)?;
        let ev = self.gpu.event(false)?;
        for _ in 0..n {
            let launch = timed(|| self.gpu.replay(exec))?;
            self.executed += 1;
            self.gpu.record(ev)?;
            let wait = timed(|| self.gpu.wait_event(ev))?;
            self.samples.push(Sample {
                pattern: Pattern::GraphReplay,
                seq: self.executed,
                wait,
                wait_api: ApiId::cuEventSynchronize,
                launch: Some((launch, ApiId::cuGraphLaunch)),
            });
        }
        Ok(())
    }

    /// A launch on an idle GPU and a stream synchronize (the sweep: an event wait instead).
    fn launch_and_wait(&mut self, pattern: Pattern, dur_ns: u64, n: usize) -> Result<(), GpuError> {
        let ev = self.gpu.event(false)?;
        for _ in 0..n {
            let launch = timed(|| self.gpu.launch(dur_ns))?;
            self.executed += 1;
            let (wait, wait_api) = if pattern == Pattern::StreamSync {
                (
                    timed(|| self.gpu.wait_stream())?,
                    ApiId::cuStreamSynchronize,
                )
            } else {
                self.gpu.record(ev)?;
                (
                    timed(|| self.gpu.wait_event(ev))?,
                    ApiId::cuEventSynchronize,
                )
            };
            self.samples.push(Sample {
                pattern,
                seq: self.executed,
                wait,
                wait_api,
                launch: Some((launch, ApiId::cuLaunchKernel)),
            });
        }
        Ok(())
    }
}

/// (launch number, CLOCK_MONOTONIC ns when seen), in order.
type Stamps = Vec<(u64, u64)>;

/// A thread that spins reading the kernel's flags and stamps each new value.
struct Poller {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(Stamps, Stamps)>,
}

impl Poller {
    fn start(flags: FlagsView) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("pm-cal-poller".to_owned())
            .spawn(move || {
                let (mut starts, mut ends) = (Vec::new(), Vec::new());
                let (mut s0, mut e0) = flags.read();
                while !flag.load(Ordering::Relaxed) {
                    let (s, e) = flags.read();
                    if s != s0 {
                        starts.push((s, monotonic_ns()));
                        s0 = s;
                    }
                    if e != e0 {
                        ends.push((e, monotonic_ns()));
                        e0 = e;
                    }
                }
                (starts, ends)
            })?;
        Ok(Self { stop, handle })
    }

    /// (launch number -> seen start, launch number -> seen end).
    fn stop(
        self,
    ) -> (
        std::collections::HashMap<u64, u64>,
        std::collections::HashMap<u64, u64>,
    ) {
        self.stop.store(true, Ordering::Relaxed);
        let (s, e) = self.handle.join().unwrap_or_default();
        (s.into_iter().collect(), e.into_iter().collect())
    }
}

/// The first record of `api` in `phase` inside `window` (records sorted by time).
fn find(calls: &[CallEvent], api: ApiId, is_return: bool, window: (u64, u64)) -> Option<u64> {
    let from = calls.partition_point(|c| c.ts_ns < window.0);
    calls[from..]
        .iter()
        .take_while(|c| c.ts_ns <= window.1)
        .find(|c| c.api == api && matches!(c.phase, CallPhase::Return { .. }) == is_return)
        .map(|c| c.ts_ns)
}

/// Per sample: (wake-up ns, blocked ns, launch latency ns), from the probes' own stamps.
#[derive(Clone, Copy, Debug)]
struct Seen {
    pattern: Pattern,
    wake_ns: i64,
    blocked_ns: i64,
    launch_ns: Option<i64>,
}

fn match_samples(
    samples: &[Sample],
    calls: &[CallEvent],
    starts: &std::collections::HashMap<u64, u64>,
    ends: &std::collections::HashMap<u64, u64>,
) -> Vec<Seen> {
    samples
        .iter()
        .filter_map(|s| {
            let end = *ends.get(&s.seq)? as i64;
            let ret = find(calls, s.wait_api, true, s.wait)? as i64;
            let entry = find(calls, s.wait_api, false, s.wait)? as i64;
            let launch_ns = s.launch.and_then(|(w, api)| {
                let at = find(calls, api, false, w)? as i64;
                Some(*starts.get(&s.seq)? as i64 - at)
            });
            Some(Seen {
                pattern: s.pattern,
                wake_ns: ret - end,
                blocked_ns: ret - entry,
                launch_ns,
            })
        })
        .collect()
}

/// Median nanoseconds per call of `f`, over [`COST_BATCHES`] batches of [`COST_CALLS`].
fn per_call_ns(mut f: impl FnMut() -> Result<(), GpuError>) -> Result<f64, GpuError> {
    let mut batches = Vec::with_capacity(COST_BATCHES);
    for _ in 0..COST_BATCHES {
        let t0 = monotonic_ns();
        for _ in 0..COST_CALLS {
            f()?;
        }
        batches.push((monotonic_ns() - t0) as f64 / COST_CALLS as f64);
    }
    batches.sort_by(f64::total_cmp);
    Ok(batches[COST_BATCHES / 2])
}

/// (ns per `cuEventRecord`, ns per `cuEventSynchronize` of a finished event).
fn call_costs(gpu: &Gpu) -> Result<(f64, f64), GpuError> {
    let ev = gpu.event(false)?;
    let record = per_call_ns(|| gpu.record(ev))?;
    gpu.wait_stream()?;
    let sync = per_call_ns(|| gpu.wait_event(ev))?;
    Ok((record, sync))
}

/// The byte the breakpoint cost is measured on.
static WATCHED: AtomicU8 = AtomicU8::new(0);

/// Nanoseconds per read of [`WATCHED`].
fn touch_cost() -> f64 {
    let per = per_call_ns(|| {
        // SAFETY: a read of a static byte; volatile so every iteration reads it.
        let _ = unsafe { std::ptr::read_volatile(WATCHED.as_ptr()) };
        Ok(())
    });
    per.unwrap_or(0.0)
}

/// µs per breakpoint hit with the program linked (the hit itself, the kernel's perf path and
/// the program's early exit for a thread without Python).
fn breakpoint_cost(trace: &mut SelfTrace) -> Result<f64, String> {
    let plain = touch_cost();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    let link = trace.probes.breakpoint(tid, WATCHED.as_ptr() as u64)?;
    let hit = touch_cost();
    drop(link);
    Ok(round3((hit - plain) / 1e3))
}

/// Runs the whole calibration on device `opts.ordinal`.
pub fn run(opts: &Options) -> Result<Calibration, CalibrateError> {
    let gpu = Gpu::open(opts.ordinal)?;
    crate::preflight::check_privileges()?;
    let (record_plain, sync_plain) = call_costs(&gpu)?;
    let mut trace = SelfTrace::start()?;
    let (record_probed, sync_probed) = call_costs(&gpu)?;
    let poller = Poller::start(gpu.flags_view()).map_err(TraceError::Reader)?;
    let mut runner = Runner {
        gpu: &gpu,
        executed: 0,
        samples: Vec::new(),
    };
    let patterns = run_patterns(&mut runner, opts.samples);
    let (starts, ends) = poller.stop();
    patterns?;
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    let (calls, drops) = trace.finish(tid);
    let bp = breakpoint_cost(&mut trace);
    trace.detach();
    let seen = match_samples(&runner.samples, &calls, &starts, &ends);
    if seen.len() * 10 < runner.samples.len() * 9 {
        return Err(CalibrateError::Unmatched {
            matched: seen.len(),
            total: runner.samples.len(),
            drops,
        });
    }
    let cost = ProbeCost {
        uprobe_us: round3((record_probed - record_plain) / 1e3),
        uprobe_and_uretprobe_us: round3((sync_probed - sync_plain) / 1e3),
        uretprobe_us: round3(((sync_probed - sync_plain) - (record_probed - record_plain)) / 1e3),
        hw_breakpoint_us: bp.as_ref().ok().copied(),
        hw_breakpoint_error: bp.err(),
    };
    Ok(assemble(
        opts,
        &gpu,
        &trace,
        &seen,
        cost,
        drops,
        runner.samples.len(),
    ))
}

fn run_patterns(r: &mut Runner<'_>, n: usize) -> Result<(), GpuError> {
    r.event_next_step(n, false)?;
    r.event_next_step(n, true)?;
    r.graph_replay(n)?;
    r.launch_and_wait(Pattern::StreamSync, WAKE_KERNEL_NS, n)?;
    let per_point = (n / 5).max(20);
    for (i, us) in SWEEP_US.iter().enumerate() {
        r.launch_and_wait(Pattern::Sweep(i), us * 1000, per_point)?;
    }
    Ok(())
}

fn wake_of(seen: &[Seen], keep: impl Fn(Pattern) -> bool) -> Option<Micros> {
    let v: Vec<i64> = seen
        .iter()
        .filter(|s| keep(s.pattern))
        .map(|s| s.wake_ns)
        .collect();
    Micros::of_ns(&v)
}

/// The sweep's points and the shortest reliably exact wait (the 1st percentile of the
/// blocked times of the shortest kernel whose waits were exact at least 99 % of the time).
fn sweep(seen: &[Seen]) -> (Vec<SweepPoint>, Option<f64>) {
    let mut points = Vec::new();
    let mut min_exact = None;
    for (i, us) in SWEEP_US.iter().enumerate() {
        let of: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.pattern == Pattern::Sweep(i))
            .collect();
        let mut blocked: Vec<i64> = of.iter().map(|s| s.blocked_ns).collect();
        let wake: Vec<i64> = of.iter().map(|s| s.wake_ns).collect();
        let (Some(b), Some(w)) = (Micros::of_ns(&blocked), Micros::of_ns(&wake)) else {
            continue;
        };
        let exact = blocked
            .iter()
            .filter(|b| **b >= BLOCKED_THRESHOLD_NS as i64)
            .count();
        let pct = (1000.0 * exact as f64 / blocked.len() as f64).round() / 10.0;
        if pct >= RELIABLY_EXACT_PCT && min_exact.is_none() {
            blocked.sort_unstable();
            let p1 = blocked[(blocked.len() - 1) / 100];
            min_exact = Some(round3(p1 as f64 / 1e3));
        }
        points.push(SweepPoint {
            kernel_us: *us as f64,
            waits: blocked.len() as u64,
            exact_pct: pct,
            blocked_us: b,
            wake_up_us: w,
        });
    }
    (points, min_exact)
}

fn assemble(
    opts: &Options,
    gpu: &Gpu,
    trace: &SelfTrace,
    seen: &[Seen],
    cost: ProbeCost,
    drops: u64,
    total: usize,
) -> Calibration {
    // The waits as vLLM makes them by default (spin-waited events); blocking events apart.
    let wake_patterns =
        |p: Pattern| !matches!(p, Pattern::Sweep(_) | Pattern::BlockingEventNextStep);
    let launches: Vec<i64> = seen
        .iter()
        .filter(|s| wake_patterns(s.pattern))
        .filter_map(|s| s.launch_ns)
        .collect();
    let empty = Micros {
        count: 0,
        p50: 0.0,
        p95: 0.0,
        p99: 0.0,
        max: 0.0,
    };
    let (exact_sweep, min_exact) = sweep(seen);
    let driver_library = std::fs::canonicalize(&trace.driver_library).map_or_else(
        |_| trace.driver_library.clone(),
        |p| p.display().to_string(),
    );
    Calibration {
        schema_version: SCHEMA_VERSION,
        created: chrono::Local::now().to_rfc3339(),
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kernel: crate::preflight::kernel_release(),
        tracer_version: crate::VERSION.to_owned(),
        gpu: GpuIdentity {
            ordinal: opts.ordinal,
            name: gpu.info.name.clone(),
            driver_api_version: gpu.info.driver_api_version,
            driver_library,
            compute_capability: gpu.info.compute_capability,
        },
        wake_up_us: WakeUp {
            all: wake_of(seen, wake_patterns).unwrap_or(empty),
            event_sync_next_step: wake_of(seen, |p| p == Pattern::EventNextStep),
            blocking_event_sync_next_step: wake_of(seen, |p| p == Pattern::BlockingEventNextStep),
            graph_replay: wake_of(seen, |p| p == Pattern::GraphReplay),
            stream_sync: wake_of(seen, |p| p == Pattern::StreamSync),
        },
        launch_latency_us: Micros::of_ns(&launches).unwrap_or(empty),
        probe_cost: cost,
        exact_threshold_us: BLOCKED_THRESHOLD_NS as f64 / 1e3,
        min_reliably_exact_wait_us: min_exact,
        exact_sweep,
        notes: notes(seen.len(), total, drops, trace.attached),
    }
}

fn notes(matched: usize, total: usize, drops: u64, attached: usize) -> Vec<String> {
    vec![
        format!("{matched} of {total} waits matched with their probe records; {drops} ring-buffer drops; {attached} probes attached to this process's libcuda"),
        "wake-up = the wait's return as the return probe stamps it minus the moment a polling CPU thread saw the kernel's last store to pinned host memory; that store reaches the host a PCIe write later than the kernel's end, so the figures read low by about that (~1 µs)".to_owned(),
        "measured at the driver (cuEventSynchronize, cuStreamSynchronize, cuLaunchKernel, cuGraphLaunch); an attach to a PyTorch server probes the runtime calls around them, whose returns follow by the runtime wrapper's own time".to_owned(),
        "hw_breakpoint_us: a hit on a thread without Python (the program exits early); a vLLM thread's hit also walks 4 frames and writes a record".to_owned(),
    ]
}
