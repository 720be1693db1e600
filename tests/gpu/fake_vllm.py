#!/usr/bin/env python3
"""Stand-ins for a vLLM server and for profilemate, to test real_vllm.sh without a GPU.

    fake_vllm.py server [--port 8000] [--step-hz 400] [--tok-per-s 400] [--marker FILE]
    fake_vllm.py profilemate attach --pid N --duration 15s --out DIR [any profilemate flags]

server: an HTTP/1.1 server (standard library) with vLLM's /health, /v1/models,
/v1/completions (token-id prompts; JSON, or server-sent events in chunks of 8 tokens with a
final usage chunk) and a /metrics page in vLLM's names and labels. Its engine steps at
--step-hz and produces --tok-per-s tokens per request; while FILE exists (the fake
profilemate creates it) both run 10 % slower, so the comparison must find about 10 %
overhead in the attached windows. It starts one child process, like vLLM's EngineCore.

profilemate: follows the real CLI's shape: stderr lines, `session: DIR` on stdout, a
session_YYYYmmdd_HHMMSS directory with metadata.json and the CSVs the comparison reads,
built from the server's own /metrics read at 10 Hz during the session (steps, preemptions
and finished requests equal vLLM's deltas; KV and queue readings are vLLM's gauges).
SIGINT ends the session early. FAKE_PM_FAIL=FLAG makes a session whose flags include FLAG
fail (exit 1, no directory); FAKE_PM_URL is the server (default http://127.0.0.1:8000).
"""

import argparse
import csv
import datetime
import http.server
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

# ---------------------------------------------------------------- server


class Engine:
    """The simulated engine: counters advanced by a ticker thread, gauges from the requests."""

    def __init__(self, step_hz, marker):
        self.lock = threading.Lock()
        self.step_hz = step_hz
        self.marker = marker
        self.t0 = time.monotonic()
        self.steps = 0.0
        self.preemptions = 0.0
        self.gen = 0
        self.prompt = 0
        self.success = 0
        self.inflight = 0
        threading.Thread(target=self.tick, daemon=True).start()

    def factor(self):
        return 0.9 if self.marker and os.path.exists(self.marker) else 1.0

    def tick(self):
        last = time.monotonic()
        while True:
            time.sleep(0.005)
            now = time.monotonic()
            with self.lock:
                f = self.factor()
                self.steps += self.step_hz * (now - last) * f
                if self.inflight > 16:
                    self.preemptions += 5.0 * (now - last) * f
            last = now

    def metrics(self):
        with self.lock:
            running = min(self.inflight, 16)
            waiting = max(0, self.inflight - 16)
            t = time.monotonic() - self.t0
            kv = min(1.0, running / 16 * 0.9 + 0.08 * math.sin(t * math.pi))
            lab = 'engine="0",model_name="tiny"'
            steps = int(self.steps)
            lines = [
                "# HELP vllm:num_requests_running Number of requests in model execution batches.",
                "# TYPE vllm:num_requests_running gauge",
                f"vllm:num_requests_running{{{lab}}} {float(running)}",
                f"vllm:num_requests_waiting{{{lab}}} {float(waiting)}",
                f"vllm:kv_cache_usage_perc{{{lab}}} {max(0.0, kv)}",
                f"vllm:num_preemptions_total{{{lab}}} {float(int(self.preemptions))}",
                f"vllm:prompt_tokens_total{{{lab}}} {float(self.prompt)}",
                f"vllm:generation_tokens_total{{{lab}}} {float(self.gen)}",
                f'vllm:request_success_total{{{lab},finished_reason="length"}} {float(self.success)}',
                f'vllm:request_success_total{{{lab},finished_reason="stop"}} 0.0',
                f'vllm:iteration_tokens_total_bucket{{{lab},le="+Inf"}} {float(steps)}',
                f"vllm:iteration_tokens_total_count{{{lab}}} {float(steps)}",
                f"vllm:iteration_tokens_total_sum{{{lab}}} {float(steps * 40)}",
                "python_gc_objects_collected_total{generation=\"0\"} 12.0",
            ]
        return "\n".join(lines) + "\n"


