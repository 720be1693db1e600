//! preemption_events.csv, request_lifecycle.csv and preemption_summary.json.
//!
//! Two sources that check each other: every step's `SchedulerOutput` names the requests
//! preempted since the previous step (exact, stamped at the step), and every poll reads each
//! request's `num_preemptions` counter, which only grows. A counter that grew more than the
//! step outputs showed (a step whose output was not read) adds the missing preemptions,
//! stamped at the poll that saw them, so no preemption between two polls is lost.
//!
//! Owns computing those rows and summaries from the correlated records; not writing them
//! (the sinks: `output::csv` names the files and writes them) nor the records themselves.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::Profiler;
use crate::output::csv::{Family, FamilyRow};
use crate::{
    correlate::Correlated,
    output::{
        sink::Sink,
        summary::{Latency, LatencySummary},
        OutputError, TimeBase,
    },
    vllm::{
        batch::StepBatch,
        calls::{CallRole, SchedulerCall},
        requests::RequestPoll,
    },
};

/// Why a request was preempted.
const KV_EXHAUSTED: &str = "kv_cache_exhausted";
const CACHE_RESET: &str = "cache_reset";
/// Found by its counter only: the step output that named it was not read.
const UNKNOWN: &str = "unknown";

crate::csv_family! {
#[derive(Clone)]
    pub struct Event in crate::output::csv::files::PREEMPTION_EVENTS {
    timestamp_sec: f64,
    pid: u32,
    request_id: String,
    reason: &'static str,
    tokens_lost: Option<u64>,
    running_sec: Option<f64>,
    source: &'static str,
    }
}

#[derive(Default)]
struct Life {
    pid: u32,
    arrival_unix: Option<f64>,
    first_seen_ns: u64,
    first_scheduled_ns: Option<u64>,
    /// When the current run started (first schedule or resume).
    run_start_ns: Option<u64>,
    /// Tokens scheduled since the current run started (what a preemption discards).
    run_tokens: u64,
    preempted_at_ns: Option<u64>,
    step_preemptions: u64,
    /// (preemptions before the session, latest `num_preemptions` polled), and when the
    /// counter grew. Before-session = the first value polled minus the preemptions the step
    /// outputs had named by then.
    counter: Option<(u64, u64)>,
    counter_grew_ns: Vec<u64>,
    resumes: u64,
    /// Preemptions a breakpoint reported that no step output has named yet (the output
    /// after the preemption names it again: not a second one).
    unconfirmed: u64,
    /// When the engine's scheduler took the request (`add_request` entry).
    added_ns: Option<u64>,
    finished_ns: Option<u64>,
    status: String,
    prompt_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl Life {
    /// Records a preemption at `ts`: the current run ends. Returns how long it ran and the
    /// tokens it had scheduled (what the preemption discards), when its start is known.
    fn preempted(&mut self, ts: u64) -> (Option<f64>, Option<u64>) {
        self.step_preemptions += 1;
        self.preempted_at_ns = Some(ts);
        let running_sec = self.run_start_ns.map(|s| ts.saturating_sub(s) as f64 / 1e9);
        let tokens_lost = self.run_start_ns.map(|_| self.run_tokens);
        self.run_start_ns = None;
        self.run_tokens = 0;
        (running_sec, tokens_lost)
    }
}

/// The preemption and request-lifecycle profiler.
pub struct Preemptions {
    time: TimeBase,
    requests: HashMap<String, Life>,
    events: Vec<Event>,
    resume_delay: Latency,
    /// Per process: the prefix cache map at the previous step (a new map = a reset).
    prefix_map: HashMap<u32, u64>,
    /// Processes whose `_preempt_request` breakpoint has fired: there every preemption comes
    /// with its hit, and a step output naming one without a hit is not counted (a late
    /// read of a later output at a reused address names the next step's preemptions before
    /// their hits arrive).
    preempt_watched: HashSet<u32>,
    /// Arrivals seen by breakpoint (`add_request` entries).
    arrivals: u64,
}

impl Preemptions {
    /// A profiler writing into the session directory at the end.
    pub fn new(time: TimeBase) -> Self {
        Self {
            time,
            requests: HashMap::new(),
            events: Vec::new(),
            resume_delay: Latency::default(),
            prefix_map: HashMap::new(),
            preempt_watched: HashSet::new(),
            arrivals: 0,
        }
    }

