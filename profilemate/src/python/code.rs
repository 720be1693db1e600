//! Code objects -> (qualname, filename, first line, line table), read read-only from the
//! target and cached; instruction offsets -> line numbers through the 3.11+ location table.
//!
//! Owns reading and caching code objects; the names and line-table decoding they carry are
//! `model::code`'s, the frames that point at them are the walker's.

use std::{collections::HashMap, sync::Arc};

pub use crate::model::code::{line_for, CodeInfo};

use super::{
    layout::PyLayout,
    remote::{field, ReadError, RemoteMemory},
};

/// Longest string read from the target (characters); longer names are cut.
const MAX_STR_CHARS: u64 = 1024;
/// Largest line table read (bytes); a bigger one is treated as unreadable.
const MAX_LINETABLE: u64 = 1 << 20;
/// Cached code objects per process before the cache is cleared (bounded memory).
const MAX_CACHED_CODES: usize = 200_000;

/// A code object could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CodeError {
    /// Memory read failed (freed object, process gone).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The object is not a code object (its type is not `PyCode_Type`).
    #[error("object at {0:#x} is not a code object")]
    NotCode(u64),
    /// A string field is not a compact str object.
    #[error("unreadable str object at {0:#x}")]
    BadString(u64),
}

impl CodeError {
    /// The read failed because the process has exited: the frame was sampled in its last
    /// moments and read too late, not misread.
    #[must_use]
    pub fn process_gone(&self) -> bool {
        matches!(self, Self::Read(e) if e.gone)
    }
}

/// Reads a compact `str` object (ASCII, Latin-1, UCS-2 or UCS-4), lossy, bounded.
pub fn read_str(mem: &dyn RemoteMemory, layout: &PyLayout, addr: u64) -> Result<String, CodeError> {
    if addr == 0 {
        return Err(CodeError::BadString(addr));
    }
    let len = mem.read_u64(field(addr, layout.unicode_length)?)?;
    let state = mem.read_u32(field(addr, layout.unicode_state)?)?;
    let kind = (state >> 2) & 7;
    let compact = state & (1 << 5) != 0;
    let ascii = state & (1 << 6) != 0;
    if !compact || !matches!(kind, 1 | 2 | 4) || len > (1 << 32) {
        return Err(CodeError::BadString(addr));
    }
    let chars = len.min(MAX_STR_CHARS);
    let header = if ascii {
        layout.unicode_ascii_size
    } else {
        layout.unicode_compact_size
    };
    let data = field(addr, header)?;
    let mut buf = vec![0u8; (chars * u64::from(kind)) as usize];
    mem.read(data, &mut buf)?;
    let s: String = match kind {
        1 if ascii => String::from_utf8_lossy(&buf).into_owned(),
        1 => buf.iter().map(|&b| char::from(b)).collect(),
        2 => buf
            .chunks_exact(2)
            .map(|c| {
                char::from_u32(u32::from(u16::from_le_bytes([c[0], c[1]]))).unwrap_or('\u{fffd}')
            })
            .collect(),
        _ => buf
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('\u{fffd}')
            })
            .collect(),
    };
    Ok(s)
}

/// Reads a `bytes` object, bounded.
fn read_bytes(mem: &dyn RemoteMemory, layout: &PyLayout, addr: u64) -> Result<Vec<u8>, CodeError> {
    let len = mem.read_u64(field(addr, layout.bytes_size)?)?;
    if len > MAX_LINETABLE {
        return Err(CodeError::BadString(addr));
    }
    let mut buf = vec![0u8; len as usize];
    mem.read(field(addr, layout.bytes_data)?, &mut buf)?;
    Ok(buf)
}

/// Reads the code object at `addr`; `code_type` (address of `PyCode_Type`) guards against a
/// freed and reused address.
pub fn read_code(
    mem: &dyn RemoteMemory,
    layout: &PyLayout,
    addr: u64,
    code_type: Option<u64>,
) -> Result<CodeInfo, CodeError> {
    if let Some(t) = code_type {
        if mem.read_u64(field(addr, layout.object_type)?)? != t {
            return Err(CodeError::NotCode(addr));
        }
    }
    let word = |offset| -> Result<u64, ReadError> { mem.read_u64(field(addr, offset)?) };
    let qualname = read_str(mem, layout, word(layout.code_qualname)?)?;
    let filename = read_str(mem, layout, word(layout.code_filename)?)?;
    let first_line = mem.read_i32(field(addr, layout.code_first_line)?)?;
    let linetable = read_bytes(mem, layout, word(layout.code_linetable)?)?;
    Ok(CodeInfo {
        qualname,
        filename,
        first_line,
        linetable,
    })
}

