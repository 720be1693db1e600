//! The ring-buffer reader: one thread that owns the kernel's ring buffer and does nothing but
//! move records out of it into a userspace queue.
//!
//! It owns the drain and the queue's admission policy; it does not correlate, symbolize or
//! read the target (the pipeline thread does, at its own pace). The kernel drops a record
//! only when the ring buffer is full, and the ring can only fill when its reader stalls, so
//! nothing slow may run on this thread: decoding is a copy, and a full queue sheds records
//! in a planned order (sampled stacks first, then everything), each one counted by kind.

use std::{
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use profilemate_common::python::PyFrame;
use serde::Serialize;

use super::drain::{decode_record, Record, StackReason};

/// How long the reader sleeps in poll(2) when the ring is empty. The BPF side wakes it only
/// past a fill watermark, so this is the ring's normal drain period.
const POLL_PERIOD: Duration = Duration::from_millis(2);
/// Records moved per queue message.
const BATCH_RECORDS: usize = 2048;

/// Records moved from the ring to the pipeline at once.
pub struct Batch {
    /// Decoded records, in ring order.
    pub records: Vec<Record>,
    /// Their estimated memory (what the queue bound counts).
    pub bytes: usize,
}

/// Counts per record kind.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct KindCounts {
    /// CUDA call entries and returns.
    pub calls: u64,
    /// Python stacks walked at CUDA calls.
    pub call_stacks: u64,
    /// Python stacks from sampling ticks.
    pub sample_stacks: u64,
    /// USDT (GC) hits.
    pub usdt: u64,
}

impl KindCounts {
    /// Counts one record.
    pub fn add(&mut self, r: &Record) {
        match r {
            Record::Call(_) => self.calls += 1,
            Record::Stack(s) if s.reason == StackReason::Sample => self.sample_stacks += 1,
            Record::Stack(_) => self.call_stacks += 1,
            Record::Usdt(_) => self.usdt += 1,
        }
    }

    /// All kinds together.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.calls + self.call_stacks + self.sample_stacks + self.usdt
    }
}

/// What the reader did, for metadata.json.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReaderStats {
    /// Records taken out of the ring buffer.
    pub records_read: u64,
    /// Records that could not be decoded (counted, not queued).
    pub decode_errors: u64,
    /// Sampled stacks not queued because the queue was over half its bound (the planned
    /// first degradation: CPU attribution gets fewer samples, nothing else is affected).
    pub samples_shed: u64,
    /// Records not queued because the queue was at its bound, by kind.
    pub queue_full_drops: KindCounts,
    /// Passes over the ring.
    pub passes: u64,
    /// The longest time between two passes (ms): how long the ring went unread at worst.
    pub pass_gap_ms_max: f64,
    /// Spans over 100 ms in which passes found the ring empty: (CLOCK_MONOTONIC ns at the
    /// span's start, ms), the first 32. A busy target with an empty ring means a record
    /// the kernel reserved was not committed, and everything behind it waited.
    pub empty_spans: Vec<(u64, f64)>,
    /// The queue's bound and its peak (bytes).
    pub queue_limit_bytes: usize,
    /// See `queue_limit_bytes`.
    pub queue_peak_bytes: usize,
}

/// The queue's shared byte count: the reader adds, the pipeline subtracts.
#[derive(Clone, Default)]
pub struct QueueGauge(Arc<AtomicUsize>);

