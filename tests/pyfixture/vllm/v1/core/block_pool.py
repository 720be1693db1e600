"""vllm/v1/core/block_pool.py: the GPU KV cache blocks. Block 0 is the null block and never
free, so usage = 1 - num_free_blocks / (num_gpu_blocks - 1), as vLLM computes it. Full blocks
of freed requests stay cached (prefix cache) and count as free; a new block is taken from the
uncached free ones first, else by evicting the oldest cached block."""

import time

from vllm._fixture_cpu import TRUTH, changing


class FreeKVCacheBlockQueue:
    def __init__(self, num_free_blocks):
        self.num_free_blocks = num_free_blocks


class BlockHashToBlockMap:
    def __init__(self):
        self._cache = {}


class BlockPool:
    def __init__(self, num_gpu_blocks):
        self.num_gpu_blocks = num_gpu_blocks
        self.free_block_queue = FreeKVCacheBlockQueue(num_gpu_blocks - 1)
        self.cached_block_hash_to_block = BlockHashToBlockMap()
        self._next_hash = 0

    def get_new_blocks(self, n):
        cache = self.cached_block_hash_to_block._cache
        uncached = self.free_block_queue.num_free_blocks - len(cache)
        if n > uncached:
            evict = n - uncached
            for key in list(cache)[:evict]:
                del cache[key]
            TRUTH.append(("json", {"kind": "evict", "ts_ns": time.monotonic_ns(), "blocks": evict}))
        changing()
        self.free_block_queue.num_free_blocks -= n
        return n

    def free_blocks(self, n, full):
        changing()
        self.free_block_queue.num_free_blocks += n
        for _ in range(full):
            self.cached_block_hash_to_block._cache[self._next_hash] = self._next_hash
            self._next_hash += 1

    def reset_prefix_cache(self):
        if self.free_block_queue.num_free_blocks != self.num_gpu_blocks - 1:
            return False
        self.cached_block_hash_to_block = BlockHashToBlockMap()
        TRUTH.append(("json", {"kind": "reset", "ts_ns": time.monotonic_ns()}))
        return True

    def get_usage(self):
        return 1.0 - self.free_block_queue.num_free_blocks / (self.num_gpu_blocks - 1)
