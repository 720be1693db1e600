//! Every vLLM name the bundle relies on, each with the module and class that own it: what
//! `profilemate vllm-names` prints and `tests/vllm_names/check.py` verifies against each
//! release's real source (a name that moved fails the check, naming it).
//!
//! Owns only the owner of each name (the reader code knows it implicitly: `running` is
//! read on the scheduler); the names themselves stay in their tables.

use serde::Serialize;

use super::{
    bundle::{self, Bundle},
    events::EventRole,
};

/// A function frame the bundle matches: `file` is a path suffix whose `*` segments match
/// any one directory or file (`*` alone: any vLLM file); `qualname` is exact, `*.name`
/// (any class's `name`), or with `matching` "suffix" the end of a qualname
/// (`.execute_model`, as the batch reader matches).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FunctionName {
    /// Path suffix (`vllm/v1/engine/core.py`, `*` wildcards), or `*` for any vLLM file.
    pub file: &'static str,
    /// Qualname pattern.
    pub qualname: &'static str,
    /// `exact` or `suffix`.
    pub matching: &'static str,
    /// `all`: present in every release of the range; `any`: in at least one (operation
    /// rules are a union: older releases lack newer names, which then never match).
    pub required: &'static str,
    /// Which table uses it.
    pub table: &'static str,
}

/// An attribute read on an object of `class` (defined in `module`, or a subclass there).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AttributeName {
    /// Module path of the class (`vllm/v1/core/sched/scheduler.py`).
    pub module: &'static str,
    /// Class name.
    pub class: &'static str,
    /// Attribute (`self.X` assigned in a method, a dataclass field or a class attribute).
    pub attr: &'static str,
}

/// An enum member and the value the bundle assumes.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct EnumValue {
    /// Module path.
    pub module: &'static str,
    /// Enum class.
    pub class: &'static str,
    /// Member.
    pub member: &'static str,
    /// Value (members defined with `enum.auto()` count from 1 in order).
    pub value: i64,
}

/// The whole manifest.
#[derive(Debug, Serialize)]
pub struct Manifest {
    /// The bundle's name (its release range).
    pub bundle: &'static str,
    /// Frames.
    pub functions: Vec<FunctionName>,
    /// Attributes.
    pub attributes: Vec<AttributeName>,
    /// Enum values.
    pub enums: Vec<EnumValue>,
}

const SCHEDULER: &str = "vllm/v1/core/sched/scheduler.py";
const OUTPUT: &str = "vllm/v1/core/sched/output.py";

