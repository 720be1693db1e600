//! What limits this server: rules over a session's numbers, each finding with the numbers
//! that triggered it and what to change.
//!
//! Owns: the [`Facts`] a session boils down to (computed from a [`Model`]) and the rules
//! (pure functions of `Facts`, unit-tested on synthetic inputs). Does not own: how findings
//! are shown (`html`).
//!
//! The thresholds are the seeds' "optimal ranges" (KV 60-80 % good, > 90 % under-provisioned,
//! < 40 % over-provisioned) and what each measurement can carry: a CPU-bound verdict needs
//! most steps to show the GPU finished before the CPU waited; a graph-coverage verdict needs
//! decode steps that replayed no graph while graphs were captured.

use std::collections::{BTreeMap, HashSet};

use super::{Method, Model};

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// It limits the server's throughput now.
    Limit,
    /// Worth changing.
    Warn,
    /// For information.
    Info,
}

impl Severity {
    /// The label shown.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Limit => "limit",
            Self::Warn => "warning",
            Self::Info => "info",
        }
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// A stable id (CSS and tests).
    pub id: &'static str,
    /// How much it matters.
    pub severity: Severity,
    /// One line.
    pub title: String,
    /// The numbers that triggered it.
    pub evidence: Vec<String>,
    /// What to change.
    pub action: String,
}

/// The numbers the rules look at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    /// Session length.
    pub duration_sec: f64,
    /// Steps (forward_pass_timing.csv rows).
    pub steps: u64,
    /// Of them, exact.
    pub exact_steps: u64,
    /// Steps where the GPU had finished before the CPU waited, percent.
    pub gpu_done_before_wait_pct: Option<f64>,
    /// KV readings.
    pub kv_reads: u64,
    /// Share of KV readings at or above 90 %.
    pub kv_high_pct: f64,
    /// Mean KV usage.
    pub kv_mean_pct: f64,
    /// Peak KV usage.
    pub kv_peak_pct: f64,
    /// Preemptions.
    pub preemptions: u64,
    /// Of them, for lack of KV blocks.
    pub preemptions_kv: u64,
    /// Share of sampled CPU time per operation on the step-launching threads, percent, largest first.
    pub step_thread_shares: Vec<(String, f64)>,
    /// Decode steps.
    pub decode_steps: u64,
    /// Decode steps that replayed no graph.
    pub decode_eager: u64,
    /// Largest token count of those.
    pub decode_eager_max_tokens: Option<f64>,
    /// Graphs captured (or seen replayed).
    pub graphs: u64,
    /// Largest descriptor token count among the graphs.
    pub graph_max_tokens: Option<f64>,
    /// Padded tokens of steps that replayed a FULL graph with a known descriptor.
    pub padded_tokens: f64,
    /// Scheduled tokens of those steps.
    pub padded_step_tokens: f64,
    /// GC pauses on a step-launching thread.
    pub gc_step_pauses: u64,
    /// Their total.
    pub gc_step_ms: f64,
    /// The longest of them.
    pub gc_step_max_ms: f64,
    /// Generation-2 pauses among them.
    pub gc_step_gen2: u64,
    /// GPU idle time between steps (from the steps' GPU start and previous completion).
    pub idle_gap_ms: f64,
    /// The sampled work that filled the gaps, per operation (cpu_timing_summary.json).
    pub idle_filled_by: Vec<(String, f64)>,
    /// Steps whose batch was read.
    pub batch_steps: u64,
    /// Steps at max_num_seqs with requests waiting.
    pub at_max_seqs_waiting: u64,
    /// Steps below half the token budget while requests waited.
    pub underutilized: u64,
    /// The scheduler's limits.
    pub max_num_seqs: Option<f64>,
    /// See `max_num_seqs`.
    pub max_num_scheduled_tokens: Option<f64>,
    /// Every nonzero loss: (what, count).
    pub losses: Vec<(String, u64)>,
}

fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

