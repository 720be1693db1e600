//! One `profilemate attach` session: preflight, discovery, attach, drain, correlate, write.
//!
//! Four threads: the ring-buffer reader (`probes::reader`), the processing pipeline
//! (`pipeline`), the vLLM watcher (`vllm::watcher`: scheduler polls, /metrics), and this
//! main loop, a tokio task that selects over a rescan tick (new processes and late-loaded
//! libraries), signals and the deadline. Nothing that reads a busy target runs here, so the
//! deadline is kept.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use profilemate_common::{python::usdt_probe, Library};
use tokio::signal::unix::{signal, Signal, SignalKind};

pub mod losses;
pub mod metadata;

use self::metadata::{
    BreakpointSection, LossReport, MainLoopStats, Metadata, PythonRecord, PythonReport,
    TargetRecord,
};
use crate::{
    calibrate::{self, attach::Resolution},
    config::AttachConfig,
    console,
    correlate::{python::PythonContext, Correlator},
    discovery::{self, MappedLibrary},
    model::{monotonic_ns, Lost, TimeBase},
    output::SessionDir,
    pipeline::{Pipeline, PyUpdate, StopBudget},
    preflight,
    probes::{
        reader::{QueueGauge, RingReader},
        usdt::{self, UsdtProbe},
        Probes,
    },
    profilers,
    python::{self, Interpreter, PythonError},
    verdict,
    vllm::{
        self,
        batch::BatchReader,
        watcher::{WatchCommand, Watcher},
    },
};

/// Rescans that retry finding the interpreter of a process that is not (yet) Python.
const PYTHON_ATTEMPTS: u32 = 10;

/// The USDT probes ProfileMate attaches in CPython: (probe name, id).
const PYTHON_USDT: &[(&str, u16)] = &[
    ("gc__start", usdt_probe::GC_START),
    ("gc__done", usdt_probe::GC_DONE),
];

#[derive(Default)]
struct PyTrack {
    attempts: u32,
    done: bool,
    record: Option<PythonRecord>,
    /// The interpreter being walked (its thread list is re-read at each rescan).
    walking: Option<Interpreter>,
}

/// How long the pipeline may go on processing what is queued once `--duration` ends (the
/// files must be written within 1 s of it); what it has not reached by then is counted
/// (metadata `losses.pipeline.unprocessed_at_stop`), not processed.
const DURATION_GRACE: Duration = Duration::from_millis(600);
/// How long the attach waits for the first /metrics reading (the start of the cross-check
/// window) before it says it is attached.
const FIRST_SCRAPE_WAIT: Duration = Duration::from_millis(1500);
/// The same after a stop signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT): prompt, but a little
/// more patient. A second signal cuts it short.
const SIGNAL_GRACE: Duration = Duration::from_secs(2);
/// After the targets exited nobody waits on the clock: everything read is processed.
const EXIT_GRACE: Duration = Duration::from_secs(60);

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

/// Hands `pid`'s Python threads to the walker and to its breakpoints (if its functions are
/// watched), and keeps their ids for breakpoints armed later.
fn track_threads(
    py_tids: &mut HashMap<u32, Vec<u32>>,
    probes: &mut Probes,
    pid: u32,
    refs: &[(u32, profilemate_common::python::PyThreadRef)],
) {
    if let Err(e) = probes.set_python_threads(pid, refs) {
        log::warn!("pid {pid}: {e}");
    }
    let tids: Vec<u32> = refs.iter().map(|(t, _)| *t).collect();
    if let Err(e) = probes.watch_threads(pid, &tids) {
        log::warn!("pid {pid}: breakpoints: {e}");
    }
    py_tids.insert(pid, tids);
}

