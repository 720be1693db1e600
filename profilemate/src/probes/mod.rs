//! Kernel side management: loads the embedded eBPF object, keeps the target tgid filter,
//! attaches the CUDA API probes per (process, library file), reads the drop counters, and
//! detaches. `drain` decodes ring-buffer records; `reader` is the thread that moves them out of
//! the ring.
//!
//! Owns: every aya object. Does not own: deciding which processes are targets (`discovery`,
//! `session`) or what the records mean (`correlate`).

pub mod breakpoints;
pub mod drain;
pub mod perf_link;
pub mod reader;
pub mod symbols;
pub mod usdt;

use std::{collections::HashMap, num::NonZeroU32};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        perf_event::{
            PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
        },
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
        PerfEvent, UProbe,
    },
    Ebpf, EbpfLoader,
};
use profilemate_common::{
    cookie,
    python::{
        cuda_stack, PyProcConfig, PyThreadRef, UsdtSpec, CUDA_STACKS_MAP, PY_PROCS_MAP,
        PY_THREADS_MAP, USDT_SPECS_MAP, USDT_SPEC_SLOTS,
    },
    ApiId, Library, OpClass, COUNTERS_MAP, COUNTER_FILTERED, COUNTER_OUT_READ_FAILED,
    COUNTER_RING_FULL, COUNTER_STACK_RING_FULL, COUNTER_STASH_FULL, COUNTER_USDT_NO_SPEC,
    COUNTER_USDT_RING_FULL, EVENTS_MAP, TARGETS_MAP,
};
use serde::Serialize;

use crate::discovery::{library_name, MappedLibrary};
use symbols::SymbolOffsets;

/// The kernel object built by `cargo xtask build-ebpf`, embedded so the tool is one file.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PROFILEMATE_EBPF_OBJ"));

const ENTRY_PROGRAM: &str = "cuda_entry";
const RETURN_PROGRAM: &str = "cuda_return";
const SAMPLE_PROGRAM: &str = "py_sample";
const USDT_PROGRAM: &str = "usdt_hit";
const BREAKPOINT_PROGRAM: &str = "py_breakpoint";

pub use crate::config::CudaStacks;

impl CudaStacks {
    /// The `CUDA_STACKS` value of `api` under this policy; `driver_twins`: both levels of an
    /// operation are probed, so walk at the runtime level only.
    #[must_use]
    pub fn mode(self, api: ApiId, driver_twins: bool) -> u32 {
        let spec = api.spec();
        let twin_at_driver =
            driver_twins && spec.library == Library::Driver && spec.class.is_runtime_twin();
        match self {
            Self::None => cuda_stack::NEVER,
            _ if twin_at_driver => cuda_stack::NEVER,
            Self::All => cuda_stack::ALWAYS,
            Self::Boundaries => match spec.class {
                OpClass::KernelLaunch => cuda_stack::FIRST_AFTER_BOUNDARY,
                OpClass::Malloc | OpClass::Free | OpClass::EventQuery => cuda_stack::NEVER,
                _ => cuda_stack::ALWAYS,
            },
        }
    }
}

