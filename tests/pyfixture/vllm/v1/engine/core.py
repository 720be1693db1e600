"""vllm/v1/engine/core.py: the engine core's busy loop. With a batch queue of 2 (async
scheduling) step k is scheduled and launched before step k-1's output is waited for."""

import collections
import time

from vllm._fixture_cpu import TRUTH, churn, set_step


class EngineCore:
    def __init__(self, scheduler, model_runner, batch_queue_size=2):
        self.scheduler = scheduler
        self.model_runner = model_runner
        self.batch_queue_size = batch_queue_size
        self.batch_queue = collections.deque()
        self.draining = False
        self.step_fn = self.step if batch_queue_size == 1 else self.step_with_batch_queue

    def step(self):
        """Synchronous step: schedule, run, wait for this step's output, update."""
        scheduler_output = self.scheduler.schedule()
        self.model_runner.execute_model(scheduler_output)
        model_output = self.model_runner.sample_tokens().get_output()
        return self.scheduler.update_from_output(scheduler_output, model_output)

    def step_with_batch_queue(self):
        """Async step: launch a new step, then finish the oldest queued one once the queue is
        full (or while draining)."""
        if not self.draining:
            scheduler_output = self.scheduler.schedule()
            self.model_runner.execute_model(scheduler_output)
            self.batch_queue.appendleft((scheduler_output, self.model_runner.sample_tokens()))
            if len(self.batch_queue) < self.batch_queue_size:
                return None
        scheduler_output, async_output = self.batch_queue.pop()
        model_output = async_output.get_output()
        return self.scheduler.update_from_output(scheduler_output, model_output)


class EngineCoreProc(EngineCore):
    def __init__(self, scheduler, model_runner, output_queue, batch_queue_size=2,
                 idle_us=0, max_steps=None, gc_every=0, gc_cycles=20000, reset_at_step=None):
        super().__init__(scheduler, model_runner, batch_queue_size)
        self.output_queue = output_queue
        self.idle_us = idle_us
        self.max_steps = max_steps
        self.gc_every = gc_every
        self.gc_cycles = gc_cycles
        self.gc_generation = 0
        self.step_index = 0
        self.stopping = False
        self.reset_at_step = reset_at_step

    def run_busy_loop(self):
        """Waits for input and steps until max_steps (or a stop request), then drains the
        batch queue."""
        while not self.stopping and (self.max_steps is None
                                     or self.scheduler.num_scheduled < self.max_steps):
            self._process_input_queue()
            if self.scheduler.current_step == self.reset_at_step:
                self.reset_prefix_cache(reset_running_requests=True)
            self._process_engine_step()
            if self.gc_every and self.scheduler.num_scheduled % self.gc_every == 0:
                churn(self.gc_cycles, self.gc_generation)
                self.gc_generation = (self.gc_generation + 1) % 3
        self.draining = True
        while self.batch_queue:
            self._process_engine_step()

    def reset_prefix_cache(self, reset_running_requests=False):
        """A utility call from the API server (RLHF weight updates, benchmarks)."""
        return self.scheduler.reset_prefix_cache(reset_running_requests)

    def _process_input_queue(self):
        """Idle wait for new requests: sleeps, no CPU."""
        if self.idle_us > 0:
            time.sleep(self.idle_us / 1e6)

    def _process_engine_step(self):
        """One call of the step function, recorded as a step; its output goes to the API
        server's output handler."""
        step = self.step_index
        set_step(step)
        start = time.monotonic_ns()
        outputs = self.step_fn()
        TRUTH.append(("step", step, start, time.monotonic_ns()))
        self.step_index += 1
        if outputs is not None:
            self.output_queue.put_nowait((step, outputs))
