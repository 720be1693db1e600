//! CPython struct layouts per version: built-in tables for 3.11 and 3.12 (offsets taken with
//! `offsetof` from each version's own headers), and the interpreter's own `_Py_DebugOffsets`
//! for 3.13+ (read from the target; only the position of each field inside that struct is
//! per version).
//!
//! Every offset here is x86-64, default (GIL) build.
//!
//! Owns the walk layouts and reading `_Py_DebugOffsets`; which versions exist, and which
//! have an object layout, is `versions`'s one table.

use serde::Serialize;

use super::{
    remote::{ReadError, RemoteMemory},
    versions::Walk,
};

/// Where a layout came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutSource {
    /// A built-in table for this minor version.
    BuiltIn,
    /// The target's `_Py_DebugOffsets`.
    DebugOffsets,
}

/// The offsets ProfileMate reads, in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PyLayout {
    /// (major, minor).
    pub version: (u8, u8),
    /// Built-in or read from the target.
    pub source: LayoutSource,
    /// Whether this version's layout is exercised by ProfileMate's own tests.
    pub tested: bool,
    /// `_PyRuntimeState.interpreters.head`.
    pub runtime_interpreters_head: u64,
    /// `_PyRuntimeState.interpreters.main` (3.11, 3.12; later found by id).
    pub runtime_interpreters_main: Option<u64>,
    /// `PyInterpreterState.id` (the main interpreter has id 0).
    pub interp_id: Option<u64>,
    /// `PyInterpreterState.next`.
    pub interp_next: Option<u64>,
    /// `PyInterpreterState.threads.head`.
    pub interp_threads_head: u64,
    /// `PyThreadState.next`.
    pub tstate_next: u64,
    /// `PyThreadState.interp`.
    pub tstate_interp: u64,
    /// `PyThreadState.native_thread_id`.
    pub tstate_native_tid: u64,
    /// `PyThreadState.cframe` (3.11, 3.12) or `.current_frame` (3.13+).
    pub tstate_frame: u64,
    /// `_PyCFrame.current_frame` when frames hang off a `_PyCFrame`.
    pub cframe_current_frame: Option<u64>,
    /// `_PyInterpreterFrame.f_code` / `.f_executable`.
    pub frame_code: u64,
    /// `_PyInterpreterFrame.previous`.
    pub frame_previous: u64,
    /// `_PyInterpreterFrame.prev_instr` / `.instr_ptr`.
    pub frame_instr: u64,
    /// `_PyInterpreterFrame.owner`.
    pub frame_owner: u64,
    /// `_PyInterpreterFrame.localsplus`: the frame's locals (`self` first in methods).
    pub frame_localsplus: u64,
    /// Frames with an owner value at least this are not Python frames (3.12+: C-stack
    /// shims; 3.14: also interpreter-owned entry frames).
    pub owner_skip_min: Option<u8>,
    /// Mask that turns the frame's code field into a pointer.
    pub code_pointer_mask: u64,
    /// `PyObject.ob_type`.
    pub object_type: u64,
    /// `PyCodeObject.co_filename`.
    pub code_filename: u64,
    /// `PyCodeObject.co_name`.
    pub code_name: u64,
    /// `PyCodeObject.co_qualname`.
    pub code_qualname: u64,
    /// `PyCodeObject.co_firstlineno`.
    pub code_first_line: u64,
    /// `PyCodeObject.co_linetable`.
    pub code_linetable: u64,
    /// `PyCodeObject.co_code_adaptive`.
    pub code_adaptive: u64,
    /// `PyASCIIObject.length`.
    pub unicode_length: u64,
    /// `PyASCIIObject.state`.
    pub unicode_state: u64,
    /// `sizeof(PyASCIIObject)`: data of compact ASCII strings follows.
    pub unicode_ascii_size: u64,
    /// `sizeof(PyCompactUnicodeObject)`: data of other compact strings follows.
    pub unicode_compact_size: u64,
    /// `PyVarObject.ob_size` of bytes.
    pub bytes_size: u64,
    /// `PyBytesObject.ob_sval`.
    pub bytes_data: u64,
}

/// Offsets shared by 3.11 and 3.12 (and 3.13+ where the debug offsets do not carry them).
const OBJECT_TYPE: u64 = 8;
const UNICODE_LENGTH: u64 = 16;
const UNICODE_STATE: u64 = 32;
const BYTES_SIZE: u64 = 16;
const BYTES_DATA: u64 = 32;

