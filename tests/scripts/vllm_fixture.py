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
previous step's event synchronize in get_output. --torch does the same with real CUDA
through PyTorch (pinned copy, CUDA graph of matmuls, blocking events). Without either there
is no CUDA at all.

Ground truth (--truth, JSON lines, written at exit, also after SIGTERM/SIGINT, which end
the loop after the current step; times are CLOCK_MONOTONIC ns):
  {"kind":"meta","pid","python","executable","root","threads":{"engine","api-output"},...}
  {"kind":"op","op":"vllm/v1/core/sched/scheduler.py:Scheduler.schedule","tid","step",
   "start_ns","end_ns","cpu_ns","line"}   one per burn; line = the burn() call's line
  {"kind":"gc","phase":"start"|"stop","generation","collected","uncollectable","tid","ts_ns"}
  {"kind":"state","ts_ns","since_ns","running","waiting","requests","free_blocks",
   "total_blocks"}   after every change of the scheduler's queues or KV cache blocks; the
   change happened between since_ns (taken right before it) and ts_ns (the record: the engine
   thread may be descheduled in between)
  {"kind":"step","step","start_ns","end_ns"}   one per step-function call; with async
   scheduling the last one (step = steps) only drains the previous step's output
  {"kind":"batch","step","ts_ns","num_reqs","num_tokens","new_reqs","cached_reqs","resumed",
   "prefill_reqs","decode_reqs","preempted","finished","encoder_inputs","running","waiting",
   "free_blocks"}   one per schedule() call (the SchedulerOutput it returned)
  {"kind":"forward","ts_ns","num_tokens","mode","desc_tokens"}   one per forward launched
  {"kind":"preempt","req","ts_ns","reason","tokens_lost"}, {"kind":"finish","req","ts_ns"},
  {"kind":"add","req","ts_ns"} (Scheduler.add_request, stamped inside it),
With --tp N (and --lib-dir) this process loads no CUDA library: N worker processes
(tp_worker.py, comm VLLM::Worker_TP<r>) make the CUDA calls, each logging to
$FAKE_CUDA_LOG.rank<r>; only rank 0 waits for each step's event (vLLM's output rank).
  {"kind":"evict","ts_ns","blocks"}, {"kind":"reset","ts_ns"}, and at the end
  {"kind":"request","req","prompt_tokens","output_tokens","preemptions","arrival","status"}
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


def _check(what, rc):
    assert rc == 0, f"{what}: {rc}"