impl Facts {
    /// Boils a session down to the numbers the rules use.
    #[must_use]
    pub fn of(m: &Model) -> Self {
        let mut f = Self {
            duration_sec: m.duration(),
            steps: m.steps.len() as u64,
            exact_steps: m
                .steps
                .iter()
                .filter(|s| s.completion == super::Completion::Exact)
                .count() as u64,
            gpu_done_before_wait_pct: (!m.steps.is_empty()).then(|| {
                pct(
                    m.steps.iter().filter(|s| s.done_before_wait).count() as f64,
                    m.steps.len() as f64,
                )
            }),
            losses: losses(&m.meta, &m.gc_summary),
            ..Self::default()
        };
        f.kv(m);
        f.cpu(m);
        f.graphs(m);
        f.gc(m);
        f.batches(m);
        f
    }

    fn kv(&mut self, m: &Model) {
        self.kv_reads = m.kv.len() as u64;
        let n = m.kv.len() as f64;
        self.kv_high_pct = pct(m.kv.iter().filter(|k| k.pct >= 90.0).count() as f64, n);
        self.kv_mean_pct = if n > 0.0 {
            m.kv.iter().map(|k| k.pct).sum::<f64>() / n
        } else {
            0.0
        };
        self.kv_peak_pct = m.kv.iter().map(|k| k.pct).fold(0.0, f64::max);
        self.preemptions = m.preemptions.len() as u64;
        self.preemptions_kv = m
            .preemptions
            .iter()
            .filter(|p| p.reason == "kv_cache_exhausted")
            .count() as u64;
    }

