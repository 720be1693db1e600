//! The watcher thread: vLLM scheduler polls and /metrics scrapes, on their own clock.
//!
//! Owns the per-process `StatePoller`s and the /metrics readings. It does not touch the
//! probes or the ring buffer: a read of a busy target (thousands of `process_vm_readv` calls)
//! or an HTTP endpoint that answers slowly must never delay the session's deadline, a
//! rescan, or the ring's drain. What it finds goes to the pipeline (`PyUpdate`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    bundle::Bundle,
    calls::FunctionWatch,
    metrics::{self, Scrape},
    state::{StatePoller, StateSnapshot},
    version::{self, VllmVersion},
};
use crate::{model::RequestPoll, python::Interpreter};

/// How often /metrics is read (for the end-of-session cross-check).
const METRICS_PERIOD: Duration = Duration::from_secs(1);
/// The longest the thread sleeps before it looks at its commands and stop flag.
const SLICE: Duration = Duration::from_millis(20);
/// How long `stop` waits for a read in progress before it reports without it.
const STOP_WAIT: Duration = Duration::from_millis(300);

/// What the pipeline learns beside the records: interpreters found and gone (from the main
/// loop), scheduler and request polls (from the watcher).
pub enum PyUpdate {
    /// A process's interpreter was found.
    Add(Box<Interpreter>),
    /// A process exited; `noticed_ns`: when the main loop saw it gone (CLOCK_MONOTONIC).
    Remove {
        /// The process.
        pid: u32,
        /// When its exit was noticed.
        noticed_ns: u64,
    },
    /// A scheduler poll.
    State(StateSnapshot),
    /// A request-table poll.
    Requests(Box<RequestPoll>),
    /// A poll of the prefix-cached KV blocks.
    Blocks(Box<crate::model::BlockPoll>),
}

/// What the main loop tells the watcher.
pub enum WatchCommand {
    /// A process of the target tree (its /metrics endpoints are read).
    Process(u32),
    /// A Python process: poll its vLLM scheduler.
    Python(Box<Interpreter>),
    /// A process exited.
    Exited(u32),
}

/// Reads of one process's vLLM scheduler state.
#[derive(Debug, Clone, Serialize)]
pub struct StateReport {
    /// Process.
    pub pid: u32,
    /// The vLLM name table used.
    pub names: &'static str,
    /// Successful polls.
    pub polls: u64,
    /// Polls dropped because the state changed while being read.
    pub torn_polls: u64,
    /// Why the last poll found nothing (None: it succeeded).
    pub last_error: Option<String>,
    /// How the scheduler object was found (frame and attribute).
    pub scheduler_found_via: Option<String>,
    /// Why the scheduler's methods could not be watched with breakpoints (None: they were
    /// handed to the probes, or there is no scheduler).
    pub breakpoint_error: Option<String>,
    /// The process's vLLM release and the name bundle chosen for it (None: no vLLM
    /// package mapped in the process).
    pub vllm: Option<VllmVersion>,
    /// Why the release could not be read, when a vLLM package is mapped.
    pub vllm_version_error: Option<String>,
    /// Time per poll attempt (ms): median and longest.
    pub poll_ms_p50: f64,
    /// See `poll_ms_p50`.
    pub poll_ms_max: f64,
    /// CPU time of the watcher thread per poll attempt (ms): median, P99 and the total
    /// (seconds), what the polls cost the tracer.
    pub poll_cpu_ms_p50: f64,
    /// See `poll_cpu_ms_p50`.
    pub poll_cpu_ms_p99: f64,
    /// See `poll_cpu_ms_p50`.
    pub poll_cpu_sec: f64,
    /// Most requests the scheduler held at a poll.
    pub requests_held_max: u64,
    /// Requests read per poll (batched or in full): median and most.
    pub requests_read_p50: u64,
    /// See `requests_read_p50`.
    pub requests_read_max: u64,
    /// Requests read in full by name per poll (new ones, or a batched read that did not
    /// hold): median and most.
    pub requests_read_in_full_p50: u64,
    /// See `requests_read_in_full_p50`.
    pub requests_read_in_full_max: u64,
    /// Most new requests left for a later poll by one poll (the per-poll bound on first
    /// reads; nonzero while a long queue found at attach is learned, a few polls).
    pub requests_deferred_max: u64,
    /// Most prefix-cached blocks followed at a poll.
    pub blocks_cached_max: u64,
    /// Most entry slots of the prefix cache dict read by one poll (0 while it was unchanged).
    pub block_slots_read_max: u64,
    /// Block `ref_cnt`s read per poll: median and most (at most `REFS_PER_POLL`).
    pub block_refs_read_p50: u64,
    /// See `block_refs_read_p50`.
    pub block_refs_read_max: u64,
    /// Most cached blocks whose `ref_cnt` one poll left for a later one (the per-poll bound).
    pub block_refs_deferred_max: u64,
    /// Block polls skipped because the cache map changed during both reads of it.
    pub block_torn_polls: u64,
    /// Why the cached blocks could not be followed at the last poll (None: they were).
    pub blocks_error: Option<String>,
}

