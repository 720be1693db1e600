"""CPU burner and ground-truth recorder shared by the stand-in vLLM modules.

Every operation calls burn() directly, so in a sampled stack the operation's frame is
burn's caller. Each call is recorded as a tuple in TRUTH (serialized by the driver at exit).
"""

import gc
import sys
import threading
import time

# ("op", code, line, tid, step, start_ns, end_ns, cpu_ns) | ("gc", phase, generation,
# collected, uncollectable, tid, ts_ns) | ("step", step, start_ns, end_ns) | ("state", ts_ns,
# since_ns, running, waiting, requests, free_blocks, total_blocks) | ("json", dict)
TRUTH = []

_local = threading.local()


# Time just before the first state change since the last truth state record (None: none).
_change_since = None


def changing():
    """Called right before a change of the scheduler's queues or KV cache blocks: the truth
    record that follows it gets this time as the change's earliest moment (the thread may be
    descheduled between a change and its record, so the record's own time is only the
    latest)."""
    global _change_since
    if _change_since is None:
        _change_since = time.monotonic_ns()


def change_since(ts):
    """The earliest moment of the changes recorded at `ts` (`ts` when nothing changed)."""
    global _change_since
    since, _change_since = _change_since, None
    return ts if since is None else since


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
