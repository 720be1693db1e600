//! The terminal summary of a finished session: what stopped it, the step and CPU figures,
//! what was lost, and the files written.
//!
//! Owns the wording of those lines; not their printing (the caller's) nor the figures
//! themselves (the profilers' summaries, metadata.json).

use std::sync::{Arc, Mutex};

use super::{metadata::Metadata, signals::Stop, Ctx, Outputs, Stopped};
use crate::{
    calibrate::attach::Resolution,
    output::{
        sink::{Row, Sink, Summary},
        OutputError,
    },
    profilers::{self, cpu_attribution, forward_pass},
    verdict,
};

/// The summary lines, in the order the terminal shows them.
pub(super) fn lines(
    ctx: &Ctx<'_>,
    stopped: &Stopped,
    outputs: &Outputs,
    metadata: &Metadata,
    stop: &Stop,
    files: &[&str],
) -> Vec<String> {
    let steps = outputs.counts.of::<forward_pass::Row>();
    let stats = &stopped.pipeline.correlator.stats;
    let lag = &stopped.pipeline.stats.lag_ms;
    let mut summary = vec![
        format!("stopped: {}", stop.describe()),
        format!(
            "steps: {steps}; graphs: {}; probe records: {}",
            outputs.counts.of::<profilers::cuda_graphs::CaptureRow>(),
            stopped.reader.records_read
        ),
    ];
    summary.extend(outputs.terminal.forward_lines());
    summary.extend([
        outputs.terminal.cpu_line(),
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

/// The typed summaries the terminal lines are made of, kept as they pass: a sink beside the
/// files, so the lines never read a file back.
#[derive(Clone, Default)]
pub(super) struct Terminal(Arc<Mutex<Figures>>);

#[derive(Default)]
struct Figures {
    forward: Option<Vec<String>>,
    cpu: Option<String>,
}

impl Sink for Terminal {
    fn row(&mut self, _row: &dyn Row) {}

    fn summary(&mut self, _file: &'static str, summary: &dyn Summary) -> Result<(), OutputError> {
        let any = summary.as_any();
        if let Ok(mut f) = self.0.lock() {
            if let Some(s) = any.downcast_ref::<forward_pass::Summary>() {
                f.forward = Some(forward_summary_lines(&s.all));
            } else if let Some(s) = any.downcast_ref::<cpu_attribution::Summary>() {
                f.cpu = Some(cpu_summary_line(s));
            }
        }
        Ok(())
    }
}

impl Terminal {
    fn forward_lines(&self) -> Vec<String> {
        self.0
            .lock()
            .ok()
            .and_then(|f| f.forward.clone())
            .unwrap_or_else(|| vec!["forward_time_ms: no completed steps".to_owned()])
    }

    fn cpu_line(&self) -> String {
        self.0
            .lock()
            .ok()
            .and_then(|f| f.cpu.clone())
            .unwrap_or_else(|| "cpu (sampled): no samples; gc: 0 pauses, 0.0 ms".to_owned())
    }
}

/// "forward_time_ms P50/P95/P99 ..." and whether the GPU waited for the CPU.
fn forward_summary_lines(all: &forward_pass::PhaseSummary) -> Vec<String> {
    let Some(f) = &all.forward_time_ms else {
        return vec!["forward_time_ms: no completed steps".to_owned()];
    };
    let mut lines = vec![format!(
        "forward_time_ms P50 {:.3}, P95 {:.3}, P99 {:.3} ({} of {} completions exact)",
        f.p50_ms, f.p95_ms, f.p99_ms, all.exact_count, all.count
    )];
    if let Some(pct) = all.gpu_finished_before_wait_pct.filter(|p| *p > 0.0) {
        lines.push(format!(
            "GPU finished before the CPU waited in {pct:.1} % of steps: the engine is \
             CPU-bound there, and those steps' forward_time_ms is an upper bound, not GPU \
             time (gpu_time_lower_ms is the lower bound)"
        ));
    }
    lines
}

/// "cpu (sampled): schedule 29%, ...; gc: N pauses, X ms".
fn cpu_summary_line(s: &cpu_attribution::Summary) -> String {
    let mut ops: Vec<(&str, f64)> = s
        .operations
        .iter()
        .map(|(k, o)| (*k, o.share_of_samples_pct))
        .filter(|(_, pct)| *pct > 0.0)
        .collect();
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
        s.gc.pauses, s.gc.total_ms
    )
}
