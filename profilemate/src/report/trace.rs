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
//! Events are written as they are made; only a 32-byte key per span is kept (for its lane),
//! so a 30-minute session (500k steps, ~250 MB of trace) needs tens of MB, not gigabytes.
//!
//! Owns: the events, their tracks and lanes. Does not own: the files it reads (`Model`).

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
};

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use super::{Completion, Method, Model};

/// Synthetic track ids start here (above any Linux tid: pid_max is at most 2^22).
const SYNTHETIC: u64 = 1 << 30;

/// What a span shows: the model row it comes from.
#[derive(Clone, Copy)]
enum Source {
    /// `m.steps[i]` on a GPU track.
    Gpu(u32),
    /// `m.steps[i]`'s launch on its thread.
    Launch(u32),
    /// `m.gc[i]`.
    Gc(u32),
}

/// A complete span before its lane is known.
struct Span {
    pid: u32,
    track: u64,
    ts: f64,
    dur: f64,
    source: Source,
}

/// One trace event.
#[derive(Serialize)]
struct Ev<'a, A: Serialize> {
    ph: &'static str,
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    cat: &'static str,
    ts: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dur: Option<f64>,
    pid: u32,
    tid: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    s: Option<&'static str>,
    args: A,
}

impl<'a, A: Serialize> Ev<'a, A> {
    fn new(
        ph: &'static str,
        cat: &'static str,
        name: &'a str,
        ts: f64,
        pid: u32,
        tid: u64,
        args: A,
    ) -> Self {
        Self {
            ph,
            name,
            cat,
            ts: us(ts),
            dur: None,
            pid,
            tid,
            id: None,
            s: None,
            args,
        }
    }
}

/// The trace being written.
struct Trace<'w> {
    out: &'w mut dyn Write,
    events: usize,
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

impl<'w> Trace<'w> {
    fn new(out: &'w mut dyn Write) -> Self {
        Self {
            out,
            events: 0,
            spans: Vec::new(),
            tracks: BTreeMap::new(),
            named: HashMap::new(),
            next_synthetic: SYNTHETIC,
        }
    }

    fn emit<A: Serialize>(&mut self, e: &Ev<A>) -> Result<()> {
        self.out
            .write_all(if self.events == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut *self.out, e)?;
        self.events += 1;
        Ok(())
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
        if e.is_empty() || (e.starts_with("thread ") && !name.is_empty()) {
            *e = if name.is_empty() {
                format!("thread {tid}")
            } else {
                format!("{name} ({tid})")
            };
        }
    }

    /// Assigns lanes (no partial overlap on a track) and writes the spans.
    fn write_spans(&mut self, m: &Model) -> Result<()> {
        let mut spans = std::mem::take(&mut self.spans);
        spans.sort_by(|a, b| {
            (a.pid, a.track)
                .cmp(&(b.pid, b.track))
                .then(a.ts.total_cmp(&b.ts))
        });
        let mut lanes: HashMap<(u32, u64), Vec<(u64, f64)>> = HashMap::new();
        for s in spans {
            let free = lanes
                .entry((s.pid, s.track))
                .or_insert_with(|| vec![(s.track, f64::NEG_INFINITY)]);
            let lane = if let Some(i) = free.iter().position(|(_, end)| *end <= s.ts) {
                i
            } else {
                let t = self.next_synthetic;
                self.next_synthetic += 1;
                let base = self
                    .tracks
                    .get(&(s.pid, s.track))
                    .cloned()
                    .unwrap_or_default();
                self.tracks
                    .insert((s.pid, t), format!("{base} (overlap {})", free.len()));
                free.push((t, f64::NEG_INFINITY));
                free.len() - 1
            };
            free[lane].1 = s.ts + s.dur;
            let tid = free[lane].0;
            self.write_span(m, &s, tid)?;
        }
        Ok(())
    }

