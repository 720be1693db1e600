//! The GPU side of `profilemate calibrate`, over the CUDA driver API only (cudarc's `sys`
//! bindings, libcuda loaded at run time: the binary runs on machines without CUDA, and says
//! so). A spin kernel written in PTX waits on `%globaltimer` for a given time and writes its
//! start and end to pinned host memory the CPU polls, so the CPU learns when GPU work ended
//! without any CUDA call of its own.
//!
//! Owns: loading the driver, the context, stream, events, the kernel and its CUDA graph, and
//! the calls of the patterns vLLM uses (launch, event record, event/stream synchronize, graph
//! launch). Each call goes straight to the libcuda symbol the attach probes, never through
//! libcudart. Does not own: timing or statistics (`measure`).

use std::{ffi::CString, ptr};

use cudarc::driver::sys;

/// A driver call failed, or there is no driver or GPU.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// libcuda could not be loaded.
    #[error("no NVIDIA GPU/driver found: libcuda.so could not be loaded (no NVIDIA driver installed here, or it is not on the loader's path); `profilemate calibrate` runs on the GPU machine that `attach` profiles")]
    NoDriver,
    /// libcuda is there but lacks a needed entry point (another vendor's shim, a stub).
    #[error("the libcuda.so found lacks `{0}`: not NVIDIA's driver library (a stub or shim?)")]
    MissingSymbol(&'static str),
    /// The driver sees no GPU.
    #[error("no NVIDIA GPU found: the driver is installed but {0} (is the GPU visible in this container? check `nvidia-smi`)")]
    NoDevice(String),
    /// A call failed.
    #[error("{call} failed: {code:?}")]
    Call {
        /// Which call.
        call: &'static str,
        /// The driver's code.
        code: sys::CUresult,
    },
}

/// Turns a driver result into a `Result`.
fn check(call: &'static str, code: sys::CUresult) -> Result<(), GpuError> {
    match code {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        code => Err(GpuError::Call { call, code }),
    }
}

/// The driver entry points calibrate calls; checked before the first call, because the
/// bindings abort on a missing symbol.
const NEEDED: &[&str] = &[
    "cuInit",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDeviceGetAttribute",
    "cuDriverGetVersion",
    "cuDevicePrimaryCtxRetain",
    "cuCtxSetCurrent",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuStreamCreate",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventSynchronize",
    "cuStreamSynchronize",
    "cuLaunchKernel",
    "cuStreamBeginCapture_v2",
    "cuStreamEndCapture",
    "cuGraphInstantiateWithFlags",
    "cuGraphLaunch",
    "cuMemHostAlloc",
    "cuMemHostGetDevicePointer_v2",
    "cuMemAlloc_v2",
    "cuMemsetD32_v2",
];

/// The spin kernel: `spin(u64 duration_ns, u64 flags, u64 counter)`. One thread numbers
/// its launch from a device counter (so a graph replay gets a new number too), stores the
/// number in `flags[0]` (host memory) as it starts, spins on `%globaltimer` for the duration
/// and stores the number in `flags[1]` as it ends. `membar.sys` pushes each store to the host.
/// `.target` is filled in by `spin_ptx` (sm_80 where the device has it: newer drivers and
/// toolkits drop the oldest targets, and sm_80 is JIT-compiled for every later GPU).
const SPIN_PTX: &str = r"
.version 7.0
.target TARGET
.address_size 64

.visible .entry spin(
    .param .u64 dur_ns,
    .param .u64 flags,
    .param .u64 counter
)
{
    .reg .pred p;
    .reg .b64 t0, t, d, dur, f, c, s;
    ld.param.u64 dur, [dur_ns];
    ld.param.u64 f, [flags];
    ld.param.u64 c, [counter];
    ld.volatile.global.u64 s, [c];
    add.u64 s, s, 1;
    st.volatile.global.u64 [c], s;
    mov.u64 t0, %globaltimer;
    st.volatile.global.u64 [f], s;
    membar.sys;
SPIN:
    mov.u64 t, %globaltimer;
    sub.u64 d, t, t0;
    setp.lt.u64 p, d, dur;
    @p bra SPIN;
    st.volatile.global.u64 [f+8], s;
    membar.sys;
    ret;
}
";