def handler(engine, tok_per_s):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def send(self, code, body, ctype="application/json"):
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self.send(200, "")
            elif self.path == "/v1/models":
                self.send(200, json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model"}]}))
            elif self.path == "/metrics":
                self.send(200, engine.metrics(), "text/plain; version=0.0.4")
            else:
                self.send(404, json.dumps({"error": "not found"}))

        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(n))
            if self.path != "/v1/completions" or not isinstance(body.get("prompt"), list):
                self.send(400, json.dumps({"error": "bad request"}))
                return
            plen, mtok = len(body["prompt"]), int(body["max_tokens"])
            with engine.lock:
                engine.inflight += 1
                engine.prompt += plen
            try:
                usage = {"prompt_tokens": plen, "completion_tokens": mtok, "total_tokens": plen + mtok}
                if body.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for done in self.generate(mtok):
                        self.chunk({"choices": [{"index": 0, "text": "", "token_ids": None,
                                                 "finish_reason": "length" if done == mtok else None}]})
                    self.chunk({"choices": [], "usage": usage})
                    self.chunk("[DONE]")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    for _ in self.generate(mtok):
                        pass
                    self.send(200, json.dumps({"id": "cmpl-1", "object": "text_completion", "model": "tiny",
                                               "choices": [{"index": 0, "text": "", "finish_reason": "length"}],
                                               "usage": usage}))
                with engine.lock:
                    engine.success += 1
            finally:
                with engine.lock:
                    engine.inflight -= 1

        def generate(self, mtok):
            done = 0
            while done < mtok:
                k = min(8, mtok - done)
                time.sleep(k / tok_per_s / engine.factor())
                done += k
                with engine.lock:
                    engine.gen += k
                yield done

        def chunk(self, obj):
            data = ("data: " + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    return H


def serve(args):
    engine = Engine(args.step_hz, args.marker)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler(engine, args.tok_per_s))
    srv.daemon_threads = True

    def stop(*_):
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"fake vLLM on 127.0.0.1:{args.port} pid {os.getpid()}, engine child {child.pid}", flush=True)
    srv.serve_forever()
    child.kill()
    child.wait()
    print("fake vLLM stopped", flush=True)


# ---------------------------------------------------------------- profilemate

KEEP = ("vllm:iteration_tokens_total_count", "vllm:num_preemptions_total", "vllm:request_success_total",
        "vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting")


