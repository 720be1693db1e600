"""vllm/v1/core/sched/scheduler.py: the scheduler's two per-step operations, each spending
its CPU budget, over real-shaped state: `requests`, `running`, `waiting`, a KV cache manager
whose block pool runs out (running requests get preempted), and a `SchedulerOutput` per step.

Workload (deterministic): one request arrives per step (prompt 40-200 tokens, 8-60 output
tokens, every 5th with one multimodal input). Running requests are scheduled first, then
waiting ones, within a budget of `max_num_scheduled_tokens` tokens and `max_num_seqs`
requests; long prompts are chunked. When a running request's blocks do not fit, the last
running request is preempted (blocks freed, back to the front of the queue) and nothing
waiting is admitted in that step. Asynchronous scheduling is modelled as vLLM's
AsyncScheduler does (an output placeholder per in-flight step). Every decision is recorded
as ground truth.
"""

import os
import time

from vllm._fixture_cpu import TRUTH, burn, change_since, changing
from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput
from vllm.v1.core.sched.request_queue import FCFSRequestQueue
from vllm.v1.request import Request, RequestStatus


class Scheduler:
    def __init__(self, schedule_us, update_us, num_gpu_blocks=64, max_num_seqs=16,
                 max_num_scheduled_tokens=256, mm_every=5):
        self.schedule_us = schedule_us
        self.update_us = update_us
        self.num_scheduled = 0
        self.current_step = 0
        self.requests = {}
        self.running = []
        self.waiting = FCFSRequestQueue()
        self.max_num_running_reqs = max_num_seqs
        self.max_num_scheduled_tokens = max_num_scheduled_tokens
        self.kv_cache_manager = KVCacheManager(BlockPool(num_gpu_blocks))
        self.finished_req_ids = set()
        self.reset_preempted_req_ids = set()
        self.num_arrived = 0
        self.mm_every = mm_every
        self.num_preemptions_total = 0
        self.all_requests = []
        self.request_id_prefix = os.environ.get("VLLM_FIXTURE_REQUEST_ID_PREFIX", "req-")

    def _record(self):
        """Truth after every single change of the queues or the pool, so that a read between
        two changes of one operation still matches a recorded state. Each change calls
        changing() right before it: the change happened between that time and this one."""
        pool = self.kv_cache_manager.block_pool
        ts = time.monotonic_ns()
        TRUTH.append(("state", ts, change_since(ts), len(self.running), len(self.waiting),
                      len(self.requests), pool.free_block_queue.num_free_blocks,
                      pool.num_gpu_blocks))

    def _preempt_request(self, request, reason):
        TRUTH.append(("json", {"kind": "preempt", "req": request.request_id,
                               "ts_ns": time.monotonic_ns(), "reason": reason,
                               "tokens_lost": request.num_computed_tokens}))
        self.kv_cache_manager.free(request)
        self._record()
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_output_placeholders = 0
        request.num_preemptions += 1
        self.num_preemptions_total += 1
        changing()
        self.waiting.appendleft(request)
        self._record()
        self.reset_preempted_req_ids.add(request.request_id)

    def reset_prefix_cache(self, reset_running_requests=False):
        """Preempts every running request, then drops the prefix cache (a utility call)."""
        if reset_running_requests:
            while self.running:
                changing()
                victim = self.running.pop()
                self._record()
                self._preempt_request(victim, "cache_reset")
        ok = self.kv_cache_manager.reset_prefix_cache()
        self._record()
        return ok

    def _arrive(self):
        n = self.num_arrived
        self.num_arrived += 1
        mm = 1 if self.mm_every and n % self.mm_every == 4 else 0
        req = Request(f"{self.request_id_prefix}{n}", 40 + (n * 37) % 161, 8 + (n * 13) % 53, time.time(), mm)
        self.add_request(req)

    def add_request(self, req):
        """vLLM's entry point for a new request (the engine calls it per arrival)."""
        TRUTH.append(("json", {"kind": "add", "req": req.request_id,
                               "ts_ns": time.monotonic_ns()}))
        changing()
        self.requests[req.request_id] = req
        self._record()
        self.all_requests.append(req)
        changing()
        self.waiting.append(req)
        self._record()

    def schedule(self):
        """Schedules running requests, then waiting ones (CPU budget spent first)."""
        burn(self.schedule_us)
        self._arrive()
        budget = self.max_num_scheduled_tokens
        tokens = {}
        new_reqs, cached_ids, resumed, encoder = [], [], set(), {}
        preempted_now = False
        i = 0
        while i < len(self.running) and budget > 0:
            r = self.running[i]
            n = min(r.num_tokens + r.num_output_placeholders - r.num_computed_tokens, budget)
            if n <= 0:
                i += 1
                continue
            while self.kv_cache_manager.allocate_slots(r, n) is None:
                changing()
                victim = self.running.pop()
                self._record()
                self._preempt_request(victim, "kv_cache_exhausted")
                preempted_now = True
                if victim is r:
                    break
            self._record()
            if r.status != RequestStatus.RUNNING:
                break
            tokens[r.request_id] = n
            cached_ids.append(r.request_id)
            budget -= n
            i += 1
        while (not preempted_now and self.waiting and budget > 0
               and len(self.running) < self.max_num_running_reqs):
            r = self.waiting[0]
            n = min(r.num_tokens - r.num_computed_tokens, budget)
            if self.kv_cache_manager.allocate_slots(r, n) is None:
                break
            self._record()
            changing()
            self.waiting.popleft()
            self._record()
            if r.status == RequestStatus.PREEMPTED:
                resumed.add(r.request_id)
                cached_ids.append(r.request_id)
            else:
                new_reqs.append(NewRequestData(r.request_id, [0] * r.num_prompt_tokens, 0))
                if r.num_mm:
                    encoder[r.request_id] = list(range(r.num_mm))
            r.status = RequestStatus.RUNNING
            changing()
            self.running.append(r)
            self._record()
            tokens[r.request_id] = n
            budget -= n
        reqs = [self.requests[i] for i in cached_ids]
        # Truth: a request prefills when it is new, resumed, has no output yet, or computes
        # more than one token (ProfileMate's documented rule).
        prefill = [rid for rid in tokens
                   if rid not in cached_ids or rid in resumed
                   or not self.requests[rid]._output_token_ids or tokens[rid] > 1]
        out = SchedulerOutput(
            scheduled_new_reqs=new_reqs,
            scheduled_cached_reqs=CachedRequestData(
                req_ids=cached_ids,
                resumed_req_ids=resumed,
                new_token_ids=[[] for _ in reqs],
                num_computed_tokens=[r.num_computed_tokens for r in reqs],
                num_output_tokens=[len(r._output_token_ids) for r in reqs],
            ),
            num_scheduled_tokens=tokens,
            total_num_scheduled_tokens=sum(tokens.values()),
            scheduled_spec_decode_tokens={},
            scheduled_encoder_inputs=encoder,
            finished_req_ids=self.finished_req_ids,
            preempted_req_ids=self.reset_preempted_req_ids,
        )
        if os.environ.get("VLLM_FIXTURE_OTHER_VERSION") == "1":
            # Another vLLM version's layout: a field under a different name.
            out.cached_requests = vars(out).pop("scheduled_cached_reqs")
        pool = self.kv_cache_manager.block_pool
        TRUTH.append(("json", {
            "kind": "batch", "step": self.current_step, "ts_ns": time.monotonic_ns(),
            "num_reqs": len(tokens), "num_tokens": out.total_num_scheduled_tokens,
            "new_reqs": len(new_reqs), "cached_reqs": len(cached_ids),
            "resumed": sorted(resumed), "prefill_reqs": len(prefill),
            "decode_reqs": len(tokens) - len(prefill),
            "preempted": sorted(self.reset_preempted_req_ids),
            "finished": sorted(self.finished_req_ids), "encoder_inputs": len(encoder),
            "running": len(self.running), "waiting": len(self.waiting),
            "free_blocks": pool.free_block_queue.num_free_blocks,
        }))
        for rid, n in tokens.items():
            r = self.requests[rid]
            r.num_computed_tokens += n
            if r.num_computed_tokens >= r.num_tokens + r.num_output_placeholders:
                r.num_output_placeholders += 1
        self.finished_req_ids = set()
        self.reset_preempted_req_ids = set()
        self.current_step += 1
        self._record()
        self.num_scheduled += 1
        return out

    def update_from_output(self, scheduler_output, model_runner_output):
        """Appends the sampled tokens; finished requests free their blocks (CPU budget)."""
        burn(self.update_us)
        for req_id in scheduler_output.num_scheduled_tokens:
            r = self.requests.get(req_id)
            if r is None or r.status != RequestStatus.RUNNING or r.num_output_placeholders == 0:
                continue
            r.num_output_placeholders -= 1
            r._output_token_ids.append(0)
            if len(r._output_token_ids) >= r.max_tokens:
                r.status = RequestStatus.FINISHED_STOPPED
                changing()
                self.running.remove(r)
                self._record()
                self.kv_cache_manager.free(r)
                self._record()
                changing()
                del self.requests[req_id]
                self._record()
                self.finished_req_ids.add(req_id)
                TRUTH.append(("json", {"kind": "finish", "req": req_id,
                                       "ts_ns": time.monotonic_ns()}))
        self._record()
        return {"outputs": model_runner_output}
