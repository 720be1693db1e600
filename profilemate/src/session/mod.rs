//! One `profilemate attach` session: start (preflight, probes, targets, threads) -> wait for
//! the stop -> finish (drain, write every file and metadata.json), returned to the caller as
//! a [`Finished`] session whose probes the caller detaches.
//!
//! Four threads: the ring-buffer reader (`probes::reader`), the processing pipeline
//! (`pipeline`), the vLLM watcher (`vllm::watcher`: scheduler polls, /metrics), and this
//! main loop, a tokio task that selects over a rescan tick (new processes and late-loaded
//! libraries), signals and the deadline. Nothing that reads a busy target runs here, so the
//! deadline is kept.
//!
//! Owns the order of the session and its wiring: `targets` (what is attached to whom),
//! `pipeline` (the stages downstream of the ring), `signals` (why and how it stops),
//! `metadata` and `losses` (the report of the session), `summary` (its terminal lines).
//! Does not own printing: the caller (`main.rs`, `top`) says what it wants of the outcome.

mod error;
pub mod losses;
pub mod metadata;
pub mod pipeline;
mod signals;
mod summary;
mod targets;

use std::{path::PathBuf, sync::mpsc, thread::JoinHandle, time::Duration};

pub use self::error::SessionError;
use self::{
    metadata::{BreakpointSection, LossReport, MainLoopStats, Metadata, PythonReport},
    pipeline::{Pipeline, StopBudget},
    signals::{Signals, Stop},
    targets::Targets,
};
use crate::{
    calibrate::{self, attach::Resolution},
    config::AttachConfig,
    model::{monotonic_ns, Lost, TimeBase},
    output::{
        counts::RowCounts,
        csv::Files,
        sink::{Sink, Sinks},
        SessionDir,
    },
    preflight,
    probes::{
        reader::{QueueGauge, ReaderStats, RingReader},
        KernelCounters, Probes,
    },
    profilers, verdict,
    vllm::{
        self,
        bundle::Bundle,
        watcher::{WatchReport, Watcher},
    },
};

/// A session's result.
type Result<T, E = SessionError> = std::result::Result<T, E>;

/// How long the attach waits for the first /metrics reading (the start of the cross-check
/// window) before it says it is attached.
const FIRST_SCRAPE_WAIT: Duration = Duration::from_millis(1500);

/// What a finished session produced.
#[derive(Debug)]
pub struct SessionOutcome {
    /// The session directory.
    pub dir: PathBuf,
    /// Steps written.
    pub steps: u64,
    /// Records lost in the kernel.
    pub drops: u64,
    /// Summary lines for the terminal.
    pub summary: Vec<String>,
    /// Why the session recorded nothing (the exit status is then non-zero); the directory
    /// and metadata.json are complete all the same.
    pub failure: Option<String>,
}

/// A session whose files are all written and whose probes are still attached: detaching
/// is slow by kernel design (each uprobe removal waits for RCU grace periods), so the
/// results come first and the caller detaches after saying so.
pub struct Finished {
    /// What the session produced.
    pub outcome: SessionOutcome,
    probes: Probes,
    attached: usize,
}

impl Finished {
    /// Probes attached now.
    #[must_use]
    pub fn attached_probes(&self) -> usize {
        self.attached
    }

    /// Detaches every probe (the target runs unprobed from here on); returns the outcome.
    #[must_use = "the outcome says whether the session recorded anything"]
    pub fn detach(mut self) -> SessionOutcome {
        let n = self.attached;
        let t = std::time::Instant::now();
        self.probes.detach_all();
        log::info!("detached {n} probes in {:?}", t.elapsed());
        self.outcome
    }
}

/// What a session says while it runs, once every target found at the start is attached.
#[derive(Debug)]
pub struct Attached {
    /// Processes followed.
    pub processes: usize,
    /// Of those, walked for Python stacks.
    pub python: usize,
    /// Probes attached.
    pub probes: usize,
    /// The session directory.
    pub dir: PathBuf,
}

