//! A sink that counts rows per family: what the terminal summary says of steps, graphs and
//! preemptions, without reading a file back. It shows what a new output takes: this file
//! and its registration (`session::sinks`).
//!
//! Owns counting; nothing is written.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use super::{
    csv::{family_of, FamilyRow},
    sink::{Row, Sink},
};

/// Rows per family file name; shared, so the session reads it after the pipeline ran.
#[derive(Clone, Default)]
pub struct RowCounts(pub Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl RowCounts {
    /// Rows of `R`'s family so far.
    #[must_use]
    pub fn of<R: FamilyRow>(&self) -> u64 {
        let file = family_of::<R>().file;
        self.0
            .lock()
            .map_or(0, |m| m.get(file).copied().unwrap_or(0))
    }
}

impl Sink for RowCounts {
    fn row(&mut self, row: &dyn Row) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(row.family().file).or_default() += 1;
        }
    }
}
