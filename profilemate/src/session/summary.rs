//! The terminal summary of a finished session: what stopped it, the step and CPU figures,
//! what was lost, and the files written.
//!
//! Owns the wording of those lines; not their printing (the caller's) nor the figures
//! themselves (the profilers' summaries, metadata.json).

use super::{metadata::Metadata, signals::Stop, Ctx, Stopped};
use crate::{calibrate::attach::Resolution, output::SessionDir, profilers, verdict};

/// The summary lines, in the order the terminal shows them.
pub(super) fn lines(
    ctx: &Ctx<'_>,
    stopped: &Stopped,
    metadata: &Metadata,
    stop: &Stop,
    steps: u64,
    files: &[&str],
) -> Vec<String> {
    let dir = ctx.dir;
    let stats = &stopped.pipeline.correlator.stats;
    let lag = &stopped.pipeline.stats.lag_ms;
    let mut summary = vec![
        format!("stopped: {}", stop.describe()),
        format!(
            "steps: {steps}; graphs: {}; probe records: {}",
            count_rows(dir, "cuda_graph_captures.csv"),
            stopped.reader.records_read
        ),
    ];
    summary.extend(forward_summary_lines(dir));
    summary.extend([
        cpu_summary_line(dir),
        format!(
            "lost: {} ring-buffer drops, {} undecodable; unattributed: {} incomplete steps, {} unmatched returns, {} waits on unknown events",
            kernel_drops(&stopped.kernel), stopped.reader.decode_errors, stats.incomplete_steps, stats.unmatched_returns, stats.syncs_unknown_event
        ),
        format!(
            "tracer lag behind the target: P50 {} ms, P99 {} ms, max {} ms",
            lag.p50, lag.p99, lag.max
        ),
    ]);
    summary.extend(super::losses::warnings(
        &metadata.losses,
        ctx.cfg.ring_bytes,
    ));
    summary.extend(verdict::failed_probes_line(&metadata.probes));
    summary.push(format!("files: {}", files.join(", ")));
    summary
}

/// The bound forward_pass_summary.json states for exact rows, from the calibration used.
pub(super) fn exact_bound(calibration: &Resolution) -> Option<profilers::forward_pass::ExactBound> {
    match calibration {
        Resolution::Used(u) => Some(profilers::forward_pass::ExactBound {
            calibration: u.path.clone(),
            wake_up_p50_us: u.wake_up_us.p50,
            completion_late_by_at_most_us: u.exact_completion_error_bound_us,
        }),
        Resolution::None(_) => None,
    }
}

/// Records of every kind the kernel could not hand over (ring buffer full).
pub(super) fn kernel_drops(k: &crate::probes::KernelCounters) -> u64 {
    k.ring_full_drops + k.stack_ring_full_drops + k.usdt_ring_full_drops
}

/// "forward_time_ms P50/P95/P99 ..." from the summary just written, and whether the GPU
/// waited for the CPU.
fn forward_summary_lines(dir: &SessionDir) -> Vec<String> {
    let text =
        std::fs::read_to_string(dir.path().join("forward_pass_summary.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let f = &v["forward_time_ms"];
    match (
        f["p50_ms"].as_f64(),
        f["p95_ms"].as_f64(),
        f["p99_ms"].as_f64(),
    ) {
        (Some(p50), Some(p95), Some(p99)) => {
            let mut lines = vec![format!(
                "forward_time_ms P50 {p50:.3}, P95 {p95:.3}, P99 {p99:.3} ({} of {} completions exact)",
                v["exact_count"], v["count"]
            )];
            if let Some(pct) = v["gpu_finished_before_wait_pct"]
                .as_f64()
                .filter(|p| *p > 0.0)
            {
                lines.push(format!(
                    "GPU finished before the CPU waited in {pct:.1} % of steps: the engine is \
                     CPU-bound there, and those steps' forward_time_ms is an upper bound, not GPU \
                     time (gpu_time_lower_ms is the lower bound)"
                ));
            }
            lines
        }
        _ => vec!["forward_time_ms: no completed steps".to_owned()],
    }
}

/// "cpu (sampled): schedule 29%, ...; gc: N pauses, X ms" from the summary just written.
fn cpu_summary_line(dir: &SessionDir) -> String {
    let text =
        std::fs::read_to_string(dir.path().join("cpu_timing_summary.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let mut ops: Vec<(String, f64)> = v["operations"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, o)| Some((k.clone(), o["share_of_samples_pct"].as_f64()?)))
                .filter(|(_, pct)| *pct > 0.0)
                .collect()
        })
        .unwrap_or_default();
    ops.sort_by(|a, b| b.1.total_cmp(&a.1));
    let shares = if ops.is_empty() {
        "no samples".to_owned()
    } else {
        ops.iter()
            .take(6)
            .map(|(k, p)| format!("{k} {p:.0}%"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "cpu (sampled): {shares}; gc: {} pauses, {:.1} ms",
        v["gc"]["pauses"].as_u64().unwrap_or(0),
        v["gc"]["total_ms"].as_f64().unwrap_or(0.0)
    )
}

/// Data rows of a CSV file of the session (0 when absent).
pub(super) fn count_rows(dir: &SessionDir, name: &str) -> u64 {
    std::fs::read_to_string(dir.path().join(name))
        .map_or(0, |s| s.lines().count().saturating_sub(1) as u64)
}
