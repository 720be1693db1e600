//! Fake CUDA (runtime + driver) used as ground truth by the profilemate end-to-end tests.
//!
//! # Installation
//! The one `libfakecuda.so` produced by this crate is copied (not symlinked: glibc would treat
//! symlinks to one file as one object) into a single directory under three names:
//! `libcudart.so.12`, `libcudart.so.13` and `libcuda.so.1`. Applications dlopen
//! `DIR/libcudart.so.12`; the runtime copy dlopens `libcuda.so.1` from its own directory (found
//! with `dladdr`) and calls the driver entry points through `dlsym` pointers, exactly like the
//! real libcudart, so probes on `libcuda.so.1` see runtime-originated driver calls
//! (`nested=1`). All simulated-GPU state lives in the `libcuda.so.1` copy; driver entry points
//! of other copies forward there without logging.
//!
//! # Simulated GPU
//! One worker thread runs a FIFO queue. Kernel duration = gridDimX microseconds; copies take
//! 1 µs + bytes/10 ns and never touch memory; event records are zero-length markers. Items run
//! on a virtual timeline: start = max(submission, previous end), end = start + duration.
//! Stream capture appends kernels/copies to the capture instead of executing them; a graph
//! launch is one queue item running its nodes back to back.
//!
//! # Ground-truth log (`FAKE_CUDA_LOG=path`; nothing is logged when unset)
//! All times are CLOCK_MONOTONIC ns. One line per exported CUDA call, written at return:
//! ```text
//! call ts=<entry> end=<return> pid=<pid> tid=<tid> api=<symbol> level=runtime|driver nested=0|1 [args] status=<rc>
//! exec kind=kernel|copy|graph|event stream=0x.. start=<ns> end=<ns> seq=<n> tag=<mark|-> pid=<pid> [dur_us=|bytes=|exec= nodes= dur_us=|event=]
//! mark ts=<ns> pid=<pid> tid=<tid> text=<text, whitespace and '=' replaced by '_'>
//! ```
//! `nested=1` exactly for driver calls made by a runtime function of this library. The `tag`
//! of an exec line is the last mark text at the time the item was *enqueued*.
//! Lines are buffered per loaded copy and appended (O_APPEND, whole lines only) when the
//! buffer passes 64 KiB, on `fakeCudaFlush()`, and at exit (atexit hook from `.init_array`).

#![allow(
    non_snake_case,
    reason = "exported symbols and C struct fields keep their CUDA names"
)]
#![allow(
    clippy::missing_safety_doc,
    reason = "C ABI entry points: the safety contract is that of the CUDA function of the same name"
)]
#![allow(
    clippy::too_many_arguments,
    reason = "cuLaunchKernel has the real CUDA signature"
)]

mod dispatch;
mod gpu;
mod log;

use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use dispatch::{driver, remote, Driver};
use gpu::{gpu, kernel_ns, Op, ERR_INVALID_VALUE, ERR_UNKNOWN, SUCCESS};
use log::Line;

/// `dim3`, passed by value (two integer registers on x86-64 SysV).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

/// `CUlaunchConfig` (hStream at offset 32).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUlaunchConfig {
    pub gridDimX: u32,
    pub gridDimY: u32,
    pub gridDimZ: u32,
    pub blockDimX: u32,
    pub blockDimY: u32,
    pub blockDimZ: u32,
    pub sharedMemBytes: u32,
    pub hStream: u64,
    pub attrs: *mut c_void,
    pub numAttrs: u32,
}

const _: () = assert!(std::mem::size_of::<Dim3>() == 12);
const _: () = assert!(std::mem::offset_of!(CUlaunchConfig, hStream) == 32);
const _: () = assert!(std::mem::offset_of!(CUlaunchConfig, attrs) == 40);
const _: () = assert!(std::mem::offset_of!(CUlaunchConfig, numAttrs) == 48);

