#!/usr/bin/env bash
# ProfileMate on a real vLLM 0.26 server (GPU machine): one server, one continuous bounded
# load, and alternating windows with profilemate detached and attached, so that the
# server's own /metrics measure both the cost of attaching (tokens/s and engine steps/s
# against the adjacent detached windows) and what each session should have seen (engine
# steps, preemptions, finished requests, KV usage, queues). Nothing is run twice: the
# whole measurement is one server run in one device command (about 5 minutes).
#
#   here, from the checkout root (fills ./.gpu/: vLLM's wheel contents, its missing deps,
#   the xz'd profilemate binary):   bash ../shared/real-vllm-gpu/prepare.sh
#   on the GPU machine, from the checkout root, .gpu/ carried along (it is git-ignored:
#   the device call needs carry [".gpu"]):
#                                   bash tests/gpu/real_vllm.sh
#   back here, any time:            python3 tests/gpu/compare_real_vllm.py RESULTS_DIR
#
# Knobs (environment):
#   WINDOWS    ("off A off B off") the windows in order: `off` = detached, a letter X =
#              attached with PM_ARGS_X; each may carry its length, e.g. "off:20 A:30"
#   W          (15) default window length, seconds
#   PM_ARGS_A  ("") profilemate flags of window A; PM_ARGS_B ("--kernels"); any other
#              letter used in WINDOWS needs its PM_ARGS_<letter> set (may be "")
#   CONC (64) concurrent requests; BLOCKS (256) KV cache blocks of 16 tokens
#   LOAD_ARGS  extra real_vllm_load.py flags for the measured load, e.g. a steady one for the
#              overhead A/B: "--prompt-min 200 --prompt-max 300 --gen-min 200 --gen-max 300"
#   EAGER=1    --enforce-eager (default: torch.compile + CUDA graphs; if the graph server
#              fails to start, the script retries eager once and says so)
#   VLLM_ARGS  extra server flags, e.g. "--no-async-scheduling" or "--enable-prefix-caching"
#   BPF_STATS  (1) kernel.bpf_stats_enabled=1 during attached windows only (program_costs)
#   CALIBRATE=1  `profilemate calibrate` before the server starts (the GPU is free then):
#              calibration.json + calibrate.txt in $OUT, and every window attaches with
#              --calibration pointing at it
#   DOCTOR=1   `profilemate doctor` without and with --pid of the running server, before the
#              windows: doctor.txt, doctor_pid.txt and doctor_pid.json in $OUT
#   RAMP_S (8) load before the first window; GAP_S (1) settling time after each window
#   BUDGET_S   (530) whole-run limit: windows that would end past it are skipped
#   READY_S (240) wait for the server; DRAIN_S (15) for in-flight requests at the end
#   OUT        (/tmp/real-vllm-out) results; WORK (/tmp/real-vllm) scratch, emptied first;
#   PROFILEMATE (default: .gpu/profilemate.xz, unpacked) binary; PORT (8000)
#   SERVER_CMD replaces the vLLM server command line and skips the install (only for
#              testing this script: tests/gpu/real_vllm_selftest.sh)
#
# Results in $OUT (a few MB): run.log (everything printed), run.json (knobs, mode, server
# pid), env.txt (GPU, torch, profilemate's sha256), windows.tsv (one row per window: rc,
# wall start/end from time.time(), session dir), clock.json (time.time() paired with
# CLOCK_MONOTONIC), metrics.jsonl (every /metrics scrape), load.json (load summary and
# requests), pm/*.stdout|stderr (each session's output), sessions.tar.xz (the session dirs
# without cpu_profile.folded), server_graphs.log / server_eager.log (last 1.5 MB),
# process_tree.txt, metrics_{before,after}.prom, summary.json and compare.txt
# (compare_real_vllm.py's table, also printed at the end).
set -uo pipefail
export PYTHONUNBUFFERED=1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT" || exit 2

