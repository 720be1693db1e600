//! What a code object says about its function (names, first line, line table), as the
//! records carry it, and the line-table decoding that turns an instruction offset into a line.
//!
//! Owns no memory reads: `python::code` reads code objects from the target and caches them.

/// Instruction offsets at or past this are not inside any code object.
const MAX_CODE_BYTES: u32 = 1 << 28;

/// What a code object says about its function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeInfo {
    /// `co_qualname` (`Scheduler.schedule`).
    pub qualname: String,
    /// `co_filename` as the target has it.
    pub filename: String,
    /// `co_firstlineno`.
    pub first_line: i32,
    pub(crate) linetable: Vec<u8>,
}

impl CodeInfo {
    /// A code object from its parts (tests).
    #[must_use]
    pub fn new(qualname: &str, filename: &str, first_line: i32, linetable: Vec<u8>) -> Self {
        Self {
            qualname: qualname.to_owned(),
            filename: filename.to_owned(),
            first_line,
            linetable,
        }
    }

    /// Line of the instruction at `byte_offset` in the bytecode. An offset outside the
    /// code (3.11's "not started yet" position one instruction before the start, or a torn
    /// read) gives the first line.
    #[must_use]
    pub fn line(&self, byte_offset: u32) -> i32 {
        if byte_offset >= MAX_CODE_BYTES {
            return self.first_line;
        }
        line_for(&self.linetable, self.first_line, byte_offset).unwrap_or(self.first_line)
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = self.bytes.get(self.pos).copied();
        self.pos += 1;
        b
    }

    fn varint(&mut self) -> Option<u32> {
        let mut read = self.byte()?;
        let mut val = u32::from(read & 63);
        let mut shift = 0;
        while read & 64 != 0 {
            read = self.byte()?;
            shift += 6;
            if shift > 30 {
                return None;
            }
            val |= u32::from(read & 63) << shift;
        }
        Some(val)
    }

    fn svarint(&mut self) -> Option<i32> {
        let u = self.varint()?;
        let magnitude = (u >> 1) as i32;
        Some(if u & 1 != 0 { -magnitude } else { magnitude })
    }
}

/// Decodes CPython's location table (3.11-3.14 format) up to `target` (a byte offset into the
/// bytecode). None: no location for that instruction, or a malformed table.
#[must_use]
pub fn line_for(table: &[u8], first_line: i32, target: u32) -> Option<i32> {
    let mut c = Cursor {
        bytes: table,
        pos: 0,
    };
    let mut addr: u32 = 0;
    let mut line = first_line;
    while c.pos < table.len() {
        let head = c.byte()?;
        if head & 0x80 == 0 {
            return None;
        }
        let code = (head >> 3) & 15;
        let length = (u32::from(head & 7) + 1) * 2;
        let has_location = match code {
            15 => false,
            14 => {
                line = line.checked_add(c.svarint()?)?;
                c.varint()?;
                c.varint()?;
                c.varint()?;
                true
            }
            13 => {
                line = line.checked_add(c.svarint()?)?;
                true
            }
            10..=12 => {
                // `co_firstlineno` comes from the target: a delta can go past i32::MAX.
                line = line.checked_add(i32::from(code) - 10)?;
                c.byte()?;
                c.byte()?;
                true
            }
            _ => {
                c.byte()?;
                true
            }
        };
        let end = addr.checked_add(length)?;
        if target < end {
            return has_location.then_some(line);
        }
        addr = end;
    }
    None
}
