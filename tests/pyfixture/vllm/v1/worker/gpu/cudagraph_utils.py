"""vllm/v1/worker/gpu/cudagraph_utils.py: replay of the captured full CUDA graph, which
is the model's forward pass."""

from vllm._fixture_cpu import burn


class CudaGraphManager:
    def __init__(self, forward_us, cuda=None, stream=0):
        self.forward_us = forward_us
        self.cuda = cuda
        self.stream = stream
        self.graphs = {}

    def run_fullgraph(self, desc):
        """Prepares the replay (CPU budget), then launches the graph."""
        burn(self.forward_us)
        if self.cuda is not None:
            rc = self.cuda.cudaGraphLaunch(self.graphs[desc], self.stream)
            assert rc == 0, f"cudaGraphLaunch: {rc}"
        return desc
