//! `profilemate calibrate` tracing itself: the attach's own probes (the embedded programs,
//! the driver-level set with the per-kernel launch probes) attached to this process's
//! libcuda, and the ring buffer read by the attach's own reader thread. What calibrate
//! measures is therefore what an attach sees: the same uprobes, the same timestamps.
//!
//! Owns: attaching to ourselves, collecting the call records, detaching. Does not own: the
//! probes themselves (`probes`) or what the records mean here (`measure`).

use std::sync::mpsc;

use profilemate_common::Library;

use crate::{
    discovery,
    probes::{
        drain::{CallEvent, Record},
        reader::{Batch, QueueGauge, RingReader},
        CudaStacks, Probes,
    },
};

/// Ring buffer of the self-trace: a few hundred thousand calls fit.
const RING_BYTES: u32 = 16 << 20;
/// Queue bound behind the reader.
const QUEUE_BYTES: usize = 256 << 20;

/// Attaching to ourselves failed.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The probes could not be loaded.
    #[error(transparent)]
    Probes(#[from] crate::probes::ProbeError),
    /// No libcuda is mapped here (cannot happen after the driver was loaded).
    #[error("libcuda is not mapped in this process")]
    NoDriver,
    /// Nothing attached.
    #[error("no probe could be attached to this process's libcuda ({0})")]
    NothingAttached(String),
    /// The reader thread could not start.
    #[error("cannot start the ring-buffer reader")]
    Reader(#[source] std::io::Error),
}

/// Our own probes, attached and read.
pub struct SelfTrace {
    /// The loaded programs (the breakpoint cost uses them too).
    pub probes: Probes,
    reader: Option<RingReader>,
    rx: mpsc::Receiver<Batch>,
    /// The libcuda traced, as mapped.
    pub driver_library: String,
    /// Probes attached.
    pub attached: usize,
}

impl SelfTrace {
    /// Loads the programs and attaches the driver probes (per-kernel launches included) to
    /// this process's libcuda, as an attach would to a target that maps no libcudart.
    pub fn start() -> Result<Self, TraceError> {
        let pid = std::process::id();
        let mut probes = Probes::load(RING_BYTES, true, false)?;
        // No Python here: no stack walks, which would only add to the calls' cost.
        probes.set_cuda_stacks(CudaStacks::None)?;
        probes.add_target(pid)?;
        let libs = discovery::cuda_libraries(pid).map_err(|_| TraceError::NoDriver)?;
        let driver = libs
            .iter()
            .find(|l| l.library == Library::Driver)
            .ok_or(TraceError::NoDriver)?;
        let attached = probes.attach_library(pid, driver, false);
        if attached == 0 {
            let why = crate::verdict::empty_session_cause(&probes.report);
            return Err(TraceError::NothingAttached(why));
        }
        let ring = probes.take_ring_buffer()?;
        let (tx, rx) = mpsc::channel();
        let reader = RingReader::spawn(ring, tx, QueueGauge::default(), QUEUE_BYTES)
            .map_err(TraceError::Reader)?;
        Ok(Self {
            probes,
            reader: Some(reader),
            rx,
            driver_library: driver.path.clone(),
            attached,
        })
    }

    /// Stops reading and returns every call record of this thread `tid`, in time order,
    /// with the ring-buffer drops (records lost).
    pub fn finish(&mut self, tid: u32) -> (Vec<CallEvent>, u64) {
        if let Some(r) = self.reader.take() {
            let _ = r.stop();
        }
        let mut calls: Vec<CallEvent> = self
            .rx
            .try_iter()
            .flat_map(|b| b.records)
            .filter_map(|r| match r {
                Record::Call(c) if c.tid == tid => Some(c),
                _ => None,
            })
            .collect();
        calls.sort_by_key(|c| c.ts_ns);
        let drops = self.probes.counters().map_or(0, |k| k.ring_full_drops);
        (calls, drops)
    }

    /// Detaches everything (slow by kernel design: ~0.1 s per probe).
    pub fn detach(&mut self) {
        self.probes.detach_all();
    }
}
