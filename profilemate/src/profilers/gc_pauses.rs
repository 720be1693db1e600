//! gc_pauses.csv (one row per collection, streamed) and gc_summary.json, from CPython's
//! `gc__start`/`gc__done` USDT probes: exact pause times, no sampling.
//!
//! Owns computing those rows and summaries from the correlated records; not writing them
//! (the sinks: `output::csv` names the files and writes them) nor the records themselves.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Profiler;
use crate::output::csv::{Family, FamilyRow};
use crate::{
    correlate::{Correlated, GcPause},
    model::{GcLost, Lost},
    output::{
        ms,
        sink::Sink,
        summary::{Latency, LatencySummary},
        OutputError, TimeBase,
    },
};

crate::csv_family! {
    pub struct Row in crate::output::csv::files::GC_PAUSES {
    timestamp_sec: f64,
    pid: u32,
    tid: u32,
    generation: i64,
    duration_ms: f64,
    collected: i64,
    }
}

#[derive(Default)]
struct Totals {
    pauses: u64,
    total_ns: u64,
    collected: i64,
    duration: Latency,
}

#[derive(Serialize)]
struct TotalsSummary {
    pauses: u64,
    total_ms: f64,
    collected: i64,
    duration_ms: Option<LatencySummary>,
}

impl Totals {
    fn add(&mut self, g: &GcPause) {
        let d = g.end_ns.saturating_sub(g.start_ns);
        self.pauses += 1;
        self.total_ns += d;
        self.collected += g.collected;
        self.duration.record(d);
    }

    fn summary(&self) -> TotalsSummary {
        TotalsSummary {
            pauses: self.pauses,
            total_ms: ms(self.total_ns),
            collected: self.collected,
            duration_ms: self.duration.summary(),
        }
    }
}

#[derive(Serialize)]
struct Summary {
    #[serde(flatten)]
    all: TotalsSummary,
    by_generation: BTreeMap<i64, TotalsSummary>,
    by_pid: BTreeMap<u32, TotalsSummary>,
    /// GC events (a start or a done) lost before they reached this file: the pauses above
    /// lack those collections when it is not 0.
    events_lost: u64,
    events_lost_by_cause: GcLost,
    source: &'static str,
}

/// The GC pause profiler.
pub struct GcPauses {
    time: TimeBase,
    all: Totals,
    by_generation: BTreeMap<i64, Totals>,
    by_pid: BTreeMap<u32, Totals>,
    lost: GcLost,
}

impl GcPauses {
    /// A profiler stamping rows with `time`.
    pub fn new(time: TimeBase) -> Self {
        Self {
            time,
            all: Totals::default(),
            by_generation: BTreeMap::new(),
            by_pid: BTreeMap::new(),
            lost: GcLost::default(),
        }
    }
}

impl Profiler for GcPauses {
    fn families(&self) -> &'static [&'static Family] {
        &[&Row::FAMILY]
    }

    fn consume(&mut self, record: &Correlated, out: &mut dyn Sink) {
        let Correlated::GcPause(g) = record else {
            return;
        };
        out.row(&Row {
            timestamp_sec: self.time.sec(g.start_ns),
            pid: g.pid,
            tid: g.tid,
            generation: g.generation,
            duration_ms: ms(g.end_ns.saturating_sub(g.start_ns)),
            collected: g.collected,
        });
        self.all.add(g);
        self.by_generation.entry(g.generation).or_default().add(g);
        self.by_pid.entry(g.pid).or_default().add(g);
    }

    fn losses(&mut self, lost: &Lost) {
        self.lost = lost.gc;
    }

    fn finish(&mut self, out: &mut dyn Sink) -> Result<(), OutputError> {
        out.summary(
            crate::output::csv::files::GC_SUMMARY,
            &Summary {
                all: self.all.summary(),
                by_generation: self
                    .by_generation
                    .iter()
                    .map(|(k, v)| (*k, v.summary()))
                    .collect(),
                by_pid: self.by_pid.iter().map(|(k, v)| (*k, v.summary())).collect(),
                events_lost: self.lost.total(),
                events_lost_by_cause: self.lost,
                source: "CPython USDT probes python:gc__start / python:gc__done (exact); processes whose interpreter has no such probes are listed in metadata.json",
            },
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        correlate::CorrelatorStats,
        probes::reader::ReaderStats,
        session::pipeline::PipelineStats,
        session::{
            losses::gc_lost,
            metadata::{LossReport, MainLoopStats},
        },
    };

    #[test]
    fn gc_summary_says_how_many_gc_events_were_lost() {
        let base = std::env::temp_dir().join(format!("pm-gc-lost-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = crate::output::SessionDir::create(&base, "x").expect("session dir");
        let time = TimeBase {
            t0_ns: 0,
            unix_t0_sec: 0.0,
        };
        let mut p = GcPauses::new(time);
        let mut losses = LossReport {
            kernel: crate::probes::KernelCounters::default(),
            records_read: 0,
            decode_errors: 0,
            reader: ReaderStats::default(),
            pipeline: PipelineStats::default(),
            main_loop: MainLoopStats::default(),
            metrics_scrape_ms_max: 0.0,
            correlator: CorrelatorStats::default(),
        };
        losses.kernel.usdt_ring_full_drops = 3;
        losses.reader.queue_full_drops.usdt = 2;
        losses.pipeline.unprocessed_at_stop.usdt = 1;
        p.losses(&Lost {
            gc: gc_lost(&losses),
        });
        let mut files = crate::output::csv::Files::new(dir.try_clone().expect("dir"));
        p.finish(&mut files).expect("finish");
        let text = std::fs::read_to_string(dir.path().join("gc_summary.json")).expect("read");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["events_lost"], 6, "{v}");
        assert_eq!(v["events_lost_by_cause"]["ring_buffer_full"], 3, "{v}");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
