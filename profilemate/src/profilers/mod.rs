//! One profiler per output family. Each consumes correlated records as they arrive, computes
//! typed rows (handed to the session's sinks as they complete) and, at the end, its typed
//! summaries.
//!
//! Owns what each output says; not how or where it is written (`output::sink`, and one
//! sink per format: `output::csv` for the session directory).

pub mod batch_utilization;
pub mod cpu_attribution;
pub mod cuda_api;
pub mod cuda_graphs;
pub mod encoder_decoder;
pub mod forward_pass;
pub mod gc_pauses;
pub mod kv_cache;
pub mod live;
pub mod moe;
pub mod preemptions;

use crate::{
    correlate::Correlated,
    model::Lost,
    output::{
        csv::Family,
        sink::{Row, Sink},
        OutputError, TimeBase,
    },
};

/// Pushes `item` onto `key`'s queue, keeping the newest `max` (records kept per thread
/// until the step they belong to completes).
pub(crate) fn keep_recent<K: std::hash::Hash + Eq, T>(
    map: &mut std::collections::HashMap<K, std::collections::VecDeque<T>>,
    key: K,
    item: T,
    max: usize,
) {
    let q = map.entry(key).or_default();
    if q.len() >= max {
        q.pop_front();
    }
    q.push_back(item);
}

/// Rows a profiler completes inside its helpers, handed to the sink once the record that
/// completed them is processed.
#[derive(Default)]
pub(crate) struct Emitted(Vec<Box<dyn Row + Send>>);

impl Emitted {
    /// Keeps `row` for the sink.
    pub(crate) fn push(&mut self, row: impl Row + Send) {
        self.0.push(Box::new(row));
    }

    /// Hands every kept row to `out`, in order.
    pub(crate) fn drain_to(&mut self, out: &mut dyn Sink) {
        for row in self.0.drain(..) {
            out.row(row.as_ref());
        }
    }
}

/// The two-method shape every profiler has: rows go to `out` as records arrive, summaries
/// at `finish`. A profiler computes; the sinks write.
pub trait Profiler: Send {
    /// The row families it produces (every sink opens them before the first record).
    fn families(&self) -> &'static [&'static Family] {
        &[]
    }
    /// Takes one correlated record; hands the rows it completes to `out`.
    fn consume(&mut self, record: &Correlated, out: &mut dyn Sink);
    /// Told, right before `finish`, what the session lost on the way (so a summary can say
    /// what it lacks). Most profilers need not know.
    fn losses(&mut self, _lost: &Lost) {}
    /// Hands its last rows and its summaries to `out`.
    ///
    /// # Errors
    ///
    /// A sink could not write them.
    fn finish(&mut self, out: &mut dyn Sink) -> Result<(), OutputError>;
}

/// The default set, in output order.
/// `sample_hz`: the Python sampling rate in use (0: off).
/// `bound`: the calibrated error bound of exact completions, if a calibration was used.
#[must_use]
pub fn default_set(
    time: TimeBase,
    sample_hz: u64,
    bound: Option<forward_pass::ExactBound>,
) -> Vec<Box<dyn Profiler>> {
    vec![
        Box::new(forward_pass::ForwardPass::new(time, bound)),
        Box::new(cuda_graphs::CudaGraphs::new(time)),
        Box::new(cuda_api::CudaApi::default()),
        Box::new(cpu_attribution::CpuAttribution::new(time, sample_hz)),
        Box::new(gc_pauses::GcPauses::new(time)),
        Box::new(kv_cache::KvCache::new(time)),
        Box::new(batch_utilization::BatchUtilization::new(time)),
        Box::new(preemptions::Preemptions::new(time)),
        Box::new(encoder_decoder::EncoderDecoder::new(time)),
        Box::new(moe::Moe::default()),
    ]
}

/// Opens every family of `profilers` in `out`, in order.
///
/// # Errors
///
/// A sink could not open one (a file could not be created).
pub fn open_families(
    profilers: &[Box<dyn Profiler>],
    out: &mut dyn Sink,
) -> Result<(), OutputError> {
    for p in profilers {
        for family in p.families() {
            out.open(family)?;
        }
    }
    Ok(())
}