/// What the polls of one process cost, in bounded memory.
struct PollCost {
    wall_us: hdrhistogram::Histogram<u64>,
    cpu_us: hdrhistogram::Histogram<u64>,
    read: hdrhistogram::Histogram<u64>,
    read_in_full: hdrhistogram::Histogram<u64>,
    cpu_sec: f64,
    held_max: u64,
    deferred_max: u64,
    blocks_cached_max: u64,
    block_slots_max: u64,
    block_refs: hdrhistogram::Histogram<u64>,
    block_refs_deferred_max: u64,
    block_torn: u64,
    blocks_error: Option<String>,
}

impl PollCost {
    fn new() -> Self {
        // Microseconds (or counts) up to an hour's worth, 3 significant digits.
        let h = || {
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("bounds and 3 significant digits are valid")
        };
        Self {
            wall_us: h(),
            cpu_us: h(),
            read: h(),
            read_in_full: h(),
            cpu_sec: 0.0,
            held_max: 0,
            deferred_max: 0,
            blocks_cached_max: 0,
            block_slots_max: 0,
            block_refs: h(),
            block_refs_deferred_max: 0,
            block_torn: 0,
            blocks_error: None,
        }
    }

    fn blocks(&mut self, b: &super::blocks::BlockPoll) {
        self.blocks_cached_max = self.blocks_cached_max.max(b.cached);
        self.block_slots_max = self.block_slots_max.max(b.slots_read);
        self.block_refs.saturating_record(b.refs_read);
        self.block_refs_deferred_max = self.block_refs_deferred_max.max(b.refs_deferred);
        self.block_torn += u64::from(b.torn);
        self.blocks_error.clone_from(&b.error);
    }

    fn record(&mut self, wall: Duration, cpu: Duration) {
        self.wall_us.saturating_record(wall.as_micros() as u64);
        self.cpu_us.saturating_record(cpu.as_micros() as u64);
        self.cpu_sec += cpu.as_secs_f64();
    }

    fn requests(&mut self, r: &super::requests::RequestPoll) {
        self.read.saturating_record(r.read);
        self.read_in_full.saturating_record(r.read_in_full);
        self.held_max = self.held_max.max(r.held);
        self.deferred_max = self.deferred_max.max(r.deferred);
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
}

/// Everything the watcher found, for metadata.json and the /metrics cross-check.
#[derive(Debug, Clone, Default)]
pub struct WatchReport {
    /// Per Python process.
    pub state: Vec<StateReport>,
    /// The latest scheduler poll.
    pub last_state: Option<StateSnapshot>,
    /// The first and the latest /metrics readings.
    pub metrics_first: Vec<Scrape>,
    /// See `metrics_first`.
    pub metrics_last: Vec<Scrape>,
    /// Longest /metrics scrape (ms).
    pub scrape_ms_max: f64,
    /// Scrapes done (with or without an endpoint).
    pub scrapes: u64,
}

/// The running watcher.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<WatchReport>>,
    handle: JoinHandle<()>,
}

