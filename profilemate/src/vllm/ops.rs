//! Python frame -> vLLM operation. The innermost frame of a stack that matches a row decides
//! the operation of the whole stack (a sampled tick, or a CUDA call).
//!
//! Owns the rule shape and the matching; the rules themselves are a bundle's (`v0_33`), the
//! operation vocabulary is `model::ops`'s.

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

pub(super) const fn rule(
    op: Operation,
    file: &'static str,
    names: &'static [&'static str],
) -> OpRule {
    OpRule {
        op,
        file,
        names,
        parent: None,
    }
}

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
        assert_eq!(
            classify(crate::vllm::v0_33::OPS, &stack),
            (Operation::Schedule, Some(1))
        );
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
            classify(crate::vllm::v0_33::OPS, &under_runner).0,
            Operation::ModelForward
        );
        let elsewhere = [
            F("/x/torch/nn/modules/module.py", "Module._wrapped_call_impl"),
            F(
                "/x/vllm/v1/worker/gpu/model_runner.py",
                "GPUModelRunner.sample",
            ),
        ];
        assert_eq!(
            classify(crate::vllm::v0_33::OPS, &elsewhere).0,
            Operation::Sampling
        );
    }

    #[test]
    fn names_of_older_releases_match_too() {
        // Paths and qualnames as vLLM 0.26.0 / 0.32.0 / 0.33.0 define them.
        let drafter = [F(
            "/x/vllm/v1/worker/gpu/spec_decode/autoregressive/speculator.py",
            "AutoRegressiveSpeculator.propose",
        )];
        assert_eq!(
            classify(crate::vllm::v0_33::OPS, &drafter).0,
            Operation::Draft
        );
        let spin = [F(
            "/x/vllm/distributed/device_communicators/shm_broadcast.py",
            "MessageQueue.acquire_read.<locals>.check",
        )];
        assert_eq!(classify(crate::vllm::v0_33::OPS, &spin).0, Operation::Idle);
        let wrapped = [F(
            "/x/vllm/v1/fault_tolerance/engine_core_sentinel.py",
            "fault_tolerant_wrapper.<locals>.run_with_fault_tolerance",
        )];
        assert_eq!(
            classify(crate::vllm::v0_33::OPS, &wrapped).0,
            Operation::EngineStep
        );
    }

    #[test]
    fn wildcards_and_misses() {
        let s = [F(
            "/x/vllm/v1/worker/gpu/spec_decode/eagle.py",
            "EagleProposer.propose",
        )];
        assert_eq!(classify(crate::vllm::v0_33::OPS, &s).0, Operation::Draft);
        let s = [F(
            "/x/vllm/v1/engine/detokenizer.py",
            "FastIncrementalDetokenizer.decode_next",
        )];
        assert_eq!(
            classify(crate::vllm::v0_33::OPS, &s).0,
            Operation::Detokenize
        );
        // Same file name in another package does not match.
        let s = [F("/x/notvllm/v1/engine/core.py", "EngineCore.step")];
        assert_eq!(
            classify(crate::vllm::v0_33::OPS, &s).0,
            Operation::OtherPython,
            "suffixes match whole segments"
        );
        let s = [F("/x/other.py", "main")];
        assert_eq!(
            classify(crate::vllm::v0_33::OPS, &s).0,
            Operation::OtherPython
        );
        let empty: [F; 0] = [];
        assert_eq!(
            classify(crate::vllm::v0_33::OPS, &empty).0,
            Operation::Native
        );
    }
}
