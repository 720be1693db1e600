//! Python context: walked stacks -> symbolized `PyStack`s classified by vLLM operation, and
//! `gc__start`/`gc__done` hits -> `GcPause`s.
//!
//! Symbolization reads code objects from the target (read-only, cached per process); the
//! cache is checked against the first line the kernel read with each frame, so a code
//! object freed and replaced at the same address is read again.
//!
//! Owns symbolization and GC pairing; not the operation rules (`vllm::bundle`) nor the
//! interpreter's discovery (`python`).

use std::{collections::HashMap, sync::Arc};

use profilemate_common::python::{stack_flags, usdt_probe};
use serde::Serialize;

use crate::model::records::{Correlated, GcPause, PyFrameInfo, PyStack};
use crate::{
    probes::drain::{StackEvent, StackReason, UsdtEvent},
    python::{
        code::{CodeCache, CodeError, CodeInfo},
        remote::ProcessMemory,
        Interpreter,
    },
    vllm::ops::{classify, OpRule, Operation},
};

/// Counts of the Python side, for metadata.json.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct PythonStats {
    /// Stacks walked at sampling ticks.
    pub sampled_stacks: u64,
    /// Stacks walked at CUDA calls.
    pub cuda_call_stacks: u64,
    /// Stacks walked at a watched Python function's entry (hardware breakpoint hits).
    pub breakpoint_stacks: u64,
    /// Stacks cut at the walker's depth limit.
    pub truncated_stacks: u64,
    /// Ticks of threads without a Python thread state (native threads).
    pub no_thread_state: u64,
    /// Walks that stopped on an unreadable frame.
    pub read_failed_stacks: u64,
    /// Stacks from processes whose interpreter is not walked.
    pub no_python: u64,
    /// Frames symbolized.
    pub frames: u64,
    /// Frames whose code object could not be read while the process ran (shown as
    /// `<unknown>`).
    pub unresolved_frames: u64,
    /// Frames sampled in a process's last moments and read after it exited, when its memory
    /// was gone (shown as `<unknown>`; a lag of the reader, not a misread).
    pub frames_after_exit: u64,
    /// Walks that left the frame chain: a frame whose code pointer is not a readable code
    /// object in a live process (the walk raced a frame push or pop and followed a stale
    /// link). The stack is cut there.
    pub torn_walks: u64,
    /// Frames dropped past such a link (garbage, not the target's frames).
    pub frames_past_torn_link: u64,
    /// Code objects read from the target.
    pub code_objects_read: u64,
    /// Cached code objects replaced because their address was reused.
    pub code_objects_reused: u64,
    /// GC pauses.
    pub gc_pauses: u64,
    /// `gc__done` without a `gc__start` on that thread (collection began before attach).
    pub gc_unpaired: u64,
    /// USDT hits of probes this build does not know.
    pub usdt_unknown: u64,
    /// USDT hits with an unreadable argument.
    pub usdt_bad_args: u64,
}

struct ProcPython {
    interp: Interpreter,
    mem: ProcessMemory,
    codes: CodeCache,
}

/// The Python stage of the correlator.
pub struct PythonContext {
    table: &'static [OpRule],
    procs: HashMap<u32, ProcPython>,
    gc_open: HashMap<(u32, u32), (u64, i64)>,
    unknown: Arc<CodeInfo>,
    /// Counters.
    pub stats: PythonStats,
}

impl PythonContext {
    /// A context classifying stacks with `table`.
    #[must_use]
    pub fn new(table: &'static [OpRule]) -> Self {
        Self {
            table,
            procs: HashMap::new(),
            gc_open: HashMap::new(),
            unknown: Arc::new(CodeInfo::new("<unknown>", "<unknown>", 0, Vec::new())),
            stats: PythonStats::default(),
        }
    }

