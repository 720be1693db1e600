//! The scheduler's calls, seen exactly: a hardware breakpoint on the first bytecode byte of
//! a handful of `Scheduler` methods (`probes::breakpoints`) reports each entry with the
//! entered frame and its callers. From them: every `schedule()` and `update_from_output()`
//! call (the latter with the step's `SchedulerOutput`, read by `batch`), every preemption
//! with its request and reason (`_preempt_request`, called from `schedule` when the KV
//! cache is exhausted or from `reset_prefix_cache`), every arrival (`add_request`). In any
//! process that runs the scheduler, CUDA or not.
//!
//! Owns: which methods are watched (one table per vLLM version range), finding their code
//! objects from the live scheduler object (its class's MRO: deterministic once the
//! scheduler is known), and turning a hit into a `SchedulerCall`. Does not own the perf
//! events (`probes::breakpoints`) or what the profilers make of the calls.

use std::collections::HashMap;

use serde::Serialize;

pub use crate::model::scheduler::{CallRole, SchedulerCall};

use super::state::StrCache;
use crate::{
    model::{PyStack, StackReason},
    probes::breakpoints::WatchedFunction,
    python::{
        code::read_code,
        objects::{ObjectError, Objects},
        remote::RemoteMemory,
        Interpreter,
    },
};

/// The watched methods of one vLLM version range.
#[derive(Debug)]
pub struct CallNames {
    /// vLLM versions the table was read from.
    pub versions: &'static str,
    /// Methods of the scheduler's class (`Class.method`, as defined in vLLM; looked up by
    /// method name on the live scheduler's class, which may be a subclass), in slot order (at
    /// most four: x86 has four debug registers per thread). Most valuable first: a thread
    /// short of registers keeps these.
    pub watched: &'static [(&'static str, CallRole)],
    /// Callers of the preemption method (qualname suffix) and the reason each means.
    pub preempt_callers: &'static [(&'static str, &'static str)],
    /// `type(request).__name__` (a request read late, at a reused address, is not one).
    pub request_type: &'static str,
    /// `Request.request_id`, `Request.arrival_time`.
    pub request_id: &'static str,
    /// See `request_id`.
    pub arrival_time: &'static str,
}

/// Why the functions could not be found.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The object read failed.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// None of the methods exists on the scheduler's class.
    #[error("none of {0} is a Python function on the scheduler's class (vLLM {1} names)")]
    NoneFound(String, &'static str),
}

/// The watched methods of `scheduler`'s class: each one's code object and the byte to
/// watch. Methods the class lacks (or that are not plain Python functions) are left out,
/// and named in the second list.
pub fn watched_functions(
    o: &Objects<'_>,
    mem: &dyn RemoteMemory,
    interp: &Interpreter,
    names: &CallNames,
    scheduler: u64,
) -> Result<(Vec<WatchedFunction>, Vec<&'static str>), CallError> {
    let ty = o.type_of(scheduler)?;
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for &(qualname, _) in names.watched {
        let method = method_of(qualname);
        let code = match o.class_attr(ty, method)? {
            Some(f) => o.function_code(f)?,
            None => None,
        };
        let Some(code) = code else {
            missing.push(method);
            continue;
        };
        let qualname = read_code(mem, &interp.layout, code, interp.code_type_addr)
            .map_or_else(|_| method.to_owned(), |c| c.qualname);
        found.push(WatchedFunction {
            qualname,
            code,
            address: code + interp.layout.code_adaptive,
        });
    }
    if found.is_empty() {
        let all: Vec<&str> = names.watched.iter().map(|(q, _)| *q).collect();
        return Err(CallError::NoneFound(all.join(", "), names.versions));
    }
    Ok((found, missing))
}

/// A process's methods to watch, for the session's main loop (which owns the probes).
#[derive(Debug, Clone)]
pub struct FunctionWatch {
    /// Process.
    pub pid: u32,
    /// The functions found.
    pub functions: Vec<WatchedFunction>,
    /// Methods the scheduler's class lacks in this vLLM.
    pub missing: Vec<&'static str>,
    /// How the functions were found.
    pub found_via: String,
}

/// `schedule` of `Scheduler.schedule`.
fn method_of(qualname: &str) -> &str {
    qualname.rsplit('.').next().unwrap_or(qualname)
}

