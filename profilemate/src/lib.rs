//! ProfileMate: profile a running vLLM server from outside with eBPF.
//!
//! Data flows forward through the modules in this order:
//! `discovery` (which processes and CUDA libraries) -> `probes` (load, attach, drain the ring
//! buffer) -> `correlate` (calls -> steps, graphs, API statistics) -> `profilers` (one per
//! output family) -> `output` (session directory, CSV/JSON writers). Every stage passes on
//! the types of `model`, a leaf that imports nothing else from the crate, so the module
//! graph has no circle (`cargo xtask modgraph` checks; docs/DESIGN.md shows the map).
//! `report` reads a finished session directory back into the report page, trace and
//! speedscope files. Readers beside the flow: `python` (the CPython reader: interpreter
//! discovery, one row per version, code objects) and `vllm` (one name bundle per vLLM
//! range and the readers that use it). `session` wires them together for `profilemate
//! attach` (and `top`, its live view) and returns the finished session; `main.rs` prints.
//! `doctor` checks beforehand whether an attach can work.

// A failed terminal write must never end a session: every line goes through
// `console`, which cannot panic (unit tests may still print their skips).
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod calibrate;
pub mod config;
pub mod console;
pub mod correlate;
pub mod discovery;
pub mod doctor;
pub mod model;
pub mod output;
pub mod preflight;
pub mod probes;
pub mod profilers;
pub mod python;
pub mod report;
pub mod session;
pub mod top;
pub mod verdict;
pub mod vllm;

/// Tracer version written into metadata.json.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
