#!/usr/bin/env python3
"""What each profilemate session of a real_vllm.sh run saw, against vLLM's own /metrics.

    compare_real_vllm.py RESULTS_DIR [--sessions DIR]

RESULTS_DIR is real_vllm.sh's $OUT: windows.tsv, metrics.jsonl, clock.json, run.json,
load.json and the session directories (DIR, else RESULTS_DIR/sessions/, else unpacked from
RESULTS_DIR/sessions.tar.xz). Prints a table and writes RESULTS_DIR/summary.json.

Throughput per window: vllm:generation_tokens_total and vllm:iteration_tokens_total_count
(one observation per engine step with output) between the first and the last scrape inside
the window, per second. A detached window spans its sleep; an attached one the steps' span
(first step found to the last one's completion: all probes in place), else the session
(metadata start + duration_sec), else the command's wall span when there is no session. The
cost of an attached window is 1 - its rate / the mean rate of the nearest detached window
on each side, in %; the spread of those two is the noise the cost must be read against.

Per session, vLLM's counters at the session's start and end wall times are interpolated
between the scrapes around each; the bracket [lo, hi] is what the counter could be if all
the change between those scrapes fell at one end (each scrape is read at some moment between
its request and its response), so a count that lies outside it disagrees with vLLM. The
session's wall start is CLOCK_MONOTONIC's monotonic_start_ns mapped through clock.json's
time.time()/CLOCK_MONOTONIC pair (metadata start_time when that is missing). KV usage and
queue readings are paired with the nearest scrape within 0.25 s (the scrapes' own moments).
Anything missing is shown as n/a with the reason. Standard library only.
"""

import argparse
import bisect
import csv
import datetime
import json
import os
import re
import statistics
import sys
import tarfile
import tempfile

GEN = "vllm:generation_tokens_total"
STEPS = "vllm:iteration_tokens_total_count"
PREEMPT = "vllm:num_preemptions_total"
SUCCESS = "vllm:request_success_total"
KV = "vllm:kv_cache_usage_perc"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
PAIR_S = 0.25


class NA:
    """A value that could not be computed, and why."""

    def __init__(self, why):
        self.why = why

    def __str__(self):
        return f"n/a ({self.why})"


def jsonable(v):
    if isinstance(v, NA):
        return {"na": v.why}
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def fnum(v):
    """A CSV/JSON cell as a float (None when empty or not a number)."""
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def fmt(v, nd=1):
    if isinstance(v, NA):
        return str(v)
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return NA(f"no {os.path.basename(path)}")
    except (OSError, ValueError) as e:
        return NA(f"{os.path.basename(path)} unreadable: {e}")


def read_csv(session, name):
    """Rows of a session CSV as dicts, or NA."""
    path = os.path.join(session, name)
    if not os.path.exists(path):
        return NA(f"no {name}")
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error) as e:
        return NA(f"{name} unreadable: {e}")


def count_by(rows, column):
    """Rows per value of `column` (an empty cell counts as "(empty)")."""
    c = {}
    for r in rows:
        key = r[column] or "(empty)"
        c[key] = c.get(key, 0) + 1
    return c


def need_columns(rows, name, cols):
    """NA if the CSV lacks a column (a header-only file has its columns but no rows)."""
    if isinstance(rows, NA):
        return rows
    if not rows:
        return None
    missing = [c for c in cols if c not in rows[0]]
    return NA(f"{name} has no column {', '.join(missing)}") if missing else None


