//! One `profilemate attach` session: preflight, discovery, attach, drain, correlate, write.
//!
//! Runs on a single-threaded tokio runtime: one task selects over ring-buffer readiness, a
//! drain tick, a rescan tick (new processes and late-loaded libraries), signals and the
//! deadline. Keeping it on one thread keeps the tracer to (at most) one core.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use profilemate_common::{
    python::{usdt_probe, PyProcConfig},
    Library,
};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    config::AttachConfig,
    correlate::{python::PythonContext, Correlator},
    discovery::{self, MappedLibrary},
    output::{
        metadata::{LossReport, Metadata, PythonRecord, PythonReport, TargetRecord},
        monotonic_ns, SessionDir, TimeBase,
    },
    preflight,
    probes::{
        drain::{Drain, Record},
        usdt::{self, UsdtProbe},
        Probes,
    },
    profilers::{self, Profiler},
    python::{self, Interpreter, PythonError},
    vllm::{
        self,
        batch::BatchReader,
        state::{RequestPoll, StatePoller, StateSnapshot},
    },
};

/// Rescans that retry finding the interpreter of a process that is not (yet) Python.
const PYTHON_ATTEMPTS: u32 = 10;

/// The USDT probes ProfileMate attaches in CPython: (probe name, id).
const PYTHON_USDT: &[(&str, u16)] = &[
    ("gc__start", usdt_probe::GC_START),
    ("gc__done", usdt_probe::GC_DONE),
];

/// Interpreter changes and scheduler polls sent from the main loop to the pipeline task.
enum PyUpdate {
    Add(Box<Interpreter>),
    Remove(u32),
    State(StateSnapshot),
    Requests(Box<RequestPoll>),
}

#[derive(Default)]
struct PyTrack {
    attempts: u32,
    done: bool,
    record: Option<PythonRecord>,
    /// The interpreter being walked (its thread list is re-read at each rescan).
    walking: Option<Interpreter>,
    /// Whether the walker wakes the reader at once for this process's CUDA-call stacks.
    wakes: bool,
}

/// How often the ring buffer is drained when the kernel does not wake us.
pub const DRAIN_TICK: Duration = Duration::from_millis(4);
/// How often the API server's /metrics is read (for the end-of-session cross-check).
const METRICS_PERIOD: Duration = Duration::from_secs(1);
/// Records handled before the pipeline task looks at its stop signal again.
const DRAIN_BATCH: usize = 65_536;

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
}

struct Targets {
    root: u32,
    children: bool,
    time: TimeBase,
    procs: BTreeMap<u32, TargetRecord>,
    python: BTreeMap<u32, PyTrack>,
    py_tx: mpsc::Sender<PyUpdate>,
    usdt_notes: HashMap<(u64, u64), Result<Vec<UsdtProbe>, String>>,
    pollers: BTreeMap<u32, StatePoller>,
    /// The latest scheduler poll (for the /metrics cross-check).
    last_state: Option<StateSnapshot>,
}

impl PyTrack {
    /// A vLLM engine: its step outputs are read from CUDA-call stacks, which must reach
    /// the reader at once (see BatchReader), so the walker wakes it for each one.
    fn wake_on_cuda_stacks(&mut self, pid: u32, probes: &mut Probes) {
        let Some(interp) = self.walking.as_ref().filter(|_| !self.wakes) else {
            return;
        };
        let cfg = PyProcConfig {
            wake_on_cuda_stack: 1,
            ..interp.walker_config()
        };
        match probes.set_python(pid, cfg) {
            Ok(()) => self.wakes = true,
            Err(e) => log::warn!("pid {pid}: {e}"),
        }
    }
}

