#!/usr/bin/env bash
# ProfileMate on a real GPU: accuracy against CUDA-event ground truth, and overhead.
#
#   run.sh PROFILEMATE_BIN OUT_DIR
#
# Runs as root on a CUDA machine with PyTorch. Stages (each logs into OUT_DIR; a failed stage
# is recorded in OUT_DIR/summary.txt and the next stage still runs):
#   1 env.txt                        nvidia-smi -L, python3 / torch versions
#   2 compare_{default,kernels,sync}.json   accuracy on a GPU-bound shape (mixed eager/graph
#                                    steps; default probes, --kernels, --timing sync)
#   3 compare_small.json             the small CPU-bound shape (waits return at once)
#   4 overhead_*.json                same-process throughput with probes attached mid-run vs not
#   5 summary.txt
# Environment: PYTHON (default python3), STEPS_ACC (400), WAIT_S (4).
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 PROFILEMATE_BIN OUT_DIR" >&2
    exit 2
fi
PM=$(readlink -f "$1")
OUT=$2
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
WL="$HERE/workload.py"
CMP="$HERE/compare.py"
STEPS_ACC=${STEPS_ACC:-400}
WAIT_S=${WAIT_S:-4}
PY_TIMEOUT=120   # per workload / compare run
PM_TIMEOUT=150   # per profilemate session (it stops by itself when the target exits)
SESSIONS="$OUT/sessions"
mkdir -p "$SESSIONS"
STATUS="$OUT/stage_status.txt"
: >"$STATUS"

if [[ ! -x "$PM" ]]; then
    echo "profilemate binary not executable: $PM" >&2
    exit 2
fi

