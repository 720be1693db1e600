//! kv_cache_usage.csv and scheduler_state.csv (one row per poll of the scheduler, streamed)
//! and kv_cache_summary.txt.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Profiler;
use crate::{
    correlate::Correlated,
    output::{CsvSink, OutputError, SessionDir, TimeBase},
    vllm::state::StateSnapshot,
};

const KV_HEADER: &[&str] = &[
    "timestamp_sec",
    "pid",
    "usage_pct",
    "num_blocks",
    "total_blocks",
    "free_blocks",
];

const QUEUE_HEADER: &[&str] = &["timestamp_sec", "pid", "running", "waiting", "requests"];

#[derive(Serialize)]
struct KvRow {
    timestamp_sec: f64,
    pid: u32,
    usage_pct: f64,
    num_blocks: u64,
    total_blocks: u64,
    free_blocks: u64,
}

#[derive(Serialize)]
struct QueueRow {
    timestamp_sec: f64,
    pid: u32,
    running: Option<u64>,
    waiting: Option<u64>,
    requests: Option<u64>,
}

#[derive(Default)]
struct Usage {
    samples: Vec<f64>,
    total_blocks: u64,
}

/// The KV cache and scheduler-queue profiler.
pub struct KvCache {
    time: TimeBase,
    kv: CsvSink,
    queues: CsvSink,
    usage: BTreeMap<u32, Usage>,
}

impl KvCache {
    /// Opens the row files in `dir`.
    pub fn new(dir: &SessionDir, time: TimeBase) -> Result<Self, OutputError> {
        Ok(Self {
            time,
            kv: dir.csv_sink("kv_cache_usage.csv", KV_HEADER)?,
            queues: dir.csv_sink("scheduler_state.csv", QUEUE_HEADER)?,
            usage: BTreeMap::new(),
        })
    }

    fn add(&mut self, s: &StateSnapshot) {
        let timestamp_sec = self.time.sec(s.ts_ns);
        self.queues.row(&QueueRow {
            timestamp_sec,
            pid: s.pid,
            running: s.running,
            waiting: s.waiting,
            requests: s.requests,
        });
        let (Some(usage_pct), Some(total), Some(free)) =
            (s.kv_usage_pct(), s.total_blocks, s.free_blocks)
        else {
            return;
        };
        self.kv.row(&KvRow {
            timestamp_sec,
            pid: s.pid,
            usage_pct: (usage_pct * 1000.0).round() / 1000.0,
            num_blocks: (total - 1).saturating_sub(free),
            total_blocks: total,
            free_blocks: free,
        });
        let u = self.usage.entry(s.pid).or_default();
        u.samples.push(usage_pct);
        u.total_blocks = total;
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Profiler for KvCache {
    fn consume(&mut self, record: &Correlated) {
        if let Correlated::VllmState(s) = record {
            self.add(s);
        }
    }

    fn finish(&mut self, dir: &SessionDir) -> Result<Vec<&'static str>, OutputError> {
        let kv = self.kv.finish()?;
        let queues = self.queues.finish()?;
        let mut text = String::from("KV cache usage (vLLM's definition: 1 - free / (total - 1))\n");
        if self.usage.is_empty() {
            text.push_str("no scheduler state was read (see metadata.json python.vllm_state)\n");
        }
        for (pid, u) in &self.usage {
            let mut v = u.samples.clone();
            v.sort_by(f64::total_cmp);
            let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
            let above = v.iter().filter(|x| **x >= 90.0).count();
            text.push_str(&format!(
                "pid {pid}: {} polls, {} blocks; usage mean {mean:.1}%, P50 {:.1}%, P95 {:.1}%, max {:.1}%; at or above 90%: {:.1}% of polls\n",
                v.len(),
                u.total_blocks,
                percentile(&v, 0.5),
                percentile(&v, 0.95),
                v.last().copied().unwrap_or(0.0),
                100.0 * above as f64 / v.len().max(1) as f64,
            ));
        }
        dir.write_text("kv_cache_summary.txt", &text)?;
        Ok(vec![kv, queues, "kv_cache_summary.txt"])
    }
}
