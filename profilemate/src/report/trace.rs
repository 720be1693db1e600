//! trace.json: the session in Chrome's trace event format (Perfetto and chrome://tracing
//! open it), on one clock: every timestamp is session seconds (as microseconds), so the
//! processes line up.
//!
//! Tracks, per process: GPU steps (exact completions on one track, upper bounds and
//! bracketed ones on another: their spans end at the bound), each thread with its step
//! launches, graph replays and GC pauses, a scheduler track with the preemptions, requests
//! as async spans (arrival to finish), and a counter per thread of sampled CPU time per
//! vLLM operation per step. The session has no per-call CUDA records, so CUDA activity is
//! shown as the per-step launch spans.
//!
//! Complete (`X`) spans on one track must not overlap partially: spans that would are moved
//! to an overflow lane of the same track (upper-bound GPU spans overlap the next step's
//! start under async scheduling).
//!
//! Owns: the event list and its lanes. Does not own: the files it reads (`Model`).

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use serde_json::{json, Value};

use super::{Completion, Method, Model};

/// Synthetic track ids start here (above any Linux tid: pid_max is at most 2^22).
const SYNTHETIC: u64 = 1 << 30;

/// One complete span before lanes are assigned.
struct Span {
    pid: u32,
    track: u64,
    name: String,
    cat: &'static str,
    ts: f64,
    dur: f64,
    args: Value,
}

/// The trace being built.
struct Trace {
    events: Vec<Value>,
    spans: Vec<Span>,
    /// (pid, track) -> name.
    tracks: BTreeMap<(u32, u64), String>,
    /// (pid, name) -> synthetic track.
    named: HashMap<(u32, String), u64>,
    next_synthetic: u64,
}

fn us(sec: f64) -> f64 {
    (sec * 1e9).round() / 1e3
}

impl Trace {
    fn new() -> Self {
        Self {
            events: Vec::new(),
            spans: Vec::new(),
            tracks: BTreeMap::new(),
            named: HashMap::new(),
            next_synthetic: SYNTHETIC,
        }
    }

    /// A named synthetic track of `pid`.
    fn synthetic(&mut self, pid: u32, name: &str) -> u64 {
        if let Some(&t) = self.named.get(&(pid, name.to_owned())) {
            return t;
        }
        let t = self.next_synthetic;
        self.next_synthetic += 1;
        self.tracks.insert((pid, t), name.to_owned());
        self.named.insert((pid, name.to_owned()), t);
        t
    }

    fn thread(&mut self, pid: u32, tid: u32, name: &str) {
        let e = self.tracks.entry((pid, u64::from(tid))).or_default();
        if e.is_empty() || e.starts_with("thread ") {
            *e = if name.is_empty() {
                format!("thread {tid}")
            } else {
                format!("{name} ({tid})")
            };
        }
    }

    fn span(&mut self, s: Span) {
        self.spans.push(s);
    }

    fn instant(&mut self, pid: u32, tid: u64, name: String, cat: &str, t: f64, args: Value) {
        self.events.push(json!({"ph": "i", "s": "t", "name": name, "cat": cat, "ts": us(t), "pid": pid, "tid": tid, "args": args}));
    }

    /// Assigns lanes (no partial overlap on a track) and emits the spans.
    fn lay_out_spans(&mut self) {
        let mut spans = std::mem::take(&mut self.spans);
        spans.sort_by(|a, b| {
            (a.pid, a.track)
                .cmp(&(b.pid, b.track))
                .then(a.ts.total_cmp(&b.ts))
        });
        let mut lanes: HashMap<(u32, u64), Vec<(u64, f64)>> = HashMap::new();
        for s in spans {
            let base = self
                .tracks
                .get(&(s.pid, s.track))
                .cloned()
                .unwrap_or_default();
            let free = lanes
                .entry((s.pid, s.track))
                .or_insert_with(|| vec![(s.track, f64::NEG_INFINITY)]);
            let lane = match free.iter().position(|(_, end)| *end <= s.ts) {
                Some(i) => i,
                None => {
                    let t = self.next_synthetic;
                    self.next_synthetic += 1;
                    self.tracks
                        .insert((s.pid, t), format!("{base} (overlap {})", free.len()));
                    free.push((t, f64::NEG_INFINITY));
                    free.len() - 1
                }
            };
            free[lane].1 = s.ts + s.dur;
            let tid = free[lane].0;
            self.events.push(json!({"ph": "X", "name": s.name, "cat": s.cat, "ts": us(s.ts), "dur": us(s.dur), "pid": s.pid, "tid": tid, "args": s.args}));
        }
    }

