//! One name bundle per vLLM version range, and the one place a bundle is chosen.
//!
//! Owns the `Bundle` struct (every table of one range together: operation rules, event
//! roles, scheduler state, step batch and watched methods) and `choose`. Does not own the
//! tables (one file per range: `v0_33`) nor reading a target's version (`version`).

use super::{
    batch::BatchNames, calls::CallNames, events::EventRule, ops::OpRule, state::StateNames, v0_33,
};

/// Every vLLM name ProfileMate reads, for one range of releases.
#[derive(Debug)]
pub struct Bundle {
    /// The name metadata.json reports (`0.26-0.33`).
    pub name: &'static str,
    /// First (major, minor) release the names were read from.
    pub first: (u32, u32),
    /// Last (major, minor) release the names were read from.
    pub last: (u32, u32),
    /// Python frame -> vLLM operation rules.
    pub ops: &'static [OpRule],
    /// Which functions record step-end and helper CUDA events.
    pub events: &'static [EventRule],
    /// Scheduler, queues, KV cache and request-table names.
    pub state: &'static StateNames,
    /// `SchedulerOutput` and graph-descriptor names.
    pub batch: &'static BatchNames,
    /// Watched scheduler methods.
    pub calls: &'static CallNames,
    /// What a file of the package has in its path (`vllm/`): frames of vLLM's own code.
    pub package: &'static str,
    /// Path parts of the fused Mixture-of-Experts layer (its Python runs on eager steps).
    pub moe_layer_files: &'static [&'static str],
}

impl Bundle {
    /// Whether `filename` (a code object's `co_filename`) is a file of the package.
    #[must_use]
    pub fn is_package_file(&self, filename: &str) -> bool {
        filename.contains(self.package)
    }
}

/// Every bundle, newest range first.
pub static BUNDLES: [&Bundle; 1] = [&v0_33::BUNDLE];

/// A bundle chosen for a version.
#[derive(Debug, Clone, Copy)]
pub struct Choice {
    /// The bundle used.
    pub bundle: &'static Bundle,
    /// Why it may not fit (the version lies outside every range, or cannot be parsed).
    pub note: Option<&'static str>,
}

/// The bundle for a vLLM version: the range that holds it, else the newest (whose names
/// are then tried, and the missing ones reported). `None` (the version is not known yet:
/// the session starts before any process's version is read) gets the newest.
#[must_use]
pub fn choose(version: Option<(u32, u32)>) -> Choice {
    let newest = BUNDLES[0];
    match version {
        None => Choice {
            bundle: newest,
            note: None,
        },
        Some(mm) => match BUNDLES.iter().find(|b| (b.first..=b.last).contains(&mm)) {
            Some(b) => Choice {
                bundle: b,
                note: None,
            },
            None => Choice {
                bundle: newest,
                note: Some("outside every bundle's range"),
            },
        },
    }
}

/// The bundle a session starts with, before any target's version is known.
#[must_use]
pub fn session_default() -> &'static Bundle {
    choose(None).bundle
}
