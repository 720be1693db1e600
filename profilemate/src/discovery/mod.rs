//! Target discovery: the process tree under the given pid, each process's identity (comm,
//! command line / process title), and the CUDA libraries mapped into it.
//!
//! Owns: reading /proc. Does not own: attaching (see `probes`) or deciding when to rescan
//! (see `session`). Library paths are resolved through `/proc/PID/root` so a target inside a
//! container is probed on the file it really mapped; a library whose file was deleted or
//! replaced since it was mapped (an in-place upgrade: `/path (deleted)` in the maps) is reached
//! through `/proc/PID/map_files/START-END`, which still names the mapped inode.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use profilemate_common::Library;
use serde::Serialize;

/// Failure to read a process's state.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// /proc could not be read.
    #[error("cannot read /proc/{pid}/{what}")]
    Proc {
        /// The process.
        pid: u32,
        /// The file.
        what: &'static str,
        /// The cause.
        #[source]
        source: procfs::ProcError,
    },
}

/// Identity of one target process.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// `/proc/PID/comm`.
    pub comm: String,
    /// `/proc/PID/cmdline` joined with spaces; vLLM's setproctitle titles show up here
    /// (`VLLM::EngineCore`, `VLLM::Worker_TP1`). Bounded to 512 bytes, lossy UTF-8.
    pub cmdline: String,
}

/// A CUDA library mapped into a process.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
pub struct MappedLibrary {
    /// Path as the target sees it (from /proc/PID/maps).
    pub path: String,
    /// Path that reaches the same file from here (through /proc/PID/root, or
    /// /proc/PID/map_files when the file was deleted).
    pub host_path: PathBuf,
    /// Device and inode of the mapped file: the identity uprobes attach to.
    pub dev: (u64, u64),
    /// Inode.
    pub inode: u64,
    /// Runtime or driver.
    #[serde(serialize_with = "serialize_library", rename = "kind")]
    pub library: Library,
    /// The mapped file was deleted or replaced after it was mapped (maps say `(deleted)`).
    pub deleted: bool,
}

/// What /proc/PID/maps appends to the path of a mapped file that no longer has a name.
const DELETED_SUFFIX: &str = " (deleted)";

fn serialize_library<S: serde::Serializer>(l: &Library, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(library_name(*l))
}

/// Readable name of a library kind.
#[must_use]
pub fn library_name(l: Library) -> &'static str {
    match l {
        Library::Runtime => "libcudart",
        Library::Driver => "libcuda",
    }
}

const MAX_CMDLINE: usize = 512;

/// Classifies a mapped file name as a CUDA runtime or driver library.
#[must_use]
pub fn classify_library(path: &str) -> Option<Library> {
    let name = Path::new(path).file_name()?.to_str()?;
    if name.starts_with("libcudart") && name.contains(".so") {
        Some(Library::Runtime)
    } else if name.starts_with("libcuda.so") {
        Some(Library::Driver)
    } else {
        None
    }
}

/// Reads the identity of `pid`.
pub fn process_info(pid: u32) -> Result<ProcessInfo, DiscoveryError> {
    let p = procfs::process::Process::new(pid as i32).map_err(|source| DiscoveryError::Proc {
        pid,
        what: "stat",
        source,
    })?;
    let stat = p.stat().map_err(|source| DiscoveryError::Proc {
        pid,
        what: "stat",
        source,
    })?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut joined: Vec<u8> = cmdline
        .into_iter()
        .take(MAX_CMDLINE)
        .map(|b| if b == 0 { b' ' } else { b })
        .collect();
    while joined.last() == Some(&b' ') {
        joined.pop();
    }
    Ok(ProcessInfo {
        pid,
        ppid: u32::try_from(stat.ppid).unwrap_or(0),
        comm: stat.comm,
        cmdline: String::from_utf8_lossy(&joined).into_owned(),
    })
}