    fn life(&mut self, id: &str, pid: u32, ts: u64) -> &mut Life {
        self.requests.entry(id.to_owned()).or_insert_with(|| Life {
            pid,
            first_seen_ns: ts,
            ..Life::default()
        })
    }

    fn batch(&mut self, b: &StepBatch) {
        let reset = match b.scheduler.as_ref().and_then(|s| s.prefix_cache_map) {
            Some(map) => self.prefix_map.insert(b.pid, map).is_some_and(|m| m != map),
            None => false,
        };
        let ts = b.ts_ns;
        let watched = self.preempt_watched.contains(&b.pid);
        for id in &b.preempted_req_ids {
            let life = self.life(id, b.pid, ts);
            if life.unconfirmed > 0 {
                // Seen exactly when it happened (breakpoint).
                life.unconfirmed -= 1;
                continue;
            }
            if watched {
                continue;
            }
            let (running_sec, tokens_lost) = life.preempted(ts);
            let event = Event {
                timestamp_sec: self.time.sec(ts),
                pid: b.pid,
                request_id: id.clone(),
                reason: if reset { CACHE_RESET } else { KV_EXHAUSTED },
                tokens_lost,
                running_sec,
                source: "scheduler_output",
            };
            self.events.push(event);
        }
        // Model runner V2 lists resumed requests among the new ones: a "new" request that
        // was preempted before is a resume.
        let mut resumed: Vec<&String> = b.resumed_req_ids.iter().collect();
        for new in &b.new_requests {
            let id = &new.id;
            let life = self.life(id, b.pid, ts);
            // Polls give the prompt too; a request shorter than the poll period has only this.
            if life.prompt_tokens.is_none() {
                life.prompt_tokens = new.prompt_tokens;
            }
            if life.preempted_at_ns.is_some() {
                resumed.push(id);
                continue;
            }
            life.first_scheduled_ns.get_or_insert(ts);
            life.run_start_ns = Some(ts);
        }
        for id in resumed {
            let life = self.life(id, b.pid, ts);
            life.resumes += 1;
            let delay = life.preempted_at_ns.take().map(|p| ts.saturating_sub(p));
            life.first_scheduled_ns.get_or_insert(ts);
            life.run_start_ns = Some(ts);
            if let Some(d) = delay {
                self.resume_delay.record(d);
            }
        }
        for (id, tokens) in &b.scheduled {
            let life = self.life(id, b.pid, ts);
            life.first_scheduled_ns.get_or_insert(ts);
            if life.run_start_ns.is_none() {
                // Running since before attach (or its new-request step was not read).
                life.run_start_ns = Some(ts);
            }
            life.run_tokens += tokens;
        }
        for id in &b.finished_req_ids {
            let life = self.life(id, b.pid, ts);
            life.finished_ns.get_or_insert(ts);
        }
    }

    /// A watched scheduler call: an exact preemption or arrival.
    fn call(&mut self, c: &SchedulerCall) {
        let Some(id) = &c.request_id else {
            return;
        };
        let ts = c.ts_ns;
        match c.role {
            CallRole::Preempt => {
                self.preempt_watched.insert(c.pid);
                let life = self.life(id, c.pid, ts);
                life.unconfirmed += 1;
                let (running_sec, tokens_lost) = life.preempted(ts);
                self.events.push(Event {
                    timestamp_sec: self.time.sec(ts),
                    pid: c.pid,
                    request_id: id.clone(),
                    reason: c.reason.unwrap_or(UNKNOWN),
                    tokens_lost,
                    running_sec,
                    source: "breakpoint",
                });
            }
            CallRole::AddRequest => {
                self.arrivals += 1;
                let life = self.life(id, c.pid, ts);
                life.added_ns.get_or_insert(ts);
                if life.arrival_unix.is_none() {
                    life.arrival_unix = c.arrival_time;
                }
            }
            CallRole::Schedule | CallRole::UpdateFromOutput => {}
        }
    }

