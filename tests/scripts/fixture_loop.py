#!/usr/bin/env python3
"""vLLM-shaped step loop over the fake CUDA runtime, through ctypes (Python twin of pm-fixture).

Loads <lib-dir>/libcudart.so.12 (and libcuda.so.1 for a direct cuLaunchKernelEx) at run time (after --wait-before-load-ms), captures --graphs
CUDA graphs of --kernels-per-graph kernels, then runs the step loop with async scheduling
(--async-depth 2: synchronize the previous step's event). Kernel duration = grid.x µs.

Stdout: "pid=<pid> waiting" (with --wait-before-load-ms > 0), "pid=<pid> ready" (library
loaded, no CUDA call made yet), "done steps=<n>" at the end.
"""

import argparse
import ctypes
import os
import signal
import sys
import time

CUDA_MEMCPY_H2D = 1
CUDA_MEMCPY_D2H = 2
CUDA_ERROR_NOT_READY = 600

STOP = False


class Dim3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint32), ("y", ctypes.c_uint32), ("z", ctypes.c_uint32)]


class CUlaunchConfig(ctypes.Structure):
    _fields_ = [
        ("gridDimX", ctypes.c_uint32),
        ("gridDimY", ctypes.c_uint32),
        ("gridDimZ", ctypes.c_uint32),
        ("blockDimX", ctypes.c_uint32),
        ("blockDimY", ctypes.c_uint32),
        ("blockDimZ", ctypes.c_uint32),
        ("sharedMemBytes", ctypes.c_uint32),
        ("hStream", ctypes.c_uint64),  # offset 32
        ("attrs", ctypes.c_void_p),
        ("numAttrs", ctypes.c_uint32),
    ]


assert CUlaunchConfig.hStream.offset == 32


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def check(what, rc):
    if rc != 0:
        sys.stderr.write(f"fixture_loop: {what} failed with {rc}\n")