/// What `profilemate top` hands a session: the live statistics it reads, and how it asks
/// the session to stop (q in the view).
pub struct LiveHook {
    /// Fed by a [`profilers::live::Live`] profiler added to the session's set, and by the
    /// main loop (kernel drops, backlog) at each rescan.
    pub stats: std::sync::Arc<std::sync::Mutex<profilers::live::LiveStats>>,
    /// Notified to stop the session.
    pub quit: std::sync::Arc<tokio::sync::Notify>,
    /// The session directory is a scratch one the caller removes: only the live profiler
    /// runs (no row files are streamed into it).
    pub scratch_dir: bool,
}

/// Runs a whole session; `attached` is called once the targets are attached.
///
/// # Errors
///
/// The session could not start (privileges, no such process, no CUDA library), or its
/// files could not be written.
pub fn run(cfg: &AttachConfig, attached: &mut dyn FnMut(&Attached)) -> Result<Finished> {
    run_live(cfg, None, attached)
}

/// Runs a whole session, feeding `live` (`profilemate top`) when given.
///
/// # Errors
///
/// As [`run`].
pub fn run_live(
    cfg: &AttachConfig,
    live: Option<&LiveHook>,
    attached: &mut dyn FnMut(&Attached),
) -> Result<Finished> {
    preflight::check_privileges()?;
    preflight::check_pid(cfg.pid)?;
    preflight::check_kernel()?;
    // Before anything is attached: a calibration named on the command line must be good.
    let calibration = calibrate::attach::resolve(cfg.calibration.as_deref())?;
    if let Resolution::None(why) = &calibration {
        if why.contains("set aside") {
            crate::say!("warning: {why}");
        }
    }
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(starting("async runtime"))?;
    runtime.block_on(async {
        // Before anything exists that a signal's default action would leave half done.
        let signals = Signals::install()?;
        let start_wall = chrono::Local::now();
        let dir = SessionDir::create(
            &cfg.out_dir,
            &start_wall.format("%Y%m%d_%H%M%S").to_string(),
        )?;
        let ctx = Ctx {
            cfg,
            dir: &dir,
            start_wall,
            calibration: &calibration,
            live,
        };
        let result = run_session(&ctx, signals, attached).await;
        if result.is_err() {
            // Nothing was written: leave no empty session directory behind.
            let _ = std::fs::remove_dir(dir.path());
        }
        result
    })
}

/// One perf event fd per probe (~40 per process): lifts the soft fd limit to the hard one.
fn raise_fd_limit() {
    let nofile = nix::sys::resource::Resource::RLIMIT_NOFILE;
    if let Ok((soft, hard)) = nix::sys::resource::getrlimit(nofile) {
        if soft < hard {
            let _ = nix::sys::resource::setrlimit(nofile, hard, hard);
        }
    }
}

/// What every phase of a session reads.
struct Ctx<'a> {
    cfg: &'a AttachConfig,
    dir: &'a SessionDir,
    start_wall: chrono::DateTime<chrono::Local>,
    calibration: &'a Resolution,
    live: Option<&'a LiveHook>,
}

/// start -> wait for the stop -> finish.
async fn run_session(
    ctx: &Ctx<'_>,
    mut signals: Signals,
    attached: &mut dyn FnMut(&Attached),
) -> Result<Finished> {
    let mut run = start(ctx)?;
    attached(&Attached {
        processes: run.targets.procs.len(),
        python: run.targets.walking(),
        probes: run.probes.report.attached_count,
        dir: ctx.dir.path().to_owned(),
    });
    let stop = run
        .wait_for_stop(&mut signals, ctx.live, ctx.cfg.rescan_interval)
        .await;
    // The pipeline gets its grace (by stop reason) to process what is queued; a further
    // signal cuts it short.
    run.budget.start(stop.grace());
    signals.shorten_on_next(run.budget.clone(), ctx.cfg.quiet);
    finish(ctx, run, &stop)
}

/// Python stack sampling as started.
struct Sampling {
    /// Rate in use (0: off).
    hz: u64,
    /// CPUs sampled.
    cpus: usize,
    /// Why it is off, if it failed to start.
    error: Option<String>,
}

