#!/usr/bin/env python3
"""vLLM-V2-model-runner-shaped PyTorch step loop on a real GPU, with ground-truth timing.

Each step (like vLLM's model runner with async scheduling):
  (a) H2D copy of fresh inputs from a pinned CPU tensor into the static input (non_blocking);
  (b) start_ev[i].record()                       (truth, unless --no-truth-events)
  (c) forward: eager model(static_in), or g.replay() of one captured CUDA graph;
  (d) end_ev[i].record()                         (truth, unless --no-truth-events)
  (e) D2H of a small slice of the output (argmax over hidden -> int64 (B,)) into pinned memory;
  (f) done_ev[i] = torch.cuda.Event(blocking=True) recorded on the current stream
      (a non-timing event, as vLLM uses);
  (g) async depth 2: done_ev[i-1].synchronize() (step i-1 completes while step i is queued);
      async depth 1: done_ev[i].synchronize() at once.

--no-d2h leaves out (e) (an eager step then shows the default probes nothing but its input
copy and events); --prep-event adds vLLM V1's prepare_inputs_event: synchronized at the start
of each step (for the previous step's inputs), recorded right after the input copy.

Ground truth per step: start_ev[i].elapsed_time(end_ev[i]) (ms), read after the loop. It
covers only the forward (c), not the H2D copy (a) nor the argmax + D2H (e).

NOTE: the truth timing events themselves add cudaEventRecord calls that the profiler sees
(2 per step, on the same stream, never synchronized on); that is fine and expected. Use
--no-truth-events for overhead benchmarks so the call pattern is exactly vLLM's.

All events are kept alive in lists until the end of the run, so that their handles are not
freed and reused mid-run (vLLM creates a new event per step; so do we).

Stdout (flushed): "pid=<pid> ready" after CUDA init + warmup + graph capture (then it sleeps
--wait-before-start seconds before the timed loop), "done steps=<n> steps_per_sec=<x>" at the end.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn

VOCAB = 32000
WINDOW_S = 0.5
NUM_PINNED_BUFFERS = 4  # > async depth: a pinned buffer is never rewritten while its copy may be in flight


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["eager", "graph", "mixed"], default="mixed",
                   help="mixed: even steps eager, odd steps graph (default)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seconds", type=float, default=None,
                   help="run the loop until this many seconds elapsed instead of --steps")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--wait-before-start", type=float, default=0.0,
                   help="seconds to sleep after init/warmup/capture, before the timed loop")
    p.add_argument("--truth", default=None, help="write the ground-truth JSON here")
    p.add_argument("--async-depth", type=int, choices=[1, 2], default=2)
    p.add_argument("--no-truth-events", action="store_true",
                   help="skip the start/end timing events (overhead benchmarks)")
    p.add_argument("--warmup", type=int, default=3, help="eager warmup passes")
    p.add_argument("--no-d2h", action="store_true", help="no argmax + device-to-host copy")
    p.add_argument("--prep-event", action="store_true",
                   help="vLLM V1's prepare_inputs_event around the input copy")
    a = p.parse_args(argv)
    if a.steps < 1 and a.seconds is None:
        p.error("--steps must be >= 1")
    return a


class Block(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def kind_of(mode, i):
    if mode == "mixed":
        return "eager" if i % 2 == 0 else "graph"
    return mode


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.stderr.write("workload: CUDA is not available\n")
        return 2
    dev = torch.device("cuda")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    B, H = args.batch, args.hidden
    torch.manual_seed(0)

    # Like a language model step: token ids in (small H2D copy), embedding, layers, sampled ids out.
    model = nn.Sequential(nn.Embedding(VOCAB, H), *[Block(H) for _ in range(args.layers)])
    model = model.to(device=dev, dtype=dtype).eval()

    # Fresh inputs come from a few pre-filled pinned buffers (rotated), outputs go to pinned buffers.
    pinned_in = [torch.randint(0, VOCAB, (B,), dtype=torch.int64).pin_memory() for _ in range(NUM_PINNED_BUFFERS)]
    pinned_out = [torch.empty(B, dtype=torch.int64).pin_memory() for _ in range(NUM_PINNED_BUFFERS)]
    static_in = torch.zeros(B, device=dev, dtype=torch.int64)

    use_graph = args.mode in ("graph", "mixed")
    g = None
    static_out = None
    with torch.no_grad():
        # Eager warmup (cuBLAS handles, workspaces, kernel selection).
        static_in.copy_(pinned_in[0], non_blocking=True)
        for _ in range(args.warmup):
            model(static_in)
        torch.cuda.synchronize()

        if use_graph:
            # Side-stream warmup before capture, as the PyTorch docs recommend.
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    model(static_in)
            torch.cuda.current_stream().wait_stream(s)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                static_out = model(static_in)
            torch.cuda.synchronize()
            # One untimed replay so the first timed replay is not the graph's first upload.
            g.replay()
            torch.cuda.synchronize()

    pid = os.getpid()
    say(f"pid={pid} ready")
    if args.wait_before_start > 0:
        time.sleep(args.wait_before_start)

    truth_events = not args.no_truth_events
    kinds = []
    start_evs, end_evs, done_evs = [], [], []
    graph_replays = 0
    event_syncs = 0
    stream = torch.cuda.current_stream()
    prep = torch.cuda.Event(blocking=True)

    deadline = None
    t0 = time.perf_counter()
    if args.seconds is not None:
        deadline = t0 + args.seconds
    i = 0
    # Throughput per ~WINDOW_S window (CLOCK_MONOTONIC seconds), for same-process overhead
    # measurement while a profiler attaches and detaches mid-run.
    windows = []
    win_t0, win_i0 = time.monotonic(), 0
    with torch.no_grad():
        while True:
            if deadline is not None:
                if time.perf_counter() >= deadline:
                    break
            elif i >= args.steps:
                break
            kind = kind_of(args.mode, i)
            kinds.append(kind)
            now = time.monotonic()
            if now - win_t0 >= WINDOW_S:
                windows.append([win_t0, now, i - win_i0])
                win_t0, win_i0 = now, i
            # V1's synchronize_input_prep: the previous step's inputs are on the GPU.
            if args.prep_event and i > 0:
                prep.synchronize()
            # (a) truth start: the step's GPU work is everything from the input copy on.
            if truth_events:
                sev = torch.cuda.Event(enable_timing=True)
                eev = torch.cuda.Event(enable_timing=True)
                start_evs.append(sev)
                end_evs.append(eev)
                sev.record(stream)
            # (b) H2D of fresh inputs.
            static_in.copy_(pinned_in[i % NUM_PINNED_BUFFERS], non_blocking=True)
            if args.prep_event:
                prep.record(stream)
            # (c) forward.
            if kind == "graph":
                g.replay()
                graph_replays += 1
                out = static_out
            else:
                out = model(static_in)
            # (d) D2H of the sampled ids.
            if not args.no_d2h:
                tok = out.argmax(dim=-1)
                pinned_out[i % NUM_PINNED_BUFFERS].copy_(tok, non_blocking=True)
            # (e) truth end.
            if truth_events:
                eev.record(stream)
            # (f) vLLM-style non-timing completion event.
            done = torch.cuda.Event(blocking=True)
            done.record(stream)
            done_evs.append(done)
            # (g) async scheduling.
            if args.async_depth == 2:
                if i > 0:
                    done_evs[i - 1].synchronize()
                    event_syncs += 1
            else:
                done.synchronize()
                event_syncs += 1
            i += 1
        steps = i
        if steps > 0 and args.async_depth == 2:
            done_evs[-1].synchronize()
            event_syncs += 1
    loop_seconds = time.perf_counter() - t0
    steps_per_sec = steps / loop_seconds if loop_seconds > 0 else 0.0

    gpu_ms = [s.elapsed_time(e) for s, e in zip(start_evs, end_evs)] if truth_events else []

    if args.truth:
        truth = {
            "pid": pid,
            "mode": args.mode,
            "steps": steps,
            "kinds": kinds,
            "gpu_ms": gpu_ms,
            "truth_events": truth_events,
            "loop_seconds": loop_seconds,
            "steps_per_sec": steps_per_sec,
            "graph_replays": graph_replays,
            "windows": windows,
            "event_syncs": event_syncs,
            "async_depth": args.async_depth,
            "layers": args.layers,
            "hidden": H,
            "batch": B,
            "dtype": args.dtype,
            "no_d2h": args.no_d2h,
            "prep_event": args.prep_event,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(dev),
        }
        tmp = args.truth + ".tmp"
        with open(tmp, "w") as f:
            json.dump(truth, f, indent=1)
        os.replace(tmp, args.truth)

    say(f"done steps={steps} steps_per_sec={steps_per_sec:.1f}")
    # Keep every event alive until here.
    del start_evs, end_evs, done_evs
    return 0


if __name__ == "__main__":
    sys.exit(main())