/// Loading or attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The object could not be loaded into the kernel.
    #[error("loading the eBPF programs failed (needs Linux >= 5.8 with BPF ring buffers, BTF not required; run as root or with CAP_SYS_ADMIN)")]
    Load(#[source] aya::EbpfError),
    /// A program failed verification or loading.
    #[error("the kernel rejected program `{name}`")]
    Program {
        /// Program name.
        name: &'static str,
        /// The cause.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map the programs need is missing or unusable.
    #[error("eBPF map `{name}` is unusable")]
    Map {
        /// Map name.
        name: &'static str,
        /// The cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// The online CPUs could not be listed (for sampling).
    #[error("cannot list the online CPUs")]
    Cpus(#[source] std::io::Error),
    /// The object lacks a program or map (build mismatch).
    #[error("the embedded eBPF object has no `{0}`: rebuild with `cargo xtask build`")]
    Missing(&'static str),
}

/// One probe that is attached.
#[derive(Debug, Serialize)]
pub struct AttachedProbe {
    /// Target process.
    pub pid: u32,
    /// Library path as the target maps it.
    pub library: String,
    /// Symbol.
    pub symbol: &'static str,
    /// Entry or return.
    pub kind: &'static str,
}

/// One probe that could not be attached, with the reason.
#[derive(Debug, Serialize, Clone)]
pub struct FailedProbe {
    /// Target process.
    pub pid: u32,
    /// Library path as the target maps it.
    pub library: String,
    /// Symbol (empty when the whole library failed).
    pub symbol: String,
    /// Why.
    pub reason: String,
    /// The kind of failure (absent for a symbol skipped on purpose).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<FailureKind>,
}

/// The kind of a probe's failure: it decides the fix said when nothing could be attached.
#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The kernel or the file system refused (EACCES, EPERM): privileges.
    Permission,
    /// The library file cannot be found (ENOENT).
    FileGone,
    /// The library does not export the symbol.
    NoSymbol,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// The kind of `e`, from the first OS error in its chain of sources.
    #[must_use]
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(code) = err
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
            {
                return match code {
                    libc::EACCES | libc::EPERM => Self::Permission,
                    libc::ENOENT => Self::FileGone,
                    _ => Self::Other,
                };
            }
            cur = err.source();
        }
        Self::Other
    }
}

/// Everything attached and everything that failed, for metadata.json.
#[derive(Debug, Default, Serialize)]
pub struct ProbeReport {
    /// Number of probes attached (entry and return counted separately).
    pub attached_count: usize,
    /// Attached symbols per `pid:library`.
    pub attached: Vec<AttachedProbe>,
    /// Failures with reasons.
    pub failed: Vec<FailedProbe>,
    /// Symbols deliberately not probed, with the reason.
    pub skipped: Vec<FailedProbe>,
}

/// Kernel-side drop and filter counters, summed over CPUs.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct KernelCounters {
    /// Records lost because the ring buffer was full.
    pub ring_full_drops: u64,
    /// Out-parameter addresses not stashed (stash map full).
    pub out_param_stash_full: u64,
    /// Out-parameter values that could not be read at return.
    pub out_param_read_failed: u64,
    /// Hits from processes that are not targets (filtered in the kernel, not lost).
    pub filtered_hits: u64,
    /// Python stack records lost because the ring buffer was full.
    pub stack_ring_full_drops: u64,
    /// USDT records lost because the ring buffer was full.
    pub usdt_ring_full_drops: u64,
    /// USDT hits without a spec (should stay 0).
    pub usdt_without_spec: u64,
}

/// Kernel-measured cost of one program (when `kernel.bpf_stats_enabled` is 1).
#[derive(Debug, Serialize, Clone)]
pub struct ProgramCost {
    /// Program.
    pub program: &'static str,
    /// Runs.
    pub runs: u64,
    /// Total run time.
    pub run_time_ns: u64,
    /// Mean per run.
    pub mean_ns: Option<u64>,
}

/// One USDT probe attached (or not), for metadata.json.
#[derive(Debug, Serialize, Clone)]
pub struct UsdtReport {
    /// Target process.
    pub pid: u32,
    /// File holding the probe.
    pub file: String,
    /// `provider:name`.
    pub probe: String,
    /// Attached, or why not.
    pub status: UsdtStatus,
}

/// What became of one USDT probe; metadata.json spells it `attached` or the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsdtStatus {
    /// Attached.
    Attached,
    /// Not attached, and why.
    NotAttached(String),
}

impl Serialize for UsdtStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Attached => s.serialize_str("attached"),
            Self::NotAttached(why) => s.serialize_str(why),
        }
    }
}

/// A library's symbol offsets, or why they could not be read.
type SymbolLookup = Result<SymbolOffsets, (String, FailureKind)>;

struct Link {
    is_return: bool,
    id: UProbeLinkId,
}