impl Targets {
    /// Finds `pid`'s interpreter (retrying a few rescans while it is not Python yet), hands
    /// it to the walker and the pipeline, and attaches its GC probes.
    fn python_scan(&mut self, pid: u32, probes: &mut Probes) {
        let track = self.python.entry(pid).or_default();
        if let Some(interp) = &track.walking {
            // New threads get walked from the next rescan on.
            match interp.thread_refs() {
                Ok(refs) => {
                    if let Err(e) = probes.set_python_threads(pid, &refs) {
                        log::warn!("pid {pid}: {e}");
                    }
                }
                Err(e) => log::debug!("pid {pid}: thread list: {e}"),
            }
            return;
        }
        if track.done {
            return;
        }
        track.attempts += 1;
        let found = python::find(pid);
        let retry = matches!(found, Err(PythonError::NotPython | PythonError::Read(_)))
            && track.attempts < PYTHON_ATTEMPTS;
        let interp = match found {
            Ok(i) => i,
            Err(e) if retry => {
                log::debug!("pid {pid}: {e} (will retry)");
                return;
            }
            Err(e) => {
                let status = match e {
                    PythonError::NotPython => "not_python",
                    _ => "unsupported",
                };
                if status == "unsupported" {
                    eprintln!("warning: pid {pid}: Python stacks not walked: {e}");
                }
                track.done = true;
                track.record = Some(PythonRecord {
                    pid,
                    status,
                    interpreter: None,
                    tested: None,
                    reason: Some(crate::probes::error_chain(&e)),
                });
                return;
            }
        };
        track.done = true;
        // The pipeline learns the interpreter before the walker sends its first stack.
        let _ = self.py_tx.send(PyUpdate::Add(Box::new(interp.clone())));
        if let Err(e) = probes.set_python(pid, interp.walker_config()) {
            let _ = self.py_tx.send(PyUpdate::Remove(pid));
            track.record = Some(PythonRecord {
                pid,
                status: "unsupported",
                interpreter: Some(interp),
                tested: None,
                reason: Some(format!("cannot configure the walker: {e}")),
            });
            return;
        }
        log::info!(
            "pid {pid}: CPython {} ({}, layout {:?})",
            interp.version,
            interp.binary,
            interp.layout.source
        );
        let notes = self
            .usdt_notes
            .entry(interp.file_id)
            .or_insert_with(|| {
                usdt::probes(&interp.host_path)
                    .map(|all| all.into_iter().flatten().collect())
                    .map_err(|e| crate::probes::error_chain(&e))
            })
            .clone();
        match notes {
            Ok(notes) => {
                for (name, id) in PYTHON_USDT {
                    match notes.iter().find(|p| p.provider == "python" && p.name == *name) {
                        Some(p) => {
                            probes.attach_usdt(
                                pid,
                                &interp.host_path,
                                &interp.binary,
                                interp.file_id,
                                p,
                                *id,
                            );
                        }
                        None => probes.usdt_report.push(crate::probes::UsdtReport {
                            pid,
                            file: interp.binary.clone(),
                            probe: format!("python:{name}"),
                            status: "absent: this CPython was built without --with-dtrace; GC pauses are not measured".to_owned(),
                        }),
                    }
                }
            }
            Err(e) => probes.usdt_report.push(crate::probes::UsdtReport {
                pid,
                file: interp.binary.clone(),
                probe: "python:*".to_owned(),
                status: format!("cannot read the USDT notes: {e}"),
            }),
        }
        let tested = interp.layout.tested;
        if let Ok(refs) = interp.thread_refs() {
            if let Err(e) = probes.set_python_threads(pid, &refs) {
                log::warn!("pid {pid}: {e}");
            }
        }
        let Some(track) = self.python.get_mut(&pid) else {
            return;
        };
        track.walking = Some(interp.clone());
        track.record = Some(PythonRecord {
            pid,
            status: "walking",
            interpreter: Some(interp.clone()),
            tested: Some(tested),
            reason: None,
        });
        self.pollers.insert(
            pid,
            StatePoller::new(interp.clone(), &vllm::state::VLLM_0_33),
        );
    }

    /// Reads every live process's scheduler state once.
    fn poll_state(&mut self, probes: &mut Probes) {
        for (pid, poller) in &mut self.pollers {
            if self.procs.get(pid).is_some_and(|t| t.exited_sec.is_some()) {
                continue;
            }
            match poller.poll(true) {
                Ok((snap, requests)) => {
                    poller.last_error = None;
                    if let Some(track) = self.python.get_mut(pid) {
                        track.wake_on_cuda_stacks(*pid, probes);
                    }
                    self.last_state = Some(snap);
                    let _ = self.py_tx.send(PyUpdate::State(snap));
                    if let Some(r) = requests {
                        let _ = self.py_tx.send(PyUpdate::Requests(Box::new(r)));
                    }
                }
                Err(e) => {
                    let why = crate::probes::error_chain(&e);
                    if poller.last_error.as_deref() != Some(why.as_str()) {
                        log::debug!("pid {pid}: scheduler state: {why}");
                    }
                    poller.last_error = Some(why);
                }
            }
        }
    }

