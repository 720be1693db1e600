"""Stand-in for the vLLM package, for profiling tests: the modules below carry vLLM's real
module paths and class/function names, so profiles of this process read like profiles of a
vLLM server, while every operation spends a known CPU budget (see vllm._fixture_cpu)."""
