"""vllm/v1/engine/output_processor.py: detokenization of the engine's outputs, done by the
API server's output handler (its own thread in this stand-in)."""

from vllm._fixture_cpu import burn


class OutputProcessor:
    def __init__(self, output_us):
        self.output_us = output_us

    def process_outputs(self, engine_core_outputs):
        """Detokenizes one step's outputs (CPU budget)."""
        burn(self.output_us)
        return engine_core_outputs
