"""CPU burner and ground-truth recorder shared by the stand-in vLLM modules.

Every operation calls burn() directly, so in a sampled stack the operation's frame is
burn's caller. Each call is recorded as a tuple in TRUTH (serialized by the driver at exit).
"""

import gc
import sys
import threading
import time

# ("op", code, line, tid, step, start_ns, end_ns, cpu_ns) | ("gc", phase, generation,
# collected, uncollectable, tid, ts_ns) | ("step", step, start_ns, end_ns)
TRUTH = []

_local = threading.local()


def set_step(step):
    """Engine step that this thread's next burns belong to."""
    _local.step = step


def burn(us):
    """Spins in pure Python until this thread's CPU clock advanced by `us` µs.

    No sleeps and no allocation of GC-tracked objects, so the time is on-CPU and ends up in
    the caller's samples (not in a collection)."""
    caller = sys._getframe(1)
    code, line = caller.f_code, caller.f_lineno
    start = time.monotonic_ns()
    cpu0 = time.thread_time_ns()
    goal = cpu0 + us * 1000
    cpu = cpu0
    x = 1
    while cpu < goal:
        for i in range(64):
            x = (x * 1103515245 + i) & 0x7FFFFFFF
        cpu = time.thread_time_ns()
    TRUTH.append(
        ("op", code, line, threading.get_native_id(), getattr(_local, "step", -1),
         start, time.monotonic_ns(), cpu - cpu0)
    )


def churn(cycles, generation):
    """Leaves `cycles` unreachable reference cycles and collects `generation`: a GC pause of
    known origin (automatic collections also run while the cycles are built)."""
    junk = []
    for _ in range(cycles):
        a = []
        b = [a]
        a.append(b)
        junk.append(a)
    del junk
    gc.collect(generation)


def on_gc(phase, info):
    """gc.callbacks hook: records collection start/stop on the collecting thread."""
    TRUTH.append(
        ("gc", phase, info["generation"], info.get("collected", 0),
         info.get("uncollectable", 0), threading.get_native_id(), time.monotonic_ns())
    )
