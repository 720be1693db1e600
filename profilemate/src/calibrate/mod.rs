//! `profilemate calibrate`: on a GPU machine, measure how far the attach's probe-derived
//! times are from the GPU's, for this machine and driver, and write them to a calibration
//! file that `attach` reads to state (and bound) its errors.
//!
//! Owns: the calibration as a whole: `gpu` (the driver API through cudarc, loaded at run
//! time, never libcudart), `trace` (the attach's own probes attached to this process),
//! `measure` (the patterns and statistics) and `file` (the versioned schema, its checks and
//! its default location). Does not own: how an attach uses the figures (`session` names the
//! file in metadata.json, `profilers::forward_pass` states the bound).

pub mod attach;
pub mod file;
pub mod gpu;
pub mod measure;
pub mod trace;

pub use file::{default_path, Calibration, CalibrationError};
pub use measure::{run, CalibrateError, Options};