    /// Registers a process's interpreter (stacks of unknown processes stay unsymbolized).
    /// Whether `pid`'s interpreter is known (its stacks can be symbolized).
    #[must_use]
    pub fn knows(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    pub fn add_interpreter(&mut self, interp: Interpreter) {
        let pid = interp.pid;
        self.procs.insert(
            pid,
            ProcPython {
                mem: ProcessMemory::new(pid),
                interp,
                codes: CodeCache::default(),
            },
        );
    }

    /// Forgets an exited process (its pid may be reused).
    pub fn remove_process(&mut self, pid: u32) {
        if let Some(p) = self.procs.remove(&pid) {
            self.stats.code_objects_read += p.codes.reads;
            self.stats.code_objects_reused += p.codes.reused;
        }
    }

    /// Symbolizes and classifies one walked stack.
    pub fn stack(&mut self, ev: StackEvent, out: &mut impl FnMut(Correlated)) {
        match ev.reason {
            StackReason::Sample => self.stats.sampled_stacks += 1,
            StackReason::CudaCall(_) => self.stats.cuda_call_stacks += 1,
            StackReason::Breakpoint(_) => self.stats.breakpoint_stacks += 1,
        }
        // A breakpoint walk stops after a few frames on purpose.
        let short_walk = matches!(ev.reason, StackReason::Breakpoint(_));
        if ev.flags & stack_flags::TRUNCATED != 0 && !short_walk {
            self.stats.truncated_stacks += 1;
        }
        if ev.flags & stack_flags::NO_THREAD_STATE != 0 {
            self.stats.no_thread_state += 1;
        }
        if ev.flags & stack_flags::READ_FAILED != 0 {
            self.stats.read_failed_stacks += 1;
        }
        if ev.flags & stack_flags::NO_PYTHON != 0 {
            self.stats.no_python += 1;
        }
        let mut frames = Vec::with_capacity(ev.frames.len());
        if let Some(p) = self.procs.get_mut(&ev.pid) {
            // Code 0: a shim frame the walker saw but did not follow into.
            let walked = || ev.frames.iter().filter(|f| f.code != 0);
            for (i, f) in walked().enumerate() {
                self.stats.frames += 1;
                match p.codes.get(
                    &p.mem,
                    &p.interp.layout,
                    p.interp.code_type_addr,
                    f.code,
                    f.first_line,
                ) {
                    Ok(code) => {
                        let line = code.line(f.instr_offset);
                        frames.push(PyFrameInfo {
                            code,
                            line,
                            arg1: f.arg1,
                        });
                    }
                    // A live process's code objects are readable code objects: anything else
                    // is a stale link the walk followed.
                    Err(e @ (CodeError::NotCode(_) | CodeError::Read(_))) if !e.process_gone() => {
                        self.stats.torn_walks += 1;
                        self.stats.frames_past_torn_link += walked().skip(i).count() as u64;
                        break;
                    }
                    Err(e) => {
                        if e.process_gone() {
                            self.stats.frames_after_exit += 1;
                        } else {
                            self.stats.unresolved_frames += 1;
                        }
                        frames.push(PyFrameInfo {
                            code: Arc::clone(&self.unknown),
                            line: 0,
                            arg1: f.arg1,
                        });
                    }
                }
            }
        } else {
            // Forgotten after its exit (stacks of a process never walked say NO_PYTHON).
            self.stats.frames_after_exit += ev.frames.iter().filter(|f| f.code != 0).count() as u64;
        }
        let (op, op_frame) =
            if ev.flags & (stack_flags::NO_THREAD_STATE | stack_flags::NO_PYTHON) != 0 {
                (Operation::Native, None)
            } else {
                classify(self.table, &frames)
            };
        out(Correlated::PyStack(Box::new(PyStack {
            pid: ev.pid,
            tid: ev.tid,
            ts_ns: ev.ts_ns,
            reason: ev.reason,
            flags: ev.flags,
            frames,
            op,
            op_frame,
        })));
    }

    /// Pairs GC probe hits per thread into pauses.
    pub fn usdt(&mut self, ev: UsdtEvent, out: &mut impl FnMut(Correlated)) {
        if ev.failed_args != 0 {
            self.stats.usdt_bad_args += 1;
        }
        let key = (ev.pid, ev.tid);
        match ev.probe {
            usdt_probe::GC_START => {
                self.gc_open.insert(key, (ev.ts_ns, ev.args[0] as i64));
            }
            usdt_probe::GC_DONE => match self.gc_open.remove(&key) {
                Some((start_ns, generation)) => {
                    self.stats.gc_pauses += 1;
                    out(Correlated::GcPause(GcPause {
                        pid: ev.pid,
                        tid: ev.tid,
                        start_ns,
                        end_ns: ev.ts_ns,
                        generation,
                        collected: ev.args[0] as i64,
                    }));
                }
                None => self.stats.gc_unpaired += 1,
            },
            _ => self.stats.usdt_unknown += 1,
        }
    }

    /// Final counters (code cache figures of live processes included).
    #[must_use]
    pub fn final_stats(&self) -> PythonStats {
        let mut s = self.stats.clone();
        for p in self.procs.values() {
            s.code_objects_read += p.codes.reads;
            s.code_objects_reused += p.codes.reused;
        }
        s
    }
}

/// Replays recorded event streams through the context; no process, no root.
#[cfg(test)]
mod tests {
    use profilemate_common::python::PyFrame;