/// The loaded programs and their attachments.
pub struct Probes {
    ebpf: Ebpf,
    kernels: bool,
    driver_twins: bool,
    links: Vec<Link>,
    /// (pid, dev, inode) already handled.
    done: HashMap<(u32, (u64, u64), u64), ()>,
    /// Processes that get entry probes only (seccomp could kill them at a return probe).
    entry_only: std::collections::HashSet<u32>,
    symbol_cache: HashMap<((u64, u64), u64), SymbolLookup>,
    sampling: Vec<PerfEventLinkId>,
    usdt_links: Vec<perf_link::PerfLink>,
    /// (file id, probe name) -> spec slot.
    usdt_slots: HashMap<((u64, u64), String), u32>,
    /// pid -> its entries in `PY_THREADS` (tid -> thread state), as written.
    py_threads: HashMap<u32, HashMap<u32, PyThreadRef>>,
    /// Hardware breakpoints on watched Python functions.
    breakpoints: breakpoints::Breakpoints,
    /// What was attached and what failed.
    pub report: ProbeReport,
    /// USDT probes per process.
    pub usdt_report: Vec<UsdtReport>,
}

impl Probes {
    /// Loads the embedded object with a ring buffer of `ring_bytes`. `kernels`: attach the
    /// per-kernel launch probes; `driver_twins`: probe driver twins of runtime calls even in
    /// processes that map libcudart.
    pub fn load(ring_bytes: u32, kernels: bool, driver_twins: bool) -> Result<Self, ProbeError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(EVENTS_MAP, ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(ProbeError::Load)?;
        for name in [ENTRY_PROGRAM, RETURN_PROGRAM, USDT_PROGRAM] {
            typed_program::<UProbe>(&mut ebpf, name)?
                .load()
                .map_err(program_error(name))?;
        }
        for name in [SAMPLE_PROGRAM, BREAKPOINT_PROGRAM] {
            typed_program::<PerfEvent>(&mut ebpf, name)?
                .load()
                .map_err(program_error(name))?;
        }
        Ok(Self {
            ebpf,
            kernels,
            driver_twins,
            links: Vec::new(),
            done: HashMap::new(),
            entry_only: std::collections::HashSet::new(),
            symbol_cache: HashMap::new(),
            sampling: Vec::new(),
            usdt_links: Vec::new(),
            usdt_slots: HashMap::new(),
            py_threads: HashMap::new(),
            breakpoints: breakpoints::Breakpoints::default(),
            report: ProbeReport::default(),
            usdt_report: Vec::new(),
        })
    }

    /// Fills `CUDA_STACKS` for `policy`.
    pub fn set_cuda_stacks(&mut self, policy: CudaStacks) -> Result<(), ProbeError> {
        let driver_twins = self.driver_twins;
        let mut arr: Array<&mut MapData, u32> = typed_map(&mut self.ebpf, CUDA_STACKS_MAP)?;
        for api in ApiId::all().iter().copied() {
            arr.set(api as u32, policy.mode(api, driver_twins), 0)
                .map_err(map_error(CUDA_STACKS_MAP))?;
        }
        Ok(())
    }

    /// Lets the walker read `pid`'s Python stacks with `cfg`.
    pub fn set_python(&mut self, pid: u32, cfg: PyProcConfig) -> Result<(), ProbeError> {
        let mut procs: BpfHashMap<&mut MapData, u32, PyProcConfig> =
            typed_map(&mut self.ebpf, PY_PROCS_MAP)?;
        procs.insert(pid, cfg, 0).map_err(map_error(PY_PROCS_MAP))
    }

    /// Stops walking an exited `pid` (its address space is gone; the pid may be reused).
    pub fn remove_python(&mut self, pid: u32) {
        if let Ok(mut procs) =
            typed_map::<BpfHashMap<&mut MapData, u32, PyProcConfig>>(&mut self.ebpf, PY_PROCS_MAP)
        {
            let _ = procs.remove(&pid);
        }
        let _ = self.set_python_threads(pid, &[]);
    }

    /// Replaces `pid`'s entries in `PY_THREADS` with `threads` (see `thread_table`).
    pub fn set_python_threads(
        &mut self,
        pid: u32,
        threads: &[(u32, PyThreadRef)],
    ) -> Result<(), ProbeError> {
        let mut table: BpfHashMap<&mut MapData, u32, PyThreadRef> =
            typed_map(&mut self.ebpf, PY_THREADS_MAP)?;
        let old = self.py_threads.remove(&pid).unwrap_or_default();
        let now = thread_table(&old, threads);
        for tid in old.keys().filter(|t| !now.contains_key(t)) {
            let _ = table.remove(tid);
        }
        // Rescans repeat the same list: write only new or changed entries.
        for (tid, r) in now.iter().filter(|(t, r)| old.get(t) != Some(r)) {
            table
                .insert(*tid, *r, 0)
                .map_err(map_error(PY_THREADS_MAP))?;
        }
        self.py_threads.insert(pid, now);
        Ok(())
    }