struct Targets {
    root: u32,
    children: bool,
    time: TimeBase,
    procs: BTreeMap<u32, TargetRecord>,
    python: BTreeMap<u32, PyTrack>,
    py_tx: mpsc::Sender<PyUpdate>,
    usdt_notes: HashMap<(u64, u64), Result<Vec<UsdtProbe>, String>>,
    /// Commands for the vLLM watcher thread (queued until it starts).
    watch: mpsc::Sender<WatchCommand>,
    /// Scheduler methods to watch with breakpoints, found by the watcher.
    functions: mpsc::Receiver<vllm::calls::FunctionWatch>,
    /// Python threads per process at the last rescan (where breakpoints go).
    py_tids: HashMap<u32, Vec<u32>>,
    /// Whether new processes get return probes.
    returns: ReturnPolicy,
    /// Processes whose memory maps could not be read, with the error (the latest).
    unreadable: BTreeMap<u32, String>,
}

/// Decides, per new process, whether return probes go in (seccomp on Linux 6.11-6.13 can kill
/// the target at one; see `preflight::return_probes`).
struct ReturnPolicy {
    release: String,
    kernel: Option<(u32, u32)>,
    allow: bool,
}

impl ReturnPolicy {
    fn new(allow: bool) -> Self {
        let release = preflight::kernel_release();
        Self {
            kernel: preflight::kernel_version(&release),
            release,
            allow,
        }
    }

    /// Decides for `pid`, says so when there is a risk, and tells `probes`.
    fn decide(
        &self,
        pid: u32,
        probes: &mut Probes,
    ) -> (Option<preflight::SeccompMode>, preflight::ReturnProbes) {
        let seccomp = preflight::seccomp_mode(pid);
        let decision = preflight::return_probes(self.kernel, seccomp, self.allow);
        if let Some(w) = preflight::return_probes_warning(pid, &self.release, seccomp, decision) {
            crate::say!("warning: {w}");
        }
        if decision == preflight::ReturnProbes::EntryOnly {
            probes.entry_only(pid);
        }
        (seccomp, decision)
    }
}

impl Targets {
    /// Finds `pid`'s interpreter (retrying a few rescans while it is not Python yet), hands
    /// it to the walker and the pipeline, and attaches its GC probes.
    fn python_scan(&mut self, pid: u32, probes: &mut Probes) {
        let track = self.python.entry(pid).or_default();
        if let Some(interp) = &track.walking {
            // New threads get walked (and their watched functions armed) from the next
            // rescan on.
            match interp.thread_refs() {
                Ok(refs) => track_threads(&mut self.py_tids, probes, pid, &refs),
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
                    crate::say!("warning: pid {pid}: Python stacks not walked: {e}");
                }
                track.done = true;
                track.record = Some(PythonRecord {
                    pid,
                    status,
                    interpreter: None,
                    tested: None,
                    objects: None,
                    reason: Some(crate::probes::error_chain(&e)),
                });
                return;
            }
        };
        track.done = true;
        // The pipeline learns the interpreter before the walker sends its first stack.
        let _ = self.py_tx.send(PyUpdate::Add(Box::new(interp.clone())));
        if let Err(e) = probes.set_python(pid, interp.walker_config()) {
            let _ = self.py_tx.send(PyUpdate::Remove { pid, noticed_ns: 0 });
            track.record = Some(PythonRecord {
                pid,
                status: "unsupported",
                interpreter: Some(interp),
                tested: None,
                objects: None,
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
            track_threads(&mut self.py_tids, probes, pid, &refs);
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
            objects: Some(python::objects::object_layout(interp.layout.version).is_some()),
            reason: None,
        });
        let _ = self
            .watch
            .send(WatchCommand::Python(Box::new(interp.clone())));
    }

    /// Arms the breakpoints on scheduler methods the watcher found, on the process's
    /// Python threads known now (threads that appear later are armed by the rescans).
    fn arm_watched_functions(&mut self, probes: &mut Probes) {
        while let Ok(w) = self.functions.try_recv() {
            if !w.missing.is_empty() {
                log::info!(
                    "pid {}: not watched (absent): {}",
                    w.pid,
                    w.missing.join(", ")
                );
            }
            let pid = w.pid;
            probes.watch_functions(pid, w.functions, w.found_via);
            let tids = self.py_tids.get(&pid).cloned().unwrap_or_default();
            if let Err(e) = probes.watch_threads(pid, &tids) {
                log::warn!("pid {pid}: breakpoints: {e}");
            }
        }
    }