thread_local! {
    /// Depth of runtime functions of this library on this thread (kept in the driver copy).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs an FFI body; a panic becomes `cudaErrorUnknown` instead of unwinding into C.
fn guard(f: impl FnOnce() -> i32) -> i32 {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(ERR_UNKNOWN)
}

/// Calls a driver entry point on behalf of a runtime function (marks it nested).
fn nested(d: &Driver, f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: plain calls into (a copy of) this library without arguments.
    unsafe { (d.fakeCudaNestEnter)() };
    let r = f();
    // SAFETY: as above.
    unsafe { (d.fakeCudaNestExit)() };
    r
}

fn call_line(api: &str, level: &str, nested: bool, ts: u64) -> Line {
    Line::new("call")
        .kv("ts", ts)
        .kv("end", log::now_ns())
        .kv("pid", log::pid())
        .kv("tid", log::tid())
        .kv("api", api)
        .kv("level", level)
        .kv("nested", u8::from(nested))
}

/// Logs a runtime-level call (the application called it: nested=0) and returns `status`.
fn rt(api: &str, ts: u64, status: i32, args: impl FnOnce(Line) -> Line) -> i32 {
    if log::enabled() {
        args(call_line(api, "runtime", false, ts))
            .kv("status", status)
            .emit();
    }
    status
}

/// Logs a driver-level call (nested when a runtime function of this library is on the stack).
fn drv(api: &str, ts: u64, status: i32, args: impl FnOnce(Line) -> Line) -> i32 {
    if log::enabled() {
        let n = DEPTH.with(|d| d.get() > 0);
        args(call_line(api, "driver", n, ts))
            .kv("status", status)
            .emit();
    }
    status
}

/// Whether `stream` is capturing, asked of the driver copy (only used for logging).
fn capturing(d: &Driver, stream: u64) -> bool {
    // SAFETY: plain call into (a copy of) this library.
    log::enabled() && unsafe { (d.fakeCudaIsCapturing)(stream) } != 0
}

/// Reads an output handle written by a callee (0 when the pointer is null).
fn out(p: *const u64) -> u64 {
    if p.is_null() {
        0
    } else {
        // SAFETY: non-null output pointers passed by the application point to a u64.
        unsafe { *p }
    }
}

/// Writes an output handle; ERR_INVALID_VALUE when the pointer is null.
fn put(p: *mut u64, v: u64) -> i32 {
    if p.is_null() {
        return ERR_INVALID_VALUE;
    }
    // SAFETY: non-null output pointers passed by the application point to a writable u64.
    unsafe { *p = v };
    SUCCESS
}

fn dims(l: Line, g: (u32, u32, u32), b: (u32, u32, u32)) -> Line {
    l.kv("grid", format_args!("{},{},{}", g.0, g.1, g.2))
        .kv("block", format_args!("{},{},{}", b.0, b.1, b.2))
}

// ---------------------------------------------------------------------------------------------
// Helpers (not CUDA)
// ---------------------------------------------------------------------------------------------

#[no_mangle]
pub extern "C" fn fakeCudaNestEnter() {
    DEPTH.with(|d| d.set(d.get() + 1));
}

#[no_mangle]
pub extern "C" fn fakeCudaNestExit() {
    DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
}

#[no_mangle]
pub extern "C" fn fakeCudaIsCapturing(stream: u64) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.fakeCudaIsCapturing)(stream) };
    }
    guard(|| i32::from(gpu().is_capturing(stream)))
}

