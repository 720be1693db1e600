//! The processing thread: queued ring-buffer records -> correlator (CUDA calls) and Python
//! context (stacks, USDT) -> vLLM batch reads -> profilers.
//!
//! Owns the order in which one record visits the stages and the session's stop budget. It
//! does not read the ring buffer (`probes::reader` does, on its own thread, so nothing here
//! can make the kernel drop records) and does not decide what a record means (the stages
//! do). It can fall behind the target; how far is measured (`lag_ms`), and at the stop it
//! gets a bounded time to catch up, after which what it did not process is counted.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;

pub use crate::vllm::watcher::PyUpdate;
use crate::{
    config::TimingMode,
    correlate::{python::PythonContext, Correlated, Correlator},
    model::monotonic_ns,
    output::sink::Sinks,
    probes::{
        drain::{Record, StackReason},
        reader::{Batch, KindCounts, QueueGauge},
    },
    profilers::Profiler,
    python::Interpreter,
    vllm::{
        batch::{BatchReader, DelayPercentiles},
        bundle::Bundle,
    },
};

/// How long the pipeline waits for a batch before it looks at its updates again.
const IDLE_TICK: Duration = Duration::from_millis(4);
/// Records processed between two looks at the stop budget.
const BUDGET_CHECK: usize = 256;
/// An exited process is forgotten only once records this much newer than its exit was
/// noticed have been processed: its last records travel in the record queue, behind the
/// exit's notice (which takes the update channel), and would otherwise find it gone.
const REMOVE_AFTER_NS: u64 = 20_000_000;

/// Time spent per stage (ms) and how far behind the target the pipeline ran.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PipelineStats {
    /// Records processed.
    pub records: u64,
    /// Records queued but not processed when the stop budget ran out, by kind.
    pub unprocessed_at_stop: KindCounts,
    /// Age of the oldest record of each batch when its processing began (ms).
    pub lag_ms: DelayPercentiles,
    /// CPU-side time of the stages (wall ms on the pipeline thread).
    pub stage_ms: StageTimes,
}

/// Wall time per stage, in ms.
#[derive(Debug, Default, Clone, Serialize)]
pub struct StageTimes {
    /// CUDA calls through the correlator (and the profilers that take its records).
    pub calls: f64,
    /// Python stacks: symbolization and the profilers that take them.
    pub stacks: f64,
    /// Per-step reads of the target's `SchedulerOutput` / descriptors.
    pub batch_reads: f64,
    /// USDT hits.
    pub usdt: f64,
    /// Interpreter changes and scheduler polls.
    pub updates: f64,
}

/// Everything downstream of the ring buffer, owned by the pipeline thread.
pub struct Pipeline {
    /// CUDA calls -> steps and graphs.
    pub correlator: Correlator,
    /// Python stacks and USDT hits.
    pub python: PythonContext,
    /// Per-step `SchedulerOutput` reads.
    pub batches: BatchReader,
    /// Updates from the main loop.
    pub py_rx: mpsc::Receiver<PyUpdate>,
    /// The output families.
    pub profilers: Vec<Box<dyn Profiler>>,
    /// Where the profilers' rows and summaries go.
    pub sinks: Sinks,
    /// Counters.
    pub stats: PipelineStats,
    lag: Lag,
    /// Exited processes not forgotten yet: (pid, when the exit was noticed).
    exits: Vec<(u32, u64)>,
}

/// When the pipeline must stop processing (monotonic ns; 0: no deadline yet).
#[derive(Clone, Default)]
pub struct StopBudget(Arc<AtomicU64>);

impl StopBudget {
    /// Processing ends `grace` from now; what is queued then is counted, not processed.
    pub fn start(&self, grace: Duration) {
        let at = monotonic_ns().saturating_add(u64::try_from(grace.as_nanos()).unwrap_or(0));
        self.0.store(at.max(1), Ordering::Release);
    }

    fn spent(&self) -> bool {
        let at = self.0.load(Ordering::Acquire);
        at != 0 && monotonic_ns() >= at
    }
}

struct Lag(hdrhistogram::Histogram<u64>);

