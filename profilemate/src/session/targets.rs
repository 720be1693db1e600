//! The session's targets: the process tree and its CUDA libraries (rescanned, attached as
//! they appear, marked exited as they go), each process's Python interpreter (found,
//! handed to the walker, the pipeline and the watcher; its GC probes attached; its threads
//! re-read) and the scheduler methods the watcher found (armed as breakpoints).
//!
//! Owns what is attached to whom; not the probes themselves (`probes`), the reading of
//! the interpreter (`python`) or the scheduler (`vllm::watcher`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::mpsc,
};

use profilemate_common::{python::usdt_probe, Library};

use super::metadata::{PythonRecord, PythonStatus, TargetRecord};
use crate::{
    config::AttachConfig,
    discovery::{self, MappedLibrary},
    model::{monotonic_ns, TimeBase},
    preflight,
    probes::{
        usdt::{self, UsdtProbe},
        Probes, UsdtStatus,
    },
    python::{self, Interpreter, PythonError},
    vllm::{
        self,
        watcher::{PyUpdate, WatchCommand},
    },
};

/// Rescans that retry finding the interpreter of a process that is not (yet) Python.
const PYTHON_ATTEMPTS: u32 = 10;

/// The USDT probes ProfileMate attaches in CPython: (probe name, id).
const PYTHON_USDT: &[(&str, u16)] = &[
    ("gc__start", usdt_probe::GC_START),
    ("gc__done", usdt_probe::GC_DONE),
];

#[derive(Default)]
struct PyTrack {
    attempts: u32,
    done: bool,
    record: Option<PythonRecord>,
    /// The interpreter being walked (its thread list is re-read at each rescan).
    walking: Option<Interpreter>,
}

/// One more try at finding `pid`'s interpreter: None while it is not Python yet (retried at
/// the next rescan) or when it never will be (then `track` says why).
fn find_interpreter(pid: u32, track: &mut PyTrack) -> Option<Interpreter> {
    track.attempts += 1;
    let found = python::find(pid);
    let retry = matches!(found, Err(PythonError::NotPython | PythonError::Read(_)))
        && track.attempts < PYTHON_ATTEMPTS;
    track.done = !retry;
    match found {
        Ok(i) => Some(i),
        Err(e) if retry => {
            log::debug!("pid {pid}: {e} (will retry)");
            None
        }
        Err(e) => {
            let status = match e {
                PythonError::NotPython => PythonStatus::NotPython,
                _ => PythonStatus::Unsupported,
            };
            if status == PythonStatus::Unsupported {
                crate::say!("warning: pid {pid}: Python stacks not walked: {e}");
            }
            track.record = Some(PythonRecord {
                pid,
                status,
                interpreter: None,
                tested: None,
                objects: None,
                reason: Some(crate::probes::error_chain(&e)),
            });
            None
        }
    }
}

/// Hands `pid`'s Python threads to the walker and to its breakpoints (if its functions are
/// watched), and keeps their ids for breakpoints armed later.
fn track_threads(
    py_tids: &mut HashMap<u32, Vec<u32>>,
    probes: &mut Probes,
    pid: u32,
    refs: &[(u32, profilemate_common::python::PyThreadRef)],
) {
    if let Err(e) = probes.set_python_threads(pid, refs) {
        log::warn!("pid {pid}: {e}");
    }
    let tids: Vec<u32> = refs.iter().map(|(t, _)| *t).collect();
    if let Err(e) = probes.watch_threads(pid, &tids) {
        log::warn!("pid {pid}: breakpoints: {e}");
    }
    py_tids.insert(pid, tids);
}

