"""vllm/v1/worker/gpu/model_runner.py: the GPU model runner (model runner v2). With a CUDA
runtime it copies inputs H2D, replays one captured graph and records a copy event per
step; without one it only spends the CPU budgets."""

import ctypes

from vllm._fixture_cpu import burn
from vllm.v1.worker.gpu.async_utils import AsyncOutput
from vllm.v1.worker.gpu.cudagraph_utils import CudaGraphManager

CUDA_MEMCPY_H2D = 1
FULL = "FULL"


def _check(what, rc):
    assert rc == 0, f"{what}: {rc}"


class GPUModelRunner:
    def __init__(self, prepare_us, forward_us, sample_us, cuda=None, input_bytes=4096):
        self.prepare_us = prepare_us
        self.sample_us = sample_us
        self.cuda = cuda
        self.input_bytes = input_bytes
        self.num_steps = 0
        self.stream = 0
        if cuda is not None:
            stream = ctypes.c_uint64(0)
            _check("cudaStreamCreateWithFlags", cuda.cudaStreamCreateWithFlags(ctypes.byref(stream), 1))
            self.stream = stream.value
            self.events = []
            for _ in range(2):
                ev = ctypes.c_uint64(0)
                _check("cudaEventCreateWithFlags", cuda.cudaEventCreateWithFlags(ctypes.byref(ev), 0))
                self.events.append(ev.value)
            self.host_input = ctypes.create_string_buffer(input_bytes)
            self.device_input = ctypes.c_void_p(0)
            _check("cudaMalloc", cuda.cudaMalloc(ctypes.byref(self.device_input), input_bytes))
        self.cudagraph_manager = CudaGraphManager(forward_us, cuda, self.stream)

    def capture_model(self, num_kernels=3, kernel_us=200):
        """Captures the one full graph that every step replays (kernel duration = grid.x µs
        on the fake GPU)."""
        cuda = self.cuda
        if cuda is None:
            self.cudagraph_manager.graphs[FULL] = 0
            return
        dim3 = cuda.cudaLaunchKernel.argtypes[1]  # the dim3 structure the loader declared
        grid, block = dim3(kernel_us, 1, 1), dim3(128, 1, 1)
        graph, exe = ctypes.c_uint64(0), ctypes.c_uint64(0)
        _check("cudaStreamBeginCapture", cuda.cudaStreamBeginCapture(self.stream, 0))
        func = ctypes.c_void_p(0x1000)
        for _ in range(num_kernels):
            _check("cudaLaunchKernel", cuda.cudaLaunchKernel(func, grid, block, None, 0, self.stream))
        _check("cudaStreamEndCapture", cuda.cudaStreamEndCapture(self.stream, ctypes.byref(graph)))
        _check("cudaGraphInstantiateWithFlags",
               cuda.cudaGraphInstantiateWithFlags(ctypes.byref(exe), graph.value, 0))
        self.cudagraph_manager.graphs[FULL] = exe.value

    def prepare_inputs(self, scheduler_output):
        """Builds the input batch (CPU budget) and copies it to the GPU."""
        burn(self.prepare_us)
        if self.cuda is not None:
            _check("cudaMemcpyAsync", self.cuda.cudaMemcpyAsync(
                self.device_input, self.host_input, self.input_bytes, CUDA_MEMCPY_H2D, self.stream))
        return scheduler_output

    def execute_model(self, scheduler_output):
        """Prepares inputs and replays the graph; sampling is a separate call (sample_tokens)."""
        if self.cuda is not None:  # tags the fake GPU's exec lines with the step
            self.cuda.fakeCudaMark(f"step {scheduler_output['step']}".encode())
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
        event = 0
        if self.cuda is not None:
            event = self.events[self.num_steps % 2]
            _check("cudaEventRecord", self.cuda.cudaEventRecord(event, self.stream))
        self.num_steps += 1
        return AsyncOutput(sampled, self.cuda, event)

    def shutdown(self):
        if self.cuda is not None:
            _check("cudaStreamSynchronize", self.cuda.cudaStreamSynchronize(self.stream))
            _check("cudaFree", self.cuda.cudaFree(self.device_input))
