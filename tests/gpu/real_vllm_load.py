#!/usr/bin/env python3
"""Bounded load on a local vLLM OpenAI server, and its /metrics every 0.5 s (real_vllm.sh).

    real_vllm_load.py --url http://127.0.0.1:8000 --summary LOAD.json [--metrics METRICS.jsonl]
                      [--concurrency 64] [--max-duration 400] [--drain 15] [--seed 1234]

CONCURRENCY closed-loop clients each send one /v1/completions request at a time until the
load is told to stop (SIGUSR1, SIGTERM or SIGINT) or --max-duration passes, then in-flight
requests get --drain seconds and the rest are cancelled. Request k always gets the k-th
draw of one seeded generator: a token-id prompt of 16-1024 tokens (the server runs with
--skip-tokenizer-init), 8-512 output tokens with ignore_eos, streaming for half of them,
greedy or sampled. Only loopback targets are accepted.

--metrics: GET /metrics every --metrics-interval seconds on a fixed cadence, from before the
first request to after the drain, one JSON line per scrape, flushed at once:
{"t": wall time at mid-request, "t_req", "t_resp" (time.time()), "values": {series: sum}}
where each kept vLLM series is summed over its label sets (engines, models) and
request_success_total is also kept per finished_reason; a failed scrape has "error".

--summary: one JSON object: config, wall times of the load (start, stop signal, drain end),
client-side totals (requests, tokens, errors, latency and TTFT percentiles) and one record
per request. aiohttp (which vLLM itself depends on) is the only module outside the standard
library.
"""

import argparse
import asyncio
import json
import random
import re
import signal
import sys
import time
from urllib.parse import urlparse

try:
    import aiohttp
except ImportError:  # pragma: no cover - reported, not handled
    sys.exit("real_vllm_load.py needs aiohttp (a vLLM dependency): not importable here")

# vLLM series kept from each scrape (summed over label sets).
KEEP = (
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total",
    "vllm:iteration_tokens_total_count",
    "vllm:iteration_tokens_total_sum",
    "vllm:num_preemptions_total",
    "vllm:request_success_total",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
)
SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)")
REASON = re.compile(r'finished_reason="([^"]*)"')


def parse_metrics(text):
    """Kept series summed over label sets; request_success_total also per finished_reason."""
    out = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = SERIES.match(line)
        if not m or m.group(1) not in KEEP:
            continue
        try:
            v = float(m.group(3))
        except ValueError:
            continue
        name = m.group(1)
        out[name] = out.get(name, 0.0) + v
        if name == "vllm:request_success_total":
            r = REASON.search(m.group(2) or "")
            key = f"{name}[{r.group(1) if r else ''}]"
            out[key] = out.get(key, 0.0) + v
    return out


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, round(p / 100 * (len(xs) - 1))))]


def two_sided(rng, lo, mid, hi):
    """Half the draws below `mid`, half above (short and long requests alike), or uniform in
    [lo, hi] when `mid` is not inside it (a steady load of similar requests)."""
    if lo < mid < hi:
        return rng.choice([rng.randint(lo, mid), rng.randint(mid, hi)])
    return rng.randint(lo, hi)