impl QueueGauge {
    /// Bytes queued now.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// The pipeline is done with a batch.
    pub fn release(&self, bytes: usize) {
        self.0.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// The reader queued a batch; returns the new total.
    pub(crate) fn add(&self, bytes: usize) -> usize {
        self.0.fetch_add(bytes, Ordering::Relaxed) + bytes
    }
}

/// The running reader thread.
pub struct RingReader {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<ReaderStats>,
}

impl RingReader {
    /// Starts reading `ring` into `tx`, holding at most `limit_bytes` in the queue.
    pub fn spawn(
        ring: RingBuf<MapData>,
        tx: mpsc::Sender<Batch>,
        gauge: QueueGauge,
        limit_bytes: usize,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("pm-ring-reader".to_owned())
            .spawn(move || {
                let mut r = Admission {
                    tx,
                    gauge,
                    stats: ReaderStats {
                        queue_limit_bytes: limit_bytes,
                        ..ReaderStats::default()
                    },
                };
                r.run(ring, &flag);
                r.stats
            })?;
        Ok(Self { stop, handle })
    }

    /// Stops the reader after one last pass over the ring; returns its counters. The queue's
    /// sender is dropped with the thread, so the pipeline sees the end of the stream.
    #[must_use]
    pub fn stop(self) -> ReaderStats {
        self.stop.store(true, Ordering::Release);
        self.handle.join().unwrap_or_default()
    }

    /// Whether the thread has ended (it ends early only if the pipeline went away).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// Estimated heap + inline size of a queued record.
fn record_bytes(r: &Record) -> usize {
    let frames = match r {
        Record::Stack(s) => s.frames.capacity() * size_of::<PyFrame>(),
        _ => 0,
    };
    size_of::<Record>() + frames
}

struct Admission {
    tx: mpsc::Sender<Batch>,
    gauge: QueueGauge,
    stats: ReaderStats,
}

impl Admission {
    fn run(&mut self, mut ring: RingBuf<MapData>, stop: &AtomicBool) {
        let mut last = std::time::Instant::now();
        let mut empty_since: Option<(u64, std::time::Instant)> = None;
        loop {
            // Read the flag before the pass: the last pass starts after the stop was asked.
            let stopping = stop.load(Ordering::Acquire);
            let gap = last.elapsed().as_secs_f64() * 1e3;
            self.stats.pass_gap_ms_max = self.stats.pass_gap_ms_max.max(gap);
            self.stats.passes += 1;
            let moved = match self.pass(&mut ring) {
                Ok(n) => n,
                Err(()) => return,
            };
            last = std::time::Instant::now();
            if moved > 0 {
                if let Some((at, t)) = empty_since.take() {
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    if ms > 100.0 && self.stats.empty_spans.len() < 32 {
                        self.stats.empty_spans.push((at, ms));
                    }
                }
            } else if empty_since.is_none() {
                empty_since = Some((crate::model::monotonic_ns(), last));
            }
            if stopping {
                return;
            }
            if moved == 0 {
                wait_readable(&ring, POLL_PERIOD);
            }
        }
    }

    /// Empties the ring once; Err when the pipeline has gone away.
    fn pass(&mut self, ring: &mut RingBuf<MapData>) -> Result<usize, ()> {
        let mut moved = 0;
        loop {
            let mut batch = Batch {
                records: Vec::with_capacity(BATCH_RECORDS),
                bytes: 0,
            };
            while batch.records.len() < BATCH_RECORDS {
                let Some(item) = ring.next() else { break };
                self.stats.records_read += 1;
                match decode_record(&item) {
                    Ok(rec) => self.admit(rec, &mut batch),
                    Err(_) => self.stats.decode_errors += 1,
                }
            }
            let full = batch.records.len() == BATCH_RECORDS;
            moved += batch.records.len();
            if !batch.records.is_empty() {
                let peak = self.gauge.add(batch.bytes);
                self.stats.queue_peak_bytes = self.stats.queue_peak_bytes.max(peak);
                if let Err(mpsc::SendError(b)) = self.tx.send(batch) {
                    self.gauge.release(b.bytes);
                    return Err(());
                }
            }
            if !full {
                return Ok(moved);
            }
        }
    }

