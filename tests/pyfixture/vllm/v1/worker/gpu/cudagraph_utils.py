"""vllm/v1/worker/gpu/cudagraph_utils.py: replay of the captured full CUDA graph, which
is the model's forward pass."""

from vllm._fixture_cpu import burn


class CudaGraphManager:
    def __init__(self, forward_us, gpu=None):
        self.forward_us = forward_us
        self.gpu = gpu
        self.graphs = {}

    def run_fullgraph(self, desc):
        """Prepares the replay (CPU budget), then launches the graph."""
        burn(self.forward_us)
        if self.gpu is not None:
            self.gpu.replay(self.graphs[desc])
        return desc
