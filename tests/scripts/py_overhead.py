#!/usr/bin/env python3
"""Target-side cost of Python stack sampling: a CPU-bound Python workload measured in the
same process before, during and after `profilemate attach`.

    py_overhead.py PROFILEMATE_BIN [--python PY] [--hz 199] [--depth 40] [--attach-s 10]

The workload (run under --python, a child process) recurses --depth frames deep (stacks as
deep as vLLM's) and spins a pure-Python loop at the bottom, printing iterations per 250 ms
window with a CLOCK_MONOTONIC stamp. ProfileMate is attached for --attach-s seconds in the
middle; windows fully inside [attached + 0.5 s, end - 0.5 s] are "during", the others
(minus the attach/detach transitions) "outside". Prints one JSON object: medians, the
overhead in percent, and the kernel-measured mean cost per walk (BPF statistics are enabled
for the run and restored afterwards).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

WORKLOAD = r"""
import sys, time
depth = int(sys.argv[1]); seconds = float(sys.argv[2])
def spin(n):
    x = 0
    for i in range(200):
        x += i * i
    return x
def down(d):
    if d == 0:
        return spin(0)
    return down(d - 1)
print("ready", flush=True)
end = time.monotonic() + seconds
window = time.monotonic_ns(); n = 0
while time.monotonic() < end:
    down(depth); n += 1
    now = time.monotonic_ns()
    if now - window >= 250_000_000:
        print("rate", now, n * 1e9 / (now - window), flush=True)
        window = now; n = 0
"""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profilemate")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--hz", type=int, default=199)
    p.add_argument("--depth", type=int, default=40)
    p.add_argument("--attach-s", type=float, default=10.0)
    p.add_argument("--extra", default="", help="more profilemate arguments")
    a = p.parse_args()

    stats_path = "/proc/sys/kernel/bpf_stats_enabled"
    old_stats = open(stats_path).read().strip() if os.path.exists(stats_path) else None
    if old_stats is not None:
        open(stats_path, "w").write("1")
    before_s, after_s = 6.0, 5.0
    total = before_s + a.attach_s + 3.0 + after_s
    out_dir = tempfile.mkdtemp(prefix="pm-overhead-")
    wl = subprocess.Popen([a.python, "-c", WORKLOAD, str(a.depth), str(total)],
                          stdout=subprocess.PIPE, text=True)
    try:
        assert wl.stdout.readline().strip() == "ready"
        rates = []
        t_start = time.monotonic_ns()

        def read_until(deadline_ns):
            while time.monotonic_ns() < deadline_ns:
                line = wl.stdout.readline()
                if not line:
                    return
                f = line.split()
                if f[0] == "rate":
                    rates.append((int(f[1]), float(f[2])))

        read_until(t_start + int(before_s * 1e9))
        cmd = [a.profilemate, "attach", "--pid", str(wl.pid), "--duration", f"{a.attach_s}s",
               "--sample-hz", str(a.hz), "--out", out_dir, "--wait"] + a.extra.split()
        pm = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        attached = None
        err_lines = []
        while attached is None:
            line = pm.stderr.readline()
            if not line:
                break
            err_lines.append(line.rstrip())
            if "attached to" in line:
                attached = time.monotonic_ns()
        if attached is None:
            raise SystemExit(f"profilemate did not attach: {err_lines}")
        read_until(attached + int((a.attach_s + 3.0 + after_s) * 1e9))
        out, err = pm.communicate(timeout=120)
        session = next((l.split(" ", 1)[1] for l in out.splitlines() if l.startswith("session: ")), None)
    finally:
        wl.kill()
        if old_stats is not None:
            open(stats_path, "w").write(old_stats)
    lo, hi = attached + 500_000_000, attached + int((a.attach_s - 0.5) * 1e9)
    during = [r for t, r in rates if lo <= t - 250_000_000 and t <= hi]
    outside = [r for t, r in rates
               if t < attached - 250_000_000 or t - 250_000_000 > attached + int((a.attach_s + 2.5) * 1e9)]
    md = json.load(open(os.path.join(session, "metadata.json"))) if session else {}
    summary = json.load(open(os.path.join(session, "cpu_timing_summary.json"))) if session else {}
    costs = {c["program"]: c for c in md.get("program_costs", [])}
    med_out, med_in = statistics.median(outside), statistics.median(during)
    sample = costs.get("py_sample", {})
    walks = (md.get("python", {}).get("stats") or {}).get("sampled_stacks", 0)
    # The program also runs (and returns at once) on ticks of other processes: charging its
    # whole run time to the walks gives an upper bound per walk.
    walk_ns = sample.get("run_time_ns", 0) / walks if walks else None
    print(json.dumps({
        "python": a.python,
        "depth": a.depth,
        "sample_hz": a.hz,
        "windows_outside": len(outside),
        "windows_during": len(during),
        "rate_outside_median": round(med_out, 1),
        "rate_during_median": round(med_in, 1),
        "overhead_pct": round(100.0 * (med_out - med_in) / med_out, 3),
        "samples": sum(v.get("samples", 0) for v in summary.get("operations", {}).values()),
        "program_runs": sample.get("runs"),
        "program_mean_ns": sample.get("mean_ns"),
        "walks": walks,
        "walk_ns_upper_bound": round(walk_ns) if walk_ns else None,
        "frames_per_walk": round((md.get("python", {}).get("stats") or {}).get("frames", 0) / walks, 1) if walks else None,
        "estimated_overhead_pct": round(a.hz * walk_ns / 1e7, 3) if walk_ns else None,
        "cuda_entry_mean_ns": costs.get("cuda_entry", {}).get("mean_ns"),
        "stats": md.get("python", {}).get("stats"),
    }, indent=1))


if __name__ == "__main__":
    main()