/// CPython 3.11 (measured on 3.11.7 headers; Debian's 3.11.2 is checked by the tests).
pub const PY311: PyLayout = PyLayout {
    version: (3, 11),
    source: LayoutSource::BuiltIn,
    tested: true,
    runtime_interpreters_head: 40,
    runtime_interpreters_main: Some(48),
    interp_id: None,
    interp_next: None,
    interp_threads_head: 16,
    tstate_next: 8,
    tstate_interp: 16,
    tstate_native_tid: 160,
    tstate_frame: 56,
    cframe_current_frame: Some(8),
    frame_code: 32,
    frame_previous: 48,
    frame_instr: 56,
    frame_owner: 69,
    frame_localsplus: 72,
    owner_skip_min: None,
    code_pointer_mask: u64::MAX,
    object_type: OBJECT_TYPE,
    code_filename: 112,
    code_name: 120,
    code_qualname: 128,
    code_first_line: 72,
    code_linetable: 136,
    code_adaptive: 184,
    unicode_length: UNICODE_LENGTH,
    unicode_state: UNICODE_STATE,
    unicode_ascii_size: 48,
    unicode_compact_size: 72,
    bytes_size: BYTES_SIZE,
    bytes_data: BYTES_DATA,
};

/// CPython 3.12 (measured on 3.12.1 headers; Ubuntu's 3.12.3 is checked on the GPU machine).
pub const PY312: PyLayout = PyLayout {
    version: (3, 12),
    source: LayoutSource::BuiltIn,
    tested: true,
    runtime_interpreters_head: 40,
    runtime_interpreters_main: Some(48),
    interp_id: None,
    interp_next: None,
    interp_threads_head: 72,
    tstate_next: 8,
    tstate_interp: 16,
    tstate_native_tid: 144,
    tstate_frame: 56,
    cframe_current_frame: Some(0),
    frame_code: 0,
    frame_previous: 8,
    frame_instr: 56,
    frame_owner: 70,
    frame_localsplus: 72,
    owner_skip_min: Some(3),
    code_pointer_mask: u64::MAX,
    object_type: OBJECT_TYPE,
    code_filename: 112,
    code_name: 120,
    code_qualname: 128,
    code_first_line: 68,
    code_linetable: 136,
    code_adaptive: 192,
    unicode_length: UNICODE_LENGTH,
    unicode_state: UNICODE_STATE,
    unicode_ascii_size: 40,
    unicode_compact_size: 56,
    bytes_size: BYTES_SIZE,
    bytes_data: BYTES_DATA,
};

/// The built-in layout of a version without debug offsets (its row in `versions`).
#[must_use]
pub fn built_in(version: (u8, u8)) -> Option<PyLayout> {
    match &super::versions::row(version)?.walk {
        Walk::BuiltIn(l) => Some(l.clone()),
        Walk::DebugOffsets(_) => None,
    }
}

/// `_Py_DebugOffsets.cookie`.
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// Byte positions of the fields ProfileMate needs inside `_Py_DebugOffsets` (every field
/// after the cookie is a `uint64_t`; only their order changes between versions).
#[derive(Clone, Copy, Debug)]
pub(super) struct DebugFieldPositions {
    pub(super) version: (u8, u8),
    tested: bool,
    struct_size_min: usize,
    free_threaded: usize,
    runtime_interpreters_head: usize,
    interp_id: usize,
    interp_next: usize,
    interp_threads_head: usize,
    tstate_next: usize,
    tstate_interp: usize,
    tstate_current_frame: usize,
    tstate_native_tid: usize,
    frame_previous: usize,
    frame_executable: usize,
    frame_instr_ptr: usize,
    frame_localsplus: usize,
    frame_owner: usize,
    code_filename: usize,
    code_name: usize,
    code_qualname: usize,
    code_linetable: usize,
    code_first_line: usize,
    code_adaptive: usize,
    object_type: usize,
    bytes_size: usize,
    bytes_data: usize,
    unicode_state: usize,
    unicode_length: usize,
    unicode_ascii_size: usize,
    /// Tag bits of `f_executable` (a `_PyStackRef` from 3.14).
    executable_tag_bits: u64,
}

/// 3.13: `_Py_DebugOffsets` in Include/internal/pycore_runtime.h.
pub(super) const DEBUG_313: DebugFieldPositions = DebugFieldPositions {
    version: (3, 13),
    tested: true,
    struct_size_min: 584,
    free_threaded: 16,
    runtime_interpreters_head: 40,
    interp_id: 56,
    interp_next: 64,
    interp_threads_head: 72,
    tstate_next: 168,
    tstate_interp: 176,
    tstate_current_frame: 184,
    tstate_native_tid: 200,
    frame_previous: 232,
    frame_executable: 240,
    frame_instr_ptr: 248,
    frame_localsplus: 256,
    frame_owner: 264,
    code_filename: 280,
    code_name: 288,
    code_qualname: 296,
    code_linetable: 304,
    code_first_line: 312,
    code_adaptive: 344,
    object_type: 360,
    bytes_size: 520,
    bytes_data: 528,
    unicode_state: 544,
    unicode_length: 552,
    unicode_ascii_size: 560,
    executable_tag_bits: 0,
};