class FakeCudaGpu:
    """The fake CUDA runtime through ctypes (fixture_loop.py's signatures): one stream, two
    events used in turn, a device input buffer, one captured graph of `num_kernels` kernels
    of `kernel_us` µs each (kernel duration = grid.x µs on the fake GPU)."""

    def __init__(self, lib_dir, input_bytes=4096):
        import fixture_loop

        rt, _driver = fixture_loop.load(lib_dir)
        rt.cudaEventRecord.argtypes = [ctypes.c_uint64, ctypes.c_uint64]
        rt.cudaEventRecord.restype = ctypes.c_int
        self.rt = rt
        self.input_bytes = input_bytes
        self.stream = 0

    def _setup(self):
        rt = self.rt
        stream = ctypes.c_uint64(0)
        _check("cudaStreamCreateWithFlags", rt.cudaStreamCreateWithFlags(ctypes.byref(stream), 1))
        self.stream = stream.value
        self.events = []
        for _ in range(2):
            ev = ctypes.c_uint64(0)
            _check("cudaEventCreateWithFlags", rt.cudaEventCreateWithFlags(ctypes.byref(ev), 0))
            self.events.append(ev.value)
        self.host_input = ctypes.create_string_buffer(self.input_bytes)
        self.device_input = ctypes.c_void_p(0)
        _check("cudaMalloc", rt.cudaMalloc(ctypes.byref(self.device_input), self.input_bytes))

    def capture(self, num_kernels, kernel_us):
        if not self.stream:
            self._setup()
        rt = self.rt
        dim3 = rt.cudaLaunchKernel.argtypes[1]  # the dim3 structure the loader declared
        grid, block = dim3(kernel_us, 1, 1), dim3(128, 1, 1)
        graph, exe = ctypes.c_uint64(0), ctypes.c_uint64(0)
        _check("cudaStreamBeginCapture", rt.cudaStreamBeginCapture(self.stream, 0))
        func = ctypes.c_void_p(0x1000)
        for _ in range(num_kernels):
            _check("cudaLaunchKernel", rt.cudaLaunchKernel(func, grid, block, None, 0, self.stream))
        _check("cudaStreamEndCapture", rt.cudaStreamEndCapture(self.stream, ctypes.byref(graph)))
        _check("cudaGraphInstantiateWithFlags",
               rt.cudaGraphInstantiateWithFlags(ctypes.byref(exe), graph.value, 0))
        return exe.value

    def copy_inputs(self):
        _check("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(
            self.device_input, self.host_input, self.input_bytes, 1, self.stream))

    def replay(self, graph):
        _check("cudaGraphLaunch", self.rt.cudaGraphLaunch(graph, self.stream))

    def encode(self, kernel_us):
        dim3 = self.rt.cudaLaunchKernel.argtypes[1]
        _check("cudaLaunchKernel", self.rt.cudaLaunchKernel(
            ctypes.c_void_p(0x2000), dim3(kernel_us, 1, 1), dim3(128, 1, 1), None, 0,
            self.stream))

    def record(self, step):
        event = self.events[step % 2]
        _check("cudaEventRecord", self.rt.cudaEventRecord(event, self.stream))
        return event

    def wait(self, event):
        _check("cudaEventSynchronize", self.rt.cudaEventSynchronize(event))

    def mark(self, text):
        self.rt.fakeCudaMark(text.encode())  # tags the fake GPU's exec lines with the step

    def shutdown(self):
        _check("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(self.stream))
        _check("cudaFree", self.rt.cudaFree(self.device_input))
        self.rt.fakeCudaFlush()


class TensorParallelGpu:
    """The EngineCore's side of tensor parallelism: no CUDA in this process; every call is
    broadcast to the worker processes (tp_worker.py, one per rank), and only the output rank
    (0) is asked to wait for a step's event, as vLLM's MultiprocExecutor does."""

    def __init__(self, lib_dir, ranks, log_base):
        import subprocess

        self.workers = []
        for rank in range(ranks):
            env = dict(os.environ, FAKE_CUDA_LOG=f"{log_base}.rank{rank}")
            self.workers.append(subprocess.Popen(
                [sys.executable, os.path.join(HERE, "tp_worker.py"), "--rank", str(rank),
                 "--lib-dir", lib_dir],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env))
        self.pids = [w.pid for w in self.workers]

    def _ask(self, line, ranks=None):
        targets = self.workers if ranks is None else [self.workers[r] for r in ranks]
        for w in targets:
            w.stdin.write(line + "\n")
            w.stdin.flush()
        return [w.stdout.readline().strip() for w in targets]

    def capture(self, num_kernels, kernel_us):
        replies = self._ask(f"capture {num_kernels} {kernel_us}")
        return ",".join(replies)  # one graph handle per rank

    def copy_inputs(self):
        self._ask("copy")

    def replay(self, graph):
        for w, g in zip(self.workers, graph.split(",")):
            w.stdin.write(f"replay {g}\n")
            w.stdin.flush()
        for w in self.workers:
            w.stdout.readline()

    def encode(self, kernel_us):
        self._ask(f"encode {kernel_us}")

    def record(self, step):
        self._ask(f"record {step}")
        return step

    def wait(self, step):
        self._ask(f"wait {step}", ranks=[0])

    def mark(self, text):
        self._ask(f"mark {text}")

    def shutdown(self):
        self._ask("shutdown")
        for w in self.workers:
            w.wait()


class TorchGpu:
    """Real CUDA through PyTorch, shaped like vLLM's V2 runner: a pinned-host -> device input
    copy, a CUDA graph of `num_kernels` matmuls replayed per step, a blocking event recorded
    after it and synchronized one step later."""

    def __init__(self, input_bytes=4096):
        import torch

        self.torch = torch
        self.host = torch.zeros(input_bytes // 4, dtype=torch.float32).pin_memory()
        self.device = torch.zeros(input_bytes // 4, dtype=torch.float32, device="cuda")
        self.events = [torch.cuda.Event(blocking=True) for _ in range(2)]

    def capture(self, num_kernels, kernel_us):
        torch = self.torch
        n = 2048
        self.a = torch.randn(n, n, device="cuda")
        self.b = torch.randn(n, n, device="cuda")
        repeats = max(1, num_kernels * kernel_us // 100)  # a 2048^3 matmul is ~0.1 ms or less
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture, as torch requires
            for _ in range(2):
                self.a @ self.b
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.a
            for _ in range(repeats):
                out = out @ self.b
            self.out = out
        torch.cuda.synchronize()
        return graph

    def copy_inputs(self):
        self.device.copy_(self.host, non_blocking=True)

    def replay(self, graph):
        graph.replay()

    def encode(self, kernel_us):
        self.enc = self.a @ self.b

    def record(self, step):
        event = self.events[step % 2]
        event.record()
        return event

    def wait(self, event):
        event.synchronize()

    def mark(self, text):
        pass

    def shutdown(self):
        self.torch.cuda.synchronize()


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


def serve_metrics(port, scheduler):
    """The API server's Prometheus endpoint, with the two series ProfileMate cross-checks."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/metrics":
                self.send_error(404)
                return
            pool = scheduler.kv_cache_manager.block_pool
            body = (
                "# TYPE vllm:num_preemptions_total counter\n"
                f'vllm:num_preemptions_total{{engine="0",model_name="fixture"}} '
                f"{float(scheduler.num_preemptions_total)}\n"
                "# TYPE vllm:kv_cache_usage_perc gauge\n"
                f'vllm:kv_cache_usage_perc{{engine="0",model_name="fixture"}} {pool.get_usage()}\n'
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="api-metrics", daemon=True).start()
    return server.server_address[1]


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
            elif r[0] == "state":
                _, ts, since, running, waiting, requests, free, total = r
                d = {"kind": "state", "ts_ns": ts, "since_ns": since, "running": running,
                     "waiting": waiting, "requests": requests, "free_blocks": free,
                     "total_blocks": total}
            elif r[0] == "gc":
                _, phase, gen, collected, uncollectable, tid, ts = r
                d = {"kind": "gc", "phase": phase, "generation": gen, "collected": collected,
                     "uncollectable": uncollectable, "tid": tid, "ts_ns": ts}
            elif r[0] == "json":
                d = r[1]
            else:
                _, step, start, end = r
                d = {"kind": "step", "step": step, "start_ns": start, "end_ns": end}
            f.write(json.dumps(d, separators=(",", ":")) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--forever", action="store_true")
    p.add_argument("--lib-dir")
    p.add_argument("--torch", action="store_true", help="real CUDA work through PyTorch")
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
    p.add_argument("--encoder-us", type=int, default=600)
    p.add_argument("--reset-at-step", type=int, help="reset the prefix cache (preempting "
                   "every running request) before this step")
    p.add_argument("--metrics-port", type=int, help="serve /metrics on 127.0.0.1 (0: any port)")
    p.add_argument("--linger-ms", type=int, default=1500,
                   help="with --metrics-port: keep serving this long after the last step")
    p.add_argument("--start-on-sigusr1", action="store_true",
                   help="start the loop at SIGUSR1 (sent once a tracer is attached); "
                   "--wait-after-load-ms bounds the wait")
    p.add_argument("--other-vllm-version", action="store_true",
                   help="SchedulerOutput with a field under another name (as another vLLM "
                   "version might have it)")
    p.add_argument("--request-id-prefix", default="req-",
                   help="request ids are PREFIX + a number (clients choose request ids: a "
                   "hostile prefix such as =HYPERLINK(...) tests the CSV writers)")
    p.add_argument("--tp", type=int, default=0,
                   help="with --lib-dir: no CUDA here; N worker processes (VLLM::Worker_TP*) "
                   "do each step's CUDA calls on the fake runtime, rank 0 waits for them")
    p.add_argument("--truth", required=True)
    a = p.parse_args()

    engine = None
    stop = False
    go = False

    def on_go(_signum, _frame):
        nonlocal go
        go = True

    def on_signal(_signum, _frame):
        nonlocal stop
        stop = True
        if engine is not None:
            engine.stopping = True

    os.environ["VLLM_FIXTURE_REQUEST_ID_PREFIX"] = a.request_id_prefix
    if a.other_vllm_version:
        os.environ["VLLM_FIXTURE_OTHER_VERSION"] = "1"
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if a.start_on_sigusr1:
        signal.signal(signal.SIGUSR1, on_go)
    gc.callbacks.append(_fixture_cpu.on_gc)

    pid = os.getpid()
    if a.torch:
        cuda = TorchGpu()
    elif a.lib_dir and a.tp:
        cuda = TensorParallelGpu(a.lib_dir, a.tp, os.environ.get("FAKE_CUDA_LOG", "/dev/null"))
        for rank, worker in enumerate(cuda.pids):
            say(f"worker rank={rank} pid={worker}")
    elif a.lib_dir:
        cuda = FakeCudaGpu(a.lib_dir)
    else:
        cuda = None
    scheduler = Scheduler(a.schedule_us, a.update_us)
    if a.metrics_port is not None:
        say(f"metrics port={serve_metrics(a.metrics_port, scheduler)}")
    say(f"pid={pid} ready")
    # Like a server loading its model: time for a tracer to attach before the first step.
    deadline = time.monotonic() + a.wait_after_load_ms / 1000.0
    while not stop and not go and time.monotonic() < deadline:
        time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
    say(f"pid={pid} start")

    runner = GPUModelRunner(a.prepare_us, a.forward_us, a.sample_us, cuda, a.encoder_us)
    runner.capture_model(a.kernels_per_graph, a.kernel_us)
    outputs = queue.Queue()
    tids = {"engine": threading.get_native_id()}
    handler = threading.Thread(
        target=output_handler, name="api-output", daemon=True,
        args=(OutputProcessor(a.output_us), outputs, tids),
    )
    handler.start()
    engine = EngineCoreProc(
        scheduler, runner, outputs,
        batch_queue_size=a.async_depth, idle_us=a.idle_us,
        max_steps=None if a.forever else a.steps, gc_every=a.gc_every,
        reset_at_step=a.reset_at_step,
    )
    engine.stopping = stop
    engine.run_busy_loop()
    outputs.put(None)
    handler.join()
    runner.shutdown()

    budgets = {k: getattr(a, k + "_us") for k in
               ("schedule", "prepare", "forward", "sample", "update", "output", "idle",
                "encoder")}
    for r in scheduler.all_requests:
        _fixture_cpu.TRUTH.append(("json", {
            "kind": "request", "req": r.request_id, "prompt_tokens": r.num_prompt_tokens,
            "output_tokens": len(r._output_token_ids), "preemptions": r.num_preemptions,
            "arrival": r.arrival_time, "status": r.status.name}))
    write_truth(a.truth, {
        "kind": "meta", "pid": pid, "python": sys.version, "executable": sys.executable,
        "root": ROOT, "threads": tids, "budgets_us": budgets, "cuda": cuda is not None,
        "async_depth": a.async_depth, "steps": engine.scheduler.num_scheduled,
    })
    say(f"done steps={engine.scheduler.num_scheduled}")
    if a.metrics_port is not None:
        time.sleep(a.linger_ms / 1000.0)  # /metrics stays up for a last scrape


if __name__ == "__main__":
    main()
