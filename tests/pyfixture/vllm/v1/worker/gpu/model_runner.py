"""vllm/v1/worker/gpu/model_runner.py: the GPU model runner (model runner v2). With a CUDA
runtime it copies inputs H2D, replays one captured graph and records a copy event per
step; without one it only spends the CPU budgets."""

from vllm._fixture_cpu import burn
from vllm.v1.worker.gpu.async_utils import AsyncOutput
from vllm.v1.worker.gpu.cudagraph_utils import CudaGraphManager

FULL = "FULL"


class GPUModelRunner:
    def __init__(self, prepare_us, forward_us, sample_us, gpu=None):
        """`gpu`: the fixture's GPU backend (fake CUDA runtime or PyTorch), None for none."""
        self.prepare_us = prepare_us
        self.sample_us = sample_us
        self.gpu = gpu
        self.num_steps = 0
        self.cudagraph_manager = CudaGraphManager(forward_us, gpu)

    def capture_model(self, num_kernels=3, kernel_us=200):
        """Captures the one full graph that every step replays."""
        graph = self.gpu.capture(num_kernels, kernel_us) if self.gpu is not None else 0
        self.cudagraph_manager.graphs[FULL] = graph

    def prepare_inputs(self, scheduler_output):
        """Builds the input batch (CPU budget) and copies it to the GPU."""
        burn(self.prepare_us)
        if self.gpu is not None:
            self.gpu.copy_inputs()
        return scheduler_output

    def execute_model(self, scheduler_output):
        """Prepares inputs and replays the graph; sampling is a separate call (sample_tokens)."""
        if self.gpu is not None:
            self.gpu.mark(f"step {scheduler_output['step']}")
        input_batch = self.prepare_inputs(scheduler_output)
        hidden_states = self.cudagraph_manager.run_fullgraph(FULL)
        self.execute_model_state = (input_batch, hidden_states)

    def sample(self, hidden_states, input_batch):
        """Samples the next tokens (CPU budget)."""
        burn(self.sample_us)
        return [input_batch["step"]]

    def sample_tokens(self, grammar_output=None):
        """Samples, then records this step's copy event; the engine waits for it later."""
        input_batch, hidden_states = self.execute_model_state
        sampled = self.sample(hidden_states, input_batch)
        event = self.gpu.record(self.num_steps) if self.gpu is not None else None
        self.num_steps += 1
        return AsyncOutput(sampled, self.gpu, event)

    def shutdown(self):
        if self.gpu is not None:
            self.gpu.shutdown()