    fn cpu(&mut self, m: &Model) {
        let launchers: HashSet<u32> = m.steps.iter().map(|s| s.tid).collect();
        let mut by_op: BTreeMap<&str, f64> = BTreeMap::new();
        for r in m
            .cpu
            .iter()
            .filter(|r| r.method == Method::Sampled && launchers.contains(&r.tid))
        {
            *by_op.entry(m.name(r.op)).or_default() += r.ms;
        }
        let total: f64 = by_op.values().sum();
        let mut shares: Vec<(String, f64)> = by_op
            .into_iter()
            .map(|(k, v)| (k.to_owned(), pct(v, total)))
            .collect();
        shares.sort_by(|a, b| b.1.total_cmp(&a.1));
        self.step_thread_shares = shares;
        self.idle_gap_ms = idle_gaps(m).iter().map(|g| g.1).sum();
        let mut filled: Vec<(String, f64)> = m.cpu_summary["gpu_idle_gaps"]["attributed_ms"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        filled.sort_by(|a, b| b.1.total_cmp(&a.1));
        self.idle_filled_by = filled;
    }

    fn graphs(&mut self, m: &Model) {
        self.graphs = m.graphs.len() as u64;
        self.graph_max_tokens = m.graphs.iter().filter_map(|g| g.tokens).reduce(f64::max);
        for s in m.steps.iter().filter(|s| s.phase == "decode") {
            self.decode_steps += 1;
            if s.graph_launches == 0 {
                self.decode_eager += 1;
                if let Some(t) = s.tokens {
                    self.decode_eager_max_tokens =
                        Some(self.decode_eager_max_tokens.map_or(t, |m| m.max(t)));
                }
            }
        }
        for s in &m.steps {
            if let (Some(p), Some(t)) = (s.padded, s.tokens) {
                self.padded_tokens += p;
                self.padded_step_tokens += t;
            }
        }
    }

    fn gc(&mut self, m: &Model) {
        let launchers: HashSet<u32> = m.steps.iter().map(|s| s.tid).collect();
        for g in m.gc.iter().filter(|g| launchers.contains(&g.tid)) {
            self.gc_step_pauses += 1;
            self.gc_step_ms += g.ms;
            self.gc_step_max_ms = self.gc_step_max_ms.max(g.ms);
            self.gc_step_gen2 += u64::from(g.generation == 2);
        }
    }

    fn batches(&mut self, m: &Model) {
        self.batch_steps = m.batches.len() as u64;
        self.max_num_seqs = m.batches.iter().find_map(|b| b.max_seqs);
        self.max_num_scheduled_tokens = m.batches.iter().find_map(|b| b.max_tokens);
        self.at_max_seqs_waiting = m.batch_summary["by_pid"].as_object().map_or(0, |o| {
            o.values()
                .filter_map(|p| p["steps_at_max_num_seqs_with_waiting"].as_u64())
                .sum()
        });
        self.underutilized = m.batch_summary["underutilization_events"]
            .as_u64()
            .unwrap_or(0);
    }
}

/// Per step (in each process's step order): (session time, GPU idle ms before it): its GPU
/// start minus the previous step's completion, when positive.
#[must_use]
pub fn idle_gaps(m: &Model) -> Vec<(f64, f64)> {
    let mut last: BTreeMap<u32, f64> = BTreeMap::new();
    let mut out = Vec::new();
    for s in &m.steps {
        if let Some(prev) = last.insert(s.pid, s.completion_sec) {
            let gap = (s.gpu_start - prev) * 1e3;
            if gap > 0.0 {
                out.push((s.gpu_start, gap));
            }
        }
    }
    out
}

/// The losses metadata.json counts (every one should stay 0), with their JSON paths.
pub const LOSS_KEYS: &[(&str, &str)] = &[
    (
        "kernel.ring_full_drops",
        "CUDA call records dropped (ring buffer full)",
    ),
    (
        "kernel.stack_ring_full_drops",
        "Python stack records dropped (ring buffer full)",
    ),
    (
        "kernel.usdt_ring_full_drops",
        "GC (USDT) records dropped (ring buffer full)",
    ),
    (
        "kernel.out_param_stash_full",
        "out-parameter handles not captured (stash full)",
    ),
    (
        "kernel.out_param_read_failed",
        "out-parameter handles unreadable",
    ),
    (
        "kernel.usdt_without_spec",
        "USDT hits without an argument spec",
    ),
    ("decode_errors", "records that could not be decoded"),
    (
        "reader.samples_shed",
        "sampled stacks shed (queue over half full)",
    ),
    (
        "reader.queue_full_drops.calls",
        "calls dropped at the full queue",
    ),
    (
        "reader.queue_full_drops.call_stacks",
        "call stacks dropped at the full queue",
    ),
    (
        "reader.queue_full_drops.sample_stacks",
        "sampled stacks dropped at the full queue",
    ),
    (
        "reader.queue_full_drops.usdt",
        "GC events dropped at the full queue",
    ),
    (
        "pipeline.unprocessed_at_stop.calls",
        "calls not processed before the stop",
    ),
    (
        "pipeline.unprocessed_at_stop.call_stacks",
        "call stacks not processed before the stop",
    ),
    (
        "pipeline.unprocessed_at_stop.sample_stacks",
        "sampled stacks not processed before the stop",
    ),
    (
        "pipeline.unprocessed_at_stop.usdt",
        "GC events not processed before the stop",
    ),
];

/// Events counted but not attributed (metadata.json `losses.correlator`).
pub const UNATTRIBUTED_KEYS: &[(&str, &str)] = &[
    (
        "correlator.incomplete_steps",
        "launch activity never completed by a wait",
    ),
    (
        "correlator.unmatched_returns",
        "returns whose entry was before attach",
    ),
    (
        "correlator.calls_open_at_end",
        "calls without a return at the end",
    ),
    (
        "correlator.abandoned_calls",
        "calls abandoned without a return",
    ),
    (
        "correlator.syncs_unknown_event",
        "waits on events never recorded while attached",
    ),
    (
        "correlator.unknown_graph_execs",
        "replays of graphs created before attach",
    ),
    (
        "correlator.uncaptured_graphs",
        "graphs created before attach",
    ),
    ("correlator.failed_captures", "graph captures that failed"),
];

/// The value at a dotted path under `losses`.
#[must_use]
pub fn loss_value(meta: &serde_json::Value, path: &str) -> Option<u64> {
    path.split('.').fold(&meta["losses"], |v, k| &v[k]).as_u64()
}

/// Every nonzero loss of metadata.json and gc_summary.json.
fn losses(meta: &serde_json::Value, gc: &serde_json::Value) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = LOSS_KEYS
        .iter()
        .filter_map(|(k, what)| {
            Some((
                format!("{what} ({k})"),
                loss_value(meta, k).filter(|n| *n > 0)?,
            ))
        })
        .collect();
    if let Some(n) = gc["events_lost"].as_u64().filter(|n| *n > 0) {
        out.push(("GC events lost (gc_summary.json events_lost)".to_owned(), n));
    }
    out
}