/// The two flags the spin kernel writes (its launch number at start and at end), readable
/// from any thread.
#[derive(Clone, Copy)]
pub struct FlagsView(*mut u64);

// SAFETY: two u64 of pinned host memory that live as long as the process's context; only
// read (volatile) through this view.
unsafe impl Send for FlagsView {}

impl FlagsView {
    /// The (start, end) launch numbers the kernel last wrote.
    #[must_use]
    pub fn read(self) -> (u64, u64) {
        // SAFETY: see the `Send` impl; the GPU writes them, so they are read volatile.
        unsafe {
            (
                ptr::read_volatile(self.0),
                ptr::read_volatile(self.0.add(1)),
            )
        }
    }
}

/// An event of the calibrated context (only `Gpu` makes them).
#[derive(Clone, Copy)]
pub struct Event(sys::CUevent);

/// An executable graph of the calibrated context (only `Gpu` makes them).
#[derive(Clone, Copy)]
pub struct GraphExec(sys::CUgraphExec);

/// What the driver says about the device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// `cuDeviceGetName`.
    pub name: String,
    /// `cuDriverGetVersion`.
    pub driver_api_version: i32,
    /// (major, minor).
    pub compute_capability: (i32, i32),
}

/// One GPU with a stream, the spin kernel and its pinned flags.
pub struct Gpu {
    stream: sys::CUstream,
    spin: sys::CUfunction,
    /// Host view of the two flags (start, end).
    flags: *mut u64,
    /// Device view of the same memory.
    flags_dev: sys::CUdeviceptr,
    counter: sys::CUdeviceptr,
    /// What the driver said.
    pub info: DeviceInfo,
}

// SAFETY: the handles are plain driver handles, usable from any thread once the context is
// current there; `Gpu` is used by one thread at a time.
unsafe impl Send for Gpu {}

/// Loads libcuda and checks it is NVIDIA's (every needed symbol present).
fn load_driver() -> Result<(), GpuError> {
    // SAFETY: only tries to dlopen the library names cudarc knows.
    if !unsafe { sys::is_culib_present() } {
        return Err(GpuError::NoDriver);
    }
    // SAFETY: present, so this loads it (once) without aborting.
    let lib = unsafe { sys::culib() };
    for name in NEEDED {
        // SAFETY: looks a symbol up; it is not called here.
        if unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err() {
            return Err(GpuError::MissingSymbol(name));
        }
    }
    Ok(())
}

impl Gpu {
    /// Opens device `ordinal`: the primary context (the one PyTorch uses, with its default
    /// scheduling flags), a stream, the spin kernel, the flags and the counter.
    pub fn open(ordinal: u32) -> Result<Self, GpuError> {
        load_driver()?;
        // SAFETY: every call below gets valid out-pointers to locals.
        unsafe {
            match sys::cuInit(0) {
                sys::CUresult::CUDA_SUCCESS => {}
                sys::CUresult::CUDA_ERROR_NO_DEVICE => {
                    return Err(GpuError::NoDevice(
                        "cuInit says CUDA_ERROR_NO_DEVICE".into(),
                    ))
                }
                code => {
                    return Err(GpuError::Call {
                        call: "cuInit",
                        code,
                    })
                }
            }
            let mut count = 0;
            check("cuDeviceGetCount", sys::cuDeviceGetCount(&mut count))?;
            if count <= ordinal as i32 {
                return Err(GpuError::NoDevice(format!(
                    "it sees {count} device(s), and device {ordinal} was asked for"
                )));
            }
            let mut dev = 0;
            check("cuDeviceGet", sys::cuDeviceGet(&mut dev, ordinal as i32))?;
            let info = device_info(dev)?;
            let mut ctx = ptr::null_mut();
            check(
                "cuDevicePrimaryCtxRetain",
                sys::cuDevicePrimaryCtxRetain(&mut ctx, dev),
            )?;
            check("cuCtxSetCurrent", sys::cuCtxSetCurrent(ctx))?;
            let mut stream = ptr::null_mut();
            check("cuStreamCreate", sys::cuStreamCreate(&mut stream, 0))?;
            let spin = load_spin(info.compute_capability)?;
            let (flags, flags_dev) = host_flags()?;
            let mut counter = 0;
            check("cuMemAlloc_v2", sys::cuMemAlloc_v2(&mut counter, 8))?;
            // Launch numbers start at 1: the first kernel that runs writes 1.
            check("cuMemsetD32_v2", sys::cuMemsetD32_v2(counter, 0, 2))?;
            check(
                "cuStreamSynchronize",
                sys::cuStreamSynchronize(ptr::null_mut()),
            )?;
            Ok(Self {
                stream,
                spin,
                flags,
                flags_dev,
                counter,
                info,
            })
        }
    }

