//! The probed CUDA API functions: one row per exported symbol, in `ApiId` order.
//!
//! Which level a call was seen at (runtime `libcudart` or driver `libcuda`) matters only for
//! de-duplication: a runtime call reaches its driver twin on the same thread, and both fire.
//! `OpClass` names the operation both levels share so the correlator counts it once.

/// Which CUDA library exports a probed symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Library {
    /// `libcudart.so*` (CUDA runtime API).
    Runtime,
    /// `libcuda.so*` (CUDA driver API).
    Driver,
}

/// The operation a call performs, shared by its runtime and driver forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpClass {
    /// Stream capture begins (`cudaStreamBeginCapture`).
    CaptureBegin,
    /// Stream capture ends; out-parameter: the captured graph.
    CaptureEnd,
    /// Graph instantiation; out-parameter: the executable graph.
    Instantiate,
    /// Replay of an executable graph.
    GraphLaunch,
    /// Event record on a stream.
    EventRecord,
    /// Blocking wait for an event.
    EventSync,
    /// Non-blocking event poll.
    EventQuery,
    /// Blocking wait for a stream.
    StreamSync,
    /// Blocking wait for the whole device / context.
    DeviceSync,
    /// Memory copy (async, or synchronous with a return probe).
    Memcpy,
    /// Host-to-device copy (driver form).
    CopyH2D,
    /// Device-to-host copy (driver form).
    CopyD2H,
    /// Device allocation.
    Malloc,
    /// Device free.
    Free,
    /// Kernel launch (opt-in, driver level only).
    KernelLaunch,
}

impl OpClass {
    /// Whether a driver symbol of this class is the twin of a runtime symbol (the runtime
    /// performs the operation through it). Kernel launches are counted at the driver only.
    #[must_use]
    pub const fn is_runtime_twin(self) -> bool {
        !matches!(self, OpClass::KernelLaunch)
    }
}

/// Static facts about one probed symbol.
#[derive(Clone, Copy, Debug)]
pub struct ApiSpec {
    /// Exported symbol name.
    pub symbol: &'static str,
    /// Library exporting it.
    pub library: Library,
    /// Operation class for de-duplication across levels.
    pub class: OpClass,
    /// Whether a return probe is attached (duration, return value or out-parameter needed).
    pub needs_return: bool,
    /// Index of the pointer argument whose target is read at return.
    pub out_arg: Option<u8>,
    /// Part of the opt-in per-kernel set (`--kernels`), not the default set.
    pub per_kernel: bool,
}

macro_rules! api_table {
    ($( $variant:ident = $sym:literal, $lib:ident, $class:ident, ret: $ret:literal, out: $out:expr, kernel: $k:literal; )*) => {
        /// Every probed symbol. The discriminant is the wire value in `CudaCallRecord::api`.
        #[repr(u16)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(non_camel_case_types, reason = "variants spell the exported C symbol")]
        pub enum ApiId { $( $variant, )* }

        const SPECS: &[ApiSpec] = &[ $( ApiSpec {
            symbol: $sym,
            library: Library::$lib,
            class: OpClass::$class,
            needs_return: $ret,
            out_arg: $out,
            per_kernel: $k,
        }, )* ];

        const ALL: &[ApiId] = &[ $( ApiId::$variant, )* ];
    };
}

