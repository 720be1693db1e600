"""vllm/v1/core/block_pool.py: the GPU KV cache blocks. Block 0 is the null block and never
free, so usage = 1 - num_free_blocks / (num_gpu_blocks - 1), as vLLM computes it. Full blocks
of freed requests stay cached (prefix cache) and count as free; a new block is taken from the
uncached free ones first, else by evicting the oldest cached block. Cached blocks are
`KVCacheBlock` objects of vLLM's shape (a `__slots__` dataclass with `block_id`, `ref_cnt`,
`_block_hash`) under bytes keys, as in vLLM 0.26-0.33."""

import dataclasses
import time
from collections import deque

from vllm._fixture_cpu import TRUTH, changing


class FreeKVCacheBlockQueue:
    def __init__(self, num_free_blocks):
        self.num_free_blocks = num_free_blocks


@dataclasses.dataclass(slots=True)
class KVCacheBlock:
    block_id: int
    ref_cnt: int = 0
    _block_hash: bytes | None = None
    is_null: bool = False


class BlockHashToBlockMap:
    def __init__(self):
        self._cache = {}


class BlockPool:
    def __init__(self, num_gpu_blocks):
        self.num_gpu_blocks = num_gpu_blocks
        self.free_block_queue = FreeKVCacheBlockQueue(num_gpu_blocks - 1)
        self.cached_block_hash_to_block = BlockHashToBlockMap()
        self._next_hash = 0
        self.blocks = [KVCacheBlock(i) for i in range(num_gpu_blocks)]
        # Blocks not in the prefix cache, to cache next (block 0 is the null block).
        self._uncached = deque(range(1, num_gpu_blocks))

    def get_new_blocks(self, n):
        cache = self.cached_block_hash_to_block._cache
        uncached = self.free_block_queue.num_free_blocks - len(cache)
        if n > uncached:
            evict = n - uncached
            ids = []
            for key in list(cache)[:evict]:
                block = cache.pop(key)
                block._block_hash = None
                self._uncached.append(block.block_id)
                ids.append(block.block_id)
            TRUTH.append(("json", {"kind": "evict", "ts_ns": time.monotonic_ns(),
                                   "blocks": evict, "block_ids": ids}))
        changing()
        self.free_block_queue.num_free_blocks -= n
        return n

    def free_blocks(self, n, full):
        changing()
        self.free_block_queue.num_free_blocks += n
        for _ in range(full):
            if not self._uncached:
                break
            block = self.blocks[self._uncached.popleft()]
            block._block_hash = self._next_hash.to_bytes(32, "big") + bytes(4)
            self.cached_block_hash_to_block._cache[block._block_hash] = block
            self._next_hash += 1

    def reset_prefix_cache(self):
        if self.free_block_queue.num_free_blocks != self.num_gpu_blocks - 1:
            return False
        self.cached_block_hash_to_block = BlockHashToBlockMap()
        for block in self.blocks:
            block._block_hash = None
        self._uncached = deque(range(1, self.num_gpu_blocks))
        TRUTH.append(("json", {"kind": "reset", "ts_ns": time.monotonic_ns()}))
        return True

    def get_usage(self):
        return 1.0 - self.free_block_queue.num_free_blocks / (self.num_gpu_blocks - 1)
