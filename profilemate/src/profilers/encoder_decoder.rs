//! encoder_decoder_timing.csv (one row per step that ran a multimodal / Whisper encoder,
//! streamed) and encoder_decoder_summary.json.
//!
//! The encoder's kernels run on the same stream as the decoder's, in the same step, so the
//! GPU time of one cannot be separated from the other without timing events inside the
//! target. What is measured: per step, the CPU time the encoder and the decoder forward
//! spent launching (first to last walked CUDA call under each), the encoder inputs the
//! step's `SchedulerOutput` scheduled, and the step's GPU time; the summary compares the
//! GPU time of steps with and without encoder work.
//!
//! Owns computing those rows and summaries from the correlated records; not writing them
//! (the sinks: `output::csv` names the files and writes them) nor the records themselves.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use super::{keep_recent, launched_in, Emitted, Profiler};
use crate::output::{
    csv::{Family, FamilyRow},
    sink::Sink,
};
use crate::{
    correlate::{Correlated, PyStack, Step},
    output::{
        ms,
        summary::{Latency, LatencySummary},
        OutputError, TimeBase,
    },
    probes::drain::StackReason,
    vllm::{batch::StepBatch, ops::Operation},
};

/// CUDA-call stacks and batches kept per thread until their step completes.
const KEPT: usize = 512;

crate::csv_family! {
    pub struct Row in crate::output::csv::files::ENCODER_DECODER_TIMING {
    step: u64,
    timestamp_sec: f64,
    pid: u32,
    phase: &'static str,
    encoder_inputs: Option<u64>,
    encoder_cpu_ms: f64,
    decoder_cpu_ms: f64,
    encoder_share_pct: Option<f64>,
    forward_time_ms: f64,
    }
}

#[derive(Serialize)]
struct Summary {
    steps: u64,
    steps_with_encoder: u64,
    encoder_inputs: u64,
    encoder_cpu_ms: f64,
    decoder_cpu_ms: f64,
    encoder_cpu_share_pct: Option<f64>,
    forward_time_with_encoder_ms: Option<LatencySummary>,
    forward_time_without_encoder_ms: Option<LatencySummary>,
    note: &'static str,
}