/// Writes a `mark` line and makes `text` the tag of work enqueued from now on.
#[no_mangle]
pub unsafe extern "C" fn fakeCudaMark(text: *const c_char) {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.fakeCudaMark)(text) };
    }
    let _ = guard(|| {
        let s = if text.is_null() {
            String::new()
        } else {
            // SAFETY: the caller passes a NUL-terminated string.
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        };
        let clean: String = s
            .chars()
            .map(|c| {
                if c.is_whitespace() || c == '=' {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        gpu().set_tag(if clean.is_empty() { "-" } else { &clean });
        if log::enabled() {
            Line::new("mark")
                .kv("ts", log::now_ns())
                .kv("pid", log::pid())
                .kv("tid", log::tid())
                .text("text", &clean)
                .emit();
        }
        SUCCESS
    });
}

/// Writes this copy's buffered log lines (and the driver copy's) to `$FAKE_CUDA_LOG`.
#[no_mangle]
pub extern "C" fn fakeCudaFlush() {
    let _ = guard(|| {
        log::flush();
        SUCCESS
    });
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        unsafe { (d.fakeCudaFlush)() };
    }
}

// ---------------------------------------------------------------------------------------------
// Driver API
// ---------------------------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuInit(flags: u32) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuInit)(flags) };
    }
    guard(|| {
        let ts = log::now_ns();
        drv("cuInit", ts, SUCCESS, |l| l.kv("flags", flags))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(ph: *mut u64, flags: u32) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuStreamCreate)(ph, flags) };
    }
    guard(|| {
        let ts = log::now_ns();
        let st = if ph.is_null() {
            ERR_INVALID_VALUE
        } else {
            put(ph, gpu().stream_create())
        };
        drv("cuStreamCreate", ts, st, |l| {
            l.hex("stream", out(ph)).kv("flags", flags)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(ph: *mut u64, flags: u32) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuEventCreate)(ph, flags) };
    }
    guard(|| {
        let ts = log::now_ns();
        let st = if ph.is_null() {
            ERR_INVALID_VALUE
        } else {
            put(ph, gpu().event_create())
        };
        drv("cuEventCreate", ts, st, |l| {
            l.hex("event", out(ph)).kv("flags", flags)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(ev: u64) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuEventDestroy_v2)(ev) };
    }
    guard(|| {
        let ts = log::now_ns();
        let st = gpu().event_destroy(ev);
        drv("cuEventDestroy_v2", ts, st, |l| l.hex("event", ev))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture_v2(stream: u64, mode: i32) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuStreamBeginCapture_v2)(stream, mode) };
    }
    guard(|| {
        let ts = log::now_ns();
        let st = gpu().begin_capture(stream);
        drv("cuStreamBeginCapture_v2", ts, st, |l| {
            l.hex("stream", stream).kv("mode", mode)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamEndCapture(stream: u64, graph: *mut u64) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuStreamEndCapture)(stream, graph) };
    }
    guard(|| {
        let ts = log::now_ns();
        let st = if graph.is_null() {
            ERR_INVALID_VALUE
        } else {
            match gpu().end_capture(stream) {
                Ok(g) => put(graph, g),
                Err(e) => e,
            }
        };
        drv("cuStreamEndCapture", ts, st, |l| {
            l.hex("stream", stream).hex("graph", out(graph))
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    exec: *mut u64,
    graph: u64,
    flags: u64,
) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuGraphInstantiateWithFlags)(exec, graph, flags) };
    }
    guard(|| {
        let ts = log::now_ns();
        let st = if exec.is_null() {
            ERR_INVALID_VALUE
        } else {
            match gpu().instantiate(graph) {
                Ok(e) => put(exec, e),
                Err(e) => e,
            }
        };
        drv("cuGraphInstantiateWithFlags", ts, st, |l| {
            l.hex("exec", out(exec))
                .hex("graph", graph)
                .kv("flags", flags)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch(exec: u64, stream: u64) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuGraphLaunch)(exec, stream) };
    }
    guard(|| {
        let ts = log::now_ns();
        let (st, nodes, dur_us) = gpu().graph_launch(exec, stream);
        drv("cuGraphLaunch", ts, st, |l| {
            l.hex("exec", exec)
                .hex("stream", stream)
                .kv("nodes", nodes)
                .kv("dur_us", dur_us)
        })
    })
}

fn event_record(api: &str, ev: u64, stream: u64, flags: Option<u32>) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let s = gpu().event_record(ev, stream);
        drv(api, ts, s.status, |l| {
            let l = l.hex("event", ev).hex("stream", stream);
            let l = match flags {
                Some(f) => l.kv("flags", f),
                None => l,
            };
            l.kv("capturing", u8::from(s.capturing))
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(ev: u64, stream: u64) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuEventRecord)(ev, stream) };
    }
    event_record("cuEventRecord", ev, stream, None)
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecordWithFlags(ev: u64, stream: u64, flags: u32) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuEventRecordWithFlags)(ev, stream, flags) };
    }
    event_record("cuEventRecordWithFlags", ev, stream, Some(flags))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(ev: u64) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuEventQuery)(ev) };
    }
    guard(|| {
        let ts = log::now_ns();
        let st = gpu().event_query(ev);
        drv("cuEventQuery", ts, st, |l| l.hex("event", ev))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(ev: u64) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuEventSynchronize)(ev) };
    }
    guard(|| {
        let ts = log::now_ns();
        let st = gpu().event_sync(ev);
        drv("cuEventSynchronize", ts, st, |l| l.hex("event", ev))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(stream: u64) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuStreamSynchronize)(stream) };
    }
    guard(|| {
        let ts = log::now_ns();
        let st = gpu().stream_sync(stream);
        drv("cuStreamSynchronize", ts, st, |l| l.hex("stream", stream))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuCtxSynchronize)() };
    }
    guard(|| {
        let ts = log::now_ns();
        let st = gpu().ctx_sync();
        drv("cuCtxSynchronize", ts, st, |l| l)
    })
}