/// Counts for metadata.json.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct CallStats {
    /// Breakpoint stacks seen.
    pub hits: u64,
    /// Second hits of the same call (its first instruction rewritten or fetched again).
    pub duplicate_hits: u64,
    /// Hits whose innermost frame was not a watched method (another reader of the bytes).
    pub outside_hits: u64,
    /// Calls by role.
    pub calls: HashMap<String, u64>,
    /// Requests whose id could not be read.
    pub unreadable_requests: u64,
}

/// Two `schedule()` hits of one thread closer than this, with no other watched call in
/// between, are one entry seen twice (its argument is the same at every call, and no
/// schedule() completes this fast).
const SCHEDULE_REPEAT_NS: u64 = 200_000;

/// Turns breakpoint stacks into calls.
#[derive(Default)]
pub struct CallReader {
    /// (pid, tid) -> (code, arg1, ts) of the last hit.
    last: HashMap<(u32, u32), (std::sync::Arc<crate::python::code::CodeInfo>, u64, u64)>,
    /// Counters.
    pub stats: CallStats,
}

impl CallReader {
    /// The call `st` reports, if it is a breakpoint stack of a watched method (not a repeat).
    pub fn read(
        &mut self,
        names: &CallNames,
        st: &PyStack,
        o: &Objects<'_>,
        strings: &mut StrCache,
    ) -> Option<SchedulerCall> {
        if !matches!(st.reason, StackReason::Breakpoint(_)) {
            return None;
        }
        self.stats.hits += 1;
        let entered = st.frames.first()?;
        let method = method_of(&entered.code.qualname);
        let Some(&(_, role)) = names.watched.iter().find(|(q, _)| method_of(q) == method) else {
            self.stats.outside_hits += 1;
            return None;
        };
        // One call can hit twice: the interpreter may rewrite the first instruction while it
        // runs it (CPython specializes a function's bytecode in place after a few calls, and
        // the breakpoint watches writes too) or fetch it twice. A hit of the same function
        // with the same argument as the thread's previous watched hit is that (a request is
        // preempted or added again only after a schedule() or an update in between).
        let key = (st.pid, st.tid);
        if let Some((code, arg1, ts)) = self.last.get(&key) {
            let same = std::sync::Arc::ptr_eq(code, &entered.code) && *arg1 == entered.arg1;
            let repeat = match role {
                CallRole::Schedule => st.ts_ns.saturating_sub(*ts) < SCHEDULE_REPEAT_NS,
                _ => true,
            };
            if same && repeat {
                self.stats.duplicate_hits += 1;
                return None;
            }
        }
        self.last.insert(
            key,
            (std::sync::Arc::clone(&entered.code), entered.arg1, st.ts_ns),
        );
        *self.stats.calls.entry(format!("{role:?}")).or_default() += 1;
        let mut call = SchedulerCall {
            pid: st.pid,
            tid: st.tid,
            ts_ns: st.ts_ns,
            role,
            request_id: None,
            reason: None,
            arrival_time: None,
        };
        if matches!(role, CallRole::Preempt | CallRole::AddRequest) {
            call.request_id = self.request_id(names, o, strings, entered.arg1);
        }
        match role {
            CallRole::Preempt => {
                let caller = st.frames.get(1).map_or("", |f| f.code.qualname.as_str());
                call.reason = names
                    .preempt_callers
                    .iter()
                    .find(|(suffix, _)| caller.ends_with(suffix))
                    .map(|(_, r)| *r);
            }
            CallRole::AddRequest if entered.arg1 != 0 => {
                call.arrival_time = o
                    .attr(entered.arg1, names.arrival_time)
                    .ok()
                    .flatten()
                    .and_then(|v| o.float(v).ok());
            }
            _ => {}
        }
        Some(call)
    }

    fn request_id(
        &mut self,
        names: &CallNames,
        o: &Objects<'_>,
        strings: &mut StrCache,
        request: u64,
    ) -> Option<String> {
        let is_request =
            request != 0 && o.type_name(request).is_ok_and(|t| t == names.request_type);
        let id = is_request
            .then(|| o.attr(request, names.request_id).ok().flatten())
            .flatten()
            .and_then(|s| strings.get(o, s).ok());
        if id.is_none() {
            self.stats.unreadable_requests += 1;
        }
        id
    }

    /// Forgets an exited process.
    pub fn remove_process(&mut self, pid: u32) {
        self.last.retain(|(p, _), _| *p != pid);
    }
}
