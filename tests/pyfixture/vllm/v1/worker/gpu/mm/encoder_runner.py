"""vllm/v1/worker/gpu/mm/encoder_runner.py: the multimodal encoder: uploads the inputs,
spends its CPU budget, then launches the encoder kernel."""

from vllm._fixture_cpu import burn


class EncoderRunner:
    def __init__(self, encoder_us, kernel_us, gpu=None):
        self.encoder_us = encoder_us
        self.kernel_us = kernel_us
        self.gpu = gpu

    def execute_mm_encoder(self, scheduled_encoder_inputs):
        if self.gpu is not None:
            self.gpu.copy_inputs()
        burn(self.encoder_us)
        if self.gpu is not None:
            self.gpu.encode(self.kernel_us)
        return len(scheduled_encoder_inputs)