/// Every process of the tree, its libraries and its interpreter.
pub(super) struct Targets {
    root: u32,
    children: bool,
    time: TimeBase,
    /// Per process, as metadata.json reports it.
    pub(super) procs: BTreeMap<u32, TargetRecord>,
    python: BTreeMap<u32, PyTrack>,
    py_tx: mpsc::Sender<PyUpdate>,
    usdt_notes: HashMap<(u64, u64), Result<Vec<UsdtProbe>, String>>,
    /// Commands for the vLLM watcher thread (queued until it starts).
    watch: mpsc::Sender<WatchCommand>,
    /// Scheduler methods to watch with breakpoints, found by the watcher.
    functions: mpsc::Receiver<vllm::calls::FunctionWatch>,
    /// Python threads per process at the last rescan (where breakpoints go).
    py_tids: HashMap<u32, Vec<u32>>,
    /// Whether new processes get return probes.
    returns: ReturnPolicy,
    /// Processes whose memory maps could not be read, with the error (the latest).
    pub(super) unreadable: BTreeMap<u32, String>,
}

/// Decides, per new process, whether return probes go in (seccomp on Linux 6.11-6.13 can kill
/// the target at one; see `preflight::return_probes`).
struct ReturnPolicy {
    release: String,
    kernel: Option<(u32, u32)>,
    allow: bool,
}

impl ReturnPolicy {
    fn new(allow: bool) -> Self {
        let release = preflight::kernel_release();
        Self {
            kernel: preflight::kernel_version(&release),
            release,
            allow,
        }
    }

    /// Decides for `pid`, says so when there is a risk, and tells `probes`.
    fn decide(
        &self,
        pid: u32,
        probes: &mut Probes,
    ) -> (Option<preflight::SeccompMode>, preflight::ReturnProbes) {
        let seccomp = preflight::seccomp_mode(pid);
        let decision = preflight::return_probes(self.kernel, seccomp, self.allow);
        if let Some(w) = preflight::return_probes_warning(pid, &self.release, seccomp, decision) {
            crate::say!("warning: {w}");
        }
        if decision == preflight::ReturnProbes::EntryOnly {
            probes.entry_only(pid);
        }
        (seccomp, decision)
    }
}

impl Targets {
    /// No target yet: `rescan` finds them. `watch`: commands for the watcher; `functions`:
    /// the scheduler methods it finds.
    pub(super) fn new(
        cfg: &AttachConfig,
        time: TimeBase,
        py_tx: mpsc::Sender<PyUpdate>,
        watch: mpsc::Sender<WatchCommand>,
        functions: mpsc::Receiver<vllm::calls::FunctionWatch>,
    ) -> Self {
        Self {
            root: cfg.pid,
            children: cfg.follow_children,
            time,
            procs: BTreeMap::new(),
            python: BTreeMap::new(),
            py_tx,
            usdt_notes: HashMap::new(),
            watch,
            functions,
            py_tids: HashMap::new(),
            returns: ReturnPolicy::new(cfg.allow_uretprobes),
            unreadable: BTreeMap::new(),
        }
    }

    /// Finds `pid`'s interpreter (retrying a few rescans while it is not Python yet), hands
    /// it to the walker and the pipeline, and attaches its GC probes.
    fn python_scan(&mut self, pid: u32, probes: &mut Probes) {
        let track = self.python.entry(pid).or_default();
        if let Some(interp) = &track.walking {
            // New threads get walked (and their watched functions armed) from the next
            // rescan on.
            match interp.thread_refs() {
                Ok(refs) => track_threads(&mut self.py_tids, probes, pid, &refs),
                Err(e) => log::debug!("pid {pid}: thread list: {e}"),
            }
            return;
        }
        if track.done {
            return;
        }
        if let Some(interp) = find_interpreter(pid, track) {
            self.start_walking(pid, interp, probes);
        }
    }