    /// Finds new processes and libraries and attaches to them. Returns how many probes were
    /// attached now.
    fn rescan(&mut self, probes: &mut Probes) -> usize {
        let now = self.time.sec(monotonic_ns());
        let live = discovery::process_tree(self.root, self.children);
        for (pid, t) in &mut self.procs {
            // Confirm by pid: a failed /proc scan must not end the session.
            if t.exited_sec.is_none() && !live.contains(pid) && !discovery::is_running(*pid) {
                t.exited_sec = Some(now);
                probes.remove_target(*pid);
                probes.remove_python(*pid);
                let _ = self.py_tx.send(PyUpdate::Remove(*pid));
            }
        }
        let mut attached = 0;
        for pid in live {
            let t = match self.procs.entry(pid) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let Ok(info) = discovery::process_info(pid) else {
                        continue;
                    };
                    if let Err(err) = probes.add_target(pid) {
                        log::warn!("pid {pid}: {err}");
                        continue;
                    }
                    log::info!("target pid {pid} ({}): {}", info.comm, info.cmdline);
                    e.insert(TargetRecord {
                        info,
                        first_seen_sec: now,
                        exited_sec: None,
                        libraries: Vec::new(),
                    })
                }
            };
            if t.exited_sec.is_some() {
                continue;
            }
            self.python_scan(pid, probes);
            let Some(t) = self.procs.get_mut(&pid) else {
                continue;
            };
            let mut libs: Vec<MappedLibrary> = discovery::cuda_libraries(pid).unwrap_or_default();
            // Runtime libraries first: whether one is mapped decides the driver probe set.
            libs.sort_by_key(|l| l.library != Library::Runtime);
            let runtime_mapped = libs
                .iter()
                .chain(&t.libraries)
                .any(|l| l.library == Library::Runtime);
            for lib in libs {
                if t.libraries.contains(&lib) {
                    continue;
                }
                let n = probes.attach_library(pid, &lib, runtime_mapped);
                log::info!("pid {pid}: {} probes on {}", n, lib.path);
                attached += n;
                t.libraries.push(lib);
            }
        }
        attached
    }

    fn any_library(&self) -> bool {
        self.procs.values().any(|t| !t.libraries.is_empty())
    }

    fn all_exited(&self) -> bool {
        self.procs.values().all(|t| t.exited_sec.is_some())
    }
}

/// Runs a whole session.
pub fn run(cfg: &AttachConfig) -> Result<SessionOutcome> {
    preflight::check_privileges()?;
    preflight::check_pid(cfg.pid)?;
    preflight::check_kernel()?;
    if let Some(w) = preflight::uretprobe_seccomp_warning(cfg.pid) {
        eprintln!("warning: {w}");
    }
    // One perf event fd per probe (~40 per process): lift the soft fd limit to the hard one.
    let nofile = nix::sys::resource::Resource::RLIMIT_NOFILE;
    if let Ok((soft, hard)) = nix::sys::resource::getrlimit(nofile) {
        if soft < hard {
            let _ = nix::sys::resource::setrlimit(nofile, hard, hard);
        }
    }
    let start_wall = chrono::Local::now();
    let dir = SessionDir::create(
        &cfg.out_dir,
        &start_wall.format("%Y%m%d_%H%M%S").to_string(),
    )?;
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run_session(cfg, &dir, start_wall));
    if result.is_err() {
        // Nothing was written: leave no empty session directory behind.
        let _ = std::fs::remove_dir(dir.path());
    }
    result
}

/// Ring buffer -> correlator (CUDA calls) and Python context (stacks, USDT) -> profilers,
/// owned by one task.
struct Pipeline {
    drain: Drain,
    correlator: Correlator,
    python: PythonContext,
    batches: BatchReader,
    py_rx: mpsc::Receiver<PyUpdate>,
    profilers: Vec<Box<dyn Profiler>>,
}

