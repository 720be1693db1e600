//! What the fuzz targets share: a cursor over the fuzzer's bytes, a `RemoteMemory` backed by
//! them, and the struct layout of each CPython version the readers support.
//!
//! Owns nothing of the product: every parser fuzzed here is the one `profilemate` runs.

use std::cell::Cell;

use profilemate::python::{
    layout::{LayoutSource, PyLayout, PY311, PY312},
    remote::{ReadError, RemoteMemory},
};

/// Where fuzzed memory starts: a typical heap address, 8-aligned like every object.
pub const BASE: u64 = 0x7f00_0000_0000;

/// Takes fields off the front of the fuzzer's input; an exhausted input reads as zeros, so
/// every input is a valid one.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    #[must_use]
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let head = self.take(N);
        out[..head.len()].copy_from_slice(head);
        out
    }

    /// A byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// Everything not taken yet.
    #[must_use]
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Target memory made of the fuzzer's bytes at `BASE`. Strict: only `[BASE, BASE + len)` is
/// readable, as in a process with one mapping. Cyclic: every address is readable and wraps
/// around the bytes, so pointers the fuzzer did not aim still lead somewhere and deep paths
/// (and address arithmetic near `u64::MAX`) are reached.
///
/// One input gets a budget of reads, after which every read fails as in a process that
/// exited: the readers' own bounds are large (a corrupt thread list and frame chain walk
/// 1024 x 256 frames), which is slow for a fuzzer but no hang (a loop that reads nothing is
/// still caught by libFuzzer's timeout).
pub struct FuzzMemory<'a> {
    bytes: &'a [u8],
    cyclic: bool,
    /// (reads, bytes) left.
    budget: Cell<(u32, u64)>,
}

/// Reads one input may make, and bytes it may read.
const READ_BUDGET: (u32, u64) = (50_000, 64 << 20);

impl<'a> FuzzMemory<'a> {
    /// `bytes` at `BASE`, cyclic or strict.
    #[must_use]
    pub fn new(bytes: &'a [u8], cyclic: bool) -> Self {
        Self {
            bytes,
            cyclic,
            budget: Cell::new(READ_BUDGET),
        }
    }

    /// Takes one read of `len` bytes off the budget; false when it is spent.
    fn spend(&self, len: usize) -> bool {
        let (reads, bytes) = self.budget.get();
        let len = len as u64;
        if reads == 0 || bytes < len {
            return false;
        }
        self.budget.set((reads - 1, bytes - len));
        true
    }
}

impl RemoteMemory for FuzzMemory<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let err = ReadError::at(addr, buf.len());
        if buf.is_empty() {
            return Ok(());
        }
        if !self.spend(buf.len()) {
            return Err(ReadError { gone: true, ..err });
        }
        let len = self.bytes.len();
        if !self.cyclic {
            let start = usize::try_from(addr.checked_sub(BASE).ok_or(err)?).map_err(|_| err)?;
            let end = start.checked_add(buf.len()).ok_or(err)?;
            buf.copy_from_slice(self.bytes.get(start..end).ok_or(err)?);
            return Ok(());
        }
        // No mapping wraps past the end of the address space.
        if len == 0 || addr.checked_add(buf.len() as u64).is_none() {
            return Err(err);
        }
        let mut at = (addr.wrapping_sub(BASE) % len as u64) as usize;
        let mut filled = 0;
        while filled < buf.len() {
            let n = (len - at).min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&self.bytes[at..at + n]);
            filled += n;
            at = 0;
        }
        Ok(())
    }
}

/// The CPython versions whose layouts the readers support (3.11-3.14).
pub const VERSIONS: [(u8, u8); 4] = [(3, 11), (3, 12), (3, 13), (3, 14)];

/// The layout of `version` as ProfileMate would hold it for a real interpreter. 3.11 and 3.12
/// are the built-in tables; 3.13 and 3.14 come from the target's `_Py_DebugOffsets` in
/// production, and here from the values those versions' headers give for the fields the
/// code and object readers use (3.14 differs in its tagged frame code pointer). The
/// `object_reader` target also derives 3.13/3.14 layouts from fuzzed debug offsets.
#[must_use]
pub fn py_layout(version: (u8, u8)) -> PyLayout {
    match version {
        (3, 11) => PY311,
        (3, 12) => PY312,
        (major, minor) => PyLayout {
            version: (major, minor),
            source: LayoutSource::DebugOffsets,
            tested: minor == 13,
            runtime_interpreters_main: None,
            // 3.13 keeps the current frame in the thread state, no `_PyCFrame`.
            tstate_frame: 72,
            cframe_current_frame: None,
            code_first_line: 68,
            code_adaptive: 200,
            owner_skip_min: Some(3),
            code_pointer_mask: if minor >= 14 { !3 } else { u64::MAX },
            ..PY312
        },
    }
}
