//! `pm-fixture`: a vLLM-shaped target for profilemate tests.
//!
//! It dlopens the fake CUDA runtime at run time (`--lib-dir DIR` -> `DIR/libcudart.so.12`, and
//! `DIR/libcuda.so.1` for the direct, Triton-like `cuLaunchKernelEx`), so a profiler can attach
//! before the library is loaded. See `usage()` for the options.
//!
//! Each step: (with `--prep-event`, V1's `prepare_inputs_event`: a wait for the previous
//! step's input event), a mark `step N` for the fake GPU's log, the input copy, (the input
//! event's record), the forward by `--shape`, the output copy, the step's event record, and
//! the wait for the event `--async-depth` steps old (polled first with `--poll-us`). A 0 byte
//! count leaves that copy out.
//!
//! Stdout protocol: `pid=<pid> waiting` (only with --wait-before-load-ms > 0, before the sleep),
//! `pid=<pid> ready` (library loaded, no CUDA call made yet), `pid=<pid> start` (after --wait-after-load-ms, the loop begins), `done steps=<n>` at the end (also
//! on --exit-after-steps), `calls_per_sec=<f64>` for --hot-loop.

use std::ffi::{c_char, c_void, CString};
use std::io::Write as _;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

#[repr(C)]
#[derive(Clone, Copy)]
struct Dim3 {
    x: u32,
    y: u32,
    z: u32,
}

#[repr(C)]
#[allow(non_snake_case, reason = "CUDA field names")]
struct CUlaunchConfig {
    gridDimX: u32,
    gridDimY: u32,
    gridDimZ: u32,
    blockDimX: u32,
    blockDimY: u32,
    blockDimZ: u32,
    sharedMemBytes: u32,
    hStream: u64,
    attrs: *mut c_void,
    numAttrs: u32,
}

const USAGE: &str = "usage: pm-fixture --lib-dir DIR [--wait-before-load-ms N] [--wait-after-load-ms N] [--graphs G] \
[--kernels-per-graph K] [--kernel-us US] [--steps N] [--eager-kernels E] [--h2d-bytes B] \
[--d2h-bytes B] [--async-depth 1|2] [--sync-mode events|stream] [--step-gap-us US] [--forever] \
[--spawn-child-after-ms N] [--exit-after-steps N] [--hot-loop N] \
[--shape alternate|eager|graph|piecewise] [--events reused|fresh] [--prep-event] [--poll-us US] \
[--seccomp-kill-uretprobe]";

#[derive(Clone, Copy, PartialEq, Eq)]
enum SyncMode {
    Events,
    Stream,
}

/// What a step's forward launches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Graph replays on odd steps, eager kernels on even ones (eager only without graphs).
    Alternate,
    /// `--eager-kernels` runtime launches and one direct `cuLaunchKernelEx`.
    Eager,
    /// One graph replay.
    Graph,
    /// Every captured graph replayed, an eager kernel after each (attention between
    /// torch.compile's pieces).
    Piecewise,
}

struct Opts {
    lib_dir: String,
    wait_before_load_ms: u64,
    wait_after_load_ms: u64,
    graphs: u32,
    kernels_per_graph: u32,
    kernel_us: u32,
    steps: u64,
    eager_kernels: u32,
    h2d_bytes: usize,
    d2h_bytes: usize,
    async_depth: u32,
    sync_mode: SyncMode,
    step_gap_us: u64,
    forever: bool,
    spawn_child_after_ms: Option<u64>,
    exit_after_steps: Option<u64>,
    hot_loop: Option<u64>,
    shape: Shape,
    /// A new event per step, destroyed once waited for (vLLM V2's per-step `copy_event`).
    fresh_events: bool,
    prep_event: bool,
    poll_us: u64,
    /// Run under a seccomp filter that kills the process at the `uretprobe` syscall (a filter
    /// written before the syscall existed, as an allow-list is).
    seccomp_kill_uretprobe: bool,
}

fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("invalid value for {key}: {v:?}"))
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        lib_dir: String::new(),
        wait_before_load_ms: 0,
        wait_after_load_ms: 0,
        graphs: 2,
        kernels_per_graph: 3,
        kernel_us: 200,
        steps: 50,
        eager_kernels: 4,
        h2d_bytes: 4096,
        d2h_bytes: 1024,
        async_depth: 2,
        sync_mode: SyncMode::Events,
        step_gap_us: 300,
        forever: false,
        spawn_child_after_ms: None,
        exit_after_steps: None,
        hot_loop: None,
        shape: Shape::Alternate,
        fresh_events: false,
        prep_event: false,
        poll_us: 0,
        seccomp_kill_uretprobe: false,
    };
    let mut it = args.iter();
    while let Some(k) = it.next() {
        if k == "--forever" {
            o.forever = true;
            continue;
        }
        if k == "--prep-event" {
            o.prep_event = true;
            continue;
        }
        if k == "--seccomp-kill-uretprobe" {
            o.seccomp_kill_uretprobe = true;
            continue;
        }
        if k == "--help" || k == "-h" {
            return Err(String::new());
        }
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--lib-dir" => o.lib_dir = v.clone(),
            "--wait-before-load-ms" => o.wait_before_load_ms = num(k, v)?,
            "--wait-after-load-ms" => o.wait_after_load_ms = num(k, v)?,
            "--graphs" => o.graphs = num(k, v)?,
            "--kernels-per-graph" => o.kernels_per_graph = num(k, v)?,
            "--kernel-us" => o.kernel_us = num(k, v)?,
            "--steps" => o.steps = num(k, v)?,
            "--eager-kernels" => o.eager_kernels = num(k, v)?,
            "--h2d-bytes" => o.h2d_bytes = num(k, v)?,
            "--d2h-bytes" => o.d2h_bytes = num(k, v)?,
            "--async-depth" => {
                o.async_depth = num(k, v)?;
                if !(1..=2).contains(&o.async_depth) {
                    return Err("--async-depth must be 1 or 2".into());
                }
            }
            "--sync-mode" => {
                o.sync_mode = match v.as_str() {
                    "events" => SyncMode::Events,
                    "stream" => SyncMode::Stream,
                    _ => return Err(format!("invalid --sync-mode {v:?}")),
                }
            }
            "--step-gap-us" => o.step_gap_us = num(k, v)?,
            "--spawn-child-after-ms" => o.spawn_child_after_ms = Some(num(k, v)?),
            "--exit-after-steps" => o.exit_after_steps = Some(num(k, v)?),
            "--hot-loop" => o.hot_loop = Some(num(k, v)?),
            "--shape" => {
                o.shape = match v.as_str() {
                    "alternate" => Shape::Alternate,
                    "eager" => Shape::Eager,
                    "graph" => Shape::Graph,
                    "piecewise" => Shape::Piecewise,
                    _ => return Err(format!("invalid --shape {v:?}")),
                }
            }
            "--events" => {
                o.fresh_events = match v.as_str() {
                    "reused" => false,
                    "fresh" => true,
                    _ => return Err(format!("invalid --events {v:?}")),
                }
            }
            "--poll-us" => o.poll_us = num(k, v)?,
            _ => return Err(format!("unknown option {k}")),
        }
    }
    if o.lib_dir.is_empty() {
        return Err("--lib-dir is required".into());
    }
    Ok(o)
}

/// Function pointers resolved from the fake libraries.
struct Cuda {
    stream_create_with_flags: unsafe extern "C" fn(*mut u64, u32) -> i32,
    event_create_with_flags: unsafe extern "C" fn(*mut u64, u32) -> i32,
    event_destroy: unsafe extern "C" fn(u64) -> i32,
    malloc: unsafe extern "C" fn(*mut *mut c_void, usize) -> i32,
    free: unsafe extern "C" fn(*mut c_void) -> i32,
    begin_capture: unsafe extern "C" fn(u64, i32) -> i32,
    end_capture: unsafe extern "C" fn(u64, *mut u64) -> i32,
    graph_instantiate_with_flags: unsafe extern "C" fn(*mut u64, u64, u64) -> i32,
    graph_launch: unsafe extern "C" fn(u64, u64) -> i32,
    launch_kernel:
        unsafe extern "C" fn(*const c_void, Dim3, Dim3, *mut *mut c_void, usize, u64) -> i32,
    memcpy_async: unsafe extern "C" fn(*mut c_void, *const c_void, usize, i32, u64) -> i32,
    event_record_with_flags: unsafe extern "C" fn(u64, u64, u32) -> i32,
    event_synchronize: unsafe extern "C" fn(u64) -> i32,
    event_query: unsafe extern "C" fn(u64) -> i32,
    stream_synchronize: unsafe extern "C" fn(u64) -> i32,
    mark: unsafe extern "C" fn(*const c_char),
    flush: unsafe extern "C" fn(),
    cu_launch_kernel_ex:
        unsafe extern "C" fn(*const CUlaunchConfig, u64, *mut *mut c_void, *mut *mut c_void) -> i32,
}