/// (time, encoder inputs, phase) of a step batch.
type BatchMark = (u64, u64, &'static str);

/// The encoder/decoder profiler.
pub struct EncoderDecoder {
    emitted: Emitted,
    time: TimeBase,
    calls: HashMap<(u32, u32), VecDeque<(u64, Operation)>>,
    /// (pid, tid) -> (time, encoder inputs, phase) of recent batches.
    batches: HashMap<(u32, u32), VecDeque<BatchMark>>,
    steps: u64,
    with_encoder: u64,
    inputs: u64,
    encoder_ns: u64,
    decoder_ns: u64,
    gpu_with: Latency,
    gpu_without: Latency,
}

impl EncoderDecoder {
    /// A profiler stamping rows with `time`.
    pub fn new(time: TimeBase) -> Self {
        Self {
            emitted: Emitted::default(),
            time,
            calls: HashMap::new(),
            batches: HashMap::new(),
            steps: 0,
            with_encoder: 0,
            inputs: 0,
            encoder_ns: 0,
            decoder_ns: 0,
            gpu_with: Latency::default(),
            gpu_without: Latency::default(),
        }
    }

    fn stack(&mut self, st: &PyStack) {
        if !matches!(st.reason, StackReason::CudaCall(_)) {
            return;
        }
        keep_recent(&mut self.calls, (st.pid, st.tid), (st.ts_ns, st.op), KEPT);
    }

    fn batch(&mut self, b: &StepBatch) {
        let mark = (b.ts_ns, b.encoder_inputs, b.phase.as_str());
        keep_recent(&mut self.batches, (b.pid, b.tid), mark, KEPT);
    }

    fn step(&mut self, s: &Step) {
        let inside = |ts: u64| ts >= s.start_ns && ts <= s.launch_end_ns;
        let calls: Vec<(u64, Operation)> = self
            .calls
            .get(&(s.pid, s.tid))
            .into_iter()
            .flatten()
            .filter(|(t, _)| inside(*t))
            .copied()
            .collect();
        // Walked calls are the step's boundaries: the encoder spans from its first call to
        // the next call outside it, the decoder from its first call to the step's launch end.
        let encoder = calls
            .iter()
            .position(|(_, o)| *o == Operation::Encoder)
            .map(|i| {
                let start = calls[i].0;
                let end = calls[i..]
                    .iter()
                    .find(|(_, o)| *o != Operation::Encoder)
                    .map_or(s.launch_end_ns, |(t, _)| *t);
                end.saturating_sub(start)
            });
        let decoder = calls
            .iter()
            .find(|(_, o)| *o == Operation::ModelForward)
            .map_or(0, |(t, _)| s.launch_end_ns.saturating_sub(*t));
        let batch = launched_in(&self.batches, s, |b| b.0);
        let inputs = batch.map(|b| b.1);
        self.steps += 1;
        let has_encoder = encoder.is_some() || inputs.unwrap_or(0) > 0;
        if has_encoder {
            self.gpu_with.record(s.forward_ns());
        } else {
            self.gpu_without.record(s.forward_ns());
        }
        // Trim what this and earlier steps used.
        for q in self.calls.values_mut() {
            while q.front().is_some_and(|(t, _)| *t < s.start_ns) {
                q.pop_front();
            }
        }
        if !has_encoder {
            return;
        }
        let encoder = encoder.unwrap_or(0);
        self.with_encoder += 1;
        self.inputs += inputs.unwrap_or(0);
        self.encoder_ns += encoder;
        self.decoder_ns += decoder;
        let both = encoder + decoder;
        self.emitted.push(Row {
            step: s.index,
            timestamp_sec: self.time.sec(s.start_ns),
            pid: s.pid,
            phase: batch.map_or("unknown", |b| b.2),
            encoder_inputs: inputs,
            encoder_cpu_ms: ms(encoder),
            decoder_cpu_ms: ms(decoder),
            encoder_share_pct: (both > 0)
                .then(|| (10_000.0 * encoder as f64 / both as f64).round() / 100.0),
            forward_time_ms: ms(s.forward_ns()),
        });
    }
}

impl EncoderDecoder {
    /// One record: its rows go to `emitted`.
    fn take(&mut self, record: &Correlated) {
        match record {
            Correlated::PyStack(st) => self.stack(st),
            Correlated::Batch(b) => self.batch(b),
            Correlated::Step(s) => self.step(s),
            _ => {}
        }
    }
}

impl Profiler for EncoderDecoder {
    fn families(&self) -> &'static [&'static Family] {
        &[&Row::FAMILY]
    }

    fn consume(&mut self, record: &Correlated, out: &mut dyn Sink) {
        self.take(record);
        self.emitted.drain_to(out);
    }

    fn finish(&mut self, out: &mut dyn Sink) -> Result<(), OutputError> {
        let both = self.encoder_ns + self.decoder_ns;
        let summary = Summary {
            steps: self.steps,
            steps_with_encoder: self.with_encoder,
            encoder_inputs: self.inputs,
            encoder_cpu_ms: ms(self.encoder_ns),
            decoder_cpu_ms: ms(self.decoder_ns),
            encoder_cpu_share_pct: (both > 0)
                .then(|| (10_000.0 * self.encoder_ns as f64 / both as f64).round() / 100.0),
            forward_time_with_encoder_ms: self.gpu_with.summary(),
            forward_time_without_encoder_ms: self.gpu_without.summary(),
            note: if self.with_encoder == 0 {
                "no encoder work was seen (a decoder-only model, or no multimodal / audio input in the session)"
            } else {
                "encoder and decoder kernels share the step's stream: their GPU times are not separable from outside; encoder_cpu_ms = from the encoder's first walked CUDA call (EncoderRunner.execute_mm_encoder) to the step's next walked call outside it; decoder_cpu_ms = from the model forward's first walked call to the step's launch end; compare forward_time_with/without_encoder for the GPU cost of encoder steps"
            },
        };
        out.summary(crate::output::csv::files::ENCODER_DECODER_SUMMARY, &summary)?;
        self.emitted.drain_to(out);
        Ok(())
    }
}
