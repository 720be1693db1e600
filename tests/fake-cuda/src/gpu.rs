//! The simulated GPU: one worker thread executing a FIFO queue of work items in order.
//!
//! Only the copy of the library that acts as the driver (libcuda.so.1) ever touches this state;
//! runtime copies forward to it through the driver entry points.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use crate::log::{self, Line};

pub const SUCCESS: i32 = 0;
pub const ERR_INVALID_VALUE: i32 = 1;
pub const ERR_INVALID_HANDLE: i32 = 400;
pub const ERR_NOT_READY: i32 = 600;
pub const ERR_CAPTURE_UNSUPPORTED: i32 = 900;
pub const ERR_UNKNOWN: i32 = 999;

const STREAM_BASE: u64 = 0x5100_0000;
const EVENT_BASE: u64 = 0xe100_0000;
const GRAPH_BASE: u64 = 0x6100_0000;
const EXEC_BASE: u64 = 0x7100_0000;
const MEM_BASE: u64 = 0x7f00_0000_0000;

/// Builtin streams: legacy default (0), CU_STREAM_LEGACY (1), CU_STREAM_PER_THREAD (2).
fn builtin_stream(s: u64) -> bool {
    s <= 2
}

/// One node of a captured graph.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Kernel { dur_ns: u64 },
    Copy { bytes: u64 },
}

impl Op {
    fn dur_ns(self) -> u64 {
        match self {
            Op::Kernel { dur_ns } => dur_ns,
            Op::Copy { bytes } => copy_ns(bytes),
        }
    }
}

enum Work {
    Op(Op),
    Graph { exec: u64, ops: Arc<Vec<Op>> },
    Event { event: u64 },
}

struct Item {
    seq: u64,
    stream: u64,
    submit_ns: u64,
    tag: Arc<str>,
    work: Work,
}

#[derive(Default)]
struct StreamState {
    /// Sequence number of the last item enqueued on this stream (0 = none).
    last_seq: u64,
    /// Nodes captured so far while a capture is active.
    capture: Option<Vec<Op>>,
}

struct State {
    queue: VecDeque<Item>,
    /// Last sequence number handed out (items are numbered from 1).
    enqueued: u64,
    /// Every item with `seq <= done` has finished.
    done: u64,
    worker: bool,
    next_handle: u64,
    next_mem: u64,
    streams: HashMap<u64, StreamState>,
    /// Event -> sequence number of its last marker (0 = never recorded).
    events: HashMap<u64, u64>,
    graphs: HashMap<u64, Arc<Vec<Op>>>,
    execs: HashMap<u64, Arc<Vec<Op>>>,
    allocs: HashSet<u64>,
    tag: Arc<str>,
}

pub struct Gpu {
    state: Mutex<State>,
    /// Signalled when work is enqueued (worker waits on it).
    work_cv: Condvar,
    /// Signalled when an item completes (synchronize calls wait on it).
    done_cv: Condvar,
}

pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            enqueued: 0,
            done: 0,
            worker: false,
            next_handle: 1,
            next_mem: MEM_BASE,
            streams: HashMap::new(),
            events: HashMap::new(),
            graphs: HashMap::new(),
            execs: HashMap::new(),
            allocs: HashSet::new(),
            tag: Arc::from("-"),
        }),
        work_cv: Condvar::new(),
        done_cv: Condvar::new(),
    })
}

pub fn kernel_ns(dur_us: u32) -> u64 {
    u64::from(dur_us) * 1000
}

/// Copies take 1 µs + bytes/10 ns.
pub fn copy_ns(bytes: u64) -> u64 {
    1000 + bytes / 10
}

/// Outcome of submitting an op to a stream.
pub struct Submitted {
    pub status: i32,
    pub capturing: bool,
}

impl Gpu {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handle(st: &mut State, base: u64) -> u64 {
        let h = base + st.next_handle;
        st.next_handle += 1;
        h
    }

    fn stream_known(st: &State, s: u64) -> bool {
        builtin_stream(s) || st.streams.contains_key(&s)
    }

    fn enqueue(&self, st: &mut State, stream: u64, work: Work) -> u64 {
        st.enqueued += 1;
        let seq = st.enqueued;
        let tag = st.tag.clone();
        st.queue.push_back(Item {
            seq,
            stream,
            submit_ns: log::now_ns(),
            tag,
            work,
        });
        st.streams.entry(stream).or_default().last_seq = seq;
        if !st.worker {
            st.worker = true;
            if std::thread::Builder::new()
                .name("fake-gpu".into())
                .spawn(worker)
                .is_err()
            {
                st.worker = false;
            }
        }
        self.work_cv.notify_one();
        seq
    }