/// A process that has exited but not been reaped (zombie, or dead) runs no code: not alive.
/// A kernel thread has no user memory to probe: never a target either.
fn is_alive(stat: &procfs::process::Stat) -> bool {
    !matches!(stat.state, 'Z' | 'X' | 'x') && !is_kthread(stat)
}

/// `PF_KTHREAD` in /proc/PID/stat's flags (include/linux/sched.h).
const PF_KTHREAD: u32 = 0x0020_0000;

fn is_kthread(stat: &procfs::process::Stat) -> bool {
    stat.flags & PF_KTHREAD != 0
}

/// Whether `pid` is a kernel thread (kthreadd, kworkers, ...): no user memory, no
/// /proc/PID/exe, nothing a uprobe can reach.
#[must_use]
pub fn is_kernel_thread(pid: u32) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .is_ok_and(|s| is_kthread(&s))
}

/// A thread's name (`/proc/PID/task/TID/comm`), decoded lossily: a name is any 15 bytes
/// the program chose, not always UTF-8. None when it cannot be read (the thread exited).
#[must_use]
pub fn thread_comm(pid: u32, tid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .trim_end_matches('\n')
            .chars()
            .take(64)
            .collect(),
    )
}

/// Every live process id on the system with its parent.
fn parent_map() -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    let Ok(all) = procfs::process::all_processes() else {
        return map;
    };
    for p in all.flatten() {
        if let Ok(stat) = p.stat() {
            if !is_alive(&stat) {
                continue;
            }
            if let (Ok(pid), Ok(ppid)) = (u32::try_from(stat.pid), u32::try_from(stat.ppid)) {
                map.insert(pid, ppid);
            }
        }
    }
    map
}

/// Whether `pid` exists and is not a zombie.
#[must_use]
pub fn is_running(pid: u32) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .is_ok_and(|s| is_alive(&s))
}

/// `root` and, when `children` is set, all its live descendants.
#[must_use]
pub fn process_tree(root: u32, children: bool) -> Vec<u32> {
    if !children {
        return if is_running(root) { vec![root] } else { vec![] };
    }
    let parents = parent_map();
    let mut kids: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (&pid, &ppid) in &parents {
        kids.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    if !parents.contains_key(&root) {
        return out;
    }
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        out.push(pid);
        if let Some(k) = kids.get(&pid) {
            stack.extend(k.iter().copied());
        }
    }
    out.sort_unstable();
    out
}

/// A path the target sees, reached from here through its root (`/proc/PID/root`), so a
/// file inside the target's container is the one it really mapped.
#[must_use]
pub fn host_path(pid: u32, path: &Path) -> PathBuf {
    let relative = path.strip_prefix("/").unwrap_or(path);
    PathBuf::from(format!("/proc/{pid}/root")).join(relative)
}

/// The CUDA libraries mapped in `pid`, one entry per file.
pub fn cuda_libraries(pid: u32) -> Result<Vec<MappedLibrary>, DiscoveryError> {
    let p = procfs::process::Process::new(pid as i32).map_err(|source| DiscoveryError::Proc {
        pid,
        what: "maps",
        source,
    })?;
    let maps = p.maps().map_err(|source| DiscoveryError::Proc {
        pid,
        what: "maps",
        source,
    })?;
    let mut out: Vec<MappedLibrary> = Vec::new();
    for m in maps {
        let Some(lib) = mapped_library(pid, &m) else {
            continue;
        };
        if !out.iter().any(|l| l.inode == lib.inode && l.dev == lib.dev) {
            out.push(lib);
        }
    }
    out.sort();
    Ok(out)
}

