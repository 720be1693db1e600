//! Which vLLM function recorded a CUDA event, and what a wait on that event means for step
//! detection: the per-step completion event, or a helper event that vLLM waits on for
//! another reason (inputs copied, draft tokens copied, timing).
//!
//! The correlator asks this table when the stack walked at a `cudaEventRecord*` entry
//! reaches it; where no stack is walked (no Python, `--cuda-stacks none`) or no row matches,
//! the structural rule of `correlate::steps` decides alone. Owns only names; the step machine
//! owns what a role does.

use super::ops::{file_matches, name_matches, FrameName};

/// What an event recorded by a function means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EventRole {
    /// Not recorded by a function of the table (or no stack): the structural rule decides.
    #[default]
    Unknown,
    /// Recorded after a step's output copy: its completion is the step's.
    StepEnd,
    /// Recorded inside a step for another wait (inputs ready for reuse, draft tokens):
    /// never a step boundary.
    Helper,
}

/// Frames whose filename ends with `file` and whose qualname is one of `names`.
#[derive(Debug)]
pub struct EventRule {
    /// The role of events recorded there.
    pub role: EventRole,
    /// Path suffix, `/`-separated.
    pub file: &'static str,
    /// Qualnames.
    pub names: &'static [&'static str],
}

const fn rule(role: EventRole, file: &'static str, names: &'static [&'static str]) -> EventRule {
    EventRule { role, file, names }
}

use EventRole as R;

/// vLLM 0.26 to 0.33 (read from the 0.26.0, 0.27.0, 0.29.0 and 0.33.0 wheels: the same
/// functions record these events in all four).
pub static EVENT_ROLES_0_26_TO_0_33: &[EventRule] = &[
    // V2 runner: `copy_event.record(copy_stream)` after the sampled tokens' D2H copies;
    // `get_output` synchronizes it (one step later with async scheduling).
    rule(
        R::StepEnd,
        "vllm/v1/worker/gpu/async_utils.py",
        &["AsyncOutput.__init__", "AsyncPoolingOutput.__init__"],
    ),
    // V2: draft tokens copied for the next step; the adaptive-verification timing events.
    rule(
        R::Helper,
        "vllm/v1/worker/gpu/spec_decode/utils.py",
        &["DraftTokensHandler.set_draft_tokens"],
    ),
    rule(
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
    rule(
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
    rule(
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

/// The role of an event recorded with this stack (innermost first): the innermost frame
/// that matches a row decides.
#[must_use]
pub fn classify_record<F: FrameName>(table: &[EventRule], frames: &[F]) -> EventRole {
    frames
        .iter()
        .find_map(|f| {
            table
                .iter()
                .find(|r| {
                    r.names.iter().any(|n| name_matches(f.qualname(), n))
                        && file_matches(f.filename(), r.file)
                })
                .map(|r| r.role)
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::ops::TestFrame as F;
    use super::*;

    const V1: &str = "/x/site-packages/vllm/v1/worker/gpu_model_runner.py";

    #[test]
    fn the_recording_function_decides() {
        let prep = [
            F("/x/torch/cuda/streams.py", "Event.record"),
            F(V1, "GPUModelRunner.synchronize_input_prep"),
            F(
                "/usr/lib/python3.12/contextlib.py",
                "_GeneratorContextManager.__exit__",
            ),
            F(V1, "GPUModelRunner.execute_model"),
        ];
        assert_eq!(
            classify_record(EVENT_ROLES_0_26_TO_0_33, &prep),
            EventRole::Helper
        );
        let v2 = [
            F("/x/torch/cuda/streams.py", "Event.record"),
            F(
                "/x/site-packages/vllm/v1/worker/gpu/async_utils.py",
                "AsyncOutput.__init__",
            ),
            F(
                "/x/site-packages/vllm/v1/worker/gpu/model_runner.py",
                "GPUModelRunner.sample_tokens",
            ),
        ];
        assert_eq!(
            classify_record(EVENT_ROLES_0_26_TO_0_33, &v2),
            EventRole::StepEnd
        );
        let sync = [
            F(V1, "GPUModelRunner._to_list"),
            F(V1, "GPUModelRunner._bookkeeping_sync"),
        ];
        assert_eq!(
            classify_record(EVENT_ROLES_0_26_TO_0_33, &sync),
            EventRole::StepEnd
        );
    }

    #[test]
    fn other_recorders_are_unknown() {
        // PyTorch's pinned-memory allocator records from inside any function.
        let alloc = [F(
            "/x/site-packages/vllm/v1/worker/gpu/model_runner.py",
            "GPUModelRunner.prepare_inputs",
        )];
        assert_eq!(
            classify_record(EVENT_ROLES_0_26_TO_0_33, &alloc),
            EventRole::Unknown
        );
        let none: [F; 0] = [];
        assert_eq!(
            classify_record(EVENT_ROLES_0_26_TO_0_33, &none),
            EventRole::Unknown
        );
    }
}
