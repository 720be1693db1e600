//! Records and maps of the Python side: CPython frame-chain walks (at CUDA probe hits and
//! on sampling ticks) and USDT probe hits (CPython's `gc__start`/`gc__done`).
//!
//! The kernel side knows no CPython version: userspace resolves the interpreter's layout
//! (built-in tables, or the target's own `_Py_DebugOffsets`) into one `PyProcConfig` per
//! process, and the walker only follows the offsets it is given.

/// Name of the hash map `tgid -> PyProcConfig` of processes whose Python stacks are walked.
pub const PY_PROCS_MAP: &str = "PY_PROCS";
/// Name of the hash map `tid -> PyThreadRef` of the Python threads of those processes.
pub const PY_THREADS_MAP: &str = "PY_THREADS";
/// Name of the array `ApiId -> CUDA_STACK_*`: at which CUDA probe hits to walk the stack.
pub const CUDA_STACKS_MAP: &str = "CUDA_STACKS";
/// Name of the array `spec slot -> UsdtSpec` (the bpf cookie of a USDT probe is its slot).
pub const USDT_SPECS_MAP: &str = "USDT_SPECS";

/// Frames kept per walk, innermost first; deeper stacks are cut (`STACK_TRUNCATED`).
pub const MAX_PY_FRAMES: usize = 128;
/// Capacity of `PY_THREADS`.
pub const MAX_PY_THREADS: u32 = 65536;
/// Capacity of `PY_PROCS`.
pub const MAX_PY_PROCS: u32 = 1024;
/// Slots of `USDT_SPECS`.
pub const USDT_SPEC_SLOTS: u32 = 64;
/// Arguments decoded per USDT probe (CPython's GC probes have one).
pub const USDT_MAX_ARGS: usize = 3;
/// "No such field" in a `PyProcConfig` offset.
pub const NO_OFFSET: u16 = u16::MAX;

/// `CUDA_STACKS` values.
pub mod cuda_stack {
    /// Never walk at this API.
    pub const NEVER: u32 = 0;
    /// Walk at every entry, and arm the thread's next kernel launch.
    pub const ALWAYS: u32 = 1;
    /// Walk only at the first entry after an `ALWAYS` hit on the same thread (kernel launches).
    pub const FIRST_AFTER_BOUNDARY: u32 = 2;
}

/// Why a stack was walked (`PyStackRecord::reason`).
pub mod stack_reason {
    /// A perf sampling tick of a target thread.
    pub const SAMPLE: u16 = 1;
    /// A CUDA API entry probe (`PyStackRecord::api` says which).
    pub const CUDA_CALL: u16 = 2;
    /// A hardware breakpoint on the first code unit of a watched Python function fired: the
    /// function was just entered (`PyStackRecord::api` carries the breakpoint's bpf cookie).
    pub const BREAKPOINT: u16 = 3;
}

/// Frames walked at a breakpoint hit: the entered function, its callers (the caller tells
/// why a preemption happened), no more (a full walk would cost a few µs per call).
pub const BREAKPOINT_FRAMES: u32 = 4;

/// `PyStackRecord::flags`.
pub mod stack_flags {
    /// The chain was longer than `MAX_PY_FRAMES`; the outermost frames are missing.
    pub const TRUNCATED: u16 = 1;
    /// The thread has no known Python thread state (a native thread, one created since the
    /// last rescan, or a stale entry).
    pub const NO_THREAD_STATE: u16 = 2;
    /// A read of target memory failed mid-walk; the frames before it are valid.
    pub const READ_FAILED: u16 = 4;
    /// The process has no walkable interpreter (not Python, or unsupported).
    pub const NO_PYTHON: u16 = 8;
}

