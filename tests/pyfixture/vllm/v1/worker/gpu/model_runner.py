"""vllm/v1/worker/gpu/model_runner.py: the GPU model runner (model runner v2). Per step: the
encoder for scheduled multimodal inputs, input preparation (H2D copy), then the forward: a
FULL graph replay for uniform decode batches, else the piecewise graph; sampling records a
copy event that the engine waits for later. Without a GPU only the CPU budgets are spent."""

import time

from vllm._fixture_cpu import TRUTH, burn
from vllm.v1.worker.gpu.async_utils import AsyncOutput
from vllm.v1.worker.gpu.cudagraph_utils import CudaGraphManager
from vllm.v1.worker.gpu.mm.encoder_runner import EncoderRunner


class GPUModelRunner:
    def __init__(self, prepare_us, forward_us, sample_us, gpu=None, encoder_us=600):
        """`gpu`: the fixture's GPU backend (fake CUDA runtime or PyTorch), None for none."""
        self.prepare_us = prepare_us
        self.sample_us = sample_us
        self.gpu = gpu
        self.num_steps = 0
        self.cudagraph_manager = CudaGraphManager(forward_us, gpu)
        self.encoder_runner = EncoderRunner(encoder_us, 100, gpu)
        self.execute_model_state = None

    def capture_model(self, num_kernels=3, kernel_us=200):
        self.cudagraph_manager.capture(num_kernels, kernel_us)

    def model(self, **inputs):
        return inputs

    def prepare_inputs(self, scheduler_output):
        """Builds the input batch (CPU budget) and copies it to the GPU."""
        burn(self.prepare_us)
        if self.gpu is not None:
            self.gpu.copy_inputs()
        return scheduler_output

    def execute_model(self, scheduler_output):
        """Encoder, inputs, forward; sampling is a separate call (sample_tokens)."""
        if scheduler_output.total_num_scheduled_tokens == 0:
            self.execute_model_state = None
            return None
        if self.gpu is not None:
            self.gpu.mark(f"step {self.num_steps}")
        if scheduler_output.scheduled_encoder_inputs:
            self.encoder_runner.execute_mm_encoder(scheduler_output.scheduled_encoder_inputs)
        input_batch = self.prepare_inputs(scheduler_output)
        num_reqs = len(scheduler_output.num_scheduled_tokens)
        uniform = all(n == 1 for n in scheduler_output.num_scheduled_tokens.values())
        desc = self.cudagraph_manager.dispatch(num_reqs, uniform)
        TRUTH.append(("json", {
            "kind": "forward", "ts_ns": time.monotonic_ns(),
            "num_tokens": scheduler_output.total_num_scheduled_tokens,
            "mode": "FULL" if desc else "PIECEWISE",
            "desc_tokens": desc.num_tokens if desc else None,
        }))
        if desc is not None:
            hidden_states = self.cudagraph_manager.run_fullgraph(desc)
        else:
            hidden_states = self.cudagraph_manager.run_pw_graph(self.model, {"batch": num_reqs})
        self.execute_model_state = (input_batch, hidden_states)
        return None

    def sample(self, hidden_states, input_batch):
        """Samples the next tokens (CPU budget)."""
        burn(self.sample_us)
        return list(input_batch.num_scheduled_tokens)

    def sample_tokens(self, grammar_output=None):
        """Samples, then records this step's copy event; the engine waits for it later."""
        if self.execute_model_state is None:
            return AsyncOutput([], None, None)
        input_batch, hidden_states = self.execute_model_state
        sampled = self.sample(hidden_states, input_batch)
        event = self.gpu.record(self.num_steps) if self.gpu is not None else None
        self.num_steps += 1
        return AsyncOutput(sampled, self.gpu, event)

    def shutdown(self):
        if self.gpu is not None:
            self.gpu.shutdown()