/// The threads of a running session.
struct Threads {
    reader: RingReader,
    watcher: Watcher,
    pipeline: JoinHandle<Pipeline>,
}

/// A session between its start and its stop.
struct Running {
    t0: u64,
    time: TimeBase,
    probes: Probes,
    targets: Targets,
    /// Taken at the stop.
    threads: Option<Threads>,
    budget: StopBudget,
    gauge: QueueGauge,
    bundle: &'static Bundle,
    sampling: Sampling,
    deadline: Option<tokio::time::Instant>,
    main_loop: MainLoopStats,
    outputs: Outputs,
}

/// The sinks beside the files whose figures the session reads at the end.
struct Outputs {
    /// Rows per family (steps, graphs, preemptions).
    counts: RowCounts,
    /// The summaries the terminal lines are made of.
    terminal: summary::Terminal,
}

/// Loads the probes, starts the reader, finds and attaches the targets, starts the watcher,
/// sampling and the pipeline.
fn start(ctx: &Ctx<'_>) -> Result<Running> {
    let cfg = ctx.cfg;
    let time = time_base();
    let t0 = time.t0_ns;
    let mut probes = Probes::load(cfg.ring_bytes, cfg.kernels, cfg.driver_twins)?;
    probes.set_cuda_stacks(cfg.cuda_stacks)?;
    let ring = probes.take_ring_buffer()?;
    // The reader starts before the first probe is attached: records queue in userspace
    // while the rest of the session is set up (attaching to a busy server takes seconds).
    let (batch_tx, batch_rx) = mpsc::channel();
    let gauge = QueueGauge::default();
    let reader = RingReader::spawn(ring, batch_tx, gauge.clone(), cfg.queue_bytes)
        .map_err(starting("ring-buffer reader thread"))?;
    let (py_tx, py_rx) = mpsc::channel();
    let (watch, watch_rx) = mpsc::channel();
    let (functions_tx, functions) = mpsc::channel();
    let mut targets = Targets::new(cfg, time, py_tx.clone(), watch, functions);
    targets.rescan(&mut probes);
    if targets.procs.is_empty() {
        return Err(preflight::PreflightError::NoSuchProcess { pid: cfg.pid }.into());
    }
    // The vLLM names: chosen once, before any target's version is read.
    let bundle = vllm::bundle::session_default();
    let watcher = Watcher::spawn(
        watch_rx,
        cfg.state_hz,
        bundle,
        py_tx,
        cfg.breakpoints.then_some(functions_tx),
    )
    .map_err(starting("vLLM watcher thread"))?;
    check_libraries(cfg, &targets)?;
    let sampling = start_sampling(cfg, &mut probes);
    let profilers = profiler_set(ctx, time, sampling.hz, bundle);
    let (mut sinks, outputs) = sinks(ctx)?;
    profilers::open_families(&profilers, &mut sinks)?;
    let pipeline = Pipeline::wire(bundle, cfg.timing, cfg.kernels, py_rx, profilers, sinks);
    // The reader only moves records from the ring into a bounded queue, so no work
    // downstream (target reads, symbolization, file writes) can make the kernel drop; the
    // pipeline processes the queue at its own pace.
    let budget = StopBudget::default();
    let pipeline = pipeline
        .spawn(batch_rx, gauge.clone(), budget.clone())
        .map_err(starting("pipeline thread"))?;
    // The session's length is counted from its start, attaching included.
    // `--duration` is bounded at parsing; a deadline past what the clock can hold is none.
    let deadline = cfg.duration.and_then(|d| {
        let spent = Duration::from_nanos(monotonic_ns().saturating_sub(t0));
        tokio::time::Instant::now().checked_add(d.saturating_sub(spent))
    });
    watcher.wait_first_scrape(FIRST_SCRAPE_WAIT);
    Ok(Running {
        t0,
        time,
        probes,
        targets,
        threads: Some(Threads {
            reader,
            watcher,
            pipeline,
        }),
        budget,
        gauge,
        bundle,
        sampling,
        deadline,
        main_loop: MainLoopStats::default(),
        outputs,
    })
}