impl Pipeline {
    /// Processes at most `DRAIN_BATCH` records; true when more may be waiting.
    fn feed(&mut self) -> bool {
        let Self {
            drain,
            correlator,
            python,
            batches,
            py_rx,
            profilers,
        } = self;
        let mut emit = |rec: crate::correlate::Correlated| {
            for p in profilers.iter_mut() {
                p.consume(&rec);
            }
        };
        apply_updates(py_rx, python, batches, &mut emit);
        let n = drain.drain(DRAIN_BATCH, |rec| match rec {
            Record::Call(ev) => correlator.handle(ev, &mut emit),
            Record::Stack(ev) => {
                if let crate::probes::drain::StackReason::CudaCall(_) = ev.reason {
                    correlator.walked(ev.pid, ev.tid, ev.ts_ns, u64::from(ev.walk_ns));
                }
                // The interpreter is sent before the walker is configured, so a stack of
                // an unknown process means its update is waiting in the channel.
                if !python.knows(ev.pid) {
                    apply_updates(py_rx, python, batches, &mut emit);
                }
                python.stack(ev, &mut |rec| {
                    if let crate::correlate::Correlated::PyStack(st) = &rec {
                        batches.observe(st, &mut emit);
                    }
                    emit(rec);
                });
            }
            Record::Usdt(ev) => python.usdt(ev, &mut emit),
        });
        n >= DRAIN_BATCH
    }

    /// Drains on readiness and on a timer tick until `stop` turns true, then empties the
    /// buffer. Batches are bounded so a producer faster than the pipeline cannot keep the
    /// stop request from being seen.
    async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) -> (Self, Option<String>) {
        let mut tick = tokio::time::interval(DRAIN_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut more = false;
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                () = std::future::ready(()), if more => more = self.feed(),
                r = self.drain.readable() => {
                    if let Err(e) = r {
                        // Keep what was correlated so far: the session writes it.
                        while self.feed() {}
                        return (self, Some(format!("ring buffer poll failed: {e}")));
                    }
                    more = self.feed();
                }
                _ = tick.tick() => more = self.feed(),
            }
            if more {
                tokio::task::yield_now().await;
            }
        }
        // Whatever is buffered at the stop, bounded by the buffer's size.
        while self.feed() {}
        (self, None)
    }
}

/// Hands what the target side found (interpreters, exits, scheduler polls) to the pipeline.
fn apply_updates(
    py_rx: &mpsc::Receiver<PyUpdate>,
    python: &mut PythonContext,
    batches: &mut BatchReader,
    emit: &mut impl FnMut(crate::correlate::Correlated),
) {
    while let Ok(update) = py_rx.try_recv() {
        match update {
            PyUpdate::Add(i) => {
                batches.add_interpreter(Interpreter::clone(&i));
                python.add_interpreter(*i);
            }
            PyUpdate::Remove(pid) => {
                batches.remove_process(pid);
                python.remove_process(pid);
            }
            PyUpdate::State(snap) => {
                batches.set_scheduler(snap.pid, snap.scheduler);
                emit(crate::correlate::Correlated::VllmState(snap));
            }
            PyUpdate::Requests(poll) => emit(crate::correlate::Correlated::Requests(poll)),
        }
    }
}

enum Stop {
    Duration,
    Interrupt,
    Terminate,
    TargetsExited,
    /// The pipeline task ended on its own (an error reading the ring buffer, or a panic).
    PipelineEnded(Box<Result<(Pipeline, Option<String>), tokio::task::JoinError>>),
}

impl Stop {
    fn describe(&self) -> &'static str {
        match self {
            Self::Duration => "duration elapsed",
            Self::Interrupt => "interrupted (SIGINT)",
            Self::Terminate => "terminated (SIGTERM)",
            Self::TargetsExited => "all target processes exited",
            Self::PipelineEnded(_) => "the pipeline ended",
        }
    }
}

