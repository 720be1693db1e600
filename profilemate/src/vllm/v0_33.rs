//! The name bundle of vLLM 0.26 to 0.33: every name ProfileMate reads from those releases
//! (operation rules, scheduler state, step batch, watched scheduler methods, event roles),
//! read from their wheels (docs/VLLM_VERSIONS.md).
//!
//! Owns the names only. What they mean is in `ops`, `state`, `batch`, `calls` and `events`;
//! which bundle a target gets is `bundle::choose`'s.

use super::{
    batch::BatchNames,
    bundle::Bundle,
    calls::{CallNames, CallRole},
    events::{rule as event, EventRole as R, EventRule},
    ops::{rule as op, OpRule},
    state::{RequestNames, StateNames},
};
use crate::model::Operation as O;

/// The bundle's name in metadata.json.
pub const NAME: &str = "0.26-0.33";

/// The bundle.
pub static BUNDLE: Bundle = Bundle {
    name: NAME,
    first: (0, 26),
    last: (0, 33),
    ops: OPS,
    events: EVENTS,
    state: &STATE,
    batch: &BATCH,
    calls: &CALLS,
    package: STATE.package,
    moe_layer_files: &["layers/fused_moe/"],
};

/// vLLM 0.26-0.33 (V2 and V1 model runners, engine core, API server output path): the
/// names of 0.33 plus those of older releases of the range (docs/VLLM_VERSIONS.md).
pub static OPS: &[OpRule] = &[
    op(
        O::Encoder,
        "vllm/v1/worker/gpu/mm/encoder_runner.py",
        &["EncoderRunner.execute_mm_encoder"],
    ),
    op(
        O::Encoder,
        "vllm/v1/worker/gpu/model_states/interface.py",
        &["ModelState.execute_mm_encoder"],
    ),
    op(
        O::Encoder,
        "vllm/v1/worker/gpu_model_runner.py",
        &["GPUModelRunner._execute_mm_encoder"],
    ),
    op(
        O::Sampling,
        "vllm/v1/worker/gpu/sample/sampler.py",
        &["Sampler.__call__"],
    ),
    op(
        O::Sampling,
        "vllm/v1/worker/gpu/spec_decode/rejection_sampler.py",
        &["RejectionSampler.__call__"],
    ),
    op(
        O::Sampling,
        "vllm/v1/worker/gpu/sample/prompt_logprob.py",
        &[
            "PromptLogprobsWorker.compute_prompt_logprobs",
            "PromptLogprobsWorker.compute_prompt_token_id_logprobs",
        ],
    ),
    op(
        O::Sampling,
        "vllm/v1/worker/gpu/model_runner.py",
        &["GPUModelRunner.sample"],
    ),
    op(
        O::Sampling,
        "vllm/v1/sample/sampler.py",
        &["Sampler.forward"],
    ),
    op(
        O::Sampling,
        "vllm/v1/sample/rejection_sampler.py",
        &["RejectionSampler.forward"],
    ),
    op(
        O::Sampling,
        "vllm/v1/worker/gpu_model_runner.py",
        &[
            "GPUModelRunner._sample",
            "GPUModelRunner._get_prompt_logprobs_dict",
        ],
    ),
    op(O::Draft, "vllm/v1/worker/gpu/spec_decode/*", &["*.propose"]),
    // The drafters themselves sit one level deeper (spec_decode/<kind>/speculator.py).
    op(
        O::Draft,
        "vllm/v1/worker/gpu/spec_decode/*/*",
        &["*.propose"],
    ),
    op(
        O::Draft,
        "vllm/v1/worker/gpu_model_runner.py",
        &["GPUModelRunner.propose_draft_token_ids"],
    ),
    op(
        O::ModelForward,
        "vllm/v1/worker/gpu/cudagraph_utils.py",
        &[
            "ModelCudaGraphManager.run_fullgraph",
            "CudaGraphManager.run_fullgraph",
            "CudaGraphManager.run_pw_graph",
        ],
    ),
    op(
        O::ModelForward,
        "vllm/v1/worker/gpu/ubatch_utils.py",
        &["UBatchRunner.run"],
    ),
    op(
        O::ModelForward,
        "vllm/compilation/cuda_graph.py",
        &["CUDAGraphWrapper.__call__"],
    ),
    op(
        O::ModelForward,
        "vllm/compilation/breakable_cudagraph.py",
        &["BreakableCUDAGraphWrapper.__call__"],
    ),
    op(
        O::ModelForward,
        "vllm/compilation/decorators.py",
        &["_support_torch_compile.<locals>.__call__"],
    ),
    op(
        O::ModelForward,
        "vllm/v1/worker/gpu_model_runner.py",
        &["GPUModelRunner._model_forward"],
    ),
    op(
        O::ModelForward,
        "vllm/v1/worker/gpu_ubatch_wrapper.py",
        &["UBatchWrapper.__call__"],
    ),
    // V2 eager forward: `self.model(...)` straight from execute_model has no vLLM frame.
    OpRule {
        op: O::ModelForward,
        file: "torch/nn/modules/module.py",
        names: &["Module._wrapped_call_impl"],
        parent: Some((
            "vllm/v1/worker/gpu/model_runner.py",
            "GPUModelRunner.execute_model",
        )),
    },
    op(
        O::PrepareInputs,
        "vllm/v1/worker/gpu/model_runner.py",
        &[
            "GPUModelRunner.prepare_inputs",
            "GPUModelRunner.prepare_attn",
            "GPUModelRunner.prepare_dummy_attn",
            "GPUModelRunner.gather_batch_req_state",
            "GPUModelRunner.add_requests",
            "GPUModelRunner.update_requests",
            "GPUModelRunner.finish_requests",
            "GPUModelRunner.free_states",
            "GPUModelRunner.update_pp_decode_requests",
        ],
    ),
    op(
        O::PrepareInputs,
        "vllm/v1/worker/gpu/model_states/*",
        &[
            "*.prepare_attn",
            "*.prepare_inputs",
            "*.prepare_inputs_embeds",
            "*.preprocess_state",
        ],
    ),
    op(
        O::PrepareInputs,
        "vllm/v1/worker/gpu/dp_utils.py",
        &["dispatch_cg_and_sync_dp"],
    ),
    op(
        O::PrepareInputs,
        "vllm/v1/worker/gpu/attn_utils.py",
        &["build_slot_mappings_by_layer"],
    ),
    op(
        O::PrepareInputs,
        "vllm/v1/worker/gpu/block_table.py",
        &["BlockTables.apply_staged_writes"],
    ),
    op(
        O::PrepareInputs,
        "vllm/v1/worker/gpu/ubatch_utils.py",
        &["UBatchRunner.prepare"],
    ),
    op(
        O::PrepareInputs,
        "vllm/v1/worker/gpu_model_runner.py",
        &[
            "GPUModelRunner._update_states",
            "GPUModelRunner._prepare_inputs",
            "GPUModelRunner._determine_batch_execution_and_padding",
            "GPUModelRunner._get_slot_mappings",
            "GPUModelRunner._build_attention_metadata",
            "GPUModelRunner._preprocess",
            "GPUModelRunner._prepare_padding_mask",
            "GPUModelRunner._may_reorder_batch",
        ],
    ),
    op(
        O::Bookkeeping,
        "vllm/v1/worker/gpu/async_utils.py",
        &[
            "AsyncOutput.get_output",
            "AsyncOutput.__init__",
            "AsyncPoolingOutput.get_output",
        ],
    ),
    op(
        O::Bookkeeping,
        "vllm/v1/worker/gpu/model_runner.py",
        &["GPUModelRunner.postprocess_sampled"],
    ),
    op(
        O::Bookkeeping,
        "vllm/v1/worker/gpu_model_runner.py",
        &[
            "GPUModelRunner._bookkeeping_sync",
            "GPUModelRunner._update_states_after_model_execute",
            "GPUModelRunner.eplb_step",
            "AsyncGPUModelRunnerOutput.get_output",
            "AsyncGPUModelRunnerOutput.__init__",
        ],
    ),
    op(
        O::Bookkeeping,
        "vllm/v1/executor/multiproc_executor.py",
        &["WorkerProc.enqueue_output"],
    ),
    op(
        O::Bookkeeping,
        "vllm/v1/engine/core.py",
        &[
            "EngineCore.post_step",
            "EngineCore._process_aborts_queue",
            "EngineCoreProc.process_output_sockets",
            "EngineCoreProc._send_engine_dead",
        ],
    ),
    op(
        O::UpdateFromOutput,
        "vllm/v1/core/sched/scheduler.py",
        &[
            "Scheduler.update_from_output",
            "Scheduler.update_draft_token_ids",
        ],
    ),
    op(
        O::Schedule,
        "vllm/v1/core/sched/scheduler.py",
        &["Scheduler.schedule", "Scheduler.get_grammar_bitmask"],
    ),
    op(
        O::Schedule,
        "vllm/v1/core/sched/diffusion_scheduler.py",
        &["DiffusionAsyncScheduler.schedule"],
    ),
    op(
        O::Detokenize,
        "vllm/v1/engine/detokenizer.py",
        &[
            "*.update",
            "*.decode_next",
            "FastIncrementalDetokenizer._protected_step",
            "BaseIncrementalDetokenizer.get_next_output_text",
        ],
    ),
    op(
        O::Detokenize,
        "vllm/v1/engine/logprobs.py",
        &["LogprobsProcessor.update_from_output"],
    ),
    op(
        O::Detokenize,
        "vllm/v1/engine/output_processor.py",
        &["OutputProcessor.process_outputs"],
    ),
    op(
        O::Detokenize,
        "vllm/v1/engine/async_llm.py",
        &["AsyncLLM._run_output_handler.<locals>.output_handler"],
    ),
    op(
        O::Detokenize,
        "vllm/v1/engine/core_client.py",
        &["AsyncMPClient._ensure_output_queue_task.<locals>.process_outputs_socket"],
    ),
    op(
        O::WaitWorker,
        "vllm/v1/executor/multiproc_executor.py",
        &["MultiprocExecutor.collective_rpc.<locals>.get_response"],
    ),
    op(
        O::Idle,
        "vllm/distributed/device_communicators/shm_broadcast.py",
        &[
            "MessageQueue._wait_until_readable",
            // 0.26-0.32: the same spin, before 0.33 split it out of acquire_read.
            "MessageQueue.acquire_read",
            "MessageQueue.acquire_read.<locals>.check",
            "SpinCondition.wait",
        ],
    ),
    op(
        O::Idle,
        "vllm/v1/executor/multiproc_executor.py",
        &[
            "WorkerProc.worker_busy_loop",
            "WorkerProc.async_output_busy_loop",
        ],
    ),
    op(
        O::Idle,
        "vllm/v1/engine/core.py",
        &["EngineCoreProc._process_input_queue"],
    ),
    op(
        O::PrepareInputs,
        "vllm/v1/worker/gpu/model_runner.py",
        &["GPUModelRunner.execute_model"],
    ),
    op(
        O::PrepareInputs,
        "vllm/v1/worker/gpu_model_runner.py",
        &["GPUModelRunner.execute_model"],
    ),
    op(
        O::Sampling,
        "vllm/v1/worker/gpu/model_runner.py",
        &["GPUModelRunner.sample_tokens"],
    ),
    op(
        O::Sampling,
        "vllm/v1/worker/gpu_model_runner.py",
        &["GPUModelRunner.sample_tokens"],
    ),
    op(
        O::EngineStep,
        "vllm/v1/worker/gpu_worker.py",
        &["Worker.execute_model", "Worker.sample_tokens"],
    ),
    op(
        O::EngineStep,
        "vllm/v1/executor/uniproc_executor.py",
        &["*.execute_model", "*.sample_tokens", "*.collective_rpc"],
    ),
    op(
        O::EngineStep,
        "vllm/v1/executor/multiproc_executor.py",
        &["*.execute_model", "*.sample_tokens", "*.collective_rpc"],
    ),
    op(
        O::EngineStep,
        "vllm/v1/executor/abstract.py",
        &["*.execute_model", "*.sample_tokens", "*.collective_rpc"],
    ),
    op(
        O::EngineStep,
        "vllm/v1/engine/core.py",
        &[
            "EngineCore.step",
            "EngineCore.step_with_batch_queue",
            "EngineCoreProc._process_engine_step",
            "EngineCoreProc.run_busy_loop",
            "DPEngineCoreProc.run_busy_loop",
        ],
    ),
    // 0.27+: the busy loop runs inside this wrapper.
    op(
        O::EngineStep,
        "vllm/v1/fault_tolerance/engine_core_sentinel.py",
        &["fault_tolerant_wrapper.<locals>.run_with_fault_tolerance"],
    ),
];