    /// Queues `rec` unless the queue is over its bound: sampled stacks go first (over half
    /// the bound), then everything (at the bound).
    fn admit(&mut self, rec: Record, batch: &mut Batch) {
        let queued = self.gauge.queued() + batch.bytes;
        let limit = self.stats.queue_limit_bytes;
        let sample = matches!(&rec, Record::Stack(s) if s.reason == StackReason::Sample);
        if queued >= limit {
            self.stats.queue_full_drops.add(&rec);
            return;
        }
        if sample && queued >= limit / 2 {
            self.stats.samples_shed += 1;
            return;
        }
        batch.bytes += record_bytes(&rec);
        batch.records.push(rec);
    }
}

/// Sleeps until the ring signals data or `timeout` passes.
fn wait_readable(ring: &RingBuf<MapData>, timeout: Duration) {
    let mut fds = [libc::pollfd {
        fd: ring.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call; the fd stays open (the ring is
    // borrowed). An error (EINTR) just ends the wait early.
    unsafe {
        libc::poll(fds.as_mut_ptr(), 1, ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::drain::{CallEvent, CallPhase, StackEvent};
    use profilemate_common::ApiId;

    fn call() -> Record {
        Record::Call(CallEvent {
            ts_ns: 1,
            pid: 1,
            tid: 1,
            api: ApiId::cudaGraphLaunch,
            phase: CallPhase::Entry { args: [0; 6] },
        })
    }

    fn stack(reason: StackReason) -> Record {
        Record::Stack(StackEvent {
            ts_ns: 1,
            pid: 1,
            tid: 1,
            reason,
            flags: 0,
            walk_ns: 0,
            frames: vec![PyFrame::default(); 8],
        })
    }

    fn admission(limit: usize) -> (Admission, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel();
        let stats = ReaderStats {
            queue_limit_bytes: limit,
            ..ReaderStats::default()
        };
        let a = Admission {
            tx,
            gauge: QueueGauge::default(),
            stats,
        };
        (a, rx)
    }

    #[test]
    fn below_half_the_bound_everything_is_queued() {
        let (mut a, _rx) = admission(1 << 20);
        let mut b = Batch {
            records: Vec::new(),
            bytes: 0,
        };
        for r in [
            call(),
            stack(StackReason::Sample),
            stack(StackReason::CudaCall(ApiId::cudaGraphLaunch)),
        ] {
            a.admit(r, &mut b);
        }
        assert_eq!(b.records.len(), 3);
        assert_eq!(a.stats.samples_shed, 0);
        assert_eq!(a.stats.queue_full_drops.total(), 0);
        assert!(b.bytes > 3 * size_of::<Record>());
    }

    #[test]
    fn past_half_samples_are_shed_and_at_the_bound_everything_is_dropped_by_kind() {
        let limit = 10_000;
        let (mut a, _rx) = admission(limit);
        a.gauge.add(limit / 2);
        let mut b = Batch {
            records: Vec::new(),
            bytes: 0,
        };
        a.admit(stack(StackReason::Sample), &mut b);
        a.admit(call(), &mut b);
        assert_eq!(a.stats.samples_shed, 1);
        assert_eq!(b.records.len(), 1, "the call is still queued");
        a.gauge.add(limit);
        a.admit(call(), &mut b);
        a.admit(stack(StackReason::CudaCall(ApiId::cudaGraphLaunch)), &mut b);
        a.admit(stack(StackReason::Sample), &mut b);
        let d = a.stats.queue_full_drops;
        assert_eq!((d.calls, d.call_stacks, d.sample_stacks), (1, 1, 1));
        assert_eq!(
            a.stats.samples_shed, 1,
            "at the bound a sample counts as dropped"
        );
        assert_eq!(b.records.len(), 1);
    }

    #[test]
    fn the_gauge_counts_what_the_pipeline_has_not_released() {
        let g = QueueGauge::default();
        assert_eq!(g.add(100), 100);
        assert_eq!(g.add(50), 150);
        g.release(100);
        assert_eq!(g.queued(), 50);
    }
}
