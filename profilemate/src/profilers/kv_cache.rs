//! kv_cache_usage.csv and scheduler_state.csv (one row per poll of the scheduler and per
//! step read in the scheduler's process, streamed), kv_cache_evictions.csv and
//! kv_cache_summary.txt.
//!
//! Owns computing those rows and summaries from the correlated records; not writing them
//! (the sinks: `output::csv` names the files and writes them) nor the records themselves.

use std::collections::BTreeMap;

use super::{Emitted, Profiler};
use crate::output::csv::{Family, FamilyRow};
use crate::{
    correlate::Correlated,
    output::{sink::Sink, OutputError, TimeBase},
    vllm::state::StateSnapshot,
};

// The seeds' columns first, in their order (`awk -F',' 'NR>1 {sum+=$2}'` averages
// usage_pct); ours follow.
crate::csv_family! {
    pub struct KvRow in crate::output::csv::files::KV_CACHE_USAGE {
    timestamp_sec: f64,
    usage_pct: f64,
    num_blocks: u64,
    total_blocks: u64,
    pid: u32,
    free_blocks: u64,
    source: &'static str,
    }
}

crate::csv_family! {
    pub struct EvictionRow in crate::output::csv::files::KV_CACHE_EVICTIONS {
    timestamp_sec: f64,
    pid: u32,
    interval_sec: f64,
    cached_blocks: u64,
    evicted_blocks_min: u64,
    prefix_cache_reset: bool,
    }
}

crate::csv_family! {
    pub struct QueueRow in crate::output::csv::files::SCHEDULER_STATE {
    timestamp_sec: f64,
    pid: u32,
    running: Option<u64>,
    waiting: Option<u64>,
    requests: Option<u64>,
    source: &'static str,
    }
}

#[derive(Default)]
struct Usage {
    samples: Vec<f64>,
    step_samples: u64,
    total_blocks: u64,
    /// (time, cached blocks, prefix cache map) at the previous poll.
    cached: Option<(u64, u64, Option<u64>)>,
    evicted_min: u64,
    resets: u64,
}

/// The KV cache and scheduler-queue profiler.
pub struct KvCache {
    emitted: Emitted,
    time: TimeBase,
    usage: BTreeMap<u32, Usage>,
}

impl KvCache {
    /// A profiler stamping rows with `time`.
    pub fn new(time: TimeBase) -> Self {
        Self {
            emitted: Emitted::default(),
            time,
            usage: BTreeMap::new(),
        }
    }

    /// One read of the scheduler: `source` is `poll` (at --state-hz) or `step` (right after
    /// a step's output was read).
    fn add(&mut self, s: &StateSnapshot, source: &'static str) {
        let timestamp_sec = self.time.sec(s.ts_ns);
        self.emitted.push(QueueRow {
            timestamp_sec,
            pid: s.pid,
            running: s.running,
            waiting: s.waiting,
            requests: s.requests,
            source,
        });
        if source == "poll" {
            self.eviction(s);
        }
        let (Some(usage_pct), Some(total), Some(free)) =
            (s.kv_usage_pct(), s.total_blocks, s.free_blocks)
        else {
            return;
        };
        self.emitted.push(KvRow {
            timestamp_sec,
            pid: s.pid,
            usage_pct: (usage_pct * 1000.0).round() / 1000.0,
            num_blocks: (total - 1).saturating_sub(free),
            total_blocks: total,
            free_blocks: free,
            source,
        });
        let u = self.usage.entry(s.pid).or_default();
        u.samples.push(usage_pct);
        u.step_samples += u64::from(source == "step");
        u.total_blocks = total;
    }

    /// Cached blocks only leave the prefix cache by eviction (a block reused for new data)
    /// or by a reset (a new map): a drop between two polls is a lower bound of the evictions
    /// in between (blocks cached and evicted within one interval are not seen).
    fn eviction(&mut self, s: &StateSnapshot) {
        let Some(cached) = s.cached_blocks else {
            return;
        };
        let u = self.usage.entry(s.pid).or_default();
        let previous = u.cached.replace((s.ts_ns, cached, s.prefix_cache_map));
        let Some((t, before, map)) = previous else {
            return;
        };
        let reset = map != s.prefix_cache_map;
        let evicted = if reset {
            0
        } else {
            before.saturating_sub(cached)
        };
        u.evicted_min += evicted;
        u.resets += u64::from(reset);
        if evicted > 0 || reset {
            self.emitted.push(EvictionRow {
                timestamp_sec: self.time.sec(s.ts_ns),
                pid: s.pid,
                interval_sec: s.ts_ns.saturating_sub(t) as f64 / 1e9,
                cached_blocks: cached,
                evicted_blocks_min: evicted,
                prefix_cache_reset: reset,
            });
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl KvCache {
    /// One record: its rows go to `emitted`.
    fn take(&mut self, record: &Correlated) {
        match record {
            Correlated::VllmState(s) => self.add(s, "poll"),
            Correlated::Batch(b) => {
                if let Some(s) = &b.scheduler {
                    self.add(s, "step");
                }
            }
            _ => {}
        }
    }
}

impl Profiler for KvCache {
    fn families(&self) -> &'static [&'static Family] {
        &[&KvRow::FAMILY, &QueueRow::FAMILY, &EvictionRow::FAMILY]
    }

    fn consume(&mut self, record: &Correlated, out: &mut dyn Sink) {
        self.take(record);
        self.emitted.drain_to(out);
    }

    fn finish(&mut self, out: &mut dyn Sink) -> Result<(), OutputError> {
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
                "pid {pid}: {} reads ({} at step ends), {} blocks; usage mean {mean:.1}%, P50 {:.1}%, P95 {:.1}%, max {:.1}%; at or above 90%: {:.1}% of reads\n",
                v.len(),
                u.step_samples,
                u.total_blocks,
                percentile(&v, 0.5),
                percentile(&v, 0.95),
                v.last().copied().unwrap_or(0.0),
                100.0 * above as f64 / v.len().max(1) as f64,
            ));
            if u.cached.is_some() {
                text.push_str(&format!(
                    "pid {pid}: prefix cache evictions at least {} blocks (drops of the cached-block count between polls), {} prefix cache resets\n",
                    u.evicted_min, u.resets
                ));
            }
        }
        if self.usage.values().all(|u| u.cached.is_none()) {
            text.push_str("evictions: the prefix cache map was not read (prefix caching off, or another vLLM version)\n");
        }
        text.push_str("evictions are a lower bound: a block cached and evicted between two polls is not seen; per-block lifetimes need vLLM's own KV cache metrics collector\n");
        out.text(crate::output::csv::files::KV_CACHE_SUMMARY, &text)?;
        self.emitted.drain_to(out);
        Ok(())
    }
}
