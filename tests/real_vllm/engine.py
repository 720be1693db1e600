#!/usr/bin/env python3
"""The real vLLM v1 `Scheduler` in an engine-core-shaped loop, over the fake CUDA runtime:
the opt-in check that ProfileMate reads real vLLM objects, not only the test fixture's.

    engine.py --lib-dir DIR --truth FILE [--steps N] [--start-on-sigusr1]
    engine.py --plain-loop --truth FILE [--steps N] [--start-on-sigusr1]

Needs a Python with vLLM installed (the scheduler only: no model, no GPU; a local model
config directory is written next to the truth file). Each step: `Scheduler.schedule()`,
then `GPUModelRunner.execute_model(scheduler_output)` makes the CUDA calls of a step (an
input copy, a kernel, an output copy, an event record, a wait on the previous step's
event) on the fake runtime, then
`Scheduler.update_from_output()` with one sampled token per request that finished its
prefill. The engine class lives under a `real_vllm/` path, as vLLM's own do under `vllm/`.

--plain-loop: the TP>1 EngineCore's shape, where the workers run the model: a plain
function loops `schedule()` -> a fake model output -> `update_from_output()`, with no
engine-loop frame (no `EngineCoreProc.run_busy_loop`) and no fake CUDA runtime (the only
CUDA library mapped is the one PyTorch links, never called).

Stdout: "pid=<pid> ready", then "pid=<pid> start", "done steps=<n>".
Truth (JSON lines): {"kind":"batch","step","ts_ns","num_reqs","num_tokens","new_reqs",
"cached_reqs","preempted"} per step, with --prefix-caching {"kind":"evict","block","ts_ns",
"cached_ns","freed_ns","ref_cnt"} per evicted cached block, {"kind":"kv","step","at","ts_ns","usage",
"free_blocks","total_blocks","running","waiting"} after each `add_request()` (at "add"),
step's `schedule()` (at "schedule") and `update_from_output()` (at "update"): vLLM's own counters
(`KVCacheManager.usage`, `Scheduler.make_stats()`), and {"kind":"request","req",
"prompt_tokens","preemptions","status"} per request at the end.
"""

import argparse
import ctypes
import json
import os
import random
import signal
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

CUDA_MEMCPY_H2D = 1
CUDA_MEMCPY_D2H = 2
TRUTH = []


class Dim3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint32), ("y", ctypes.c_uint32), ("z", ctypes.c_uint32)]

# A small OPT-shaped model config: ModelConfig needs one, nothing is loaded.
OPT_CONFIG = {
    "architectures": ["OPTForCausalLM"], "model_type": "opt",
    "activation_function": "relu", "bos_token_id": 2, "eos_token_id": 2,
    "pad_token_id": 1, "do_layer_norm_before": True, "ffn_dim": 3072,
    "hidden_size": 768, "max_position_embeddings": 2048,
    "num_attention_heads": 12, "num_hidden_layers": 12,
    "torch_dtype": "float16", "vocab_size": 50272, "word_embed_proj_dim": 768,
}


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def create_scheduler(model_dir, block_size=16, num_blocks=64, max_num_seqs=16,
                     max_num_batched_tokens=256, max_model_len=2048, prefix_caching=False):
    """Like vLLM's tests/v1/core/utils.py create_scheduler, with a local config."""
    import torch
    from vllm.config import (CacheConfig, DeviceConfig, ModelConfig, ParallelConfig,
                             SchedulerConfig, VllmConfig)
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(OPT_CONFIG, f)
    model_config = ModelConfig(model=model_dir, trust_remote_code=False, dtype="float16",
                               seed=42, skip_tokenizer_init=True, max_model_len=max_model_len)
    scheduler_config = SchedulerConfig(
        max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len, long_prefill_token_threshold=0,
        disable_chunked_mm_input=False, enable_chunked_prefill=True, async_scheduling=False,
        is_encoder_decoder=model_config.is_encoder_decoder)
    cache_config = CacheConfig(block_size=block_size, gpu_memory_utilization=0.9,
                               cache_dtype="auto",
                               enable_prefix_caching=prefix_caching)
    vllm_config = VllmConfig(scheduler_config=scheduler_config, model_config=model_config,
                             cache_config=cache_config, parallel_config=ParallelConfig(),
                             device_config=DeviceConfig(device="cpu"))
    kv_cache_config = KVCacheConfig(
        num_blocks=num_blocks, kv_cache_tensors=[],
        kv_cache_groups=[KVCacheGroupSpec(["layer"], FullAttentionSpec(
            block_size=block_size, num_kv_heads=1, head_size=1, dtype=torch.float32))])
    cache_config.num_gpu_blocks = num_blocks
    return Scheduler(vllm_config=vllm_config, kv_cache_config=kv_cache_config,
                     block_size=block_size, log_stats=True,
                     structured_output_manager=StructuredOutputManager(vllm_config))