/// 3.14: Include/internal/pycore_debug_offsets.h (gains threads_main, stackpointer,
/// tlbc fields and a set_object group; `f_executable` becomes a tagged `_PyStackRef`).
pub(super) const DEBUG_314: DebugFieldPositions = DebugFieldPositions {
    version: (3, 14),
    tested: false,
    struct_size_min: 760,
    free_threaded: 16,
    runtime_interpreters_head: 40,
    interp_id: 56,
    interp_next: 64,
    interp_threads_head: 72,
    tstate_next: 192,
    tstate_interp: 200,
    tstate_current_frame: 208,
    tstate_native_tid: 224,
    frame_previous: 256,
    frame_executable: 264,
    frame_instr_ptr: 272,
    frame_localsplus: 280,
    frame_owner: 288,
    code_filename: 320,
    code_name: 328,
    code_qualname: 336,
    code_linetable: 344,
    code_first_line: 352,
    code_adaptive: 384,
    object_type: 408,
    bytes_size: 600,
    bytes_data: 608,
    unicode_state: 624,
    unicode_length: 632,
    unicode_ascii_size: 640,
    executable_tag_bits: 3,
};

fn debug_positions(version: (u8, u8)) -> Option<DebugFieldPositions> {
    match super::versions::row(version)?.walk {
        Walk::DebugOffsets(p) => Some(p),
        Walk::BuiltIn(_) => None,
    }
}

/// The layout could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// No built-in table and no known debug-offsets layout for this version.
    #[error("CPython {}.{} is not supported (supported: 3.11, 3.12 built in; 3.13, 3.14 through their _Py_DebugOffsets)", .0.0, .0.1)]
    Unsupported((u8, u8)),
    /// The debug offsets could not be read.
    #[error("cannot read _Py_DebugOffsets")]
    Read(#[source] ReadError),
    /// The debug offsets are not what this version should have.
    #[error("_Py_DebugOffsets of CPython {}.{} failed validation: {}", .0.0, .0.1, .1)]
    Invalid((u8, u8), String),
    /// Free-threaded builds lay objects out differently.
    #[error("free-threaded CPython builds are not supported")]
    FreeThreaded,
}

/// The layout of `version`, reading `_Py_DebugOffsets` at `runtime_addr` from 3.13 on.
pub fn resolve(
    version: (u8, u8),
    mem: &dyn RemoteMemory,
    runtime_addr: u64,
) -> Result<PyLayout, LayoutError> {
    if let Some(l) = built_in(version) {
        return Ok(l);
    }
    let pos = debug_positions(version).ok_or(LayoutError::Unsupported(version))?;
    let mut raw = vec![0u8; pos.struct_size_min];
    mem.read(runtime_addr, &mut raw)
        .map_err(LayoutError::Read)?;
    from_debug_offsets(&pos, &raw)
}

