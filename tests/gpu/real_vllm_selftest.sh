#!/usr/bin/env bash
# real_vllm.sh without a GPU: the same script, load generator and comparison against
# fake_vllm.py's server and profilemate stand-ins (any Linux machine, ~1.5 minutes), so
# the GPU run's plumbing is known to work before device time is spent on it.
#
#   PYTHON=/path/to/python-with-aiohttp bash tests/gpu/real_vllm_selftest.sh
#
# Checks: every window runs and is recorded, the fake's 10 % slowdown while attached
# shows as a cost, the sessions' steps / preemptions / finished requests fall inside
# vLLM's bracket, KV and queue readings pair with the scrapes, kernel.bpf_stats_enabled
# (a stand-in file here) is 1 only during sessions and restored, sessions.tar.xz leaves
# cpu_profile.folded out, a failing session and missing files or columns give n/a with
# the reason. Ends with 'N passed, N failed'.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
"$PY" -c 'import aiohttp' 2>/dev/null || { echo "need a python with aiohttp (PYTHON=...)" >&2; exit 2; }
PATH=$(dirname "$(command -v "$PY")"):$PATH
T=$(mktemp -d /tmp/real-vllm-selftest.XXXXXX)
PORT=${PORT:-$(( 20000 + RANDOM % 20000 ))}
PASS=0; FAIL=0
check() {  # NAME COMMAND...
    local name=$1; shift
    if "$@" >/dev/null 2>&1; then PASS=$((PASS + 1)); echo "ok   $name"
    else FAIL=$((FAIL + 1)); echo "FAIL $name"; fi
}
cat > "$T/profilemate" <<EOF
#!/bin/sh
# the stats stand-in must read 1 while a session runs
echo "bpf_stats=\$(cat $T/bpf_stats)" >&2
[ "\$(cat $T/bpf_stats)" = 1 ] || echo "STATS NOT ON" >&2
exec python3 $HERE/fake_vllm.py profilemate "\$@"
EOF
chmod +x "$T/profilemate"
echo 0 > "$T/bpf_stats"

# run NAME [VAR=VALUE...]: real_vllm.sh against the fakes, results in $T/NAME
run() {
    local name=$1; shift
    env "$@" OUT="$T/$name" WORK="$T/work_$name" PORT="$PORT" PROFILEMATE="$T/profilemate" \
        STATS_PATH="$T/bpf_stats" FAKE_PM_URL="http://127.0.0.1:$PORT" FAKE_VLLM_MARKER="$T/attached" \
        SERVER_CMD="python3 $HERE/fake_vllm.py server --port $PORT --marker $T/attached" \
        W=4 RAMP_S=2 GAP_S=1 DRAIN_S=3 CONC=24 \
        bash "$HERE/real_vllm.sh" > "$T/$name.out" 2>&1
    echo "real_vllm.sh [$name] rc=$? ($T/$name.out)"
}
# py FILE EXPR: EXPR over the summary.json in FILE (s), true or false
py() { python3 -c "import json, sys; s = json.load(open(sys.argv[1])); sys.exit(0 if ($2) else 1)" "$1"; }

run full
S=$T/full/summary.json
check "summary.json written" test -s "$S"
check "five windows recorded" py "$S" 'len(s["windows"]) == 5'
check "both sessions rc 0" py "$S" 'all(w["rc"] == 0 for w in s["windows"] if w["kind"] == "on")'
check "intervals from the steps' span" py "$S" 'all(w["interval"]["from"] == "steps\x27 span" for w in s["windows"] if w["kind"] == "on")'
check "attached windows cost 7-13 % (fake: 10 % while attached)" \
    py "$S" 'all(7 <= w["cost_pct"]["steps_per_s"] <= 13 for w in s["windows"] if w["kind"] == "on")'
check "detached steps/s near 400" py "$S" 'all(360 <= w["steps_per_s"] <= 420 for w in s["windows"] if w["kind"] == "off")'
check "steps inside vLLM's bracket" py "$S" 'all(x["steps_observed"]["inside_bracket"] for x in s["sessions"].values())'
check "preemptions inside the bracket" py "$S" 'all(x["preemptions_observed"]["inside_bracket"] for x in s["sessions"].values())'
check "finished requests inside the bracket" py "$S" 'all(x["finished_observed"]["inside_bracket"] for x in s["sessions"].values())'
# the fake's KV gauge swings 8 points a second; queues are steady: a misaligned time base shows in both
check "KV paired, median diff < 4 points" py "$S" 'all(x["kv_usage"]["paired"] > 10 and x["kv_usage"]["median_abs_diff"] < 4 for x in s["sessions"].values())'
check "running paired, median diff 0" py "$S" 'all(x["running"]["paired"] > 10 and x["running"]["median_abs_diff"] == 0 for x in s["sessions"].values())'
check "per-step queues paired" py "$S" 'all(x["per_step_queues"]["running"]["median_abs_diff"] == 0 for x in s["sessions"].values())'
check "time base from monotonic_start_ns" py "$S" 'all(x["time_base"].startswith("monotonic_start_ns") for x in s["sessions"].values())'
check "program costs per step" py "$S" 'all(x["program_costs"]["cuda_entry"]["hits_per_step"] > 0 for x in s["sessions"].values())'
check "bpf stats on during sessions" bash -c "! grep -q 'STATS NOT ON' $T/full/pm/*.stderr"
check "bpf stats restored" test "$(cat "$T/bpf_stats")" = 0
check "metrics.jsonl has scrapes" test "$(grep -c '"values"' "$T/full/metrics.jsonl")" -gt 40
check "load.json has requests" py "$T/full/load.json" 's["summary"]["finished_ok"] > 50'
check "sessions.tar.xz without cpu_profile.folded" \
    bash -c "tar -tJf $T/full/sessions.tar.xz | grep -q metadata.json && ! tar -tJf $T/full/sessions.tar.xz | grep -q folded"