    /// The kernel's flags, for a polling thread.
    #[must_use]
    pub fn flags_view(&self) -> FlagsView {
        FlagsView(self.flags)
    }

    /// Launches the spin kernel for `dur_ns` on the stream (`cuLaunchKernel`).
    pub fn launch(&self, dur_ns: u64) -> Result<(), GpuError> {
        let mut dur = dur_ns;
        let mut flags = self.flags_dev;
        let mut counter = self.counter;
        let mut params: [*mut std::ffi::c_void; 3] = [
            ptr::addr_of_mut!(dur).cast(),
            ptr::addr_of_mut!(flags).cast(),
            ptr::addr_of_mut!(counter).cast(),
        ];
        // SAFETY: three parameters of the kernel's three u64 parameters, alive for the call.
        check("cuLaunchKernel", unsafe {
            sys::cuLaunchKernel(
                self.spin,
                1,
                1,
                1,
                1,
                1,
                1,
                0,
                self.stream,
                params.as_mut_ptr(),
                ptr::null_mut(),
            )
        })
    }

    /// A new event as PyTorch's `torch.cuda.Event()` creates it (timing disabled, waited by
    /// spinning); `blocking`: as `Event(blocking=True)` (the waiting thread sleeps).
    pub fn event(&self, blocking: bool) -> Result<Event, GpuError> {
        const DISABLE_TIMING: u32 = 2;
        const BLOCKING_SYNC: u32 = 1;
        let flags = DISABLE_TIMING | if blocking { BLOCKING_SYNC } else { 0 };
        let mut ev = ptr::null_mut();
        // SAFETY: valid out-pointer.
        check("cuEventCreate", unsafe {
            sys::cuEventCreate(&mut ev, flags)
        })?;
        Ok(Event(ev))
    }

    /// `cuEventRecord(ev, stream)`.
    pub fn record(&self, ev: Event) -> Result<(), GpuError> {
        // SAFETY: an event of this context and its stream.
        check("cuEventRecord", unsafe {
            sys::cuEventRecord(ev.0, self.stream)
        })
    }

    /// `cuEventSynchronize(ev)`.
    pub fn wait_event(&self, ev: Event) -> Result<(), GpuError> {
        // SAFETY: an event of this context.
        check("cuEventSynchronize", unsafe {
            sys::cuEventSynchronize(ev.0)
        })
    }

    /// `cuStreamSynchronize(stream)`.
    pub fn wait_stream(&self) -> Result<(), GpuError> {
        // SAFETY: this context's stream.
        check("cuStreamSynchronize", unsafe {
            sys::cuStreamSynchronize(self.stream)
        })
    }

    /// Captures one spin kernel of `dur_ns` into a CUDA graph and instantiates it.
    pub fn graph(&self, dur_ns: u64) -> Result<GraphExec, GpuError> {
        // SAFETY: capture on this context's stream; out-pointers to locals.
        unsafe {
            check(
                "cuStreamBeginCapture_v2",
                sys::cuStreamBeginCapture_v2(
                    self.stream,
                    sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED,
                ),
            )?;
            let launched = self.launch(dur_ns);
            let mut graph = ptr::null_mut();
            check(
                "cuStreamEndCapture",
                sys::cuStreamEndCapture(self.stream, &mut graph),
            )?;
            launched?;
            let mut exec = ptr::null_mut();
            check(
                "cuGraphInstantiateWithFlags",
                sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0),
            )?;
            Ok(GraphExec(exec))
        }
    }

    /// `cuGraphLaunch(exec, stream)`.
    pub fn replay(&self, exec: GraphExec) -> Result<(), GpuError> {
        // SAFETY: an executable graph of this context.
        check("cuGraphLaunch", unsafe {
            sys::cuGraphLaunch(exec.0, self.stream)
        })
    }
}

