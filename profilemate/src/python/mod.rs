//! The Python reader: finds the CPython interpreter of a target process (executable or
//! libpython), its version and struct layout, the main interpreter and its thread list, and
//! reads code objects for symbolization. Read-only throughout (`process_vm_readv`).
//!
//! Owns: everything that knows CPython internals in userspace. The kernel-side walker gets a
//! `PyProcConfig` built here and follows offsets only.

pub mod code;
pub mod layout;
pub mod objects;
pub mod remote;
pub mod versions;

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSegment, ObjectSymbol};
use profilemate_common::python::{PyProcConfig, PyThreadRef, NO_OFFSET};
use serde::Serialize;

use crate::probes::symbols::{map_file, parse_elf, SymbolError};
use layout::{LayoutError, PyLayout};
use remote::{field, ProcessMemory, ReadError, RemoteMemory};

/// Thread states visited when validating the thread list.
const MAX_THREADS_CHECKED: usize = 1024;

/// Why a process's Python cannot be walked.
#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    /// No mapped file defines `_PyRuntime`.
    #[error("no CPython interpreter found (no mapped file defines _PyRuntime)")]
    NotPython,
    /// /proc could not be read.
    #[error("cannot read /proc/{pid}/maps")]
    Maps {
        /// The process.
        pid: u32,
        /// The cause.
        #[source]
        source: procfs::ProcError,
    },
    /// The interpreter binary could not be parsed.
    #[error(transparent)]
    Elf(#[from] SymbolError),
    /// The version is older than 3.11 (no `Py_Version`) or otherwise unknown.
    #[error("CPython {0} is not supported (ProfileMate walks 3.11-3.14; vLLM needs >= 3.11)")]
    OldVersion(String),
    /// No layout for the version.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Memory of the target could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The layout does not match what the target's memory holds.
    #[error(
        "CPython {version} in {binary}: {why}; not walking it rather than reporting wrong stacks"
    )]
    Mismatch {
        /// Version string.
        version: String,
        /// Interpreter file.
        binary: String,
        /// What did not match.
        why: String,
    },
}

/// A target process's CPython interpreter, resolved and validated.
#[derive(Debug, Clone, Serialize)]
pub struct Interpreter {
    /// Process.
    pub pid: u32,
    /// `3.11.2`.
    pub version: String,
    /// The file defining `_PyRuntime` (python executable or libpython), as the target maps it.
    pub binary: String,
    /// The same file reached through `/proc/PID/root`.
    #[serde(skip)]
    pub host_path: PathBuf,
    /// Device and inode of that file.
    #[serde(skip)]
    pub file_id: (u64, u64),
    /// Address of `_PyRuntime`.
    pub runtime_addr: u64,
    /// Address of `PyCode_Type` (type check of code objects), when exported.
    pub code_type_addr: Option<u64>,
    /// Address of the main interpreter state.
    pub main_interp: u64,
    /// Python threads seen when validating.
    pub threads_at_attach: usize,
    /// The offsets in use.
    pub layout: PyLayout,
}

impl Interpreter {
    /// What the kernel-side walker needs.
    #[must_use]
    pub fn walker_config(&self) -> PyProcConfig {
        let l = &self.layout;
        let o = |v: u64| u16::try_from(v).unwrap_or(NO_OFFSET);
        PyProcConfig {
            tstate_native_tid: o(l.tstate_native_tid),
            tstate_frame: o(l.tstate_frame),
            cframe_current_frame: l.cframe_current_frame.map_or(NO_OFFSET, o),
            frame_code: o(l.frame_code),
            frame_previous: o(l.frame_previous),
            frame_instr: o(l.frame_instr),
            frame_owner: o(l.frame_owner),
            code_first_line: o(l.code_first_line),
            code_adaptive: o(l.code_adaptive),
            owner_skip_min: l.owner_skip_min.unwrap_or(0xff),
            _pad1: 0,
            // The walker copies 96 bytes of a frame: an argument past them is not read.
            frame_arg1: Some(l.frame_localsplus + 8)
                .filter(|off| off + 8 <= 96)
                .map_or(NO_OFFSET, o),
            _pad2: 0,
            code_pointer_mask: l.code_pointer_mask,
        }
    }
}