api_table! {
    cudaStreamBeginCapture = "cudaStreamBeginCapture", Runtime, CaptureBegin, ret: false, out: None, kernel: false;
    cudaStreamEndCapture = "cudaStreamEndCapture", Runtime, CaptureEnd, ret: true, out: Some(1), kernel: false;
    cudaGraphInstantiate = "cudaGraphInstantiate", Runtime, Instantiate, ret: true, out: Some(0), kernel: false;
    cudaGraphInstantiateWithFlags = "cudaGraphInstantiateWithFlags", Runtime, Instantiate, ret: true, out: Some(0), kernel: false;
    cudaGraphLaunch = "cudaGraphLaunch", Runtime, GraphLaunch, ret: false, out: None, kernel: false;
    cudaEventRecord = "cudaEventRecord", Runtime, EventRecord, ret: false, out: None, kernel: false;
    cudaEventRecordWithFlags = "cudaEventRecordWithFlags", Runtime, EventRecord, ret: false, out: None, kernel: false;
    cudaEventSynchronize = "cudaEventSynchronize", Runtime, EventSync, ret: true, out: None, kernel: false;
    cudaEventQuery = "cudaEventQuery", Runtime, EventQuery, ret: true, out: None, kernel: false;
    cudaStreamSynchronize = "cudaStreamSynchronize", Runtime, StreamSync, ret: true, out: None, kernel: false;
    cudaDeviceSynchronize = "cudaDeviceSynchronize", Runtime, DeviceSync, ret: true, out: None, kernel: false;
    cudaMemcpyAsync = "cudaMemcpyAsync", Runtime, Memcpy, ret: false, out: None, kernel: false;
    cudaMemcpy = "cudaMemcpy", Runtime, Memcpy, ret: true, out: None, kernel: false;
    cudaMalloc = "cudaMalloc", Runtime, Malloc, ret: false, out: None, kernel: false;
    cudaFree = "cudaFree", Runtime, Free, ret: false, out: None, kernel: false;
    cuGraphInstantiateWithFlags = "cuGraphInstantiateWithFlags", Driver, Instantiate, ret: true, out: Some(0), kernel: false;
    cuGraphLaunch = "cuGraphLaunch", Driver, GraphLaunch, ret: false, out: None, kernel: false;
    cuEventRecord = "cuEventRecord", Driver, EventRecord, ret: false, out: None, kernel: false;
    cuEventRecordWithFlags = "cuEventRecordWithFlags", Driver, EventRecord, ret: false, out: None, kernel: false;
    cuEventSynchronize = "cuEventSynchronize", Driver, EventSync, ret: true, out: None, kernel: false;
    cuStreamSynchronize = "cuStreamSynchronize", Driver, StreamSync, ret: true, out: None, kernel: false;
    cuCtxSynchronize = "cuCtxSynchronize", Driver, DeviceSync, ret: true, out: None, kernel: false;
    cuMemcpyHtoDAsync_v2 = "cuMemcpyHtoDAsync_v2", Driver, CopyH2D, ret: false, out: None, kernel: false;
    cuMemcpyDtoHAsync_v2 = "cuMemcpyDtoHAsync_v2", Driver, CopyD2H, ret: false, out: None, kernel: false;
    cuMemAlloc_v2 = "cuMemAlloc_v2", Driver, Malloc, ret: false, out: None, kernel: false;
    cuMemFree_v2 = "cuMemFree_v2", Driver, Free, ret: false, out: None, kernel: false;
    cuLaunchKernel = "cuLaunchKernel", Driver, KernelLaunch, ret: false, out: None, kernel: true;
    cuLaunchKernel_ptsz = "cuLaunchKernel_ptsz", Driver, KernelLaunch, ret: false, out: None, kernel: true;
    cuLaunchKernelEx = "cuLaunchKernelEx", Driver, KernelLaunch, ret: false, out: None, kernel: true;
    cuLaunchKernelEx_ptsz = "cuLaunchKernelEx_ptsz", Driver, KernelLaunch, ret: false, out: None, kernel: true;
}

/// Number of probed symbols.
pub const API_COUNT: usize = SPECS.len();

impl ApiId {
    /// Every probed symbol, in wire order.
    #[must_use]
    pub const fn all() -> &'static [ApiId] {
        ALL
    }

    /// The static facts of this symbol.
    #[must_use]
    pub const fn spec(self) -> &'static ApiSpec {
        &SPECS[self as usize]
    }

    /// Decodes a wire value; `None` for values this build does not know.
    #[must_use]
    pub const fn from_u16(v: u16) -> Option<ApiId> {
        if (v as usize) < API_COUNT {
            Some(ALL[v as usize])
        } else {
            None
        }
    }

    /// The exported symbol name.
    #[must_use]
    pub const fn symbol(self) -> &'static str {
        self.spec().symbol
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_wire_order() {
        for (i, api) in ApiId::all().iter().enumerate() {
            assert_eq!(*api as usize, i);
            assert_eq!(ApiId::from_u16(i as u16), Some(*api));
            assert_eq!(format!("{api:?}"), api.symbol());
        }
        assert_eq!(ApiId::from_u16(API_COUNT as u16), None);
    }

    #[test]
    fn out_params_only_with_return_probes() {
        for api in ApiId::all() {
            if api.spec().out_arg.is_some() {
                assert!(api.spec().needs_return, "{api:?}");
            }
        }
    }
}
