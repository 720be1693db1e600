//! Why a session could not start or could not write its results.
//!
//! Owns the session's own failures and wraps those of the modules it drives (preflight,
//! calibration, probes, output) unchanged, so the command line prints the same chain.

use crate::{
    calibrate::file::CalibrationError, output::OutputError, preflight::PreflightError,
    probes::ProbeError,
};

/// A session failure.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A check before anything was loaded failed.
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// The calibration named on the command line is not usable.
    #[error(transparent)]
    Calibration(#[from] CalibrationError),
    /// The eBPF programs or maps could not be set up.
    #[error(transparent)]
    Probes(#[from] ProbeError),
    /// The session directory or a file in it could not be written.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A thread or the async runtime could not start.
    #[error("cannot start the {what}")]
    Start {
        /// What (`async runtime`, `pipeline thread`, ...).
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stop signal's handler could not be installed.
    #[error("cannot install the {signal} handler")]
    Signal {
        /// `SIGINT`, ...
        signal: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No process's memory maps could be read, so no CUDA library can be found.
    #[error(
        "cannot read the memory maps of pid {pid} ({why}), so no CUDA library can be found in \
         {who}: run profilemate as root (sudo), or with the capabilities {caps}"
    )]
    MapsUnreadable {
        /// The process.
        pid: u32,
        /// The read error.
        why: String,
        /// `pid N or its children`.
        who: String,
        /// The capabilities an attach needs.
        caps: String,
    },
    /// No CUDA library is mapped in the tree (and `--wait` was not given).
    #[error(
        "no CUDA library (libcudart*.so*, libcuda.so*) is mapped in {who}: the process has not \
         initialized CUDA yet, or this is not the process that runs the model. Pass --wait to \
         keep watching, or attach to the EngineCore/Worker pid"
    )]
    NoCudaLibrary {
        /// `pid N or its children`.
        who: String,
    },
    /// The pipeline thread panicked: nothing it held can be written.
    #[error("the pipeline thread panicked; nothing could be written")]
    PipelinePanicked,
    /// The threads were asked to stop twice (a bug).
    #[error("the session's threads were stopped twice")]
    StoppedTwice,
}