/// The session's time base: CLOCK_MONOTONIC now, and the Unix time taken right after it
/// (the two clocks are paired to well under a millisecond).
fn time_base() -> TimeBase {
    let t0_ns = monotonic_ns();
    let unix_t0_sec = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    TimeBase { t0_ns, unix_t0_sec }
}

/// The error of a thread (or the runtime) that could not start.
fn starting(what: &'static str) -> impl FnOnce(std::io::Error) -> SessionError {
    move |source| SessionError::Start { what, source }
}

/// Fails when no CUDA library is mapped in the tree (unless `--wait`), naming why.
fn check_libraries(cfg: &AttachConfig, targets: &Targets) -> Result<()> {
    if targets.any_library() {
        return Ok(());
    }
    let what = if cfg.follow_children {
        "pid {} or its children"
    } else {
        "pid {}"
    };
    let who = what.replace("{}", &cfg.pid.to_string());
    if let Some((pid, e)) = targets.unreadable.iter().next() {
        return Err(SessionError::MapsUnreadable {
            pid: *pid,
            why: e.clone(),
            who,
            caps: preflight::ATTACH_CAPS.join(" + "),
        });
    }
    if !cfg.wait {
        return Err(SessionError::NoCudaLibrary { who });
    }
    crate::say!("no CUDA library mapped in {who} yet; waiting (--wait)...");
    Ok(())
}

/// Starts Python stack sampling at `--sample-hz`; a failure leaves it off, said.
fn start_sampling(cfg: &AttachConfig, probes: &mut Probes) -> Sampling {
    if cfg.sample_hz == 0 {
        return Sampling {
            hz: 0,
            cpus: 0,
            error: None,
        };
    }
    match probes.start_sampling(cfg.sample_hz) {
        Ok(cpus) => Sampling {
            hz: if cpus > 0 { cfg.sample_hz } else { 0 },
            cpus,
            error: None,
        },
        Err(e) => {
            let why = crate::probes::error_chain(&e);
            crate::say!("warning: Python stack sampling is off: {why}");
            Sampling {
                hz: 0,
                cpus: 0,
                error: Some(why),
            }
        }
    }
}

/// The profilers of this session (with the live one for `top`).
fn profiler_set(
    ctx: &Ctx<'_>,
    time: TimeBase,
    sample_hz: u64,
    bundle: &'static Bundle,
) -> Vec<Box<dyn profilers::Profiler>> {
    // A scratch session (top without --out) streams no row files: only metadata.json is
    // written, at the end, so a long live view does not fill the disk.
    let mut set = if ctx.live.is_some_and(|h| h.scratch_dir) {
        Vec::new()
    } else {
        let bound = summary::exact_bound(ctx.calibration);
        profilers::default_set(time, sample_hz, bound, bundle)
    };
    if let Some(h) = ctx.live {
        set.push(Box::new(profilers::live::Live(h.stats.clone())));
    }
    set
}

/// Where the profilers' results go: the session directory's files (unless a scratch
/// session), the row counts and the terminal's figures. A new output format is one more
/// sink here.
fn sinks(ctx: &Ctx<'_>) -> Result<(Sinks, Outputs)> {
    let outputs = Outputs {
        counts: RowCounts::default(),
        terminal: summary::Terminal::default(),
    };
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if !ctx.live.is_some_and(|h| h.scratch_dir) {
        sinks.push(Box::new(Files::new(ctx.dir.try_clone()?)));
    }
    sinks.push(Box::new(outputs.counts.clone()));
    sinks.push(Box::new(outputs.terminal.clone()));
    Ok((Sinks(sinks), outputs))
}