    /// Hands a found interpreter to the pipeline and the walker, attaches its GC probes and
    /// tells the watcher.
    fn start_walking(&mut self, pid: u32, interp: Interpreter, probes: &mut Probes) {
        // The pipeline learns the interpreter before the walker sends its first stack.
        let _ = self.py_tx.send(PyUpdate::Add(Box::new(interp.clone())));
        if let Err(e) = probes.set_python(pid, interp.walker_config()) {
            let _ = self.py_tx.send(PyUpdate::Remove { pid, noticed_ns: 0 });
            self.python.entry(pid).or_default().record = Some(PythonRecord {
                pid,
                status: PythonStatus::Unsupported,
                interpreter: Some(interp),
                tested: None,
                objects: None,
                reason: Some(format!("cannot configure the walker: {e}")),
            });
            return;
        }
        log::info!(
            "pid {pid}: CPython {} ({}, layout {:?})",
            interp.version,
            interp.binary,
            interp.layout.source
        );
        self.attach_gc_probes(pid, &interp, probes);
        if let Ok(refs) = interp.thread_refs() {
            track_threads(&mut self.py_tids, probes, pid, &refs);
        }
        let track = self.python.entry(pid).or_default();
        track.walking = Some(interp.clone());
        track.record = Some(PythonRecord {
            pid,
            status: PythonStatus::Walking,
            interpreter: Some(interp.clone()),
            tested: Some(interp.layout.tested),
            objects: Some(python::objects::object_layout(interp.layout.version).is_some()),
            reason: None,
        });
        let _ = self.watch.send(WatchCommand::Python(Box::new(interp)));
    }

    /// Attaches the interpreter's GC probes (USDT), or says why they are absent.
    fn attach_gc_probes(&mut self, pid: u32, interp: &Interpreter, probes: &mut Probes) {
        let notes = self
            .usdt_notes
            .entry(interp.file_id)
            .or_insert_with(|| {
                usdt::probes(&interp.host_path)
                    .map(|all| all.into_iter().flatten().collect())
                    .map_err(|e| crate::probes::error_chain(&e))
            })
            .clone();
        let notes = match notes {
            Ok(notes) => notes,
            Err(e) => {
                probes.usdt_report.push(crate::probes::UsdtReport {
                    pid,
                    file: interp.binary.clone(),
                    probe: "python:*".to_owned(),
                    status: UsdtStatus::NotAttached(format!("cannot read the USDT notes: {e}")),
                });
                return;
            }
        };
        for (name, id) in PYTHON_USDT {
            match notes.iter().find(|p| p.provider == "python" && p.name == *name) {
                Some(p) => {
                    probes.attach_usdt(
                        pid,
                        &interp.host_path,
                        &interp.binary,
                        interp.file_id,
                        p,
                        *id,
                    );
                }
                None => probes.usdt_report.push(crate::probes::UsdtReport {
                    pid,
                    file: interp.binary.clone(),
                    probe: format!("python:{name}"),
                    status: UsdtStatus::NotAttached("absent: this CPython was built without --with-dtrace; GC pauses are not measured".to_owned()),
                }),
            }
        }
    }

    /// Arms the breakpoints on scheduler methods the watcher found, on the process's
    /// Python threads known now (threads that appear later are armed by the rescans).
    pub(super) fn arm_watched_functions(&mut self, probes: &mut Probes) {
        while let Ok(w) = self.functions.try_recv() {
            if !w.missing.is_empty() {
                log::info!(
                    "pid {}: not watched (absent): {}",
                    w.pid,
                    w.missing.join(", ")
                );
            }
            let pid = w.pid;
            probes.watch_functions(pid, w.functions, w.found_via);
            let tids = self.py_tids.get(&pid).cloned().unwrap_or_default();
            if let Err(e) = probes.watch_threads(pid, &tids) {
                log::warn!("pid {pid}: breakpoints: {e}");
            }
        }
    }