OUT=${OUT:-/tmp/real-vllm-out}
WORK=${WORK:-/tmp/real-vllm}
W=${W:-15}
WINDOWS=${WINDOWS:-off A off B off}
PM_ARGS_A=${PM_ARGS_A-}
PM_ARGS_B=${PM_ARGS_B---kernels}
CONC=${CONC:-64}
BLOCKS=${BLOCKS:-256}
EAGER=${EAGER:-0}
VLLM_ARGS=${VLLM_ARGS:-}
LOAD_ARGS=${LOAD_ARGS:-}
BPF_STATS=${BPF_STATS:-1}
RAMP_S=${RAMP_S:-8}
GAP_S=${GAP_S:-1}
BUDGET_S=${BUDGET_S:-530}
PORT=${PORT:-8000}
READY_S=${READY_S:-240}
DRAIN_S=${DRAIN_S:-15}
PM_SLACK_S=45        # a session's attach, stop grace and detach, beyond --duration
TAIL_S=60            # what comes after the windows: drain, server stop, tar, comparison
URL=http://127.0.0.1:$PORT
export WINDOWS W PM_ARGS_A PM_ARGS_B CONC BLOCKS EAGER VLLM_ARGS LOAD_ARGS BPF_STATS RAMP_S GAP_S BUDGET_S PORT DRAIN_S
STATS_PATH=${STATS_PATH:-/proc/sys/kernel/bpf_stats_enabled}
T0=$(date +%s)

