"""vllm/v1/core/sched/request_queue.py: the FCFS waiting queue (a deque)."""

import collections


class FCFSRequestQueue(collections.deque):
    pass