def load(lib_dir):
    """Returns (runtime, driver): libcudart.so.12, and libcuda.so.1 for the direct
    (Triton-like) cuLaunchKernelEx."""
    mode = os.RTLD_NOW | os.RTLD_LOCAL
    rt = ctypes.CDLL(os.path.join(lib_dir, "libcudart.so.12"), mode=mode)
    drv = ctypes.CDLL(os.path.join(lib_dir, "libcuda.so.1"), mode=mode)
    u64 = ctypes.c_uint64
    pu64 = ctypes.POINTER(ctypes.c_uint64)
    vp = ctypes.c_void_p
    sigs = {
        "cudaStreamCreateWithFlags": [pu64, ctypes.c_uint32],
        "cudaEventCreateWithFlags": [pu64, ctypes.c_uint32],
        "cudaStreamBeginCapture": [u64, ctypes.c_int],
        "cudaStreamEndCapture": [u64, pu64],
        "cudaGraphInstantiateWithFlags": [pu64, u64, ctypes.c_ulonglong],
        "cudaGraphLaunch": [u64, u64],
        "cudaLaunchKernel": [vp, Dim3, Dim3, ctypes.POINTER(vp), ctypes.c_size_t, u64],
        "cudaMemcpyAsync": [vp, vp, ctypes.c_size_t, ctypes.c_int, u64],
        "cudaEventRecordWithFlags": [u64, u64, ctypes.c_uint32],
        "cudaEventSynchronize": [u64],
        "cudaEventQuery": [u64],
        "cudaStreamSynchronize": [u64],
        "cudaMalloc": [ctypes.POINTER(vp), ctypes.c_size_t],
        "cudaFree": [vp],
    }
    for name, argtypes in sigs.items():
        f = getattr(rt, name)
        f.argtypes = argtypes
        f.restype = ctypes.c_int
    rt.fakeCudaMark.argtypes = [ctypes.c_char_p]
    rt.fakeCudaMark.restype = None
    rt.fakeCudaFlush.argtypes = []
    rt.fakeCudaFlush.restype = None
    drv.cuLaunchKernelEx.argtypes = [ctypes.POINTER(CUlaunchConfig), u64, ctypes.POINTER(vp), ctypes.POINTER(vp)]
    drv.cuLaunchKernelEx.restype = ctypes.c_int
    return rt, drv


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lib-dir", required=True)
    p.add_argument("--graphs", type=int, default=2)
    p.add_argument("--kernels-per-graph", type=int, default=3)
    p.add_argument("--kernel-us", type=int, default=200)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eager-kernels", type=int, default=4)
    p.add_argument("--h2d-bytes", type=int, default=4096)
    p.add_argument("--d2h-bytes", type=int, default=1024)
    p.add_argument("--step-gap-us", type=int, default=300)
    p.add_argument("--async-depth", type=int, choices=(1, 2), default=2)
    p.add_argument("--wait-before-load-ms", type=int, default=0)
    p.add_argument("--wait-after-load-ms", type=int, default=0)
    p.add_argument("--forever", action="store_true")
    a = p.parse_args()

    def on_signal(_signum, _frame):
        global STOP
        STOP = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    pid = os.getpid()
    if a.wait_before_load_ms > 0:
        say(f"pid={pid} waiting")
        time.sleep(a.wait_before_load_ms / 1000.0)
    rt, drv = load(a.lib_dir)
    say(f"pid={pid} ready")
    # Like a server loading its model: time for a tracer to find the freshly mapped libraries.
    time.sleep(a.wait_after_load_ms / 1000.0)
    say(f"pid={pid} start")

    stream = ctypes.c_uint64(0)
    check("cudaStreamCreateWithFlags", rt.cudaStreamCreateWithFlags(ctypes.byref(stream), 1))
    s = stream.value
    events = [ctypes.c_uint64(0), ctypes.c_uint64(0)]
    for e in events:
        check("cudaEventCreateWithFlags", rt.cudaEventCreateWithFlags(ctypes.byref(e), 0))
    ev = [e.value for e in events]

    host_in = ctypes.create_string_buffer(max(a.h2d_bytes, 8))
    host_out = ctypes.create_string_buffer(max(a.d2h_bytes, 8))
    dev_in = ctypes.c_void_p(0)
    dev_out = ctypes.c_void_p(0)
    check("cudaMalloc", rt.cudaMalloc(ctypes.byref(dev_in), max(a.h2d_bytes, 8)))
    check("cudaMalloc", rt.cudaMalloc(ctypes.byref(dev_out), max(a.d2h_bytes, 8)))
    grid = Dim3(a.kernel_us, 1, 1)
    block = Dim3(128, 1, 1)
    func = ctypes.c_void_p(0x1000)

    def launch():
        check("cudaLaunchKernel", rt.cudaLaunchKernel(func, grid, block, None, 0, s))

    cfg = CUlaunchConfig(a.kernel_us, 1, 1, 256, 1, 1, 0, s, None, 0)

    def launch_ex():
        check("cuLaunchKernelEx", drv.cuLaunchKernelEx(ctypes.byref(cfg), 0x2000, None, None))

    # Capture phase.
    execs = []
    for _ in range(a.graphs):
        graph = ctypes.c_uint64(0)
        exe = ctypes.c_uint64(0)
        check("cudaStreamBeginCapture", rt.cudaStreamBeginCapture(s, 0))
        for _ in range(a.kernels_per_graph):
            launch()
        check("cudaStreamEndCapture", rt.cudaStreamEndCapture(s, ctypes.byref(graph)))
        check(
            "cudaGraphInstantiateWithFlags",
            rt.cudaGraphInstantiateWithFlags(ctypes.byref(exe), graph.value, 0),
        )
        execs.append(exe.value)

    g = len(execs)
    i = 0
    while (a.forever or i < a.steps) and not STOP:
        rt.fakeCudaMark(f"step {i}".encode())
        check(
            "cudaMemcpyAsync(H2D)",
            rt.cudaMemcpyAsync(dev_in, host_in, a.h2d_bytes, CUDA_MEMCPY_H2D, s),
        )
        if g > 0 and i % 2 == 1:
            check("cudaGraphLaunch", rt.cudaGraphLaunch(execs[(i // 2) % g], s))
        else:
            for _ in range(a.eager_kernels):
                launch()
            launch_ex()
        check(
            "cudaMemcpyAsync(D2H)",
            rt.cudaMemcpyAsync(host_out, dev_out, a.d2h_bytes, CUDA_MEMCPY_D2H, s),
        )
        check("cudaEventRecordWithFlags", rt.cudaEventRecordWithFlags(ev[i % 2], s, 0))
        if a.async_depth == 1:
            check("cudaEventSynchronize", rt.cudaEventSynchronize(ev[i % 2]))
        elif i > 0:
            check("cudaEventSynchronize", rt.cudaEventSynchronize(ev[(i - 1) % 2]))
        i += 1
        if a.step_gap_us > 0:
            time.sleep(a.step_gap_us / 1e6)
    if i > 0 and a.async_depth == 2:
        check("cudaEventSynchronize", rt.cudaEventSynchronize(ev[(i - 1) % 2]))
    check("cudaFree", rt.cudaFree(dev_in))
    check("cudaFree", rt.cudaFree(dev_out))
    rt.fakeCudaFlush()
    say(f"done steps={i}")


if __name__ == "__main__":
    main()