/// Every rule, most important first.
#[must_use]
pub fn findings(f: &Facts) -> Vec<Finding> {
    let rules: [fn(&Facts) -> Option<Finding>; 10] = [
        losses_rule,
        kv_pressure,
        max_seqs_cap,
        cpu_bound,
        idle_gaps_rule,
        eager_decode,
        gc_on_step_path,
        padding_waste,
        budget_unused,
        kv_over_provisioned,
    ];
    let mut out: Vec<Finding> = rules.iter().filter_map(|r| r(f)).collect();
    out.sort_by_key(|x| x.severity);
    out
}

fn losses_rule(f: &Facts) -> Option<Finding> {
    if f.losses.is_empty() {
        return None;
    }
    let total: u64 = f.losses.iter().map(|l| l.1).sum();
    Some(Finding {
        id: "losses",
        severity: Severity::Warn,
        title: format!("The session lost {total} events: the numbers below rest on fewer of them"),
        evidence: f.losses.iter().map(|(k, n)| format!("{n} {k}")).collect(),
        action: "Pass a larger --ring-mb / --queue-mb, or lower --sample-hz / --state-hz (each \
                 loss and its fix is in the terminal's WARNING lines and metadata.json losses)"
            .to_owned(),
    })
}

fn kv_pressure(f: &Facts) -> Option<Finding> {
    if f.kv_reads == 0 || f.kv_high_pct < 50.0 {
        return None;
    }
    let mut evidence = vec![
        format!(
            "KV cache at or above 90 % in {:.0} % of {} readings (mean {:.0} %, peak {:.0} %)",
            f.kv_high_pct, f.kv_reads, f.kv_mean_pct, f.kv_peak_pct
        ),
        format!(
            "{} preemptions, {} for lack of KV blocks",
            f.preemptions, f.preemptions_kv
        ),
    ];
    if f.underutilized > 0 {
        evidence.push(format!(
            "{} steps used under half the token budget while requests waited",
            f.underutilized
        ));
    }
    let limiting = f.preemptions > 0;
    Some(Finding {
        id: "kv_pressure",
        severity: if limiting {
            Severity::Limit
        } else {
            Severity::Warn
        },
        title: if limiting {
            "KV cache capacity limits this server: it runs full and preempts requests".to_owned()
        } else {
            "KV cache runs near full (no preemption yet)".to_owned()
        },
        evidence,
        action: "Give the KV cache more memory (raise --gpu-memory-utilization, or more GPUs with \
                 --tensor-parallel-size), or admit fewer sequences at once (lower --max-num-seqs, \
                 or --max-model-len if long contexts are rare)"
            .to_owned(),
    })
}

fn max_seqs_cap(f: &Facts) -> Option<Finding> {
    let share = pct(f.at_max_seqs_waiting as f64, f.batch_steps as f64);
    if f.batch_steps == 0 || share < 20.0 {
        return None;
    }
    Some(Finding {
        id: "max_num_seqs",
        severity: Severity::Limit,
        title: "max_num_seqs caps the batch while requests wait".to_owned(),
        evidence: vec![format!(
            "{} of {} steps ({share:.0} %) ran at max_num_seqs = {} with requests waiting; KV \
             cache at or above 90 % in {:.0} % of readings",
            f.at_max_seqs_waiting,
            f.batch_steps,
            f.max_num_seqs
                .map_or_else(|| "?".to_owned(), super::svg::num),
            f.kv_high_pct
        )],
        action: "Raise --max-num-seqs (the KV cache has room while it stays under 90 %)".to_owned(),
    })
}