fn device_info(dev: sys::CUdevice) -> Result<DeviceInfo, GpuError> {
    let mut name = [0 as std::ffi::c_char; 256];
    let mut version = 0;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: out-pointers to locals; the name buffer's length is passed.
    unsafe {
        check(
            "cuDeviceGetName",
            sys::cuDeviceGetName(name.as_mut_ptr(), 255, dev),
        )?;
        check("cuDriverGetVersion", sys::cuDriverGetVersion(&mut version))?;
        use sys::CUdevice_attribute::{
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR,
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR as MINOR,
        };
        check(
            "cuDeviceGetAttribute",
            sys::cuDeviceGetAttribute(&mut major, MAJOR, dev),
        )?;
        check(
            "cuDeviceGetAttribute",
            sys::cuDeviceGetAttribute(&mut minor, MINOR, dev),
        )?;
    }
    let bytes: Vec<u8> = name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Ok(DeviceInfo {
        name: String::from_utf8_lossy(&bytes).into_owned(),
        driver_api_version: version,
        compute_capability: (major, minor),
    })
}

/// The spin kernel's PTX for a device of compute capability `cc`.
fn spin_ptx(cc: (i32, i32)) -> String {
    let target = if cc.0 >= 8 { "sm_80" } else { "sm_70" };
    SPIN_PTX.replace("TARGET", target)
}

fn load_spin(cc: (i32, i32)) -> Result<sys::CUfunction, GpuError> {
    let ptx = CString::new(spin_ptx(cc)).map_err(|_| GpuError::Call {
        call: "cuModuleLoadData",
        code: sys::CUresult::CUDA_ERROR_INVALID_IMAGE,
    })?;
    let mut module = ptr::null_mut();
    let mut func = ptr::null_mut();
    // SAFETY: a NUL-terminated PTX image; out-pointers to locals.
    unsafe {
        check(
            "cuModuleLoadData",
            sys::cuModuleLoadData(&mut module, ptx.as_ptr().cast()),
        )?;
        check(
            "cuModuleGetFunction",
            sys::cuModuleGetFunction(&mut func, module, c"spin".as_ptr()),
        )?;
    }
    Ok(func)
}

/// Two zeroed u64 of pinned, device-mapped host memory: (host pointer, device pointer).
fn host_flags() -> Result<(*mut u64, sys::CUdeviceptr), GpuError> {
    let mut host = ptr::null_mut();
    let mut dev = 0;
    // SAFETY: out-pointers to locals; 16 bytes are allocated and then zeroed.
    unsafe {
        check(
            "cuMemHostAlloc",
            sys::cuMemHostAlloc(&mut host, 16, sys::CU_MEMHOSTALLOC_DEVICEMAP),
        )?;
        let flags = host.cast::<u64>();
        ptr::write_volatile(flags, 0);
        ptr::write_volatile(flags.add(1), 0);
        check(
            "cuMemHostGetDevicePointer_v2",
            sys::cuMemHostGetDevicePointer_v2(&mut dev, host, 0),
        )?;
        Ok((flags, dev))
    }
}

#[cfg(test)]
mod tests {
    use super::spin_ptx;

    #[test]
    fn the_spin_kernel_targets_sm_80_on_ampere_and_later_and_sm_70_before() {
        for (cc, target) in [((9, 0), ".target sm_80\n"), ((7, 5), ".target sm_70\n")] {
            let ptx = spin_ptx(cc);
            assert!(ptx.contains(target), "{cc:?}: {ptx}");
            assert!(!ptx.contains("TARGET"), "{cc:?}: placeholder left");
        }
    }
}
