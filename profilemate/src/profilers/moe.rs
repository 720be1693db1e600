//! moe_summary.json: what can and cannot be said about Mixture-of-Experts routing from
//! outside the server; and the seeds' four MoE CSV files with their headers, without
//! rows while routing is not read (never invented rows).

use serde::Serialize;

use super::Profiler;
use crate::{
    correlate::Correlated,
    output::{OutputError, SessionDir},
};

/// Path parts of vLLM's fused MoE layer (its Python runs on eager steps only).
const MOE_FILES: &[&str] = &["layers/fused_moe/"];

/// The seeds' MoE files and their columns, in the seeds' order (seed 003; the routing
/// weights file's only named column is `weight`, which its analysis reads).
const FILES: [(&str, &[&str]); 4] = [
    (
        "moe_expert_activations.csv",
        &["layer_idx", "expert_id", "activation_count", "percentage"],
    ),
    (
        "moe_expert_coselection.csv",
        &[
            "layer_idx",
            "expert_id_1",
            "expert_id_2",
            "coselection_count",
        ],
    ),
    (
        "moe_routing_weights_hist.csv",
        &["weight", "count", "layer_idx"],
    ),
    (
        "moe_load_imbalance.csv",
        &["layer_idx", "timestamp_sec", "std_dev", "max_min_ratio"],
    ),
];

/// Where the seeds' analyses look for the same files (`cd moe_expert_tracking/`).
const SEED_DIR: &str = "moe_expert_tracking";

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
#[derive(Default)]
pub struct Moe {
    stacks: u64,
    in_moe: u64,
}

impl Profiler for Moe {
    fn consume(&mut self, record: &Correlated) {
        if let Correlated::PyStack(st) = record {
            self.stacks += 1;
            let moe = st
                .frames
                .iter()
                .any(|f| MOE_FILES.iter().any(|m| f.code.filename.contains(m)));
            self.in_moe += u64::from(moe);
        }
    }

    fn finish(&mut self, dir: &SessionDir) -> Result<Vec<&'static str>, OutputError> {
        let seed_dir = dir.subdir(SEED_DIR)?;
        let mut files = Vec::new();
        for (name, header) in FILES {
            for d in [dir, &seed_dir] {
                d.write_csv(name, header, std::iter::empty::<()>())?;
            }
            files.push(name.to_owned());
            files.push(format!("{SEED_DIR}/{name}"));
        }
        dir.write_json(
            "moe_summary.json",
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
        Ok(vec![
            "moe_summary.json",
            "moe_expert_activations.csv",
            "moe_expert_coselection.csv",
            "moe_routing_weights_hist.csv",
            "moe_load_imbalance.csv",
        ])
    }
}
