#!/usr/bin/env python3
"""One tensor-parallel worker of the vLLM-shaped fixture (vllm_fixture.py --tp N): the
process vLLM's MultiprocExecutor starts as `VLLM::Worker_TP<rank>`. It owns this rank's CUDA
work on the fake runtime and does what the EngineCore asks, one command per line on stdin,
answering one line on stdout:

  capture K US -> graph handle     copy -> ok     replay G -> ok     encode US -> ok
  record STEP -> ok                wait STEP -> ok (only the output rank is asked)
  mark TEXT -> ok                  shutdown -> ok, then exit

Every rank records each step's event; only rank 0 (the output rank, whose
WorkerAsyncOutputCopy thread waits in vLLM) synchronizes it. Its fake CUDA log is
$FAKE_CUDA_LOG (set per rank by the EngineCore).
"""

import ctypes
import os
import sys

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, HERE)

PR_SET_NAME = 15


def main():
    rank = int(sys.argv[sys.argv.index("--rank") + 1])
    lib_dir = sys.argv[sys.argv.index("--lib-dir") + 1]
    # The thread (and process) name vLLM's workers carry, truncated by the kernel to 15 bytes.
    ctypes.CDLL(None).prctl(PR_SET_NAME, f"VLLM::Worker_TP{rank}".encode(), 0, 0, 0)
    import vllm_fixture

    gpu = vllm_fixture.FakeCudaGpu(lib_dir)
    events = {}
    out = sys.stdout
    for line in sys.stdin:
        cmd, _, rest = line.strip().partition(" ")
        reply = "ok"
        if cmd == "capture":
            k, us = (int(x) for x in rest.split())
            reply = str(gpu.capture(k, us))
        elif cmd == "copy":
            gpu.copy_inputs()
        elif cmd == "replay":
            gpu.replay(int(rest))
        elif cmd == "encode":
            gpu.encode(int(rest))
        elif cmd == "record":
            events[int(rest)] = gpu.record(int(rest))
        elif cmd == "wait":
            gpu.wait(events.pop(int(rest)))
        elif cmd == "mark":
            gpu.mark(rest)
        elif cmd == "shutdown":
            gpu.shutdown()
            out.write("ok\n")
            out.flush()
            return
        out.write(reply + "\n")
        out.flush()


if __name__ == "__main__":
    main()
