//! Raw `perf_event_open` + `BPF_LINK_CREATE`: a loaded BPF program linked to one perf event
//! with a bpf cookie. aya cannot open the two kinds ProfileMate needs this way: a uprobe
//! with a USDT semaphore (`ref_ctr_offset`) and a per-thread hardware breakpoint that
//! excludes the kernel and carries a cookie.
//!
//! Owns: the `perf_event_attr` and `bpf_attr` layouts and the two syscalls. Closing a
//! `PerfLink` detaches (the kernel also undoes what the event raised, e.g. a semaphore).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A perf event with a program linked to it; dropping it detaches.
#[derive(Debug)]
pub struct PerfLink {
    _perf: OwnedFd,
    _link: OwnedFd,
}

/// Opening or linking failed.
#[derive(Debug, thiserror::Error)]
pub enum PerfLinkError {
    /// `perf_event_open` failed.
    #[error("perf_event_open failed")]
    Open(#[source] std::io::Error),
    /// `BPF_LINK_CREATE` failed.
    #[error("linking the program to the perf event failed")]
    Link(#[source] std::io::Error),
}

impl PerfLinkError {
    /// The errno of the failed call.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Open(e) | Self::Link(e) => e.raw_os_error(),
        }
    }
}

/// `perf_event_attr` (PERF_ATTR_SIZE_VER5 = 112 bytes). `config1`/`config2` are the
/// uprobe's path and offset, or the breakpoint's address and length.
#[repr(C)]
#[derive(Default)]
pub struct PerfEventAttr {
    pub kind: u32,
    pub size: u32,
    pub config: u64,
    pub sample_period: u64,
    pub sample_type: u64,
    pub read_format: u64,
    pub flags: u64,
    pub wakeup_events: u32,
    pub bp_type: u32,
    pub config1: u64,
    pub config2: u64,
    pub branch_sample_type: u64,
    pub sample_regs_user: u64,
    pub sample_stack_user: u32,
    pub clockid: i32,
    pub sample_regs_intr: u64,
    pub aux_watermark: u32,
    pub sample_max_stack: u16,
    pub reserved: u16,
}

const _: () = assert!(std::mem::size_of::<PerfEventAttr>() == 112);

/// `perf_event_attr` flag bits.
pub const FLAG_EXCLUDE_KERNEL: u64 = 1 << 5;
/// See `FLAG_EXCLUDE_KERNEL`.
pub const FLAG_EXCLUDE_HV: u64 = 1 << 6;
/// `perf_event_attr.disabled`: created but never scheduled in (a breakpoint so created
/// reserves its debug-register slot without loading the register).
pub const FLAG_DISABLED: u64 = 1;

/// `union bpf_attr` for `BPF_LINK_CREATE` with a perf event target.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    bpf_cookie: u64,
    _rest: [u64; 4],
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PERF_EVENT: u32 = 41;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// Opens the event `attr` for `pid` (a process or a thread id; on any CPU), with no program
/// linked: closing the descriptor removes it. `profilemate doctor` uses it to try what the
/// kernel allows.
pub fn open_event(attr: &PerfEventAttr, pid: u32) -> Result<OwnedFd, PerfLinkError> {
    // SAFETY: perf_event_open reads `attr` (and what its config fields point to, alive for
    // the call) and returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *const PerfEventAttr,
            pid as libc::pid_t,
            -1 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(PerfLinkError::Open(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens the event `attr` for `pid` (a process or a thread id; `cpu` -1: any) and links
/// `prog` to it with `cookie`.
pub fn open_linked(
    attr: &PerfEventAttr,
    pid: u32,
    prog: BorrowedFd<'_>,
    cookie: u64,
) -> Result<PerfLink, PerfLinkError> {
    let perf = open_event(attr, pid)?;
    let link_attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: perf.as_raw_fd() as u32,
        attach_type: BPF_PERF_EVENT,
        flags: 0,
        bpf_cookie: cookie,
        _rest: [0; 4],
    };
    // SAFETY: the bpf syscall reads `link_attr` (size given) and returns a new fd or -1.
    let link = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &link_attr as *const LinkCreateAttr,
            std::mem::size_of::<LinkCreateAttr>() as libc::c_uint,
        )
    };
    if link < 0 {
        return Err(PerfLinkError::Link(std::io::Error::last_os_error()));
    }
    Ok(PerfLink {
        _perf: perf,
        // SAFETY: a fresh descriptor owned by nothing else.
        _link: unsafe { OwnedFd::from_raw_fd(link as i32) },
    })
}