fn open(path: &str) -> Result<*mut c_void, String> {
    let c = CString::new(path).map_err(|e| e.to_string())?;
    // SAFETY: `c` is a NUL-terminated path; the handle stays open for the process lifetime.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        // SAFETY: dlerror returns a NUL-terminated string or null.
        let e = unsafe { libc::dlerror() };
        let msg = if e.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: non-null dlerror result is a valid C string.
            unsafe { std::ffi::CStr::from_ptr(e) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(format!("dlopen {path}: {msg}"));
    }
    Ok(h)
}

/// dlsym + cast to the function pointer type `F`.
///
/// # Safety
/// `F` must be the `unsafe extern "C" fn` type matching the symbol's C signature.
unsafe fn sym<F: Copy>(h: *mut c_void, name: &str) -> Result<F, String> {
    let c = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: `h` is a live dlopen handle, `c` NUL-terminated.
    let p = unsafe { libc::dlsym(h, c.as_ptr()) };
    if p.is_null() {
        return Err(format!("dlsym {name}: not found"));
    }
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: per the contract, F is a function pointer type of the right signature.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
}

/// Installs, for this thread and every thread it creates later, a seccomp filter that kills the
/// process at the x86-64 `uretprobe` syscall (335) and allows everything else.
fn seccomp_kill_uretprobe() -> Result<(), String> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const NR_URETPROBE: u32 = 335;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut prog = [
        op(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        op(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        op(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(JEQ_K, 0, 1, NR_URETPROBE),
        op(RET_K, 0, 0, RET_KILL_PROCESS),
        op(RET_K, 0, 0, RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: prctl with the documented arguments; `fprog` outlives the call.
    let rc = unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            -1
        } else {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
            )
        }
    };
    if rc != 0 {
        return Err(format!("seccomp: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn load(dir: &str) -> Result<Cuda, String> {
    let rt = open(&format!("{dir}/libcudart.so.12"))?;
    let drv = open(&format!("{dir}/libcuda.so.1"))?;
    // SAFETY: each type below is the C signature of the named symbol.
    unsafe {
        Ok(Cuda {
            stream_create_with_flags: sym(rt, "cudaStreamCreateWithFlags")?,
            event_create_with_flags: sym(rt, "cudaEventCreateWithFlags")?,
            event_destroy: sym(rt, "cudaEventDestroy")?,
            malloc: sym(rt, "cudaMalloc")?,
            free: sym(rt, "cudaFree")?,
            begin_capture: sym(rt, "cudaStreamBeginCapture")?,
            end_capture: sym(rt, "cudaStreamEndCapture")?,
            graph_instantiate_with_flags: sym(rt, "cudaGraphInstantiateWithFlags")?,
            graph_launch: sym(rt, "cudaGraphLaunch")?,
            launch_kernel: sym(rt, "cudaLaunchKernel")?,
            memcpy_async: sym(rt, "cudaMemcpyAsync")?,
            event_record_with_flags: sym(rt, "cudaEventRecordWithFlags")?,
            event_synchronize: sym(rt, "cudaEventSynchronize")?,
            event_query: sym(rt, "cudaEventQuery")?,
            stream_synchronize: sym(rt, "cudaStreamSynchronize")?,
            mark: sym(rt, "fakeCudaMark")?,
            flush: sym(rt, "fakeCudaFlush")?,
            cu_launch_kernel_ex: sym(drv, "cuLaunchKernelEx")?,
        })
    }
}

fn check(what: &str, rc: i32) {
    if rc != 0 {
        eprintln!("pm-fixture: {what} failed with {rc}");
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signals() {
    for s in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe); `sa` is fully
        // initialized before use.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(s, &sa, std::ptr::null_mut());
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Arguments for the child: ours minus `--spawn-child-after-ms N`.
fn child_args(args: &[String]) -> Vec<String> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--spawn-child-after-ms" {
            i += 2;
            continue;
        }
        v.push(args[i].clone());
        i += 1;
    }
    v
}

struct Fixture {
    c: Cuda,
    o: Opts,
    stream: u64,
    ev: [u64; 2],
    /// V1's `prepare_inputs_event` (`--prep-event`).
    prep: u64,
    /// Step events recorded and not yet waited for, oldest first.
    in_flight: std::collections::VecDeque<u64>,
    execs: Vec<u64>,
    dev_in: *mut c_void,
    dev_out: *mut c_void,
    host_in: Vec<u8>,
    host_out: Vec<u8>,
}

impl Fixture {
    fn mark(&self, text: &str) {
        if let Ok(c) = CString::new(text) {
            // SAFETY: NUL-terminated string valid for the call.
            unsafe { (self.c.mark)(c.as_ptr()) };
        }
    }

    fn flush(&self) {
        // SAFETY: no arguments.
        unsafe { (self.c.flush)() };
    }

    fn launch(&self) {
        let grid = Dim3 {
            x: self.o.kernel_us,
            y: 1,
            z: 1,
        };
        let block = Dim3 { x: 128, y: 1, z: 1 };
        // SAFETY: fake kernel handle and null args are accepted by the fake runtime.
        let rc = unsafe {
            (self.c.launch_kernel)(
                0x1000 as *const c_void,
                grid,
                block,
                std::ptr::null_mut(),
                0,
                self.stream,
            )
        };
        check("cudaLaunchKernel", rc);
    }

    fn launch_ex(&self) {
        let cfg = CUlaunchConfig {
            gridDimX: self.o.kernel_us,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: 256,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            hStream: self.stream,
            attrs: std::ptr::null_mut(),
            numAttrs: 0,
        };
        // SAFETY: `cfg` outlives the call; fake function handle and null params are accepted.
        let rc = unsafe {
            (self.c.cu_launch_kernel_ex)(&cfg, 0x2000, std::ptr::null_mut(), std::ptr::null_mut())
        };
        check("cuLaunchKernelEx", rc);
    }

    fn h2d(&self, bytes: usize) {
        // SAFETY: the fake never dereferences copy pointers.
        let rc = unsafe {
            (self.c.memcpy_async)(
                self.dev_in,
                self.host_in.as_ptr().cast(),
                bytes,
                1,
                self.stream,
            )
        };
        check("cudaMemcpyAsync(H2D)", rc);
    }

    fn d2h(&mut self, bytes: usize) {
        // SAFETY: the fake never dereferences copy pointers.
        let rc = unsafe {
            (self.c.memcpy_async)(
                self.host_out.as_mut_ptr().cast(),
                self.dev_out,
                bytes,
                2,
                self.stream,
            )
        };
        check("cudaMemcpyAsync(D2H)", rc);
    }

    fn record(&self, ev: u64) {
        // SAFETY: plain handles.
        check("cudaEventRecordWithFlags", unsafe {
            (self.c.event_record_with_flags)(ev, self.stream, 0)
        });
    }

    fn event_sync(&self, ev: u64) {
        // SAFETY: plain handle.
        check("cudaEventSynchronize", unsafe {
            (self.c.event_synchronize)(ev)
        });
    }

    fn stream_sync(&self) {
        // SAFETY: plain handle.
        check("cudaStreamSynchronize", unsafe {
            (self.c.stream_synchronize)(self.stream)
        });
    }

    fn setup(&mut self) {
        // SAFETY: output pointers are valid locals/fields for each call.
        unsafe {
            check(
                "cudaStreamCreateWithFlags",
                (self.c.stream_create_with_flags)(&mut self.stream, 1),
            );
            for e in self.ev.iter_mut().chain(std::iter::once(&mut self.prep)) {
                check(
                    "cudaEventCreateWithFlags",
                    (self.c.event_create_with_flags)(e, 0),
                );
            }
            check(
                "cudaMalloc",
                (self.c.malloc)(&mut self.dev_in, self.o.h2d_bytes.max(8)),
            );
            check(
                "cudaMalloc",
                (self.c.malloc)(&mut self.dev_out, self.o.d2h_bytes.max(8)),
            );
        }
        // Capture phase (like vLLM's CUDA graph capture at startup).
        for _ in 0..self.o.graphs {
            let mut graph = 0u64;
            let mut exec = 0u64;
            // SAFETY: plain handles.
            check("cudaStreamBeginCapture", unsafe {
                (self.c.begin_capture)(self.stream, 0)
            });
            for _ in 0..self.o.kernels_per_graph {
                self.launch();
            }
            // SAFETY: output pointers are valid locals.
            unsafe {
                check(
                    "cudaStreamEndCapture",
                    (self.c.end_capture)(self.stream, &mut graph),
                );
                check(
                    "cudaGraphInstantiateWithFlags",
                    (self.c.graph_instantiate_with_flags)(&mut exec, graph, 0),
                );
            }
            self.execs.push(exec);
        }
    }

    fn graph_launch(&self, exec: u64) {
        // SAFETY: plain handles.
        check("cudaGraphLaunch", unsafe {
            (self.c.graph_launch)(exec, self.stream)
        });
    }

    fn eager(&self) {
        for _ in 0..self.o.eager_kernels {
            self.launch();
        }
        self.launch_ex();
    }

    /// The forward of step `i`, by `--shape`.
    fn forward(&self, i: u64) {
        let g = self.execs.len() as u64;
        match self.o.shape {
            Shape::Piecewise => {
                for &exec in &self.execs {
                    self.graph_launch(exec);
                    self.launch();
                }
            }
            Shape::Graph if g > 0 => self.graph_launch(self.execs[(i % g) as usize]),
            Shape::Alternate if g > 0 && i % 2 == 1 => {
                self.graph_launch(self.execs[((i / 2) % g) as usize]);
            }
            _ => self.eager(),
        }
    }

    /// The event that ends step `i`: one of two reused ones, or a fresh one.
    fn step_event(&self, i: u64) -> u64 {
        if !self.o.fresh_events {
            return self.ev[(i % 2) as usize];
        }
        let mut ev = 0u64;
        // SAFETY: the output pointer is a valid local.
        check("cudaEventCreateWithFlags", unsafe {
            (self.c.event_create_with_flags)(&mut ev, 0)
        });
        ev
    }

    /// Waits for `ev` (polled first with `--poll-us`); a fresh event is destroyed after.
    fn wait(&self, ev: u64) {
        if self.o.poll_us > 0 {
            // SAFETY: PR_SET_TIMERSLACK only affects this thread: 1 ns instead of the default
            // 50 µs, so the pause between polls is about what was asked.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
            // SAFETY: plain handle.
            while unsafe { (self.c.event_query)(ev) } == 600 {
                std::thread::sleep(Duration::from_micros(self.o.poll_us));
            }
        }
        self.event_sync(ev);
        if self.o.fresh_events {
            // SAFETY: plain handle, not used again.
            check("cudaEventDestroy", unsafe { (self.c.event_destroy)(ev) });
        }
    }

    fn step(&mut self, i: u64) {
        // V1's execute_model: the previous step's inputs must be on the GPU before reuse.
        if self.o.prep_event && i > 0 {
            self.event_sync(self.prep);
        }
        self.mark(&format!("step {i}"));
        if self.o.h2d_bytes > 0 {
            self.h2d(self.o.h2d_bytes);
        }
        if self.o.prep_event {
            self.record(self.prep);
        }
        self.forward(i);
        if self.o.d2h_bytes > 0 {
            self.d2h(self.o.d2h_bytes);
        }
        let ev = self.step_event(i);
        self.record(ev);
        self.in_flight.push_back(ev);
        match self.o.sync_mode {
            SyncMode::Stream => {
                self.stream_sync();
                self.drain_in_flight(false);
            }
            SyncMode::Events => {
                while self.in_flight.len() >= self.o.async_depth as usize {
                    let Some(old) = self.in_flight.pop_front() else {
                        break;
                    };
                    self.wait(old);
                }
            }
        }
    }

    /// Waits for (`wait`) or just forgets the step events still in flight.
    fn drain_in_flight(&mut self, wait: bool) {
        while let Some(ev) = self.in_flight.pop_front() {
            if wait {
                self.wait(ev);
            } else if self.o.fresh_events {
                // SAFETY: plain handle, not used again.
                check("cudaEventDestroy", unsafe { (self.c.event_destroy)(ev) });
            }
        }
    }

    /// Runs the step loop; returns the number of steps done.
    fn run_steps(&mut self) -> u64 {
        let mut i = 0u64;
        while (self.o.forever || i < self.o.steps) && !STOP.load(Ordering::SeqCst) {
            self.step(i);
            i += 1;
            if self.o.exit_after_steps == Some(i) {
                self.flush();
                say(&format!("done steps={i}"));
                std::process::exit(0);
            }
            if self.o.step_gap_us > 0 {
                std::thread::sleep(Duration::from_micros(self.o.step_gap_us));
            }
        }
        // Async depth 2 leaves the last step's event unsynchronized.
        self.drain_in_flight(true);
        i
    }

    fn hot_loop(&mut self, n: u64) {
        let ev = self.ev[0];
        let t0 = Instant::now();
        for _ in 0..n {
            self.record(ev);
            // SAFETY: plain handle.
            let rc = unsafe { (self.c.event_query)(ev) };
            if rc != 0 && rc != 600 {
                check("cudaEventQuery", rc);
            }
            self.h2d(8);
        }
        let secs = t0.elapsed().as_secs_f64();
        self.stream_sync();
        let rate = if secs > 0.0 {
            (3 * n) as f64 / secs
        } else {
            0.0
        };
        say(&format!("calls_per_sec={rate:.1}"));
    }

    fn teardown(&self) {
        // SAFETY: pointers came from cudaMalloc.
        unsafe {
            check("cudaFree", (self.c.free)(self.dev_in));
            check("cudaFree", (self.c.free)(self.dev_out));
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("pm-fixture: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    install_signals();
    let pid = std::process::id();

    let child: Arc<Mutex<Option<Child>>> = Arc::new(Mutex::new(None));
    let mut spawner = None;
    if let Some(ms) = o.spawn_child_after_ms {
        let child = Arc::clone(&child);
        let cargs = child_args(&args);
        spawner = Some(std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            if STOP.load(Ordering::SeqCst) {
                return;
            }
            let exe = match std::env::current_exe() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("pm-fixture: current_exe: {e}");
                    return;
                }
            };
            match Command::new(exe).args(&cargs).spawn() {
                Ok(c) => *child.lock().unwrap_or_else(|e| e.into_inner()) = Some(c),
                Err(e) => eprintln!("pm-fixture: spawning child: {e}"),
            }
        }));
    }

    if o.seccomp_kill_uretprobe {
        if let Err(e) = seccomp_kill_uretprobe() {
            eprintln!("pm-fixture: {e}");
            std::process::exit(1);
        }
    }
    if o.wait_before_load_ms > 0 {
        say(&format!("pid={pid} waiting"));
        std::thread::sleep(Duration::from_millis(o.wait_before_load_ms));
    }
    let c = match load(&o.lib_dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pm-fixture: {e}");
            std::process::exit(1);
        }
    };
    say(&format!("pid={pid} ready"));
    // Like a server loading its model: time for a tracer to find the freshly mapped libraries.
    if o.wait_after_load_ms > 0 {
        std::thread::sleep(Duration::from_millis(o.wait_after_load_ms));
    }
    say(&format!("pid={pid} start"));

    let hot = o.hot_loop;
    let mut f = Fixture {
        c,
        o,
        stream: 0,
        ev: [0; 2],
        prep: 0,
        in_flight: std::collections::VecDeque::new(),
        execs: Vec::new(),
        dev_in: std::ptr::null_mut(),
        dev_out: std::ptr::null_mut(),
        host_in: vec![0u8; 1 << 16],
        host_out: vec![0u8; 1 << 16],
    };
    f.setup();
    let steps = match hot {
        Some(n) => {
            f.hot_loop(n);
            0
        }
        None => f.run_steps(),
    };
    f.teardown();
    f.flush();

    if let Some(t) = spawner {
        // The child always runs (unless we were stopped first): wait for the spawn time.
        let _ = t.join();
    }
    let taken = child.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mut ch) = taken {
        if STOP.load(Ordering::SeqCst) {
            // SAFETY: signalling our own child process by pid.
            unsafe { libc::kill(ch.id() as libc::pid_t, libc::SIGTERM) };
        }
        let _ = ch.wait();
    }
    say(&format!("done steps={steps}"));
}
