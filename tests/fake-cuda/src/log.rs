//! Ground-truth log: buffered, whole-line appends to `$FAKE_CUDA_LOG`.
//!
//! Every loaded copy of the library (libcudart.so.12, libcuda.so.1, ...) has its own buffer;
//! all of them append to the same file with `O_APPEND`, one `write(2)` per flushed buffer, so
//! the file only ever receives complete lines. Readers must sort by timestamp, not file order.

use std::ffi::CString;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Flush threshold of the in-memory buffer.
const FLUSH_AT: usize = 64 * 1024;

struct LogBuf {
    /// Process that filled `buf` (a `fork` child without `exec` must not re-write the
    /// parent's lines).
    pid: i32,
    buf: Vec<u8>,
}

static PATH: OnceLock<Option<CString>> = OnceLock::new();
static BUF: Mutex<LogBuf> = Mutex::new(LogBuf {
    pid: 0,
    buf: Vec::new(),
});
/// Set by the `atexit` hook: after it, every line is written through immediately.
static EXITING: AtomicBool = AtomicBool::new(false);

fn path() -> Option<&'static CString> {
    PATH.get_or_init(|| {
        let p = std::env::var_os("FAKE_CUDA_LOG")?;
        if p.is_empty() {
            return None;
        }
        CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str())).ok()
    })
    .as_ref()
}

/// Whether logging is on (`FAKE_CUDA_LOG` set). Callers skip all formatting when it is off.
pub fn enabled() -> bool {
    path().is_some()
}

fn lock() -> MutexGuard<'static, LogBuf> {
    BUF.lock().unwrap_or_else(|e| e.into_inner())
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of `bpf_ktime_get_ns`).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn pid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

pub fn tid() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// Appends one complete line (without the trailing newline) to the buffer.
pub fn line(text: &str) {
    let Some(p) = path() else { return };
    let me = pid();
    let mut g = lock();
    if g.pid != me {
        // Inherited through fork: those lines belong to the parent, which writes them itself.
        g.buf.clear();
        g.pid = me;
    }
    g.buf.extend_from_slice(text.as_bytes());
    g.buf.push(b'\n');
    if g.buf.len() >= FLUSH_AT || EXITING.load(Ordering::Relaxed) {
        write_out(p, &mut g.buf);
    }
}

/// Writes the buffered lines to the file now.
pub fn flush() {
    let Some(p) = path() else { return };
    let me = pid();
    let mut g = lock();
    if g.pid != me {
        g.buf.clear();
        g.pid = me;
        return;
    }
    write_out(p, &mut g.buf);
}

fn write_out(p: &CString, buf: &mut Vec<u8>) {
    if buf.is_empty() {
        return;
    }
    // SAFETY: `p` is a NUL-terminated path; flags/mode are plain integers.
    let fd = unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    };
    if fd < 0 {
        buf.clear();
        return;
    }
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: the pointer/length pair lies inside `buf`.
        let n = unsafe { libc::write(fd, buf[off..].as_ptr().cast(), buf.len() - off) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        off += n as usize;
    }
    // SAFETY: `fd` was opened above and is closed once.
    unsafe { libc::close(fd) };
    buf.clear();
}

extern "C" fn at_exit() {
    EXITING.store(true, Ordering::Relaxed);
    flush();
}

extern "C" fn on_load() {
    // SAFETY: registering a plain `extern "C" fn()` with no captured state. In a shared object
    // glibc binds it to this DSO (runs at exit() or at dlclose).
    unsafe { libc::atexit(at_exit) };
}

/// Runs when the object is loaded (also through dlopen): registers the exit-time flush.
#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;

/// Helper to build lines: `Line::new("call").kv("ts", 1).hex("stream", 2).finish()`.
pub struct Line(String);

impl Line {
    pub fn new(kind: &str) -> Self {
        let mut s = String::with_capacity(256);
        s.push_str(kind);
        Line(s)
    }
    pub fn kv(mut self, k: &str, v: impl std::fmt::Display) -> Self {
        let _ = write!(self.0, " {k}={v}");
        self
    }
    pub fn hex(mut self, k: &str, v: u64) -> Self {
        let _ = write!(self.0, " {k}=0x{v:x}");
        self
    }
    pub fn text(mut self, k: &str, v: &str) -> Self {
        let _ = write!(self.0, " {k}=");
        if v.is_empty() {
            self.0.push('-');
        }
        for c in v.chars() {
            self.0.push(if c.is_whitespace() || c == '=' {
                '_'
            } else {
                c
            });
        }
        self
    }
    pub fn emit(self) {
        line(&self.0);
    }
}