    /// Finds new processes and libraries and attaches to them. Returns how many probes were
    /// attached now.
    fn rescan(&mut self, probes: &mut Probes) -> usize {
        self.arm_watched_functions(probes);
        let now = self.time.sec(monotonic_ns());
        let live = discovery::process_tree(self.root, self.children);
        for (pid, t) in &mut self.procs {
            // Confirm by pid: a failed /proc scan must not end the session.
            if t.exited_sec.is_none() && !live.contains(pid) && !discovery::is_running(*pid) {
                t.exited_sec = Some(now);
                probes.remove_target(*pid);
                probes.remove_python(*pid);
                let _ = self.py_tx.send(PyUpdate::Remove {
                    pid: *pid,
                    noticed_ns: monotonic_ns(),
                });
                let _ = self.watch.send(WatchCommand::Exited(*pid));
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
                    let _ = self.watch.send(WatchCommand::Process(pid));
                    let (seccomp, return_probes) = self.returns.decide(pid, probes);
                    e.insert(TargetRecord {
                        info,
                        first_seen_sec: now,
                        exited_sec: None,
                        libraries: Vec::new(),
                        seccomp,
                        return_probes,
                        return_probes_lost: (return_probes == preflight::ReturnProbes::EntryOnly)
                            .then_some(preflight::ENTRY_ONLY_LOSS),
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
            let mut libs: Vec<MappedLibrary> = match discovery::cuda_libraries(pid) {
                Ok(l) => l,
                Err(e) => {
                    self.unreadable.insert(pid, crate::probes::error_chain(&e));
                    Vec::new()
                }
            };
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

/// What `profilemate top` hands a session: the live statistics it reads, and how it asks
/// the session to stop (q in the view).
pub struct LiveHook {
    /// Fed by a [`profilers::live::Live`] profiler added to the session's set, and by the
    /// main loop (kernel drops, backlog) at each rescan.
    pub stats: std::sync::Arc<std::sync::Mutex<profilers::live::LiveStats>>,
    /// Notified to stop the session.
    pub quit: std::sync::Arc<tokio::sync::Notify>,
    /// The session directory is a scratch one the caller removes: its path is not printed,
    /// and only the live profiler runs (no row files are streamed into it).
    pub scratch_dir: bool,
}

/// Runs a whole session.
pub fn run(cfg: &AttachConfig) -> Result<SessionOutcome> {
    run_live(cfg, None)
}

/// Runs a whole session, feeding `live` (`profilemate top`) when given.
pub fn run_live(cfg: &AttachConfig, live: Option<&LiveHook>) -> Result<SessionOutcome> {
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
    // One perf event fd per probe (~40 per process): lift the soft fd limit to the hard one.
    let nofile = nix::sys::resource::Resource::RLIMIT_NOFILE;
    if let Ok((soft, hard)) = nix::sys::resource::getrlimit(nofile) {
        if soft < hard {
            let _ = nix::sys::resource::setrlimit(nofile, hard, hard);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Before anything exists that a signal's default action would leave half done.
        let signals = Signals::install()?;
        let start_wall = chrono::Local::now();
        let dir = SessionDir::create(
            &cfg.out_dir,
            &start_wall.format("%Y%m%d_%H%M%S").to_string(),
        )?;
        let result = run_session(cfg, &dir, start_wall, signals, &calibration, live).await;
        if result.is_err() {
            // Nothing was written: leave no empty session directory behind.
            let _ = std::fs::remove_dir(dir.path());
        }
        result
    })
}

/// The signals that stop a session: Ctrl-C, `kill`, a closed terminal or dropped SSH
/// session (SIGHUP), Ctrl-\ (SIGQUIT). Each would otherwise kill the process before the
/// files are written; caught, each stops the session the same way.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
    quit: Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        let one = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("cannot install the {name} handler"))
        };
        Ok(Self {
            interrupt: one(SignalKind::interrupt(), "SIGINT")?,
            terminate: one(SignalKind::terminate(), "SIGTERM")?,
            hangup: one(SignalKind::hangup(), "SIGHUP")?,
            quit: one(SignalKind::quit(), "SIGQUIT")?,
        })
    }

    /// The next stop signal. A stream that ends (only when the runtime shuts down) is never
    /// taken for a signal.
    async fn recv(&mut self) -> Stop {
        tokio::select! {
            Some(()) = self.interrupt.recv() => Stop::Interrupt,
            Some(()) = self.terminate.recv() => Stop::Terminate,
            Some(()) = self.hangup.recv() => Stop::Hangup,
            Some(()) = self.quit.recv() => Stop::Quit,
            else => std::future::pending().await,
        }
    }

    /// After the stop: a further signal cuts the pipeline's grace short (the files are
    /// still written, with what was processed so far), and is never the default action
    /// that would kill the process in the middle of writing them.
    fn shorten_on_next(mut self, budget: StopBudget, quiet: bool) {
        tokio::spawn(async move {
            let stop = self.recv().await;
            budget.start(Duration::ZERO);
            if !quiet {
                crate::say!(
                    "profilemate: {}: writing what was processed so far",
                    stop.describe()
                );
            }
            // Keep the handlers installed (and further signals ignored) until exit.
            loop {
                self.recv().await;
            }
        });
    }
}

enum Stop {
    Duration,
    Interrupt,
    Terminate,
    Hangup,
    Quit,
    /// q or Ctrl-C in `profilemate top`.
    Viewer,
    TargetsExited,
    /// The reader or pipeline thread ended on its own (a panic).
    PipelineEnded,
    /// CUDA libraries were found and not one probe could be attached.
    NothingAttached,
}

impl Stop {
    /// How long the pipeline may catch up after this stop.
    fn grace(&self) -> Duration {
        match self {
            Self::Duration => DURATION_GRACE,
            Self::Interrupt | Self::Terminate | Self::Hangup | Self::Quit | Self::Viewer => {
                SIGNAL_GRACE
            }
            Self::TargetsExited | Self::PipelineEnded => EXIT_GRACE,
            Self::NothingAttached => Duration::ZERO,
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Self::Duration => "duration elapsed",
            Self::Interrupt => "interrupted (SIGINT)",
            Self::Terminate => "terminated (SIGTERM)",
            Self::Hangup => "hung up (SIGHUP)",
            Self::Quit => "quit (SIGQUIT)",
            Self::Viewer => "quit from the live view",
            Self::TargetsExited => "all target processes exited",
            Self::PipelineEnded => "the pipeline thread ended early",
            Self::NothingAttached => "no probe could be attached",
        }
    }
}

async fn run_session(
    cfg: &AttachConfig,
    dir: &SessionDir,
    start_wall: chrono::DateTime<chrono::Local>,
    mut signals: Signals,
    calibration: &Resolution,
    live: Option<&LiveHook>,
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
    let ring = probes.take_ring_buffer()?;
    // The reader starts before the first probe is attached: records queue in userspace
    // while the rest of the session is set up (attaching to a busy server takes seconds).
    let (batch_tx, batch_rx) = mpsc::channel();
    let gauge = QueueGauge::default();
    let reader = RingReader::spawn(ring, batch_tx, gauge.clone(), cfg.queue_bytes)
        .context("cannot start the ring-buffer reader thread")?;
    let (py_tx, py_rx) = mpsc::channel();
    let (watch, watch_rx) = mpsc::channel();
    let (functions_tx, functions) = mpsc::channel();
    let mut targets = Targets {
        root: cfg.pid,
        children: cfg.follow_children,
        time,
        procs: BTreeMap::new(),
        python: BTreeMap::new(),
        py_tx: py_tx.clone(),
        usdt_notes: HashMap::new(),
        watch,
        functions,
        py_tids: HashMap::new(),
        returns: ReturnPolicy::new(cfg.allow_uretprobes),
        unreadable: BTreeMap::new(),
    };
    targets.rescan(&mut probes);
    if targets.procs.is_empty() {
        bail!(preflight::PreflightError::NoSuchProcess { pid: cfg.pid });
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
    .context("cannot start the vLLM watcher thread")?;
    if !targets.any_library() {
        let what = if cfg.follow_children {
            "pid {} or its children"
        } else {
            "pid {}"
        };
        let who = what.replace("{}", &cfg.pid.to_string());
        if let Some((pid, e)) = targets.unreadable.iter().next() {
            bail!(
                "cannot read the memory maps of pid {pid} ({e}), so no CUDA library can be found in \
                 {who}: run profilemate as root (sudo), or with the capabilities {}",
                preflight::ATTACH_CAPS.join(" + ")
            );
        }
        if !cfg.wait {
            bail!(
                "no CUDA library (libcudart*.so*, libcuda.so*) is mapped in {who}: the process has not \
                 initialized CUDA yet, or this is not the process that runs the model. Pass --wait to \
                 keep watching, or attach to the EngineCore/Worker pid"
            );
        }
        crate::say!("no CUDA library mapped in {who} yet; waiting (--wait)...");
    }

    let (sampled_cpus, sampling_error) = if cfg.sample_hz > 0 {
        match probes.start_sampling(cfg.sample_hz) {
            Ok(n) => (n, None),
            Err(e) => {
                let why = crate::probes::error_chain(&e);
                crate::say!("warning: Python stack sampling is off: {why}");
                (0, Some(why))
            }
        }
    } else {
        (0, None)
    };
    let sample_hz = if sampled_cpus > 0 { cfg.sample_hz } else { 0 };
    // A scratch session (top without --out) streams no row files: only metadata.json is
    // written, at the end, so a long live view does not fill the disk.
    let mut profilers = if live.is_some_and(|h| h.scratch_dir) {
        Vec::new()
    } else {
        profilers::default_set(dir, time, sample_hz, exact_bound(calibration))?
    };
    if let Some(h) = live {
        profilers.push(Box::new(profilers::live::Live(h.stats.clone())));
    }
    let pipeline = Pipeline::new(
        Correlator::new(cfg.timing, cfg.kernels).with_event_roles(bundle.events),
        PythonContext::new(bundle.ops),
        BatchReader::new(bundle),
        py_rx,
        profilers,
    );
    // The reader only moves records from the ring into a bounded queue, so no work
    // downstream (target reads, symbolization, file writes) can make the kernel drop; the
    // pipeline processes the queue at its own pace.
    let budget = StopBudget::default();
    let live_gauge = gauge.clone();
    let pipeline_thread = pipeline
        .spawn(batch_rx, gauge, budget.clone())
        .context("cannot start the pipeline thread")?;

    // The session's length is counted from its start, attaching included.
    // `--duration` is bounded at parsing; a deadline past what the clock can hold is none.
    let deadline = cfg.duration.and_then(|d| {
        let spent = Duration::from_nanos(monotonic_ns().saturating_sub(t0));
        tokio::time::Instant::now().checked_add(d.saturating_sub(spent))
    });
    let mut rescan_tick = tokio::time::interval(cfg.rescan_interval);
    rescan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut main_loop = MainLoopStats::default();
    // Breakpoints are armed within this of the watcher finding the scheduler (calls before
    // that are seen only by the step outputs and polls).
    let mut arm_tick = tokio::time::interval(Duration::from_millis(20));
    arm_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    watcher.wait_first_scrape(FIRST_SCRAPE_WAIT);
    if !cfg.quiet {
        crate::say!(
            "profilemate: attached to {} process(es) ({} with Python stacks), {} probes; writing to {}; Ctrl-C to stop",
            targets.procs.len(),
            targets.python.values().filter(|t| t.walking.is_some()).count(),
            probes.report.attached_count,
            dir.path().display()
        );
    }
    let stop = loop {
        // Libraries were found and every probe on them failed: nothing can be recorded.
        if verdict::nothing_attached(&probes.report) {
            break Stop::NothingAttached;
        }
        tokio::select! {
            _ = rescan_tick.tick() => {
                let t = std::time::Instant::now();
                targets.rescan(&mut probes);
                main_loop.rescans += 1;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                main_loop.rescan_ms_max = main_loop.rescan_ms_max.max(ms);
                if ms > 100.0 && main_loop.slow_rescans.len() < 32 {
                    main_loop.slow_rescans.push((time.sec(monotonic_ns()), ms));
                }
                if let Some(h) = live {
                    let drops = probes.counters().map(|k| kernel_drops(&k));
                    if let Ok(mut s) = h.stats.lock() {
                        s.kernel_drops = drops.unwrap_or(s.kernel_drops);
                        s.queued_bytes = live_gauge.queued();
                    }
                }
                if targets.all_exited() {
                    break Stop::TargetsExited;
                }
                if reader.is_finished() || pipeline_thread.is_finished() {
                    break Stop::PipelineEnded;
                }
            }
            _ = arm_tick.tick() => targets.arm_watched_functions(&mut probes),
            stop = signals.recv() => break stop,
            () = async { match live { Some(h) => h.quit.notified().await, None => std::future::pending().await } } => break Stop::Viewer,
            () = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break Stop::Duration,
        }
    };

    // The reader empties the ring once more and hangs up; the pipeline gets its grace (by stop reason) to
    // process what is queued, the rest is counted. Detaching comes last: the kernel removes
    // uprobes one grace period at a time, and the results should not wait for that. Records
    // arriving in between belong to no session time and are not read.
    let stop_reason = stop.describe().to_owned();
    if let (Stop::Duration, Some(d)) = (&stop, deadline) {
        main_loop.deadline_late_ms = d.elapsed().as_secs_f64() * 1e3;
    }
    budget.start(stop.grace());
    signals.shorten_on_next(budget.clone(), cfg.quiet);
    let watch = watcher.stop();
    let reader_stats = reader.stop();
    let mut pipeline = pipeline_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the pipeline thread panicked; nothing could be written"))?;
    pipeline.finish();
    let Pipeline {
        python: python_ctx,
        batches,
        mut profilers,
        correlator,
        stats: pipeline_stats,
        ..
    } = pipeline;
    let end_ns = monotonic_ns();
    let kernel = probes.counters().unwrap_or_else(|e| {
        crate::say!("warning: cannot read the drop counters: {e}");
        crate::probes::KernelCounters::default()
    });

    let losses = LossReport {
        kernel,
        records_read: reader_stats.records_read,
        decode_errors: reader_stats.decode_errors,
        reader: reader_stats.clone(),
        pipeline: pipeline_stats.clone(),
        main_loop,
        metrics_scrape_ms_max: watch.scrape_ms_max,
        correlator: correlator.stats.clone(),
    };
    let lost = Lost {
        gc: losses::gc_lost(&losses),
    };
    let mut files = Vec::new();
    for p in &mut profilers {
        p.losses(&lost);
        files.extend(p.finish(dir)?);
    }
    let steps = count_rows(dir, "forward_pass_timing.csv");
    let metrics_check =
        (!watch.metrics_first.is_empty() || !watch.metrics_last.is_empty()).then(|| {
            vllm::metrics::MetricsCheck::new(
                watch.metrics_first.clone(),
                watch.metrics_last.clone(),
                count_rows(dir, "preemption_events.csv"),
                watch.last_state.and_then(|s| s.kv_usage_pct()),
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
            vllm_bundle: bundle.name,
            vllm_batches: batches.final_stats(),
            vllm_state: watch.state.clone(),
            breakpoints: BreakpointSection {
                enabled: cfg.breakpoints,
                processes: probes.breakpoint_reports(),
                calls: batches.call_stats(),
            },
        },
        program_costs: probes.program_costs(),
        vllm_metrics: metrics_check,
        losses,
        notes: Vec::new(),
        failure: None,
        calibration: match calibration {
            Resolution::Used(u) => Some(u.as_ref().clone()),
            Resolution::None(_) => None,
        },
        calibration_none: match calibration {
            Resolution::Used(_) => None,
            Resolution::None(why) => Some(why.clone()),
        },
    };
    if matches!(stop, Stop::NothingAttached) {
        metadata.failure = Some(verdict::empty_session_cause(&metadata.probes));
    }
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
        format!(
            "steps: {steps}; graphs: {}; probe records: {}",
            count_rows(dir, "cuda_graph_captures.csv"),
            reader_stats.records_read
        ),
    ];
    summary.extend(forward_summary_lines(dir));
    summary.extend([
        cpu_summary_line(dir),
        format!(
            "lost: {} ring-buffer drops, {} undecodable; unattributed: {} incomplete steps, {} unmatched returns, {} waits on unknown events",
            kernel_drops(&kernel), reader_stats.decode_errors, stats.incomplete_steps, stats.unmatched_returns, stats.syncs_unknown_event
        ),
        format!(
            "tracer lag behind the target: P50 {} ms, P99 {} ms, max {} ms",
            pipeline_stats.lag_ms.p50, pipeline_stats.lag_ms.p99, pipeline_stats.lag_ms.max
        ),
    ]);
    summary.extend(losses::warnings(&metadata.losses, cfg.ring_bytes));
    summary.extend(verdict::failed_probes_line(&metadata.probes));
    summary.push(format!("files: {}", files.join(", ")));
    let outcome = SessionOutcome {
        dir: dir.path().to_owned(),
        steps,
        drops: kernel_drops(&kernel),
        summary,
        failure: metadata.failure.clone(),
    };
    if !cfg.quiet {
        for line in &outcome.summary {
            crate::say!("  {line}");
        }
    }
    // The path is the one line a script reads; the session is complete whether or not it can
    // be printed.
    let printed = if live.is_some_and(|h| h.scratch_dir) {
        Ok(())
    } else {
        console::out_line(&format!("session: {}", outcome.dir.display()))
    };
    if let Err(e) = printed {
        crate::say!(
            "warning: cannot print the session path to stdout ({e}); the session is in {}",
            outcome.dir.display()
        );
    }
    let n = metadata.probes.attached_count;
    let t = std::time::Instant::now();
    if !cfg.quiet {
        crate::say!("detaching {n} probes...");
    }
    probes.detach_all();
    log::info!("detached {n} probes in {:?}", t.elapsed());
    // After the detach (the target runs unprobed meanwhile) and after every session file:
    // a failure here is a warning, never a lost session or another exit status.
    if cfg.report {
        for line in crate::report::after_session(dir.path()) {
            if !cfg.quiet || line.starts_with("warning") {
                crate::say!("{line}");
            }
        }
    }
    Ok(outcome)
}

/// The bound forward_pass_summary.json states for exact rows, from the calibration used.
fn exact_bound(calibration: &Resolution) -> Option<profilers::forward_pass::ExactBound> {
    match calibration {
        Resolution::Used(u) => Some(profilers::forward_pass::ExactBound {
            calibration: u.path.clone(),
            wake_up_p50_us: u.wake_up_us.p50,
            completion_late_by_at_most_us: u.exact_completion_error_bound_us,
        }),
        Resolution::None(_) => None,
    }
}

/// Records of every kind the kernel could not hand over (ring buffer full).
fn kernel_drops(k: &crate::probes::KernelCounters) -> u64 {
    k.ring_full_drops + k.stack_ring_full_drops + k.usdt_ring_full_drops
}

/// "forward_time_ms P50/P95/P99 ..." from the summary just written, and whether the GPU
/// waited for the CPU.
fn forward_summary_lines(dir: &SessionDir) -> Vec<String> {
    let text =
        std::fs::read_to_string(dir.path().join("forward_pass_summary.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let f = &v["forward_time_ms"];
    match (
        f["p50_ms"].as_f64(),
        f["p95_ms"].as_f64(),
        f["p99_ms"].as_f64(),
    ) {
        (Some(p50), Some(p95), Some(p99)) => {
            let mut lines = vec![format!(
                "forward_time_ms P50 {p50:.3}, P95 {p95:.3}, P99 {p99:.3} ({} of {} completions exact)",
                v["exact_count"], v["count"]
            )];
            if let Some(pct) = v["gpu_finished_before_wait_pct"]
                .as_f64()
                .filter(|p| *p > 0.0)
            {
                lines.push(format!(
                    "GPU finished before the CPU waited in {pct:.1} % of steps: the engine is \
                     CPU-bound there, and those steps' forward_time_ms is an upper bound, not GPU \
                     time (gpu_time_lower_ms is the lower bound)"
                ));
            }
            lines
        }
        _ => vec!["forward_time_ms: no completed steps".to_owned()],
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