    fn metadata(&mut self, m: &Model) {
        let mut names: BTreeMap<u32, String> = BTreeMap::new();
        for t in m.meta["targets"].as_array().into_iter().flatten() {
            if let Some(pid) = t["pid"].as_u64() {
                let comm = t["comm"].as_str().unwrap_or("?");
                names.insert(pid as u32, format!("{comm} ({pid})"));
            }
        }
        let pids: Vec<u32> = self.tracks.keys().map(|(p, _)| *p).collect();
        for pid in pids {
            names.entry(pid).or_insert_with(|| format!("pid {pid}"));
        }
        for (pid, name) in names {
            self.events.push(json!({"ph": "M", "name": "process_name", "ts": 0, "pid": pid, "tid": 0, "args": {"name": name}}));
        }
        for (&(pid, tid), name) in &self.tracks {
            // Synthetic tracks (GPU, scheduler) above the threads.
            let order = if tid >= SYNTHETIC {
                tid - SYNTHETIC
            } else {
                SYNTHETIC + tid
            };
            self.events.push(json!({"ph": "M", "name": "thread_name", "ts": 0, "pid": pid, "tid": tid, "args": {"name": name}}));
            self.events.push(json!({"ph": "M", "name": "thread_sort_index", "ts": 0, "pid": pid, "tid": tid, "args": {"sort_index": order}}));
        }
    }
}

fn steps(tr: &mut Trace, m: &Model) {
    for s in &m.steps {
        let (track_name, kind) = match s.completion {
            Completion::Exact => ("GPU steps (exact completion)", "exact"),
            Completion::Bracketed => ("GPU steps (completion bounded)", "bracketed"),
            Completion::UpperBound => ("GPU steps (completion bounded)", "upper_bound"),
        };
        let gpu = tr.synthetic(s.pid, track_name);
        tr.span(Span {
            pid: s.pid,
            track: gpu,
            name: format!("step {} ({})", s.step, s.phase),
            cat: "gpu",
            ts: s.gpu_start,
            dur: (s.completion_sec - s.gpu_start).max(0.0),
            args: json!({"step": s.step, "completion": kind, "forward_time_ms": s.gpu_ms, "gpu_time_lower_ms": s.lower_ms, "gpu_done_before_wait": s.done_before_wait, "tokens": s.tokens}),
        });
        tr.thread(s.pid, s.tid, "");
        tr.span(Span {
            pid: s.pid,
            track: u64::from(s.tid),
            name: format!("launch step {}", s.step),
            cat: "launch",
            ts: s.t,
            dur: s.launch_ms.max(0.0) / 1e3,
            args: json!({"step": s.step, "graph_replays": s.graph_launches}),
        });
    }
    for r in &m.replays {
        tr.thread(r.pid, r.tid, "");
        tr.instant(
            r.pid,
            u64::from(r.tid),
            format!("graph {} replay", r.graph),
            "graph_replay",
            r.t,
            json!({"graph_id": r.graph}),
        );
    }
}

/// A thread's step: its first sampled record, and the sampled ms per operation.
type StepCpu = (f64, BTreeMap<u32, f64>);

fn python(tr: &mut Trace, m: &Model) {
    for r in &m.cpu {
        tr.thread(r.pid, r.tid, m.name(r.thread));
    }
    for g in &m.gc {
        tr.thread(g.pid, g.tid, "");
        tr.span(Span {
            pid: g.pid,
            track: u64::from(g.tid),
            name: format!("gc gen {}", g.generation),
            cat: "gc",
            ts: g.t,
            dur: g.ms.max(0.0) / 1e3,
            args: json!({"generation": g.generation, "duration_ms": g.ms}),
        });
    }
    // Sampled CPU time per operation per step: one counter per thread.
    let mut per_step: BTreeMap<(u32, u32, u64), StepCpu> = BTreeMap::new();
    let mut ops: BTreeMap<(u32, u32), Vec<u32>> = BTreeMap::new();
    for r in m.cpu.iter().filter(|r| r.method == Method::Sampled) {
        let Some(step) = r.step else { continue };
        let e = per_step
            .entry((r.pid, r.tid, step))
            .or_insert((r.start, BTreeMap::new()));
        e.0 = e.0.min(r.start);
        *e.1.entry(r.op).or_default() += r.ms;
        let known = ops.entry((r.pid, r.tid)).or_default();
        if !known.contains(&r.op) {
            known.push(r.op);
        }
    }
    for ((pid, tid, _), (t, by_op)) in per_step {
        let all = ops.get(&(pid, tid)).map_or(&[][..], Vec::as_slice);
        let args: serde_json::Map<String, Value> = all
            .iter()
            .map(|op| {
                (
                    m.name(*op).to_owned(),
                    json!(by_op.get(op).copied().unwrap_or(0.0)),
                )
            })
            .collect();
        tr.events.push(json!({"ph": "C", "name": format!("CPU ms per step (sampled), thread {tid}"), "cat": "cpu", "ts": us(t), "pid": pid, "tid": tid, "args": args}));
    }
}

