//! One profiler per output family. Each consumes correlated records as they arrive, streams
//! its row files, and writes its summaries at the end of the session.

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
    output::{OutputError, SessionDir, TimeBase},
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

/// The two-method shape every profiler has. Row files are streamed as records arrive (a
/// profiler opens them when it is created); summaries are written by `finish`.
pub trait Profiler: Send {
    /// Takes one correlated record.
    fn consume(&mut self, record: &Correlated);
    /// Told, right before `finish`, what the session lost on the way (so a summary can say
    /// what it lacks). Most profilers need not know.
    fn losses(&mut self, _lost: &Lost) {}
    /// Completes this profiler's files; returns their names.
    fn finish(&mut self, dir: &SessionDir) -> Result<Vec<&'static str>, OutputError>;
}

/// The default set, in output order, writing into `dir`.
/// `sample_hz`: the Python sampling rate in use (0: off).
/// `bound`: the calibrated error bound of exact completions, if a calibration was used.
pub fn default_set(
    dir: &SessionDir,
    time: TimeBase,
    sample_hz: u64,
    bound: Option<forward_pass::ExactBound>,
) -> Result<Vec<Box<dyn Profiler>>, OutputError> {
    Ok(vec![
        Box::new(forward_pass::ForwardPass::new(dir, time, bound)?),
        Box::new(cuda_graphs::CudaGraphs::new(dir, time)?),
        Box::new(cuda_api::CudaApi::default()),
        Box::new(cpu_attribution::CpuAttribution::new(dir, time, sample_hz)?),
        Box::new(gc_pauses::GcPauses::new(dir, time)?),
        Box::new(kv_cache::KvCache::new(dir, time)?),
        Box::new(batch_utilization::BatchUtilization::new(dir, time)?),
        Box::new(preemptions::Preemptions::new(dir, time)?),
        Box::new(encoder_decoder::EncoderDecoder::new(dir, time)?),
        Box::new(moe::Moe::default()),
    ])
}