impl Running {
    /// The main loop: rescans, arms breakpoints, and waits for a stop (the deadline, a
    /// signal, the viewer's q, the targets' exit, a thread's end, nothing attached).
    async fn wait_for_stop(
        &mut self,
        signals: &mut Signals,
        live: Option<&LiveHook>,
        rescan: Duration,
    ) -> Stop {
        let mut rescan_tick = tokio::time::interval(rescan);
        rescan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Breakpoints are armed within this of the watcher finding the scheduler (calls
        // before that are seen only by the step outputs and polls).
        let mut arm_tick = tokio::time::interval(Duration::from_millis(20));
        arm_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = self.deadline;
        let stop = loop {
            // Libraries were found and every probe on them failed: nothing can be recorded.
            if verdict::nothing_attached(&self.probes.report) {
                break Stop::NothingAttached;
            }
            tokio::select! {
                _ = rescan_tick.tick() => {
                    if let Some(stop) = self.on_rescan_tick(live) {
                        break stop;
                    }
                }
                _ = arm_tick.tick() => self.targets.arm_watched_functions(&mut self.probes),
                stop = signals.recv() => break stop,
                () = async { match live { Some(h) => h.quit.notified().await, None => std::future::pending().await } } => break Stop::Viewer,
                () = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break Stop::Duration,
            }
        };
        if let (Stop::Duration, Some(d)) = (&stop, deadline) {
            self.main_loop.deadline_late_ms = d.elapsed().as_secs_f64() * 1e3;
        }
        stop
    }

    /// One rescan: new processes and libraries, the live view's gauges; a stop when the
    /// targets are gone or a thread ended.
    fn on_rescan_tick(&mut self, live: Option<&LiveHook>) -> Option<Stop> {
        let t = std::time::Instant::now();
        self.targets.rescan(&mut self.probes);
        let m = &mut self.main_loop;
        m.rescans += 1;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        m.rescan_ms_max = m.rescan_ms_max.max(ms);
        if ms > 100.0 && m.slow_rescans.len() < 32 {
            m.slow_rescans.push((self.time.sec(monotonic_ns()), ms));
        }
        if let Some(h) = live {
            let drops = self.probes.counters().map(|k| summary::kernel_drops(&k));
            if let Ok(mut s) = h.stats.lock() {
                s.kernel_drops = drops.unwrap_or(s.kernel_drops);
                s.queued_bytes = self.gauge.queued();
            }
        }
        if self.targets.all_exited() {
            return Some(Stop::TargetsExited);
        }
        let ended = self
            .threads
            .as_ref()
            .is_none_or(|t| t.reader.is_finished() || t.pipeline.is_finished());
        ended.then_some(Stop::PipelineEnded)
    }
}

/// What the threads hand back at the stop.
struct Stopped {
    pipeline: Pipeline,
    watch: WatchReport,
    reader: ReaderStats,
    kernel: KernelCounters,
    end_ns: u64,
}

impl Threads {
    /// Stops the threads: the reader empties the ring once more and hangs up, the pipeline
    /// processes what is queued within its grace (the rest is counted). Detaching comes
    /// last (the caller's): records arriving in between belong to no session time and are
    /// not read.
    fn stop(self, probes: &Probes) -> Result<Stopped> {
        let watch = self.watcher.stop();
        let reader = self.reader.stop();
        let mut pipeline = self
            .pipeline
            .join()
            .map_err(|_| SessionError::PipelinePanicked)?;
        pipeline.finish();
        let end_ns = monotonic_ns();
        let kernel = probes.counters().unwrap_or_else(|e| {
            crate::say!("warning: cannot read the drop counters: {e}");
            KernelCounters::default()
        });
        Ok(Stopped {
            pipeline,
            watch,
            reader,
            kernel,
            end_ns,
        })
    }
}

/// Writes every file and metadata.json; the outcome with the probes still attached.
fn finish(ctx: &Ctx<'_>, mut run: Running, stop: &Stop) -> Result<Finished> {
    let threads = run.threads.take().ok_or(SessionError::StoppedTwice)?;
    let mut stopped = threads.stop(&run.probes)?;
    let losses = LossReport {
        kernel: stopped.kernel,
        records_read: stopped.reader.records_read,
        decode_errors: stopped.reader.decode_errors,
        reader: stopped.reader.clone(),
        pipeline: stopped.pipeline.stats.clone(),
        main_loop: std::mem::take(&mut run.main_loop),
        metrics_scrape_ms_max: stopped.watch.scrape_ms_max,
        correlator: stopped.pipeline.correlator.stats.clone(),
    };
    let lost = Lost {
        gc: losses::gc_lost(&losses),
    };
    let pipeline = &mut stopped.pipeline;
    for p in &mut pipeline.profilers {
        p.losses(&lost);
        p.finish(&mut pipeline.sinks)?;
    }
    let mut files = pipeline.sinks.finish()?;
    let metadata = metadata_of(ctx, &mut run, &stopped, stop, losses);
    let attached = metadata.probes.attached_count;
    ctx.dir.write_json("metadata.json", &metadata)?;
    files.push("metadata.json");
    let steps = run.outputs.counts.of::<profilers::forward_pass::Row>();
    let summary = summary::lines(ctx, &stopped, &run.outputs, &metadata, stop, &files);
    let outcome = SessionOutcome {
        dir: ctx.dir.path().to_owned(),
        steps,
        drops: summary::kernel_drops(&stopped.kernel),
        summary,
        failure: metadata.failure.clone(),
    };
    Ok(Finished {
        outcome,
        probes: run.probes,
        attached,
    })
}

/// metadata.json of the session.
fn metadata_of(
    ctx: &Ctx<'_>,
    run: &mut Running,
    stopped: &Stopped,
    stop: &Stop,
    losses: LossReport,
) -> Metadata {
    let cfg = ctx.cfg;
    let (watch, pipeline) = (&stopped.watch, &stopped.pipeline);
    let metrics_check =
        (!watch.metrics_first.is_empty() || !watch.metrics_last.is_empty()).then(|| {
            vllm::metrics::MetricsCheck::new(
                watch.metrics_first.clone(),
                watch.metrics_last.clone(),
                run.outputs.counts.of::<profilers::preemptions::Event>(),
                watch.last_state.and_then(|s| s.kv_usage_pct()),
            )
        });
    let python = PythonReport {
        sample_hz: run.sampling.hz,
        sampled_cpus: run.sampling.cpus,
        sampling_error: run.sampling.error.take(),
        cuda_stacks: cfg.cuda_stacks,
        processes: run.targets.take_python_records(),
        usdt: std::mem::take(&mut run.probes.usdt_report),
        stats: pipeline.python.final_stats(),
        vllm_bundle: run.bundle.name,
        vllm_batches: pipeline.batches.final_stats(),
        vllm_state: watch.state.clone(),
        breakpoints: BreakpointSection {
            enabled: cfg.breakpoints,
            processes: run.probes.breakpoint_reports(),
            calls: pipeline.batches.call_stats(),
        },
    };
    let mut metadata = Metadata {
        tracer: "profilemate",
        tracer_version: crate::VERSION,
        kernel: preflight::kernel_release(),
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        root_pid: cfg.pid,
        follow_children: cfg.follow_children,
        timing_mode: cfg.timing,
        kernel_probes: cfg.kernels,
        start_time: ctx.start_wall.to_rfc3339(),
        end_time: chrono::Local::now().to_rfc3339(),
        duration_sec: (stopped.end_ns.saturating_sub(run.t0)) as f64 / 1e9,
        monotonic_start_ns: run.t0,
        stop_reason: stop.describe().to_owned(),
        ring_buffer_bytes: cfg.ring_bytes,
        targets: std::mem::take(&mut run.targets.procs)
            .into_values()
            .collect(),
        probes: std::mem::take(&mut run.probes.report),
        python,
        program_costs: run.probes.program_costs(),
        vllm_metrics: metrics_check,
        losses,
        notes: Vec::new(),
        failure: None,
        calibration: None,
        calibration_none: None,
    };
    metadata::conclude(
        &mut metadata,
        ctx.calibration,
        matches!(stop, Stop::NothingAttached),
    );
    metadata
}
