"""vllm/v1/worker/gpu/async_utils.py: the output of a step whose copy event is waited for
only when the engine asks for it (async scheduling: one step later)."""


class AsyncOutput:
    def __init__(self, model_runner_output, cuda=None, copy_event=0):
        self.model_runner_output = model_runner_output
        self.cuda = cuda
        self.copy_event = copy_event

    def get_output(self):
        """Blocks (off-CPU) until the step's copy event has completed on the GPU."""
        if self.cuda is not None:
            rc = self.cuda.cudaEventSynchronize(self.copy_event)
            assert rc == 0, f"cudaEventSynchronize: {rc}"
        return self.model_runner_output
