"""vllm/v1/worker/gpu/async_utils.py: the output of a step whose copy event is waited for
only when the engine asks for it (async scheduling: one step later)."""


class AsyncOutput:
    def __init__(self, model_runner_output, gpu=None, copy_event=None):
        self.model_runner_output = model_runner_output
        self.gpu = gpu
        self.copy_event = copy_event

    def get_output(self):
        """Blocks (off-CPU) until the step's copy event has completed on the GPU."""
        if self.gpu is not None:
            self.gpu.wait(self.copy_event)
        return self.model_runner_output
