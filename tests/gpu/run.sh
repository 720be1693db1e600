#!/usr/bin/env bash
# ProfileMate on a real GPU: accuracy against CUDA-event ground truth, and overhead.
#
#   run.sh PROFILEMATE_BIN OUT_DIR
#
# Runs as root on a CUDA machine with PyTorch. Stages (each logs into OUT_DIR; a failed stage
# is recorded in OUT_DIR/summary.txt and the next stage still runs):
#   1 env.txt                        nvidia-smi -L, python3 / torch versions
#   2 baseline_{eager,graph}.json    throughput without the profiler (--no-truth-events, 1500 steps)
#   3 compare_default.json           accuracy, mixed mode, default probes
#   4 compare_kernels.json           accuracy, mixed mode, --kernels
#   5 attached_{eager,graph}.json, attached_eager_kernels.json   throughput with profilemate attached
#   6 compare_sync.json              accuracy, --timing sync, --async-depth 1
#   7 summary.txt
# Environment: PYTHON (default python3), STEPS_BENCH (1500), STEPS_ACC (400), WAIT_S (4).
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
STEPS_BENCH=${STEPS_BENCH:-1500}
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

run_stage baseline_eager plain_workload baseline_eager --mode eager --no-truth-events --steps "$STEPS_BENCH"
run_stage baseline_graph plain_workload baseline_graph --mode graph --no-truth-events --steps "$STEPS_BENCH"

run_stage accuracy_default accuracy truth_default compare_default.json "" --mode mixed --steps "$STEPS_ACC"
run_stage accuracy_kernels accuracy truth_kernels compare_kernels.json "--kernels" --mode mixed --steps "$STEPS_ACC"

run_stage attached_eager attached_workload attached_eager "" --mode eager --no-truth-events --steps "$STEPS_BENCH"
run_stage attached_graph attached_workload attached_graph "" --mode graph --no-truth-events --steps "$STEPS_BENCH"
run_stage attached_eager_kernels attached_workload attached_eager_kernels "--kernels" \
    --mode eager --no-truth-events --steps "$STEPS_BENCH"
# Step counts / graph replays / losses for the overhead runs too (no timing truth there).
for n in attached_eager attached_graph attached_eager_kernels; do
    if [[ -f "$OUT/$n.session" && -f "$OUT/$n.json" ]]; then
        run_stage "compare_$n" compare_run "$n" "compare_$n.json"
    fi
done

run_stage accuracy_sync accuracy truth_sync compare_sync.json "--timing sync" \
    --mode mixed --steps "$STEPS_ACC" --async-depth 1

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
env = load("baseline_eager.json") or load("truth_default.json") or {}
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
print("throughput (steps/s over the timed loop; overhead = 1 - attached/baseline)")
print("  (attached values of a FAILED stage are marked '!': the profiler may not have been attached)")
print(f"  {'run':<24} {'baseline':>10} {'attached':>10} {'overhead%':>10} {'steps':>7}")
for label, base, att in (("eager", "baseline_eager.json", "attached_eager.json"),
                         ("graph", "baseline_graph.json", "attached_graph.json"),
                         ("eager --kernels", "baseline_eager.json", "attached_eager_kernels.json")):
    b, a = load(base), load(att)
    bs = b.get("steps_per_sec") if b else None
    as_ = a.get("steps_per_sec") if a else None
    ov = 100.0 * (1.0 - as_ / bs) if (bs and as_) else None
    ok = status.get(att[:-5]) == "OK" and status.get(base[:-5]) == "OK"
    mark = "" if ok else " !"
    print(f"  {label:<24} {f(bs, 1):>10} {f(as_, 1):>10} {f(ov, 2):>10} {f(a.get('steps') if a else None):>7}{mark}")
for n in ("attached_eager", "attached_graph", "attached_eager_kernels"):
    c = load(f"compare_{n}.json")
    if c:
        print(f"  {n}: profiler steps {c.get('profiler_steps')}/{c.get('truth_steps')}, graph launches "
              f"{c.get('graph_launches_in_steps')}/{c.get('truth_graph_replays')}, upper_bound {c.get('upper_bound_rows')}, "
              f"ring_full_drops {c.get('ring_full_drops')}")
print()
print("accuracy (error = forward_time_ms - truth gpu_ms, exact rows, ms)")
for name in ("compare_default.json", "compare_kernels.json", "compare_sync.json"):
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
