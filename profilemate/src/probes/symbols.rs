//! Resolves exported function symbols of a shared library to the FILE offsets uprobes take.

use std::{collections::HashMap, fs::File, path::Path};

use object::{Object, ObjectSegment, ObjectSymbol};

/// A library file could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ELF object `object` can parse.
    #[error("cannot parse ELF {path}")]
    Elf {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: object::Error,
    },
}

/// Name -> file offset of the defined function symbols a caller asked for.
#[derive(Debug, Default, Clone)]
pub struct SymbolOffsets {
    offsets: HashMap<String, u64>,
}

impl SymbolOffsets {
    /// File offset of `name`, if the library defines it.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<u64> {
        self.offsets.get(name).copied()
    }

    /// Reads `path` and resolves each of `wanted` (dynamic symbols first, then .symtab).
    pub fn resolve(path: &Path, wanted: &[&str]) -> Result<Self, SymbolError> {
        let display = path.display().to_string();
        let file = File::open(path).map_err(|source| SymbolError::Io {
            path: display.clone(),
            source,
        })?;
        // SAFETY: read-only private mapping; the file is a shared library that the target has
        // mapped and is not expected to be truncated while we parse it.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| SymbolError::Io {
            path: display.clone(),
            source,
        })?;
        let elf = object::File::parse(&*map).map_err(|source| SymbolError::Elf {
            path: display,
            source,
        })?;
        let segments: Vec<(u64, u64, u64)> = elf
            .segments()
            .map(|s| (s.address(), s.size(), s.file_range().0))
            .collect();
        let to_file_offset = |addr: u64| {
            segments
                .iter()
                .find(|(va, size, _)| addr >= *va && addr < va + size)
                .map(|(va, _, off)| addr - va + off)
        };
        let mut offsets = HashMap::new();
        for sym in elf.dynamic_symbols().chain(elf.symbols()) {
            if sym.is_undefined() || sym.address() == 0 {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            // Versioned names (`sym@@VER`) appear only in .symtab of some builds.
            let base = name.split('@').next().unwrap_or(name);
            if !wanted.contains(&base) || offsets.contains_key(base) {
                continue;
            }
            if let Some(off) = to_file_offset(sym.address()) {
                offsets.insert(base.to_owned(), off);
            }
        }
        Ok(Self { offsets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_libc_exports_to_file_offsets() {
        // libc is mapped into every test process; find it through our own maps.
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let libc = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("libc.so"))
            .expect("libc mapped");
        let syms = SymbolOffsets::resolve(Path::new(libc), &["malloc", "free", "no_such_symbol_x"])
            .expect("parse libc");
        assert!(syms.get("malloc").is_some());
        assert!(syms.get("free").is_some());
        assert_eq!(syms.get("no_such_symbol_x"), None);
    }
}