/// The CUDA library of one mapping, if it is one. A deleted file is reached through the
/// mapping's own `/proc/PID/map_files` link (which the kernel resolves to the mapped inode).
fn mapped_library(pid: u32, m: &procfs::process::MemoryMap) -> Option<MappedLibrary> {
    let procfs::process::MMapPath::Path(path) = &m.pathname else {
        return None;
    };
    let raw = path.to_str()?;
    let (path_str, deleted) = match raw.strip_suffix(DELETED_SUFFIX) {
        Some(p) => (p, true),
        None => (raw, false),
    };
    let library = classify_library(path_str)?;
    let host_path = if deleted {
        map_files_path(pid, m.address)
    } else {
        host_path(pid, Path::new(path_str))
    };
    Some(MappedLibrary {
        path: path_str.to_owned(),
        host_path,
        dev: (
            u64::try_from(m.dev.0).unwrap_or(0),
            u64::try_from(m.dev.1).unwrap_or(0),
        ),
        inode: m.inode,
        library,
        deleted,
    })
}

/// `/proc/PID/map_files/START-END` of the mapping at `address` (start, end).
#[must_use]
pub fn map_files_path(pid: u32, address: (u64, u64)) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        address.0, address.1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_cuda_library_names() {
        assert_eq!(
            classify_library("/x/nvidia/cu13/lib/libcudart.so.13"),
            Some(Library::Runtime)
        );
        assert_eq!(
            classify_library("/usr/lib/libcudart.so.12.4.127"),
            Some(Library::Runtime)
        );
        assert_eq!(
            classify_library("/usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06"),
            Some(Library::Driver)
        );
        assert_eq!(
            classify_library("/usr/lib/libcuda.so.1"),
            Some(Library::Driver)
        );
        assert_eq!(classify_library("/usr/lib/libcudnn.so.9"), None);
        assert_eq!(classify_library("/usr/lib/libcudart_static.a"), None);
    }

    #[test]
    fn zombie_children_are_not_alive() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        // Exited but not reaped yet: a zombie.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(process_tree(pid, false).is_empty());
        assert!(!process_tree(std::process::id(), true).contains(&pid));
        child.wait().expect("reap");
    }

    #[test]
    fn kernel_threads_are_never_targets() {
        // kthreadd is pid 2 outside a pid namespace; inside one no kernel thread is visible.
        if !is_kernel_thread(2) {
            eprintln!("SKIPPED kernel_threads_are_never_targets: pid 2 is not a kernel thread");
            return;
        }
        assert!(process_tree(2, false).is_empty());
        assert!(
            process_tree(2, true).is_empty(),
            "nor its kernel-thread children"
        );
        assert!(!is_kernel_thread(std::process::id()));
    }

    #[test]
    fn a_deleted_library_is_reached_through_map_files() {
        let dir = std::env::temp_dir().join(format!("pm-deleted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("libcuda.so.1");
        std::fs::write(&path, vec![0x5au8; 8192]).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        // SAFETY: a private read-only mapping of a file nobody else writes.
        let map = unsafe { memmap2::Mmap::map(&file) }.expect("mmap");
        std::fs::remove_file(&path).expect("delete");
        let libs = cuda_libraries(std::process::id()).expect("own maps");
        let lib = libs
            .iter()
            .find(|l| l.path == path.to_string_lossy())
            .unwrap_or_else(|| panic!("deleted library not found in {libs:?}"));
        assert!(lib.deleted);
        assert_eq!(lib.library, Library::Driver);
        let shown = lib.host_path.to_string_lossy();
        assert!(shown.contains("/map_files/"), "{shown}");
        // Opening a map_files link needs CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE).
        if let Ok(bytes) = std::fs::read(&lib.host_path) {
            assert_eq!(bytes.len(), 8192, "the deleted inode's contents");
        }
        drop(map);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn own_process_is_its_own_tree_root() {
        let me = std::process::id();
        assert!(process_tree(me, true).contains(&me));
        assert_eq!(process_tree(me, false), vec![me]);
        let info = process_info(me).expect("own process readable");
        assert_eq!(info.pid, me);
        assert!(!info.comm.is_empty());
    }
}
