#!/usr/bin/env bash
# Pipeline stress: N fixture processes run the hot loop of probed calls over the fake CUDA
# libraries at once, all children of one parent, with profilemate attached to the parent.
# Reports the probe records/s the tracer took in, drops, tracer CPU per record and RSS.
#
#   stress.sh PROFILEMATE PM_FIXTURE FAKE_CUDA_DIR OUT_DIR [N_PROCS] [ITERATIONS]
set -euo pipefail
PM=$(readlink -f "$1"); FIX=$(readlink -f "$2"); LIBS=$(readlink -f "$3"); OUT=$4
N=${5:-8}; ITER=${6:-400000}
mkdir -p "$OUT"
unset FAKE_CUDA_LOG
# The parent: starts N hot loops (each waits, loads the libraries, waits, then runs) and waits.
bash -c "for i in \$(seq 1 $N); do '$FIX' --lib-dir '$LIBS' --wait-before-load-ms 1500 \
  --wait-after-load-ms 1000 --hot-loop $ITER > '$OUT/fixture_'\$i'.log' & done; wait" &
PARENT=$!
sleep 0.2
"$PM" attach --pid "$PARENT" --wait --quiet --rescan-ms 50 --out "$OUT/sessions" >"$OUT/pm.out" 2>"$OUT/pm.err" &
PMPID=$!
CPU=0; HWM=0
HZ=$(getconf CLK_TCK)
while kill -0 "$PMPID" 2>/dev/null; do
    if read -r -a F < <(sed 's/.*) //' "/proc/$PMPID/stat" 2>/dev/null); then
        CPU=$(( ${F[11]} + ${F[12]} ))
    fi
    H=$(awk '/VmHWM/ {print $2}' "/proc/$PMPID/status" 2>/dev/null || echo 0)
    [[ -n "$H" && "$H" -gt "$HWM" ]] && HWM=$H
    if ! kill -0 "$PARENT" 2>/dev/null; then :; fi
    sleep 0.2
done
wait "$PARENT" || true
wait "$PMPID" || true
SESSION=$(sed -n 's/^session: //p' "$OUT/pm.out")
python3 - "$SESSION" "$OUT" "$N" "$ITER" "$CPU" "$HZ" "$HWM" <<'PY'
import glob, json, sys
session, out, n, it, cpu, hz, hwm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
m = json.load(open(f"{session}/metadata.json"))
rates = []
for f in glob.glob(f"{out}/fixture_*.log"):
    for line in open(f):
        for w in line.split():
            if w.startswith("calls_per_sec="):
                rates.append(float(w.split("=")[1]))
secs = max(3 * it / r for r in rates)
rec = m["losses"]["records_read"]
res = {
    "processes": n, "iterations_each": it, "processes_reporting": len(rates),
    "target_calls_per_sec_each": sorted(round(r) for r in rates),
    "loop_seconds_max": secs,
    "records_read": rec, "records_per_sec": rec / secs,
    "ring_full_drops": m["losses"]["kernel"]["ring_full_drops"],
    "decode_errors": m["losses"]["decode_errors"],
    "tracer_cpu_sec": cpu / hz, "tracer_cpu_us_per_record": cpu / hz * 1e6 / max(rec, 1),
    "tracer_rss_mib": hwm / 1024, "probes_attached": m["probes"]["attached_count"],
    "targets": len(m["targets"]),
}
json.dump(res, open(f"{out}/stress.json", "w"), indent=1)
print(json.dumps(res, indent=1))
PY
