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
    vllm::bundle::Bundle,
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

/// The step-to-record time join: the first of `s`'s thread's kept records (oldest first)
/// stamped between the step's start and its launch end (the batch a step was launched
/// with, the graph descriptor it replayed).
pub(crate) fn launched_in<'a, T>(
    map: &'a std::collections::HashMap<(u32, u32), std::collections::VecDeque<T>>,
    s: &crate::model::Step,
    ts: impl Fn(&T) -> u64,
) -> Option<&'a T> {
    map.get(&(s.pid, s.tid))?
        .iter()
        .find(|x| ts(x) >= s.start_ns && ts(x) <= s.launch_end_ns)
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
/// `bundle`: the vLLM names in use.
#[must_use]
pub fn default_set(
    time: TimeBase,
    sample_hz: u64,
    bound: Option<forward_pass::ExactBound>,
    bundle: &'static Bundle,
) -> Vec<Box<dyn Profiler>> {
    vec![
        Box::new(forward_pass::ForwardPass::new(time, bound, bundle)),
        Box::new(cuda_graphs::CudaGraphs::new(time)),
        Box::new(cuda_api::CudaApi::default()),
        Box::new(cpu_attribution::CpuAttribution::new(time, sample_hz)),
        Box::new(gc_pauses::GcPauses::new(time)),
        Box::new(kv_cache::KvCache::new(time)),
        Box::new(batch_utilization::BatchUtilization::new(time)),
        Box::new(preemptions::Preemptions::new(time)),
        Box::new(encoder_decoder::EncoderDecoder::new(time)),
        Box::new(moe::Moe::new(bundle)),
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

/// Replays recorded correlated records through the profilers and looks at the typed rows
/// and summaries they hand over; no files, no process, no root.
#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{
        model::{Completion, GcPause, StateSnapshot, Step},
        output::sink::Collect,
    };

    const TIME: TimeBase = TimeBase {
        t0_ns: 1_000_000_000,
        unix_t0_sec: 0.0,
    };
    const MS: u64 = 1_000_000;

    fn run(p: &mut dyn Profiler, records: &[Correlated]) -> Collect {
        let mut out = Collect::default();
        for f in p.families() {
            out.open(f).expect("open");
        }
        for r in records {
            p.consume(r, &mut out);
        }
        p.finish(&mut out).expect("finish");
        out
    }

    #[test]
    fn every_family_has_its_own_file_and_columns_from_its_row_type() {
        let set = default_set(TIME, 100, None, &crate::vllm::v0_33::BUNDLE);
        let mut files = BTreeSet::new();
        for p in &set {
            for f in p.families() {
                assert!(files.insert(f.file), "{} twice", f.file);
                assert!(f.file.ends_with(".csv"), "{}", f.file);
                assert!(!f.columns.is_empty(), "{}", f.file);
            }
        }
        assert_eq!(files.len(), 17, "{files:?}");
    }

    #[test]
    fn gc_pauses_are_rows_in_session_time_and_totals_in_the_summary() {
        let pause = |start_ms: u64, len_ms: u64, generation| {
            Correlated::GcPause(GcPause {
                pid: 7,
                tid: 8,
                start_ns: TIME.t0_ns + start_ms * MS,
                end_ns: TIME.t0_ns + (start_ms + len_ms) * MS,
                generation,
                collected: 10,
            })
        };
        let out = run(
            &mut gc_pauses::GcPauses::new(TIME),
            &[pause(1000, 4, 0), pause(2000, 12, 2)],
        );
        let rows = out.rows_of("gc_pauses.csv");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["timestamp_sec"], 1.0);
        assert_eq!(rows[1]["duration_ms"], 12.0);
        assert_eq!(rows[1]["generation"], 2);
        let s = out.summary("gc_summary.json").expect("summary");
        assert_eq!(s["pauses"], 2);
        assert_eq!(s["total_ms"], 16.0);
        assert_eq!(s["events_lost"], 0);
    }

    fn step(index: u64, start_ms: u64, gpu_ms: u64) -> Correlated {
        let start_ns = TIME.t0_ns + start_ms * MS;
        Correlated::Step(Step {
            index,
            pid: 7,
            tid: 7,
            start_ns,
            launch_end_ns: start_ns + MS,
            gpu_start_ns: start_ns,
            gpu_start_upper_ns: start_ns,
            completion_ns: start_ns + gpu_ms * MS,
            completion_lower_ns: start_ns + gpu_ms * MS,
            completion: Completion::Exact,
            gpu_done_before_wait: false,
            kernel_launches: None,
            graph_launches: 1,
            graph_ids: vec![0],
            h2d_bytes: 64,
            d2h_bytes: 8,
            sync_tid: 7,
            sync_api: profilemate_common::ApiId::cudaEventSynchronize,
            sync_wait_ns: gpu_ms * MS / 2,
        })
    }

    #[test]
    fn each_step_is_a_row_and_the_summary_counts_the_exact_ones() {
        let out = run(
            &mut forward_pass::ForwardPass::new(TIME, None, &crate::vllm::v0_33::BUNDLE),
            &[step(0, 100, 20), step(1, 130, 30), step(2, 170, 25)],
        );
        let rows = out.rows_of("forward_pass_timing.csv");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1]["forward_time_ms"], 30.0);
        assert_eq!(rows[1]["completion"], "exact");
        assert_eq!(rows[2]["graph_ids"], "0");
        let s = out.summary("forward_pass_summary.json").expect("summary");
        assert_eq!(
            (s["count"].as_u64(), s["exact_count"].as_u64()),
            (Some(3), Some(3))
        );
        assert_eq!(s["forward_time_ms"]["count"], 3);
    }

    #[test]
    fn scheduler_polls_become_kv_and_queue_rows() {
        let poll = |ms: u64, free| {
            Correlated::VllmState(StateSnapshot {
                pid: 7,
                ts_ns: TIME.t0_ns + ms * MS,
                scheduler: 0x10,
                running: Some(4),
                waiting: Some(2),
                requests: Some(6),
                total_blocks: Some(101),
                free_blocks: Some(free),
                current_step: Some(ms),
                max_num_seqs: Some(256),
                max_num_scheduled_tokens: Some(8192),
                prefix_cache_map: None,
                cached_blocks: None,
            })
        };
        let out = run(
            &mut kv_cache::KvCache::new(TIME),
            &[poll(100, 50), poll(200, 25)],
        );
        let kv = out.rows_of("kv_cache_usage.csv");
        assert_eq!(kv.len(), 2);
        assert_eq!(kv[0]["timestamp_sec"], 0.1);
        let queues = out.rows_of("scheduler_state.csv");
        assert_eq!(queues.len(), 2);
        assert_eq!(queues[1]["waiting"], 2);
        assert_eq!(
            out.opened,
            [
                "kv_cache_usage.csv",
                "scheduler_state.csv",
                "kv_cache_evictions.csv"
            ]
        );
    }
}
