#!/usr/bin/env python3
"""vLLM-shaped engine whose operations spend known CPU budgets, for CPU attribution tests.

Runs the stand-in vLLM modules under ../pyfixture (real vLLM module paths and qualnames):
EngineCoreProc.run_busy_loop sleeps in _process_input_queue (--idle-us), then steps with
async scheduling (batch queue of --async-depth): Scheduler.schedule, GPUModelRunner.
prepare_inputs, CudaGraphManager.run_fullgraph (forward), GPUModelRunner.sample,
AsyncOutput.get_output of the previous step, Scheduler.update_from_output; the output goes
through a queue.Queue to OutputProcessor.process_outputs on the thread "api-output". Each
operation calls burn(), which spins until the thread's CPU clock advanced by the budget.
Every --gc-every steps, 20000 reference cycles are left behind and gc.collect(0|1|2) runs.

With --lib-dir, the fake CUDA runtime (<lib-dir>/libcudart.so.12, loaded like
fixture_loop.py) gets an H2D copy in prepare_inputs, a graph launch in run_fullgraph (graph
captured in GPUModelRunner.capture_model), an event record in sample_tokens and the
previous step's event synchronize in get_output. Without it there is no CUDA at all.

Ground truth (--truth, JSON lines, written at exit, also after SIGTERM/SIGINT, which end
the loop after the current step; times are CLOCK_MONOTONIC ns):
  {"kind":"meta","pid","python","executable","root","threads":{"engine","api-output"},...}
  {"kind":"op","op":"vllm/v1/core/sched/scheduler.py:Scheduler.schedule","tid","step",
   "start_ns","end_ns","cpu_ns","line"}   one per burn; line = the burn() call's line
  {"kind":"gc","phase":"start"|"stop","generation","collected","uncollectable","tid","ts_ns"}
  {"kind":"step","step","start_ns","end_ns"}   one per step-function call; with async
   scheduling the last one (step = steps) only drains the previous step's output
An op's "step" is the engine step during which it ran (for process_outputs: the step that
produced the output).

Stdout: "pid=<pid> ready" (imports done, CUDA library loaded, no CUDA call made yet),
"pid=<pid> start", "done steps=<n>" (scheduled steps) once the truth is written.
"""

import argparse
import ctypes
import gc
import json
import os
import queue
import signal
import sys
import threading
import time

HERE = os.path.dirname(os.path.realpath(__file__))
ROOT = os.path.realpath(os.path.join(HERE, "..", "pyfixture"))
sys.path.insert(0, ROOT)

from vllm import _fixture_cpu  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.engine.core import EngineCoreProc  # noqa: E402
from vllm.v1.engine.output_processor import OutputProcessor  # noqa: E402
from vllm.v1.worker.gpu.model_runner import GPUModelRunner  # noqa: E402

PR_SET_NAME = 15


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def load_cuda(lib_dir):
    """The fake runtime with fixture_loop.py's signatures, plus cudaEventRecord."""
    import fixture_loop

    rt, _driver = fixture_loop.load(lib_dir)
    rt.cudaEventRecord.argtypes = [ctypes.c_uint64, ctypes.c_uint64]
    rt.cudaEventRecord.restype = ctypes.c_int
    return rt


def output_handler(processor, outputs, tids):
    """The API server's output handler: detokenizes each step's outputs off the engine thread."""
    name = threading.current_thread().name
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)  # comm, as Python 3.14 sets it
    tids[name] = threading.get_native_id()
    while True:
        item = outputs.get()
        if item is None:
            return
        step, engine_core_outputs = item
        _fixture_cpu.set_step(step)
        processor.process_outputs(engine_core_outputs)


def write_truth(path, meta):
    ops = {}

    def op(code):
        name = ops.get(code)
        if name is None:
            rel = os.path.relpath(os.path.realpath(code.co_filename), ROOT)
            name = ops[code] = f"{rel}:{code.co_qualname}"
        return name

    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(meta) + "\n")
        for r in list(_fixture_cpu.TRUTH):
            if r[0] == "op":
                _, code, line, tid, step, start, end, cpu = r
                d = {"kind": "op", "op": op(code), "tid": tid, "step": step,
                     "start_ns": start, "end_ns": end, "cpu_ns": cpu, "line": line}
            elif r[0] == "gc":
                _, phase, gen, collected, uncollectable, tid, ts = r
                d = {"kind": "gc", "phase": phase, "generation": gen, "collected": collected,
                     "uncollectable": uncollectable, "tid": tid, "ts_ns": ts}
            else:
                _, step, start, end = r
                d = {"kind": "step", "step": step, "start_ns": start, "end_ns": end}
            f.write(json.dumps(d, separators=(",", ":")) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--forever", action="store_true")
    p.add_argument("--lib-dir")
    p.add_argument("--wait-after-load-ms", type=int, default=0)
    p.add_argument("--async-depth", type=int, choices=(1, 2), default=2)
    p.add_argument("--kernels-per-graph", type=int, default=3)
    p.add_argument("--kernel-us", type=int, default=200)
    p.add_argument("--schedule-us", type=int, default=2000)
    p.add_argument("--prepare-us", type=int, default=1500)
    p.add_argument("--forward-us", type=int, default=1000)
    p.add_argument("--sample-us", type=int, default=500)
    p.add_argument("--update-us", type=int, default=1000)
    p.add_argument("--output-us", type=int, default=800)
    p.add_argument("--idle-us", type=int, default=1000)
    p.add_argument("--gc-every", type=int, default=10)
    p.add_argument("--truth", required=True)
    a = p.parse_args()

    engine = None
    stop = False

    def on_signal(_signum, _frame):
        nonlocal stop
        stop = True
        if engine is not None:
            engine.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    gc.callbacks.append(_fixture_cpu.on_gc)

    pid = os.getpid()
    cuda = load_cuda(a.lib_dir) if a.lib_dir else None
    say(f"pid={pid} ready")
    # Like a server loading its model: time for a tracer to attach before the first step.
    deadline = time.monotonic() + a.wait_after_load_ms / 1000.0
    while not stop and time.monotonic() < deadline:
        time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
    say(f"pid={pid} start")

    runner = GPUModelRunner(a.prepare_us, a.forward_us, a.sample_us, cuda)
    runner.capture_model(a.kernels_per_graph, a.kernel_us)
    outputs = queue.Queue()
    tids = {"engine": threading.get_native_id()}
    handler = threading.Thread(
        target=output_handler, name="api-output", daemon=True,
        args=(OutputProcessor(a.output_us), outputs, tids),
    )
    handler.start()
    engine = EngineCoreProc(
        Scheduler(a.schedule_us, a.update_us), runner, outputs,
        batch_queue_size=a.async_depth, idle_us=a.idle_us,
        max_steps=None if a.forever else a.steps, gc_every=a.gc_every,
    )
    engine.stopping = stop
    engine.run_busy_loop()
    outputs.put(None)
    handler.join()
    runner.shutdown()
    if cuda is not None:
        cuda.fakeCudaFlush()

    budgets = {k: getattr(a, k + "_us") for k in
               ("schedule", "prepare", "forward", "sample", "update", "output", "idle")}
    write_truth(a.truth, {
        "kind": "meta", "pid": pid, "python": sys.version, "executable": sys.executable,
        "root": ROOT, "threads": tids, "budgets_us": budgets, "cuda": cuda is not None,
        "async_depth": a.async_depth, "steps": engine.scheduler.num_scheduled,
    })
    say(f"done steps={engine.scheduler.num_scheduled}")


if __name__ == "__main__":
    main()
