"""vllm/v1/core/sched/scheduler.py: the scheduler's two per-step operations, each spending
its CPU budget, over real-shaped state: `requests`, `running`, `waiting`, and a KV cache
manager whose block pool runs out, so that running requests get preempted.

Workload (deterministic): one request arrives per step (prompt 40-200 tokens, 8-60 output
tokens); waiting requests are admitted while their prompt fits; each running request
decodes one token per step; when a running request's next block does not fit, the last
running request is preempted (its blocks freed, back to the front of the queue).
Every change of the state is recorded as ground truth.
"""

import time

from vllm._fixture_cpu import TRUTH, burn
from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.core.sched.request_queue import FCFSRequestQueue
from vllm.v1.request import Request, RequestStatus


class Scheduler:
    def __init__(self, schedule_us, update_us, num_gpu_blocks=64, max_num_seqs=16):
        self.schedule_us = schedule_us
        self.update_us = update_us
        self.num_scheduled = 0
        self.requests = {}
        self.running = []
        self.waiting = FCFSRequestQueue()
        self.max_num_running_reqs = max_num_seqs
        self.kv_cache_manager = KVCacheManager(BlockPool(num_gpu_blocks))
        self.num_arrived = 0

    def _record(self):
        pool = self.kv_cache_manager.block_pool
        TRUTH.append(("state", time.monotonic_ns(), len(self.running), len(self.waiting),
                      len(self.requests), pool.free_block_queue.num_free_blocks,
                      pool.num_gpu_blocks))

    def _preempt_request(self, request):
        self.running.remove(request)
        self.kv_cache_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.waiting.appendleft(request)

    def schedule(self):
        """Admits, decodes and preempts (CPU budget spent first)."""
        burn(self.schedule_us)
        n = self.num_arrived
        self.num_arrived += 1
        req = Request(f"req-{n}", 40 + (n * 37) % 161, 8 + (n * 13) % 53, time.time())
        self.requests[req.request_id] = req
        self.waiting.append(req)
        scheduled = {}
        for r in list(self.running):
            if r not in self.running:
                continue
            while self.kv_cache_manager.allocate_slots(r, 1) is None:
                victim = self.running[-1]
                self._preempt_request(victim)
                if victim is r:
                    break
            if r in self.running:
                scheduled[r.request_id] = 1
        while self.waiting and len(self.running) < self.max_num_running_reqs:
            r = self.waiting[0]
            tokens = r.num_prompt_tokens + len(r._output_token_ids)
            if self.kv_cache_manager.allocate_slots(r, tokens) is None:
                break
            self.waiting.popleft()
            r.status = RequestStatus.RUNNING
            self.running.append(r)
            scheduled[r.request_id] = tokens
        self._record()
        self.num_scheduled += 1
        return {"step": self.num_scheduled - 1, "num_scheduled_tokens": scheduled}

    def update_from_output(self, scheduler_output, model_runner_output):
        """Appends the sampled tokens; finished requests free their blocks (CPU budget)."""
        burn(self.update_us)
        for req_id, tokens in scheduler_output.get("num_scheduled_tokens", {}).items():
            r = self.requests.get(req_id)
            if r is None or r.status != RequestStatus.RUNNING:
                continue
            r.num_computed_tokens += tokens
            r._output_token_ids.append(0)
            if len(r._output_token_ids) >= r.max_tokens:
                r.status = RequestStatus.FINISHED_STOPPED
                self.running.remove(r)
                self.kv_cache_manager.free(r)
                del self.requests[req_id]
        self._record()
        return {"step": scheduler_output["step"], "outputs": model_runner_output}