impl Interpreter {
    /// The Python threads of the process now: (thread id as seen from here, its thread
    /// state). Read from the main interpreter's thread list; thread ids are translated from
    /// the target's pid namespace.
    pub fn thread_refs(&self) -> Result<Vec<(u32, PyThreadRef)>, ReadError> {
        let mem = ProcessMemory::new(self.pid);
        let l = &self.layout;
        let local_to_host: HashMap<u64, u32> = namespace_tids(self.pid)
            .into_iter()
            .map(|(host, local)| (local, host))
            .collect();
        let mut out = Vec::new();
        let mut tstate = mem.read_u64(field(self.main_interp, l.interp_threads_head)?)?;
        let mut n = 0;
        while tstate != 0 && n < MAX_THREADS_CHECKED {
            let native_tid = mem.read_u64(field(tstate, l.tstate_native_tid)?)?;
            if let Some(host) = local_to_host.get(&native_tid) {
                out.push((*host, PyThreadRef { tstate, native_tid }));
            }
            tstate = mem.read_u64(field(tstate, l.tstate_next)?)?;
            n += 1;
        }
        Ok(out)
    }
}

/// A frame read from userspace: its code object and its first local (`self` in methods).
#[derive(Debug, Clone)]
pub struct LiveFrame {
    /// Thread state the frame belongs to.
    pub tstate: u64,
    /// The code object's names.
    pub code: std::sync::Arc<code::CodeInfo>,
    /// `localsplus[0]` (0 when unset).
    pub first_local: u64,
    /// The frame (`_PyInterpreterFrame`) address.
    pub frame: u64,
    /// `co_nlocalsplus` of its code: locals, cells and free variables (at most
    /// `MAX_LOCALS_READ`).
    pub nlocalsplus: u32,
}

/// Locals of one frame read at most when looking for an object among them.
pub const MAX_LOCALS_READ: u32 = 64;

impl LiveFrame {
    /// The frame's locals (`localsplus[..co_nlocalsplus]`), read now; unset ones are 0.
    #[must_use]
    pub fn locals(&self, mem: &dyn RemoteMemory, l: &layout::PyLayout) -> Vec<u64> {
        let n = self.nlocalsplus.min(MAX_LOCALS_READ) as usize;
        let mut buf = vec![0u8; n * 8];
        let read = field(self.frame, l.frame_localsplus).and_then(|at| mem.read(at, &mut buf));
        if read.is_err() {
            return Vec::new();
        }
        buf.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) & l.code_pointer_mask)
            .collect()
    }
}

/// Frames read per thread at most.
const MAX_LIVE_FRAMES: usize = 256;

impl Interpreter {
    /// Every Python thread's current frames, innermost first, read now from userspace
    /// (frames change while they are read: a torn chain simply ends early). Used to find
    /// long-lived objects (`self` of a busy loop), not for timing.
    pub fn live_frames(
        &self,
        mem: &dyn RemoteMemory,
        codes: &mut code::CodeCache,
    ) -> Vec<LiveFrame> {
        let l = &self.layout;
        let mut out = Vec::new();
        // Every pointer here comes from the target: fields of a corrupt one are unreadable.
        let u64_at = |base, offset| field(base, offset).and_then(|at| mem.read_u64(at));
        let i32_at = |base, offset| field(base, offset).and_then(|at| mem.read_i32(at));
        let Ok(mut tstate) = u64_at(self.main_interp, l.interp_threads_head) else {
            return out;
        };
        let mut threads = 0;
        while tstate != 0 && threads < MAX_THREADS_CHECKED {
            threads += 1;
            let mut frame = u64_at(tstate, l.tstate_frame).unwrap_or(0);
            if let Some(cf) = l.cframe_current_frame {
                frame = if frame == 0 {
                    0
                } else {
                    u64_at(frame, cf).unwrap_or(0)
                };
            }
            for _ in 0..MAX_LIVE_FRAMES {
                if frame == 0 {
                    break;
                }
                let owner = field(frame, l.frame_owner)
                    .and_then(|at| mem.read_u32(at))
                    .map_or(0, |w| w as u8);
                let code = u64_at(frame, l.frame_code).unwrap_or(0) & l.code_pointer_mask;
                if code != 0 && l.owner_skip_min.is_none_or(|min| owner < min) {
                    let first_line = i32_at(code, l.code_first_line).unwrap_or(-1);
                    if let Ok(info) = codes.get(mem, l, self.code_type_addr, code, first_line) {
                        let first_local = u64_at(frame, l.frame_localsplus)
                            .map_or(0, |v| v & l.code_pointer_mask);
                        // co_nlocalsplus follows co_firstlineno in 3.11-3.14.
                        let nlocalsplus = i32_at(code, l.code_first_line + 4)
                            .ok()
                            .and_then(|n| u32::try_from(n).ok())
                            .unwrap_or(0);
                        out.push(LiveFrame {
                            tstate,
                            code: info,
                            first_local,
                            frame,
                            nlocalsplus,
                        });
                    }
                }
                match u64_at(frame, l.frame_previous) {
                    Ok(p) => frame = p,
                    Err(_) => break,
                }
            }
            tstate = u64_at(tstate, l.tstate_next).unwrap_or(0);
        }
        out
    }
}