fn copy_async(api: &str, bytes: usize, kind: u32, stream: u64) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let s = gpu().submit(
            stream,
            Op::Copy {
                bytes: bytes as u64,
            },
        );
        drv(api, ts, s.status, |l| {
            l.hex("stream", stream)
                .kv("bytes", bytes)
                .kv("kind", kind)
                .kv("capturing", u8::from(s.capturing))
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: u64,
    src: *const c_void,
    bytes: usize,
    stream: u64,
) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuMemcpyHtoDAsync_v2)(dst, src, bytes, stream) };
    }
    copy_async("cuMemcpyHtoDAsync_v2", bytes, 1, stream)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: u64,
    bytes: usize,
    stream: u64,
) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuMemcpyDtoHAsync_v2)(dst, src, bytes, stream) };
    }
    copy_async("cuMemcpyDtoHAsync_v2", bytes, 2, stream)
}

/// Unified-addressing async copy (used by cudaMemcpyAsync for kinds other than H2D/D2H).
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyAsync(dst: u64, src: u64, bytes: usize, stream: u64) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuMemcpyAsync)(dst, src, bytes, stream) };
    }
    copy_async("cuMemcpyAsync", bytes, 4, stream)
}

/// Synchronous copy on the legacy stream: returns once the device got past it.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpy(dst: u64, src: u64, bytes: usize) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuMemcpy)(dst, src, bytes) };
    }
    guard(|| {
        let ts = log::now_ns();
        let st = gpu().copy_sync(bytes as u64);
        drv("cuMemcpy", ts, st, |l| {
            l.hex("stream", 0).kv("bytes", bytes)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut u64, bytes: usize) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuMemAlloc_v2)(dptr, bytes) };
    }
    guard(|| {
        let ts = log::now_ns();
        let st = if dptr.is_null() {
            ERR_INVALID_VALUE
        } else {
            put(dptr, gpu().mem_alloc(bytes as u64))
        };
        drv("cuMemAlloc_v2", ts, st, |l| {
            l.hex("ptr", out(dptr)).kv("bytes", bytes)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: u64) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuMemFree_v2)(dptr) };
    }
    guard(|| {
        let ts = log::now_ns();
        let st = gpu().mem_free(dptr);
        drv("cuMemFree_v2", ts, st, |l| l.hex("ptr", dptr))
    })
}

