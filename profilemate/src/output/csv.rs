//! The CSV and JSON files of a session directory: every row family's file name and columns
//! (each column defined once, by the row type: [`csv_family!`]), and [`Files`], the sink
//! that writes rows, summaries and text into the directory.
//!
//! Owns file names, headers and the writing; not what the rows say (the profilers), nor
//! the directory's safe creation (`SessionDir`).

use std::{
    collections::HashMap,
    fs::File,
    io::{BufWriter, Write},
};

use serde::Serialize;

use super::{
    cells,
    sink::{Row, Sink, Summary},
    OutputError, SessionDir,
};

/// Every file a session's profilers produce, by name: row families (`*.csv`), summaries
/// (`*.json`) and text outputs. metadata.json is the session's own.
pub mod files {
    /// `batch_utilization.csv`.
    pub const BATCH_UTILIZATION: &str = "batch_utilization.csv";
    /// `batch_utilization_summary.json`.
    pub const BATCH_UTILIZATION_SUMMARY: &str = "batch_utilization_summary.json";
    /// `cpu_operations_timing.csv`.
    pub const CPU_OPERATIONS_TIMING: &str = "cpu_operations_timing.csv";
    /// `cpu_profile.folded`.
    pub const CPU_PROFILE: &str = "cpu_profile.folded";
    /// `cpu_timing_summary.json`.
    pub const CPU_TIMING_SUMMARY: &str = "cpu_timing_summary.json";
    /// `cuda_api_summary.json`.
    pub const CUDA_API_SUMMARY: &str = "cuda_api_summary.json";
    /// `cuda_graph_captures.csv`.
    pub const CUDA_GRAPH_CAPTURES: &str = "cuda_graph_captures.csv";
    /// `cuda_graph_timeline.csv`.
    pub const CUDA_GRAPH_TIMELINE: &str = "cuda_graph_timeline.csv";
    /// `cuda_graph_usage.csv`.
    pub const CUDA_GRAPH_USAGE: &str = "cuda_graph_usage.csv";
    /// `encoder_decoder_summary.json`.
    pub const ENCODER_DECODER_SUMMARY: &str = "encoder_decoder_summary.json";
    /// `encoder_decoder_timing.csv`.
    pub const ENCODER_DECODER_TIMING: &str = "encoder_decoder_timing.csv";
    /// `forward_pass_summary.json`.
    pub const FORWARD_PASS_SUMMARY: &str = "forward_pass_summary.json";
    /// `forward_pass_timing.csv`.
    pub const FORWARD_PASS_TIMING: &str = "forward_pass_timing.csv";
    /// `gc_pauses.csv`.
    pub const GC_PAUSES: &str = "gc_pauses.csv";
    /// `gc_summary.json`.
    pub const GC_SUMMARY: &str = "gc_summary.json";
    /// `kv_cache_evictions.csv`.
    pub const KV_CACHE_EVICTIONS: &str = "kv_cache_evictions.csv";
    /// `kv_cache_evictions_summary.json`.
    pub const KV_CACHE_EVICTIONS_SUMMARY: &str = "kv_cache_evictions_summary.json";
    /// `moe_expert_activations.csv`.
    pub const MOE_EXPERT_ACTIVATIONS: &str = "moe_expert_activations.csv";
    /// `moe_expert_coselection.csv`.
    pub const MOE_EXPERT_COSELECTION: &str = "moe_expert_coselection.csv";
    /// `moe_routing_weights_hist.csv`.
    pub const MOE_ROUTING_WEIGHTS_HIST: &str = "moe_routing_weights_hist.csv";
    /// `moe_load_imbalance.csv`.
    pub const MOE_LOAD_IMBALANCE: &str = "moe_load_imbalance.csv";
    /// The subdirectory where the seeds' MoE analyses look for the same files
    /// (`cd moe_expert_tracking/`).
    pub const MOE_SEED_DIR: &str = "moe_expert_tracking";
    /// `kv_cache_summary.txt`.
    pub const KV_CACHE_SUMMARY: &str = "kv_cache_summary.txt";
    /// `kv_cache_usage.csv`.
    pub const KV_CACHE_USAGE: &str = "kv_cache_usage.csv";
    /// `moe_summary.json`.
    pub const MOE_SUMMARY: &str = "moe_summary.json";
    /// `preemption_events.csv`.
    pub const PREEMPTION_EVENTS: &str = "preemption_events.csv";
    /// `preemption_summary.json`.
    pub const PREEMPTION_SUMMARY: &str = "preemption_summary.json";
    /// `request_lifecycle.csv`.
    pub const REQUEST_LIFECYCLE: &str = "request_lifecycle.csv";
    /// `scheduler_state.csv`.
    pub const SCHEDULER_STATE: &str = "scheduler_state.csv";
}

/// A row family: the file its rows go to and its columns, in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Family {
    /// File name in the session directory.
    pub file: &'static str,
    /// Column names, in order (the row type's fields).
    pub columns: &'static [&'static str],
    /// A subdirectory that holds a copy of the file too (where other tools look for it).
    pub mirror: Option<&'static str>,
}

/// A row type of a family.
pub trait FamilyRow: Serialize + Any {
    /// Its family.
    const FAMILY: Family;
}