fn cpu_bound(f: &Facts) -> Option<Finding> {
    let p = f.gpu_done_before_wait_pct.filter(|p| *p >= 50.0)?;
    let top: Vec<String> = f
        .step_thread_shares
        .iter()
        .take(4)
        .map(|(op, s)| format!("{op} {s:.0} %"))
        .collect();
    let mut evidence = vec![format!(
        "the GPU had finished before the CPU waited in {p:.1} % of {} steps: forward_time_ms \
         there measures the CPU's pace, not GPU time",
        f.steps
    )];
    if !top.is_empty() {
        evidence.push(format!(
            "CPU time of the step threads (sampled): {}",
            top.join(", ")
        ));
    }
    Some(Finding {
        id: "cpu_bound",
        severity: Severity::Limit,
        title: "CPU-bound: the GPU waits for the engine's Python work".to_owned(),
        evidence,
        action: "Overlap scheduling with the GPU (--async-scheduling), and cut the largest \
                 operations above: scheduling (fewer waiting requests scanned, lower \
                 --max-num-seqs), input preparation, output processing (fewer logprobs, \
                 detokenization off the engine's path)"
            .to_owned(),
    })
}

fn idle_gaps_rule(f: &Facts) -> Option<Finding> {
    let share = pct(f.idle_gap_ms, f.duration_sec * 1e3);
    if share < 10.0 {
        return None;
    }
    let filled: Vec<String> = f
        .idle_filled_by
        .iter()
        .take(4)
        .map(|(op, ms)| format!("{op} {ms:.0} ms"))
        .collect();
    let mut evidence = vec![format!(
        "the GPU sat idle between steps for {:.0} ms, {share:.0} % of the session",
        f.idle_gap_ms
    )];
    if !filled.is_empty() {
        evidence.push(format!("filled by (sampled): {}", filled.join(", ")));
    }
    Some(Finding {
        id: "idle_gaps",
        severity: Severity::Warn,
        title: "The GPU idles between steps while the CPU prepares the next one".to_owned(),
        evidence,
        action: "Enable --async-scheduling so the next step is scheduled while the GPU runs; \
                 shorten the operations that fill the gaps"
            .to_owned(),
    })
}

fn eager_decode(f: &Facts) -> Option<Finding> {
    let share = pct(f.decode_eager as f64, f.decode_steps as f64);
    if f.graphs == 0 || f.decode_eager == 0 || share < 5.0 {
        return None;
    }
    let mut evidence = vec![format!(
        "{} of {} decode steps ({share:.0} %) replayed no CUDA graph although {} were captured",
        f.decode_eager, f.decode_steps, f.graphs
    )];
    if let (Some(e), Some(g)) = (f.decode_eager_max_tokens, f.graph_max_tokens) {
        evidence.push(format!(
            "largest eager decode batch {} tokens; largest captured size {}",
            super::svg::num(e),
            super::svg::num(g)
        ));
    }
    Some(Finding {
        id: "eager_decode",
        severity: Severity::Warn,
        title: "Decode batches fell outside the captured CUDA graph sizes and ran eager".to_owned(),
        evidence,
        action: "Raise the capture sizes to cover the decode batches (compilation config \
                 max_cudagraph_capture_size / cudagraph_capture_sizes, or a lower --max-num-seqs)"
            .to_owned(),
    })
}

fn gc_on_step_path(f: &Facts) -> Option<Finding> {
    let share = pct(f.gc_step_ms, f.duration_sec * 1e3);
    if f.gc_step_pauses == 0 || (share < 1.0 && f.gc_step_max_ms < 10.0) {
        return None;
    }
    Some(Finding {
        id: "gc_step_path",
        severity: Severity::Warn,
        title: "Python GC pauses stall the step loop".to_owned(),
        evidence: vec![format!(
            "{} pauses on the step-launching threads, {:.0} ms in all ({share:.1} % of the \
             session), longest {:.1} ms, {} of generation 2",
            f.gc_step_pauses, f.gc_step_ms, f.gc_step_max_ms, f.gc_step_gen2
        )],
        action: "Freeze the long-lived objects after start-up (gc.freeze()), raise the thresholds \
                 (gc.set_threshold) so full collections are rarer, and cut per-step object churn"
            .to_owned(),
    })
}

fn padding_waste(f: &Facts) -> Option<Finding> {
    let share = pct(f.padded_tokens, f.padded_tokens + f.padded_step_tokens);
    if f.padded_tokens <= 0.0 || share < 25.0 {
        return None;
    }
    Some(Finding {
        id: "padding",
        severity: Severity::Info,
        title: "CUDA graph padding wastes GPU work".to_owned(),
        evidence: vec![format!(
            "{:.0} padded tokens against {:.0} scheduled in FULL graph replays ({share:.0} % of \
             the work was padding)",
            f.padded_tokens, f.padded_step_tokens
        )],
        action: "Add capture sizes between the common batch sizes (cudagraph_capture_sizes)"
            .to_owned(),
    })
}