fn launch(
    api: &str,
    f: u64,
    g: (u32, u32, u32),
    b: (u32, u32, u32),
    shmem: u32,
    stream: u64,
) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let s = gpu().submit(
            stream,
            Op::Kernel {
                dur_ns: kernel_ns(g.0),
            },
        );
        drv(api, ts, s.status, |l| {
            dims(
                l.hex("stream", stream)
                    .kv("dur_us", g.0)
                    .kv("capturing", u8::from(s.capturing))
                    .hex("func", f),
                g,
                b,
            )
            .kv("shmem", shmem)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: u64,
    gx: u32,
    gy: u32,
    gz: u32,
    bx: u32,
    by: u32,
    bz: u32,
    shmem: u32,
    stream: u64,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe {
            (d.cuLaunchKernel)(f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra)
        };
    }
    launch(
        "cuLaunchKernel",
        f,
        (gx, gy, gz),
        (bx, by, bz),
        shmem,
        stream,
    )
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel_ptsz(
    f: u64,
    gx: u32,
    gy: u32,
    gz: u32,
    bx: u32,
    by: u32,
    bz: u32,
    shmem: u32,
    stream: u64,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe {
            (d.cuLaunchKernel_ptsz)(f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra)
        };
    }
    launch(
        "cuLaunchKernel_ptsz",
        f,
        (gx, gy, gz),
        (bx, by, bz),
        shmem,
        stream,
    )
}

