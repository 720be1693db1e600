"""vllm/v1/core/kv_cache_manager.py: allocates a request's blocks (16 tokens each) from the
block pool; allocate_slots returns None when they do not fit."""

BLOCK_SIZE = 16


class KVCacheManager:
    def __init__(self, block_pool):
        self.block_pool = block_pool
        self.req_blocks = {}

    def allocate_slots(self, request, num_tokens):
        have = self.req_blocks.get(request.request_id, 0)
        need = -(-(request.num_computed_tokens + num_tokens) // BLOCK_SIZE) - have
        if need > self.block_pool.free_block_queue.num_free_blocks:
            return None
        if need > 0:
            self.block_pool.get_new_blocks(need)
            self.req_blocks[request.request_id] = have + need
        return need

    def free(self, request):
        n = self.req_blocks.pop(request.request_id, 0)
        full = min(n, request.num_computed_tokens // BLOCK_SIZE)
        self.block_pool.free_blocks(n, full)

    def reset_prefix_cache(self):
        return self.block_pool.reset_prefix_cache()

    @property
    def usage(self):
        return self.block_pool.get_usage()
