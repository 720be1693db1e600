//! batch_utilization.csv (one row per step batch read, streamed) and
//! batch_utilization_summary.json: how full each step was against the scheduler's limits.
//!
//! Owns computing those rows and summaries from the correlated records; not writing them
//! (the sinks: `output::csv` names the files and writes them) nor the records themselves.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Emitted, Profiler};
use crate::output::csv::{Family, FamilyRow};
use crate::{
    correlate::Correlated,
    output::{
        sink::Sink,
        summary::{CountSummary, Latency},
        OutputError, TimeBase,
    },
    vllm::{batch::StepBatch, state::StateSnapshot},
};

/// A step that used less than this share of the token budget while requests waited is an
/// under-utilization event: the queue was not drained for another reason (sequence limit,
/// KV cache space).
pub const UNDERUTILIZED_PCT: f64 = 50.0;

crate::csv_family! {
    pub struct Row in crate::output::csv::files::BATCH_UTILIZATION {
    step: u64,
    timestamp_sec: f64,
    pid: u32,
    phase: &'static str,
    num_seqs: u64,
    max_num_seqs: Option<u64>,
    seq_utilization_pct: Option<f64>,
    num_tokens: u64,
    max_num_scheduled_tokens: Option<u64>,
    token_utilization_pct: Option<f64>,
    prefill_tokens: u64,
    decode_tokens: u64,
    new_reqs: u64,
    cached_reqs: u64,
    resumed_reqs: u64,
    preempted_reqs: usize,
    running: Option<u64>,
    waiting: Option<u64>,
    kv_usage_pct: Option<f64>,
    queues_from: &'static str,
    underutilized: bool,
    }
}

#[derive(Default)]
struct Stats {
    steps: u64,
    token_pct_sum: f64,
    token_pct_n: u64,
    seq_pct_sum: f64,
    seq_pct_n: u64,
    tokens: Latency,
    seqs: Latency,
    waiting_steps: u64,
    underutilized: u64,
    full_seq_limit: u64,
    by_phase: BTreeMap<&'static str, u64>,
    waiting_max: u64,
    running_max: u64,
}

#[derive(Serialize)]
struct PidSummary {
    steps: u64,
    mean_token_utilization_pct: Option<f64>,
    mean_seq_utilization_pct: Option<f64>,
    tokens_per_step: Option<CountSummary>,
    seqs_per_step: Option<CountSummary>,
    steps_by_phase: BTreeMap<&'static str, u64>,
    steps_with_waiting_requests: u64,
    underutilization_events: u64,
    steps_at_max_num_seqs_with_waiting: u64,
    max_running: u64,
    max_waiting: u64,
    max_num_seqs: Option<u64>,
    max_num_scheduled_tokens: Option<u64>,
    scheduler_steps_polled: Option<u64>,
}

#[derive(Serialize)]
struct Summary {
    steps: u64,
    mean_token_utilization_pct: Option<f64>,
    mean_seq_utilization_pct: Option<f64>,
    underutilization_events: u64,
    underutilization_threshold_pct: f64,
    by_pid: BTreeMap<u32, PidSummary>,
    note: &'static str,
}

/// The batch utilization profiler.
pub struct BatchUtilization {
    emitted: Emitted,
    time: TimeBase,
    per_pid: BTreeMap<u32, Stats>,
    all: Stats,
    /// The latest scheduler poll of any process (limits; queues when the step was read in
    /// another process than the scheduler's, with more than one GPU worker).
    latest_poll: Option<StateSnapshot>,
    /// (first, last) `current_step` polled, per scheduler process.
    scheduler_steps: BTreeMap<u32, (u64, u64)>,
    next_step: BTreeMap<u32, u64>,
}

impl BatchUtilization {
    /// A profiler stamping rows with `time`.
    pub fn new(time: TimeBase) -> Self {
        Self {
            emitted: Emitted::default(),
            time,
            per_pid: BTreeMap::new(),
            all: Stats::default(),
            latest_poll: None,
            scheduler_steps: BTreeMap::new(),
            next_step: BTreeMap::new(),
        }
    }

