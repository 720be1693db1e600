"""vllm/v1/core/sched/scheduler.py: the scheduler's two per-step operations, each spending
its CPU budget."""

from vllm._fixture_cpu import burn


class Scheduler:
    def __init__(self, schedule_us, update_us):
        self.schedule_us = schedule_us
        self.update_us = update_us
        self.num_scheduled = 0

    def schedule(self):
        """Picks the requests of the next step (CPU only)."""
        burn(self.schedule_us)
        self.num_scheduled += 1
        return {"step": self.num_scheduled - 1}

    def update_from_output(self, scheduler_output, model_runner_output):
        """Appends the sampled tokens to their requests (CPU only)."""
        burn(self.update_us)
        return {"step": scheduler_output["step"], "outputs": model_runner_output}
