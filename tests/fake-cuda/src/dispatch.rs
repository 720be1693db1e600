//! Finding "the driver": the copy of this library named `libcuda.so.1` in the same directory as
//! the copy that is running (like libcudart dlopens libcuda). Runtime entry points call driver
//! entry points through this table, so a uprobe on the driver symbol of libcuda.so.1 fires for
//! runtime calls too. Driver entry points of a non-driver copy forward through it as well, so
//! all simulated-GPU state lives in one copy.
//!
//! Fallback: when no `libcuda.so.1` sits next to this object (e.g. the library was loaded as
//! `libfakecuda.so`), this copy is its own driver.

use std::ffi::{c_char, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

use crate::CUlaunchConfig;

macro_rules! driver_table {
    ($($name:ident : fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// Driver entry points (field names are the exported symbol names).
        #[allow(non_snake_case, reason = "fields are named after the C symbols")]
        pub struct Driver {
            /// True when the entry points live in another loaded copy of this library.
            pub remote: bool,
            $(pub $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        impl Driver {
            /// This copy's own entry points.
            fn local() -> Self {
                Driver {
                    remote: false,
                    $($name: crate::$name,)*
                }
            }

            /// Resolves every entry point from `handle`; None if one is missing.
            ///
            /// # Safety
            /// `handle` must be a live dlopen handle of a copy of this library.
            unsafe fn resolve(handle: *mut c_void) -> Option<Self> {
                Some(Driver {
                    remote: true,
                    $($name: {
                        let sym = concat!(stringify!($name), "\0");
                        // SAFETY: `handle` is live and `sym` is NUL-terminated.
                        let p = unsafe { libc::dlsym(handle, sym.as_ptr().cast::<c_char>()) };
                        if p.is_null() {
                            return None;
                        }
                        // SAFETY: the symbol is this library's export of exactly this
                        // signature (same source, another copy).
                        unsafe {
                            std::mem::transmute::<
                                *mut c_void,
                                unsafe extern "C" fn($($arg),*) $(-> $ret)?,
                            >(p)
                        }
                    },)*
                })
            }
        }
    };
}

driver_table! {
    fakeCudaNestEnter: fn();
    fakeCudaNestExit: fn();
    fakeCudaIsCapturing: fn(u64) -> i32;
    fakeCudaMark: fn(*const c_char);
    fakeCudaFlush: fn();
    cuInit: fn(u32) -> i32;
    cuStreamCreate: fn(*mut u64, u32) -> i32;
    cuEventCreate: fn(*mut u64, u32) -> i32;
    cuEventDestroy_v2: fn(u64) -> i32;
    cuStreamBeginCapture_v2: fn(u64, i32) -> i32;
    cuStreamEndCapture: fn(u64, *mut u64) -> i32;
    cuGraphInstantiateWithFlags: fn(*mut u64, u64, u64) -> i32;
    cuGraphLaunch: fn(u64, u64) -> i32;
    cuEventRecord: fn(u64, u64) -> i32;
    cuEventRecordWithFlags: fn(u64, u64, u32) -> i32;
    cuEventQuery: fn(u64) -> i32;
    cuEventSynchronize: fn(u64) -> i32;
    cuStreamSynchronize: fn(u64) -> i32;
    cuCtxSynchronize: fn() -> i32;
    cuMemcpyHtoDAsync_v2: fn(u64, *const c_void, usize, u64) -> i32;
    cuMemcpyDtoHAsync_v2: fn(*mut c_void, u64, usize, u64) -> i32;
    cuMemcpyAsync: fn(u64, u64, usize, u64) -> i32;
    cuMemcpy: fn(u64, u64, usize) -> i32;
    cuMemAlloc_v2: fn(*mut u64, usize) -> i32;
    cuMemFree_v2: fn(u64) -> i32;
    cuLaunchKernel: fn(u64, u32, u32, u32, u32, u32, u32, u32, u64, *mut *mut c_void, *mut *mut c_void) -> i32;
    cuLaunchKernel_ptsz: fn(u64, u32, u32, u32, u32, u32, u32, u32, u64, *mut *mut c_void, *mut *mut c_void) -> i32;
    cuLaunchKernelEx: fn(*const CUlaunchConfig, u64, *mut *mut c_void, *mut *mut c_void) -> i32;
    cuLaunchKernelEx_ptsz: fn(*const CUlaunchConfig, u64, *mut *mut c_void, *mut *mut c_void) -> i32;
}

fn dladdr_of(p: *const c_void) -> Option<libc::Dl_info> {
    // SAFETY: Dl_info is plain old data; all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is writable; dladdr only inspects the address.
    if unsafe { libc::dladdr(p, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    Some(info)
}

fn load_remote() -> Option<Driver> {
    let own = dladdr_of(driver as *const c_void)?;
    // SAFETY: dli_fname is a NUL-terminated string owned by the dynamic loader.
    let own_path = unsafe { CStr::from_ptr(own.dli_fname) };
    let own_path = Path::new(std::ffi::OsStr::from_bytes(own_path.to_bytes()));
    let cand = own_path.parent()?.join("libcuda.so.1");
    if !cand.exists() {
        return None;
    }
    let c = CString::new(cand.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a NUL-terminated path. The handle is intentionally never closed.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        return None;
    }
    // SAFETY: `h` is a live handle of a copy of this library.
    let d = unsafe { Driver::resolve(h) }?;
    let theirs = dladdr_of(d.cuInit as *const c_void)?;
    if theirs.dli_fbase == own.dli_fbase {
        // We are libcuda.so.1 ourselves.
        return None;
    }
    Some(d)
}

/// The driver entry points (this copy's own, or those of libcuda.so.1 next to it).
pub fn driver() -> &'static Driver {
    static D: OnceLock<Driver> = OnceLock::new();
    D.get_or_init(|| load_remote().unwrap_or_else(Driver::local))
}

/// Some(driver) when driver entry points of this copy must forward to another copy.
#[inline]
pub fn remote() -> Option<&'static Driver> {
    let d = driver();
    d.remote.then_some(d)
}
