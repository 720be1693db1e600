#!/usr/bin/env python3
"""Same-process overhead of profilemate on the GPU workload.

Runs the workload for SECONDS of loop, attaches profilemate in the middle for ATTACH_S
seconds (until it has fully detached), and compares the workload's own throughput windows
(steps per 0.5 s, CLOCK_MONOTONIC) with probes attached against the windows before attach
and after detach. One process, one GPU state: run-to-run variance (clocks, allocator, host
noise) does not enter the comparison.

usage: overhead.py PROFILEMATE OUT_JSON SESSIONS_DIR [--pm-args "..."] [--seconds 26]
       [--attach-at 8] [--attach-s 8] -- WORKLOAD_ARGS...
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("profilemate")
    p.add_argument("out_json")
    p.add_argument("sessions")
    p.add_argument("--pm-args", default="")
    p.add_argument("--seconds", type=float, default=26.0)
    p.add_argument("--attach-at", type=float, default=8.0)
    p.add_argument("--attach-s", type=float, default=8.0)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    a = p.parse_args(argv[:split])
    wargs = argv[split + 1:]
    truth = a.out_json + ".truth.json"
    wl = subprocess.Popen(
        [sys.executable, "-u", os.path.join(HERE, "workload.py"), "--no-truth-events",
         "--seconds", str(a.seconds), "--truth", truth] + wargs,
        stdout=subprocess.PIPE, text=True)
    pid = None
    for line in wl.stdout:
        if line.startswith("pid=") and "ready" in line:
            pid = int(line.split()[0][4:])
            break
    if pid is None:
        wl.wait()
        print("workload never became ready", file=sys.stderr)
        return 1
    time.sleep(a.attach_at)
    t_attach = time.monotonic()
    pm = subprocess.run(
        [a.profilemate, "attach", "--pid", str(pid), "--quiet", "--out", a.sessions,
         "--duration", f"{a.attach_s}s"] + shlex.split(a.pm_args),
        capture_output=True, text=True, timeout=120)
    t_detached = time.monotonic()
    rest = wl.stdout.read()
    rc = wl.wait()
    if rc != 0 or pm.returncode != 0:
        print(f"workload rc={rc} profilemate rc={pm.returncode}: {pm.stderr}", file=sys.stderr)
        return 1
    with open(truth) as f:
        t = json.load(f)
    session = next((l[len("session: "):] for l in pm.stdout.splitlines() if l.startswith("session: ")), None)
    base, att = [], []
    for t0, t1, n in t["windows"]:
        rate = n / (t1 - t0)
        if t1 < t_attach - 0.1 or t0 > t_detached + 0.1:
            base.append(rate)
        elif t0 > t_attach + 1.0 and t1 < t_detached:
            att.append(rate)
    meta = {}
    if session:
        with open(os.path.join(session, "metadata.json")) as f:
            meta = json.load(f)
    mb, ma = statistics.median(base), statistics.median(att)
    res = {
        "workload_args": wargs,
        "pm_args": a.pm_args,
        "baseline_windows": len(base),
        "attached_windows": len(att),
        "baseline_median_steps_per_sec": mb,
        "attached_median_steps_per_sec": ma,
        "overhead_pct": 100.0 * (1.0 - ma / mb),
        "baseline_stdev": statistics.pstdev(base),
        "attached_stdev": statistics.pstdev(att),
        "attach_to_detached_s": t_detached - t_attach,
        "session": session,
        "records_read": meta.get("losses", {}).get("records_read"),
        "ring_full_drops": meta.get("losses", {}).get("kernel", {}).get("ring_full_drops"),
        "session_duration_s": meta.get("duration_sec"),
        "probes_attached": meta.get("probes", {}).get("attached_count"),
        "workload_done": rest.strip(),
    }
    with open(a.out_json, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps({k: v for k, v in res.items() if k != "workload_args"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
