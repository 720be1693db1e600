//! Python frame -> vLLM operation. The innermost frame of a stack that matches a row decides
//! the operation of the whole stack (a sampled tick, or a CUDA call).

pub use crate::model::ops::{FrameName, Operation};

/// One row: frames whose filename ends with `file` (a `*` segment matches any one path
/// segment) and whose qualname is one of `names` (`*.x` matches any `Class.x`).
#[derive(Debug)]
pub struct OpRule {
    /// The operation.
    pub op: Operation,
    /// Path suffix, `/`-separated.
    pub file: &'static str,
    /// Qualnames.
    pub names: &'static [&'static str],
    /// The caller frame must match this (file, qualname) for the rule to apply.
    pub parent: Option<(&'static str, &'static str)>,
}

const fn rule(op: Operation, file: &'static str, names: &'static [&'static str]) -> OpRule {
    OpRule {
        op,
        file,
        names,
        parent: None,
    }
}

use Operation as O;

/// vLLM 0.26-0.33 (V2 and V1 model runners, engine core, API server output path): the
/// names of 0.33 plus those of older releases of the range (docs/VLLM_VERSIONS.md).
pub static VLLM_0_33: &[OpRule] = &[
    rule(
        O::Encoder,
        "vllm/v1/worker/gpu/mm/encoder_runner.py",
        &["EncoderRunner.execute_mm_encoder"],
    ),
    rule(
        O::Encoder,
        "vllm/v1/worker/gpu/model_states/interface.py",
        &["ModelState.execute_mm_encoder"],
    ),
    rule(
        O::Encoder,
        "vllm/v1/worker/gpu_model_runner.py",
        &["GPUModelRunner._execute_mm_encoder"],
    ),
    rule(
        O::Sampling,
        "vllm/v1/worker/gpu/sample/sampler.py",
        &["Sampler.__call__"],
    ),
    rule(
        O::Sampling,
        "vllm/v1/worker/gpu/spec_decode/rejection_sampler.py",
        &["RejectionSampler.__call__"],
    ),
    rule(
        O::Sampling,
        "vllm/v1/worker/gpu/sample/prompt_logprob.py",
        &[
            "PromptLogprobsWorker.compute_prompt_logprobs",
            "PromptLogprobsWorker.compute_prompt_token_id_logprobs",
        ],
    ),
    rule(
        O::Sampling,
        "vllm/v1/worker/gpu/model_runner.py",
        &["GPUModelRunner.sample"],
    ),
    rule(
        O::Sampling,
        "vllm/v1/sample/sampler.py",
        &["Sampler.forward"],
    ),
    rule(
        O::Sampling,
        "vllm/v1/sample/rejection_sampler.py",
        &["RejectionSampler.forward"],
    ),
    rule(
        O::Sampling,
        "vllm/v1/worker/gpu_model_runner.py",
        &[
            "GPUModelRunner._sample",
            "GPUModelRunner._get_prompt_logprobs_dict",
        ],
    ),
    rule(O::Draft, "vllm/v1/worker/gpu/spec_decode/*", &["*.propose"]),
    // The drafters themselves sit one level deeper (spec_decode/<kind>/speculator.py).
    rule(
        O::Draft,
        "vllm/v1/worker/gpu/spec_decode/*/*",
        &["*.propose"],
    ),
    rule(
        O::Draft,
        "vllm/v1/worker/gpu_model_runner.py",
        &["GPUModelRunner.propose_draft_token_ids"],
    ),
    rule(
        O::ModelForward,
        "vllm/v1/worker/gpu/cudagraph_utils.py",
        &[
            "ModelCudaGraphManager.run_fullgraph",
            "CudaGraphManager.run_fullgraph",
            "CudaGraphManager.run_pw_graph",
        ],
    ),
    rule(
        O::ModelForward,
        "vllm/v1/worker/gpu/ubatch_utils.py",
        &["UBatchRunner.run"],
    ),
    rule(
        O::ModelForward,
        "vllm/compilation/cuda_graph.py",
        &["CUDAGraphWrapper.__call__"],
    ),
    rule(
        O::ModelForward,
        "vllm/compilation/breakable_cudagraph.py",
        &["BreakableCUDAGraphWrapper.__call__"],
    ),
    rule(
        O::ModelForward,
        "vllm/compilation/decorators.py",
        &["_support_torch_compile.<locals>.__call__"],
    ),
    rule(
        O::ModelForward,
        "vllm/v1/worker/gpu_model_runner.py",
        &["GPUModelRunner._model_forward"],
    ),
    rule(
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
    rule(
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
    rule(
        O::PrepareInputs,
        "vllm/v1/worker/gpu/model_states/*",
        &[
            "*.prepare_attn",
            "*.prepare_inputs",
            "*.prepare_inputs_embeds",
            "*.preprocess_state",
        ],
    ),
    rule(
        O::PrepareInputs,
        "vllm/v1/worker/gpu/dp_utils.py",
        &["dispatch_cg_and_sync_dp"],
    ),
    rule(
        O::PrepareInputs,
        "vllm/v1/worker/gpu/attn_utils.py",
        &["build_slot_mappings_by_layer"],
    ),
    rule(
        O::PrepareInputs,
        "vllm/v1/worker/gpu/block_table.py",
        &["BlockTables.apply_staged_writes"],
    ),
    rule(
        O::PrepareInputs,
        "vllm/v1/worker/gpu/ubatch_utils.py",
        &["UBatchRunner.prepare"],
    ),
    rule(
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
    rule(
        O::Bookkeeping,
        "vllm/v1/worker/gpu/async_utils.py",
        &[
            "AsyncOutput.get_output",
            "AsyncOutput.__init__",
            "AsyncPoolingOutput.get_output",
        ],
    ),
    rule(
        O::Bookkeeping,
        "vllm/v1/worker/gpu/model_runner.py",
        &["GPUModelRunner.postprocess_sampled"],
    ),
    rule(
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
    rule(
        O::Bookkeeping,
        "vllm/v1/executor/multiproc_executor.py",
        &["WorkerProc.enqueue_output"],
    ),
    rule(
        O::Bookkeeping,
        "vllm/v1/engine/core.py",
        &[
            "EngineCore.post_step",
            "EngineCore._process_aborts_queue",
            "EngineCoreProc.process_output_sockets",
            "EngineCoreProc._send_engine_dead",
        ],
    ),
    rule(
        O::UpdateFromOutput,
        "vllm/v1/core/sched/scheduler.py",
        &[
            "Scheduler.update_from_output",
            "Scheduler.update_draft_token_ids",
        ],
    ),
    rule(
        O::Schedule,
        "vllm/v1/core/sched/scheduler.py",
        &["Scheduler.schedule", "Scheduler.get_grammar_bitmask"],
    ),
    rule(
        O::Schedule,
        "vllm/v1/core/sched/diffusion_scheduler.py",
        &["DiffusionAsyncScheduler.schedule"],
    ),
    rule(
        O::Detokenize,
        "vllm/v1/engine/detokenizer.py",
        &[
            "*.update",
            "*.decode_next",
            "FastIncrementalDetokenizer._protected_step",
            "BaseIncrementalDetokenizer.get_next_output_text",
        ],
    ),
    rule(
        O::Detokenize,
        "vllm/v1/engine/logprobs.py",
        &["LogprobsProcessor.update_from_output"],
    ),
    rule(
        O::Detokenize,
        "vllm/v1/engine/output_processor.py",
        &["OutputProcessor.process_outputs"],
    ),
    rule(
        O::Detokenize,
        "vllm/v1/engine/async_llm.py",
        &["AsyncLLM._run_output_handler.<locals>.output_handler"],
    ),
    rule(
        O::Detokenize,
        "vllm/v1/engine/core_client.py",
        &["AsyncMPClient._ensure_output_queue_task.<locals>.process_outputs_socket"],
    ),
    rule(
        O::WaitWorker,
        "vllm/v1/executor/multiproc_executor.py",
        &["MultiprocExecutor.collective_rpc.<locals>.get_response"],
    ),
    rule(
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
    rule(
        O::Idle,
        "vllm/v1/executor/multiproc_executor.py",
        &[
            "WorkerProc.worker_busy_loop",
            "WorkerProc.async_output_busy_loop",
        ],
    ),
    rule(
        O::Idle,
        "vllm/v1/engine/core.py",
        &["EngineCoreProc._process_input_queue"],
    ),
    rule(
        O::PrepareInputs,
        "vllm/v1/worker/gpu/model_runner.py",
        &["GPUModelRunner.execute_model"],
    ),
    rule(
        O::PrepareInputs,
        "vllm/v1/worker/gpu_model_runner.py",
        &["GPUModelRunner.execute_model"],
    ),
    rule(
        O::Sampling,
        "vllm/v1/worker/gpu/model_runner.py",
        &["GPUModelRunner.sample_tokens"],
    ),
    rule(
        O::Sampling,
        "vllm/v1/worker/gpu_model_runner.py",
        &["GPUModelRunner.sample_tokens"],
    ),
    rule(
        O::EngineStep,
        "vllm/v1/worker/gpu_worker.py",
        &["Worker.execute_model", "Worker.sample_tokens"],
    ),
    rule(
        O::EngineStep,
        "vllm/v1/executor/uniproc_executor.py",
        &["*.execute_model", "*.sample_tokens", "*.collective_rpc"],
    ),
    rule(
        O::EngineStep,
        "vllm/v1/executor/multiproc_executor.py",
        &["*.execute_model", "*.sample_tokens", "*.collective_rpc"],
    ),
    rule(
        O::EngineStep,
        "vllm/v1/executor/abstract.py",
        &["*.execute_model", "*.sample_tokens", "*.collective_rpc"],
    ),
    rule(
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
    rule(
        O::EngineStep,
        "vllm/v1/fault_tolerance/engine_core_sentinel.py",
        &["fault_tolerant_wrapper.<locals>.run_with_fault_tolerance"],
    ),
];

/// Whether `filename` ends with the `/`-separated `pattern` (`*` matches one segment).
pub(super) fn file_matches(filename: &str, pattern: &str) -> bool {
    let segs: Vec<&str> = filename.rsplit('/').collect();
    let pats: Vec<&str> = pattern.rsplit('/').collect();
    if segs.len() < pats.len() {
        return false;
    }
    pats.iter().zip(&segs).all(|(p, s)| *p == "*" || p == s)
}

/// Whether `qualname` is `pattern` (`*.x` matches any `Class.x`).
pub(super) fn name_matches(qualname: &str, pattern: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(tail) => qualname
            .rsplit_once('.')
            .is_some_and(|(_, last)| last == tail),
        None => qualname == pattern,
    }
}

/// The rule matching frame `i` of `frames` (innermost first), if any.
fn match_frame<'t, F: FrameName>(
    table: &'t [OpRule],
    frames: &[F],
    i: usize,
) -> Option<&'t OpRule> {
    let f = &frames[i];
    table.iter().find(|r| {
        r.names.iter().any(|n| name_matches(f.qualname(), n))
            && file_matches(f.filename(), r.file)
            && r.parent.is_none_or(|(pf, pn)| {
                frames
                    .get(i + 1)
                    .is_some_and(|p| file_matches(p.filename(), pf) && p.qualname() == pn)
            })
    })
}

/// The operation of a stack (innermost first), and the index of the deciding frame.
#[must_use]
pub fn classify<F: FrameName>(table: &[OpRule], frames: &[F]) -> (Operation, Option<usize>) {
    if frames.is_empty() {
        return (Operation::Native, None);
    }
    for i in 0..frames.len() {
        if let Some(r) = match_frame(table, frames, i) {
            return (r.op, Some(i));
        }
    }
    (Operation::OtherPython, None)
}

/// A frame given by its names, for the tests of the tables that match frames.
#[cfg(test)]
pub(super) struct TestFrame(pub &'static str, pub &'static str);

#[cfg(test)]
impl FrameName for TestFrame {
    fn filename(&self) -> &str {
        self.0
    }
    fn qualname(&self) -> &str {
        self.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TestFrame as F;

    #[test]
    fn innermost_vllm_frame_decides() {
        let stack = [
            F("/usr/lib/python3.12/threading.py", "Condition.wait"),
            F(
                "/x/site-packages/vllm/v1/core/sched/scheduler.py",
                "Scheduler.schedule",
            ),
            F(
                "/x/site-packages/vllm/v1/engine/core.py",
                "EngineCore.step_with_batch_queue",
            ),
            F(
                "/x/site-packages/vllm/v1/engine/core.py",
                "EngineCoreProc.run_busy_loop",
            ),
        ];
        assert_eq!(classify(VLLM_0_33, &stack), (Operation::Schedule, Some(1)));
    }

    #[test]
    fn eager_forward_needs_its_parent() {
        let v2 = "/x/vllm/v1/worker/gpu/model_runner.py";
        let under_runner = [
            F("/x/torch/nn/modules/module.py", "Module._call_impl"),
            F("/x/torch/nn/modules/module.py", "Module._wrapped_call_impl"),
            F(v2, "GPUModelRunner.execute_model"),
        ];
        assert_eq!(
            classify(VLLM_0_33, &under_runner).0,
            Operation::ModelForward
        );
        let elsewhere = [
            F("/x/torch/nn/modules/module.py", "Module._wrapped_call_impl"),
            F(
                "/x/vllm/v1/worker/gpu/model_runner.py",
                "GPUModelRunner.sample",
            ),
        ];
        assert_eq!(classify(VLLM_0_33, &elsewhere).0, Operation::Sampling);
    }

    #[test]
    fn names_of_older_releases_match_too() {
        // Paths and qualnames as vLLM 0.26.0 / 0.32.0 / 0.33.0 define them.
        let drafter = [F(
            "/x/vllm/v1/worker/gpu/spec_decode/autoregressive/speculator.py",
            "AutoRegressiveSpeculator.propose",
        )];
        assert_eq!(classify(VLLM_0_33, &drafter).0, Operation::Draft);
        let spin = [F(
            "/x/vllm/distributed/device_communicators/shm_broadcast.py",
            "MessageQueue.acquire_read.<locals>.check",
        )];
        assert_eq!(classify(VLLM_0_33, &spin).0, Operation::Idle);
        let wrapped = [F(
            "/x/vllm/v1/fault_tolerance/engine_core_sentinel.py",
            "fault_tolerant_wrapper.<locals>.run_with_fault_tolerance",
        )];
        assert_eq!(classify(VLLM_0_33, &wrapped).0, Operation::EngineStep);
    }

    #[test]
    fn wildcards_and_misses() {
        let s = [F(
            "/x/vllm/v1/worker/gpu/spec_decode/eagle.py",
            "EagleProposer.propose",
        )];
        assert_eq!(classify(VLLM_0_33, &s).0, Operation::Draft);
        let s = [F(
            "/x/vllm/v1/engine/detokenizer.py",
            "FastIncrementalDetokenizer.decode_next",
        )];
        assert_eq!(classify(VLLM_0_33, &s).0, Operation::Detokenize);
        // Same file name in another package does not match.
        let s = [F("/x/notvllm/v1/engine/core.py", "EngineCore.step")];
        assert_eq!(
            classify(VLLM_0_33, &s).0,
            Operation::OtherPython,
            "suffixes match whole segments"
        );
        let s = [F("/x/other.py", "main")];
        assert_eq!(classify(VLLM_0_33, &s).0, Operation::OtherPython);
        let empty: [F; 0] = [];
        assert_eq!(classify(VLLM_0_33, &empty).0, Operation::Native);
    }
}