fn from_debug_offsets(pos: &DebugFieldPositions, raw: &[u8]) -> Result<PyLayout, LayoutError> {
    let invalid = |why: String| LayoutError::Invalid(pos.version, why);
    if raw.get(..8) != Some(DEBUG_COOKIE.as_slice()) {
        return Err(invalid("cookie is not \"xdebugpy\"".to_owned()));
    }
    let field = |at: usize| -> Result<u64, LayoutError> {
        raw.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| invalid(format!("field at {at} outside the struct")))
    };
    let hex = field(8)?;
    let (major, minor) = (((hex >> 24) & 0xff) as u8, ((hex >> 16) & 0xff) as u8);
    if (major, minor) != pos.version {
        return Err(invalid(format!(
            "version field says {major}.{minor} ({hex:#x})"
        )));
    }
    if field(pos.free_threaded)? != 0 {
        return Err(LayoutError::FreeThreaded);
    }
    // Offsets are small: anything past 64 KiB means the table is not what we think it is.
    let off = |at: usize| -> Result<u64, LayoutError> {
        let v = field(at)?;
        if v > 0xffff {
            return Err(invalid(format!(
                "offset {v} at position {at} is implausible"
            )));
        }
        Ok(v)
    };
    Ok(PyLayout {
        version: pos.version,
        source: LayoutSource::DebugOffsets,
        tested: pos.tested,
        runtime_interpreters_head: off(pos.runtime_interpreters_head)?,
        runtime_interpreters_main: None,
        interp_id: Some(off(pos.interp_id)?),
        interp_next: Some(off(pos.interp_next)?),
        interp_threads_head: off(pos.interp_threads_head)?,
        tstate_next: off(pos.tstate_next)?,
        tstate_interp: off(pos.tstate_interp)?,
        tstate_native_tid: off(pos.tstate_native_tid)?,
        tstate_frame: off(pos.tstate_current_frame)?,
        cframe_current_frame: None,
        frame_code: off(pos.frame_executable)?,
        frame_previous: off(pos.frame_previous)?,
        frame_instr: off(pos.frame_instr_ptr)?,
        frame_owner: off(pos.frame_owner)?,
        frame_localsplus: off(pos.frame_localsplus)?,
        owner_skip_min: Some(3),
        code_pointer_mask: !pos.executable_tag_bits,
        object_type: off(pos.object_type)?,
        code_filename: off(pos.code_filename)?,
        code_name: off(pos.code_name)?,
        code_qualname: off(pos.code_qualname)?,
        code_first_line: off(pos.code_first_line)?,
        code_linetable: off(pos.code_linetable)?,
        code_adaptive: off(pos.code_adaptive)?,
        unicode_length: off(pos.unicode_length)?,
        unicode_state: off(pos.unicode_state)?,
        unicode_ascii_size: off(pos.unicode_ascii_size)?,
        // PyCompactUnicodeObject = PyASCIIObject + utf8_length + utf8 pointer.
        unicode_compact_size: off(pos.unicode_ascii_size)? + 16,
        bytes_size: off(pos.bytes_size)?,
        bytes_data: off(pos.bytes_data)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3.13 `_Py_DebugOffsets` as the 3.13.0 headers lay it out, with the values
    /// `offsetof` gives for those headers.
    fn debug_313_bytes() -> Vec<u8> {
        let mut raw = vec![0u8; DEBUG_313.struct_size_min];
        raw[..8].copy_from_slice(DEBUG_COOKIE);
        let mut put = |at: usize, v: u64| raw[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(8, 0x030d_00f0);
        put(40, 632);
        put(72, 7344);
        put(168, 8);
        put(176, 16);
        put(184, 72);
        put(200, 160);
        put(232, 8);
        put(240, 0);
        put(248, 56);
        put(256, 72);
        put(264, 70);
        put(280, 112);
        put(288, 120);
        put(296, 128);
        put(304, 136);
        put(312, 68);
        put(344, 200);
        put(360, 8);
        put(520, 16);
        put(528, 32);
        put(544, 32);
        put(552, 16);
        put(560, 40);
        raw
    }

    #[test]
    fn debug_offsets_of_313_decode() {
        let l = from_debug_offsets(&DEBUG_313, &debug_313_bytes()).expect("valid");
        assert_eq!(l.version, (3, 13));
        assert_eq!(l.interp_threads_head, 7344);
        assert_eq!(l.tstate_frame, 72);
        assert_eq!(l.cframe_current_frame, None);
        assert_eq!(l.frame_instr, 56);
        assert_eq!(l.code_adaptive, 200);
        assert_eq!(l.unicode_compact_size, 56);
    }

    #[test]
    fn debug_offsets_are_validated() {
        let mut raw = debug_313_bytes();
        raw[0] = b'X';
        assert!(matches!(
            from_debug_offsets(&DEBUG_313, &raw),
            Err(LayoutError::Invalid(..))
        ));
        let mut raw = debug_313_bytes();
        raw[8..16].copy_from_slice(&0x030c_00f0u64.to_le_bytes());
        assert!(matches!(
            from_debug_offsets(&DEBUG_313, &raw),
            Err(LayoutError::Invalid(..))
        ));
        let mut raw = debug_313_bytes();
        raw[16] = 1;
        assert!(matches!(
            from_debug_offsets(&DEBUG_313, &raw),
            Err(LayoutError::FreeThreaded)
        ));
        let mut raw = debug_313_bytes();
        raw[72..80].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            from_debug_offsets(&DEBUG_313, &raw),
            Err(LayoutError::Invalid(..))
        ));
    }

    #[test]
    fn unsupported_versions_say_so() {
        let mem = super::super::remote::BufferMemory::default();
        let e = resolve((3, 10), &mem, 0).expect_err("3.10 has no layout");
        assert!(e.to_string().contains("3.10 is not supported"), "{e}");
    }
}