fn launch_ex(api: &str, config: *const CUlaunchConfig, f: u64) -> i32 {
    if config.is_null() {
        let ts = log::now_ns();
        return drv(api, ts, ERR_INVALID_VALUE, |l| l.hex("func", f));
    }
    // SAFETY: non-null config pointers passed by the application point to a CUlaunchConfig.
    let c = unsafe { *config };
    launch(
        api,
        f,
        (c.gridDimX, c.gridDimY, c.gridDimZ),
        (c.blockDimX, c.blockDimY, c.blockDimZ),
        c.sharedMemBytes,
        c.hStream,
    )
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernelEx(
    config: *const CUlaunchConfig,
    f: u64,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuLaunchKernelEx)(config, f, params, extra) };
    }
    launch_ex("cuLaunchKernelEx", config, f)
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernelEx_ptsz(
    config: *const CUlaunchConfig,
    f: u64,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> i32 {
    if let Some(d) = remote() {
        // SAFETY: forwarding to the driver copy.
        return unsafe { (d.cuLaunchKernelEx_ptsz)(config, f, params, extra) };
    }
    launch_ex("cuLaunchKernelEx_ptsz", config, f)
}

// ---------------------------------------------------------------------------------------------
// Runtime API: every function with a driver twin calls it through `driver()`.
// ---------------------------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cudaStreamCreate(ps: *mut u64) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: call into the driver copy with the caller's arguments.
        let st = nested(d, || unsafe { (d.cuStreamCreate)(ps, 0) });
        rt("cudaStreamCreate", ts, st, |l| l.hex("stream", out(ps)))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamCreateWithFlags(ps: *mut u64, flags: u32) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: call into the driver copy with the caller's arguments.
        let st = nested(d, || unsafe { (d.cuStreamCreate)(ps, flags) });
        rt("cudaStreamCreateWithFlags", ts, st, |l| {
            l.hex("stream", out(ps)).kv("flags", flags)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaEventCreate(pe: *mut u64) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: call into the driver copy with the caller's arguments.
        let st = nested(d, || unsafe { (d.cuEventCreate)(pe, 0) });
        rt("cudaEventCreate", ts, st, |l| l.hex("event", out(pe)))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaEventCreateWithFlags(pe: *mut u64, flags: u32) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: call into the driver copy with the caller's arguments.
        let st = nested(d, || unsafe { (d.cuEventCreate)(pe, flags) });
        rt("cudaEventCreateWithFlags", ts, st, |l| {
            l.hex("event", out(pe)).kv("flags", flags)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaEventDestroy(ev: u64) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: call into the driver copy with the caller's arguments.
        let st = nested(d, || unsafe { (d.cuEventDestroy_v2)(ev) });
        rt("cudaEventDestroy", ts, st, |l| l.hex("event", ev))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamBeginCapture(stream: u64, mode: i32) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: call into the driver copy with the caller's arguments.
        let st = nested(d, || unsafe { (d.cuStreamBeginCapture_v2)(stream, mode) });
        rt("cudaStreamBeginCapture", ts, st, |l| {
            l.hex("stream", stream).kv("mode", mode)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamEndCapture(stream: u64, graph: *mut u64) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: call into the driver copy with the caller's arguments.
        let st = nested(d, || unsafe { (d.cuStreamEndCapture)(stream, graph) });
        rt("cudaStreamEndCapture", ts, st, |l| {
            l.hex("stream", stream).hex("graph", out(graph))
        })
    })
}

fn instantiate(api: &str, exec: *mut u64, graph: u64, flags: u64) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: call into the driver copy with the caller's arguments.
        let st = nested(d, || unsafe {
            (d.cuGraphInstantiateWithFlags)(exec, graph, flags)
        });
        rt(api, ts, st, |l| {
            l.hex("exec", out(exec))
                .hex("graph", graph)
                .kv("flags", flags)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaGraphInstantiate(exec: *mut u64, graph: u64, flags: u64) -> i32 {
    instantiate("cudaGraphInstantiate", exec, graph, flags)
}

#[no_mangle]
pub unsafe extern "C" fn cudaGraphInstantiateWithFlags(
    exec: *mut u64,
    graph: u64,
    flags: u64,
) -> i32 {
    instantiate("cudaGraphInstantiateWithFlags", exec, graph, flags)
}

#[no_mangle]
pub unsafe extern "C" fn cudaGraphLaunch(exec: u64, stream: u64) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: call into the driver copy with the caller's arguments.
        let st = nested(d, || unsafe { (d.cuGraphLaunch)(exec, stream) });
        rt("cudaGraphLaunch", ts, st, |l| {
            l.hex("exec", exec).hex("stream", stream)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaEventRecord(ev: u64, stream: u64) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        let cap = capturing(d, stream);
        // SAFETY: call into the driver copy with the caller's arguments.
        let st = nested(d, || unsafe { (d.cuEventRecord)(ev, stream) });
        rt("cudaEventRecord", ts, st, |l| {
            l.hex("event", ev)
                .hex("stream", stream)
                .kv("capturing", u8::from(cap))
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaEventRecordWithFlags(ev: u64, stream: u64, flags: u32) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        let cap = capturing(d, stream);
        // SAFETY: call into the driver copy with the caller's arguments.
        let st = nested(d, || unsafe {
            (d.cuEventRecordWithFlags)(ev, stream, flags)
        });
        rt("cudaEventRecordWithFlags", ts, st, |l| {
            l.hex("event", ev)
                .hex("stream", stream)
                .kv("flags", flags)
                .kv("capturing", u8::from(cap))
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaEventSynchronize(ev: u64) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: call into the driver copy with the caller's arguments.
        let st = nested(d, || unsafe { (d.cuEventSynchronize)(ev) });
        rt("cudaEventSynchronize", ts, st, |l| l.hex("event", ev))
    })
}

/// Returns 0 when the event completed, 600 (cudaErrorNotReady) otherwise.
#[no_mangle]
pub unsafe extern "C" fn cudaEventQuery(ev: u64) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: call into the driver copy with the caller's arguments.
        let st = nested(d, || unsafe { (d.cuEventQuery)(ev) });
        rt("cudaEventQuery", ts, st, |l| l.hex("event", ev))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaStreamSynchronize(stream: u64) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: call into the driver copy with the caller's arguments.
        let st = nested(d, || unsafe { (d.cuStreamSynchronize)(stream) });
        rt("cudaStreamSynchronize", ts, st, |l| l.hex("stream", stream))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaDeviceSynchronize() -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: call into the driver copy.
        let st = nested(d, || unsafe { (d.cuCtxSynchronize)() });
        rt("cudaDeviceSynchronize", ts, st, |l| l)
    })
}

/// Kind 1 (H2D) -> cuMemcpyHtoDAsync_v2, kind 2 (D2H) -> cuMemcpyDtoHAsync_v2, other kinds ->
/// cuMemcpyAsync (not one of the probed symbols).
#[no_mangle]
pub unsafe extern "C" fn cudaMemcpyAsync(
    dst: *mut c_void,
    src: *const c_void,
    count: usize,
    kind: i32,
    stream: u64,
) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        let cap = capturing(d, stream);
        // SAFETY: calls into the driver copy with the caller's arguments (never dereferenced).
        let st = nested(d, || unsafe {
            match kind {
                1 => (d.cuMemcpyHtoDAsync_v2)(dst as u64, src, count, stream),
                2 => (d.cuMemcpyDtoHAsync_v2)(dst, src as u64, count, stream),
                _ => (d.cuMemcpyAsync)(dst as u64, src as u64, count, stream),
            }
        });
        rt("cudaMemcpyAsync", ts, st, |l| {
            l.hex("stream", stream)
                .kv("bytes", count)
                .kv("kind", kind)
                .kv("capturing", u8::from(cap))
        })
    })
}

/// Synchronous copy: returns after the device completed it (and everything before it).
#[no_mangle]
pub unsafe extern "C" fn cudaMemcpy(
    dst: *mut c_void,
    src: *const c_void,
    count: usize,
    kind: i32,
) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: call into the driver copy (pointers are never dereferenced).
        let st = nested(d, || unsafe { (d.cuMemcpy)(dst as u64, src as u64, count) });
        rt("cudaMemcpy", ts, st, |l| {
            l.hex("stream", 0).kv("bytes", count).kv("kind", kind)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaMalloc(p: *mut *mut c_void, size: usize) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: `*mut c_void` and `u64` have the same size; the driver writes one pointer.
        let st = nested(d, || unsafe { (d.cuMemAlloc_v2)(p.cast::<u64>(), size) });
        rt("cudaMalloc", ts, st, |l| {
            l.hex("ptr", out(p.cast::<u64>())).kv("bytes", size)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cudaFree(p: *mut c_void) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        // SAFETY: call into the driver copy (the pointer is never dereferenced).
        let st = nested(d, || unsafe { (d.cuMemFree_v2)(p as u64) });
        rt("cudaFree", ts, st, |l| l.hex("ptr", p as u64))
    })
}

/// `cudaLaunchKernel(func, dim3 grid, dim3 block, void** args, size_t shmem, cudaStream_t)`.
#[no_mangle]
pub unsafe extern "C" fn cudaLaunchKernel(
    func: *const c_void,
    grid: Dim3,
    block: Dim3,
    args: *mut *mut c_void,
    shmem: usize,
    stream: u64,
) -> i32 {
    guard(|| {
        let ts = log::now_ns();
        let d = driver();
        let cap = capturing(d, stream);
        // SAFETY: call into the driver copy with the caller's arguments.
        let st = nested(d, || unsafe {
            (d.cuLaunchKernel)(
                func as u64,
                grid.x,
                grid.y,
                grid.z,
                block.x,
                block.y,
                block.z,
                shmem as u32,
                stream,
                args,
                std::ptr::null_mut(),
            )
        });
        rt("cudaLaunchKernel", ts, st, |l| {
            dims(
                l.hex("stream", stream)
                    .kv("dur_us", grid.x)
                    .kv("capturing", u8::from(cap))
                    .hex("func", func as u64),
                (grid.x, grid.y, grid.z),
                (block.x, block.y, block.z),
            )
            .kv("shmem", shmem)
        })
    })
}