async fn run_session(
    cfg: &AttachConfig,
    dir: &SessionDir,
    start_wall: chrono::DateTime<chrono::Local>,
) -> Result<SessionOutcome> {
    let t0 = monotonic_ns();
    // Taken right after t0: the two clocks are paired to well under a millisecond.
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let time = TimeBase {
        t0_ns: t0,
        unix_t0_sec: unix_now,
    };
    let mut probes = Probes::load(cfg.ring_bytes, cfg.kernels, cfg.driver_twins)?;
    probes.set_cuda_stacks(cfg.cuda_stacks)?;
    let drain = Drain::new(probes.take_ring_buffer()?).context("cannot poll the ring buffer")?;
    let (py_tx, py_rx) = mpsc::channel();
    let mut targets = Targets {
        root: cfg.pid,
        children: cfg.follow_children,
        time,
        procs: BTreeMap::new(),
        python: BTreeMap::new(),
        py_tx,
        usdt_notes: HashMap::new(),
        pollers: BTreeMap::new(),
        last_state: None,
    };
    targets.rescan(&mut probes);
    if targets.procs.is_empty() {
        bail!(preflight::PreflightError::NoSuchProcess { pid: cfg.pid });
    }
    let live_pids = |t: &Targets| -> Vec<u32> {
        t.procs
            .iter()
            .filter(|(_, r)| r.exited_sec.is_none())
            .map(|(pid, _)| *pid)
            .collect()
    };
    let mut metrics_first = vllm::metrics::scrape(&live_pids(&targets));
    // The latest reading while the targets run (a server that exits takes its endpoint
    // with it): the end of the comparison window.
    let mut metrics_last: Vec<vllm::metrics::Scrape> = Vec::new();
    if !targets.any_library() {
        let what = if cfg.follow_children {
            "pid {} or its children"
        } else {
            "pid {}"
        };
        let who = what.replace("{}", &cfg.pid.to_string());
        if !cfg.wait {
            bail!(
                "no CUDA library (libcudart*.so*, libcuda.so*) is mapped in {who}: the process has not \
                 initialized CUDA yet, or this is not the process that runs the model. Pass --wait to \
                 keep watching, or attach to the EngineCore/Worker pid"
            );
        }
        eprintln!("no CUDA library mapped in {who} yet; waiting (--wait)...");
    }

    let (sampled_cpus, sampling_error) = if cfg.sample_hz > 0 {
        match probes.start_sampling(cfg.sample_hz) {
            Ok(n) => (n, None),
            Err(e) => {
                let why = crate::probes::error_chain(&e);
                eprintln!("warning: Python stack sampling is off: {why}");
                (0, Some(why))
            }
        }
    } else {
        (0, None)
    };
    let sample_hz = if sampled_cpus > 0 { cfg.sample_hz } else { 0 };
    // The batch reader names each process it sees running vLLM steps, before any poll does.
    let (engine_tx, mut engine_rx) = tokio::sync::mpsc::unbounded_channel();
    let pipeline = Pipeline {
        drain,
        correlator: Correlator::new(cfg.timing, cfg.kernels),
        python: PythonContext::new(vllm::ops::VLLM_0_33),
        batches: BatchReader::new(&vllm::batch::BATCH_0_33, &vllm::state::VLLM_0_33, engine_tx),
        py_rx,
        profilers: profilers::default_set(dir, time, sample_hz)?,
    };
    // The pipeline runs on its own task (and worker thread): attaching to a new process
    // (symbol parsing, dozens of perf_event_open calls) must not stall the ring buffer.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut pipeline_task = tokio::spawn(pipeline.run(stop_rx));

    let mut sigint =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let deadline = cfg.duration.map(|d| tokio::time::Instant::now() + d);
    let mut rescan_tick = tokio::time::interval(cfg.rescan_interval);
    rescan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state_period = 1_000_000_000u64
        .checked_div(cfg.state_hz)
        .map_or(Duration::from_secs(3600), Duration::from_nanos);
    let mut state_tick = tokio::time::interval(state_period);
    state_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut metrics_tick = tokio::time::interval(METRICS_PERIOD);
    metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    if !cfg.quiet {
        eprintln!(
            "profilemate: attached to {} process(es) ({} with Python stacks), {} probes; writing to {}; Ctrl-C to stop",
            targets.procs.len(),
            targets.python.values().filter(|t| t.walking.is_some()).count(),
            probes.report.attached_count,
            dir.path().display()
        );
    }
    let stop = loop {
        tokio::select! {
            _ = rescan_tick.tick() => {
                targets.rescan(&mut probes);
                if targets.all_exited() {
                    break Stop::TargetsExited;
                }
            }
            _ = state_tick.tick(), if cfg.state_hz > 0 => targets.poll_state(&mut probes),
            Some(pid) = engine_rx.recv() => {
                if let Some(track) = targets.python.get_mut(&pid) {
                    track.wake_on_cuda_stacks(pid, &mut probes);
                }
            }
            _ = metrics_tick.tick() => {
                let now = vllm::metrics::scrape(&live_pids(&targets));
                if !now.is_empty() {
                    if metrics_first.is_empty() {
                        metrics_first.clone_from(&now);
                    }
                    metrics_last = now;
                }
            }
            r = &mut pipeline_task => break Stop::PipelineEnded(Box::new(r)),
            _ = sigint.recv() => break Stop::Interrupt,
            _ = sigterm.recv() => break Stop::Terminate,
            () = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break Stop::Duration,
        }
    };

    // The pipeline takes everything buffered up to the stop, then the results are written.
    // Detaching comes last: the kernel removes uprobes one grace period at a time (~0.1 s
    // each), and the results should not wait for that. Records arriving in between belong
    // to no session time and are not read.
    let _ = stop_tx.send(true);
    let mut stop_reason = stop.describe().to_owned();
    let joined = match stop {
        Stop::PipelineEnded(r) => *r,
        _ => pipeline_task.await,
    };
    let (pipeline, pipeline_error) =
        joined.context("the pipeline task failed; nothing could be written")?;
    if let Some(e) = pipeline_error {
        eprintln!("error: {e}; writing what was recorded until then");
        stop_reason = format!("error: {e}");
    }
    let Pipeline {
        drain,
        mut correlator,
        python: python_ctx,
        batches,
        py_rx: _,
        mut profilers,
    } = pipeline;
    correlator.finish(&mut |rec| {
        for p in profilers.iter_mut() {
            p.consume(&rec);
        }
    });
    let now = vllm::metrics::scrape(&live_pids(&targets));
    let metrics_end = if now.is_empty() { metrics_last } else { now };
    let end_ns = monotonic_ns();
    let kernel = probes.counters().unwrap_or_else(|e| {
        eprintln!("warning: cannot read the drop counters: {e}");
        crate::probes::KernelCounters::default()
    });

    let mut files = Vec::new();
    for p in &mut profilers {
        files.extend(p.finish(dir)?);
    }
    let steps = count_rows(dir, "forward_pass_timing.csv");
    let metrics_check = (!metrics_first.is_empty() || !metrics_end.is_empty()).then(|| {
        vllm::metrics::MetricsCheck::new(
            metrics_first,
            metrics_end,
            count_rows(dir, "preemption_events.csv"),
            targets.last_state.and_then(|s| s.kv_usage_pct()),
        )
    });
    let stats = correlator.stats.clone();
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
        start_time: start_wall.to_rfc3339(),
        end_time: chrono::Local::now().to_rfc3339(),
        duration_sec: (end_ns.saturating_sub(t0)) as f64 / 1e9,
        monotonic_start_ns: t0,
        stop_reason: stop_reason.clone(),
        ring_buffer_bytes: cfg.ring_bytes,
        targets: std::mem::take(&mut targets.procs).into_values().collect(),
        probes: std::mem::take(&mut probes.report),
        python: PythonReport {
            sample_hz,
            sampled_cpus,
            sampling_error,
            cuda_stacks: cfg.cuda_stacks,
            processes: std::mem::take(&mut targets.python)
                .into_values()
                .filter_map(|t| t.record)
                .collect(),
            usdt: std::mem::take(&mut probes.usdt_report),
            stats: python_ctx.final_stats(),
            vllm_batches: batches.final_stats(),
            vllm_state: targets
                .pollers
                .iter()
                .map(|(pid, p)| crate::output::metadata::StateReport {
                    pid: *pid,
                    names: vllm::state::VLLM_0_33.versions,
                    polls: p.polls,
                    torn_polls: p.torn,
                    last_error: p.last_error.clone(),
                })
                .collect(),
        },
        program_costs: probes.program_costs(),
        vllm_metrics: metrics_check,
        losses: LossReport {
            kernel,
            records_read: drain.records,
            decode_errors: drain.decode_errors,
            correlator: stats.clone(),
        },
        notes: Vec::new(),
    };
    let gc_attached = metadata.python.usdt.iter().any(|u| u.status == "attached");
    if gc_attached && metadata.python.stats.gc_pauses == 0 {
        metadata.notes.push(
            "GC probes were attached but no collection was observed: none happened during the session, or the probes did not fire".to_owned(),
        );
    }
    dir.write_json("metadata.json", &metadata)?;
    files.push("metadata.json");

    let mut summary = vec![
        format!("stopped: {stop_reason}"),
        format!("steps: {steps}; graphs: {}; probe records: {}", count_rows(dir, "cuda_graph_captures.csv"), drain.records),
        forward_summary_line(dir),
        cpu_summary_line(dir),
        format!(
            "lost: {} ring-buffer drops, {} undecodable; unattributed: {} incomplete steps, {} unmatched returns, {} waits on unknown events",
            kernel.ring_full_drops, drain.decode_errors, stats.incomplete_steps, stats.unmatched_returns, stats.syncs_unknown_event
        ),
    ];
    if !metadata.probes.failed.is_empty() {
        summary.push(format!(
            "{} probes could not be attached (see metadata.json)",
            metadata.probes.failed.len()
        ));
    }
    summary.push(format!("files: {}", files.join(", ")));
    let outcome = SessionOutcome {
        dir: dir.path().to_owned(),
        steps,
        drops: kernel.ring_full_drops,
        summary,
    };
    if !cfg.quiet {
        for line in &outcome.summary {
            eprintln!("  {line}");
        }
    }
    println!("session: {}", outcome.dir.display());
    let n = metadata.probes.attached_count;
    let t = std::time::Instant::now();
    if !cfg.quiet {
        eprintln!("detaching {n} probes...");
    }
    probes.detach_all();
    log::info!("detached {n} probes in {:?}", t.elapsed());
    Ok(outcome)
}