# Background jobs started by this script (pids of the `timeout` wrappers).
BG_PIDS=()
cleanup() {
    local p
    for p in "${BG_PIDS[@]:-}"; do
        if [[ -n "$p" ]]; then kill -TERM "$p" 2>/dev/null || true; fi
    done
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/run.log" >&2; }

# record NAME RC
record() {
    local name=$1 rc=$2
    if [[ $rc -eq 0 ]]; then
        echo "$name OK" >>"$STATUS"
        log "stage $name OK"
    else
        echo "$name FAILED rc=$rc" >>"$STATUS"
        log "stage $name FAILED rc=$rc"
    fi
}

# run_stage NAME FUNC ARGS...: runs FUNC, records the outcome, never fails. FUNC runs in this
# shell (so BG_PIDS reaches the trap) in an `||` context, where errexit does not apply: stage
# functions check every step themselves and return non-zero on failure.
run_stage() {
    local name=$1
    shift
    local rc=0
    log "stage $name: $*"
    "$@" || rc=$?
    record "$name" "$rc"
    return 0
}

# exited BGPID: true when the background job has exited (a zombie until waited counts).
exited() {
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
    [[ -z "$st" || "$st" == Z || "$st" == X ]]
}

# wait_for_ready LOGFILE BGPID: polls for "pid=<pid> ready"; echoes the pid.
wait_for_ready() {
    local logf=$1 bg=$2 i line
    for ((i = 0; i < 900; i++)); do   # 90 s
        line=$(grep -m1 -E '^pid=[0-9]+ ready' "$logf" 2>/dev/null || true)
        if [[ -n "$line" ]]; then
            line=${line#pid=}
            echo "${line%% *}"
            return 0
        fi
        if exited "$bg"; then
            echo "workload exited before ready (see $logf)" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "workload not ready after 90 s (see $logf)" >&2
    return 1
}

# plain_workload NAME ARGS...: workload without the profiler.
plain_workload() {
    local name=$1
    shift
    timeout "$PY_TIMEOUT" "$PY" -u "$WL" --truth "$OUT/$name.json" "$@" >"$OUT/$name.log" 2>&1
}

# attached_workload NAME "PM_ARGS" WORKLOAD_ARGS...: starts the workload, attaches profilemate
# once it is ready (the workload then waits WAIT_S before its loop), waits for both. Writes
# OUT/NAME.json (truth), OUT/NAME.log, OUT/NAME.pm.log, OUT/NAME.session (session dir).
attached_workload() {
    local name=$1 pm_args=$2
    shift 2
    local wl_log="$OUT/$name.log" pm_log="$OUT/$name.pm.log"
    rm -f "$OUT/$name.json" "$OUT/$name.session"
    timeout "$PY_TIMEOUT" "$PY" -u "$WL" --wait-before-start "$WAIT_S" --truth "$OUT/$name.json" "$@" \
        >"$wl_log" 2>&1 &
    local wl_bg=$!
    BG_PIDS+=("$wl_bg")
    local pid
    if ! pid=$(wait_for_ready "$wl_log" "$wl_bg"); then
        kill -TERM "$wl_bg" 2>/dev/null || true
        wait "$wl_bg" 2>/dev/null || true
        BG_PIDS=()
        return 1
    fi
    log "  $name: workload pid=$pid ready; attaching: $PM attach --pid $pid --out $SESSIONS --quiet $pm_args"
    # shellcheck disable=SC2086  # pm_args is a word list
    timeout -s TERM "$PM_TIMEOUT" "$PM" attach --pid "$pid" --out "$SESSIONS" --quiet $pm_args \
        >"$pm_log" 2>&1 &
    local pm_bg=$!
    BG_PIDS+=("$pm_bg")
    local wl_rc=0 pm_rc=0
    wait "$wl_bg" || wl_rc=$?
    wait "$pm_bg" || pm_rc=$?
    BG_PIDS=()   # both reaped: never signal those pids again
    log "  $name: workload rc=$wl_rc profilemate rc=$pm_rc; $(grep -m1 '^done' "$wl_log" || echo 'no done line')"
    local sess
    sess=$(sed -n 's/^session: //p' "$pm_log" | tail -n1)
    if [[ -n "$sess" && -d "$sess" ]]; then
        echo "$sess" >"$OUT/$name.session"
    else
        echo "  $name: no session directory in $pm_log" >&2
    fi
    [[ $wl_rc -eq 0 && $pm_rc -eq 0 && -n "$sess" ]]
}

# compare_run NAME RESULT: compare OUT/NAME.session with OUT/NAME.json.
compare_run() {
    local name=$1 result=$2
    [[ -f "$OUT/$name.session" ]] || { echo "no session for $name" >&2; return 1; }
    [[ -f "$OUT/$name.json" ]] || { echo "no truth for $name" >&2; return 1; }
    timeout "$PY_TIMEOUT" "$PY" "$CMP" "$(cat "$OUT/$name.session")" "$OUT/$name.json" \
        --out "$OUT/$result" 2>&1 | tee "$OUT/${result%.json}.txt"
}

accuracy() {   # accuracy NAME RESULT "PM_ARGS" WORKLOAD_ARGS...
    local name=$1 result=$2 pm_args=$3
    shift 3
    local rc=0
    attached_workload "$name" "$pm_args" "$@" || rc=$?
    # Compare whatever was produced, even if a process failed.
    if ! compare_run "$name" "$result"; then
        [[ $rc -ne 0 ]] || rc=1
    fi
    return "$rc"
}

stage_env() {
    {
        echo "date: $(date -Is)"
        echo "host: $(hostname)  kernel: $(uname -r)"
        echo "profilemate: $PM"
        "$PM" --version 2>&1 || true
        echo "--- nvidia-smi -L"
        nvidia-smi -L 2>&1 || echo "nvidia-smi failed"
        nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv 2>&1 || true
        echo "--- python"
        "$PY" --version 2>&1
        timeout 60 "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' 2>&1
    } >"$OUT/env.txt"
    cat "$OUT/env.txt" >&2
    grep -q "available True" "$OUT/env.txt"
}

# ---- stages ------------------------------------------------------------------------------
log "output: $OUT"
run_stage env stage_env

# GPU-bound shape (large GEMMs: each step's GPU time far exceeds its CPU launch time, so the
# per-step waits block and completions are exact) and the small, CPU-bound decode-like shape
# (the GPU idles between launches: waits return at once and completions are upper bounds).
BIG=(--hidden 4096 --batch 4096 --layers 8)
run_stage accuracy_default accuracy truth_default compare_default.json "" --mode mixed --steps "$STEPS_ACC" "${BIG[@]}"
run_stage accuracy_kernels accuracy truth_kernels compare_kernels.json "--kernels" --mode mixed --steps "$STEPS_ACC" "${BIG[@]}"
run_stage accuracy_sync accuracy truth_sync compare_sync.json "--timing sync" \
    --mode mixed --steps "$STEPS_ACC" --async-depth 1 "${BIG[@]}"
run_stage accuracy_small accuracy truth_small compare_small.json "" --mode mixed --steps "$STEPS_ACC"

# Overhead on the small CPU-bound shape (the worst case: probes cost CPU time per call, and
# here CPU time is the step time): same process, probes attached mid-run (overhead.py).
overhead() {   # overhead NAME "PM_ARGS" WORKLOAD_ARGS...
    local name=$1 pm_args=$2
    shift 2
    timeout 150 "$PY" "$HERE/overhead.py" "$PM" "$OUT/$name.json" "$SESSIONS" "--pm-args=$pm_args" -- "$@" \
        >"$OUT/$name.log" 2>&1
}
run_stage overhead_eager overhead overhead_eager "" --mode eager
run_stage overhead_graph overhead overhead_graph "" --mode graph
run_stage overhead_eager_kernels overhead overhead_eager_kernels "--kernels" --mode eager
run_stage overhead_graph_kernels overhead overhead_graph_kernels "--kernels" --mode graph
run_stage overhead_big_eager overhead overhead_big_eager "" --mode eager "${BIG[@]}"

# ---- summary -----------------------------------------------------------------------------
log "writing summary"
"$PY" - "$OUT" >"$OUT/summary.txt" 2>&1 <<'PYEOF' || echo "summary script failed" >>"$OUT/summary.txt"
import json, os, sys
out = sys.argv[1]

def load(name):
    p = os.path.join(out, name)
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def f(v, nd=3):
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))