    fn write_span(&mut self, m: &Model, s: &Span, tid: u64) -> Result<()> {
        let x = |ev: &mut Ev<_>| ev.dur = Some(us(s.dur));
        match s.source {
            Source::Gpu(i) => {
                let st = &m.steps[i as usize];
                let kind = match st.completion {
                    Completion::Exact => "exact",
                    Completion::Bracketed => "bracketed",
                    Completion::UpperBound => "upper_bound",
                };
                let name = format!("step {} {}", st.step, st.phase);
                let mut ev = Ev::new(
                    "X",
                    "gpu",
                    &name,
                    s.ts,
                    s.pid,
                    tid,
                    json!({"completion": kind, "lower_ms": st.lower_ms, "tokens": st.tokens}),
                );
                x(&mut ev);
                self.emit(&ev)
            }
            Source::Launch(i) => {
                let name = format!("launch {}", m.steps[i as usize].step);
                let mut ev = Ev::new("X", "launch", &name, s.ts, s.pid, tid, json!({}));
                x(&mut ev);
                self.emit(&ev)
            }
            Source::Gc(i) => {
                let name = format!("gc gen {}", m.gc[i as usize].generation);
                let mut ev = Ev::new("X", "gc", &name, s.ts, s.pid, tid, json!({}));
                x(&mut ev);
                self.emit(&ev)
            }
        }
    }

    fn metadata(&mut self, m: &Model) -> Result<()> {
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
            self.emit(&Ev::new(
                "M",
                "",
                "process_name",
                0.0,
                pid,
                0,
                json!({"name": name}),
            ))?;
        }
        let tracks = std::mem::take(&mut self.tracks);
        for ((pid, tid), name) in tracks {
            // Synthetic tracks (GPU, scheduler) above the threads.
            let order = if tid >= SYNTHETIC {
                tid - SYNTHETIC
            } else {
                SYNTHETIC + tid
            };
            self.emit(&Ev::new(
                "M",
                "",
                "thread_name",
                0.0,
                pid,
                tid,
                json!({"name": name}),
            ))?;
            self.emit(&Ev::new(
                "M",
                "",
                "thread_sort_index",
                0.0,
                pid,
                tid,
                json!({"sort_index": order}),
            ))?;
        }
        Ok(())
    }
}

fn steps(tr: &mut Trace, m: &Model) -> Result<()> {
    for (i, s) in m.steps.iter().enumerate() {
        let track_name = match s.completion {
            Completion::Exact => "GPU steps (exact completion)",
            Completion::Bracketed | Completion::UpperBound => "GPU steps (completion bounded)",
        };
        let gpu = tr.synthetic(s.pid, track_name);
        tr.spans.push(Span {
            pid: s.pid,
            track: gpu,
            ts: s.gpu_start,
            dur: (s.completion_sec - s.gpu_start).max(0.0),
            source: Source::Gpu(i as u32),
        });
        tr.thread(s.pid, s.tid, "");
        tr.spans.push(Span {
            pid: s.pid,
            track: u64::from(s.tid),
            ts: s.t,
            dur: s.launch_ms.max(0.0) / 1e3,
            source: Source::Launch(i as u32),
        });
    }
    for r in &m.replays {
        tr.thread(r.pid, r.tid, "");
        let name = format!("graph {}", r.graph);
        let mut ev = Ev::new(
            "i",
            "graph_replay",
            &name,
            r.t,
            r.pid,
            u64::from(r.tid),
            json!({}),
        );
        ev.s = Some("t");
        tr.emit(&ev)?;
    }
    Ok(())
}

fn python(tr: &mut Trace, m: &Model) -> Result<()> {
    for r in &m.cpu {
        tr.thread(r.pid, r.tid, m.name(r.thread));
    }
    for (i, g) in m.gc.iter().enumerate() {
        tr.thread(g.pid, g.tid, "");
        tr.spans.push(Span {
            pid: g.pid,
            track: u64::from(g.tid),
            ts: g.t,
            dur: g.ms.max(0.0) / 1e3,
            source: Source::Gc(i as u32),
        });
    }
    cpu_counters(tr, m)
}