class Requests:
    """The seeded sequence of request parameters: request k is the k-th draw."""

    def __init__(self, args):
        if args.prompt_min > args.prompt_max or args.gen_min > args.gen_max:
            raise SystemExit("--prompt-min/--gen-min must not exceed their --*-max")
        self.args = args
        self.rng = random.Random(args.seed)
        self.sent = 0

    def next(self):
        a, rng = self.args, self.rng
        plen = two_sided(rng, a.prompt_min, 128, a.prompt_max)
        mtok = two_sided(rng, a.gen_min, 64, a.gen_max)
        stream = rng.random() < a.stream_frac
        greedy = rng.random() < 0.5
        body = {
            "model": a.model,
            "prompt": [rng.randint(100, a.vocab - 1) for _ in range(plen)],
            "max_tokens": mtok,
            "ignore_eos": True,
            "temperature": 0.0 if greedy else 0.8,
            "top_p": 1.0 if greedy else 0.95,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        rid = self.sent
        self.sent += 1
        return rid, body


async def one_request(session, url, rid, body, records):
    rec = {"id": rid, "prompt_len": len(body["prompt"]), "max_tokens": body["max_tokens"],
           "stream": body["stream"], "start": time.time()}
    records.append(rec)
    st = time.monotonic()
    try:
        async with session.post(url + "/v1/completions", json=body) as resp:
            rec["status"] = resp.status
            if body["stream"]:
                usage, chunks = None, 0
                async for raw in resp.content:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunks += 1
                    if "ttft_s" not in rec:
                        rec["ttft_s"] = round(time.monotonic() - st, 6)
                    try:
                        obj = json.loads(data)
                    except ValueError:
                        continue
                    usage = obj.get("usage") or usage
                    if obj.get("error"):
                        rec["error"] = str(obj["error"])[:300]
                rec["chunks"] = chunks
            else:
                obj = await resp.json(content_type=None)
                usage = obj.get("usage") if isinstance(obj, dict) else None
                if resp.status != 200:
                    rec["error"] = str(obj)[:300]
            if usage:
                rec["completion_tokens"] = usage.get("completion_tokens")
                rec["prompt_tokens"] = usage.get("prompt_tokens")
    except asyncio.CancelledError:
        rec["error"] = "cancelled after the drain"
        raise
    except Exception as e:  # noqa: BLE001 - every failure is recorded per request
        rec["error"] = f"{type(e).__name__}: {e}"[:300]
    finally:
        rec["end"] = time.time()
        rec["latency_s"] = round(time.monotonic() - st, 6)
    return rec


async def client(session, url, reqs, records, stopping, deadline, max_requests):
    """One closed-loop client: a request at a time until told to stop."""
    while not stopping.is_set() and time.monotonic() < deadline and reqs.sent < max_requests:
        rid, body = reqs.next()
        rec = await one_request(session, url, rid, body, records)
        if rec.get("error"):
            await asyncio.sleep(0.2)  # a server in trouble: no tight loop of failures


async def scraper(url, path, interval, stop):
    """/metrics on a fixed cadence into a JSON-lines file, one flushed line per scrape."""
    timeout = aiohttp.ClientTimeout(total=max(2.0, 4 * interval))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2), timeout=timeout) as s:
        with open(path, "a") as f:
            t_next = time.monotonic()
            while True:
                t_req = time.time()
                line = {"t_req": round(t_req, 6)}
                try:
                    async with s.get(url + "/metrics") as r:
                        body = await r.text()
                        if r.status != 200:
                            line["error"] = f"HTTP {r.status}"
                        else:
                            line["values"] = parse_metrics(body)
                except Exception as e:  # noqa: BLE001 - recorded, scraping goes on
                    line["error"] = f"{type(e).__name__}: {e}"[:200]
                t_resp = time.time()
                line["t_resp"] = round(t_resp, 6)
                line["t"] = round((t_req + t_resp) / 2, 6)
                f.write(json.dumps(line, sort_keys=True) + "\n")
                f.flush()
                if stop.is_set():
                    return
                t_next += interval
                delay = t_next - time.monotonic()
                if delay < 0:  # fell behind (a slow scrape): restart the cadence from now
                    t_next, delay = time.monotonic(), 0
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    pass