/// Per-process cache of code objects, keyed by address and checked against the first line
/// the kernel read with each frame (a freed code object's address is reused by others).
/// Failures are cached with that first line too, so another object at the address is read.
#[derive(Default)]
pub struct CodeCache {
    codes: HashMap<u64, Cached>,
    /// Code objects read from the target.
    pub reads: u64,
    /// Reads that failed (counted once per address and identity).
    pub failures: u64,
    /// Cached entries replaced because the identity check failed.
    pub reused: u64,
}

enum Cached {
    Read(Arc<CodeInfo>),
    Failed { first_line: i32, error: CodeError },
}

impl CodeCache {
    /// The code object at `addr` whose `co_firstlineno` the kernel saw as `first_line`.
    pub fn get(
        &mut self,
        mem: &dyn RemoteMemory,
        layout: &PyLayout,
        code_type: Option<u64>,
        addr: u64,
        first_line: i32,
    ) -> Result<Arc<CodeInfo>, CodeError> {
        match self.codes.get(&addr) {
            Some(Cached::Read(info)) if info.first_line == first_line => {
                return Ok(Arc::clone(info));
            }
            Some(Cached::Failed {
                first_line: seen,
                error,
            }) if *seen == first_line => return Err(error.clone()),
            Some(Cached::Read(_)) => self.reused += 1,
            Some(Cached::Failed { .. }) | None => {}
        }
        if self.codes.len() >= MAX_CACHED_CODES {
            self.codes.clear();
        }
        self.reads += 1;
        match read_code(mem, layout, addr, code_type) {
            Ok(info) => {
                let info = Arc::new(info);
                self.codes.insert(addr, Cached::Read(Arc::clone(&info)));
                Ok(info)
            }
            Err(error) => {
                self.failures += 1;
                // Nothing can be read from a process that is gone; keep the cache for the living.
                if !error.process_gone() {
                    let failed = Cached::Failed {
                        first_line,
                        error: error.clone(),
                    };
                    self.codes.insert(addr, failed);
                }
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Location table entries as CPython 3.11+ writes them.
    fn entry(code: u8, units: u8) -> u8 {
        0x80 | (code << 3) | (units - 1)
    }

    #[test]
    fn line_table_short_one_line_no_column_long_and_none() {
        let table = vec![
            // 2 units, one-line form, delta +0 (code 10), 2 column bytes
            entry(10, 2),
            1,
            5,
            // 1 unit, one-line form delta +2 (code 12)
            entry(12, 1),
            0,
            3,
            // 3 units, no-column form delta -1 (svarint 3 -> -1)
            entry(13, 3),
            3,
            // 1 unit, no location
            entry(15, 1),
            // 2 units, long form delta +10 (svarint 20), end line 0, cols
            entry(14, 2),
            20,
            0,
            1,
            4,
            // 1 unit, short form (code 0): same line
            entry(0, 1),
            7,
        ];
        let line = |off| line_for(&table, 100, off);
        assert_eq!(line(0), Some(100));
        assert_eq!(line(2), Some(100));
        assert_eq!(line(4), Some(102));
        assert_eq!(line(6), Some(101));
        assert_eq!(line(10), Some(101));
        assert_eq!(line(12), None);
        assert_eq!(line(14), Some(111));
        assert_eq!(line(18), Some(111));
        assert_eq!(line(20), None, "past the end");
    }

    #[test]
    fn malformed_line_tables_do_not_panic() {
        assert_eq!(line_for(&[0x00], 1, 0), None);
        assert_eq!(line_for(&[entry(14, 1), 0xff], 1, 0), None);
        assert_eq!(
            line_for(
                &[entry(14, 1), 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f],
                1,
                0
            ),
            None
        );
        let info = CodeInfo::new("f", "x.py", 7, vec![0x00]);
        assert_eq!(info.line(4), 7);
        assert_eq!(info.line(u32::MAX), 7);
    }

    #[test]
    fn a_one_line_entry_past_i32_max_is_no_line_not_an_overflow() {
        // Found by the line_table fuzz target: a first line near i32::MAX (read from the
        // target's code object) and a one-line entry with delta +2 overflowed.
        let table = [entry(12, 1), 0, 0];
        assert_eq!(line_for(&table, i32::MAX - 1, 0), None);
        assert_eq!(line_for(&table, i32::MAX - 2, 0), Some(i32::MAX));
        let info = CodeInfo::new("f", "x.py", i32::MAX, table.to_vec());
        assert_eq!(info.line(0), i32::MAX, "the first line stands in");
    }

    #[test]
    fn strings_of_each_kind_and_bad_ones() {
        use crate::python::{layout::PY312, remote::BufferMemory};
        let l = PY312;
        let base = 0x1000u64;
        let mut bytes = vec![0u8; 0x400];
        // ASCII at 0x1000: "Scheduler.schedule"
        let s = b"Scheduler.schedule";
        bytes[16..24].copy_from_slice(&(s.len() as u64).to_le_bytes());
        bytes[32..36].copy_from_slice(&((1u32 << 2) | (1 << 5) | (1 << 6)).to_le_bytes());
        bytes[40..40 + s.len()].copy_from_slice(s);
        // UCS-2 at 0x1100: "añ€"
        let o = 0x100;
        let text: Vec<u16> = "añ€".encode_utf16().collect();
        bytes[o + 16..o + 24].copy_from_slice(&(text.len() as u64).to_le_bytes());
        bytes[o + 32..o + 36].copy_from_slice(&((2u32 << 2) | (1 << 5)).to_le_bytes());
        for (i, u) in text.iter().enumerate() {
            bytes[o + 56 + 2 * i..o + 58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        // Not compact at 0x1200.
        let o = 0x200;
        bytes[o + 32..o + 36].copy_from_slice(&(1u32 << 2).to_le_bytes());
        let mem = BufferMemory { base, bytes };
        assert_eq!(
            read_str(&mem, &l, base).expect("ascii"),
            "Scheduler.schedule"
        );
        assert_eq!(read_str(&mem, &l, base + 0x100).expect("ucs2"), "añ€");
        assert!(read_str(&mem, &l, base + 0x200).is_err());
        assert!(read_str(&mem, &l, 0).is_err());
        assert!(read_str(&mem, &l, 0x9999_0000).is_err());
    }

    /// Memory in which every address reads as data, so a wrapped address would be read.
    struct Everywhere;

    impl RemoteMemory for Everywhere {
        fn read(&self, _addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            buf.fill(0x41);
            Ok(())
        }
    }

    #[test]
    fn fields_past_the_end_of_the_address_space_are_unreadable_not_wrapped() {
        // Found by the object_reader fuzz target: `addr + offset` overflowed for str and code
        // objects at corrupt addresses near u64::MAX (and wrapped to low memory in release).
        let l = crate::python::layout::PY312;
        let top = u64::MAX - 8;
        assert!(matches!(
            read_str(&Everywhere, &l, top),
            Err(CodeError::Read(ReadError { addr, .. })) if addr == top
        ));
        assert!(matches!(
            read_code(&Everywhere, &l, top, None),
            Err(CodeError::Read(ReadError { addr, .. })) if addr == top
        ));
    }

    /// Memory whose every read fails, as a live process's unmapped address or a gone process.
    struct Failing {
        gone: bool,
    }

    impl RemoteMemory for Failing {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            Err(ReadError {
                gone: self.gone,
                ..ReadError::at(addr, buf.len())
            })
        }
    }

    #[test]
    fn failures_are_cached_per_identity_and_never_for_a_gone_process() {
        let l = crate::python::layout::PY312;
        let mut cache = CodeCache::default();
        let live = Failing { gone: false };
        for first_line in [10, 10, 11] {
            let e = cache
                .get(&live, &l, None, 0x5000, first_line)
                .expect_err("unreadable");
            assert!(!e.process_gone());
        }
        assert_eq!(
            cache.reads, 2,
            "the same object is not read twice; another one is"
        );
        let gone = Failing { gone: true };
        for _ in 0..2 {
            let e = cache.get(&gone, &l, None, 0x6000, 10).expect_err("gone");
            assert!(e.process_gone());
        }
        assert_eq!(cache.reads, 4, "a gone process's failure is not cached");
    }
}
