#!/usr/bin/env python3
"""Compare a ProfileMate session against workload.py's ground truth.

    compare.py SESSION_DIR TRUTH_JSON [--out RESULT_JSON] [--max-offset K]

Reads SESSION_DIR/forward_pass_timing.csv, cuda_graph_captures.csv, cuda_graph_usage.csv and
metadata.json; keeps only rows of the truth's pid.

Alignment: profiler rows (in step / time order) are paired with truth steps by order, at the
offset k (rows[j] <-> truth[j+k], k in -K..K, default K=20) that maximizes agreement of the
step kind (profiler: num_graph_launches >= 1 -> graph, else eager). The mixed pattern has
period 2 and pure modes have none, so ties are common: they go to the offset closest to
len(truth) - len(rows) (last rows aligned with the last steps: the profiler runs until the
target exits, so steps it misses are at the start), then to the smallest |k|, then k >= 0.
Negative k means the profiler has rows before truth step 0. A single offset cannot fit a step
lost mid-run; kind_agreement_pct < 100 in mixed mode flags that.

Timing error = forward_time_ms - truth gpu_ms (ms), for matched rows with completion == exact.
The truth covers only the forward pass (start/end events around it), while the profiler's step
also includes the small H2D copy, argmax and D2H, so a small positive bias is expected.

Uses only the Python standard library. Exit status 0 when the comparison could be made
(whatever the numbers), 1 on unreadable input.
"""

import argparse
import csv
import json
import math
import os
import statistics
import sys


def read_csv(path):
    if not os.path.exists(path):
        return None
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(v, default=None, cast=float):
    if v is None:
        return default
    v = str(v).strip()
    if v == "" or v.lower() in ("none", "null", "nan"):
        return default
    try:
        return cast(v)
    except ValueError:
        try:
            return cast(float(v))
        except ValueError:
            return default


def percentile(xs, p):
    """Linear-interpolated percentile, p in [0, 100]."""
    if not xs:
        return None
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * p / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def error_stats(errs, truths):
    """errs: signed errors (ms); truths: matching truth values (ms)."""
    if not errs:
        return {"n": 0}
    abs_e = [abs(e) for e in errs]
    rel = [100.0 * e / t for e, t in zip(errs, truths) if t > 0]
    return {
        "n": len(errs),
        "median_ms": statistics.median(errs),
        "mean_ms": statistics.fmean(errs),
        "median_abs_ms": statistics.median(abs_e),
        "mean_abs_ms": statistics.fmean(abs_e),
        "p95_abs_ms": percentile(abs_e, 95),
        "max_abs_ms": max(abs_e),
        "median_rel_pct": statistics.median(rel) if rel else None,
        "median_abs_rel_pct": statistics.median([abs(r) for r in rel]) if rel else None,
        "truth_median_ms": statistics.median(truths),
    }


def best_offset(prof_kinds, truth_kinds, max_k):
    """Returns (k, agreement, overlap, candidates_with_same_agreement)."""
    n, m = len(prof_kinds), len(truth_kinds)
    end_k = m - n  # the offset that aligns the last rows with the last truth steps
    best = None
    scores = {}
    for k in range(-max_k, max_k + 1):
        agree = 0
        overlap = 0
        for j in range(max(0, -k), min(n, m - k)):
            overlap += 1
            if prof_kinds[j] == truth_kinds[j + k]:
                agree += 1
        scores[k] = (agree, overlap)
        key = (agree, -abs(k - end_k), -abs(k), 1 if k >= 0 else 0)
        if best is None or key > best[0]:
            best = (key, k)
    k = best[1] if best else 0
    agree, overlap = scores.get(k, (0, 0))
    ties = sorted(kk for kk, (a, _) in scores.items() if a == agree)
    return k, agree, overlap, ties