fn scheduler(tr: &mut Trace, m: &Model) {
    for p in &m.preemptions {
        let track = tr.synthetic(p.pid, "scheduler: preemptions");
        tr.instant(
            p.pid,
            track,
            format!("preempt {}", p.request),
            "preemption",
            p.t,
            json!({"request_id": p.request, "reason": p.reason}),
        );
    }
    let end = m.duration();
    for (i, r) in m.requests.iter().enumerate() {
        let track = tr.synthetic(r.pid, "requests");
        let start = r
            .arrival
            .or(r.first_scheduled)
            .or(r.finished)
            .unwrap_or(0.0);
        let stop = r.finished.unwrap_or(end).max(start);
        let args = json!({"request_id": r.id, "arrival_sec": r.arrival, "first_scheduled_sec": r.first_scheduled, "finished_sec": r.finished, "final_status": r.status, "preemptions": r.preemptions});
        let name = format!("request {}", r.id);
        tr.events.push(json!({"ph": "b", "name": name, "cat": "request", "id": i, "ts": us(start), "pid": r.pid, "tid": track, "args": args}));
        tr.events.push(json!({"ph": "e", "name": name, "cat": "request", "id": i, "ts": us(stop), "pid": r.pid, "tid": track}));
    }
}

/// The trace of `m` as JSON bytes.
///
/// # Errors
///
/// Serialization failed.
pub fn to_json(m: &Model) -> Result<Vec<u8>> {
    let mut tr = Trace::new();
    steps(&mut tr, m);
    python(&mut tr, m);
    scheduler(&mut tr, m);
    tr.lay_out_spans();
    tr.metadata(m);
    let mut out = Vec::with_capacity(tr.events.len() * 160);
    out.extend_from_slice(b"{\"displayTimeUnit\":\"ms\",\"otherData\":");
    serde_json::to_writer(
        &mut out,
        &json!({"tracer": "profilemate", "version": crate::VERSION, "clock": "session seconds (metadata.json monotonic_start_ns = 0)", "start_time": m.meta["start_time"]}),
    )?;
    out.extend_from_slice(b",\"traceEvents\":[\n");
    for (i, e) in tr.events.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",\n");
        }
        serde_json::to_writer(&mut out, e)?;
    }
    out.extend_from_slice(b"\n]}\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Gc, Preemption, Request, Step};

    fn step(n: u64, start: f64, end: f64, c: Completion) -> Step {
        Step {
            step: n,
            t: start,
            pid: 7,
            tid: 7,
            phase: "decode".into(),
            tokens: Some(4.0),
            gpu_ms: (end - start) * 1e3,
            lower_ms: 0.0,
            launch_ms: 1.0,
            completion: c,
            done_before_wait: false,
            gpu_start: start,
            completion_sec: end,
            graph_launches: 0,
            graph_ids: vec![],
            padded: None,
        }
    }

    #[test]
    fn overlapping_bound_spans_get_lanes_and_every_event_is_well_formed() {
        let m = Model {
            steps: vec![
                step(0, 1.0, 1.010, Completion::UpperBound),
                step(1, 1.005, 1.020, Completion::UpperBound),
                step(2, 1.030, 1.040, Completion::Exact),
            ],
            gc: vec![Gc {
                t: 1.0005,
                pid: 7,
                tid: 7,
                generation: 2,
                ms: 2.0,
            }],
            preemptions: vec![Preemption {
                t: 1.2,
                pid: 7,
                request: "\"r\"".into(),
                reason: "kv_cache_exhausted".into(),
            }],
            requests: vec![Request {
                id: "r".into(),
                pid: 7,
                arrival: Some(0.5),
                first_scheduled: None,
                finished: None,
                status: String::new(),
                preemptions: 1,
            }],
            ..Model::default()
        };
        let v: Value = serde_json::from_slice(&to_json(&m).expect("json")).expect("parse");
        let events = v["traceEvents"].as_array().expect("events");
        for e in events {
            for k in ["ph", "ts", "pid", "tid"] {
                assert!(!e[k].is_null(), "{k} missing in {e}");
            }
        }
        let x = |cat: &str| {
            events
                .iter()
                .filter(|e| e["ph"] == "X" && e["cat"] == cat)
                .count()
        };
        assert_eq!((x("gpu"), x("launch"), x("gc")), (3, 3, 1));
        // No two spans of one track overlap partially.
        let mut by_track: BTreeMap<(u64, u64), Vec<(f64, f64)>> = BTreeMap::new();
        for e in events.iter().filter(|e| e["ph"] == "X") {
            let ts = e["ts"].as_f64().expect("ts");
            let dur = e["dur"].as_f64().expect("dur");
            assert!(dur >= 0.0);
            by_track
                .entry((
                    e["pid"].as_u64().expect("pid"),
                    e["tid"].as_u64().expect("tid"),
                ))
                .or_default()
                .push((ts, ts + dur));
        }
        for spans in by_track.values_mut() {
            spans.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "{spans:?}");
        }
        let names: Vec<&str> = events
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .filter_map(|e| e["args"]["name"].as_str())
            .collect();
        assert!(
            names.contains(&"GPU steps (completion bounded) (overlap 1)"),
            "{names:?}"
        );
        // The unfinished request ends at the session end.
        let b = events.iter().filter(|e| e["ph"] == "b").count();
        let e = events.iter().filter(|e| e["ph"] == "e").count();
        assert_eq!((b, e), (1, 1));
    }
}