/// vLLM 0.26 to 0.33 (read from the 0.26.0, 0.27.0, 0.29.0 and 0.33.0 wheels: the same
/// functions record these events in all four).
pub static EVENTS: &[EventRule] = &[
    // V2 runner: `copy_event.record(copy_stream)` after the sampled tokens' D2H copies;
    // `get_output` synchronizes it (one step later with async scheduling).
    event(
        R::StepEnd,
        "vllm/v1/worker/gpu/async_utils.py",
        &["AsyncOutput.__init__", "AsyncPoolingOutput.__init__"],
    ),
    // V2: draft tokens copied for the next step; the adaptive-verification timing events.
    event(
        R::Helper,
        "vllm/v1/worker/gpu/spec_decode/utils.py",
        &["DraftTokensHandler.set_draft_tokens"],
    ),
    event(
        R::Helper,
        "vllm/v1/worker/gpu/async_utils.py",
        &[
            "StepTimingCollector.forward_start",
            "StepTimingCollector.forward_end",
            "StepTimingCollector.drafter_start",
            "StepTimingCollector.drafter_end",
        ],
    ),
    // V1 runner: async output copy (async scheduling) and `_to_list`'s transfer event
    // (synchronous scheduling, recorded and synchronized at once).
    event(
        R::StepEnd,
        "vllm/v1/worker/gpu_model_runner.py",
        &[
            "AsyncGPUModelRunnerOutput.__init__",
            "AsyncGPUPoolingModelRunnerOutput.__init__",
            "GPUModelRunner._to_list",
        ],
    ),
    // V1: `prepare_inputs_event`, recorded after the input copies and synchronized at the
    // start of the next execute_model; spec-decode copies of counts and draft tokens.
    event(
        R::Helper,
        "vllm/v1/worker/gpu_model_runner.py",
        &[
            "GPUModelRunner.synchronize_input_prep",
            "GPUModelRunner._update_states_after_model_execute",
            "GPUModelRunner._copy_draft_token_ids_to_cpu",
            "GPUModelRunner._copy_valid_sampled_token_count",
        ],
    ),
];