/// A mapped ELF file that may hold the interpreter.
struct Candidate {
    path: String,
    host_path: PathBuf,
    file_id: (u64, u64),
    /// Lowest mapping address of the file's offset-0 mapping.
    map_start: u64,
}

fn is_candidate(path: &str) -> bool {
    let name = Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    name.starts_with("python") || name.starts_with("libpython")
}

fn candidates(pid: u32) -> Result<Vec<Candidate>, PythonError> {
    let maps = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.maps())
        .map_err(|source| PythonError::Maps { pid, source })?;
    let mut out: Vec<Candidate> = Vec::new();
    for m in maps {
        let procfs::process::MMapPath::Path(path) = &m.pathname else {
            continue;
        };
        let Some(path_str) = path.to_str() else {
            continue;
        };
        if !is_candidate(path_str) || m.offset != 0 {
            continue;
        }
        if out.iter().any(|c| c.path == path_str) {
            continue;
        }
        let host_path = crate::discovery::host_path(pid, path);
        let file_id = std::fs::metadata(&host_path).map_or((0, 0), |md| (md.dev(), md.ino()));
        out.push(Candidate {
            path: path_str.to_owned(),
            host_path,
            file_id,
            map_start: m.address.0,
        });
    }
    Ok(out)
}

/// Symbol virtual addresses and the file's first loadable segment address.
struct ElfFacts {
    runtime: u64,
    version: Option<u64>,
    code_type: Option<u64>,
    first_load_vaddr: u64,
}

fn elf_facts(path: &Path) -> Result<Option<ElfFacts>, PythonError> {
    let map = map_file(path)?;
    let elf = parse_elf(path, &map)?;
    let mut runtime = None;
    let mut version = None;
    let mut code_type = None;
    for sym in elf.dynamic_symbols().chain(elf.symbols()) {
        if sym.is_undefined() || sym.address() == 0 {
            continue;
        }
        match sym.name() {
            Ok("_PyRuntime") => runtime = runtime.or(Some(sym.address())),
            Ok("Py_Version") => version = version.or(Some(sym.address())),
            Ok("PyCode_Type") => code_type = code_type.or(Some(sym.address())),
            _ => {}
        }
    }
    let Some(runtime) = runtime else {
        return Ok(None);
    };
    let first_load_vaddr = elf
        .segments()
        .filter(|s| s.file_range().0 == 0)
        .map(|s| s.address())
        .min()
        .unwrap_or(0)
        & !0xfff;
    Ok(Some(ElfFacts {
        runtime,
        version,
        code_type,
        first_load_vaddr,
    }))
}

/// (major, minor, micro) from a `PY_VERSION_HEX`.
fn version_parts(hex: u32) -> (u8, u8, u8) {
    ((hex >> 24) as u8, (hex >> 16) as u8, (hex >> 8) as u8)
}

/// The version of an interpreter file without `Py_Version` (before 3.11), from its name.
fn version_from_name(path: &str) -> String {
    let name = Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(path);
    let digits: String = name
        .trim_start_matches("lib")
        .trim_start_matches("python")
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let digits = digits.trim_end_matches('.');
    if digits.is_empty() {
        "(unknown version)".to_owned()
    } else {
        digits.to_owned()
    }
}

/// (thread id here, namespace-local thread id) of the process's threads; the local one is
/// what `native_thread_id` holds (the last `NSpid:` field of each task's status).
fn namespace_tids(pid: u32) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let ns = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    if ns("/proc/self/ns/pid").is_some()
        && ns("/proc/self/ns/pid") == ns(&format!("/proc/{pid}/ns/pid"))
    {
        // Same pid namespace: thread ids are the same on both sides (no status reads).
        return dir
            .flatten()
            .filter_map(|t| t.file_name().to_str()?.parse::<u32>().ok())
            .map(|tid| (tid, u64::from(tid)))
            .collect();
    }
    dir.flatten()
        .filter_map(|task| {
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(task.path().join("status")).ok();
            let local = status.as_deref().and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("NSpid:"))
                    .and_then(|l| l.split_whitespace().last())
                    .and_then(|v| v.parse::<u64>().ok())
            });
            Some((tid, local.unwrap_or(u64::from(tid))))
        })
        .collect()
}

