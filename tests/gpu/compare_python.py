#!/usr/bin/env python3
"""Python context of one session against the vLLM-shaped fixture's own ground truth.

    compare_python.py SESSION_DIR TRUTH_JSONL

Prints one JSON object: interpreter found, per-operation sampled share vs measured CPU share
(the six budgeted operations), whether every budgeted function symbolized to its qualname
and burn() line, launch stacks of the steps, and GC pauses vs the gc.callbacks windows.
"""

import collections
import csv
import json
import os
import statistics
import sys

OPS = {
    "vllm/v1/core/sched/scheduler.py:Scheduler.schedule": "schedule",
    "vllm/v1/worker/gpu/model_runner.py:GPUModelRunner.prepare_inputs": "prepare_inputs",
    "vllm/v1/worker/gpu/cudagraph_utils.py:CudaGraphManager.run_fullgraph": "model_forward",
    "vllm/v1/worker/gpu/model_runner.py:GPUModelRunner.sample": "sampling",
    "vllm/v1/core/sched/scheduler.py:Scheduler.update_from_output": "update_from_output",
    "vllm/v1/engine/output_processor.py:OutputProcessor.process_outputs": "detokenize",
}


def main():
    session, truth_path = sys.argv[1], sys.argv[2]
    truth = [json.loads(l) for l in open(truth_path) if l.strip()]
    md = json.load(open(os.path.join(session, "metadata.json")))
    summary = json.load(open(os.path.join(session, "cpu_timing_summary.json")))
    folded = open(os.path.join(session, "cpu_profile.folded")).read().splitlines()
    out = {"python": md["python"]["processes"], "usdt": md["python"]["usdt"],
           "stats": md["python"]["stats"], "program_costs": md.get("program_costs")}

    cpu = collections.Counter()
    lines = {}
    for t in truth:
        if t["kind"] == "op" and t["op"] in OPS:
            cpu[OPS[t["op"]]] += t["cpu_ns"]
            lines[t["op"]] = t["line"]
    total = sum(cpu.values())
    samples = {n: summary["operations"].get(n, {}).get("samples", 0) for n in OPS.values()}
    stotal = sum(samples.values()) or 1
    shares = {n: {"truth_pct": round(100 * cpu[n] / total, 2),
                  "sampled_pct": round(100 * samples[n] / stotal, 2)} for n in OPS.values()}
    for v in shares.values():
        v["diff_pp"] = round(v["sampled_pct"] - v["truth_pct"], 2)
    out["shares"] = shares
    out["max_share_diff_pp"] = max(abs(v["diff_pp"]) for v in shares.values())
    out["budgeted_samples"] = stotal

    symbolized = {}
    for op, line in lines.items():
        f, q = op.split(":")
        symbolized[op] = any(
            any(fr.startswith(q + " (") and fr.endswith(f"{f}:{line})") for fr in l.split(";"))
            for l in folded)
    out["symbolized"] = symbolized

    steps = list(csv.DictReader(open(os.path.join(session, "forward_pass_timing.csv"))))
    out["steps"] = len(steps)
    out["launched_by"] = dict(collections.Counter(s["launched_by"].split(":")[0] for s in steps))
    out["launch_stack_has_execute_model"] = sum("GPUModelRunner.execute_model" in s["launch_stack"] for s in steps)

    t0 = md["monotonic_start_ns"]
    stepl = [t for t in truth if t["kind"] == "step"]
    lo, hi = min(s["start_ns"] for s in stepl), max(s["end_ns"] for s in stepl)
    opened, cbs = {}, []
    for t in truth:
        if t["kind"] != "gc":
            continue
        if t["phase"] == "start":
            opened[t["tid"]] = t
        elif t["tid"] in opened:
            s = opened.pop(t["tid"])
            if s["ts_ns"] >= lo and t["ts_ns"] <= hi:
                cbs.append((s["ts_ns"], t["ts_ns"], s["generation"], t["tid"]))
    pauses = []
    for r in csv.DictReader(open(os.path.join(session, "gc_pauses.csv"))):
        s = t0 + int(float(r["timestamp_sec"]) * 1e9)
        e = s + int(float(r["duration_ms"]) * 1e6)
        if s >= lo and e <= hi:
            pauses.append((s, e, int(r["generation"]), int(r["tid"])))
    diffs, unmatched = [], 0
    for cs, ce, g, tid in cbs:
        m = [p for p in pauses if p[3] == tid and p[0] + 2000 >= cs and p[1] <= ce + 2000]
        if not m:
            unmatched += 1
            continue
        diffs.append((ce - cs) - (m[0][1] - m[0][0]))
    out["gc"] = {"collections_truth": len(cbs), "pauses": len(pauses), "unmatched": unmatched}
    if diffs:
        diffs.sort()
        out["gc"].update({"callback_minus_pause_median_us": round(diffs[len(diffs) // 2] / 1e3, 2),
                          "p95_us": round(diffs[len(diffs) * 95 // 100] / 1e3, 2),
                          "max_us": round(diffs[-1] / 1e3, 2)})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