/// vLLM 0.26-0.33 (V1 engine core, V1/V2 scheduler; the same names in every release of the
/// range: docs/VLLM_VERSIONS.md).
pub static STATE: StateNames = StateNames {
    versions: NAME,
    package: "vllm/",
    engine_frames: &[
        // The socket threads block in these for the engine's whole life: their frames are
        // there to read at any poll, while the busy main thread's chain moves under the read.
        "EngineCoreProc.process_input_sockets",
        "EngineCoreProc.process_output_sockets",
        "EngineCoreProc.run_busy_loop",
        "DPEngineCoreProc.run_busy_loop",
        "EngineCore.step_with_batch_queue",
        "EngineCore.step",
    ],
    scheduler_frames: &["Scheduler.schedule", "Scheduler.update_from_output"],
    engine_scheduler: "scheduler",
    running: "running",
    waiting: "waiting",
    requests: "requests",
    kv_cache_manager: "kv_cache_manager",
    block_pool: "block_pool",
    num_gpu_blocks: "num_gpu_blocks",
    free_block_queue: "free_block_queue",
    num_free_blocks: "num_free_blocks",
    current_step: "current_step",
    max_num_running_reqs: "max_num_running_reqs",
    max_num_scheduled_tokens: "max_num_scheduled_tokens",
    prefix_cache_map: "cached_block_hash_to_block",
    prefix_cache_dict: "_cache",
    block_type: "KVCacheBlock",
    block_id: "block_id",
    ref_cnt: "ref_cnt",
    request: RequestNames {
        request_id: "request_id",
        status: "status",
        num_preemptions: "num_preemptions",
        num_computed_tokens: "num_computed_tokens",
        num_prompt_tokens: "num_prompt_tokens",
        output_token_ids: "_output_token_ids",
        arrival_time: "arrival_time",
        statuses: &[
            (1, "WAITING"),
            (2, "WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR"),
            (3, "WAITING_FOR_REMOTE_KVS"),
            (4, "WAITING_FOR_STREAMING_REQ"),
            (5, "RUNNING"),
            (6, "PREEMPTED"),
            (7, "FINISHED_STOPPED"),
            (8, "FINISHED_LENGTH_CAPPED"),
            (9, "FINISHED_ABORTED"),
            (10, "FINISHED_IGNORED"),
            (11, "FINISHED_ERROR"),
            (12, "FINISHED_REPETITION"),
        ],
    },
};