fn all(table: &'static str, file: &'static str, names: &[&'static str]) -> Vec<FunctionName> {
    names
        .iter()
        .copied()
        .map(|q| FunctionName {
            file,
            qualname: q,
            matching: if table == "batch" { "suffix" } else { "exact" },
            required: "all",
            table,
        })
        .collect()
}

fn functions(bundle: &Bundle) -> Vec<FunctionName> {
    let s = bundle.state;
    let b = bundle.batch;
    let mut out = all("state", "vllm/v1/engine/core.py", s.engine_frames);
    out.extend(all("state", SCHEDULER, s.scheduler_frames));
    let watched: Vec<&'static str> = bundle.calls.watched.iter().map(|(q, _)| *q).collect();
    out.extend(all("calls", SCHEDULER, &watched));
    out.extend(all("batch", "*", b.output_frames));
    out.extend(all(
        "batch",
        "vllm/v1/engine/core.py",
        b.pipelined_step_frames,
    ));
    out.extend(all("batch", "*", b.descriptor_frames));
    for r in bundle.events {
        let mut rows = all("events", r.file, r.names);
        // A step's end must be recognizable in every release; helper events are a union
        // (newer releases record more of them).
        if r.role != EventRole::StepEnd {
            rows.iter_mut().for_each(|f| f.required = "any");
        }
        out.extend(rows);
    }
    // Rows on other packages' files (PyTorch's module call) are not vLLM's to check.
    for r in bundle
        .ops
        .iter()
        .filter(|r| r.file.starts_with(bundle.package))
    {
        out.extend(r.names.iter().copied().map(|q| FunctionName {
            file: r.file,
            qualname: q,
            matching: "exact",
            required: "any",
            table: "ops",
        }));
    }
    out
}

fn attr(module: &'static str, class: &'static str, attr: &'static str) -> AttributeName {
    AttributeName {
        module,
        class,
        attr,
    }
}

fn attributes(bundle: &Bundle) -> Vec<AttributeName> {
    let s = bundle.state;
    let r = &s.request;
    let b = bundle.batch;
    let pool = "vllm/v1/core/block_pool.py";
    let request = "vllm/v1/request.py";
    let graphs = "vllm/v1/worker/gpu/cudagraph_utils.py";
    let mut out = vec![attr(
        "vllm/v1/engine/core.py",
        "EngineCore",
        s.engine_scheduler,
    )];
    for a in [
        s.running,
        s.waiting,
        s.requests,
        s.kv_cache_manager,
        s.current_step,
        s.max_num_running_reqs,
        s.max_num_scheduled_tokens,
    ] {
        out.push(attr(SCHEDULER, "Scheduler", a));
    }
    out.push(attr(
        "vllm/v1/core/kv_cache_manager.py",
        "KVCacheManager",
        s.block_pool,
    ));
    for a in [s.num_gpu_blocks, s.free_block_queue, s.prefix_cache_map] {
        out.push(attr(pool, "BlockPool", a));
    }
    out.push(attr(pool, "BlockHashToBlockMap", s.prefix_cache_dict));
    for a in [s.block_id, s.ref_cnt] {
        out.push(attr("vllm/v1/core/kv_cache_utils.py", s.block_type, a));
    }
    out.push(attr(
        "vllm/v1/core/kv_cache_utils.py",
        "FreeKVCacheBlockQueue",
        s.num_free_blocks,
    ));
    for a in [
        r.request_id,
        r.status,
        r.num_preemptions,
        r.num_computed_tokens,
        r.num_prompt_tokens,
        r.output_token_ids,
        r.arrival_time,
    ] {
        out.push(attr(request, "Request", a));
    }
    for a in [
        b.total_num_scheduled_tokens,
        b.num_scheduled_tokens,
        b.scheduled_new_reqs,
        b.scheduled_cached_reqs,
        b.scheduled_spec_decode_tokens,
        b.scheduled_encoder_inputs,
        b.preempted_req_ids,
        b.finished_req_ids,
    ] {
        out.push(attr(OUTPUT, b.output_type, a));
    }
    out.push(attr(OUTPUT, "NewRequestData", b.new_req_id));
    out.push(attr(OUTPUT, "NewRequestData", b.new_req_prompt));
    for a in [b.cached_req_ids, b.resumed_req_ids, b.num_output_tokens] {
        out.push(attr(OUTPUT, "CachedRequestData", a));
    }
    for a in [
        b.desc_mode,
        b.desc_num_tokens,
        b.desc_num_reqs,
        b.desc_uniform,
        b.desc_loras,
    ] {
        out.push(attr(graphs, "BatchExecutionDescriptor", a));
    }
    out
}

fn enums(bundle: &Bundle) -> Vec<EnumValue> {
    bundle
        .state
        .request
        .statuses
        .iter()
        .map(|&(value, member)| EnumValue {
            module: "vllm/v1/request.py",
            class: "RequestStatus",
            member,
            value,
        })
        .collect()
}

/// The manifest of the bundle a session starts with.
#[must_use]
pub fn manifest() -> Manifest {
    let bundle = bundle::session_default();
    Manifest {
        bundle: bundle.name,
        functions: functions(bundle),
        attributes: attributes(bundle),
        enums: enums(bundle),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_covers_every_table() {
        let m = manifest();
        for table in ["state", "batch", "events", "ops", "calls"] {
            assert!(m.functions.iter().any(|f| f.table == table), "{table}");
        }
        assert!(m
            .attributes
            .iter()
            .any(|a| a.class == "Scheduler" && a.attr == "running"));
        assert_eq!(
            m.enums.len(),
            crate::vllm::v0_33::STATE.request.statuses.len()
        );
    }
}