fn budget_unused(f: &Facts) -> Option<Finding> {
    let share = pct(f.underutilized as f64, f.batch_steps as f64);
    if f.batch_steps == 0 || share < 50.0 || f.kv_high_pct >= 50.0 {
        return None;
    }
    Some(Finding {
        id: "budget_unused",
        severity: Severity::Info,
        title: "Requests waited while most of the token budget went unused".to_owned(),
        evidence: vec![format!(
            "{} of {} steps ({share:.0} %) scheduled under half of max_num_scheduled_tokens = {} \
             with requests waiting",
            f.underutilized,
            f.batch_steps,
            f.max_num_scheduled_tokens
                .map_or_else(|| "?".to_owned(), super::svg::num)
        )],
        action: "The waiting requests could not be admitted: check max_num_seqs (steps at the \
                 cap) and the KV cache; with neither at its limit, the scheduler waits on \
                 something else (prefix-cache misses, long prompts in chunked prefill)"
            .to_owned(),
    })
}

fn kv_over_provisioned(f: &Facts) -> Option<Finding> {
    if f.kv_reads < 10 || f.kv_peak_pct >= 40.0 {
        return None;
    }
    Some(Finding {
        id: "kv_low",
        severity: Severity::Info,
        title: "The KV cache never filled past 40 %".to_owned(),
        evidence: vec![format!(
            "peak {:.0} %, mean {:.0} % over {} readings",
            f.kv_peak_pct, f.kv_mean_pct, f.kv_reads
        )],
        action: "Room for more concurrent sequences (raise --max-num-seqs) or a lower \
                 --gpu-memory-utilization for other work on the GPU"
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(f: &Facts) -> Vec<&'static str> {
        findings(f).iter().map(|x| x.id).collect()
    }

    #[test]
    fn a_quiet_session_has_no_findings() {
        let f = Facts {
            duration_sec: 10.0,
            steps: 100,
            kv_reads: 100,
            kv_peak_pct: 70.0,
            kv_mean_pct: 60.0,
            gpu_done_before_wait_pct: Some(3.0),
            ..Facts::default()
        };
        assert!(findings(&f).is_empty(), "{:?}", findings(&f));
    }

    #[test]
    fn full_kv_with_preemptions_is_the_limit_and_says_what_to_change() {
        let f = Facts {
            kv_reads: 200,
            kv_high_pct: 72.5,
            kv_peak_pct: 100.0,
            kv_mean_pct: 90.1,
            preemptions: 54,
            preemptions_kv: 54,
            ..Facts::default()
        };
        let all = findings(&f);
        let kv = all
            .iter()
            .find(|x| x.id == "kv_pressure")
            .expect("kv finding");
        assert_eq!(kv.severity, Severity::Limit);
        assert!(
            kv.evidence[0].contains("72 %") || kv.evidence[0].contains("73 %"),
            "{kv:?}"
        );
        assert!(kv.evidence[1].contains("54 preemptions"), "{kv:?}");
        assert!(kv.action.contains("gpu-memory-utilization") && kv.action.contains("max-num-seqs"));
        // Full without preemptions: only a warning.
        let calm = Facts {
            preemptions: 0,
            preemptions_kv: 0,
            ..f
        };
        assert_eq!(findings(&calm)[0].severity, Severity::Warn);
    }

    #[test]
    fn gpu_finished_before_wait_in_most_steps_is_cpu_bound() {
        let f = Facts {
            steps: 768,
            gpu_done_before_wait_pct: Some(98.6),
            step_thread_shares: vec![("schedule".into(), 28.0), ("prepare_inputs".into(), 20.0)],
            ..Facts::default()
        };
        let c = findings(&f)
            .into_iter()
            .find(|x| x.id == "cpu_bound")
            .expect("cpu bound");
        assert!(c.evidence[0].contains("98.6 %"), "{c:?}");
        assert!(c.evidence[1].contains("schedule 28 %"), "{c:?}");
        assert!(c.action.contains("--async-scheduling"));
        let gpu_bound = Facts {
            gpu_done_before_wait_pct: Some(12.0),
            ..f
        };
        assert!(!ids(&gpu_bound).contains(&"cpu_bound"));
    }

    #[test]
    fn eager_decode_batches_outside_the_graph_sizes() {
        let f = Facts {
            graphs: 4,
            graph_max_tokens: Some(8.0),
            decode_steps: 100,
            decode_eager: 30,
            decode_eager_max_tokens: Some(24.0),
            ..Facts::default()
        };
        let e = findings(&f)
            .into_iter()
            .find(|x| x.id == "eager_decode")
            .expect("eager");
        assert!(e.evidence[0].contains("30 of 100"), "{e:?}");
        assert!(
            e.evidence[1].contains("24 tokens") && e.evidence[1].contains("size 8"),
            "{e:?}"
        );
        assert!(e.action.contains("cudagraph_capture_sizes"));
        // No graphs at all (eager mode by choice): nothing to say about sizes.
        assert!(!ids(&Facts {
            graphs: 0,
            ..f.clone()
        })
        .contains(&"eager_decode"));
        // A few stragglers are fine.
        assert!(!ids(&Facts {
            decode_eager: 2,
            ..f
        })
        .contains(&"eager_decode"));
    }

    #[test]
    fn gc_pauses_on_the_step_path() {
        let f = Facts {
            duration_sec: 10.0,
            gc_step_pauses: 50,
            gc_step_ms: 690.0,
            gc_step_max_ms: 32.8,
            gc_step_gen2: 50,
            ..Facts::default()
        };
        let g = findings(&f)
            .into_iter()
            .find(|x| x.id == "gc_step_path")
            .expect("gc");
        assert!(
            g.evidence[0].contains("690 ms") && g.evidence[0].contains("6.9 %"),
            "{g:?}"
        );
        assert!(g.action.contains("gc.freeze()"));
        let rare = Facts {
            gc_step_ms: 5.0,
            gc_step_max_ms: 0.5,
            ..f
        };
        assert!(!ids(&rare).contains(&"gc_step_path"));
    }

    #[test]
    fn losses_are_shown_first_among_warnings_and_padding_and_caps_are_found() {
        let f = Facts {
            losses: vec![("CUDA call records dropped".into(), 7)],
            batch_steps: 100,
            at_max_seqs_waiting: 40,
            max_num_seqs: Some(16.0),
            padded_tokens: 40.0,
            padded_step_tokens: 60.0,
            duration_sec: 1.0,
            idle_gap_ms: 300.0,
            idle_filled_by: vec![("schedule".into(), 200.0)],
            ..Facts::default()
        };
        let all = ids(&f);
        assert_eq!(all, vec!["max_num_seqs", "losses", "idle_gaps", "padding"]);
        let text = format!("{:?}", findings(&f));
        assert!(text.contains("7 CUDA call records dropped"), "{text}");
        assert!(
            text.contains("max_num_seqs = 16") && text.contains("40 %"),
            "{text}"
        );
        assert!(text.contains("schedule 200 ms"), "{text}");
    }

    #[test]
    fn an_idle_kv_cache_and_an_unused_budget_are_information() {
        let f = Facts {
            kv_reads: 50,
            kv_peak_pct: 20.0,
            batch_steps: 10,
            underutilized: 8,
            ..Facts::default()
        };
        assert_eq!(ids(&f), vec!["budget_unused", "kv_low"]);
        assert!(findings(&f).iter().all(|x| x.severity == Severity::Info));
    }

    #[test]
    fn losses_are_read_from_metadata_paths() {
        let meta = serde_json::json!({"losses": {"kernel": {"ring_full_drops": 3}, "reader": {"queue_full_drops": {"usdt": 2}}}});
        let gc = serde_json::json!({"events_lost": 2});
        let l = losses(&meta, &gc);
        assert_eq!(l.len(), 3, "{l:?}");
        assert!(l[0].0.contains("kernel.ring_full_drops") && l[0].1 == 3);
    }
}
