//! moe_summary.json: what can and cannot be said about Mixture-of-Experts routing from
//! outside the server; and the seeds' four MoE CSV files with their headers, without
//! rows while routing is not read (never invented rows).
//!
//! Owns computing that summary and declaring those files; not writing them (the sinks:
//! `output::csv` names the files and writes them, with their copies in
//! `moe_expert_tracking/`) nor the MoE layer's path (the vLLM bundle's).

use serde::Serialize;

use super::Profiler;
use crate::{
    correlate::Correlated,
    output::{
        csv::{files, Family, FamilyRow},
        sink::Sink,
        OutputError,
    },
    vllm::bundle::Bundle,
};

// The seeds' MoE files and their columns, in the seeds' order (seed 003; the routing
// weights file's only named column is `weight`, which its analysis reads). No rows are
// written while routing is not read.
crate::csv_family! {
    /// A row of moe_expert_activations.csv.
    pub struct Activation in files::MOE_EXPERT_ACTIVATIONS, also in files::MOE_SEED_DIR {
        layer_idx: u32,
        expert_id: u32,
        activation_count: u64,
        percentage: f64,
    }
}
crate::csv_family! {
    /// A row of moe_expert_coselection.csv.
    pub struct Coselection in files::MOE_EXPERT_COSELECTION, also in files::MOE_SEED_DIR {
        layer_idx: u32,
        expert_id_1: u32,
        expert_id_2: u32,
        coselection_count: u64,
    }
}
crate::csv_family! {
    /// A row of moe_routing_weights_hist.csv.
    pub struct WeightBin in files::MOE_ROUTING_WEIGHTS_HIST, also in files::MOE_SEED_DIR {
        weight: f64,
        count: u64,
        layer_idx: u32,
    }
}
crate::csv_family! {
    /// A row of moe_load_imbalance.csv.
    pub struct Imbalance in files::MOE_LOAD_IMBALANCE, also in files::MOE_SEED_DIR {
        layer_idx: u32,
        timestamp_sec: f64,
        std_dev: f64,
        max_min_ratio: f64,
    }
}

/// The four families, in the seeds' order.
const FAMILIES: &[&Family] = &[
    &Activation::FAMILY,
    &Coselection::FAMILY,
    &WeightBin::FAMILY,
    &Imbalance::FAMILY,
];

#[derive(Serialize)]
struct Source {
    server_option: &'static str,
    what_would_be_read: &'static str,
    fills: &'static str,
    status: &'static str,
}

#[derive(Serialize)]
struct Summary {
    expert_routing_observable: bool,
    reason: &'static str,
    moe_layer_seen_in_stacks: bool,
    stacks_in_moe_layer: u64,
    stacks: u64,
    how_to_get_routing: &'static str,
    files_without_rows: Vec<String>,
    routing_sources: [Source; 2],
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
    fn families(&self) -> &'static [&'static Family] {
        FAMILIES
    }

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
        let mut files = Vec::new();
        for f in FAMILIES {
            files.push(f.file.to_owned());
            if let Some(dir) = f.mirror {
                files.push(format!("{dir}/{}", f.file));
            }
        }
        out.summary(
            files::MOE_SUMMARY,
            &Summary {
                expert_routing_observable: false,
                reason: "the router's top-k expert ids are computed on the GPU, inside CUDA graphs on most steps (its Python runs only on eager steps), and never leave device memory; reading them would need code in the target (a hook or a copy to the host), which ProfileMate never adds",
                moe_layer_seen_in_stacks: self.in_moe > 0,
                stacks_in_moe_layer: self.in_moe,
                stacks: self.stacks,
                how_to_get_routing: "start the server with --enable-return-routed-experts (routed experts are returned with each request's output) or enable EPLB, whose load statistics the server logs",
                files_without_rows: files,
                routing_sources: [
                    Source {
                        server_option: "--enable-return-routed-experts",
                        what_would_be_read: "in the EngineCore process (host memory, readable like the scheduler): scheduler.aux_output_connector, whose RoutedExpertsBuffer._rows numpy array holds each scheduled token's expert ids [block, token, layer, top_k] until the request's output takes them (EngineCoreOutput.routed_experts, [seq_len, layer, top_k])",
                        fills: "moe_expert_activations.csv, moe_expert_coselection.csv (pairs among each token's top_k), moe_load_imbalance.csv (per poll); not moe_routing_weights_hist.csv: only expert ids are kept, not their weights",
                        status: "not read yet: no test of it against a real vLLM MoE forward pass exists (issue 11)",
                    },
                    Source {
                        server_option: "--enable-eplb",
                        what_would_be_read: "EplbState.expert_load_pass / expert_load_window on each worker: torch tensors in GPU memory, which only a copy made by the target would bring to the host",
                        fills: "moe_load_imbalance.csv, moe_expert_activations.csv (counts per layer and physical expert)",
                        status: "not observable without modifying the target",
                    },
                ],
            },
        )?;
        Ok(())
    }
}
