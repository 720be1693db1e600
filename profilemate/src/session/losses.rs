//! The terminal's WARNING lines for what a session lost, and the GC events it lost.
//!
//! Owns: turning every loss counted in metadata.json's `losses` into one line with its
//! count, its cause and what to change, so that nothing counted goes unsaid at the end of a
//! session. Does not own: the counting (the kernel programs, `probes::reader`, `pipeline`)
//! or the other summary lines (`session`).

use super::metadata::LossReport;
use crate::{model::GcLost, probes::reader::KindCounts};

/// The GC events lost, from the session's losses.
#[must_use]
pub fn gc_lost(l: &LossReport) -> GcLost {
    GcLost {
        ring_buffer_full: l.kernel.usdt_ring_full_drops,
        queue_full: l.reader.queue_full_drops.usdt,
        unprocessed_at_stop: l.pipeline.unprocessed_at_stop.usdt,
    }
}

/// "3 calls, 2 call stacks, 1 sampled stack, 0 USDT (GC)".
fn by_kind(k: &KindCounts) -> String {
    format!(
        "{} calls, {} call stacks, {} sampled stacks, {} USDT (GC)",
        k.calls, k.call_stacks, k.sample_stacks, k.usdt
    )
}

/// One line per loss counted in `l`, nothing when nothing was lost. `ring_bytes`: the ring
/// buffer size in use (the fix suggests twice it).
#[must_use]
pub fn warnings(l: &LossReport, ring_bytes: u32) -> Vec<String> {
    let mut w = kernel_warnings(l, ring_bytes);
    let r = &l.reader;
    if r.decode_errors > 0 {
        w.push(format!(
            "WARNING: {} records could not be decoded: the eBPF object and this binary disagree \
             on the record layout; rebuild both with `cargo xtask build`",
            r.decode_errors
        ));
    }
    if r.samples_shed > 0 {
        w.push(format!(
            "WARNING: {} sampled stacks were shed: the pipeline ran behind (lag P99 {} ms) and the \
             queue passed half of --queue-mb; CPU shares rest on fewer samples. Lower --sample-hz",
            r.samples_shed, l.pipeline.lag_ms.p99
        ));
    }
    let full = &r.queue_full_drops;
    if full.total() > 0 {
        w.push(format!(
            "WARNING: {} records were dropped at the full userspace queue ({}); pass a larger \
             --queue-mb or lower --sample-hz / --state-hz",
            full.total(),
            by_kind(full)
        ));
    }
    let left = &l.pipeline.unprocessed_at_stop;
    if left.total() > 0 {
        w.push(format!(
            "WARNING: {} records read before the stop were not processed in time ({}): the \
             pipeline was {} ms behind at the end; steps near the end are missing. Lower \
             --sample-hz, or stop by --duration rather than a second Ctrl-C",
            left.total(),
            by_kind(left),
            l.pipeline.lag_ms.max
        ));
    }
    let gc = gc_lost(l);
    if gc.total() > 0 {
        w.push(format!(
            "WARNING: {} GC events were lost ({} ring buffer full, {} queue full, {} not processed \
             at the stop): gc_pauses.csv lacks those pauses, gc_summary.json counts them in \
             events_lost. See the warnings above for the fix",
            gc.total(),
            gc.ring_buffer_full,
            gc.queue_full,
            gc.unprocessed_at_stop
        ));
    }
    w
}

/// The kernel side: records the ring buffer could not take, values the probes could not read.
fn kernel_warnings(l: &LossReport, ring_bytes: u32) -> Vec<String> {
    let k = &l.kernel;
    let mib = (ring_bytes >> 19).clamp(2, 1024);
    let mut w = Vec::new();
    let ring = [
        (
            k.ring_full_drops,
            "CUDA call records",
            "steps and API counts near the drops are incomplete",
            "",
        ),
        (
            k.stack_ring_full_drops,
            "Python stack records",
            "CPU shares and launch stacks rest on fewer stacks",
            " or lower --sample-hz / use --cuda-stacks none",
        ),
        (
            k.usdt_ring_full_drops,
            "USDT (GC) records",
            "GC pauses are missing",
            "",
        ),
    ];
    for (n, what, effect, more) in ring {
        if n > 0 {
            w.push(format!(
                "WARNING: the kernel dropped {n} {what} (ring buffer full): {effect}; pass \
                 --ring-mb {mib}{more}"
            ));
        }
    }
    let unread = k.out_param_stash_full + k.out_param_read_failed;
    if unread > 0 {
        w.push(format!(
            "WARNING: {unread} handles returned through out-parameters were not read ({} stash \
             full, {} unreadable at return): graphs or events created then are unattributed; \
             this should stay 0, report it with metadata.json",
            k.out_param_stash_full, k.out_param_read_failed
        ));
    }
    if k.usdt_without_spec > 0 {
        w.push(format!(
            "WARNING: {} USDT hits had no argument spec and were dropped in the kernel: GC \
             pauses are missing; this should stay 0, report it with metadata.json",
            k.usdt_without_spec
        ));
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        probes::reader::ReaderStats, probes::KernelCounters, session::metadata::MainLoopStats,
        session::pipeline::PipelineStats,
    };

    fn losses() -> LossReport {
        LossReport {
            kernel: KernelCounters::default(),
            records_read: 1000,
            decode_errors: 0,
            reader: ReaderStats::default(),
            pipeline: PipelineStats::default(),
            main_loop: MainLoopStats::default(),
            metrics_scrape_ms_max: 0.0,
            correlator: crate::correlate::CorrelatorStats::default(),
        }
    }

    #[test]
    fn nothing_lost_says_nothing() {
        assert!(warnings(&losses(), 32 << 20).is_empty());
    }

    /// Each counter gets its own value; every value must appear in some WARNING line.
    #[test]
    fn every_counted_loss_is_printed_as_a_warning() {
        let mut l = losses();
        let kinds = |base| KindCounts {
            calls: base,
            call_stacks: base + 1,
            sample_stacks: base + 2,
            usdt: base + 3,
        };
        l.kernel = KernelCounters {
            ring_full_drops: 101,
            out_param_stash_full: 102,
            out_param_read_failed: 103,
            filtered_hits: 0,
            stack_ring_full_drops: 104,
            usdt_ring_full_drops: 105,
            usdt_without_spec: 106,
        };
        l.reader.decode_errors = 107;
        l.reader.samples_shed = 108;
        l.reader.queue_full_drops = kinds(210);
        l.pipeline.unprocessed_at_stop = kinds(320);
        let w = warnings(&l, 32 << 20);
        assert!(w.iter().all(|line| line.starts_with("WARNING: ")), "{w:#?}");
        let text = w.join("\n");
        for n in [
            101, 102, 103, 104, 105, 106, 107, 108, 210, 211, 212, 213, 320, 321, 322, 323,
        ] {
            assert!(text.contains(&format!("{n} ")), "{n} missing from {w:#?}");
        }
        // GC events: kernel + queue + not processed.
        assert!(
            text.contains(&format!("{} GC events were lost", 105 + 213 + 323)),
            "{w:#?}"
        );
        assert!(text.contains("--ring-mb 64"), "{w:#?}");
    }
}
