//! kv_cache_usage.csv and scheduler_state.csv (one row per poll of the scheduler and per
//! step read in the scheduler's process, streamed), kv_cache_evictions.csv (one row per
//! evicted prefix-cached block whose caching was seen, from `vllm::blocks`),
//! kv_cache_summary.txt and kv_cache_evictions_summary.json.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Emitted, Profiler};
use crate::{
    correlate::Correlated,
    output::{
        csv::{Family, FamilyRow},
        sink::Sink,
        OutputError, TimeBase,
    },
    vllm::{blocks::BlockPoll, state::StateSnapshot},
};

crate::csv_family! {
// The seeds' columns first, in their order (`awk -F',' 'NR>1 {sum+=$2}'` averages
// usage_pct); ours follow.
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
// The seeds' columns first (`awk -F',' 'NR>1 && $2<10'` counts blocks evicted quickly by
// lifetime_sec); ours follow.
    pub struct EvictionRow in crate::output::csv::files::KV_CACHE_EVICTIONS {
    timestamp_sec: f64,
    lifetime_sec: f64,
    idle_sec: f64,
    pid: u32,
    block_id: Option<i64>,
    cached_sec: f64,
    last_used_sec: f64,
    resolution_sec: f64,
    seen_as: &'static str,
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
}

/// Evictions of one process, for the summaries.
struct Evictions {
    polls: u64,
    torn_polls: u64,
    rows: u64,
    cached_before_first_poll: u64,
    recached: u64,
    unseen: u64,
    unseen_is_lower_bound: bool,
    resets: u64,
    quick: u64,
    cached_max: u64,
    refs_deferred_max: u64,
    error: Option<String>,
    lifetime_us: hdrhistogram::Histogram<u64>,
    idle_us: hdrhistogram::Histogram<u64>,
    resolution_us: hdrhistogram::Histogram<u64>,
}

impl Evictions {
    fn new() -> Self {
        // Microseconds up to a day, 3 significant digits.
        let h = || {
            hdrhistogram::Histogram::new_with_bounds(1, 86_400_000_000, 3)
                .expect("bounds and 3 significant digits are valid")
        };
        Self {
            polls: 0,
            torn_polls: 0,
            rows: 0,
            cached_before_first_poll: 0,
            recached: 0,
            unseen: 0,
            unseen_is_lower_bound: false,
            resets: 0,
            quick: 0,
            cached_max: 0,
            refs_deferred_max: 0,
            error: None,
            lifetime_us: h(),
            idle_us: h(),
            resolution_us: h(),
        }
    }
}

/// Lifetimes below this count as "evicted quickly" (the seeds' `$2<10`).
const QUICK_SEC: f64 = 10.0;

#[derive(Serialize)]
struct Seconds {
    p50: f64,
    p95: f64,
    max: f64,
}

fn seconds(h: &hdrhistogram::Histogram<u64>) -> Option<Seconds> {
    (!h.is_empty()).then(|| Seconds {
        p50: h.value_at_quantile(0.5) as f64 / 1e6,
        p95: h.value_at_quantile(0.95) as f64 / 1e6,
        max: h.max() as f64 / 1e6,
    })
}

/// kv_cache_evictions_summary.json, per process.
#[derive(Serialize)]
struct EvictionSummary {
    pid: u32,
    polls: u64,
    torn_polls: u64,
    evictions_seen: u64,
    rows: u64,
    cached_before_first_poll: u64,
    recached: u64,
    unseen_evictions: u64,
    unseen_is_lower_bound: bool,
    prefix_cache_resets: u64,
    evicted_quickly: u64,
    lifetime_sec: Option<Seconds>,
    idle_sec: Option<Seconds>,
    resolution_sec: Option<Seconds>,
    cached_blocks_max: u64,
    refs_deferred_max: u64,
    error: Option<String>,
}

/// The KV cache and scheduler-queue profiler.
pub struct KvCache {
    emitted: Emitted,
    time: TimeBase,
    usage: BTreeMap<u32, Usage>,
    evicted: BTreeMap<u32, Evictions>,
}

impl KvCache {
    /// Opens the row files in `dir`.
    pub fn new(time: TimeBase) -> Self {
        Self {
            emitted: Emitted::default(),
            time,
            usage: BTreeMap::new(),
            evicted: BTreeMap::new(),
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

    /// One poll of the cached blocks: a row per eviction whose caching was seen.
    fn blocks(&mut self, b: &BlockPoll) {
        let e = self.evicted.entry(b.pid).or_insert_with(Evictions::new);
        e.polls += 1;
        e.torn_polls += u64::from(b.torn);
        e.resets += u64::from(b.reset);
        e.unseen += b.unseen;
        e.unseen_is_lower_bound |= b.unseen_is_lower_bound;
        e.cached_max = e.cached_max.max(b.cached);
        e.refs_deferred_max = e.refs_deferred_max.max(b.refs_deferred);
        e.error.clone_from(&b.error);
        let sec = |ns: u64| ns as f64 / 1e9;
        let us = |ns: u64| ns / 1000;
        for ev in &b.evictions {
            e.recached += u64::from(ev.rehashed);
            let Some(born) = ev.born_ns else {
                e.cached_before_first_poll += 1;
                continue;
            };
            let used = ev.last_used_ns.unwrap_or(born);
            let lifetime = ev.evicted_ns.saturating_sub(born);
            let idle = ev.evicted_ns.saturating_sub(used);
            // The eviction lies in (evicted_after, evicted], the caching in (born_after,
            // born], the end of the last use in (born_after or last_used, until]: how far
            // each difference of poll stamps can be from the true one.
            let de = ev.evicted_ns.saturating_sub(ev.evicted_after_ns);
            let db = born.saturating_sub(ev.born_after_ns);
            let use_lo = ev.last_used_ns.unwrap_or(ev.born_after_ns);
            let du = used
                .saturating_sub(use_lo)
                .max(ev.last_used_until_ns.saturating_sub(used));
            let resolution = de.max(db).max(de + du);
            e.rows += 1;
            e.quick += u64::from(sec(lifetime) < QUICK_SEC);
            e.lifetime_us.saturating_record(us(lifetime).max(1));
            e.idle_us.saturating_record(us(idle).max(1));
            e.resolution_us.saturating_record(us(resolution).max(1));
            let r = |x: f64| (x * 1e6).round() / 1e6;
            self.emitted.push(EvictionRow {
                timestamp_sec: r(self.time.sec(ev.evicted_ns)),
                lifetime_sec: r(sec(lifetime)),
                idle_sec: r(sec(idle)),
                pid: b.pid,
                block_id: ev.block_id,
                cached_sec: r(self.time.sec(born)),
                last_used_sec: r(self.time.sec(used)),
                resolution_sec: r(sec(resolution)),
                seen_as: if ev.rehashed { "recached" } else { "gone" },
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
            Correlated::Blocks(b) => self.blocks(b),
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
        }
        let mut summaries = Vec::new();
        for (pid, e) in &self.evicted {
            let seen = e.rows + e.cached_before_first_poll;
            let q = |h: &hdrhistogram::Histogram<u64>, x: f64| h.value_at_quantile(x) as f64 / 1e6;
            text.push_str(&format!(
                "pid {pid}: prefix cache evictions seen {seen} ({} with a row; {} of blocks cached before the first poll), at least {} more cached and evicted between two polls (unseen), {} prefix cache resets\n",
                e.rows, e.cached_before_first_poll, e.unseen, e.resets
            ));
            if e.rows > 0 {
                text.push_str(&format!(
                    "pid {pid}: eviction lifetime P50 {:.3}s, P95 {:.3}s; idle P50 {:.3}s, P95 {:.3}s; evicted within {QUICK_SEC}s: {}; resolution P50 {:.3}s\n",
                    q(&e.lifetime_us, 0.5),
                    q(&e.lifetime_us, 0.95),
                    q(&e.idle_us, 0.5),
                    q(&e.idle_us, 0.95),
                    e.quick,
                    q(&e.resolution_us, 0.5),
                ));
            }
            if let Some(err) = &e.error {
                text.push_str(&format!("pid {pid}: cached blocks not followed: {err}\n"));
            }
            summaries.push(EvictionSummary {
                pid: *pid,
                polls: e.polls,
                torn_polls: e.torn_polls,
                evictions_seen: seen,
                rows: e.rows,
                cached_before_first_poll: e.cached_before_first_poll,
                recached: e.recached,
                unseen_evictions: e.unseen,
                unseen_is_lower_bound: e.unseen_is_lower_bound,
                prefix_cache_resets: e.resets,
                evicted_quickly: e.quick,
                lifetime_sec: seconds(&e.lifetime_us),
                idle_sec: seconds(&e.idle_us),
                resolution_sec: seconds(&e.resolution_us),
                cached_blocks_max: e.cached_max,
                refs_deferred_max: e.refs_deferred_max,
                error: e.error.clone(),
            });
        }
        if self.evicted.is_empty() {
            text.push_str("evictions: the prefix cache map was not read (prefix caching off, or another vLLM version)\n");
        }
        text.push_str("evictions: one row per evicted block whose caching was seen; times are poll stamps, each within its row's resolution_sec of the truth; a block cached and evicted between two polls has no row (counted above as unseen)\n");
        out.summary(
            crate::output::csv::files::KV_CACHE_EVICTIONS_SUMMARY,
            &serde_json::json!({ "processes": summaries }),
        )?;
        out.text(crate::output::csv::files::KV_CACHE_SUMMARY, &text)?;
        self.emitted.drain_to(out);
        Ok(())
    }
}