class Requests:
    """Requests with random prompts, hashed per block like the engine does."""

    def __init__(self, block_size, rng, shared_prefixes=0):
        from vllm.utils.hashing import sha256
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
        init_none_hash(sha256)
        self.hasher = get_request_block_hasher(block_size, sha256)
        self.rng = rng
        # Prompts that begin with one of these (three blocks each) hit the prefix cache.
        self.prefixes = [[rng.randrange(3, 50000) for _ in range(3 * block_size)]
                         for _ in range(shared_prefixes)]

    def make(self, req_id):
        from vllm.sampling_params import SamplingParams
        from vllm.v1.request import Request
        prompt = [self.rng.randrange(3, 50000) for _ in range(self.rng.randint(40, 200))]
        if self.prefixes:
            prompt = self.rng.choice(self.prefixes) + prompt[:120]
        sp = SamplingParams(ignore_eos=True, max_tokens=self.rng.randint(8, 60))
        return Request(request_id=req_id, prompt_token_ids=prompt, sampling_params=sp,
                       pooling_params=None, block_hasher=self.hasher)


class FakeGpu:
    """The CUDA calls of one step on the fake runtime (its own soname, libcudart.so.12, so it
    does not collide with the CUDA 13 runtime a PyTorch wheel maps)."""

    def __init__(self, lib_dir):
        rt = ctypes.CDLL(os.path.join(lib_dir, "libcudart.so.12"), mode=os.RTLD_NOW)
        u64, pu64, vp = ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64), ctypes.c_void_p
        for name, argtypes in {
            "cudaStreamCreateWithFlags": [pu64, ctypes.c_uint32],
            "cudaEventCreateWithFlags": [pu64, ctypes.c_uint32],
            "cudaMemcpyAsync": [vp, vp, ctypes.c_size_t, ctypes.c_int, u64],
            "cudaEventRecordWithFlags": [u64, u64, ctypes.c_uint32],
            "cudaEventSynchronize": [u64],
            "cudaMalloc": [ctypes.POINTER(vp), ctypes.c_size_t],
            "cudaLaunchKernel": [vp, Dim3, Dim3, ctypes.POINTER(vp), ctypes.c_size_t, u64],
        }.items():
            getattr(rt, name).argtypes = argtypes
            getattr(rt, name).restype = ctypes.c_int
        self.rt = rt
        stream = ctypes.c_uint64(0)
        rt.cudaStreamCreateWithFlags(ctypes.byref(stream), 1)
        self.stream = stream.value
        self.events = []
        for _ in range(2):
            e = ctypes.c_uint64(0)
            rt.cudaEventCreateWithFlags(ctypes.byref(e), 0)
            self.events.append(e.value)
        self.host = ctypes.create_string_buffer(4096)
        self.out = ctypes.create_string_buffer(64)
        self.dev = ctypes.c_void_p(0)
        rt.cudaMalloc(ctypes.byref(self.dev), 4096)

    def step(self, i):
        self.rt.cudaMemcpyAsync(self.dev, self.host, 4096, CUDA_MEMCPY_H2D, self.stream)
        # The forward pass: a 500 µs kernel on the simulated GPU (grid.x is its duration).
        self.rt.cudaLaunchKernel(ctypes.c_void_p(0x1000), Dim3(500, 1, 1), Dim3(128, 1, 1),
                                 None, 0, self.stream)
        # The sampled tokens back to the host.
        self.rt.cudaMemcpyAsync(self.out, self.dev, 64, CUDA_MEMCPY_D2H, self.stream)
        self.rt.cudaEventRecordWithFlags(self.events[i % 2], self.stream, 0)
        if i > 0:
            self.rt.cudaEventSynchronize(self.events[(i - 1) % 2])


