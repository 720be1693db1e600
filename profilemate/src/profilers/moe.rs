//! moe_summary.json: what can and cannot be said about Mixture-of-Experts routing from
//! outside the server.
//!
//! Owns computing those rows and summaries from the correlated records; not writing them
//! (the sinks: `output::csv` names the files and writes them) nor the records themselves.

use serde::Serialize;

use super::Profiler;
use crate::{
    correlate::Correlated,
    output::{sink::Sink, OutputError},
    vllm::bundle::Bundle,
};

#[derive(Serialize)]
struct Summary {
    expert_routing_observable: bool,
    reason: &'static str,
    moe_layer_seen_in_stacks: bool,
    stacks_in_moe_layer: u64,
    stacks: u64,
    how_to_get_routing: &'static str,
}

/// Counts stacks inside vLLM's MoE layer (a sign the model is MoE).
pub struct Moe {
    /// Path parts of the MoE layer's files (the vLLM bundle's).
    layer_files: &'static [&'static str],
    stacks: u64,
    in_moe: u64,
}

impl Moe {
    /// Looks for the MoE layer of `bundle`'s vLLM.
    #[must_use]
    pub fn new(bundle: &'static Bundle) -> Self {
        Self {
            layer_files: bundle.moe_layer_files,
            stacks: 0,
            in_moe: 0,
        }
    }
}

impl Profiler for Moe {
    fn consume(&mut self, record: &Correlated, _out: &mut dyn Sink) {
        if let Correlated::PyStack(st) = record {
            self.stacks += 1;
            let moe = st
                .frames
                .iter()
                .any(|f| self.layer_files.iter().any(|m| f.code.filename.contains(m)));
            self.in_moe += u64::from(moe);
        }
    }

    fn finish(&mut self, out: &mut dyn Sink) -> Result<(), OutputError> {
        out.summary(
            crate::output::csv::files::MOE_SUMMARY,
            &Summary {
                expert_routing_observable: false,
                reason: "the router's top-k expert ids are computed on the GPU, inside CUDA graphs on most steps (its Python runs only on eager steps), and never leave device memory; reading them would need code in the target (a hook or a copy to the host), which ProfileMate never adds",
                moe_layer_seen_in_stacks: self.in_moe > 0,
                stacks_in_moe_layer: self.in_moe,
                stacks: self.stacks,
                how_to_get_routing: "start the server with --enable-return-routed-experts (routed experts are returned with each request's output) or enable EPLB, whose load statistics the server logs",
            },
        )?;
        Ok(())
    }
}