print("ProfileMate GPU test summary")
print("output:", out)
env = load("truth_default.json") or {}
print(f"device: {env.get('device')}  torch {env.get('torch')}  cuda {env.get('cuda')}")
print()
print("stages:")
try:
    print(open(os.path.join(out, "stage_status.txt")).read().rstrip())
except OSError:
    print("  (no stage status)")
print()
status = {}
try:
    for line in open(os.path.join(out, "stage_status.txt")):
        parts = line.split()
        if len(parts) >= 2:
            status[parts[0]] = parts[1]
except OSError:
    pass
print("overhead (same process; median steps/s of 0.5 s windows with probes attached vs before/after)")
print(f"  {'run':<24} {'baseline':>10} {'attached':>10} {'overhead%':>10} {'windows':>9} {'records':>9} {'drops':>6}")
for n in ("overhead_eager", "overhead_graph", "overhead_eager_kernels", "overhead_graph_kernels", "overhead_big_eager"):
    c = load(f"{n}.json")
    if not c:
        print(f"  {n:<24} missing (stage failed?)")
        continue
    print(f"  {n:<24} {f(c['baseline_median_steps_per_sec'], 1):>10} {f(c['attached_median_steps_per_sec'], 1):>10} "
          f"{f(c['overhead_pct'], 2):>10} {c['baseline_windows']:>4}/{c['attached_windows']:<4} {f(c.get('records_read')):>9} {f(c.get('ring_full_drops')):>6}")
print()
print("accuracy (error = forward_time_ms - truth gpu_ms, exact rows, ms)")
for name in ("compare_default.json", "compare_kernels.json", "compare_sync.json", "compare_small.json"):
    c = load(name)
    print(f"== {name}")
    if not c:
        print("   missing (stage failed?)")
        continue
    print(f"   steps truth={c.get('truth_steps')} profiler={c.get('profiler_steps')} matched={c.get('matched')} "
          f"offset={c.get('offset')} kind_agree={c.get('kind_agreement')} ({f(c.get('kind_agreement_pct'), 1)}%)")
    print(f"   exact={c.get('exact_rows')} upper_bound={c.get('upper_bound_rows')} sync_api={c.get('sync_api_counts')}")
    print(f"   graph launches in steps={c.get('graph_launches_in_steps')} usage={c.get('graph_usage_replay_total')} "
          f"truth={c.get('truth_graph_replays')} captures={c.get('graph_captures')} {c.get('graph_capture_sources')}")
    for k in ("all", "eager", "graph"):
        e = c.get(f"error_{k}") or {}
        print(f"   {k:<6} n={e.get('n', 0):<4} median={f(e.get('median_ms'))} mean={f(e.get('mean_ms'))} "
              f"med|e|={f(e.get('median_abs_ms'))} p95|e|={f(e.get('p95_abs_ms'))} max|e|={f(e.get('max_abs_ms'))} "
              f"med rel={f(e.get('median_rel_pct'), 1)}% truth med={f(e.get('truth_median_ms'))}")
    print(f"   drops={c.get('ring_full_drops')} decode_errors={c.get('decode_errors')} correlator={json.dumps(c.get('correlator'), sort_keys=True)}")
    if c.get("problems"):
        print(f"   problems: {'; '.join(c['problems'])}")
PYEOF
cat "$OUT/summary.txt"
log "done"