/// Sampled CPU time per operation per step: one counter per thread, one event per step.
fn cpu_counters(tr: &mut Trace, m: &Model) -> Result<()> {
    let mut rows: Vec<u32> = (0..m.cpu.len() as u32)
        .filter(|&i| {
            m.cpu[i as usize].method == Method::Sampled && m.cpu[i as usize].step.is_some()
        })
        .collect();
    let key = |i: &u32| {
        let r = &m.cpu[*i as usize];
        (r.pid, r.tid, r.step)
    };
    rows.sort_by_key(key);
    let mut ops: HashMap<(u32, u32), Vec<u32>> = HashMap::new();
    for &i in &rows {
        let r = &m.cpu[i as usize];
        let known = ops.entry((r.pid, r.tid)).or_default();
        if !known.contains(&r.op) {
            known.push(r.op);
        }
    }
    for group in rows.chunk_by(|a, b| key(a) == key(b)) {
        let first = &m.cpu[group[0] as usize];
        let t = group
            .iter()
            .map(|i| m.cpu[*i as usize].start)
            .fold(f64::INFINITY, f64::min);
        let all = ops
            .get(&(first.pid, first.tid))
            .map_or(&[][..], Vec::as_slice);
        let args: serde_json::Map<String, serde_json::Value> = all
            .iter()
            .map(|op| {
                let ms: f64 = group
                    .iter()
                    .map(|i| &m.cpu[*i as usize])
                    .filter(|r| r.op == *op)
                    .map(|r| r.ms)
                    .sum();
                (m.name(*op).to_owned(), json!(ms))
            })
            .collect();
        let name = format!("CPU ms per step (sampled), thread {}", first.tid);
        tr.emit(&Ev::new(
            "C",
            "cpu",
            &name,
            t,
            first.pid,
            u64::from(first.tid),
            args,
        ))?;
    }
    Ok(())
}

fn scheduler(tr: &mut Trace, m: &Model) -> Result<()> {
    for p in &m.preemptions {
        let track = tr.synthetic(p.pid, "scheduler: preemptions");
        let name = format!("preempt {}", p.request);
        let mut ev = Ev::new(
            "i",
            "preemption",
            &name,
            p.t,
            p.pid,
            track,
            json!({"request_id": p.request, "reason": p.reason}),
        );
        ev.s = Some("t");
        tr.emit(&ev)?;
    }
    let end = m.duration();
    for (i, r) in m.requests.iter().enumerate() {
        let track = tr.synthetic(r.pid, "requests");
        // A request that arrived before the attach starts at the session's start (its
        // arrival is in the args): some viewers drop negative timestamps.
        let start = r
            .arrival
            .or(r.first_scheduled)
            .or(r.finished)
            .unwrap_or(0.0)
            .max(0.0);
        let stop = r.finished.unwrap_or(end).max(start);
        let name = format!("request {}", r.id);
        let mut b = Ev::new(
            "b",
            "request",
            &name,
            start,
            r.pid,
            track,
            json!({"arrival_sec": r.arrival, "first_scheduled_sec": r.first_scheduled, "finished_sec": r.finished, "final_status": r.status, "preemptions": r.preemptions}),
        );
        b.id = Some(i);
        tr.emit(&b)?;
        let mut e = Ev::new("e", "request", &name, stop, r.pid, track, json!({}));
        e.id = Some(i);
        tr.emit(&e)?;
    }
    Ok(())
}

/// Writes the trace of `m` to `out`.
///
/// # Errors
///
/// A write failed.
pub fn write(m: &Model, out: &mut dyn Write) -> Result<()> {
    out.write_all(b"{\"displayTimeUnit\":\"ms\",\"otherData\":")?;
    serde_json::to_writer(
        &mut *out,
        &json!({"tracer": "profilemate", "version": crate::VERSION, "clock": "session seconds (metadata.json monotonic_start_ns = 0)", "start_time": m.meta["start_time"]}),
    )?;
    out.write_all(b",\"traceEvents\":[")?;
    let mut tr = Trace::new(out);
    steps(&mut tr, m)?;
    python(&mut tr, m)?;
    scheduler(&mut tr, m)?;
    tr.write_spans(m)?;
    tr.metadata(m)?;
    tr.out.write_all(b"\n]}\n")?;
    Ok(())
}

/// The trace of `m` as JSON bytes (tests).
///
/// # Errors
///
/// Serialization failed.
pub fn to_json(m: &Model) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write(m, &mut out)?;
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
        let v: serde_json::Value =
            serde_json::from_slice(&to_json(&m).expect("json")).expect("parse");
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