use std::any::Any;

impl<R: FamilyRow> Row for R {
    fn family(&self) -> &'static Family {
        family_of::<R>()
    }

    fn serialize_into(&self, w: &mut ::csv::Writer<BufWriter<File>>) -> ::csv::Result<()> {
        w.serialize(cells::Guarded(self))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self)
    }
}

/// The `'static` family of `R`.
#[must_use]
pub fn family_of<R: FamilyRow>() -> &'static Family {
    // A const promoted to 'static.
    struct Holder<R>(std::marker::PhantomData<R>);
    impl<R: FamilyRow> Holder<R> {
        const FAMILY: &'static Family = &R::FAMILY;
    }
    Holder::<R>::FAMILY
}

/// Declares a row struct (Serialize) and its family: the file and the columns, which are
/// the field names in order, so each column is spelled once.
#[macro_export]
macro_rules! csv_family {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident in $file:path, also in $mirror:path {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $crate::csv_family!(@ [$(#[$meta])*] $vis $name, $file, Some($mirror), { $( [$(#[$fmeta])*] $fvis $field : $ty ),* });
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident in $file:path {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $crate::csv_family!(@ [$(#[$meta])*] $vis $name, $file, None, { $( [$(#[$fmeta])*] $fvis $field : $ty ),* });
    };
    (@ [$(#[$meta:meta])*] $vis:vis $name:ident, $file:expr, $mirror:expr,
        { $( [$(#[$fmeta:meta])*] $fvis:vis $field:ident : $ty:ty ),* }
    ) => {
        $(#[$meta])*
        #[derive(serde::Serialize)]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field: $ty ),*
        }

        impl $crate::output::csv::FamilyRow for $name {
            const FAMILY: $crate::output::csv::Family = $crate::output::csv::Family {
                file: $file,
                columns: &[$(stringify!($field)),*],
                mirror: $mirror,
            };
        }
    };
}

/// Creates `family`'s file in `dir` and writes its header.
fn header(dir: &SessionDir, family: &Family) -> Result<CsvFile, OutputError> {
    let path = dir.path().join(family.file);
    let mut writer = ::csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(dir.create_file(family.file)?);
    writer
        .write_record(family.columns)
        .map_err(|source| OutputError::Csv { path, source })?;
    Ok(CsvFile {
        writer,
        error: None,
    })
}

/// One open CSV file.
struct CsvFile {
    writer: ::csv::Writer<BufWriter<File>>,
    error: Option<::csv::Error>,
}

/// The session directory as a sink: one CSV file per family (header written when the
/// family opens, rows streamed), one pretty JSON file per summary, text files as given.
pub struct Files {
    dir: SessionDir,
    /// Per family file: its writers (the file, and its copy in the mirror directory).
    csv: HashMap<&'static str, Vec<CsvFile>>,
    /// Mirror directories made so far.
    subdirs: HashMap<&'static str, SessionDir>,
    written: Vec<&'static str>,
}

impl Files {
    /// Writes into `dir`.
    #[must_use]
    pub fn new(dir: SessionDir) -> Self {
        Self {
            dir,
            csv: HashMap::new(),
            subdirs: HashMap::new(),
            written: Vec::new(),
        }
    }
}

impl Sink for Files {
    fn open(&mut self, family: &'static Family) -> Result<(), OutputError> {
        let mut writers = vec![header(&self.dir, family)?];
        if let Some(mirror) = family.mirror {
            if !self.subdirs.contains_key(mirror) {
                let sub = self.dir.subdir(mirror)?;
                self.subdirs.insert(mirror, sub);
            }
            if let Some(sub) = self.subdirs.get(mirror) {
                writers.push(header(sub, family)?);
            }
        }
        self.csv.insert(family.file, writers);
        self.written.push(family.file);
        Ok(())
    }

    fn row(&mut self, row: &dyn Row) {
        for f in self.csv.get_mut(row.family().file).into_iter().flatten() {
            if f.error.is_none() {
                if let Err(e) = row.serialize_into(&mut f.writer) {
                    f.error = Some(e);
                }
            }
        }
    }

    fn summary(&mut self, file: &'static str, summary: &dyn Summary) -> Result<(), OutputError> {
        let path = self.dir.path().join(file);
        let mut w = self.dir.create_file(file)?;
        summary.write_json(&mut w).map_err(|e| OutputError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        w.write_all(b"\n")
            .and_then(|()| w.flush())
            .map_err(|source| OutputError::Io { path, source })?;
        self.written.push(file);
        Ok(())
    }

    fn text(&mut self, file: &'static str, text: &str) -> Result<(), OutputError> {
        self.dir.write_text(file, text)?;
        self.written.push(file);
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<&'static str>, OutputError> {
        for (file, f) in self
            .csv
            .iter_mut()
            .flat_map(|(n, fs)| fs.iter_mut().map(move |f| (n, f)))
        {
            let path = self.dir.path().join(file);
            if let Some(source) = f.error.take() {
                return Err(OutputError::Csv { path, source });
            }
            f.writer
                .flush()
                .map_err(|source| OutputError::Io { path, source })?;
        }
        Ok(std::mem::take(&mut self.written))
    }
}