check "fake server stopped" bash -c "! pgrep -f '[f]ake_vllm.py server --port $PORT'"
check "its child stopped" bash -c "! pgrep -f '[i]mport time; time.sleep.3600.'"
check "table printed" grep -q "steps found vs vLLM" "$T/full/compare.txt"
# the comparison again, from the tarball alone (as it comes back from the device)
mkdir -p "$T/back"; cp "$T/full"/*.json "$T/full"/*.jsonl "$T/full"/*.tsv "$T/full/sessions.tar.xz" "$T/back/"
rm -f "$T/back/summary.json"
python3 "$HERE/compare_real_vllm.py" "$T/back" > "$T/back.txt" 2>&1
check "compare from sessions.tar.xz" cmp <(sed 1d "$T/back.txt") <(sed 1d "$T/full/compare.txt")

# missing files and columns: n/a with the reason, the other checks still there
M=$T/mangled; mkdir -p "$M"; tar -xJf "$T/full/sessions.tar.xz" -C "$M"
a=$(find "$M/sessions" -maxdepth 2 -name 'session_*' -path '*_A/*' | head -1)
rm "$a/kv_cache_usage.csv"
python3 - "$a" <<'PYEOF'
import csv, json, sys
d = sys.argv[1]
rows = list(csv.DictReader(open(f"{d}/forward_pass_timing.csv")))
with open(f"{d}/forward_pass_timing.csv", "w", newline="") as f:
    w = csv.DictWriter(f, [k for k in rows[0] if k != "completion"], extrasaction="ignore")
    w.writeheader(); w.writerows(rows)
m = json.load(open(f"{d}/metadata.json"))
m["program_costs"] = []
del m["losses"]["reader"]
json.dump(m, open(f"{d}/metadata.json", "w"))
PYEOF
python3 "$HERE/compare_real_vllm.py" "$T/full" --sessions "$M/sessions" > "$T/mangled.txt" 2>&1
rc=$?
check "mangled: compare exits 0" test "$rc" -eq 0
check "mangled: no kv file named" grep -q "n/a (no kv_cache_usage.csv)" "$T/mangled.txt"
check "mangled: no completion column named" grep -q "n/a (forward_pass_timing.csv has no column completion)" "$T/mangled.txt"
check "mangled: empty program costs explained" grep -q "bpf_stats_enabled was not 1" "$T/mangled.txt"
check "mangled: no reader losses named" grep -q "n/a (no losses.reader)" "$T/mangled.txt"
check "mangled: steps still compared" py "$T/full/summary.json" 'all("steps" in x for x in s["sessions"].values())'

# a session that fails, and a window list with a custom letter and lengths
run fail FAKE_PM_FAIL=--sample-hz WINDOWS="off:3 A:3 C:3 off:3" PM_ARGS_C="--sample-hz 99"
S=$T/fail/summary.json
check "fail: summary written" test -s "$S"
check "fail: C rc 1, no session" py "$S" '[w["rc"] for w in s["windows"]] == [None, 0, 1, None]'
check "fail: C n/a" py "$S" 's["sessions"]["2_C"]["session"] == {"na": "no session directory"}'
check "fail: C rate from the command" py "$S" 's["windows"][2]["interval"]["from"].startswith("command wall times")'
check "fail: A compared" py "$S" 's["sessions"]["1_A"]["steps_observed"]["inside_bracket"]'
check "fail: bpf stats restored" test "$(cat "$T/bpf_stats")" = 0
# a window that would end past the budget is skipped, and the rest still runs
run budget WINDOWS="off:3 A:3 off:3" BUDGET_S=115
S=$T/budget/summary.json
check "budget: A skipped, both detached windows ran" py "$S" '[w["rc"] for w in s["windows"]] == [None, "skipped: budget", None] and all(isinstance(s["windows"][i]["steps_per_s"], float) for i in (0, 2))'
check "budget: skipped A shown" py "$S" 's["sessions"]["1_A"] == {"skipped": "skipped: budget"}'
# a bad plan stops before anything starts
env WINDOWS="off D" OUT="$T/badplan" PROFILEMATE=/bin/true bash "$HERE/real_vllm.sh" > "$T/badplan.out" 2>&1
rc=$?
check "bad plan refused (exit 2)" test "$rc" -eq 2
check "bad plan names the knob" grep -q "set PM_ARGS_D" "$T/badplan.out"
check "bad plan started nothing" test ! -e "$T/badplan"

echo "results in $T"
echo "$PASS passed, $FAIL failed"
[[ $FAIL -eq 0 ]]
