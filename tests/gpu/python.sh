#!/usr/bin/env bash
# Python context on a GPU machine: the vLLM-shaped fixture doing real CUDA work through
# PyTorch (frame walks at real libcudart hits), compared with its own ground truth; the
# sampling overhead on a CPU-bound Python loop; the cost of walks at CUDA calls.
#
#   python.sh PROFILEMATE_BIN OUT_DIR
#
# Environment: PYTHON (default python3, with torch), STEPS (400).
set -uo pipefail
PM=$(readlink -f "$1"); OUT=$2
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-python3}
STEPS=${STEPS:-400}
STATS=/proc/sys/kernel/bpf_stats_enabled
OLD_STATS=$(cat $STATS 2>/dev/null || echo 0)
trap 'echo "$OLD_STATS" > $STATS 2>/dev/null' EXIT

{
    echo "python: $PY -> $(readlink -f "$(command -v "$PY")")"
    "$PY" -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())'
} >"$OUT/env.txt" 2>&1

# fixture RUN_NAME [profilemate args...]: one fixture run with profilemate attached while it
# waits to start its loop; FX_ARGS adds fixture arguments.
fixture() {
    local name=$1; shift
    local d="$OUT/$name"; mkdir -p "$d"
    echo 1 > $STATS 2>/dev/null
    timeout 300 "$PY" "$ROOT/tests/scripts/vllm_fixture.py" --torch --steps "$STEPS" \
        --wait-after-load-ms 5000 --truth "$d/truth.jsonl" ${FX_ARGS:-} >"$d/fixture.out" 2>&1 &
    local fx=$!
    for _ in $(seq 600); do grep -q ready "$d/fixture.out" 2>/dev/null && break; sleep 0.1; done
    local pid; pid=$(grep -o 'pid=[0-9]*' "$d/fixture.out" | head -1 | cut -d= -f2)
    timeout 300 "$PM" attach --pid "$pid" --out "$d/sessions" "$@" >"$d/pm.out" 2>"$d/pm.err"
    wait "$fx"
    local s; s=$(sed -n 's/^session: //p' "$d/pm.out")
    if [[ -n "$s" ]]; then
        cp -r "$s" "$d/session"
        "$PY" "$HERE/compare_python.py" "$d/session" "$d/truth.jsonl" >"$OUT/compare_$name.json" 2>"$d/compare.err"
        "$PY" "$HERE/compare_vllm.py" "$d/session" "$d/truth.jsonl" >"$OUT/vllm_$name.json" 2>"$d/compare_vllm.err"
    fi
}

# alone RUN_NAME: the same fixture with no tracer (the baseline for the step-time cost).
alone() {
    local d="$OUT/$1"; mkdir -p "$d"
    timeout 300 "$PY" "$ROOT/tests/scripts/vllm_fixture.py" --torch --steps "$STEPS" \
        --wait-after-load-ms 5000 --truth "$d/truth.jsonl" ${FX_ARGS:-} >"$d/fixture.out" 2>&1
}

fixture sampled997 --sample-hz 997
fixture default
# vLLM semantics: preemptions, a prefix-cache reset, /metrics, scheduler polls at 50 Hz.
FX_ARGS="--reset-at-step 120 --metrics-port 0 --idle-us 200" fixture vllm --state-hz 50
FX_ARGS="--reset-at-step 120 --metrics-port 0 --idle-us 200" alone vllm_alone
FX_ARGS="--reset-at-step 120 --metrics-port 0 --idle-us 200" fixture vllm_nostate --state-hz 0
# Engine step wall time per run, from the fixture's own truth (the tracer's cost to the target).
"$PY" - "$OUT" >"$OUT/step_times.json" <<'PYEOF'
import json, os, statistics, sys
out = {}
for name in sorted(os.listdir(sys.argv[1])):
    p = os.path.join(sys.argv[1], name, "truth.jsonl")
    if not os.path.exists(p):
        continue
    d = sorted((t["end_ns"] - t["start_ns"]) / 1e6 for t in map(json.loads, open(p))
               if t.get("kind") == "step")
    if d:
        out[name] = {"steps": len(d), "mean_ms": round(statistics.mean(d), 4),
                     "p50_ms": round(d[len(d) // 2], 4), "p95_ms": round(d[len(d) * 95 // 100], 4)}
print(json.dumps(out, indent=1))
PYEOF
fixture nostacks --cuda-stacks none --sample-hz 0

for hz in 199 997; do
    timeout 120 "$PY" "$ROOT/tests/scripts/py_overhead.py" "$PM" --python "$PY" --hz $hz \
        >"$OUT/overhead_$hz.json" 2>"$OUT/overhead_$hz.err"
done
"$PY" "$HERE/summarize_python.py" "$OUT" >"$OUT/summary.json" 2>"$OUT/summary.err"
echo done >"$OUT/finished"