    /// A poll's requests that are new or changed, and those gone from the scheduler (vLLM
    /// drops a request from `requests` when it is freed: it has finished).
    fn poll(&mut self, p: &RequestPoll) {
        let ts = p.ts_ns;
        for r in &p.changed {
            let life = self.life(&r.id, p.pid, ts);
            if life.arrival_unix.is_none() {
                life.arrival_unix = r.arrival_time;
            }
            life.status.clone_from(&r.status);
            life.prompt_tokens = Some(r.num_prompt_tokens);
            life.output_tokens = Some(r.num_output_tokens);
            if r.status == "RUNNING" {
                life.first_scheduled_ns.get_or_insert(ts);
            }
            if r.status.starts_with("FINISHED") {
                life.finished_ns.get_or_insert(ts);
            }
            match &mut life.counter {
                None => {
                    let before = r.num_preemptions.saturating_sub(life.step_preemptions);
                    life.counter = Some((before, r.num_preemptions));
                }
                Some((_, latest)) => {
                    if r.num_preemptions > *latest {
                        for _ in *latest..r.num_preemptions {
                            life.counter_grew_ns.push(ts);
                        }
                        *latest = r.num_preemptions;
                    }
                }
            }
        }
        for id in &p.gone {
            if let Some(life) = self.requests.get_mut(id) {
                life.finished_ns.get_or_insert(ts);
                if !life.status.starts_with("FINISHED") {
                    life.status = "FINISHED".to_owned();
                }
            }
        }
    }

    /// Preemptions a counter saw that no step output named, stamped at the polls that saw
    /// the counter grow (the latest growths: the step outputs cover the earlier ones).
    fn reconcile(&mut self) -> u64 {
        let mut added = 0;
        let time = self.time;
        let mut extra = Vec::new();
        for (id, life) in &self.requests {
            let Some((before, latest)) = life.counter else {
                continue;
            };
            let in_session = latest.saturating_sub(before);
            let missing = in_session.saturating_sub(life.step_preemptions) as usize;
            // Stamped at the latest growths seen (the step outputs cover the earlier ones);
            // growth before the first poll is stamped at the first sighting.
            let grew = &life.counter_grew_ns;
            let mut stamps: Vec<u64> = grew[grew.len().saturating_sub(missing)..].to_vec();
            while stamps.len() < missing {
                stamps.insert(0, life.first_seen_ns);
            }
            for ts in stamps {
                extra.push(Event {
                    timestamp_sec: time.sec(ts),
                    pid: life.pid,
                    request_id: id.clone(),
                    reason: UNKNOWN,
                    tokens_lost: None,
                    running_sec: None,
                    source: "poll",
                });
                added += 1;
            }
        }
        self.events.extend(extra);
        self.events
            .sort_by(|a, b| a.timestamp_sec.total_cmp(&b.timestamp_sec));
        added
    }
}

crate::csv_family! {
    pub struct LifecycleRow in crate::output::csv::files::REQUEST_LIFECYCLE {
    request_id: String,
    pid: u32,
    arrival_sec: Option<f64>,
    first_scheduled_sec: Option<f64>,
    queue_ms: Option<f64>,
    preemptions: u64,
    preemptions_before_attach: Option<u64>,
    resumes: u64,
    finished_sec: Option<f64>,
    final_status: String,
    prompt_tokens: Option<u64>,
    output_tokens: Option<u64>,
    e2e_sec: Option<f64>,
    added_sec: Option<f64>,
    }
}

#[derive(Serialize)]
struct Summary {
    total_preemptions: u64,
    total_requests: u64,
    preempted_requests: u64,
    preemption_rate_pct: Option<f64>,
    reasons: BTreeMap<&'static str, u64>,
    sources: BTreeMap<&'static str, u64>,
    resume_delay_ms: Option<LatencySummary>,
    running_before_preemption_ms: Option<LatencySummary>,
    tokens_lost: u64,
    finished_requests: u64,
    preemptions_before_attach: u64,
    /// Requests the engine's scheduler took during the session (`add_request` entries,
    /// seen by breakpoint; 0 when breakpoints were off).
    arrivals: u64,
    note: &'static str,
}

impl Profiler for Preemptions {
    fn families(&self) -> &'static [&'static Family] {
        &[&Event::FAMILY, &LifecycleRow::FAMILY]
    }

