//! What profilers hand their results to: typed rows, summaries and text, received by a
//! [`Sink`]. A profiler computes and never opens a file; each output format is one sink.
//!
//! Owns the `Sink` trait, the row and summary views a sink receives, and [`Sinks`], the
//! fan-out the session gives every profiler. Does not own any format: CSV and JSON files
//! are `csv`'s, row counts `counts`'s.

use std::any::Any;

use serde::Serialize;

use super::{csv::Family, OutputError};

/// One row of a family, as a sink receives it.
pub trait Row: Any {
    /// Its family: file name and columns.
    fn family(&self) -> &'static Family;
    /// Serializes the row (its cells in column order).
    ///
    /// # Errors
    ///
    /// What the serializer reports.
    fn serialize_into(
        &self,
        w: &mut ::csv::Writer<std::io::BufWriter<std::fs::File>>,
    ) -> ::csv::Result<()>;
    /// The typed row, for sinks that read it.
    fn as_any(&self) -> &dyn Any;
    /// The row as a JSON object (column -> value), for formats other than CSV.
    ///
    /// # Errors
    ///
    /// What the serializer reports.
    fn json(&self) -> serde_json::Result<serde_json::Value>;
}

/// A summary (a JSON document), as a sink receives it.
pub trait Summary: Any {
    /// Writes it as pretty JSON.
    ///
    /// # Errors
    ///
    /// What the serializer or the writer reports.
    fn write_json(&self, w: &mut dyn std::io::Write) -> serde_json::Result<()>;
    /// The typed summary, for sinks that read it.
    fn as_any(&self) -> &dyn Any;
}

impl<T: Serialize + Any> Summary for T {
    fn write_json(&self, w: &mut dyn std::io::Write) -> serde_json::Result<()> {
        serde_json::to_writer_pretty(w, self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Receives what the profilers produce. Rows stream in as records arrive; summaries and
/// text come at the end. Only `row` is required; a sink ignores what it does not use.
pub trait Sink: Send {
    /// Rows of `family` will come (called once per family before any row: a file format
    /// writes its header then, so a family without rows still has its file).
    ///
    /// # Errors
    ///
    /// The sink cannot take the family (a file cannot be created).
    fn open(&mut self, _family: &'static Family) -> Result<(), OutputError> {
        Ok(())
    }
    /// One row.
    fn row(&mut self, row: &dyn Row);
    /// A summary named `file`.
    ///
    /// # Errors
    ///
    /// It cannot be written.
    fn summary(&mut self, _file: &'static str, _summary: &dyn Summary) -> Result<(), OutputError> {
        Ok(())
    }
    /// A text output named `file`.
    ///
    /// # Errors
    ///
    /// It cannot be written.
    fn text(&mut self, _file: &'static str, _text: &str) -> Result<(), OutputError> {
        Ok(())
    }
    /// Completes what was streamed; the files written, in order.
    ///
    /// # Errors
    ///
    /// A row could not be written, or a file not completed.
    fn finish(&mut self) -> Result<Vec<&'static str>, OutputError> {
        Ok(Vec::new())
    }
}

/// Every sink of a session, in order; itself a sink that hands everything to each.
#[derive(Default)]
pub struct Sinks(pub Vec<Box<dyn Sink>>);

impl Sink for Sinks {
    fn open(&mut self, family: &'static Family) -> Result<(), OutputError> {
        self.0.iter_mut().try_for_each(|s| s.open(family))
    }

    fn row(&mut self, row: &dyn Row) {
        for s in &mut self.0 {
            s.row(row);
        }
    }

    fn summary(&mut self, file: &'static str, summary: &dyn Summary) -> Result<(), OutputError> {
        self.0.iter_mut().try_for_each(|s| s.summary(file, summary))
    }

    fn text(&mut self, file: &'static str, text: &str) -> Result<(), OutputError> {
        self.0.iter_mut().try_for_each(|s| s.text(file, text))
    }

    fn finish(&mut self) -> Result<Vec<&'static str>, OutputError> {
        let mut files = Vec::new();
        for s in &mut self.0 {
            files.extend(s.finish()?);
        }
        Ok(files)
    }
}

/// A sink that keeps nothing (a profiler run for its side effects, tests).
pub struct Discard;

impl Sink for Discard {
    fn row(&mut self, _row: &dyn Row) {}
}

/// Keeps everything it is given as JSON (tests: what profilers hand over, without files).
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Collect {
    /// Families opened.
    pub opened: Vec<&'static str>,
    /// (file, row).
    pub rows: Vec<(&'static str, serde_json::Value)>,
    /// (file, summary).
    pub summaries: Vec<(&'static str, serde_json::Value)>,
}

#[cfg(test)]
impl Collect {
    /// The rows of `file`.
    pub fn rows_of(&self, file: &str) -> Vec<&serde_json::Value> {
        self.rows
            .iter()
            .filter(|r| r.0 == file)
            .map(|r| &r.1)
            .collect()
    }

    /// The summary named `file`.
    pub fn summary(&self, file: &str) -> Option<&serde_json::Value> {
        self.summaries.iter().find(|s| s.0 == file).map(|s| &s.1)
    }
}

#[cfg(test)]
impl Sink for Collect {
    fn open(&mut self, family: &'static Family) -> Result<(), OutputError> {
        self.opened.push(family.file);
        Ok(())
    }

    fn row(&mut self, row: &dyn Row) {
        let value = row.json().unwrap_or_default();
        self.rows.push((row.family().file, value));
    }

    fn summary(&mut self, file: &'static str, summary: &dyn Summary) -> Result<(), OutputError> {
        let mut bytes = Vec::new();
        summary
            .write_json(&mut bytes)
            .map_err(|e| OutputError::Io {
                path: file.into(),
                source: e.into(),
            })?;
        let value = serde_json::from_slice(&bytes).unwrap_or_default();
        self.summaries.push((file, value));
        Ok(())
    }
}