impl Default for Lag {
    fn default() -> Self {
        // 3 significant digits; auto-resizing, so any lag fits.
        Self(hdrhistogram::Histogram::new(3).expect("3 significant digits are valid"))
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl Pipeline {
    /// A pipeline over these stages.
    #[must_use]
    pub fn new(
        correlator: Correlator,
        python: PythonContext,
        batches: BatchReader,
        py_rx: mpsc::Receiver<PyUpdate>,
        profilers: Vec<Box<dyn Profiler>>,
        sinks: Sinks,
    ) -> Self {
        Self {
            correlator,
            python,
            batches,
            py_rx,
            profilers,
            sinks,
            stats: PipelineStats::default(),
            lag: Lag::default(),
            exits: Vec::new(),
        }
    }

    /// The session's wiring: the correlator, the Python context and the batch reader of
    /// `bundle`'s vLLM names, feeding `profilers` whose results go to `sinks` (the benchmark
    /// runs the same).
    #[must_use]
    pub fn wire(
        bundle: &'static Bundle,
        timing: TimingMode,
        kernels: bool,
        py_rx: mpsc::Receiver<PyUpdate>,
        profilers: Vec<Box<dyn Profiler>>,
        sinks: Sinks,
    ) -> Self {
        Self::new(
            Correlator::new(timing, kernels).with_event_roles(bundle.events),
            PythonContext::new(bundle.ops),
            BatchReader::new(bundle),
            py_rx,
            profilers,
            sinks,
        )
    }

    /// Takes one decoded record on the calling thread, as the pipeline thread does with
    /// each record of a batch (no stop budget: the benchmark's loop).
    pub fn take(&mut self, rec: Record) {
        self.stats.records += 1;
        self.handle(rec);
    }

    /// Runs on its own thread until the reader hangs up; returns the pipeline for writing.
    pub fn spawn(
        self,
        rx: mpsc::Receiver<Batch>,
        gauge: QueueGauge,
        budget: StopBudget,
    ) -> std::io::Result<JoinHandle<Self>> {
        std::thread::Builder::new()
            .name("pm-pipeline".to_owned())
            .spawn(move || self.run(&rx, &gauge, &budget))
    }

    fn run(mut self, rx: &mpsc::Receiver<Batch>, gauge: &QueueGauge, budget: &StopBudget) -> Self {
        loop {
            self.apply_updates();
            match rx.recv_timeout(IDLE_TICK) {
                Ok(batch) => {
                    let bytes = batch.bytes;
                    self.process(batch, budget);
                    gauge.release(bytes);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.apply_updates();
        self.forget_exited(u64::MAX);
        let l = &self.lag.0;
        self.stats.lag_ms = DelayPercentiles {
            p50: l.value_at_quantile(0.5),
            p99: l.value_at_quantile(0.99),
            max: l.max(),
        };
        self
    }

    fn process(&mut self, batch: Batch, budget: &StopBudget) {
        if let Some(first) = batch.records.first() {
            let age = monotonic_ns().saturating_sub(record_ts(first));
            // An auto-resizing histogram: recording cannot fail short of memory.
            let _ = self.lag.0.record(age / 1_000_000);
        }
        let mut spent = budget.spent();
        let last_ts = batch.records.last().map_or(0, record_ts);
        for (i, rec) in batch.records.into_iter().enumerate() {
            if i % BUDGET_CHECK == 0 && !spent {
                spent = budget.spent();
            }
            if spent {
                self.stats.unprocessed_at_stop.add(&rec);
                continue;
            }
            self.stats.records += 1;
            self.handle(rec);
        }
        self.forget_exited(last_ts);
    }

    /// Forgets the exited processes whose every record must be behind `processed_ns`.
    fn forget_exited(&mut self, processed_ns: u64) {
        let (python, batches) = (&mut self.python, &mut self.batches);
        self.exits.retain(|&(pid, noticed_ns)| {
            let done = processed_ns >= noticed_ns.saturating_add(REMOVE_AFTER_NS);
            if done {
                batches.remove_process(pid);
                python.remove_process(pid);
            }
            !done
        });
    }

    fn handle(&mut self, rec: Record) {
        let Self {
            correlator,
            python,
            batches,
            profilers,
            sinks,
            stats,
            py_rx,
            exits,
            ..
        } = self;
        let mut emit = |rec: Correlated| {
            for p in profilers.iter_mut() {
                p.consume(&rec, sinks);
            }
        };
        let t = Instant::now();
        match rec {
            Record::Call(ev) => {
                correlator.handle(ev, &mut emit);
                stats.stage_ms.calls += ms_since(t);
            }
            Record::Stack(ev) => {
                if let StackReason::CudaCall(_) = ev.reason {
                    correlator.walked(ev.pid, ev.tid, ev.ts_ns, u64::from(ev.walk_ns));
                }
                // The interpreter is sent before the walker is configured, so a stack of an
                // unknown process means its update is waiting in the channel.
                if !python.knows(ev.pid) {
                    apply_updates(py_rx, python, batches, exits, &mut emit);
                }
                let mut read_ms = 0.0;
                python.stack(ev, &mut |rec| {
                    if let Correlated::PyStack(st) = &rec {
                        // The vLLM function that recorded an event tells a step's event from
                        // helpers (vllm::events).
                        correlator.python_stack(st, &mut emit);
                        let r = Instant::now();
                        batches.observe(st, &mut emit);
                        read_ms += ms_since(r);
                    }
                    emit(rec);
                });
                stats.stage_ms.batch_reads += read_ms;
                stats.stage_ms.stacks += ms_since(t) - read_ms;
            }
            Record::Usdt(ev) => {
                python.usdt(ev, &mut emit);
                stats.stage_ms.usdt += ms_since(t);
            }
        }
    }

    fn apply_updates(&mut self) {
        let t = Instant::now();
        let Self {
            python,
            batches,
            profilers,
            sinks,
            py_rx,
            exits,
            ..
        } = self;
        apply_updates(py_rx, python, batches, exits, &mut |rec: Correlated| {
            for p in profilers.iter_mut() {
                p.consume(&rec, sinks);
            }
        });
        self.stats.stage_ms.updates += ms_since(t);
    }

    /// Session end: completes what the correlator still holds.
    pub fn finish(&mut self) {
        let Self {
            correlator,
            profilers,
            sinks,
            ..
        } = self;
        correlator.finish(&mut |rec| {
            for p in profilers.iter_mut() {
                p.consume(&rec, sinks);
            }
        });
    }
}

fn record_ts(r: &Record) -> u64 {
    match r {
        Record::Call(e) => e.ts_ns,
        Record::Stack(e) => e.ts_ns,
        Record::Usdt(e) => e.ts_ns,
    }
}

/// Hands what the target side found (interpreters, exits, scheduler polls) to the stages.
fn apply_updates(
    py_rx: &mpsc::Receiver<PyUpdate>,
    python: &mut PythonContext,
    batches: &mut BatchReader,
    exits: &mut Vec<(u32, u64)>,
    emit: &mut impl FnMut(Correlated),
) {
    while let Ok(update) = py_rx.try_recv() {
        match update {
            PyUpdate::Add(i) => {
                batches.add_interpreter(Interpreter::clone(&i));
                python.add_interpreter(*i);
            }
            PyUpdate::Remove { pid, noticed_ns } => exits.push((pid, noticed_ns)),
            PyUpdate::State(snap) => {
                batches.set_scheduler(snap.pid, snap.scheduler);
                emit(Correlated::VllmState(snap));
            }
            PyUpdate::Requests(poll) => emit(Correlated::Requests(poll)),
            PyUpdate::Blocks(poll) => emit(Correlated::Blocks(poll)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::drain::{CallEvent, CallPhase};
    use profilemate_common::ApiId;

    fn pipeline() -> Pipeline {
        let (_tx, rx) = mpsc::channel();
        Pipeline::wire(
            &crate::vllm::v0_33::BUNDLE,
            TimingMode::Events,
            false,
            rx,
            Vec::new(),
            Sinks::default(),
        )
    }

    fn calls(n: usize) -> Batch {
        let records: Vec<Record> = (0..n)
            .map(|i| {
                Record::Call(CallEvent {
                    ts_ns: monotonic_ns(),
                    pid: 7,
                    tid: 7,
                    api: ApiId::cudaMemcpyAsync,
                    phase: CallPhase::Entry {
                        args: [0, 0, 64, 1, 0, i as u64],
                    },
                })
            })
            .collect();
        let bytes = n * size_of::<Record>();
        Batch { records, bytes }
    }

    #[test]
    fn without_a_stop_every_record_is_processed() {
        let mut p = pipeline();
        p.process(calls(1000), &StopBudget::default());
        assert_eq!(p.stats.records, 1000);
        assert_eq!(p.stats.unprocessed_at_stop.total(), 0);
        assert_eq!(p.correlator.stats.events, 1000);
    }

    #[test]
    fn a_spent_budget_counts_the_rest_by_kind_instead_of_processing_it() {
        let mut p = pipeline();
        let budget = StopBudget::default();
        budget.start(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
        p.process(calls(600), &budget);
        assert_eq!(p.stats.records, 0);
        assert_eq!(p.stats.unprocessed_at_stop.calls, 600);
        assert_eq!(p.correlator.stats.events, 0);
    }

    #[test]
    fn the_thread_ends_when_the_reader_hangs_up_and_measures_its_lag() {
        let (tx, rx) = mpsc::channel();
        let gauge = QueueGauge::default();
        let handle = pipeline()
            .spawn(rx, gauge.clone(), StopBudget::default())
            .expect("thread starts");
        let batch = calls(10);
        gauge.add(batch.bytes);
        tx.send(batch).expect("pipeline listens");
        drop(tx);
        let p = handle.join().expect("no panic");
        assert_eq!(p.stats.records, 10);
        assert_eq!(gauge.queued(), 0);
    }
}