def dig(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def parse_rfc3339(s):
    """chrono's to_rfc3339 (up to 9 fraction digits) as Unix seconds."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", s or "")
    if not m:
        return None
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.datetime.fromisoformat(f"{m.group(1)}.{frac}{tz}").timestamp()


# ---------------------------------------------------------------- /metrics timeline


class Scrapes:
    """The /metrics scrapes that succeeded, in time order."""

    def __init__(self, path):
        self.rows, self.failed = [], 0
        self.why = None
        try:
            with open(path) as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        r = json.loads(line)
                    except ValueError:
                        self.failed += 1
                        continue
                    if "values" in r:
                        self.rows.append(r)
                    else:
                        self.failed += 1
        except FileNotFoundError:
            self.why = "no metrics.jsonl"
        self.rows.sort(key=lambda r: r["t"])
        self.t = [r["t"] for r in self.rows]
        if not self.rows and not self.why:
            self.why = "no successful /metrics scrape"

    def series(self, name):
        return [(r["t"], r["values"][name]) for r in self.rows if name in r["values"]]

    def series_spans(self, name):
        """(request sent, response received, value): the server read the gauge in between."""
        return [(r.get("t_req", r["t"]), r.get("t_resp", r["t"]), r["values"][name])
                for r in self.rows if name in r["values"]]

    def at(self, name, t):
        """Counter at wall time t: (interpolated, lo, hi), or NA."""
        if self.why:
            return NA(self.why)
        pts = [r for r in self.rows if name in r["values"]]
        if not pts:
            return NA(f"{name} not in /metrics")
        ts = [r["t"] for r in pts]
        i = bisect.bisect_left(ts, t)
        if i == 0 and t < ts[0] or i == len(ts):
            return NA("outside the scrapes")
        a, b = pts[max(0, i - 1)], pts[i]
        va, vb = a["values"][name], b["values"][name]
        est = va if b["t"] == a["t"] else va + (vb - va) * (t - a["t"]) / (b["t"] - a["t"])
        before = [r["values"][name] for r in pts if r["t_resp"] <= t]
        after = [r["values"][name] for r in pts if r["t_req"] >= t]
        lo = before[-1] if before else est
        hi = after[0] if after else est
        return est, min(lo, est), max(hi, est)

    def delta(self, name, a, b):
        """Counter change over [a, b]: dict(est, lo, hi), or NA."""
        s, e = self.at(name, a), self.at(name, b)
        for x in (s, e):
            if isinstance(x, NA):
                return x
        return {"est": e[0] - s[0], "lo": max(0.0, e[1] - s[2]), "hi": e[2] - s[1]}

    def rate(self, name, a, b):
        """Per-second change between the first and the last scrape inside [a, b], or NA."""
        if self.why:
            return NA(self.why)
        pts = [(r["t"], r["values"][name]) for r in self.rows if a <= r["t"] <= b and name in r["values"]]
        if len(pts) < 2 or pts[-1][0] - pts[0][0] < 1.0:
            return NA(f"{len(pts)} scrapes inside")
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])

    def nearest(self, t):
        i = bisect.bisect_left(self.t, t)
        best = None
        for j in (i - 1, i):
            if 0 <= j < len(self.rows) and (best is None or abs(self.t[j] - t) < abs(self.t[best] - t)):
                best = j
        return (self.rows[best], abs(self.t[best] - t)) if best is not None else (None, None)


def bracket(d, nd=0):
    if isinstance(d, NA):
        return str(d)
    return f"{d['est']:,.{nd}f} [{d['lo']:,.{nd}f}..{d['hi']:,.{nd}f}]"


def versus(found, d):
    """'found vs vLLM est [lo..hi]', inside/outside the bracket, found/est in %."""
    if isinstance(found, NA):
        return found, str(found)
    if isinstance(d, NA):
        return {"found": found, "vllm": d}, f"{found:,} vs {d}"
    inside = d["lo"] - 0.5 <= found <= d["hi"] + 0.5
    ratio = 100.0 * found / d["est"] if d["est"] else None
    out = {"found": found, "vllm_est": round(d["est"], 1), "vllm_lo": d["lo"], "vllm_hi": d["hi"],
           "found_pct_of_vllm": None if ratio is None else round(ratio, 2), "inside_bracket": inside}
    text = f"{found:,} vs {bracket(d)}" + (f" = {ratio:.1f} %" if ratio is not None else "") \
        + ("" if inside else " OUTSIDE")
    return out, text


# ---------------------------------------------------------------- sessions


def pair_readings(rows, scrapes, wall0, pairs):
    """|ours - vLLM| for rows within PAIR_S of a scrape: {label: stats}, per (column, series, scale)."""
    out = {}
    for col, series, scale in pairs:
        diffs = []
        n = 0
        for r in rows:
            ts, v = fnum(r.get("timestamp_sec")), fnum(r.get(col))
            if ts is None or v is None:
                continue
            n += 1
            s, dt = scrapes.nearest(wall0 + ts)
            if s is None or dt > PAIR_S or series not in s["values"]:
                continue
            diffs.append(abs(v - scale * s["values"][series]))
        if not diffs:
            out[col] = NA(f"none of {n} readings within {PAIR_S} s of a scrape")
        else:
            out[col] = {"readings": n, "paired": len(diffs), "median_abs_diff": round(statistics.median(diffs), 3),
                        "p90_abs_diff": round(pct(diffs, 90), 3), "max_abs_diff": round(max(diffs), 3)}
    return out


MATCH_LAG_S = 0.25
# Our per-step readings are stamped when read, a few ms after the step's state (the batch
# read delay, P99 ~2 ms on the GPU machine): a reading up to this long after the response
# can still be the state the server reported.
READ_SLACK_S = 0.01


def match_recent(rows, scrapes, wall0, col, series, scale, tol):
    """How a gauge compares with the per-step readings just before it: vLLM's API server
    publishes the engine's stats of a recent step, so for each scrape at wall time t the
    closest of our readings in [request - MATCH_LAG_S, response + READ_SLACK_S] (the gauge
    equals some recent step's value when every step is read; the server reads it somewhere
    between the request and the response)."""
    pts = sorted((wall0 + fnum(r["timestamp_sec"]), fnum(r.get(col))) for r in rows
                 if fnum(r.get("timestamp_sec")) is not None and fnum(r.get(col)) is not None)
    if not pts:
        return NA("no readings")
    times = [p[0] for p in pts]
    best = []
    for t_req, t_resp, v in scrapes.series_spans(series):
        lo = bisect.bisect_left(times, t_req - MATCH_LAG_S)
        hi = bisect.bisect_right(times, t_resp + READ_SLACK_S)
        if lo < hi and times[0] <= t_req - MATCH_LAG_S and t_resp + READ_SLACK_S <= times[-1]:
            best.append(min(abs(pts[i][1] - scale * v) for i in range(lo, hi)))
    if not best:
        return NA(f"no scrape with readings in the {MATCH_LAG_S} s before it")
    within = sum(1 for b in best if b <= tol)
    return {"scrapes": len(best), "within_tol": within, "within_pct": round(100.0 * within / len(best), 1),
            "median_abs_diff": round(statistics.median(best), 3), "max_abs_diff": round(max(best), 3)}


def pair_text(d, unit):
    if isinstance(d, NA):
        return str(d)
    return (f"median {d['median_abs_diff']:g} {unit} (p90 {d['p90_abs_diff']:g}, max {d['max_abs_diff']:g}; "
            f"{d['paired']}/{d['readings']} paired)")


def steps_span(fp):
    """First step start to last step completion (session seconds): every probe was in place
    and the tracer was reading; the session also holds the attach and the stop grace."""
    if isinstance(fp, NA):
        return fp
    if not fp or "timestamp_sec" not in fp[0]:
        return NA("no steps" if not fp else "forward_pass_timing.csv has no column timestamp_sec")
    ts = [fnum(r["timestamp_sec"]) for r in fp if fnum(r["timestamp_sec"]) is not None]
    ends = [fnum(r.get("completion_sec")) for r in fp if fnum(r.get("completion_sec")) is not None] or ts
    if not ts:
        return NA("no step timestamps")
    return min(ts), max(ends)


def session_checks(win, session, scrapes, clock):
    """(summary dict, [(check, text)]) for one attached window."""
    res, lines = {}, []

    def add(key, label, value, text=None):
        res[key] = value
        lines.append((label, text if text is not None else fmt(value)))

    def safely(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one broken check must not hide the others
            add(fn.__name__, fn.__name__, NA(f"error: {type(e).__name__}: {e}"))

    add("rc", "profilemate rc", win["rc"])
    add("command_wall_s", "command wall time", win["wall_s"], f"{win['wall_s']:.2f} s" if win["wall_s"] else "-")
    if session is None:
        add("session", "session", NA("no session directory"))
        return res, lines
    meta = read_json(os.path.join(session, "metadata.json"))
    if isinstance(meta, NA):
        add("session", "session", meta)
        return res, lines
    add("session", "session", os.path.basename(session))
    dur = fnum(meta.get("duration_sec"))
    add("duration_sec", "session length", dur,
        f"{dur:.2f} s (requested {win['requested_s']} s; {meta.get('stop_reason', '?')})" if dur else
        str(NA("no duration_sec")))
    wall0 = win["session_start"]
    add("time_base", "session start from", win["time_base"])

    def drops():
        k = dig(meta, "losses", "kernel")
        if not isinstance(k, dict):
            return add("kernel_drops", "kernel drops (calls/stacks/usdt)", NA("no losses.kernel"))
        names = ("ring_full_drops", "stack_ring_full_drops", "usdt_ring_full_drops")
        v = {n: k.get(n) for n in names}
        add("kernel_drops", "kernel drops (calls/stacks/usdt)", v, " / ".join(fmt(v[n]) for n in names))

    def reader():
        r = dig(meta, "losses", "reader")
        if not isinstance(r, dict):
            return add("reader_losses", "reader shed / queue-full drops", NA("no losses.reader"))
        full = r.get("queue_full_drops")
        full_n = sum(full.values()) if isinstance(full, dict) else full
        v = {"samples_shed": r.get("samples_shed"), "queue_full_drops": full_n,
             "decode_errors": r.get("decode_errors"), "queue_peak_bytes": r.get("queue_peak_bytes")}
        add("reader_losses", "reader shed / queue-full drops", v,
            f"{fmt(v['samples_shed'])} / {fmt(full_n)} (decode errors {fmt(v['decode_errors'])}, "
            f"queue peak {fmt(v['queue_peak_bytes'])} B)")

    def pipeline():
        p = dig(meta, "losses", "pipeline")
        if not isinstance(p, dict):
            add("unprocessed_at_stop", "unprocessed at stop", NA("no losses.pipeline"))
            return add("lag_ms", "pipeline lag P50/P99/max", NA("no losses.pipeline"))
        u = p.get("unprocessed_at_stop")
        add("unprocessed_at_stop", "unprocessed at stop", sum(u.values()) if isinstance(u, dict) else u)
        lag = p.get("lag_ms")
        add("lag_ms", "pipeline lag P50/P99/max",
            lag if isinstance(lag, dict) else NA("no lag_ms"),
            f"{fmt(lag.get('p50'))} / {fmt(lag.get('p99'))} / {fmt(lag.get('max'))} ms" if isinstance(lag, dict)
            else None)
        st = p.get("stage_ms")
        if isinstance(st, dict):
            add("stage_ms", "pipeline stage time", st,
                ", ".join(f"{k} {fnum(v):,.0f}" for k, v in st.items() if fnum(v) is not None) + " ms")

    def read_delay():
        d = dig(meta, "python", "vllm_batches", "read_delay_us")
        b = dig(meta, "python", "vllm_batches")
        if not isinstance(d, dict):
            return add("read_delay_us", "batch read delay P50/P99/max", NA("no python.vllm_batches.read_delay_us"))
        add("read_delay_us", "batch read delay P50/P99/max", d,
            f"{fmt(d.get('p50'))} / {fmt(d.get('p99'))} / {fmt(d.get('max'))} µs")
        add("vllm_batches", "batches read (stale/torn)",
            {k: b.get(k) for k in ("batches", "stale", "torn", "wrong_type", "repeated", "last_error")},
            f"{fmt(b.get('batches'))} ({fmt(b.get('stale'))} / {fmt(b.get('torn'))})"
            + (f", last error: {b['last_error']}" if b.get("last_error") else ""))

    fp = read_csv(session, "forward_pass_timing.csv")
    span_ok = dur is not None and wall0 is not None
    events = {}
    seen = steps_span(fp) if wall0 is not None else NA("no session start")

    def steps():
        bad = need_columns(fp, "forward_pass_timing.csv", ["timestamp_sec", "pid"])
        if bad:
            return add("steps", "steps found vs vLLM (session)", bad)
        n = len(fp)
        v, text = versus(n, scrapes.delta(STEPS, wall0, wall0 + dur) if span_ok else NA("no session times"))
        add("steps", "steps found vs vLLM (session)", v, text)
        pids = {}
        for r in fp:
            pids[r["pid"]] = pids.get(r["pid"], 0) + 1
        res["steps_by_pid"] = pids
        if isinstance(seen, NA):
            return add("steps_observed", "steps vs vLLM (steps' span)", seen)
        a, b = seen
        v, text = versus(n, scrapes.delta(STEPS, wall0 + a, wall0 + b))
        add("steps_observed", "steps vs vLLM (steps' span)", v, f"{text} ({a:.2f}-{b:.2f} s)")

    def completion():
        bad = need_columns(fp, "forward_pass_timing.csv", ["completion"])
        if bad or not fp:
            return add("completion", "completion classes", bad or NA("no rows"))
        c = count_by(fp, "completion")
        add("completion", "completion classes", c,
            ", ".join(f"{k} {v:,} ({100 * v / len(fp):.1f} %)" for k, v in sorted(c.items())))

    def phase():
        bad = need_columns(fp, "forward_pass_timing.csv", ["phase"])
        if bad or not fp:
            return add("phase", "phase known", bad or NA("no rows"))
        c = count_by(fp, "phase")
        known = sum(v for k, v in c.items() if k not in ("unknown", "(empty)"))
        add("phase", "phase known", {"known_pct": round(100 * known / len(fp), 2), "by_phase": c},
            f"{100 * known / len(fp):.1f} % (" + ", ".join(f"{k} {v:,}" for k, v in sorted(c.items())) + ")")

    def counted(key, label, n, series, extra=""):
        """n against vLLM's series over the session and over the steps' span."""
        v, text = versus(n, scrapes.delta(series, wall0, wall0 + dur) if span_ok else NA("no session times"))
        add(key, label + " (session)", v, text + extra)
        if isinstance(seen, NA):
            return add(key + "_observed", label + " (steps' span)", seen)
        t = [fnum(r.get("timestamp_sec")) for r in events.get(key, [])]
        inside = sum(1 for x in t if x is not None and seen[0] <= x <= seen[1])
        v, text = versus(inside, scrapes.delta(series, wall0 + seen[0], wall0 + seen[1]))
        add(key + "_observed", label + " (steps' span)", v, text)

    def preemptions():
        rows = read_csv(session, "preemption_events.csv")
        bad = need_columns(rows, "preemption_events.csv", ["timestamp_sec"])
        if bad:
            return add("preemptions", "preemptions vs vLLM", bad)
        src = {}
        for r in rows:
            src[r.get("source") or "?"] = src.get(r.get("source") or "?", 0) + 1
        events["preemptions"] = rows
        counted("preemptions", "preemptions vs vLLM", len(rows), PREEMPT,
                " (" + ", ".join(f"{k} {n}" for k, n in sorted(src.items())) + ")" if src else "")
        if isinstance(res["preemptions"], dict):
            res["preemptions"]["by_source"] = src
        check = meta.get("vllm_metrics")
        if isinstance(check, dict):
            add("own_metrics_check", "its own /metrics check (server/ours)",
                {k: check.get(k) for k in ("server_preemptions", "profilemate_preemptions",
                                           "server_kv_usage_pct", "profilemate_kv_usage_pct")},
                f"preemptions {fmt(check.get('server_preemptions'), 0)} / {fmt(check.get('profilemate_preemptions'))}"
                f", KV {fmt(check.get('server_kv_usage_pct'))} / {fmt(check.get('profilemate_kv_usage_pct'))} %")

    def finished():
        rows = read_csv(session, "request_lifecycle.csv")
        bad = need_columns(rows, "request_lifecycle.csv", ["finished_sec"])
        if bad:
            return add("finished", "finished requests vs vLLM", bad)
        done = [{"timestamp_sec": r["finished_sec"]} for r in rows if fnum(r["finished_sec"]) is not None]
        events["finished"] = done
        counted("finished", "finished requests vs vLLM", len(done), SUCCESS, f" (of {len(rows):,} requests seen)")

    def kv():
        rows = read_csv(session, "kv_cache_usage.csv")
        bad = need_columns(rows, "kv_cache_usage.csv", ["timestamp_sec", "usage_pct"])
        if bad or not rows or wall0 is None or scrapes.why:
            return add("kv_usage", "KV usage |ours - vLLM|",
                       bad or NA("no rows" if not rows else scrapes.why or "no session start"))
        d = pair_readings(rows, scrapes, wall0, [("usage_pct", KV, 100.0)])["usage_pct"]
        by = {}
        for src in sorted({r.get("source") or "" for r in rows}):
            sub = [r for r in rows if (r.get("source") or "") == src]
            by[src or "?"] = pair_readings(sub, scrapes, wall0, [("usage_pct", KV, 100.0)])["usage_pct"]
        if isinstance(d, dict):
            d["by_source"] = by
        add("kv_usage", "KV usage |ours - vLLM|", d, pair_text(d, "points")
            + ("" if len(by) < 2 else "; " + ", ".join(
                f"{k}: {v['median_abs_diff']:g}" if isinstance(v, dict) else f"{k}: n/a" for k, v in by.items())))

    def queues():
        rows = read_csv(session, "scheduler_state.csv")
        bad = need_columns(rows, "scheduler_state.csv", ["timestamp_sec", "running", "waiting"])
        if bad or not rows or wall0 is None or scrapes.why:
            why = bad or NA("no rows" if not rows else scrapes.why or "no session start")
            add("running", "running |ours - vLLM|", why)
            return add("waiting", "waiting |ours - vLLM|", why)
        d = pair_readings(rows, scrapes, wall0, [("running", RUNNING, 1.0), ("waiting", WAITING, 1.0)])
        add("running", "running |ours - vLLM|", d["running"], pair_text(d["running"], "requests"))
        add("waiting", "waiting |ours - vLLM|", d["waiting"], pair_text(d["waiting"], "requests"))

    def per_step():
        rows = read_csv(session, "batch_utilization.csv")
        bad = need_columns(rows, "batch_utilization.csv", ["timestamp_sec", "running", "waiting", "kv_usage_pct"])
        if bad or not rows or wall0 is None or scrapes.why:
            return add("per_step_queues", "per-step running/waiting/KV |diff|",
                       bad or NA("no rows" if not rows else scrapes.why or "no session start"))
        d = pair_readings(rows, scrapes, wall0,
                          [("running", RUNNING, 1.0), ("waiting", WAITING, 1.0), ("kv_usage_pct", KV, 100.0)])
        text = " / ".join("n/a" if isinstance(d[c], NA) else f"{d[c]['median_abs_diff']:g}"
                          for c in ("running", "waiting", "kv_usage_pct"))
        n = next((x["paired"] for x in d.values() if isinstance(x, dict)), 0)
        add("per_step_queues", "per-step running/waiting/KV |diff|", d,
            f"median {text} (batch_utilization.csv, {n:,}/{len(rows):,} rows paired)")
        m = match_recent(rows, scrapes, wall0, "kv_usage_pct", KV, 100.0, 1.0)
        add("kv_recent_step", f"KV gauge vs a step read in the {MATCH_LAG_S} s before it (to {READ_SLACK_S * 1000:g} ms after)", m,
            str(m) if isinstance(m, NA) else
            f"{m['within_pct']:g} % of {m['scrapes']} scrapes within 1 point (median {m['median_abs_diff']:g}, "
            f"max {m['max_abs_diff']:g} points)")

    def program_costs():
        pc = meta.get("program_costs")
        if not isinstance(pc, list):
            return add("program_costs", "BPF programs", NA("no program_costs"))
        if not pc:
            return add("program_costs", "BPF programs", NA("empty: kernel.bpf_stats_enabled was not 1"))
        # Probes fire only while attached: per step found (vLLM's count over the whole session
        # also holds the steps before the probes were in place).
        engine = len(fp) if isinstance(fp, list) and fp else None
        out, parts, total_ns = {}, [], 0
        for p in pc:
            runs, ns = fnum(p.get("runs")) or 0, fnum(p.get("run_time_ns")) or 0
            total_ns += ns
            name = p.get("program", "?")
            out[name] = {"runs": int(runs), "run_time_ns": int(ns),
                         "us_per_hit": round(ns / runs / 1e3, 3) if runs else None,
                         "hits_per_step": round(runs / engine, 2) if engine else None}
            if runs:
                parts.append(f"{name} {ns / runs / 1e3:.2f} µs x {fmt(out[name]['hits_per_step'], 1)}/step")
        core = 100 * total_ns / (dur * 1e9) if dur else None
        out["total_ms"] = round(total_ns / 1e6, 1)
        out["pct_of_one_cpu"] = round(core, 2) if core is not None else None
        add("program_costs", "BPF programs (µs/hit x hits per step found)", out,
            "; ".join(parts) + f"; total {total_ns / 1e6:,.0f} ms = {fmt(core, 2)} % of a CPU")

    for fn in (drops, reader, pipeline, read_delay, steps, completion, phase, preemptions, finished, kv,
               queues, per_step, program_costs):
        safely(fn)
    return res, lines


# ---------------------------------------------------------------- run


def load_windows(path):
    if not os.path.exists(path):
        return NA("no windows.tsv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    out = []
    for r in rows:
        a, b = fnum(r.get("wall_start")), fnum(r.get("wall_end"))
        rc = r.get("rc") or ""
        out.append({"index": int(r["index"]), "label": r["label"], "kind": r["kind"],
                    "requested_s": fnum(r.get("requested_s")), "pm_args": r.get("pm_args") or "",
                    "rc": int(rc) if rc.lstrip("-").isdigit() else (rc or None),
                    "wall_start": a, "wall_end": b, "wall_s": (b - a) if a and b else None,
                    "session_rel": r.get("session") or ""})
    return out


def session_start(meta, clock):
    """(wall start, how it was found, |start_time - that| in ms or None)."""
    st = parse_rfc3339(meta.get("start_time")) if isinstance(meta, dict) else None
    mono = fnum(meta.get("monotonic_start_ns")) if isinstance(meta, dict) else None
    pair = clock.get("before") if isinstance(clock, dict) else None
    if mono and isinstance(pair, dict) and "mono_ns" in pair:
        w = pair["wall"] + (mono - pair["mono_ns"]) / 1e9
        diff = round(abs(w - st) * 1e3, 1) if st else None
        return w, "monotonic_start_ns" + (f" (start_time differs by {diff} ms)" if diff is not None else ""), diff
    if st:
        return st, "start_time (no clock pair)", None
    return None, "neither monotonic_start_ns nor start_time", None


def find_sessions(results, given):
    if given:
        return given, None
    d = os.path.join(results, "sessions")
    if os.path.isdir(d):
        return d, None
    tar = os.path.join(results, "sessions.tar.xz")
    if os.path.exists(tar):
        tmp = tempfile.TemporaryDirectory(prefix="real-vllm-sessions-")
        with tarfile.open(tar) as t:
            if hasattr(tarfile, "data_filter"):
                t.extractall(tmp.name, filter="data")
            else:
                t.extractall(tmp.name)
        return os.path.join(tmp.name, "sessions"), tmp
    return None, None


def table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--sessions", help="directory of the session dirs (default: RESULTS/sessions or the tar)")
    args = ap.parse_args()
    R = args.results
    run = read_json(os.path.join(R, "run.json"))
    clock = read_json(os.path.join(R, "clock.json"))
    load = read_json(os.path.join(R, "load.json"))
    scrapes = Scrapes(os.path.join(R, "metrics.jsonl"))
    windows = load_windows(os.path.join(R, "windows.tsv"))
    sessions_dir, _tmp = find_sessions(R, args.sessions)
    summary = {"run": run, "clock": clock, "scrapes": {"ok": len(scrapes.rows), "failed": scrapes.failed},
               "load": load.get("summary") if isinstance(load, dict) else load, "notes": []}
    out = []
    mode = run.get("mode") if isinstance(run, dict) else None
    knobs = run.get("knobs", {}) if isinstance(run, dict) else {}
    out.append(f"real vLLM run: mode {mode or '?'}, CONC {knobs.get('CONC', '?')}, BLOCKS {knobs.get('BLOCKS', '?')}"
               f", VLLM_ARGS '{knobs.get('VLLM_ARGS') or ''}', windows [{knobs.get('WINDOWS', '?')}]")
    if isinstance(load, dict):
        s = load.get("summary", {})
        out.append(f"load: {fmt(s.get('requests_sent'))} requests, {fmt(s.get('finished_ok'))} ok, "
                   f"{fmt(s.get('errors'))} errors, {fmt(s.get('cancelled'))} cancelled at the end; "
                   f"{len(scrapes.rows)} scrapes ({scrapes.failed} failed)")
    else:
        out.append(f"load: {load}")
    if isinstance(clock, dict) and "before" in clock and "after" in clock:
        b, a = clock["before"], clock["after"]
        drift = ((a["wall"] - b["wall"]) - (a["mono_ns"] - b["mono_ns"]) / 1e9) * 1e3
        summary["clock"]["drift_ms"] = round(drift, 3)
        out.append(f"time.time() vs CLOCK_MONOTONIC drift over the windows: {drift:+.2f} ms")
    if isinstance(windows, NA):
        out.append(str(windows))
        summary["windows"] = windows
        print("\n".join(out))
        with open(os.path.join(R, "summary.json"), "w") as f:
            json.dump(jsonable(summary), f, indent=1)
        return 1

    # intervals and rates
    for w in windows:
        w["session"] = None
        w["session_start"], w["time_base"] = None, "no session"
        w["interval"] = NA(w["rc"] if isinstance(w["rc"], str) else "no wall times")
        if w["wall_start"] is None:
            continue
        w["interval"] = {"start": w["wall_start"], "end": w["wall_end"], "from": "window wall times"}
        if w["kind"] == "on":
            if sessions_dir and w["session_rel"] and os.path.isdir(os.path.join(sessions_dir, w["session_rel"])):
                w["session"] = os.path.join(sessions_dir, w["session_rel"])
                meta = read_json(os.path.join(w["session"], "metadata.json"))
                start, how, _ = session_start(meta, clock)
                dur = fnum(meta.get("duration_sec")) if isinstance(meta, dict) else None
                w["session_start"], w["time_base"] = start, how
                span = steps_span(read_csv(w["session"], "forward_pass_timing.csv"))
                if start and dur:
                    w["session_interval"] = {"start": start, "end": start + dur}
                if start and not isinstance(span, NA) and span[1] - span[0] >= 2:
                    w["interval"] = {"start": start + span[0], "end": start + span[1], "from": "steps' span"}
                elif start and dur:
                    w["interval"] = {"start": start, "end": start + dur, "from": "session"}
                else:
                    w["interval"]["from"] = "command wall times (session has no start/duration)"
            else:
                w["interval"]["from"] = "command wall times (no session)"
        iv = w["interval"]
        w["tokens_per_s"] = scrapes.rate(GEN, iv["start"], iv["end"])
        w["steps_per_s"] = scrapes.rate(STEPS, iv["start"], iv["end"])
        if w["kind"] == "on":
            # the same over the whole session and the whole command, for reference
            spans = [("command", w["wall_start"], w["wall_end"])]
            if "session_interval" in w:
                spans.append(("session", w["session_interval"]["start"], w["session_interval"]["end"]))
            for name, a, b in spans:
                w[f"tokens_per_s_{name}"] = scrapes.rate(GEN, a, b)
                w[f"steps_per_s_{name}"] = scrapes.rate(STEPS, a, b)
    done = [w for w in windows if isinstance(w.get("tokens_per_s"), float)]
    for w in windows:
        if w["kind"] != "on":
            continue
        w["cost_pct"] = {}
        before = [x for x in done if x["kind"] == "off" and x["index"] < w["index"]][-1:]
        after = [x for x in done if x["kind"] == "off" and x["index"] > w["index"]][:1]
        base = before + after
        w["baseline_windows"] = [x["index"] for x in base]
        for key in ("tokens_per_s", "steps_per_s"):
            r = w.get(key)
            vals = [x[key] for x in base if isinstance(x.get(key), float)]
            if not isinstance(r, float):
                w["cost_pct"][key] = NA("no rate")
            elif not vals:
                w["cost_pct"][key] = NA("no detached window beside it")
            else:
                m = statistics.fmean(vals)
                w["cost_pct"][key] = round(100 * (1 - r / m), 2)
                if len(vals) == 2:
                    w["cost_pct"][key + "_noise"] = round(100 * abs(vals[0] - vals[1]) / m, 2)

    rows = [["window", "profilemate", "span", "interval from", "tokens/s", "steps/s", "cost tokens", "cost steps",
             "noise (detached pair)"]]
    for w in windows:
        iv = w["interval"]
        span = f"{iv['end'] - iv['start']:.1f} s" if isinstance(iv, dict) else str(iv)
        c = w.get("cost_pct", {})
        cost = lambda k: (f"{c[k]:+.1f} %" if isinstance(c.get(k), float) else fmt(c.get(k))) if c else ""  # noqa: E731
        noise = ", ".join(f"{c[k]:.1f} %" for k in ("tokens_per_s_noise", "steps_per_s_noise") if k in c)
        rows.append([f"{w['index']} {w['label']}", "detached" if w["kind"] == "off" else (w["pm_args"] or "(default)"),
                     span, iv.get("from", "") if isinstance(iv, dict) else "",
                     fmt(w.get("tokens_per_s")), fmt(w.get("steps_per_s")), cost("tokens_per_s"),
                     cost("steps_per_s"), noise])
    out += ["", "throughput (vLLM /metrics; cost = 1 - attached / mean of the nearest detached on each side)",
            table(rows)]

    # per session
    on = [w for w in windows if w["kind"] == "on"]
    per = {}
    cols = []
    for w in on:
        name = f"{w['index']}_{w['label']}"
        if w["rc"] is None or isinstance(w["rc"], str) and w["wall_start"] is None:
            res, lines = {"skipped": w["rc"]}, [("profilemate rc", str(w["rc"]))]
        else:
            res, lines = session_checks(w, w["session"], scrapes, clock)
        per[name] = res
        cols.append((f"{w['index']} {w['label']} ({w['pm_args'] or 'default'})", dict(lines), [k for k, _ in lines]))
    if cols:
        keys = []
        for _, _, ks in cols:
            keys += [k for k in ks if k not in keys]
        rows = [["check"] + [c[0] for c in cols]]
        for k in keys:
            rows.append([k] + [c[1].get(k, "") for c in cols])
        out += ["", "attached windows (vLLM counters in [lo..hi]: the 0.5 s scrapes' bracket)", table(rows)]
    summary["windows"] = [{k: v for k, v in w.items() if k not in ("session",)} for w in windows]
    summary["sessions"] = per
    summary["notes"] = [
        "vllm:iteration_tokens_total_count counts engine steps that produced output (one histogram observation "
        "per step in the API server); forward_pass_timing.csv has one row per GPU step",
        "session windows include profilemate's attach at the start (probes not all in place yet) and its stop "
        "grace at the end; the 'steps vs vLLM, a-b s' row uses the first to the last step found instead",
        "vllm:num_preemptions_total is published per stats interval and can trail the engine at the edges",
        f"KV usage / queue readings are paired with the nearest scrape within {PAIR_S} s; vLLM's gauges are "
        "as of the last step the API server heard of",
    ]
    text = "\n".join(out)
    print(text)
    with open(os.path.join(R, "summary.json"), "w") as f:
        json.dump(jsonable(summary), f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
