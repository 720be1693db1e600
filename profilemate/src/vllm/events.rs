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

pub(super) const fn rule(
    role: EventRole,
    file: &'static str,
    names: &'static [&'static str],
) -> EventRule {
    EventRule { role, file, names }
}

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
            classify_record(crate::vllm::v0_33::EVENTS, &prep),
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
            classify_record(crate::vllm::v0_33::EVENTS, &v2),
            EventRole::StepEnd
        );
        let sync = [
            F(V1, "GPUModelRunner._to_list"),
            F(V1, "GPUModelRunner._bookkeeping_sync"),
        ];
        assert_eq!(
            classify_record(crate::vllm::v0_33::EVENTS, &sync),
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
            classify_record(crate::vllm::v0_33::EVENTS, &alloc),
            EventRole::Unknown
        );
        let none: [F; 0] = [];
        assert_eq!(
            classify_record(crate::vllm::v0_33::EVENTS, &none),
            EventRole::Unknown
        );
    }
}
