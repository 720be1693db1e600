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
        let map = map_file(path)?;
        let elf = parse_elf(path, &map)?;
        let to_file_offset = |addr: u64| file_offset(&elf, addr);
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

/// Maps an ELF file read-only.
pub fn map_file(path: &Path) -> Result<memmap2::Mmap, SymbolError> {
    let io = |source| SymbolError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: read-only private mapping of a binary the target has mapped; it is not expected
    // to be truncated while we parse it (a truncation would fault this process, not the target).
    unsafe { memmap2::Mmap::map(&file) }.map_err(io)
}

/// Parses a mapped ELF file.
pub fn parse_elf<'a>(path: &Path, data: &'a [u8]) -> Result<object::File<'a>, SymbolError> {
    object::File::parse(data).map_err(|source| SymbolError::Elf {
        path: path.display().to_string(),
        source,
    })
}

/// The file offset of virtual address `addr`, through the loadable segment containing it
/// (uprobes take file offsets).
#[must_use]
pub fn file_offset(elf: &object::File<'_>, addr: u64) -> Option<u64> {
    elf.segments().find_map(|s| {
        let (va, size) = (s.address(), s.size());
        (addr >= va && addr < va + size).then(|| addr - va + s.file_range().0)
    })
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