    fn wait_done(&self, mut st: MutexGuard<'_, State>, seq: u64) {
        while st.done < seq {
            st = self.done_cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn set_tag(&self, text: &str) {
        self.lock().tag = Arc::from(text);
    }

    pub fn is_capturing(&self, stream: u64) -> bool {
        self.lock()
            .streams
            .get(&stream)
            .is_some_and(|s| s.capture.is_some())
    }

    pub fn stream_create(&self) -> u64 {
        let mut st = self.lock();
        let h = Self::handle(&mut st, STREAM_BASE);
        st.streams.insert(h, StreamState::default());
        h
    }

    pub fn event_create(&self) -> u64 {
        let mut st = self.lock();
        let h = Self::handle(&mut st, EVENT_BASE);
        st.events.insert(h, 0);
        h
    }

    pub fn event_destroy(&self, ev: u64) -> i32 {
        if self.lock().events.remove(&ev).is_some() {
            SUCCESS
        } else {
            ERR_INVALID_HANDLE
        }
    }

    /// Kernel or copy: appended to the capture when the stream is capturing, else enqueued.
    pub fn submit(&self, stream: u64, op: Op) -> Submitted {
        let mut st = self.lock();
        if !Self::stream_known(&st, stream) {
            return Submitted {
                status: ERR_INVALID_HANDLE,
                capturing: false,
            };
        }
        if let Some(cap) = st.streams.get_mut(&stream).and_then(|s| s.capture.as_mut()) {
            cap.push(op);
            return Submitted {
                status: SUCCESS,
                capturing: true,
            };
        }
        self.enqueue(&mut st, stream, Work::Op(op));
        Submitted {
            status: SUCCESS,
            capturing: false,
        }
    }

    /// Synchronous copy (legacy stream): enqueue, then wait for the device to get past it.
    pub fn copy_sync(&self, bytes: u64) -> i32 {
        let mut st = self.lock();
        let seq = self.enqueue(&mut st, 0, Work::Op(Op::Copy { bytes }));
        self.wait_done(st, seq);
        SUCCESS
    }

    pub fn begin_capture(&self, stream: u64) -> i32 {
        let mut st = self.lock();
        if !Self::stream_known(&st, stream) {
            return ERR_INVALID_HANDLE;
        }
        let s = st.streams.entry(stream).or_default();
        if s.capture.is_some() {
            return ERR_CAPTURE_UNSUPPORTED;
        }
        s.capture = Some(Vec::new());
        SUCCESS
    }

    pub fn end_capture(&self, stream: u64) -> Result<u64, i32> {
        let mut st = self.lock();
        let ops = st
            .streams
            .get_mut(&stream)
            .and_then(|s| s.capture.take())
            .ok_or(ERR_INVALID_HANDLE)?;
        let h = Self::handle(&mut st, GRAPH_BASE);
        st.graphs.insert(h, Arc::new(ops));
        Ok(h)
    }

    pub fn instantiate(&self, graph: u64) -> Result<u64, i32> {
        let mut st = self.lock();
        let ops = st.graphs.get(&graph).cloned().ok_or(ERR_INVALID_HANDLE)?;
        let h = Self::handle(&mut st, EXEC_BASE);
        st.execs.insert(h, ops);
        Ok(h)
    }

    /// Returns (status, number of nodes, total duration in µs).
    pub fn graph_launch(&self, exec: u64, stream: u64) -> (i32, usize, u64) {
        let mut st = self.lock();
        let Some(ops) = st.execs.get(&exec).cloned() else {
            return (ERR_INVALID_HANDLE, 0, 0);
        };
        if !Self::stream_known(&st, stream) {
            return (ERR_INVALID_HANDLE, 0, 0);
        }
        let n = ops.len();
        let total: u64 = ops.iter().map(|o| o.dur_ns()).sum();
        if st.streams.get(&stream).is_some_and(|s| s.capture.is_some()) {
            return (ERR_CAPTURE_UNSUPPORTED, n, total / 1000);
        }
        self.enqueue(&mut st, stream, Work::Graph { exec, ops });
        (SUCCESS, n, total / 1000)
    }

    pub fn event_record(&self, ev: u64, stream: u64) -> Submitted {
        let mut st = self.lock();
        if !st.events.contains_key(&ev) || !Self::stream_known(&st, stream) {
            return Submitted {
                status: ERR_INVALID_HANDLE,
                capturing: false,
            };
        }
        if st.streams.get(&stream).is_some_and(|s| s.capture.is_some()) {
            // Recording inside a capture would become an event node: nothing to execute here.
            return Submitted {
                status: SUCCESS,
                capturing: true,
            };
        }
        let seq = self.enqueue(&mut st, stream, Work::Event { event: ev });
        st.events.insert(ev, seq);
        Submitted {
            status: SUCCESS,
            capturing: false,
        }
    }

    pub fn event_query(&self, ev: u64) -> i32 {
        let st = self.lock();
        match st.events.get(&ev) {
            None => ERR_INVALID_HANDLE,
            Some(&seq) if st.done >= seq => SUCCESS,
            Some(_) => ERR_NOT_READY,
        }
    }

    pub fn event_sync(&self, ev: u64) -> i32 {
        let st = self.lock();
        let Some(&seq) = st.events.get(&ev) else {
            return ERR_INVALID_HANDLE;
        };
        self.wait_done(st, seq);
        SUCCESS
    }

    pub fn stream_sync(&self, stream: u64) -> i32 {
        let st = self.lock();
        if !Self::stream_known(&st, stream) {
            return ERR_INVALID_HANDLE;
        }
        let s = st.streams.get(&stream);
        if s.is_some_and(|s| s.capture.is_some()) {
            return ERR_CAPTURE_UNSUPPORTED;
        }
        let seq = s.map_or(0, |s| s.last_seq);
        self.wait_done(st, seq);
        SUCCESS
    }

    pub fn ctx_sync(&self) -> i32 {
        let st = self.lock();
        let seq = st.enqueued;
        self.wait_done(st, seq);
        SUCCESS
    }

    pub fn mem_alloc(&self, bytes: u64) -> u64 {
        let mut st = self.lock();
        let p = st.next_mem;
        st.next_mem += bytes.max(1).div_ceil(256) * 256;
        st.allocs.insert(p);
        p
    }

    pub fn mem_free(&self, p: u64) -> i32 {
        if p == 0 || self.lock().allocs.remove(&p) {
            SUCCESS
        } else {
            ERR_INVALID_VALUE
        }
    }
}

/// Sleeps until an absolute CLOCK_MONOTONIC deadline (no busy spin).
fn sleep_until(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `ts` is a valid timespec; the remaining-time pointer may be null with
        // TIMER_ABSTIME.
        let r = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if r != libc::EINTR {
            break;
        }
    }
}

/// The worker: executes items in FIFO order. An item starts at max(its submission time, the
/// previous item's completion) and is due `duration` later; the worker sleeps until then and
/// marks it done. `exec` lines carry the time the completion became visible to waiters
/// (`end`, after any oversleep of this thread) and the nominal end (`due`): ground truth is
/// what a waiter could observe, as with a real GPU.
fn worker() {
    // SAFETY: PR_SET_TIMERSLACK only affects this thread's timer slack (1 ns instead of the
    // default 50 µs) so that short kernels are not stretched.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    let g = gpu();
    let mut prev_end = 0u64;
    loop {
        let item = {
            let mut st = g.lock();
            loop {
                if let Some(it) = st.queue.pop_front() {
                    break it;
                }
                st = g.work_cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        let start = item.submit_ns.max(prev_end);
        let dur = match &item.work {
            Work::Op(op) => op.dur_ns(),
            Work::Graph { ops, .. } => ops.iter().map(|o| o.dur_ns()).sum(),
            Work::Event { .. } => 0,
        };
        let due = start + dur;
        if due > log::now_ns() {
            sleep_until(due);
        }
        // Complete first (waiters wake sooner), log after.
        let mut st = g.lock();
        let end = log::now_ns().max(due);
        prev_end = end;
        st.done = item.seq;
        drop(st);
        g.done_cv.notify_all();
        if log::enabled() {
            let l = Line::new("exec");
            let l = match &item.work {
                Work::Op(Op::Kernel { .. }) => l.kv("kind", "kernel"),
                Work::Op(Op::Copy { .. }) => l.kv("kind", "copy"),
                Work::Graph { .. } => l.kv("kind", "graph"),
                Work::Event { .. } => l.kv("kind", "event"),
            };
            let l = l
                .hex("stream", item.stream)
                .kv("start", start)
                .kv("end", end)
                .kv("due", due)
                .kv("seq", item.seq)
                .text("tag", &item.tag)
                .kv("pid", log::pid());
            let l = match &item.work {
                Work::Op(Op::Kernel { dur_ns }) => l.kv("dur_us", dur_ns / 1000),
                Work::Op(Op::Copy { bytes }) => l.kv("bytes", bytes),
                Work::Graph { exec, ops } => l
                    .hex("exec", *exec)
                    .kv("nodes", ops.len())
                    .kv("dur_us", dur / 1000),
                Work::Event { event } => l.hex("event", *event),
            };
            l.emit();
        }
    }
}
