//! cuda_api_summary.json: calls, bytes and P50/P95/P99 duration per API per process.
//!
//! Owns computing those rows and summaries from the correlated records; not writing them
//! (the sinks: `output::csv` names the files and writes them) nor the records themselves.

use std::collections::BTreeMap;

use profilemate_common::ApiId;
use serde::Serialize;

use super::Profiler;
use crate::output::sink::Sink;
use crate::{
    correlate::Correlated,
    discovery::library_name,
    output::{
        summary::{Latency, LatencySummary},
        OutputError,
    },
};

#[derive(Default)]
struct ApiStats {
    calls: u64,
    nested_calls: u64,
    bytes: u64,
    duration: Latency,
}

/// Per (pid, api) statistics.
#[derive(Default)]
pub struct CudaApi {
    stats: BTreeMap<(u32, ApiId), ApiStats>,
}

#[derive(Serialize)]
struct ApiRow {
    library: &'static str,
    /// Calls made by the application at this level.
    calls: u64,
    /// Calls made by a probed runtime call (the driver side of one operation).
    calls_via_runtime: u64,
    bytes: Option<u64>,
    duration: Option<LatencySummary>,
}

impl Profiler for CudaApi {
    fn consume(&mut self, record: &Correlated, _out: &mut dyn Sink) {
        let Correlated::Call(c) = record else { return };
        let s = self.stats.entry((c.pid, c.api)).or_default();
        if c.nested {
            s.nested_calls += 1;
        } else {
            s.calls += 1;
        }
        s.bytes += c.bytes.unwrap_or(0);
        if let Some(d) = c.duration_ns {
            s.duration.record(d);
        }
    }

    fn finish(&mut self, out: &mut dyn Sink) -> Result<(), OutputError> {
        let mut by_pid: BTreeMap<String, BTreeMap<&'static str, ApiRow>> = BTreeMap::new();
        for ((pid, api), s) in &self.stats {
            let spec = api.spec();
            by_pid.entry(pid.to_string()).or_default().insert(
                spec.symbol,
                ApiRow {
                    library: library_name(spec.library),
                    calls: s.calls,
                    calls_via_runtime: s.nested_calls,
                    bytes: matches!(
                        spec.class,
                        profilemate_common::OpClass::Memcpy
                            | profilemate_common::OpClass::CopyH2D
                            | profilemate_common::OpClass::CopyD2H
                            | profilemate_common::OpClass::Malloc
                    )
                    .then_some(s.bytes),
                    duration: s.duration.summary(),
                },
            );
        }
        out.summary(
            crate::output::csv::files::CUDA_API_SUMMARY,
            &serde_json::json!({ "processes": by_pid }),
        )?;
        Ok(())
    }
}