# ---------------------------------------------------------------- windows (checked first)
# WIN_LABEL[i] WIN_SECS[i] WIN_ARGS[i]: the plan; a bad plan stops before anything starts.
WIN_LABEL=(); WIN_SECS=(); WIN_ARGS=()
for w in $WINDOWS; do
    label=${w%%:*}; secs=$W
    [[ "$w" == *:* ]] && secs=${w#*:}
    if ! [[ "$secs" =~ ^[0-9]+$ && "$secs" -gt 0 ]]; then echo "bad window length in '$w'" >&2; exit 2; fi
    if [[ "$label" == off ]]; then
        args=
    elif [[ "$label" =~ ^[A-Z]$ ]]; then
        var=PM_ARGS_$label
        if [[ -z "${!var+set}" ]]; then echo "window $label: set $var (may be empty)" >&2; exit 2; fi
        args=${!var}
    else
        echo "bad window '$w': 'off' or one capital letter, optionally :SECONDS" >&2; exit 2
    fi
    WIN_LABEL+=("$label"); WIN_SECS+=("$secs"); WIN_ARGS+=("$args")
done
[[ ${#WIN_LABEL[@]} -gt 0 ]] || { echo "WINDOWS is empty" >&2; exit 2; }

# $OUT may be a folder handed to us (the device's, empty): keep it; empty it only when it
# holds an earlier run's results.
mkdir -p "$OUT" || exit 2
if [[ -n "$(ls -A "$OUT")" ]]; then
    [[ -f "$OUT/run.log" ]] || { echo "OUT=$OUT is neither empty nor an earlier run's results" >&2; exit 2; }
    find "$OUT" -mindepth 1 -delete
fi
rm -rf "$WORK"
mkdir -p "$OUT/pm" "$WORK/sessions"
exec > >(tee -a "$OUT/run.log") 2>&1
log() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }
now() { date +%s.%N; }
left() { echo $(( T0 + BUDGET_S - $(date +%s) )); }
log "real vLLM run: windows [$WINDOWS] (default ${W}s), CONC=$CONC BLOCKS=$BLOCKS EAGER=$EAGER VLLM_ARGS='$VLLM_ARGS'"
SUDO=
[[ $(id -u) -eq 0 ]] || SUDO="sudo -n"

# ---------------------------------------------------------------- vLLM and profilemate
SITE=/tmp/site
if [[ -z "${SERVER_CMD:-}" ]]; then
    [[ -f .gpu/MANIFEST ]] || { log "no .gpu/MANIFEST: run ../shared/real-vllm-gpu/prepare.sh on the CPU machine and carry .gpu"; exit 2; }
    STAMP=$(sha256sum < .gpu/MANIFEST | cut -c1-16)
    if [[ "$(cat "$SITE/.stamp" 2>/dev/null)" != "$STAMP" ]]; then
        log "installing vLLM into $SITE"
        rm -rf "$SITE"; mkdir -p "$SITE"
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .gpu/whl/*.whl \
            && tar -xJf .gpu/vllm-py.tar.xz -C "$SITE" \
            && xz -dc .gpu/C_trim.so.xz > "$SITE/vllm/_C_stable_libtorch.abi3.so" \
            || { log "vLLM install failed"; exit 2; }
        echo "$STAMP" > "$SITE/.stamp"
    else
        log "reusing $SITE (stamp $STAMP)"
    fi
    export PYTHONPATH=$SITE
fi
PM=${PROFILEMATE:-}
if [[ -z "$PM" ]]; then
    [[ -f .gpu/profilemate.xz ]] || { log "no .gpu/profilemate.xz and no PROFILEMATE"; exit 2; }
    mkdir -p "$WORK/bin"; PM=$WORK/bin/profilemate
    xz -dc .gpu/profilemate.xz > "$PM" && chmod +x "$PM" || { log "cannot unpack .gpu/profilemate.xz"; exit 2; }
fi
[[ -x "$PM" ]] || { log "profilemate not executable: $PM"; exit 2; }
{
    echo "### uname: $(uname -a)"
    nvidia-smi -L 2>&1; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    echo "### python: $(command -v python3) $(python3 -V 2>&1)"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1
    python3 -c 'import aiohttp; print("aiohttp", aiohttp.__version__)' 2>&1
    echo "### profilemate: $PM sha256 $(sha256sum < "$PM" | cut -c1-64)"
    [[ -n "${PROFILEMATE:-}" ]] || cat .gpu/profilemate.sha256 2>/dev/null
    "$PM" --version 2>&1
    echo "### kernel.bpf_stats_enabled: $(cat "$STATS_PATH" 2>&1)"
    echo "### checkout: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo 'no git here')"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export VLLM_CACHE_ROOT=/tmp/vllm-cache TRITON_CACHE_DIR=/tmp/triton-cache TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-INFO}
# flashinfer does not travel: vLLM's sampler would import it on CUDA unless told not to.
export VLLM_USE_FLASHINFER_SAMPLER=0

# ---------------------------------------------------------------- server
# A tiny dummy-weight Llama: the engine is CPU-bound (the GPU finishes each step before
# the CPU waits for it), and 256 blocks x 16 tokens for 64 requests make vLLM preempt.
MODEL=$WORK/tiny-llama; mkdir -p "$MODEL"
cat > "$MODEL/config.json" <<'EOF'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 512,
 "intermediate_size": 1408, "num_hidden_layers": 4, "num_attention_heads": 8,
 "num_key_value_heads": 8, "head_dim": 64, "hidden_act": "silu", "max_position_embeddings": 4096,
 "rms_norm_eps": 1e-05, "vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2,
 "tie_word_embeddings": false, "rope_theta": 10000.0, "torch_dtype": "bfloat16"}
EOF
SERVER_PID=; SERVER_PID_SEEN=
descendants() { echo "$1"; local c; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do descendants "$c"; done; }
stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    local all; all=$(descendants "$SERVER_PID")
    kill -TERM "$SERVER_PID" 2>/dev/null
    for _ in $(seq 40); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    for p in $all; do kill -KILL "$p" 2>/dev/null; done
    wait "$SERVER_PID" 2>/dev/null
    log "server stopped (processes $(tr '\n' ' ' <<< "$all"))"
    SERVER_PID=
}
restore_stats() { [[ -n "${OLD_STATS:-}" ]] && echo "$OLD_STATS" | $SUDO tee "$STATS_PATH" >/dev/null 2>&1; }
LOAD_PID=
cleanup() {
    restore_stats
    [[ -n "$LOAD_PID" ]] && kill -KILL "$LOAD_PID" 2>/dev/null
    stop_server
}
trap cleanup EXIT
start_server() {  # LABEL [extra flags]
    local label=$1; shift
    local cmd
    if [[ -n "${SERVER_CMD:-}" ]]; then
        read -ra cmd <<< "$SERVER_CMD"
    else
        # shellcheck disable=SC2206  # VLLM_ARGS is a list of flags
        cmd=(python3 -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name tiny
             --load-format dummy --skip-tokenizer-init --dtype bfloat16
             --max-model-len 2048 --max-num-seqs 64 --max-num-batched-tokens 2048
             --num-gpu-blocks-override "$BLOCKS" --block-size 16 --gpu-memory-utilization 0.2
             --attention-backend TRITON_ATTN --host 127.0.0.1 --port "$PORT" $VLLM_ARGS "$@")
    fi
    log "starting server [$label]: ${cmd[*]}"
    "${cmd[@]}" > "$WORK/server_$label.log" 2>&1 &
    SERVER_PID=$!; SERVER_PID_SEEN=$SERVER_PID
    local t=0
    while [[ $t -lt $READY_S ]]; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID"; log "server [$label] exited rc=$? after ${t}s"; SERVER_PID=; return 1
        fi
        if curl -sf -m 2 "$URL/health" >/dev/null 2>&1; then log "server [$label] ready after ${t}s, pid $SERVER_PID"; return 0; fi
        sleep 2; t=$((t + 2))
    done
    log "server [$label] not ready after ${READY_S}s"; stop_server; return 1
}
if [[ "${CALIBRATE:-0}" == 1 ]]; then
    log "profilemate calibrate"
    timeout -k 10 240 $SUDO "$PM" calibrate --out "$OUT/calibration.json" > "$OUT/calibrate.txt" 2>&1
    log "calibrate rc=$?"; tail -30 "$OUT/calibrate.txt"
    [[ -s "$OUT/calibration.json" ]] && export PM_CALIBRATION="--calibration $OUT/calibration.json"
fi
MODE=
if [[ "$EAGER" != 1 ]] && start_server graphs; then MODE=graphs
else
    if [[ "$EAGER" != 1 ]]; then
        log "graph server failed:"; grep -E "Error|error:" "$WORK/server_graphs.log" | head -20; tail -30 "$WORK/server_graphs.log"
    fi
    if [[ "$EAGER" != 1 ]] && grep -q ModuleNotFoundError "$WORK/server_graphs.log"; then
        log "a module is missing: eager would fail the same way"
    elif [[ "$EAGER" != 1 && $(left) -lt 300 ]]; then
        log "only $(left)s left: no eager retry"
    elif start_server eager --enforce-eager; then
        MODE=eager; [[ "$EAGER" != 1 ]] && MODE=eager-fallback
    fi
fi
for l in graphs eager; do
    [[ -f "$WORK/server_$l.log" ]] && tail -c 1500000 "$WORK/server_$l.log" > "$OUT/server_$l.log"
done
if [[ -z "$MODE" ]]; then
    log "no server came up"; tail -60 "$WORK"/server_*.log; exit 1
fi
grep -iE "version [0-9]|cudagraph_mode|Graph capturing finished|torch.compile took|GPU KV cache size|Maximum concurrency|Using .*backend|Asynchronous scheduling|enforce_eager" \
    "$WORK/server_${MODE%-fallback}.log" | head -20

curl -s -m 60 "$URL/v1/completions" -H 'Content-Type: application/json' \
    -d '{"model":"tiny","prompt":[1,306,4696,29892,445,338],"max_tokens":8,"ignore_eos":true}' > "$WORK/smoke.json"
log "smoke request: $(head -c 300 "$WORK/smoke.json")"
# Warm-up: the first requests of each shape compile Triton kernels; keep that out of the windows.
python3 "$HERE/real_vllm_load.py" --url "$URL" --concurrency 8 --max-duration 3 --drain 30 --seed 7 \
    --summary "$WORK/warmup.json" > "$WORK/warmup.txt" 2>&1
log "warm-up rc=$? $(grep -E '"finished_ok"|"errors"' "$WORK/warmup.txt" | tr -d ' \n')"

if [[ "${DOCTOR:-0}" == 1 ]]; then
    $SUDO "$PM" doctor > "$OUT/doctor.txt" 2>&1; log "doctor rc=$?"
    $SUDO "$PM" doctor --pid "$SERVER_PID" > "$OUT/doctor_pid.txt" 2>&1; log "doctor --pid rc=$?"
    $SUDO "$PM" doctor --pid "$SERVER_PID" --json > "$OUT/doctor_pid.json" 2>> "$OUT/doctor_pid.txt"
    cat "$OUT/doctor_pid.txt"
fi

# ---------------------------------------------------------------- load and windows
curl -s -m 10 "$URL/metrics" > "$OUT/metrics_before.prom"
clock_pair() {  # time.time() paired with CLOCK_MONOTONIC (mean of two reads around it)
    python3 -c 'import time, json
a = time.clock_gettime_ns(time.CLOCK_MONOTONIC); w = time.time(); b = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
print(json.dumps({"wall": w, "mono_ns": (a + b) // 2, "spread_ns": b - a}))'
}
CLOCK_A=$(clock_pair)
python3 "$HERE/real_vllm_load.py" --url "$URL" --concurrency "$CONC" --max-duration $((BUDGET_S)) \
    --drain "$DRAIN_S" --seed 1234 --summary "$OUT/load.json" --metrics "$OUT/metrics.jsonl" $LOAD_ARGS \
    > "$WORK/load.txt" 2>&1 &
LOAD_PID=$!
log "load: pid $LOAD_PID, $CONC concurrent; ramp ${RAMP_S}s"
sleep "$RAMP_S"
{
    for p in $(descendants "$SERVER_PID"); do
        printf '%s ppid=%s comm=%s threads=%s cmdline=%s\n' "$p" "$(ps -o ppid= -p "$p" | tr -d ' ')" \
            "$(cat "/proc/$p/comm" 2>/dev/null)" "$(ps -o nlwp= -p "$p" | tr -d ' ')" \
            "$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-200)"
    done
    nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv 2>/dev/null
} > "$OUT/process_tree.txt"
cat "$OUT/process_tree.txt"

OLD_STATS=$(cat "$STATS_PATH" 2>/dev/null || true)
stats_on() {
    [[ "$BPF_STATS" == 1 && -n "$OLD_STATS" ]] || return 0
    echo 1 | $SUDO tee "$STATS_PATH" >/dev/null 2>&1 || log "cannot enable $STATS_PATH (program_costs will be empty)"
}
printf 'index\tlabel\tkind\trequested_s\trc\twall_start\twall_end\tsession\tpm_args\n' > "$OUT/windows.tsv"
for i in "${!WIN_LABEL[@]}"; do
    label=${WIN_LABEL[$i]}; secs=${WIN_SECS[$i]}; args=${WIN_ARGS[$i]}
    kind=on; [[ "$label" == off ]] && kind=off
    need=$(( secs + TAIL_S )); [[ $kind == on ]] && need=$(( need + PM_SLACK_S ))
    if ! kill -0 "$LOAD_PID" 2>/dev/null; then
        log "window $i $label: the load has ended: skipped"
        printf '%s\t%s\t%s\t%s\tskipped: load ended\t\t\t\t%s\n' "$i" "$label" "$kind" "$secs" "$args" >> "$OUT/windows.tsv"
        continue
    fi
    if [[ $(left) -lt $need ]]; then
        log "window $i $label: needs ${need}s, $(left)s left: skipped"
        printf '%s\t%s\t%s\t%s\tskipped: budget\t\t\t\t%s\n' "$i" "$label" "$kind" "$secs" "$args" >> "$OUT/windows.tsv"
        continue
    fi
    if [[ $kind == off ]]; then
        log "window $i: detached ${secs}s"
        t_a=$(now); sleep "$secs"; t_b=$(now)
        printf '%s\t%s\t%s\t%s\t\t%s\t%s\t\t\n' "$i" "$label" "$kind" "$secs" "$t_a" "$t_b" >> "$OUT/windows.tsv"
    else
        base="${i}_$label"; dir="$WORK/sessions/$base"; mkdir -p "$dir"
        log "window $i: profilemate attach --pid $SERVER_PID --duration ${secs}s $args"
        stats_on
        t_a=$(now)
        # shellcheck disable=SC2086  # args is a list of flags
        timeout -k 15 -s INT $(( secs + PM_SLACK_S )) $SUDO "$PM" attach --pid "$SERVER_PID" \
            --duration "${secs}s" --out "$dir" ${PM_CALIBRATION:-} $args > "$OUT/pm/$base.stdout" 2> "$OUT/pm/$base.stderr"
        rc=$?
        t_b=$(now)
        restore_stats
        session=$(sed -n 's/^session: //p' "$OUT/pm/$base.stdout" | tail -1)
        if [[ -z "$session" ]]; then for d in "$dir"/session_*; do [[ -d "$d" ]] && session=$d; done; fi
        rel=; [[ -n "$session" && -d "$session" ]] && rel=${session#"$WORK/sessions/"}
        log "window $i $label: rc=$rc wall $(python3 -c "print(round($t_b - $t_a, 2))")s session ${rel:-none}"
        tail -15 "$OUT/pm/$base.stderr"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$label" "$kind" "$secs" "$rc" "$t_a" "$t_b" "$rel" "$args" >> "$OUT/windows.tsv"
    fi
    sleep "$GAP_S"
done
CLOCK_B=$(clock_pair)
echo "{\"before\": $CLOCK_A, \"after\": $CLOCK_B}" > "$OUT/clock.json"

log "stopping the load (drain ${DRAIN_S}s)"
kill -USR1 "$LOAD_PID" 2>/dev/null
for _ in $(seq $(( (DRAIN_S + 20) * 2 ))); do kill -0 "$LOAD_PID" 2>/dev/null || break; sleep 0.5; done
kill -KILL "$LOAD_PID" 2>/dev/null
wait "$LOAD_PID"; log "load rc=$?"; LOAD_PID=
head -40 "$WORK/load.txt"
curl -s -m 10 "$URL/metrics" > "$OUT/metrics_after.prom"
stop_server
for l in graphs eager; do
    [[ -f "$WORK/server_$l.log" ]] && tail -c 1500000 "$WORK/server_$l.log" > "$OUT/server_$l.log"
done

# ---------------------------------------------------------------- results
python3 - "$OUT/run.json" "$MODE" "$PM" "$SERVER_PID_SEEN" $(( $(date +%s) - T0 )) <<'PYEOF'
import json, os, sys
keys = ["WINDOWS", "W", "PM_ARGS_A", "PM_ARGS_B", "CONC", "BLOCKS", "EAGER", "VLLM_ARGS", "LOAD_ARGS", "BPF_STATS", "CALIBRATE", "DOCTOR",
        "RAMP_S", "GAP_S", "BUDGET_S", "PORT", "DRAIN_S", "SERVER_CMD"]
knobs = {k: os.environ.get(k) for k in keys}
knobs.update({k: v for k, v in os.environ.items() if k.startswith("PM_ARGS_")})
json.dump({"mode": sys.argv[2], "profilemate": sys.argv[3], "server_pid": sys.argv[4],
           "elapsed_s": int(sys.argv[5]), "knobs": knobs}, open(sys.argv[1], "w"), indent=1)
PYEOF
python3 "$HERE/compare_real_vllm.py" "$OUT" --sessions "$WORK/sessions" | tee "$OUT/compare.txt"
tar -C "$WORK" --exclude=cpu_profile.folded -cf - sessions | xz -T0 -6 > "$OUT/sessions.tar.xz"
size=$(stat -c %s "$OUT/sessions.tar.xz")
if [[ $size -gt 25000000 ]]; then
    log "sessions.tar.xz is $size bytes: leaving out the timelines and CPU tables"
    tar -C "$WORK" --exclude=cpu_profile.folded --exclude=cuda_graph_timeline.csv \
        --exclude=cpu_operations_timing.csv -cf - sessions | xz -T0 -6 > "$OUT/sessions.tar.xz"
fi
du -sh "$OUT"; ls -la "$OUT"
log "done: mode $MODE, $(grep -c . "$OUT/metrics.jsonl" 2>/dev/null) scrapes"
