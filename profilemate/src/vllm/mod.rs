//! vLLM from outside: one name bundle per vLLM version range (`bundle`, `v0_33`), chosen in
//! one place (`bundle::choose`), and the readers that use it: operations of a Python stack
//! (`ops`), step-boundary events (`events`), scheduler state and requests (`state`,
//! `requests`), each step's batch (`batch`), watched scheduler methods (`calls`), /metrics
//! (`metrics`) and the watcher thread that polls them (`watcher`).
//!
//! Owns reading vLLM's objects and names; not correlation (`correlate`) nor what the
//! readings mean for the outputs (`profilers`).
//!
//! Names are matched, never assumed: a name missing from a target's vLLM simply never
//! matches, and the session reports when no vLLM function was seen at all.

pub mod batch;
pub mod blocks;
pub mod bundle;
pub mod calls;
pub mod events;
pub mod metrics;
pub mod names;
pub mod ops;
pub mod requests;
pub mod state;
pub mod v0_33;
pub mod version;
pub mod watcher;