async def run(args):
    host = urlparse(args.url).hostname or ""
    if not (host in ("localhost", "::1") or host.startswith("127.")):
        sys.exit(f"refusing a non-loopback target: {host!r}")
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    stop_wall = []

    def on_signal():
        if not stopping.is_set():
            stop_wall.append(time.time())
            stopping.set()

    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)

    scrape_stop = asyncio.Event()
    poller = (asyncio.create_task(scraper(args.url, args.metrics, args.metrics_interval, scrape_stop))
              if args.metrics else None)
    records = []
    conn = aiohttp.TCPConnector(limit=args.concurrency + 4)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        if not args.model:
            async with session.get(args.url + "/v1/models") as r:
                args.model = (await r.json())["data"][0]["id"]
        reqs = Requests(args)
        if poller:
            await asyncio.sleep(min(1.0, args.metrics_interval))  # one scrape before the load
        start_wall = time.time()
        deadline = time.monotonic() + args.max_duration
        clients = [asyncio.create_task(client(session, args.url, reqs, records, stopping,
                                              deadline, args.max_requests))
                   for _ in range(args.concurrency)]
        # Until the stop signal, or every client is done (the deadline or the request bound).
        waiter = asyncio.create_task(stopping.wait())
        all_done = asyncio.create_task(asyncio.wait(clients))
        await asyncio.wait([waiter, all_done], timeout=args.max_duration + 1,
                           return_when=asyncio.FIRST_COMPLETED)
        on_signal()
        waiter.cancel()
        all_done.cancel()  # cancels the wait, not the clients
        _, pending = await asyncio.wait(clients, timeout=args.drain)
        for c in pending:
            c.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        drain_end = time.time()
    if poller:
        await asyncio.sleep(args.metrics_interval)  # one more scrape after the last request
        scrape_stop.set()
        await poller

    ok = [r for r in records if r.get("status") == 200 and not r.get("error")]
    lat = [r["latency_s"] for r in ok]
    ttft = [r["ttft_s"] for r in ok if r.get("ttft_s") is not None]
    load_s = stop_wall[0] - start_wall
    gen = sum(r.get("completion_tokens") or 0 for r in ok)
    summary = {
        "requests_sent": reqs.sent,
        "finished_ok": len(ok),
        "cancelled": sum(1 for r in records if r.get("error") == "cancelled after the drain"),
        "errors": sum(1 for r in records if r.get("error") and r.get("error") != "cancelled after the drain"),
        "first_errors": [r["error"] for r in records if r.get("error")][:5],
        "load_s": round(load_s, 3),
        "drain_s": round(drain_end - stop_wall[0], 3),
        "completion_tokens_client": gen,
        "completion_tokens_per_s_client": round(gen / (drain_end - start_wall), 1),
        "latency_s": {"p50": percentile(lat, 50), "p90": percentile(lat, 90),
                      "p99": percentile(lat, 99), "max": max(lat, default=None)},
        "ttft_s_streaming": {"n": len(ttft), "p50": percentile(ttft, 50),
                             "p90": percentile(ttft, 90), "max": max(ttft, default=None)},
    }
    out = {"config": vars(args), "start_wall": start_wall, "stop_wall": stop_wall[0],
           "drain_end_wall": drain_end, "summary": summary,
           "requests": sorted(records, key=lambda r: r["id"])}
    with open(args.summary, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(summary, indent=1))
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="", help="served model name (default: the first of /v1/models)")
    ap.add_argument("--summary", required=True, help="JSON file written at the end")
    ap.add_argument("--metrics", default="", help="JSON-lines file of /metrics scrapes (appended)")
    ap.add_argument("--metrics-interval", type=float, default=0.5)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-duration", type=float, default=400.0,
                    help="seconds of load at most, if no stop signal comes first")
    ap.add_argument("--max-requests", type=int, default=100000)
    ap.add_argument("--drain", type=float, default=15.0,
                    help="seconds in-flight requests get after the stop; the rest are cancelled")
    ap.add_argument("--request-timeout", type=float, default=300.0)
    ap.add_argument("--prompt-min", type=int, default=16)
    ap.add_argument("--prompt-max", type=int, default=1024)
    ap.add_argument("--gen-min", type=int, default=8)
    ap.add_argument("--gen-max", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--stream-frac", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1234)
    sys.exit(asyncio.run(run(ap.parse_args())))


if __name__ == "__main__":
    main()