def compare(session_dir, truth, max_k=20):
    pid = int(truth["pid"])
    res = {"session_dir": os.path.abspath(session_dir), "pid": pid, "mode": truth.get("mode"),
           "problems": []}

    fp_all = read_csv(os.path.join(session_dir, "forward_pass_timing.csv"))
    if fp_all is None:
        res["problems"].append("forward_pass_timing.csv missing")
        fp_all = []
    rows = [r for r in fp_all if num(r.get("pid"), cast=int) == pid]
    other_pids = sorted({r.get("pid") for r in fp_all} - {str(pid)})
    if other_pids:
        res["other_pids_in_csv"] = other_pids
    rows.sort(key=lambda r: (num(r.get("step"), 0, int), num(r.get("timestamp_sec"), 0.0)))

    t_kinds = list(truth.get("kinds") or [])
    t_ms = list(truth.get("gpu_ms") or [])
    has_truth_times = len(t_ms) == len(t_kinds) and len(t_ms) > 0
    n_truth = int(truth.get("steps", len(t_kinds)))

    p_kinds = ["graph" if num(r.get("num_graph_launches"), 0, int) >= 1 else "eager" for r in rows]
    k, agree, overlap, ties = best_offset(p_kinds, t_kinds, max_k)

    res.update({
        "truth_steps": n_truth,
        "profiler_steps": len(rows),
        "offset": k,
        "offset_ties": ties if len(ties) > 1 else [],
        "matched": overlap,
        "kind_agreement": agree,
        "kind_agreement_pct": (100.0 * agree / overlap) if overlap else None,
        "profiler_graph_steps": sum(1 for x in p_kinds if x == "graph"),
        "truth_graph_steps": sum(1 for x in t_kinds if x == "graph"),
    })

    # Completion kinds.
    comp = {}
    for r in rows:
        c = (r.get("completion") or "").strip() or "?"
        comp[c] = comp.get(c, 0) + 1
    res["completion_counts"] = comp
    res["upper_bound_rows"] = comp.get("upper_bound", 0)
    res["exact_rows"] = comp.get("exact", 0)
    sync_apis = {}
    for r in rows:
        a = (r.get("sync_api") or "").strip() or "?"
        sync_apis[a] = sync_apis.get(a, 0) + 1
    res["sync_api_counts"] = sync_apis

    # Timing errors on matched exact rows.
    if has_truth_times:
        all_e, all_t = [], []
        by_kind = {"eager": ([], []), "graph": ([], [])}
        mismatched_kind_exact = 0
        for j in range(max(0, -k), min(len(rows), len(t_ms) - k)):
            r = rows[j]
            if (r.get("completion") or "").strip() != "exact":
                continue
            f = num(r.get("forward_time_ms"))
            t = t_ms[j + k]
            if f is None or t is None:
                continue
            e = f - t
            all_e.append(e)
            all_t.append(t)
            tk = t_kinds[j + k]
            if p_kinds[j] != tk:
                mismatched_kind_exact += 1
            if tk in by_kind:
                by_kind[tk][0].append(e)
                by_kind[tk][1].append(t)
        res["error_all"] = error_stats(all_e, all_t)
        res["error_eager"] = error_stats(*by_kind["eager"])
        res["error_graph"] = error_stats(*by_kind["graph"])
        res["exact_rows_with_kind_mismatch"] = mismatched_kind_exact
        res["bounds"] = bounds_stats(rows, t_ms, k)
    else:
        res["error_all"] = res["error_eager"] = res["error_graph"] = {"n": 0}
        res["problems"].append("truth has no gpu_ms (--no-truth-events): no timing comparison")
    res["gpu_done_before_wait_rows"] = sum(1 for r in rows if r.get("gpu_done_before_wait") == "true")

    # Profiler-side distribution of forward_time_ms, useful even without truth.
    fts = [num(r.get("forward_time_ms")) for r in rows if (r.get("completion") or "") == "exact"]
    fts = [x for x in fts if x is not None]
    if fts:
        res["profiler_exact_forward_ms"] = {"median": statistics.median(fts), "p95": percentile(fts, 95),
                                            "max": max(fts)}
    if t_ms:
        res["truth_gpu_ms"] = {"median": statistics.median(t_ms), "p95": percentile(t_ms, 95), "max": max(t_ms)}

    # Graphs.
    prof_graph_launches = sum(num(r.get("num_graph_launches"), 0, int) for r in rows)
    res["graph_launches_in_steps"] = prof_graph_launches
    res["truth_graph_replays"] = int(truth.get("graph_replays", 0))
    usage = read_csv(os.path.join(session_dir, "cuda_graph_usage.csv"))
    if usage is None:
        res["problems"].append("cuda_graph_usage.csv missing")
        usage = []
    usage = [u for u in usage if num(u.get("pid"), cast=int) == pid]
    res["graph_usage_replay_total"] = sum(num(u.get("replay_count"), 0, int) for u in usage)
    res["graph_usage_ids"] = [u.get("graph_id") for u in usage]
    caps = read_csv(os.path.join(session_dir, "cuda_graph_captures.csv"))
    if caps is None:
        res["problems"].append("cuda_graph_captures.csv missing")
        caps = []
    caps = [c for c in caps if num(c.get("pid"), pid, int) == pid]
    res["graph_captures"] = len(caps)
    srcs = {}
    for c in caps:
        s = (c.get("source") or "").strip() or "?"
        srcs[s] = srcs.get(s, 0) + 1
    res["graph_capture_sources"] = srcs
    gids = set()
    for r in rows:
        for g in (r.get("graph_ids") or "").replace(";", " ").replace(",", " ").replace("|", " ").split():
            gids.add(g)
    res["graph_ids_in_steps"] = sorted(gids)

    # Losses.
    meta_path = os.path.join(session_dir, "metadata.json")
    meta = None
    if os.path.exists(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            res["problems"].append(f"metadata.json unreadable: {e}")
    else:
        res["problems"].append("metadata.json missing")
    if meta:
        losses = meta.get("losses") or {}
        kernel = losses.get("kernel") or {}
        res["ring_full_drops"] = kernel.get("ring_full_drops")
        res["decode_errors"] = losses.get("decode_errors")
        res["records_read"] = losses.get("records_read")
        res["correlator"] = losses.get("correlator")
        res["timing_mode"] = meta.get("timing_mode")
        res["kernel_probes"] = meta.get("kernel_probes")
        res["stop_reason"] = meta.get("stop_reason")
        probes = meta.get("probes")
        if isinstance(probes, dict):
            res["probes_attached_count"] = probes.get("attached_count")
            failed = probes.get("failed")
            if failed:
                res["probes_failed"] = failed

    res["truth_steps_per_sec"] = truth.get("steps_per_sec")
    res["truth_device"] = truth.get("device")
    return res


def bounds_stats(rows, t_ms, k):
    """Rows that are not exact: is the truth inside [gpu_time_lower_ms, forward_time_ms]? The
    truth covers only the forward, not the input copy, argmax and output copy, so the upper
    bound holds a fortiori and the lower one gets 0.05 ms for those copies."""
    n = upper_ok = lower_ok = 0
    over, under = [], []
    for j in range(max(0, -k), min(len(rows), len(t_ms) - k)):
        r = rows[j]
        if (r.get("completion") or "").strip() == "exact":
            continue
        f, lo, t = num(r.get("forward_time_ms")), num(r.get("gpu_time_lower_ms")), t_ms[j + k]
        if f is None or lo is None or t is None:
            continue
        n += 1
        upper_ok += f >= t
        lower_ok += lo <= t + 0.05
        over.append(f - t)
        under.append(t - lo)
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    return {"rows": n, "upper_holds": upper_ok, "lower_holds": lower_ok,
            "median_upper_minus_truth_ms": med(over), "median_truth_minus_lower_ms": med(under)}


def fmt(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def render(res):
    out = []
    w = out.append
    w(f"session   {res['session_dir']}")
    w(f"pid       {res['pid']}  mode={res.get('mode')}  timing={res.get('timing_mode')}  kernels={res.get('kernel_probes')}")
    w(f"steps     truth={res['truth_steps']}  profiler={res['profiler_steps']}  matched={res['matched']}  "
      f"offset={res['offset']}" + (f" (ties {res['offset_ties']})" if res.get("offset_ties") else ""))
    w(f"kinds     agree={res['kind_agreement']}/{res['matched']} ({fmt(res.get('kind_agreement_pct'), 1)}%)  "
      f"graph steps profiler={res['profiler_graph_steps']} truth={res['truth_graph_steps']}")
    w(f"complete  exact={res['exact_rows']}  upper_bound={res['upper_bound_rows']}  all={res['completion_counts']}  "
      f"sync_api={res['sync_api_counts']}")
    w(f"graphs    launches in steps={res['graph_launches_in_steps']}  usage.csv replays={res['graph_usage_replay_total']}  "
      f"truth replays={res['truth_graph_replays']}  captures={res['graph_captures']} {res['graph_capture_sources']}")
    w("timing error = forward_time_ms - truth gpu_ms (exact rows)")
    w(f"  {'set':<6} {'n':>5} {'median':>9} {'mean':>9} {'med|e|':>9} {'p95|e|':>9} {'max|e|':>9} {'med rel%':>9} {'truth med':>9}")
    for name in ("all", "eager", "graph"):
        e = res.get(f"error_{name}") or {"n": 0}
        w(f"  {name:<6} {e['n']:>5} {fmt(e.get('median_ms')):>9} {fmt(e.get('mean_ms')):>9} {fmt(e.get('median_abs_ms')):>9} "
          f"{fmt(e.get('p95_abs_ms')):>9} {fmt(e.get('max_abs_ms')):>9} {fmt(e.get('median_rel_pct'), 1):>9} "
          f"{fmt(e.get('truth_median_ms')):>9}")
    b = res.get("bounds") or {}
    w(f"bounds    other rows={b.get('rows')}  upper holds={b.get('upper_holds')}  lower holds={b.get('lower_holds')}  "
      f"med(upper-truth)={fmt(b.get('median_upper_minus_truth_ms'))}  med(truth-lower)={fmt(b.get('median_truth_minus_lower_ms'))}  "
      f"gpu_done_before_wait={res.get('gpu_done_before_wait_rows')}")
    w(f"losses    ring_full_drops={res.get('ring_full_drops')}  decode_errors={res.get('decode_errors')}  "
      f"records_read={res.get('records_read')}")
    w(f"          correlator={json.dumps(res.get('correlator'), sort_keys=True)}")
    if res.get("probes_failed"):
        w(f"          probes_failed={json.dumps(res['probes_failed'])[:300]}")
    if res.get("problems"):
        w(f"problems  {'; '.join(res['problems'])}")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description="Compare a ProfileMate session with workload.py ground truth")
    p.add_argument("session_dir")
    p.add_argument("truth_json")
    p.add_argument("--out", default=None, help="write the result JSON here")
    p.add_argument("--max-offset", type=int, default=20)
    a = p.parse_args(argv)
    try:
        with open(a.truth_json) as f:
            truth = json.load(f)
    except (OSError, ValueError) as e:
        sys.stderr.write(f"compare: cannot read truth {a.truth_json}: {e}\n")
        return 1
    if not os.path.isdir(a.session_dir):
        sys.stderr.write(f"compare: no session directory {a.session_dir}\n")
        return 1
    res = compare(a.session_dir, truth, a.max_offset)
    print(render(res), flush=True)
    if a.out:
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1, sort_keys=True)
        os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