    use super::*;

    fn usdt(ts_ns: u64, tid: u32, probe: u16, arg: u64) -> UsdtEvent {
        UsdtEvent {
            ts_ns,
            pid: 7,
            tid,
            probe,
            args: [arg, 0, 0],
            failed_args: 0,
        }
    }

    fn replay(ctx: &mut PythonContext, events: Vec<UsdtEvent>) -> Vec<GcPause> {
        let mut pauses = Vec::new();
        for ev in events {
            ctx.usdt(ev, &mut |c| {
                if let Correlated::GcPause(g) = c {
                    pauses.push(g);
                }
            });
        }
        pauses
    }

    #[test]
    fn gc_start_and_done_pair_per_thread_and_strays_are_counted() {
        let mut ctx = PythonContext::new(crate::vllm::v0_33::OPS);
        let pauses = replay(
            &mut ctx,
            vec![
                usdt(100, 1, usdt_probe::GC_START, 2),
                // Another thread's collection interleaves.
                usdt(110, 2, usdt_probe::GC_START, 0),
                usdt(150, 2, usdt_probe::GC_DONE, 5),
                usdt(300, 1, usdt_probe::GC_DONE, 40),
                // A done without its start (the collection began before attach).
                usdt(400, 3, usdt_probe::GC_DONE, 1),
                usdt(500, 1, 999, 0),
            ],
        );
        let got: Vec<(u32, u64, u64, i64, i64)> = pauses
            .iter()
            .map(|g| (g.tid, g.start_ns, g.end_ns, g.generation, g.collected))
            .collect();
        assert_eq!(got, [(2, 110, 150, 0, 5), (1, 100, 300, 2, 40)]);
        let s = ctx.final_stats();
        assert_eq!((s.gc_pauses, s.gc_unpaired, s.usdt_unknown), (2, 1, 1));
    }

    #[test]
    fn stacks_of_a_process_without_interpreter_are_native_and_counted() {
        let mut ctx = PythonContext::new(crate::vllm::v0_33::OPS);
        let frame = PyFrame {
            code: 0x1000,
            instr_offset: 0,
            first_line: 1,
            arg1: 0,
        };
        let mut stacks = Vec::new();
        for (flags, reason) in [
            (stack_flags::NO_PYTHON, StackReason::Sample),
            (
                0,
                StackReason::CudaCall(profilemate_common::ApiId::cudaGraphLaunch),
            ),
        ] {
            let ev = StackEvent {
                ts_ns: 5,
                pid: 9,
                tid: 9,
                reason,
                flags,
                walk_ns: 0,
                frames: vec![frame, frame],
            };
            ctx.stack(ev, &mut |c| {
                if let Correlated::PyStack(st) = c {
                    stacks.push(st);
                }
            });
        }
        // Nothing symbolized: no frames, and no vLLM operation.
        assert!(stacks.iter().all(|st| st.frames.is_empty()));
        assert!(stacks.iter().all(|st| st.op == Operation::Native));
        let s = ctx.final_stats();
        assert_eq!(
            (s.sampled_stacks, s.cuda_call_stacks, s.no_python),
            (1, 1, 1)
        );
        assert_eq!(s.frames_after_exit, 4);
    }
}
