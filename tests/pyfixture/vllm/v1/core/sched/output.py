"""vllm/v1/core/sched/output.py: what one schedule() call decided (dataclasses, as in vLLM)."""

from dataclasses import dataclass


@dataclass
class NewRequestData:
    req_id: str
    prompt_token_ids: list
    num_computed_tokens: int


@dataclass
class CachedRequestData:
    req_ids: list
    resumed_req_ids: set
    new_token_ids: list
    num_computed_tokens: list
    num_output_tokens: list


@dataclass
class SchedulerOutput:
    scheduled_new_reqs: list
    scheduled_cached_reqs: CachedRequestData
    num_scheduled_tokens: dict
    total_num_scheduled_tokens: int
    scheduled_spec_decode_tokens: dict
    scheduled_encoder_inputs: dict
    finished_req_ids: set
    preempted_req_ids: set = None