/// What the walker needs to follow a process's frames, resolved by userspace per process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProcConfig {
    /// `PyThreadState.native_thread_id` (checked against `PyThreadRef::native_tid`).
    pub tstate_native_tid: u16,
    /// `PyThreadState.cframe` (3.11, 3.12) or `.current_frame` (3.13+).
    pub tstate_frame: u16,
    /// `_PyCFrame.current_frame`, or `NO_OFFSET` when `tstate_frame` is the frame itself.
    pub cframe_current_frame: u16,
    /// `_PyInterpreterFrame.f_code` / `.f_executable`.
    pub frame_code: u16,
    /// `_PyInterpreterFrame.previous`.
    pub frame_previous: u16,
    /// `_PyInterpreterFrame.prev_instr` (3.11, 3.12) / `.instr_ptr` (3.13+).
    pub frame_instr: u16,
    /// `_PyInterpreterFrame.owner` (a byte).
    pub frame_owner: u16,
    /// `PyCodeObject.co_firstlineno`: read per frame as a cheap identity check of a cached
    /// code object (addresses of freed code objects are reused).
    pub code_first_line: u16,
    /// `PyCodeObject.co_code_adaptive`: start of the bytecode.
    pub code_adaptive: u16,
    /// Frames whose `owner` is at least this are not Python frames (C-stack shims and
    /// interpreter-owned entry frames, 3.12+) and are skipped; 0xff when none exist.
    pub owner_skip_min: u8,
    /// Explicit padding.
    pub _pad1: u8,
    /// `_PyInterpreterFrame.localsplus[1]`: a method's first argument after `self`, kept
    /// per frame so that userspace can read the object a vLLM method was called with
    /// (the `SchedulerOutput` of `execute_model`, the descriptor of `run_fullgraph`).
    pub frame_arg1: u16,
    /// Explicit padding.
    pub _pad2: u16,
    /// Mask applied to the code pointer (3.14 tags `f_executable` stack references).
    pub code_pointer_mask: u64,
}

const _: () = assert!(core::mem::size_of::<PyProcConfig>() == 32);

/// A thread's `PyThreadState`, found by userspace in the interpreter's thread list (the
/// kernel side then needs no list walk: one lookup and one check per walk).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyThreadRef {
    /// Address of the thread state.
    pub tstate: u64,
    /// The thread id the thread state carries (namespace-local); a mismatch at walk time
    /// means the state was freed and reused: the walk is skipped.
    pub native_tid: u64,
}

/// One frame of a walked stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyFrame {
    /// Address of the code object.
    pub code: u64,
    /// Byte offset of the current instruction in the bytecode (`u32::MAX`: unknown).
    pub instr_offset: u32,
    /// `co_firstlineno` read from the code object (identity check for the symbol cache).
    pub first_line: i32,
    /// `localsplus[1]` at walk time (masked like the code pointer; 0 when unread): the
    /// frame's second argument, captured atomically with the stack.
    pub arg1: u64,
}

/// A walked Python stack; frames innermost first. Fixed size (the ring buffer reserves
/// constant sizes); `depth` frames are valid.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PyStackRecord {
    /// `record_kind::PY_STACK`.
    pub kind: u16,
    /// One of `stack_reason::*`.
    pub reason: u16,
    /// Process.
    pub tgid: u32,
    /// Thread.
    pub tid: u32,
    /// Valid entries of `frames`.
    pub depth: u16,
    /// `stack_flags::*` bits.
    pub flags: u16,
    /// `bpf_ktime_get_ns()`; equal to the CUDA call record's for `CUDA_CALL`.
    pub ts_ns: u64,
    /// The `ApiId` of a `CUDA_CALL` walk; the bpf cookie of a `BREAKPOINT` walk.
    pub api: u16,
    /// CPU the walk ran on.
    pub cpu: u16,
    /// ns from `ts_ns` to the end of the walk (saturated): for a `CUDA_CALL` walk, time the
    /// tracer spent inside the call, which userspace takes off the call's duration.
    pub walk_ns: u32,
    /// Innermost first.
    pub frames: [PyFrame; MAX_PY_FRAMES],
    /// The walker's copy of the frame being read (not for userspace). It lives in the
    /// reserved record because a walk can be interrupted by another on the same CPU (a
    /// sampling tick inside a uprobe program), so no per-CPU buffer is private to one walk.
    pub scratch: [u64; FRAME_SCRATCH_WORDS],
}

