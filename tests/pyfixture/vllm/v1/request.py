"""vllm/v1/request.py: a request and its status (an IntEnum, as in vLLM)."""

import enum


class RequestStatus(enum.IntEnum):
    WAITING = 1
    RUNNING = 5
    PREEMPTED = 6
    FINISHED_STOPPED = 7


class Request:
    def __init__(self, request_id, num_prompt_tokens, max_tokens, arrival_time, num_mm=0):
        self.request_id = request_id
        self.arrival_time = arrival_time
        self.status = RequestStatus.WAITING
        self.num_prompt_tokens = num_prompt_tokens
        self.max_tokens = max_tokens
        self._output_token_ids = []
        self.num_computed_tokens = 0
        self.num_output_placeholders = 0
        self.num_preemptions = 0
        self.num_mm = num_mm

    @property
    def num_tokens(self):
        return self.num_prompt_tokens + len(self._output_token_ids)
