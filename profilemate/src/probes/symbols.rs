//! Resolves exported function symbols of a shared library to the FILE offsets uprobes take.
//!
//! Owns ELF parsing of dynamic symbols; not which symbols are probed (`probes`).

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
        Self::resolve_in(path, &map, wanted)
    }

    /// `resolve` over the bytes of an ELF file already read (`path` names it in errors
    /// only), so the parsing of untrusted file contents can be fuzzed apart from the reading.
    pub fn resolve_in(path: &Path, data: &[u8], wanted: &[&str]) -> Result<Self, SymbolError> {
        let elf = parse_elf(path, data)?;
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
/// (uprobes take file offsets). Only the part of a segment the file holds has one: an address
/// in its zero-filled tail (`.bss`) has none. Segment fields come from the file, so no sum
/// here may overflow.
#[must_use]
pub fn file_offset(elf: &object::File<'_>, addr: u64) -> Option<u64> {
    elf.segments().find_map(|s| {
        let delta = addr.checked_sub(s.address())?;
        let (file_start, file_size) = s.file_range();
        if delta >= s.size() || delta >= file_size {
            return None;
        }
        file_start.checked_add(delta)
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

    /// A 64-bit little-endian ELF file with one PT_LOAD segment per (offset, vaddr, filesz,
    /// memsz) and no sections.
    fn elf_with_segments(segments: &[(u64, u64, u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        let put16 = |b: &mut Vec<u8>, at: usize, v: u16| {
            b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        };
        put16(&mut b, 16, 3); // ET_DYN
        put16(&mut b, 18, 0x3e); // x86-64
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // program headers follow
        put16(&mut b, 52, 64);
        put16(&mut b, 54, 56);
        put16(&mut b, 56, segments.len() as u16);
        put16(&mut b, 58, 64);
        for &(offset, vaddr, filesz, memsz) in segments {
            b.extend(1u32.to_le_bytes()); // PT_LOAD
            b.extend(5u32.to_le_bytes()); // R + X
            for v in [offset, vaddr, vaddr, filesz, memsz, 0x1000] {
                b.extend(v.to_le_bytes());
            }
        }
        b
    }

    #[test]
    fn a_segment_at_the_top_of_the_address_space_has_no_file_offset_overflow() {
        // Found by the usdt_notes fuzz target: `vaddr + memsz` and `offset + delta`
        // overflowed on segments whose fields came from a corrupt file.
        let data = elf_with_segments(&[
            (0x1000, u64::MAX - 0x10, 0x100, 0x100),
            (u64::MAX - 1, 0x4000, 0x100, 0x100),
            (0x2000, 0x8000, 0x100, 0x100),
        ]);
        let elf = parse_elf(Path::new("corrupt.so"), &data).expect("parses");
        assert_eq!(file_offset(&elf, u64::MAX - 8), Some(0x1008));
        assert_eq!(file_offset(&elf, u64::MAX), Some(0x1010));
        assert_eq!(
            file_offset(&elf, 0x4010),
            None,
            "offset + delta past u64::MAX"
        );
        assert_eq!(file_offset(&elf, 0x8010), Some(0x2010));
    }

    #[test]
    fn an_address_in_a_segments_zero_filled_tail_has_no_file_offset() {
        let data = elf_with_segments(&[(0x3000, 0x5000, 0x100, 0x400)]);
        let elf = parse_elf(Path::new("bss.so"), &data).expect("parses");
        assert_eq!(file_offset(&elf, 0x50ff), Some(0x30ff));
        assert_eq!(file_offset(&elf, 0x5100), None, ".bss is not in the file");
        assert_eq!(file_offset(&elf, 0x4fff), None);
    }
}
