//! CPython 3.11-3.14 location tables: `line_for` on the raw table, and the same table read
//! out of a code object in target memory (`read_code`, `CodeCache`) with each version's
//! layout; both paths must agree on every line.
//!
//! Input: version selector (1 byte), `co_firstlineno` (i32), one extra instruction offset
//! (u32), then the table bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use profilemate::python::{
    code::{line_for, read_code, CodeCache, CodeInfo},
    layout::PyLayout,
    remote::BufferMemory,
};
use profilemate_fuzz::{py_layout, Input, BASE, VERSIONS};

/// `PyCode_Type` in the synthetic memory (any 8-aligned value).
const CODE_TYPE: u64 = 0x5555_0000;
/// Where the parts of the synthetic code object sit, relative to `BASE`.
const QUALNAME_AT: u64 = 0x400;
const FILENAME_AT: u64 = 0x800;
const TABLE_AT: u64 = 0x1000;
/// The reader's bound on a line table (`code::MAX_LINETABLE`): a longer one is refused.
const MAX_LINETABLE: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let version = VERSIONS[usize::from(input.u8()) % VERSIONS.len()];
    let first_line = input.u32() as i32;
    let extra = input.u32();
    let table = input.rest();

    let offsets = offsets(table.len(), extra);
    let direct: Vec<Option<i32>> = offsets
        .iter()
        .map(|&o| line_for(table, first_line, o))
        .collect();
    let info = CodeInfo::new("f", "x.py", first_line, table.to_vec());
    for (&o, &line) in offsets.iter().zip(&direct) {
        // `line` falls back to the first line where the table has none.
        let expected = if o >= 1 << 28 {
            first_line
        } else {
            line.unwrap_or(first_line)
        };
        assert_eq!(info.line(o), expected, "offset {o}");
    }

    if table.len() > MAX_LINETABLE {
        return;
    }
    let layout = py_layout(version);
    let mem = code_object(&layout, first_line, table);
    let read = read_code(&mem, &layout, BASE, Some(CODE_TYPE)).expect("a well-formed code object");
    assert_eq!(
        read, info,
        "{version:?}: the table read from memory is the table written"
    );
    let mut cache = CodeCache::default();
    for _ in 0..2 {
        let cached = cache
            .get(&mem, &layout, Some(CODE_TYPE), BASE, first_line)
            .expect("cached read");
        assert_eq!(*cached, info);
    }
    assert_eq!(cache.reads, 1, "the second lookup is served from the cache");
});

/// Instruction offsets to look up: the first instructions, some past the end, the extremes,
/// and one the fuzzer picks (a bounded number, so a long table is not decoded quadratically).
fn offsets(table_len: usize, extra: u32) -> Vec<u32> {
    // An entry covers at most 8 code units (16 bytes); 2-byte units.
    let end = u32::try_from(table_len.saturating_mul(16)).unwrap_or(u32::MAX);
    let mut v: Vec<u32> = (0..32).map(|i| i * 2).collect();
    v.extend([end / 2, end.saturating_sub(2), end, end.saturating_add(2)]);
    v.extend([extra, u32::MAX, (1 << 28) - 2, 1 << 28]);
    v
}

/// Memory holding a code object at `BASE` whose qualname, filename, first line and line
/// table are laid out as `layout` says.
fn code_object(layout: &PyLayout, first_line: i32, table: &[u8]) -> BufferMemory {
    let mut bytes = vec![0u8; TABLE_AT as usize + layout.bytes_data as usize + table.len()];
    let mut put = |at: u64, v: &[u8]| {
        let at = at as usize;
        bytes[at..at + v.len()].copy_from_slice(v);
    };
    put(layout.object_type, &CODE_TYPE.to_le_bytes());
    put(layout.code_qualname, &(BASE + QUALNAME_AT).to_le_bytes());
    put(layout.code_filename, &(BASE + FILENAME_AT).to_le_bytes());
    put(layout.code_first_line, &first_line.to_le_bytes());
    put(layout.code_linetable, &(BASE + TABLE_AT).to_le_bytes());
    for (at, text) in [(QUALNAME_AT, "f"), (FILENAME_AT, "x.py")] {
        // A compact ASCII str: kind 1, compact, ascii.
        let state: u32 = (1 << 2) | (1 << 5) | (1 << 6);
        put(
            at + layout.unicode_length,
            &(text.len() as u64).to_le_bytes(),
        );
        put(at + layout.unicode_state, &state.to_le_bytes());
        put(at + layout.unicode_ascii_size, text.as_bytes());
    }
    put(
        TABLE_AT + layout.bytes_size,
        &(table.len() as u64).to_le_bytes(),
    );
    put(TABLE_AT + layout.bytes_data, table);
    BufferMemory { base: BASE, bytes }
}