    /// Starts cpu-clock sampling at `hz` on every online CPU; the program keeps only ticks
    /// that interrupt a target thread. Returns the number of CPUs sampled.
    pub fn start_sampling(&mut self, hz: u64) -> Result<usize, ProbeError> {
        let cpus = aya::util::online_cpus().map_err(|(_, e)| ProbeError::Cpus(e))?;
        let period_ns = 1_000_000_000 / hz.max(1);
        let prog = typed_program::<PerfEvent>(&mut self.ebpf, SAMPLE_PROGRAM)?;
        for cpu in cpus {
            let id = prog
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Period(period_ns),
                    false,
                )
                .map_err(program_error(SAMPLE_PROGRAM))?;
            self.sampling.push(id);
        }
        Ok(self.sampling.len())
    }

    /// Attaches the USDT probe `probe` of the file `path` (identity `file_id`) in `pid`,
    /// reported to userspace as `probe_id`.
    pub fn attach_usdt(
        &mut self,
        pid: u32,
        path: &std::path::Path,
        display_path: &str,
        file_id: (u64, u64),
        probe: &usdt::UsdtProbe,
        probe_id: u16,
    ) -> bool {
        let label = format!("{}:{}", probe.provider, probe.name);
        let result = self.try_attach_usdt(pid, path, file_id, probe, probe_id);
        let status = match &result {
            Ok(()) => UsdtStatus::Attached,
            Err(e) => UsdtStatus::NotAttached(e.clone()),
        };
        self.usdt_report.push(UsdtReport {
            pid,
            file: display_path.to_owned(),
            probe: label,
            status,
        });
        result.is_ok()
    }

    fn try_attach_usdt(
        &mut self,
        pid: u32,
        path: &std::path::Path,
        file_id: (u64, u64),
        probe: &usdt::UsdtProbe,
        probe_id: u16,
    ) -> Result<(), String> {
        let key = (file_id, probe.name.clone());
        let slot = match self.usdt_slots.get(&key) {
            Some(s) => *s,
            None => {
                let slot = self.usdt_slots.len() as u32;
                if slot >= USDT_SPEC_SLOTS {
                    return Err("too many distinct USDT probes".to_owned());
                }
                let mut specs: Array<&mut MapData, UsdtSpec> =
                    typed_map(&mut self.ebpf, USDT_SPECS_MAP).map_err(|e| error_chain(&e))?;
                specs
                    .set(slot, probe.spec(probe_id), 0)
                    .map_err(|e| error_chain(&e))?;
                self.usdt_slots.insert(key, slot);
                slot
            }
        };
        let prog: &mut UProbe = self
            .ebpf
            .program_mut(USDT_PROGRAM)
            .ok_or_else(|| format!("missing program {USDT_PROGRAM}"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| error_chain(&e))?;
        let fd = prog.fd().map_err(|e| error_chain(&e))?;
        let link = usdt::attach(
            std::os::fd::AsFd::as_fd(fd),
            path,
            probe,
            pid,
            u64::from(slot),
        )
        .map_err(|e| error_chain(&e))?;
        self.usdt_links.push(link);
        Ok(())
    }

    /// Takes the ring buffer out of the object (call once).
    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(EVENTS_MAP)
            .ok_or(ProbeError::Missing(EVENTS_MAP))?;
        RingBuf::try_from(map).map_err(map_error(EVENTS_MAP))
    }

    /// Adds `pid` to the in-kernel target filter.
    pub fn add_target(&mut self, pid: u32) -> Result<(), ProbeError> {
        let mut targets: BpfHashMap<&mut MapData, u32, u32> =
            typed_map(&mut self.ebpf, TARGETS_MAP)?;
        targets.insert(pid, 1, 0).map_err(map_error(TARGETS_MAP))
    }

    /// Sets the Python functions whose entries `pid`'s threads report (see `breakpoints`).
    pub fn watch_functions(
        &mut self,
        pid: u32,
        functions: Vec<breakpoints::WatchedFunction>,
        found_via: String,
    ) {
        self.breakpoints.set_functions(pid, functions, found_via);
    }

    /// Watches `pid`'s functions on each of `tids` not watched yet.
    pub fn watch_threads(&mut self, pid: u32, tids: &[u32]) -> Result<(), ProbeError> {
        if !self.breakpoints.watches(pid) {
            return Ok(());
        }
        let prog = typed_program::<PerfEvent>(&mut self.ebpf, BREAKPOINT_PROGRAM)?;
        let fd = prog.fd().map_err(program_error(BREAKPOINT_PROGRAM))?;
        self.breakpoints
            .cover_threads(pid, tids, std::os::fd::AsFd::as_fd(fd));
        Ok(())
    }

    /// Opens a hardware breakpoint on `address` for thread `tid` with the breakpoint program
    /// linked, as the watched functions get (`profilemate calibrate` times its hits).
    pub fn breakpoint(&mut self, tid: u32, address: u64) -> Result<perf_link::PerfLink, String> {
        let prog = typed_program::<PerfEvent>(&mut self.ebpf, BREAKPOINT_PROGRAM)
            .map_err(|e| error_chain(&e))?;
        let fd = prog.fd().map_err(|e| error_chain(&e))?;
        breakpoints::open(address, tid, std::os::fd::AsFd::as_fd(fd), 0)
            .map_err(|e| breakpoints::cause(&e))
    }

    /// What the breakpoints of each process did.
    #[must_use]
    pub fn breakpoint_reports(&self) -> Vec<breakpoints::BreakpointReport> {
        self.breakpoints.reports()
    }

    /// Gives `pid` entry probes only from now on (no uretprobes).
    pub fn entry_only(&mut self, pid: u32) {
        self.entry_only.insert(pid);
    }

    /// Removes an exited `pid` from the in-kernel filter (the map is bounded; pids are reused).
    pub fn remove_target(&mut self, pid: u32) {
        self.entry_only.remove(&pid);
        self.breakpoints.remove_process(pid);
        if let Ok(mut targets) =
            typed_map::<BpfHashMap<&mut MapData, u32, u32>>(&mut self.ebpf, TARGETS_MAP)
        {
            // Already absent is fine.
            let _ = targets.remove(&pid);
        }
    }

    /// Run counts and run times the kernel measured per program, when BPF statistics are
    /// enabled (`sysctl kernel.bpf_stats_enabled=1`); empty otherwise.
    #[must_use]
    pub fn program_costs(&self) -> Vec<ProgramCost> {
        let enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .is_ok_and(|v| v.trim() == "1");
        if !enabled {
            return Vec::new();
        }
        let mut out = Vec::new();
        for name in [
            ENTRY_PROGRAM,
            RETURN_PROGRAM,
            SAMPLE_PROGRAM,
            USDT_PROGRAM,
            BREAKPOINT_PROGRAM,
        ] {
            let Some(prog) = self.ebpf.program(name) else {
                continue;
            };
            let Ok(fd) = prog.fd() else { continue };
            let raw = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(fd));
            let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")) else {
                continue;
            };
            let field = |key: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let runs = field("run_cnt:");
            let run_time_ns = field("run_time_ns:");
            out.push(ProgramCost {
                program: name,
                runs,
                run_time_ns,
                mean_ns: (runs > 0).then(|| run_time_ns / runs),
            });
        }
        out
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let map = self
            .ebpf
            .map(COUNTERS_MAP)
            .ok_or(ProbeError::Missing(COUNTERS_MAP))?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_error(COUNTERS_MAP))?;
        let sum = |slot: u32| -> Result<u64, ProbeError> {
            let values = arr.get(&slot, 0).map_err(map_error(COUNTERS_MAP))?;
            Ok(values.iter().copied().sum())
        };
        Ok(KernelCounters {
            ring_full_drops: sum(COUNTER_RING_FULL)?,
            out_param_stash_full: sum(COUNTER_STASH_FULL)?,
            out_param_read_failed: sum(COUNTER_OUT_READ_FAILED)?,
            filtered_hits: sum(COUNTER_FILTERED)?,
            stack_ring_full_drops: sum(COUNTER_STACK_RING_FULL)?,
            usdt_ring_full_drops: sum(COUNTER_USDT_RING_FULL)?,
            usdt_without_spec: sum(COUNTER_USDT_NO_SPEC)?,
        })
    }

    /// Attaches every probe of the table that `lib` exports, scoped to `pid`. Returns how
    /// many probes were attached now (0 when this (pid, file) was already handled).
    ///
    /// In a process that maps libcudart (`runtime_mapped`), the driver twins of runtime
    /// calls are left out unless `driver_twins` was asked for: every runtime call would hit
    /// two probes for one operation, doubling the probe cost in the target (~2 µs a hit).
    pub fn attach_library(&mut self, pid: u32, lib: &MappedLibrary, runtime_mapped: bool) -> usize {
        if self.done.insert((pid, lib.dev, lib.inode), ()).is_some() {
            return 0;
        }
        let skip_twins = lib.library == Library::Driver && runtime_mapped && !self.driver_twins;
        let mut wanted: Vec<ApiId> = Vec::new();
        for api in ApiId::all().iter().copied() {
            let spec = api.spec();
            if spec.library != lib.library || (spec.per_kernel && !self.kernels) {
                continue;
            }
            if skip_twins && spec.class.is_runtime_twin() {
                self.report.skipped.push(FailedProbe {
                    pid,
                    library: lib.path.clone(),
                    symbol: spec.symbol.to_owned(),
                    reason: "runtime twin probed in libcudart (--driver-twins probes both levels)"
                        .to_owned(),
                    kind: None,
                });
                continue;
            }
            wanted.push(api);
        }
        let names: Vec<&str> = wanted.iter().map(|a| a.symbol()).collect();
        let offsets = self
            .symbol_cache
            .entry((lib.dev, lib.inode))
            .or_insert_with(|| {
                SymbolOffsets::resolve(&lib.host_path, &names)
                    .map_err(|e| (error_chain(&e), FailureKind::of(&e)))
            })
            .clone();
        let offsets = match offsets {
            Ok(o) => o,
            Err((reason, kind)) => {
                self.report.failed.push(FailedProbe {
                    pid,
                    library: lib.path.clone(),
                    symbol: String::new(),
                    reason,
                    kind: Some(kind),
                });
                return 0;
            }
        };
        let Some(scope_pid) = NonZeroU32::new(pid) else {
            return 0;
        };
        let mut attached = 0;
        for api in wanted {
            let spec = api.spec();
            let Some(offset) = offsets.get(spec.symbol) else {
                self.report.failed.push(FailedProbe {
                    pid,
                    library: lib.path.clone(),
                    symbol: spec.symbol.to_owned(),
                    reason: format!(
                        "{} does not export this symbol (other CUDA version?)",
                        library_name(lib.library)
                    ),
                    kind: Some(FailureKind::NoSymbol),
                });
                continue;
            };
            let c = cookie::encode(api as u16, spec.out_arg);
            let mut kinds = vec![false];
            if spec.needs_return && !self.entry_only.contains(&pid) {
                kinds.push(true);
            }
            for is_return in kinds {
                match self.attach_one(is_return, offset, c, lib, scope_pid) {
                    Ok(id) => {
                        self.links.push(Link { is_return, id });
                        self.report.attached.push(AttachedProbe {
                            pid,
                            library: lib.path.clone(),
                            symbol: spec.symbol,
                            kind: if is_return { "return" } else { "entry" },
                        });
                        attached += 1;
                    }
                    Err(e) => self.report.failed.push(FailedProbe {
                        pid,
                        library: lib.path.clone(),
                        symbol: spec.symbol.to_owned(),
                        reason: format!(
                            "attach {}: {}",
                            if is_return { "return" } else { "entry" },
                            error_chain(&e)
                        ),
                        kind: Some(FailureKind::of(&e)),
                    }),
                }
            }
        }
        self.report.attached_count += attached;
        attached
    }

    fn attach_one(
        &mut self,
        is_return: bool,
        offset: u64,
        c: u64,
        lib: &MappedLibrary,
        pid: NonZeroU32,
    ) -> Result<UProbeLinkId, ProbeError> {
        let name = if is_return {
            RETURN_PROGRAM
        } else {
            ENTRY_PROGRAM
        };
        let prog = typed_program::<UProbe>(&mut self.ebpf, name)?;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie: Some(c),
        };
        prog.attach(point, &lib.host_path, UProbeScope::OneProcess(pid))
            .map_err(program_error(name))
    }

    /// Detaches every probe; records already in the ring buffer stay readable.
    ///
    /// Slow by kernel design: each uprobe removal waits for RCU grace periods under the
    /// kernel's `event_mutex` (~0.1 s per probe measured on 6.18; parallel closes serialize).
    /// A batched `uprobe_multi` link would pay it once per library; aya 0.14 cannot load such
    /// programs yet.
    pub fn detach_all(&mut self) {
        if let Some(Ok(prog)) = self
            .ebpf
            .program_mut(SAMPLE_PROGRAM)
            .map(<&mut PerfEvent>::try_from)
        {
            for id in std::mem::take(&mut self.sampling) {
                let _ = prog.detach(id);
            }
        }
        // Closing the descriptors detaches; the kernel lowers the semaphores.
        self.usdt_links.clear();
        for link in std::mem::take(&mut self.links) {
            let name = if link.is_return {
                RETURN_PROGRAM
            } else {
                ENTRY_PROGRAM
            };
            if let Some(Ok(prog)) = self.ebpf.program_mut(name).map(<&mut UProbe>::try_from) {
                // A link whose process already exited detaches trivially; nothing to report.
                let _ = prog.detach(link.id);
            }
        }
    }
}