def record_blocks():
    """The test target's own record of every prefix-cache eviction (BlockPool methods
    wrapped here, in the test target only; ProfileMate reads the pool from outside): the
    block, when it was cached (its hash set), when its last user freed it, when it was
    evicted."""
    from vllm.v1.core.block_pool import BlockPool
    cached_at, freed_at = {}, {}
    insert, free, evict = (BlockPool._insert_block_hash, BlockPool.free_blocks,
                           BlockPool._maybe_evict_cached_block)

    def _insert_block_hash(self, key, block, num_tokens):
        before = block.block_hash
        insert(self, key, block, num_tokens)
        if before is None and block.block_hash is not None:
            cached_at[block.block_id] = time.monotonic_ns()

    def free_blocks(self, ordered_blocks):
        blocks = list(ordered_blocks)
        free(self, blocks)
        now = time.monotonic_ns()
        for b in blocks:
            if b.ref_cnt == 0:
                freed_at[b.block_id] = now

    def _maybe_evict_cached_block(self, block):
        evicted = evict(self, block)
        if evicted:
            now = time.monotonic_ns()
            TRUTH.append({"kind": "evict", "block": block.block_id, "ts_ns": now,
                          "cached_ns": cached_at.pop(block.block_id, None),
                          "freed_ns": freed_at.get(block.block_id),
                          "ref_cnt": block.ref_cnt})
        return evicted

    BlockPool._insert_block_hash = _insert_block_hash
    BlockPool.free_blocks = free_blocks
    BlockPool._maybe_evict_cached_block = _maybe_evict_cached_block


def record_kv(scheduler, step, at):
    """vLLM's own KV cache and queue counters, as its stats logger reads them."""
    pool = scheduler.kv_cache_manager.block_pool
    if at == "update":
        stats = scheduler.make_stats()
        usage, running, waiting = (stats.kv_cache_usage, stats.num_running_reqs,
                                   stats.num_waiting_reqs)
    else:
        usage = scheduler.get_kv_cache_usage()
        running, waiting = scheduler.get_request_counts()
    TRUTH.append({"kind": "kv", "step": step, "at": at, "ts_ns": time.monotonic_ns(),
                  "usage": usage, "free_blocks": pool.get_num_free_blocks(),
                  "total_blocks": pool.num_gpu_blocks, "running": running,
                  "waiting": waiting})


def schedule(scheduler, step):
    so = scheduler.schedule()
    TRUTH.append({
        "kind": "batch", "step": step, "ts_ns": time.monotonic_ns(),
        "num_reqs": len(so.num_scheduled_tokens),
        "num_tokens": so.total_num_scheduled_tokens,
        "new_reqs": len(so.scheduled_new_reqs),
        "cached_reqs": len(so.scheduled_cached_reqs.req_ids),
        "preempted": sorted(so.preempted_req_ids or []),
    })
    record_kv(scheduler, step, "schedule")
    return so


def update(scheduler, so, rng, step):
    from vllm.v1.outputs import ModelRunnerOutput
    ids = list(so.num_scheduled_tokens)
    sampled = []
    for rid in ids:
        r = scheduler.requests.get(rid)
        # One token per request that finished its (re)prefill; none for a prefill chunk.
        sampled.append([] if r is None or r.is_prefill_chunk else [rng.randrange(3, 50000)])
    out = ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                            sampled_token_ids=sampled)
    scheduler.update_from_output(so, out)
    record_kv(scheduler, step, "update")


def plain_loop(scheduler, requests, steps, rng, all_requests, hold=0):
    """No engine class, no CUDA: the model runs elsewhere (the workers of TP>1). `hold`: keep
    that many requests (one arrives for each that finishes) instead of one new a step."""
    for step in range(steps):
        if not hold or len(scheduler.requests) < hold:
            req = requests.make(f"r{step}")
            all_requests[req.request_id] = req
            scheduler.add_request(req)
        record_kv(scheduler, step, "add")
        so = schedule(scheduler, step)
        time.sleep(0.0005)  # the workers' forward pass
        update(scheduler, so, rng, step)
        time.sleep(0.002)  # the engine's idle wait for input


