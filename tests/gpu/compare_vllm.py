#!/usr/bin/env python3
"""vLLM semantics of one session against the vLLM-shaped fixture's own ground truth, on a
GPU machine (where the test suite's Rust checks cannot be built).

    compare_vllm.py SESSION_DIR TRUTH_JSONL

Prints one JSON object: per-step batches read and how many equal their schedule() result,
forward passes carrying a batch, GPU time per phase, preemptions (count, request, reason,
tokens lost), requests (prompt, preemptions, finish), graph replays per descriptor, encoder
steps, the /metrics cross-check and the reader's own counters.
"""

import csv
import json
import os
import sys
from bisect import bisect_right


def rows(session, name):
    with open(os.path.join(session, name)) as f:
        return list(csv.DictReader(f))


def phase_of(b):
    p, d = b["prefill_reqs"], b["decode_reqs"]
    return "empty" if p == d == 0 else "prefill" if d == 0 else "decode" if p == 0 else "mixed"


def main():
    session, truth_path = sys.argv[1], sys.argv[2]
    truth = [json.loads(l) for l in open(truth_path) if l.strip()]
    md = json.load(open(os.path.join(session, "metadata.json")))
    t0 = md["monotonic_start_ns"]
    ns = lambda r: t0 + float(r["timestamp_sec"]) * 1e9
    kind = lambda k: [t for t in truth if t["kind"] == k]
    batches = kind("batch")
    starts = [b["ts_ns"] for b in batches]
    at = lambda ts: batches[bisect_right(starts, ts) - 1] if bisect_right(starts, ts) else None
    out = {"reader": md["python"].get("vllm_batches"), "truth_steps": len(batches)}

    exact, wrong = 0, []
    for r in rows(session, "batch_utilization.csv"):
        b = at(ns(r))
        got = (int(r["num_seqs"]), int(r["num_tokens"]), int(r["new_reqs"]),
               int(r["cached_reqs"]), r["phase"])
        want = (b["num_reqs"], b["num_tokens"], b["new_reqs"], b["cached_reqs"], phase_of(b)) if b else None
        if got == want:
            exact += 1
        else:
            wrong.append({"step": b and b["step"], "got": got, "want": want})
    out["batches"] = {"read": exact + len(wrong), "exact": exact, "wrong": wrong[:5]}

    steps = rows(session, "forward_pass_timing.csv")
    with_batch = [s for s in steps if s["phase"] != "unknown"]
    agree = sum(1 for s in with_batch
                if (b := at(ns(s))) and int(s["num_tokens"]) == b["num_tokens"]
                and int(s["batch_size"]) == b["num_reqs"] and s["phase"] == phase_of(b))
    out["forward"] = {"steps": len(steps), "with_batch": len(with_batch), "batch_agrees": agree,
                      "by_phase": json.load(open(os.path.join(session, "forward_pass_summary.json"))).get("by_phase")}

    pre = kind("preempt")
    ev = rows(session, "preemption_events.csv")
    key = lambda e, t: (e["request_id"] if t else e["req"], e["reason"])
    want = sorted(key(p, False) for p in pre)
    got = sorted(key(e, True) for e in ev)
    lost_ok = sum(1 for e in ev for p in pre
                  if p["req"] == e["request_id"] and e["tokens_lost"] == str(p["tokens_lost"])
                  and abs(ns(e) - p["ts_ns"]) < 50e6)
    out["preemptions"] = {"truth": len(pre), "events": len(ev), "same_requests_and_reasons": want == got,
                          "tokens_lost_exact": lost_ok}

    life = {r["request_id"]: r for r in rows(session, "request_lifecycle.csv")}
    reqs = kind("request")
    prompt_exact = sum(1 for t in reqs if life.get(t["req"], {}).get("prompt_tokens") == str(t["prompt_tokens"]))
    prompt_unknown = sum(1 for t in reqs if life.get(t["req"], {}).get("prompt_tokens") == "")
    pre_exact = sum(1 for t in reqs if t["req"] in life and int(life[t["req"]]["preemptions"] or 0) == t["preemptions"])
    fin_exact = sum(1 for t in reqs if t["req"] in life
                    and (life[t["req"]]["finished_sec"] != "") == (t["status"] == "FINISHED_STOPPED"))
    out["requests"] = {"truth": len(reqs), "seen": sum(t["req"] in life for t in reqs),
                       "prompt_exact": prompt_exact, "prompt_unknown": prompt_unknown,
                       "preemptions_exact": pre_exact, "finished_exact": fin_exact}

    fwd = kind("forward")
    graphs = []
    for g in rows(session, "cuda_graph_usage.csv"):
        if float(g["replay_count"] or 0) == 0:
            continue
        if g["runtime_mode"] == "FULL":
            n = int(g["num_tokens"])
            want = sum(1 for f in fwd if f["mode"] == "FULL" and f.get("desc_tokens") == n)
        else:
            want = sum(1 for f in fwd if f["mode"] == "PIECEWISE")
        graphs.append({"mode": g["runtime_mode"] or "piecewise", "num_tokens": g["num_tokens"],
                       "replays": int(float(g["replay_count"])), "truth": want})
    out["graphs"] = graphs
    ed = json.load(open(os.path.join(session, "encoder_decoder_summary.json")))
    out["encoder"] = {"steps_with_encoder": ed.get("steps_with_encoder"),
                      "truth": sum(1 for b in batches if b["encoder_inputs"] > 0)}
    out["metrics"] = md.get("vllm_metrics")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