impl Watcher {
    /// Starts the thread on `commands` (queued since the attach began); its first /metrics
    /// reading opens the cross-check window. `state_hz` 0: no polls.
    pub fn spawn(
        commands: mpsc::Receiver<WatchCommand>,
        state_hz: u64,
        bundle: &'static Bundle,
        updates: mpsc::Sender<PyUpdate>,
        functions: Option<mpsc::Sender<FunctionWatch>>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(WatchReport::default()));
        let mut w = Work {
            rx: commands,
            bundle,
            updates,
            functions,
            state_period: 1_000_000_000u64
                .checked_div(state_hz)
                .map(Duration::from_nanos),
            pids: BTreeSet::new(),
            pollers: BTreeMap::new(),
            port_failures: HashMap::new(),
            ports: metrics::Ports::default(),
            report: Arc::clone(&report),
        };
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("pm-vllm-watch".to_owned())
            .spawn(move || w.run(&flag))?;
        Ok(Self {
            stop,
            report,
            handle,
        })
    }

    /// Waits until the first /metrics reading is taken, at most `timeout` (the session
    /// says it is attached only then, so that the cross-check window starts with it).
    pub fn wait_first_scrape(&self, timeout: Duration) {
        // A timeout past what the clock can hold waits as long as the thread runs.
        let until = Instant::now().checked_add(timeout);
        while until.is_none_or(|u| Instant::now() < u) {
            let done = self.report.lock().map_or(true, |r| r.scrapes > 0);
            if done || self.handle.is_finished() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the thread (after one last /metrics reading, if it comes in time) and returns
    /// what it found.
    #[must_use]
    pub fn stop(self) -> WatchReport {
        self.stop.store(true, Ordering::Release);
        let until = Instant::now().checked_add(STOP_WAIT);
        while !self.handle.is_finished() && until.is_some_and(|u| Instant::now() < u) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // A read still in progress finishes on its own; its thread is not waited for.
        let r = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        r.clone()
    }
}

struct Poller {
    poller: StatePoller,
    version: Option<Result<VllmVersion, String>>,
    cost: PollCost,
    exited: bool,
    /// Why the scheduler's methods could not be watched.
    watch_error: Option<String>,
}

struct Work {
    rx: mpsc::Receiver<WatchCommand>,
    /// The vLLM names used.
    bundle: &'static Bundle,
    updates: mpsc::Sender<PyUpdate>,
    /// Where the scheduler methods to watch go (None: breakpoints are off).
    functions: Option<mpsc::Sender<FunctionWatch>>,
    state_period: Option<Duration>,
    pids: BTreeSet<u32>,
    pollers: BTreeMap<u32, Poller>,
    port_failures: HashMap<(u32, u16), u32>,
    ports: metrics::Ports,
    report: Arc<Mutex<WatchReport>>,
}

impl Work {
    fn run(&mut self, stop: &AtomicBool) {
        let mut next_poll = Instant::now();
        let mut next_scrape = Instant::now();
        while !stop.load(Ordering::Acquire) {
            self.commands();
            let now = Instant::now();
            if now >= next_scrape {
                self.scrape();
                next_scrape = now + METRICS_PERIOD;
            }
            if let Some(period) = self.state_period.filter(|_| now >= next_poll) {
                self.poll_all();
                // Skip the ticks a slow poll overran rather than bunching them up.
                next_poll = next_poll
                    .checked_add(period)
                    .unwrap_or_else(Instant::now)
                    .max(Instant::now());
            }
            let due = self
                .state_period
                .map_or(next_scrape, |_| next_poll.min(next_scrape));
            std::thread::sleep(due.saturating_duration_since(Instant::now()).min(SLICE));
        }
        self.scrape();
    }

    fn commands(&mut self) {
        while let Ok(c) = self.rx.try_recv() {
            match c {
                WatchCommand::Process(pid) => {
                    self.pids.insert(pid);
                }
                WatchCommand::Python(interp) => {
                    let pid = interp.pid;
                    let poller = StatePoller::new(*interp, self.bundle.state);
                    let version = version::of_process(pid);
                    if let Some(Ok(VllmVersion { note: Some(n), .. })) = &version {
                        crate::say!("warning: pid {pid}: {n}");
                    }
                    self.pollers.insert(
                        pid,
                        Poller {
                            poller,
                            version,
                            cost: PollCost::new(),
                            exited: false,
                            watch_error: None,
                        },
                    );
                }
                WatchCommand::Exited(pid) => {
                    self.pids.remove(&pid);
                    if let Some(p) = self.pollers.get_mut(&pid) {
                        p.exited = true;
                    }
                }
            }
        }
    }

    fn scrape(&mut self) {
        let t = Instant::now();
        let pids: Vec<u32> = self.pids.iter().copied().collect();
        let now = metrics::scrape(&pids, &mut self.port_failures, &mut self.ports);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let mut r = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        r.scrape_ms_max = r.scrape_ms_max.max(ms);
        r.scrapes += 1;
        if !now.is_empty() {
            if r.metrics_first.is_empty() {
                r.metrics_first.clone_from(&now);
            }
            r.metrics_last = now;
        }
    }

    fn poll_all(&mut self) {
        let mut last = None;
        for (pid, p) in self.pollers.iter_mut().filter(|(_, p)| !p.exited) {
            let (t, cpu) = (Instant::now(), thread_cpu());
            let result = p.poller.poll(true);
            p.cost.record(t.elapsed(), thread_cpu().saturating_sub(cpu));
            match result {
                Ok((snap, requests, blocks)) => {
                    p.poller.last_error = None;
                    if p.version.is_none() {
                        p.version = p
                            .poller
                            .scheduler_source()
                            .and_then(|f| version::of_source_file(*pid, &f));
                    }
                    if let Some(tx) = &self.functions {
                        match p.poller.functions_to_watch(self.bundle.calls) {
                            Some(Ok(w)) => {
                                let _ = tx.send(w);
                            }
                            Some(Err(e)) => p.watch_error = Some(e),
                            None => {}
                        }
                    }
                    last = Some(snap);
                    let _ = self.updates.send(PyUpdate::State(snap));
                    if let Some(r) = requests {
                        p.cost.requests(&r);
                        let _ = self.updates.send(PyUpdate::Requests(Box::new(r)));
                    }
                    if let Some(b) = blocks {
                        p.cost.blocks(&b);
                        let _ = self.updates.send(PyUpdate::Blocks(Box::new(b)));
                    }
                }
                Err(e) => {
                    let why = crate::probes::error_chain(&e);
                    if p.poller.last_error.as_deref() != Some(why.as_str()) {
                        log::debug!("pid {pid}: scheduler state: {why}");
                    }
                    p.poller.last_error = Some(why);
                }
            }
        }
        self.publish(last);
    }

    /// Updates the shared report after a round of polls.
    fn publish(&mut self, last: Option<StateSnapshot>) {
        let state = self
            .pollers
            .iter_mut()
            .map(|(pid, p)| {
                let c = &p.cost;
                let ms =
                    |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
                StateReport {
                    pid: *pid,
                    names: self.bundle.state.versions,
                    polls: p.poller.polls,
                    torn_polls: p.poller.torn,
                    last_error: p.poller.last_error.clone(),
                    scheduler_found_via: p.poller.found_via.clone(),
                    breakpoint_error: p.watch_error.clone(),
                    vllm: p.version.clone().and_then(Result::ok),
                    vllm_version_error: p.version.clone().and_then(Result::err),
                    poll_ms_p50: ms(&c.wall_us, 0.5),
                    poll_ms_max: c.wall_us.max() as f64 / 1e3,
                    poll_cpu_ms_p50: ms(&c.cpu_us, 0.5),
                    poll_cpu_ms_p99: ms(&c.cpu_us, 0.99),
                    poll_cpu_sec: c.cpu_sec,
                    requests_held_max: c.held_max,
                    requests_read_p50: c.read.value_at_quantile(0.5),
                    requests_read_max: c.read.max(),
                    requests_read_in_full_p50: c.read_in_full.value_at_quantile(0.5),
                    requests_read_in_full_max: c.read_in_full.max(),
                    requests_deferred_max: c.deferred_max,
                    blocks_cached_max: c.blocks_cached_max,
                    block_slots_read_max: c.block_slots_max,
                    block_refs_read_p50: c.block_refs.value_at_quantile(0.5),
                    block_refs_read_max: c.block_refs.max(),
                    block_refs_deferred_max: c.block_refs_deferred_max,
                    block_torn_polls: c.block_torn,
                    blocks_error: c.blocks_error.clone(),
                }
            })
            .collect();
        let mut r = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        r.state = state;
        if last.is_some() {
            r.last_state = last;
        }
    }
}
