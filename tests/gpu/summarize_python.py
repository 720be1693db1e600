#!/usr/bin/env python3
"""One compact JSON of a python.sh output folder (for a terminal or a log).

    summarize_python.py OUT_DIR
"""

import json
import os
import sys


def load(d, name):
    try:
        return json.load(open(os.path.join(d, name)))
    except (OSError, ValueError) as e:
        return {"unreadable": str(e)}


def main():
    d = sys.argv[1]
    out = {"env": open(os.path.join(d, "env.txt")).read().strip().splitlines(),
           "step_times": load(d, "step_times.json")}
    for name in ("sampled997", "default", "nostacks", "vllm", "vllm_nostate"):
        c = load(d, f"compare_{name}.json")
        if "unreadable" not in c:
            out[f"python_{name}"] = {k: c.get(k) for k in
                                     ("max_share_diff_pp", "steps", "launched_by", "gc", "symbolized")}
        v = load(d, f"vllm_{name}.json")
        if "unreadable" not in v:
            phases = (v["forward"].pop("by_phase", None) or {})
            v["forward"]["by_phase"] = {
                p: {"count": x["count"], "exact": x.get("exact_count"),
                    "ms": {k: x["forward_time_ms"].get(k) for k in ("p50_ms", "p95_ms", "p99_ms")},
                    "exact_ms": {k: (x.get("forward_time_exact_ms") or {}).get(k)
                                 for k in ("p50_ms", "p95_ms", "p99_ms")}}
                for p, x in phases.items()}
            if v.get("metrics"):
                v["metrics"] = {k: v["metrics"].get(k) for k in
                                ("server_preemptions", "profilemate_preemptions",
                                 "server_kv_usage_pct", "profilemate_kv_usage_pct")}
            out[f"vllm_{name}"] = v
    for hz in (199, 997):
        out[f"overhead_{hz}"] = load(d, f"overhead_{hz}.json")
    print(json.dumps(out, separators=(",", ":")))


if __name__ == "__main__":
    main()