    fn add(&mut self, b: &StepBatch) {
        let poll = self.latest_poll.as_ref();
        let limits = b.scheduler.as_ref().or(poll);
        let max_seqs = limits
            .and_then(|s| s.max_num_seqs)
            .or(poll.and_then(|s| s.max_num_seqs));
        let max_tokens = limits
            .and_then(|s| s.max_num_scheduled_tokens)
            .or(poll.and_then(|s| s.max_num_scheduled_tokens));
        let (queues, queues_from) = match (&b.scheduler, poll) {
            (Some(s), _) => (Some(s), "step"),
            (None, Some(p)) => (Some(p), "poll"),
            (None, None) => (None, ""),
        };
        let pct = |v: u64, max: Option<u64>| {
            max.filter(|m| *m > 0)
                .map(|m| (10_000.0 * v as f64 / m as f64).round() / 100.0)
        };
        let token_pct = pct(b.num_tokens, max_tokens);
        let seq_pct = pct(b.num_reqs, max_seqs);
        let waiting = queues.and_then(|q| q.waiting);
        let running = queues.and_then(|q| q.running);
        let underutilized =
            waiting.unwrap_or(0) > 0 && token_pct.is_some_and(|p| p < UNDERUTILIZED_PCT);
        let step = self.next_step.entry(b.pid).or_insert(0);
        self.emitted.push(Row {
            step: *step,
            timestamp_sec: self.time.sec(b.ts_ns),
            pid: b.pid,
            phase: b.phase.as_str(),
            num_seqs: b.num_reqs,
            max_num_seqs: max_seqs,
            seq_utilization_pct: seq_pct,
            num_tokens: b.num_tokens,
            max_num_scheduled_tokens: max_tokens,
            token_utilization_pct: token_pct,
            prefill_tokens: b.prefill_tokens,
            decode_tokens: b.decode_tokens,
            new_reqs: b.new_reqs,
            cached_reqs: b.cached_reqs,
            resumed_reqs: b.resumed_reqs,
            preempted_reqs: b.preempted_req_ids.len(),
            running,
            waiting,
            kv_usage_pct: queues
                .and_then(StateSnapshot::kv_usage_pct)
                .map(|p| (p * 1000.0).round() / 1000.0),
            queues_from,
            underutilized,
        });
        *step += 1;
        let at_seq_limit = waiting.unwrap_or(0) > 0 && max_seqs == Some(b.num_reqs);
        for s in [self.per_pid.entry(b.pid).or_default(), &mut self.all] {
            s.steps += 1;
            if let Some(p) = token_pct {
                s.token_pct_sum += p;
                s.token_pct_n += 1;
            }
            if let Some(p) = seq_pct {
                s.seq_pct_sum += p;
                s.seq_pct_n += 1;
            }
            s.tokens.record(b.num_tokens);
            s.seqs.record(b.num_reqs);
            s.waiting_steps += u64::from(waiting.unwrap_or(0) > 0);
            s.underutilized += u64::from(underutilized);
            s.full_seq_limit += u64::from(at_seq_limit);
            *s.by_phase.entry(b.phase.as_str()).or_default() += 1;
            s.waiting_max = s.waiting_max.max(waiting.unwrap_or(0));
            s.running_max = s.running_max.max(running.unwrap_or(0));
        }
    }
}

fn mean(sum: f64, n: u64) -> Option<f64> {
    (n > 0).then(|| (100.0 * sum / n as f64).round() / 100.0)
}

impl BatchUtilization {
    /// One record: its rows go to `emitted`.
    fn take(&mut self, record: &Correlated) {
        match record {
            Correlated::VllmState(s) => {
                if let Some(step) = s.current_step {
                    let e = self.scheduler_steps.entry(s.pid).or_insert((step, step));
                    e.1 = step;
                }
                self.latest_poll = Some(*s);
            }
            Correlated::Batch(b) => self.add(b),
            _ => {}
        }
    }
}

impl Profiler for BatchUtilization {
    fn families(&self) -> &'static [&'static Family] {
        &[&Row::FAMILY]
    }

    fn consume(&mut self, record: &Correlated, out: &mut dyn Sink) {
        self.take(record);
        self.emitted.drain_to(out);
    }

    fn finish(&mut self, out: &mut dyn Sink) -> Result<(), OutputError> {
        let poll = self.latest_poll;
        let polled: u64 = self
            .scheduler_steps
            .values()
            .map(|(a, b)| b.saturating_sub(*a))
            .sum();
        let summary = Summary {
            steps: self.all.steps,
            mean_token_utilization_pct: mean(self.all.token_pct_sum, self.all.token_pct_n),
            mean_seq_utilization_pct: mean(self.all.seq_pct_sum, self.all.seq_pct_n),
            underutilization_events: self.all.underutilized,
            underutilization_threshold_pct: UNDERUTILIZED_PCT,
            by_pid: self
                .per_pid
                .iter()
                .map(|(pid, s)| {
                    (
                        *pid,
                        PidSummary {
                            steps: s.steps,
                            mean_token_utilization_pct: mean(s.token_pct_sum, s.token_pct_n),
                            mean_seq_utilization_pct: mean(s.seq_pct_sum, s.seq_pct_n),
                            tokens_per_step: s.tokens.summary_raw(),
                            seqs_per_step: s.seqs.summary_raw(),
                            steps_by_phase: s.by_phase.clone(),
                            steps_with_waiting_requests: s.waiting_steps,
                            underutilization_events: s.underutilized,
                            steps_at_max_num_seqs_with_waiting: s.full_seq_limit,
                            max_running: s.running_max,
                            max_waiting: s.waiting_max,
                            max_num_seqs: poll.and_then(|p| p.max_num_seqs),
                            max_num_scheduled_tokens: poll.and_then(|p| p.max_num_scheduled_tokens),
                            scheduler_steps_polled: (polled > 0).then_some(polled),
                        },
                    )
                })
                .collect(),
            note: "one row per step whose SchedulerOutput was read (at the step's first walked CUDA call); utilization = scheduled / limit (max_num_scheduled_tokens, max_num_seqs); an under-utilization event is a step below the threshold of the token budget while requests were waiting; queues_from = step (read right after the output, same process) or poll (latest poll, when the scheduler runs in another process); scheduler_steps_polled = advance of Scheduler.current_step between the first and last poll (steps with no tokens launch nothing and have no row)",
        };
        out.summary(
            crate::output::csv::files::BATCH_UTILIZATION_SUMMARY,
            &summary,
        )?;
        self.emitted.drain_to(out);
        Ok(())
    }
}
