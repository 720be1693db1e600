"""vllm/v1/worker/gpu/cudagraph_utils.py: captured CUDA graphs keyed by batch descriptor:
FULL graphs for uniform decode batches (padded to 1, 2, 4, 8 or 16 requests) and one
piecewise graph standing for the compiled model of every other batch."""

import enum
from dataclasses import dataclass

from vllm._fixture_cpu import burn

DECODE_BUCKETS = (1, 2, 4, 8, 16)


class CUDAGraphMode(enum.Enum):
    NONE = 0
    PIECEWISE = 1
    FULL = 2


@dataclass(frozen=True)
class BatchExecutionDescriptor:
    cg_mode: CUDAGraphMode
    num_tokens: int
    num_reqs: int = None
    uniform_token_count: int = None
    num_active_loras: int = 0


class CudaGraphManager:
    def __init__(self, forward_us, gpu=None):
        self.forward_us = forward_us
        self.gpu = gpu
        self.graphs = {}
        self.pw_graph = None

    def capture(self, num_kernels, kernel_us):
        """Captures the FULL decode graphs, then the piecewise one."""
        for n in DECODE_BUCKETS:
            desc = BatchExecutionDescriptor(CUDAGraphMode.FULL, n, n, 1)
            self.graphs[desc] = self.gpu.capture(num_kernels, kernel_us) if self.gpu else 0
        self.pw_graph = self.gpu.capture(num_kernels, kernel_us) if self.gpu else 0

    def dispatch(self, num_reqs, uniform_decode):
        """The captured descriptor that fits the batch (the key object itself, as vLLM's
        dispatcher returns one of its candidates)."""
        if uniform_decode:
            for desc in self.graphs:
                if desc.num_reqs >= num_reqs:
                    return desc
        return None

    def run_fullgraph(self, desc):
        """Prepares the replay (CPU budget), then launches the graph."""
        burn(self.forward_us)
        if self.gpu is not None:
            self.gpu.replay(self.graphs[desc])
        return desc

    def run_pw_graph(self, model, model_inputs):
        """The compiled model's piecewise graph (CPU budget, then the replay)."""
        burn(self.forward_us)
        if self.gpu is not None:
            self.gpu.replay(self.pw_graph)
        return model_inputs
