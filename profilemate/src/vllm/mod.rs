//! vLLM names, in one table per vLLM version range: which Python functions make up each
//! operation an operator asks about (schedule, prepare inputs, forward, sampling, ...).
//!
//! Names are matched, never assumed: a name missing from a target's vLLM simply never
//! matches, and the session reports when no vLLM function was seen at all.

pub mod batch;
pub mod blocks;
pub mod calls;
pub mod events;
pub mod metrics;
pub mod names;
pub mod ops;
pub mod requests;
pub mod state;
pub mod version;
pub mod watcher;