/// Words of `PyStackRecord::scratch`: a power of two, so a masked index stays inside it.
pub const FRAME_SCRATCH_WORDS: usize = 16;

const _: () = assert!(
    core::mem::size_of::<PyStackRecord>() == 32 + 24 * MAX_PY_FRAMES + 8 * FRAME_SCRATCH_WORDS
);

impl Default for PyStackRecord {
    fn default() -> Self {
        Self {
            kind: crate::record_kind::PY_STACK,
            reason: 0,
            tgid: 0,
            tid: 0,
            depth: 0,
            flags: 0,
            ts_ns: 0,
            api: 0,
            cpu: 0,
            walk_ns: 0,
            frames: [PyFrame::default(); MAX_PY_FRAMES],
            scratch: [0; FRAME_SCRATCH_WORDS],
        }
    }
}

/// A USDT probe hit with its decoded arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtRecord {
    /// `record_kind::USDT`.
    pub kind: u16,
    /// `UsdtSpec::probe` of the probe that fired.
    pub probe: u16,
    /// Process.
    pub tgid: u32,
    /// Thread.
    pub tid: u32,
    /// Bit i: argument i could not be read.
    pub failed_args: u32,
    /// `bpf_ktime_get_ns()`.
    pub ts_ns: u64,
    /// Decoded arguments, sign-extended per their spec.
    pub args: [u64; USDT_MAX_ARGS],
}

const _: () = assert!(core::mem::size_of::<UsdtRecord>() == 48);

/// Where a USDT argument lives (`UsdtArgSpec::location`).
pub mod usdt_location {
    /// Unused argument slot.
    pub const NONE: u8 = 0;
    /// In a register: the value at `reg_offset` of `pt_regs`.
    pub const REGISTER: u8 = 1;
    /// In memory at register + `value`.
    pub const MEMORY: u8 = 2;
    /// A constant: `value`.
    pub const CONSTANT: u8 = 3;
}

/// One decoded `.note.stapsdt` argument spec (`-4@%eax`, `8@-16(%rbp)`, `-4@$5`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtArgSpec {
    /// One of `usdt_location::*`.
    pub location: u8,
    /// Size in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// Whether to sign-extend.
    pub signed: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Byte offset of the register in `pt_regs`.
    pub reg_offset: u16,
    /// Explicit padding.
    pub _pad2: u16,
    /// Displacement (`MEMORY`) or value (`CONSTANT`).
    pub value: i64,
}

/// A USDT probe's identity and argument specs, indexed by its bpf cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtSpec {
    /// Probe id reported in `UsdtRecord::probe` (`usdt_probe::*`).
    pub probe: u16,
    /// Arguments used.
    pub nargs: u16,
    /// Explicit padding.
    pub _pad: u32,
    /// Argument specs.
    pub args: [UsdtArgSpec; USDT_MAX_ARGS],
}

const _: () = assert!(core::mem::size_of::<UsdtSpec>() == 56);

/// Probe ids of the USDT probes ProfileMate uses.
pub mod usdt_probe {
    /// `python:gc__start(int generation)`.
    pub const GC_START: u16 = 1;
    /// `python:gc__done(Py_ssize_t collected)`.
    pub const GC_DONE: u16 = 2;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY (all five): repr(C), integer fields only, explicit padding (sizes asserted
    // above), any bit pattern is valid.
    unsafe impl aya::Pod for PyProcConfig {}
    unsafe impl aya::Pod for PyThreadRef {}
    unsafe impl aya::Pod for UsdtSpec {}
    unsafe impl aya::Pod for UsdtArgSpec {}
    unsafe impl aya::Pod for PyFrame {}
}
