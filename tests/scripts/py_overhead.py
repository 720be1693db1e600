#!/usr/bin/env python3
"""Target-side cost of Python stack sampling: a CPU-bound Python workload measured before,
during and after `profilemate attach`, against an identical unprofiled control process.

    py_overhead.py PROFILEMATE_BIN [--python PY] [--hz 199] [--depth 40] [--attach-s 10]

The workload (run under --python, a child process) recurses --depth frames deep (stacks as
deep as vLLM's) and spins a pure-Python loop at the bottom, printing iterations per 250 ms
window with a CLOCK_MONOTONIC stamp. Two copies run, each pinned to its own CPU when the
machine has more than two: the target and a control that is never attached. ProfileMate is
attached to the target for --attach-s seconds in the middle; windows fully inside
[attached + 0.5 s, end - 0.5 s] are "during", the others (minus the attach/detach
transitions) "outside". The overhead is 1 - median(target/control during) /
median(target/control outside): the control cancels machine-wide speed changes (frequency,
neighbours). Prints one JSON object, with the kernel-measured cost per walk (BPF statistics
are enabled for the run and restored afterwards).
"""

import argparse
import json
import os
import resource
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
    cpus = sorted(os.sched_getaffinity(0))
    pins = [[cpus[-1]], [cpus[-2]]] if len(cpus) > 2 else [None, None]

    def start(pin):
        return subprocess.Popen(
            [a.python, "-c", WORKLOAD, str(a.depth), str(total)], stdout=subprocess.PIPE,
            text=True, preexec_fn=(lambda: os.sched_setaffinity(0, pin)) if pin else None)

    wl, control = start(pins[0]), start(pins[1])
    try:
        assert wl.stdout.readline().strip() == "ready"
        assert control.stdout.readline().strip() == "ready"
        rates, control_rates = [], []
        t_start = time.monotonic_ns()
        import threading

        def pump(proc, into):
            for line in proc.stdout:
                f = line.split()
                if f and f[0] == "rate":
                    into.append((int(f[1]), float(f[2])))

        threading.Thread(target=pump, args=(control, control_rates), daemon=True).start()

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
        # The tracer runs on the other CPUs: its own work must not land on the target's CPU.
        rest = [c for c in cpus if not any(pin and c in pin for pin in pins)]
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        pm = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              preexec_fn=(lambda: os.sched_setaffinity(0, rest)) if pins[0] else None)
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
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        tracer_cpu_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        session = next((l.split(" ", 1)[1] for l in out.splitlines() if l.startswith("session: ")), None)
    finally:
        wl.kill()
        control.kill()
        if old_stats is not None:
            open(stats_path, "w").write(old_stats)
    lo, hi = attached + 500_000_000, attached + int((a.attach_s - 0.5) * 1e9)

    def ratio(t):
        # The control's window closest in time.
        c = min(control_rates, key=lambda cr: abs(cr[0] - t))
        return c[1]

    def is_during(t):
        return lo <= t - 250_000_000 and t <= hi

    def is_outside(t):
        return t < attached - 250_000_000 or t - 250_000_000 > attached + int((a.attach_s + 2.5) * 1e9)

    during = [r for t, r in rates if is_during(t)]
    outside = [r for t, r in rates if is_outside(t)]
    rel_during = [r / ratio(t) for t, r in rates if is_during(t)]
    rel_outside = [r / ratio(t) for t, r in rates if is_outside(t)]
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
        "overhead_pct_same_process": round(100.0 * (med_out - med_in) / med_out, 3),
        "overhead_pct_vs_control": round(
            100.0 * (1 - statistics.median(rel_during) / statistics.median(rel_outside)), 3),
        "pinned_cpus": pins,
        "tracer_cpu_s": round(tracer_cpu_s, 3),
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
