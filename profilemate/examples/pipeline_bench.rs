//! Userspace pipeline throughput: decode + correlate + profile synthetic vLLM-like probe
//! records (what the ring buffer delivers), single thread, through the session's own
//! pipeline wiring (`session::pipeline::Pipeline::wire`).
//! Run by `cargo xtask bench`; prints `pipeline_events_per_sec=` and `pipeline_ns_per_event=`.

use std::time::Instant;

use profilemate::{
    config::TimingMode,
    output::{
        csv::Files,
        sink::{Sink, Sinks},
        SessionDir, TimeBase,
    },
    probes::drain::{decode, encode, CallEvent, CallPhase, Record},
    profilers,
    session::pipeline::Pipeline,
    vllm::bundle,
};
use profilemate_common::{ApiId, CudaCallRecord};

fn record_bytes(ev: &CallEvent) -> Vec<u8> {
    let rec = encode(ev);
    // SAFETY: CudaCallRecord is repr(C) plain data with no padding.
    unsafe {
        std::slice::from_raw_parts(
            (&rec as *const CudaCallRecord).cast::<u8>(),
            size_of::<CudaCallRecord>(),
        )
    }
    .to_vec()
}

fn main() {
    let steps: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let (pid, tid, stream) = (4242u32, 4242u32, 0x5000u64);
    let mut ts = 1_000_000u64;
    let mut tick = |d: u64| {
        ts += d;
        ts
    };
    let entry = |api, ts_ns, args: [u64; 6]| CallEvent {
        ts_ns,
        pid,
        tid,
        api,
        phase: CallPhase::Entry { args },
    };
    let ret = |api, ts_ns, out| CallEvent {
        ts_ns,
        pid,
        tid,
        api,
        phase: CallPhase::Return { ret: 0, out },
    };
    // Per step, as the default probe set sees a vLLM graph step: H2D copy, graph launch, D2H
    // copy, event record (each runtime + driver), and a blocking event wait (entry + return, both levels).
    let mut records: Vec<Vec<u8>> = Vec::new();
    for i in 0..steps {
        let ev = 0xe000 + (i % 2);
        for (rt, drv, args) in [
            (
                ApiId::cudaMemcpyAsync,
                ApiId::cuMemcpyHtoDAsync_v2,
                [1, 2, 4096, 1, stream, 0],
            ),
            (
                ApiId::cudaGraphLaunch,
                ApiId::cuGraphLaunch,
                [0xbeef, stream, 0, 0, 0, 0],
            ),
            (
                ApiId::cudaMemcpyAsync,
                ApiId::cuMemcpyDtoHAsync_v2,
                [3, 4, 1024, 2, stream, 0],
            ),
            (
                ApiId::cudaEventRecordWithFlags,
                ApiId::cuEventRecordWithFlags,
                [ev, stream, 0, 0, 0, 0],
            ),
        ] {
            records.push(record_bytes(&entry(rt, tick(10), args)));
            records.push(record_bytes(&entry(drv, tick(1), args)));
        }
        if i > 0 {
            let prev = 0xe000 + ((i - 1) % 2);
            records.push(record_bytes(&entry(
                ApiId::cudaEventSynchronize,
                tick(10),
                [prev, 0, 0, 0, 0, 0],
            )));
            records.push(record_bytes(&entry(
                ApiId::cuEventSynchronize,
                tick(1),
                [prev, 0, 0, 0, 0, 0],
            )));
            records.push(record_bytes(&ret(
                ApiId::cuEventSynchronize,
                tick(30_000),
                None,
            )));
            records.push(record_bytes(&ret(
                ApiId::cudaEventSynchronize,
                tick(1),
                None,
            )));
        }
    }
    // Real files in a scratch session directory: CSV writing is part of the pipeline's cost.
    let base =
        std::env::temp_dir().join(format!("profilemate-pipeline-bench-{}", std::process::id()));
    let dir = SessionDir::create(&base, "bench").expect("scratch session directory");
    let bundle = bundle::session_default();
    let profilers = profilers::default_set(
        TimeBase {
            t0_ns: 0,
            unix_t0_sec: 0.0,
        },
        0,
        None,
        bundle,
    );
    let mut sinks = Sinks(vec![Box::new(Files::new(dir))]);
    profilers::open_families(&profilers, &mut sinks).expect("row files");
    let (_updates, py_rx) = std::sync::mpsc::channel();
    let mut pipeline = Pipeline::wire(bundle, TimingMode::Events, false, py_rx, profilers, sinks);
    let start = Instant::now();
    for r in &records {
        if let Ok(ev) = decode(r) {
            pipeline.take(Record::Call(ev));
        }
    }
    pipeline.finish();
    for p in &mut pipeline.profilers {
        p.finish(&mut pipeline.sinks).expect("write outputs");
    }
    pipeline.sinks.finish().expect("write outputs");
    let elapsed = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&base);
    let n = records.len() as f64;
    println!("pipeline_events={}", records.len());
    println!("pipeline_events_per_sec={:.0}", n / elapsed);
    println!("pipeline_ns_per_event={:.1}", elapsed * 1e9 / n);
    assert!(
        pipeline.correlator.stats.incomplete_steps <= 1,
        "the synthetic stream must correlate"
    );
}