/// "forward_time_ms P50/P95/P99 ..." from the summary just written.
fn forward_summary_line(dir: &SessionDir) -> String {
    let text =
        std::fs::read_to_string(dir.path().join("forward_pass_summary.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let f = &v["forward_time_ms"];
    match (
        f["p50_ms"].as_f64(),
        f["p95_ms"].as_f64(),
        f["p99_ms"].as_f64(),
    ) {
        (Some(p50), Some(p95), Some(p99)) => format!(
            "forward_time_ms P50 {p50:.3}, P95 {p95:.3}, P99 {p99:.3} ({} of {} completions exact)",
            v["exact_count"], v["count"]
        ),
        _ => "forward_time_ms: no completed steps".to_owned(),
    }
}

/// "cpu (sampled): schedule 29%, ...; gc: N pauses, X ms" from the summary just written.
fn cpu_summary_line(dir: &SessionDir) -> String {
    let text =
        std::fs::read_to_string(dir.path().join("cpu_timing_summary.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let mut ops: Vec<(String, f64)> = v["operations"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, o)| Some((k.clone(), o["share_of_samples_pct"].as_f64()?)))
                .filter(|(_, pct)| *pct > 0.0)
                .collect()
        })
        .unwrap_or_default();
    ops.sort_by(|a, b| b.1.total_cmp(&a.1));
    let shares = if ops.is_empty() {
        "no samples".to_owned()
    } else {
        ops.iter()
            .take(6)
            .map(|(k, p)| format!("{k} {p:.0}%"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "cpu (sampled): {shares}; gc: {} pauses, {:.1} ms",
        v["gc"]["pauses"].as_u64().unwrap_or(0),
        v["gc"]["total_ms"].as_f64().unwrap_or(0.0)
    )
}

fn count_rows(dir: &SessionDir, name: &str) -> u64 {
    std::fs::read_to_string(dir.path().join(name))
        .map_or(0, |s| s.lines().count().saturating_sub(1) as u64)
}