class GPUModelRunner:
    def __init__(self, gpu):
        self.gpu = gpu
        self.steps = 0

    def execute_model(self, scheduler_output):
        """The step's CUDA calls, made with the step's SchedulerOutput as the argument."""
        self.gpu.step(self.steps)
        self.steps += 1


class EngineCoreProc:
    def __init__(self, scheduler, model_runner, requests, steps, rng, step_sleep=0.002):
        self.step_sleep = step_sleep
        self.scheduler = scheduler
        self.model_runner = model_runner
        self.requests = requests
        self.steps = steps
        self.rng = rng
        self.all_requests = {}

    def run_busy_loop(self):
        for step in range(self.steps):
            req = self.requests.make(f"r{step}")
            self.all_requests[req.request_id] = req
            self.scheduler.add_request(req)
            record_kv(self.scheduler, step, "add")
            self.step(step)

    def step(self, step):
        so = schedule(self.scheduler, step)
        self.model_runner.execute_model(so)
        update(self.scheduler, so, self.rng, step)
        time.sleep(self.step_sleep)  # the engine's idle wait for input


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lib-dir")
    p.add_argument("--plain-loop", action="store_true",
                   help="no engine-loop frame and no fake CUDA runtime")
    p.add_argument("--truth", required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-on-sigusr1", action="store_true")
    p.add_argument("--hold", type=int, default=0,
                   help="keep this many requests in the scheduler (added before the first "
                        "step, then one for each that finishes) instead of one new request "
                        "a step: the small KV cache keeps nearly all of them waiting, a "
                        "production queue's shape")
    p.add_argument("--prefix-caching", action="store_true",
                   help="enable vLLM's prefix caching, prompts sharing 6 prefixes, and record "
                        "every eviction in the truth file (kind evict)")
    p.add_argument("--step-sleep-ms", type=float, default=2.0,
                   help="the engine loop's idle wait after each step")
    a = p.parse_args()
    if not a.plain_loop and not a.lib_dir:
        p.error("--lib-dir is needed unless --plain-loop")
    go = False

    def on_go(_signum, _frame):
        nonlocal go
        go = True

    signal.signal(signal.SIGUSR1, on_go)
    rng = random.Random(a.seed)
    if a.prefix_caching:
        record_blocks()
    scheduler = create_scheduler(os.path.join(os.path.dirname(a.truth), "model"),
                                 prefix_caching=a.prefix_caching)
    requests = Requests(16, rng, shared_prefixes=6 if a.prefix_caching else 0)
    all_requests = {}
    if not a.plain_loop:
        engine = EngineCoreProc(scheduler, GPUModelRunner(FakeGpu(a.lib_dir)), requests,
                                a.steps, rng, step_sleep=a.step_sleep_ms / 1e3)
        all_requests = engine.all_requests
    for i in range(a.hold):
        req = requests.make(f"b{i}")
        all_requests[req.request_id] = req
        scheduler.add_request(req)
    say(f"pid={os.getpid()} ready")
    deadline = time.monotonic() + 60
    while a.start_on_sigusr1 and not go and time.monotonic() < deadline:
        time.sleep(0.01)
    say(f"pid={os.getpid()} start")
    if a.plain_loop:
        plain_loop(scheduler, requests, a.steps, rng, all_requests, a.hold)
    else:
        engine.run_busy_loop()
    time.sleep(0.3)  # a last poll sees the final state
    with open(a.truth, "w") as f:
        for t in TRUTH:
            f.write(json.dumps(t) + "\n")
        for rid, r in all_requests.items():
            f.write(json.dumps({"kind": "request", "req": rid,
                                "prompt_tokens": r.num_prompt_tokens,
                                "preemptions": r.num_preemptions,
                                "status": r.status.name}) + "\n")
    say(f"done steps={a.steps}")


if __name__ == "__main__":
    main()