    /// Finds new processes and libraries and attaches to them. Returns how many probes were
    /// attached now.
    pub(super) fn rescan(&mut self, probes: &mut Probes) -> usize {
        self.arm_watched_functions(probes);
        let now = self.time.sec(monotonic_ns());
        let live = discovery::process_tree(self.root, self.children);
        self.notice_exits(&live, now, probes);
        let mut attached = 0;
        for pid in live {
            if !self.procs.contains_key(&pid) && !self.add_process(pid, now, probes) {
                continue;
            }
            if self.procs.get(&pid).is_some_and(|t| t.exited_sec.is_some()) {
                continue;
            }
            self.python_scan(pid, probes);
            attached += self.attach_libraries(pid, probes);
        }
        attached
    }

    /// Marks the targets gone from the tree as exited and tells every thread.
    fn notice_exits(&mut self, live: &[u32], now: f64, probes: &mut Probes) {
        for (pid, t) in &mut self.procs {
            // Confirm by pid: a failed /proc scan must not end the session.
            if t.exited_sec.is_none() && !live.contains(pid) && !discovery::is_running(*pid) {
                t.exited_sec = Some(now);
                probes.remove_target(*pid);
                probes.remove_python(*pid);
                let _ = self.py_tx.send(PyUpdate::Remove {
                    pid: *pid,
                    noticed_ns: monotonic_ns(),
                });
                let _ = self.watch.send(WatchCommand::Exited(*pid));
            }
        }
    }

    /// Starts following a new process; false when it cannot be (gone, or not probeable).
    fn add_process(&mut self, pid: u32, now: f64, probes: &mut Probes) -> bool {
        let Ok(info) = discovery::process_info(pid) else {
            return false;
        };
        if let Err(err) = probes.add_target(pid) {
            log::warn!("pid {pid}: {err}");
            return false;
        }
        log::info!("target pid {pid} ({}): {}", info.comm, info.cmdline);
        let _ = self.watch.send(WatchCommand::Process(pid));
        let (seccomp, return_probes) = self.returns.decide(pid, probes);
        self.procs.insert(
            pid,
            TargetRecord {
                info,
                first_seen_sec: now,
                exited_sec: None,
                libraries: Vec::new(),
                seccomp,
                return_probes,
                return_probes_lost: (return_probes == preflight::ReturnProbes::EntryOnly)
                    .then_some(preflight::ENTRY_ONLY_LOSS),
            },
        );
        true
    }

    /// Attaches to the CUDA libraries `pid` mapped since the last rescan; how many probes.
    fn attach_libraries(&mut self, pid: u32, probes: &mut Probes) -> usize {
        let Some(t) = self.procs.get_mut(&pid) else {
            return 0;
        };
        let mut libs: Vec<MappedLibrary> = match discovery::cuda_libraries(pid) {
            Ok(l) => l,
            Err(e) => {
                self.unreadable.insert(pid, crate::probes::error_chain(&e));
                Vec::new()
            }
        };
        // Runtime libraries first: whether one is mapped decides the driver probe set.
        libs.sort_by_key(|l| l.library != Library::Runtime);
        let runtime_mapped = libs
            .iter()
            .chain(&t.libraries)
            .any(|l| l.library == Library::Runtime);
        let mut attached = 0;
        for lib in libs {
            if t.libraries.contains(&lib) {
                continue;
            }
            let n = probes.attach_library(pid, &lib, runtime_mapped);
            log::info!("pid {pid}: {} probes on {}", n, lib.path);
            attached += n;
            t.libraries.push(lib);
        }
        attached
    }

    pub(super) fn any_library(&self) -> bool {
        self.procs.values().any(|t| !t.libraries.is_empty())
    }

    pub(super) fn all_exited(&self) -> bool {
        self.procs.values().all(|t| t.exited_sec.is_some())
    }

    /// Processes whose stacks are walked.
    pub(super) fn walking(&self) -> usize {
        self.python.values().filter(|t| t.walking.is_some()).count()
    }

    /// What was found about each process's interpreter (taken for metadata.json).
    pub(super) fn take_python_records(&mut self) -> Vec<PythonRecord> {
        std::mem::take(&mut self.python)
            .into_values()
            .filter_map(|t| t.record)
            .collect()
    }
}
