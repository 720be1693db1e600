"""vllm/v1/core/block_pool.py: the GPU KV cache blocks. Block 0 is the null block and never
free, so usage = 1 - num_free_blocks / (num_gpu_blocks - 1), as vLLM computes it."""


class FreeKVCacheBlockQueue:
    def __init__(self, num_free_blocks):
        self.num_free_blocks = num_free_blocks


class BlockPool:
    def __init__(self, num_gpu_blocks):
        self.num_gpu_blocks = num_gpu_blocks
        self.free_block_queue = FreeKVCacheBlockQueue(num_gpu_blocks - 1)

    def get_new_blocks(self, n):
        self.free_block_queue.num_free_blocks -= n
        return n

    def free_blocks(self, n):
        self.free_block_queue.num_free_blocks += n

    def get_usage(self):
        return 1.0 - self.free_block_queue.num_free_blocks / (self.num_gpu_blocks - 1)
