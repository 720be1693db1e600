#!/usr/bin/env bash
# Step detection and completion bounds on a real GPU (PyTorch), against CUDA-event truth.
#
#   steps.sh PROFILEMATE_BIN OUT_DIR
#
# GPU-bound shapes whose eager steps show the default probes nothing but the input copy and
# the events (no output copy): eager, mixed eager/graph, eager with vLLM V1's
# prepare_inputs_event; then the small CPU-bound shape with async depth 2 and 1 (the GPU is
# done before the CPU waits: bounds instead of times). OUT_DIR/summary.txt has compare.py's
# report per run. Environment: PYTHON (python3), STEPS (400), ONLY (run names, space
# separated: only those).
set -uo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 PROFILEMATE_BIN OUT_DIR" >&2; exit 2; }
PM=$(readlink -f "$1")
mkdir -p "$2"
OUT=$(cd "$2" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
STEPS=${STEPS:-400}
BIG=(--hidden 4096 --batch 4096 --layers 8)

# run NAME WORKLOAD_ARGS...: the workload, profilemate attached once it is ready (the
# workload then waits 4 s before its loop), compare.py on the session.
run() {
    local name=$1 pid="" sess
    shift
    [[ -z ${ONLY:-} || " $ONLY " == *" $name "* ]] || return
    timeout 120 "$PY" -u "$HERE/workload.py" --wait-before-start 4 --truth "$OUT/$name.json" \
        --steps "$STEPS" "$@" >"$OUT/$name.log" 2>&1 &
    local wl=$!
    for _ in $(seq 900); do
        pid=$(sed -n 's/^pid=\([0-9]*\) ready.*/\1/p' "$OUT/$name.log" | head -n1)
        [[ -n $pid ]] && break
        kill -0 "$wl" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $pid ]]; then
        echo "== $name: workload not ready (see $name.log)" >>"$OUT/summary.txt"
        kill "$wl" 2>/dev/null
        wait "$wl"
        return
    fi
    timeout -s TERM 150 "$PM" attach --pid "$pid" --out "$OUT/sessions" --quiet \
        >"$OUT/$name.pm.log" 2>&1
    wait "$wl"
    sess=$(sed -n 's/^session: //p' "$OUT/$name.pm.log" | tail -n1)
    {
        echo "== $name: $*"
        timeout 120 "$PY" "$HERE/compare.py" "$sess" "$OUT/$name.json" --out "$OUT/$name.cmp.json"
        echo "summary: $(tr -d '\n ' <"$sess/forward_pass_summary.json" | grep -o '"count":[0-9]*,"exact_count[^{]*' | head -n1)"
    } >>"$OUT/summary.txt" 2>&1
}

: >"$OUT/summary.txt"
run eager_no_d2h --mode eager --no-d2h "${BIG[@]}"
run mixed_no_d2h --mode mixed --no-d2h "${BIG[@]}"
run eager_prep_event --mode eager --no-d2h --prep-event "${BIG[@]}"
run small_async --mode mixed
run small_sync --mode mixed --async-depth 1
cat "$OUT/summary.txt"