/// Map `name` of the loaded object, as the map type `M`.
fn typed_map<'a, M>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<M, ProbeError>
where
    M: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(ProbeError::Missing(name))?;
    M::try_from(map).map_err(map_error(name))
}

/// Program `name` of the loaded object, as the program type `P`.
fn typed_program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, ProbeError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(ProbeError::Missing(name))?;
    prog.try_into().map_err(program_error(name))
}

/// Wraps a program operation's failure with the program's name.
fn program_error(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> ProbeError {
    move |source| ProbeError::Program { name, source }
}

/// Wraps a map operation's failure with the map's name.
fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

/// The error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

/// The walker's thread table from a fresh thread list. A tid claimed by two thread states
/// keeps its previous entry (or none): CPython creates a new thread's state in the creating
/// thread, carrying the creator's id until the new thread starts, so a list read in between
/// names the creator twice.
fn thread_table(
    old: &HashMap<u32, PyThreadRef>,
    threads: &[(u32, PyThreadRef)],
) -> HashMap<u32, PyThreadRef> {
    let mut claims: HashMap<u32, u32> = HashMap::new();
    for (tid, _) in threads {
        *claims.entry(*tid).or_default() += 1;
    }
    threads
        .iter()
        .filter_map(|(tid, r)| {
            let entry = if claims.get(tid) == Some(&1) {
                Some(*r)
            } else {
                old.get(tid).copied()
            };
            entry.map(|e| (*tid, e))
        })
        .collect()
}

#[cfg(test)]
mod thread_table_tests {
    use super::*;

    fn r(tstate: u64, native_tid: u64) -> PyThreadRef {
        PyThreadRef { tstate, native_tid }
    }

    #[test]
    fn a_new_threads_state_naming_its_creator_does_not_replace_the_creators() {
        let old = thread_table(&HashMap::new(), &[(10, r(0x100, 10))]);
        // The new state (0x200) still carries the creator's id 10.
        let mid = thread_table(&old, &[(10, r(0x200, 10)), (10, r(0x100, 10))]);
        assert_eq!(mid.get(&10), Some(&r(0x100, 10)));
        // Started: it has its own id.
        let after = thread_table(&mid, &[(11, r(0x200, 11)), (10, r(0x100, 10))]);
        assert_eq!(after.len(), 2);
        assert_eq!(after.get(&10), Some(&r(0x100, 10)));
        assert_eq!(after.get(&11), Some(&r(0x200, 11)));
        // Gone threads leave the table.
        assert_eq!(thread_table(&after, &[(10, r(0x100, 10))]).len(), 1);
    }
}