def scrape(url):
    out = {}
    with urllib.request.urlopen(url + "/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)", line)
            if m and m.group(1) in KEEP:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def profilemate(argv):
    ap = argparse.ArgumentParser(prog="profilemate")
    sub = ap.add_subparsers(dest="cmd", required=True)
    at = sub.add_parser("attach")
    at.add_argument("--pid", type=int, required=True)
    at.add_argument("--duration", required=True)
    at.add_argument("--out", required=True)
    at.add_argument("--kernels", action="store_true")
    args, extra = ap.parse_known_args(argv)
    flags = argv[argv.index("attach") + 1:]
    fail = os.environ.get("FAKE_PM_FAIL")
    if fail and fail in flags:
        print(f"Error: fake failure for {fail}", file=sys.stderr)
        return 1
    try:
        os.kill(args.pid, 0)
    except OSError:
        print(f"Error: no process with pid {args.pid}", file=sys.stderr)
        return 1
    url = os.environ.get("FAKE_PM_URL", "http://127.0.0.1:8000")
    marker = os.environ.get("FAKE_VLLM_MARKER")
    duration = float(args.duration.rstrip("s"))
    stop = threading.Event()
    reason = ["duration elapsed"]

    def on_int(*_):
        reason[0] = "interrupted (SIGINT)"
        stop.set()

    signal.signal(signal.SIGINT, on_int)
    t0 = time.monotonic_ns()
    wall0 = datetime.datetime.now().astimezone()
    time.sleep(0.8)  # loading and attaching: no steps seen yet
    if marker:
        open(marker, "w").close()
    print(f"profilemate: attached to 2 process(es) (2 with Python stacks), 84 probes; writing to {args.out}",
          file=sys.stderr)
    polls = []
    end = time.monotonic() + duration
    while not stop.is_set() and time.monotonic() < end:
        try:
            polls.append((time.monotonic_ns(), scrape(url)))
        except OSError:
            pass
        stop.wait(0.1)
    if marker and os.path.exists(marker):
        os.remove(marker)
    time.sleep(0.3)  # the pipeline's grace
    end_ns = time.monotonic_ns()

    sec = lambda ns: round((ns - t0) / 1e9, 6)  # noqa: E731
    session = os.path.join(args.out, "session_" + wall0.strftime("%Y%m%d_%H%M%S"))
    os.makedirs(session)
    rows, pre, life, kv, sched = [], [], [], [], []
    pid = args.pid + 1
    for (ta, a), (tb, b) in zip(polls, polls[1:]):
        n = int(b["vllm:iteration_tokens_total_count"] - a["vllm:iteration_tokens_total_count"])
        for i in range(n):
            t = sec(ta + (tb - ta) * (i + 0.5) / n)
            k = len(rows)
            phase = ["decode", "decode", "mixed", "prefill", "unknown"][k % 5]
            rows.append([k, t, pid, pid, phase, 16, 40, 1.2, 0.3, 55 if args.kernels else "", 1, "3", 1024, 256,
                         "exact" if k % 10 else "upper_bound", t + 0.0001, t + 0.0013, pid, "cudaEventSynchronize",
                         0.9, "GPUModelRunner.execute_model:12", "a;b", 1, 15, 24, 15, 1, 15, "FULL", 8])
        for i in range(int(b["vllm:num_preemptions_total"] - a["vllm:num_preemptions_total"])):
            pre.append([sec(tb), pid, f"cmpl-{len(pre)}", "kv_cache_exhausted", 100, 0.5, "scheduler_output"])
        for i in range(int(b["vllm:request_success_total"] - a["vllm:request_success_total"])):
            life.append([f"req-{len(life)}", pid, sec(ta) - 1, sec(ta) - 0.5, 500.0, 0, 0, 0, sec(tb), "finished",
                         100, 64, 1.5])
    for ts, v in polls:
        kv.append([sec(ts), pid, round(100 * v["vllm:kv_cache_usage_perc"], 3), 200, 255, 55, "poll"])
        sched.append([sec(ts), pid, int(v["vllm:num_requests_running"]), int(v["vllm:num_requests_waiting"]),
                      int(v["vllm:num_requests_running"] + v["vllm:num_requests_waiting"]), "poll"])
    life.append(["req-unfinished", pid, "", 1.0, "", 0, 1, 0, "", "RUNNING", 100, 10, ""])
    write_csv(os.path.join(session, "forward_pass_timing.csv"),
              ["step", "timestamp_sec", "pid", "tid", "phase", "batch_size", "num_tokens", "forward_time_ms",
               "cpu_launch_ms", "num_kernel_launches", "num_graph_launches", "graph_ids", "h2d_bytes", "d2h_bytes",
               "completion", "gpu_start_sec", "completion_sec", "sync_tid", "sync_api", "sync_wait_ms",
               "launched_by", "launch_stack", "prefill_reqs", "decode_reqs", "prefill_tokens", "decode_tokens",
               "new_reqs", "cached_reqs", "cg_mode", "padded_tokens"], rows)
    write_csv(os.path.join(session, "preemption_events.csv"),
              ["timestamp_sec", "pid", "request_id", "reason", "tokens_lost", "running_sec", "source"], pre)
    write_csv(os.path.join(session, "request_lifecycle.csv"),
              ["request_id", "pid", "arrival_sec", "first_scheduled_sec", "queue_ms", "preemptions",
               "preemptions_before_attach", "resumes", "finished_sec", "final_status", "prompt_tokens",
               "output_tokens", "e2e_sec"], life)
    write_csv(os.path.join(session, "kv_cache_usage.csv"),
              ["timestamp_sec", "pid", "usage_pct", "num_blocks", "total_blocks", "free_blocks", "source"], kv)
    write_csv(os.path.join(session, "scheduler_state.csv"),
              ["timestamp_sec", "pid", "running", "waiting", "requests", "source"], sched)
    bu = [[i, ts_kv[0], pid, "decode", 16, 64, 25.0, 40, 2048, 1.95, 0, 40, 0, 16, 0, 0, sched[i][2], sched[i][3],
           ts_kv[2], "poll", "false"] for i, ts_kv in enumerate(kv)]
    write_csv(os.path.join(session, "batch_utilization.csv"),
              ["step", "timestamp_sec", "pid", "phase", "num_seqs", "max_num_seqs", "seq_utilization_pct",
               "num_tokens", "max_num_scheduled_tokens", "token_utilization_pct", "prefill_tokens", "decode_tokens",
               "new_reqs", "cached_reqs", "resumed_reqs", "preempted_reqs", "running", "waiting", "kv_usage_pct",
               "queues_from", "underutilized"], bu)
    with open(os.path.join(session, "cpu_profile.folded"), "w") as f:
        f.write("python3 (1);MainThread (1);run_busy_loop (core.py:1) 10\n" * 2000)
    hits = len(rows) * (60 if args.kernels else 8)
    meta = {
        "tracer": "profilemate", "tracer_version": "fake", "root_pid": args.pid, "follow_children": True,
        "kernel_probes": args.kernels,
        "start_time": wall0.isoformat(timespec="microseconds").replace(
            f".{wall0.microsecond:06d}", f".{wall0.microsecond:06d}123"),
        "end_time": datetime.datetime.now().astimezone().isoformat(),
        "duration_sec": (end_ns - t0) / 1e9, "monotonic_start_ns": t0, "stop_reason": reason[0],
        "python": {"vllm_batches": {"batches": len(rows) - len(rows) // 5, "stale": 0, "torn": 1,
                                    "read_delay_us": {"p50": 150, "p99": 2400, "max": 9100}}},
        "program_costs": [
            {"program": "cuda_entry", "runs": hits, "run_time_ns": hits * 900, "mean_ns": 900},
            {"program": "cuda_return", "runs": hits // 4, "run_time_ns": hits // 4 * 700, "mean_ns": 700},
            {"program": "py_sample", "runs": 0, "run_time_ns": 0, "mean_ns": None},
        ],
        "vllm_metrics": {"server_preemptions": float(len(pre)), "profilemate_preemptions": len(pre)},
        "losses": {
            "kernel": {"ring_full_drops": 0, "stack_ring_full_drops": 3 if args.kernels else 0,
                       "usdt_ring_full_drops": 0, "filtered_hits": 12},
            "records_read": hits, "decode_errors": 0,
            "reader": {"records_read": hits, "decode_errors": 0, "samples_shed": 0,
                       "queue_full_drops": {"calls": 0, "call_stacks": 0, "sample_stacks": 0, "usdt": 0},
                       "queue_limit_bytes": 67108864, "queue_peak_bytes": 123456},
            "pipeline": {"records": hits,
                         "unprocessed_at_stop": {"calls": 0, "call_stacks": 0, "sample_stacks": 0, "usdt": 0},
                         "lag_ms": {"p50": 2, "p99": 14, "max": 40},
                         "stage_ms": {"calls": 100.0, "stacks": 50.0, "batch_reads": 20.0, "usdt": 0.0,
                                      "updates": 5.0}},
        },
    }
    with open(os.path.join(session, "metadata.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"  steps: {len(rows)}", file=sys.stderr)
    print(f"session: {session}")
    print("detaching 84 probes...", file=sys.stderr)
    time.sleep(0.2)
    return 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "profilemate":
        sys.exit(profilemate(sys.argv[2:]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--step-hz", type=float, default=400.0)
    s.add_argument("--tok-per-s", type=float, default=400.0)
    s.add_argument("--marker", default=os.environ.get("FAKE_VLLM_MARKER", ""))
    args, _ = ap.parse_known_args()
    serve(args)


if __name__ == "__main__":
    main()
