//! One profiler per output family. Each consumes correlated records as they arrive and
//! writes its own files at the end of the session.

pub mod cuda_api;
pub mod cuda_graphs;
pub mod forward_pass;

use crate::{
    correlate::Correlated,
    output::{OutputError, SessionDir, TimeBase},
};

/// The two-method shape every profiler has.
pub trait Profiler {
    /// Takes one correlated record.
    fn consume(&mut self, record: &Correlated);
    /// Writes this profiler's files; returns their names.
    fn write(&mut self, dir: &SessionDir, time: TimeBase)
        -> Result<Vec<&'static str>, OutputError>;
}

/// The default set, in output order.
#[must_use]
pub fn default_set() -> Vec<Box<dyn Profiler>> {
    vec![
        Box::new(forward_pass::ForwardPass::default()),
        Box::new(cuda_graphs::CudaGraphs::default()),
        Box::new(cuda_api::CudaApi::default()),
    ]
}