/// vLLM 0.26-0.33 (V1 engine, model runner V2 and V1; the names are the same in every
/// release of the range: docs/VLLM_VERSIONS.md).
pub static BATCH: BatchNames = BatchNames {
    versions: NAME,
    output_frames: &[".execute_model", "Scheduler.update_from_output"],
    pipelined_step_frames: &["EngineCore.step_with_batch_queue"],
    output_type: "SchedulerOutput",
    total_num_scheduled_tokens: "total_num_scheduled_tokens",
    num_scheduled_tokens: "num_scheduled_tokens",
    scheduled_new_reqs: "scheduled_new_reqs",
    scheduled_cached_reqs: "scheduled_cached_reqs",
    scheduled_spec_decode_tokens: "scheduled_spec_decode_tokens",
    scheduled_encoder_inputs: "scheduled_encoder_inputs",
    preempted_req_ids: "preempted_req_ids",
    finished_req_ids: "finished_req_ids",
    new_req_id: "req_id",
    new_req_prompt: "prompt_token_ids",
    cached_req_ids: "req_ids",
    resumed_req_ids: "resumed_req_ids",
    num_output_tokens: "num_output_tokens",
    descriptor_frames: &[".run_fullgraph"],
    descriptor_types: &["BatchExecutionDescriptor", "BatchDescriptor"],
    desc_mode: "cg_mode",
    desc_num_tokens: "num_tokens",
    desc_num_reqs: "num_reqs",
    desc_uniform: "uniform_token_count",
    desc_loras: "num_active_loras",
};

/// vLLM 0.26-0.33 (the same names in every release of the range: docs/VLLM_VERSIONS.md).
pub static CALLS: CallNames = CallNames {
    versions: NAME,
    watched: &[
        ("Scheduler._preempt_request", CallRole::Preempt),
        ("Scheduler.add_request", CallRole::AddRequest),
        ("Scheduler.update_from_output", CallRole::UpdateFromOutput),
        ("Scheduler.schedule", CallRole::Schedule),
    ],
    preempt_callers: &[
        (".schedule", "kv_cache_exhausted"),
        (".reset_prefix_cache", "cache_reset"),
    ],
    request_type: "Request",
    request_id: "request_id",
    arrival_time: "arrival_time",
};