    fn consume(&mut self, record: &Correlated, _out: &mut dyn Sink) {
        match record {
            Correlated::Batch(b) => self.batch(b),
            Correlated::Requests(p) => self.poll(p),
            Correlated::SchedulerCall(c) => self.call(c),
            _ => {}
        }
    }

    fn finish(&mut self, out: &mut dyn Sink) -> Result<(), OutputError> {
        self.reconcile();
        let time = self.time;
        for row in &self.events {
            out.row(row);
        }
        let mut ids: Vec<&String> = self.requests.keys().collect();
        ids.sort_by_key(|id| {
            let l = &self.requests[*id];
            (l.first_seen_ns, (*id).clone())
        });
        let per_request: HashMap<&str, u64> =
            self.events.iter().fold(HashMap::new(), |mut m, e| {
                *m.entry(e.request_id.as_str()).or_default() += 1;
                m
            });
        let rows = ids.iter().map(|id| {
            let l = &self.requests[*id];
            let arrival_sec = l.arrival_unix.map(|a| time.unix_sec(a));
            let first = l.first_scheduled_ns.map(|t| time.sec(t));
            let finished = l.finished_ns.map(|t| time.sec(t));
            LifecycleRow {
                request_id: (*id).clone(),
                pid: l.pid,
                arrival_sec,
                first_scheduled_sec: first,
                queue_ms: arrival_sec
                    .zip(first)
                    .map(|(a, f)| ((f - a) * 1e6).round() / 1e3)
                    .filter(|q| *q >= 0.0),
                preemptions: per_request.get(id.as_str()).copied().unwrap_or(0),
                preemptions_before_attach: l.counter.map(|(first, _)| first),
                resumes: l.resumes,
                finished_sec: finished,
                final_status: l.status.clone(),
                prompt_tokens: l.prompt_tokens,
                output_tokens: l.output_tokens,
                e2e_sec: arrival_sec
                    .zip(finished)
                    .map(|(a, f)| ((f - a) * 1e6).round() / 1e6),
                added_sec: l.added_ns.map(|t| time.sec(t)),
            }
        });
        for row in rows {
            out.row(&row);
        }

        let mut reasons = BTreeMap::new();
        let mut sources = BTreeMap::new();
        let mut running = Latency::default();
        let mut tokens_lost = 0;
        for e in &self.events {
            *reasons.entry(e.reason).or_insert(0) += 1;
            *sources.entry(e.source).or_insert(0) += 1;
            if let Some(r) = e.running_sec {
                running.record((r * 1e9) as u64);
            }
            tokens_lost += e.tokens_lost.unwrap_or(0);
        }
        let total_requests = self.requests.len() as u64;
        let total = self.events.len() as u64;
        let summary = Summary {
            total_preemptions: total,
            total_requests,
            preempted_requests: per_request.len() as u64,
            preemption_rate_pct: (total_requests > 0)
                .then(|| (10_000.0 * total as f64 / total_requests as f64).round() / 100.0),
            reasons,
            sources,
            resume_delay_ms: self.resume_delay.summary(),
            running_before_preemption_ms: running.summary(),
            tokens_lost,
            finished_requests: self
                .requests
                .values()
                .filter(|l| l.finished_ns.is_some())
                .count() as u64,
            preemptions_before_attach: self
                .requests
                .values()
                .filter_map(|l| l.counter.map(|(first, _)| first))
                .sum(),
            arrivals: self.arrivals,
            note: "preemptions seen in the session: each entry of Scheduler._preempt_request (source breakpoint: a hardware breakpoint, exact time, reason from its caller), else each step's SchedulerOutput.preempted_req_ids (source scheduler_output, stamped at the step), plus growth of a request's num_preemptions between polls that no step output named (source poll, stamped at the poll); reason cache_reset when the prefix cache was replaced since the previous step, else kv_cache_exhausted; tokens_lost = tokens scheduled for the request since it last started running; preemption_rate_pct = preemptions per 100 requests",
        };
        out.summary(crate::output::csv::files::PREEMPTION_SUMMARY, &summary)?;
        Ok(())
    }
}