/// Finds and validates the CPython interpreter of `pid`.
pub fn find(pid: u32) -> Result<Interpreter, PythonError> {
    let mem = ProcessMemory::new(pid);
    for cand in candidates(pid)? {
        let Some(facts) = elf_facts(&cand.host_path)? else {
            continue;
        };
        let bias = cand.map_start.wrapping_sub(facts.first_load_vaddr);
        let runtime_addr = bias.wrapping_add(facts.runtime);
        let Some(version_addr) = facts.version else {
            return Err(PythonError::OldVersion(version_from_name(&cand.path)));
        };
        let hex = mem.read_u32(bias.wrapping_add(version_addr))?;
        let (major, minor, micro) = version_parts(hex);
        let version = format!("{major}.{minor}.{micro}");
        if (major, minor) < (3, 11) {
            return Err(PythonError::OldVersion(version));
        }
        let layout = layout::resolve((major, minor), &mem, runtime_addr)?;
        let mismatch = |why: String| PythonError::Mismatch {
            version: version.clone(),
            binary: cand.path.clone(),
            why,
        };
        let main_interp = main_interpreter(&mem, &layout, runtime_addr).map_err(&mismatch)?;
        let tids: Vec<u64> = namespace_tids(pid).into_iter().map(|(_, l)| l).collect();
        let threads = validate_threads(&mem, &layout, main_interp, &tids).map_err(&mismatch)?;
        return Ok(Interpreter {
            pid,
            version,
            binary: cand.path.clone(),
            host_path: cand.host_path.clone(),
            file_id: cand.file_id,
            runtime_addr,
            code_type_addr: facts.code_type.map(|a| bias.wrapping_add(a)),
            main_interp,
            threads_at_attach: threads,
            layout,
        });
    }
    Err(PythonError::NotPython)
}

/// The main interpreter: the one with id 0 in the interpreter list (the list's tail).
fn main_interpreter(mem: &dyn RemoteMemory, l: &PyLayout, runtime: u64) -> Result<u64, String> {
    let read = |base: u64, offset: u64| {
        field(base, offset)
            .and_then(|at| mem.read_u64(at))
            .map_err(|e| e.to_string())
    };
    if let Some(main) = l.runtime_interpreters_main {
        return match read(runtime, main)? {
            0 => Err("no main interpreter (not initialized yet?)".to_owned()),
            interp => Ok(interp),
        };
    }
    let mut interp = read(runtime, l.runtime_interpreters_head)?;
    if interp == 0 {
        return Err("the interpreter list is empty (not initialized yet?)".to_owned());
    }
    let (Some(id_off), Some(next_off)) = (l.interp_id, l.interp_next) else {
        return Err("the layout locates no main interpreter".to_owned());
    };
    for _ in 0..64 {
        if read(interp, id_off)? == 0 {
            return Ok(interp);
        }
        interp = read(interp, next_off)?;
        if interp == 0 {
            break;
        }
    }
    Err("no interpreter with id 0".to_owned())
}

/// Checks the thread list: every thread state points back at the interpreter and at least
/// one carries a thread id of the process. Returns the number of thread states.
fn validate_threads(
    mem: &dyn RemoteMemory,
    l: &PyLayout,
    interp: u64,
    tids: &[u64],
) -> Result<usize, String> {
    let read = |base: u64, offset: u64| {
        field(base, offset)
            .and_then(|at| mem.read_u64(at))
            .map_err(|e| e.to_string())
    };
    let mut tstate = read(interp, l.interp_threads_head)?;
    let mut n = 0;
    let mut known = 0;
    while tstate != 0 && n < MAX_THREADS_CHECKED {
        if read(tstate, l.tstate_interp)? != interp {
            return Err(format!(
                "thread state {tstate:#x} does not point back at interpreter {interp:#x}"
            ));
        }
        if tids.contains(&read(tstate, l.tstate_native_tid)?) {
            known += 1;
        }
        n += 1;
        tstate = read(tstate, l.tstate_next)?;
    }
    if n == 0 {
        return Err("the main interpreter has no thread states".to_owned());
    }
    if known == 0 && !tids.is_empty() {
        return Err("no thread state carries a thread id of the process".to_owned());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_hex_and_names() {
        assert_eq!(version_parts(0x030b_02f0), (3, 11, 2));
        assert_eq!(version_parts(0x030c_03f0), (3, 12, 3));
        assert_eq!(version_from_name("/usr/lib/libpython3.10.so.1.0"), "3.10");
        assert_eq!(version_from_name("/usr/bin/python3.9"), "3.9");
        assert!(is_candidate("/usr/bin/python3.11"));
        assert!(is_candidate("/x/lib/libpython3.12.so.1.0"));
        assert!(!is_candidate("/usr/lib/libcudart.so.13"));
    }
}
