//! vLLM's request table (`Scheduler.requests`) read incrementally: each poll reports the
//! requests first seen or changed since the previous one and the requests gone, at a cost
//! bounded per poll whatever the length of the waiting queue.
//!
//! Owns which requests a poll reads and how; not the scheduler's queues and KV cache
//! (`state`), nor what the lifecycle of a request means (`profilers::preemptions`).
//!
//! Why this is sound: a request's fields change only while the scheduler works on it, i.e.
//! while it is in `running` (scheduled, preempted, finished), and its attribute values are
//! immutable objects (ints, a float, a str, enum members) or a list whose length is what
//! changes: an unchanged pointer in the request's values (or dict entries) is an unchanged
//! value. So a poll re-reads, in one batched read, the requests in `running` now or at the
//! previous poll, the front of `waiting` (vLLM prepends what it preempted or popped and
//! skipped: a request that ran entirely between two polls waits there), and a bounded
//! round-robin share of the others; decodes only the values whose pointers moved; and reads
//! new requests in full, a bounded number per poll (the rest next time, counted). What
//! changes deeper in the queue (a status while waiting; any request of a priority queue,
//! a heap without a front) is seen at its round-robin turn.

use foldhash::{HashMap, HashSet, HashSetExt};

pub use crate::model::scheduler::{RequestPoll, RequestState};

use super::state::{StateError, StateNames, StrCache};
use crate::python::objects::{AttrSlots, DictEntries, ObjectError, Objects};

/// Requests held at most (the table's entries are read in one piece).
pub const MAX_REQUESTS: usize = 16_384;
/// Requests at the front of `waiting` re-read every poll: where vLLM puts back what it
/// preempted (`prepend_request`) or popped and skipped, so where a request that ran
/// between two polls waits.
pub const FRONT: usize = 64;
/// Other requests re-read per poll, in turn: each is re-read at least every
/// `held / REREAD_PER_POLL` polls (a status that changes while waiting, a priority queue).
pub const REREAD_PER_POLL: usize = 96;
/// New requests read in full per poll (~40 µs each); more wait for the next poll.
pub const NEW_PER_POLL: usize = 256;

/// The `Request` fields read, in `Fields` order.
const FIELDS: usize = 7;
const ID: usize = 0;
const STATUS: usize = 1;
const PREEMPTIONS: usize = 2;
const COMPUTED: usize = 3;
const PROMPT: usize = 4;
const OUTPUT: usize = 5;
const ARRIVAL: usize = 6;

/// A request read before, and where to read it again.
struct Known {
    /// The dict's key (the request's id str, also its `request_id`).
    key: u64,
    /// The key's hash: another str at the same address after a free has another hash.
    key_hash: u64,
    /// (keys object, position) of its entry in the table: one insertion.
    entry: (u64, usize),
    /// Where its fields live (None: read by name every time).
    slots: Option<AttrSlots>,
    /// The field objects last read.
    fields: [u64; FIELDS],
    state: RequestState,
    /// The last read failed: read it in full at the next poll (kept, so that its leaving
    /// the table is still seen).
    retry: bool,
    /// The last poll whose table held it.
    seen: u64,
}

/// Incremental reader of one scheduler's requests.
#[derive(Default)]
pub struct RequestTracker {
    known: HashMap<u64, Known>,
    /// Requests in `running` at the previous poll.
    was_running: Vec<u64>,
    /// Where the round-robin re-reads continue (an index into the table's entries).
    cursor: usize,
    /// The table's keys object at the previous poll.
    keys: u64,
    /// Polls so far.
    polls: u64,
    strings: StrCache,
}

impl RequestTracker {
    /// Reads what changed in `scheduler`'s requests since the previous call (pid and time
    /// left 0).
    pub fn poll(
        &mut self,
        o: &Objects<'_>,
        names: &StateNames,
        scheduler: u64,
    ) -> Result<RequestPoll, StateError> {
        let [dict, running, waiting] =
            o.attrs(scheduler, [names.requests, names.running, names.waiting])?;
        let dict = dict.ok_or(StateError::MissingName(names.requests, "scheduler"))?;
        let running = running.ok_or(StateError::MissingName(names.running, "scheduler"))?;
        let table = o.dict_entries(dict, MAX_REQUESTS)?;
        let held = o.len(dict)?;
        // Where a request changed since the previous poll: in `running` now or then, or at
        // the front of `waiting` (a priority queue, a heap, has no front: its requests wait
        // for their turn).
        let running = o.list_items(running, MAX_REQUESTS)?;
        let front = waiting
            .and_then(|w| o.deque_front(w, FRONT).ok())
            .unwrap_or_default();
        let mut touched = HashSet::with_capacity(running.len() * 2 + front.len());
        touched.extend(running.iter().chain(&front).chain(&self.was_running));
        let mut poll = RequestPoll {
            pid: 0,
            ts_ns: 0,
            changed: Vec::new(),
            gone: Vec::new(),
            held,
            read: 0,
            read_in_full: 0,
            deferred: 0,
            unreadable: 0,
        };
        if table.keys != self.keys {
            self.resized(o, &table);
            self.keys = table.keys;
        }
        self.polls += 1;
        let (again, new) = self.plan(&table, &touched, &mut poll.gone);
        self.reread(o, names, &again, &mut poll)?;
        for &(entry, key, req) in new.iter().take(NEW_PER_POLL) {
            self.read_new(o, names, (table.keys, entry), key, req, &mut poll)?;
        }
        poll.deferred = new.len().saturating_sub(NEW_PER_POLL) as u64;
        // A dict resized while it was read yields fewer entries than it holds.
        if table.entries.len() as u64 >= held.min(MAX_REQUESTS as u64) {
            let now = self.polls;
            self.known.retain(|_, k| {
                if k.seen != now {
                    poll.gone.push(std::mem::take(&mut k.state.id));
                }
                k.seen == now
            });
        }
        self.was_running = running;
        Ok(poll)
    }

    /// After the table was resized (a new keys object, entries compacted): the known
    /// requests still under their key are the same insertion if the key's hash is the one
    /// remembered (one batched read of the hashes); their positions are updated.
    fn resized(&mut self, o: &Objects<'_>, table: &DictEntries) {
        let moved: Vec<(usize, u64)> = table
            .entries
            .iter()
            .filter(|(_, key, req)| self.known.get(req).is_some_and(|k| k.key == *key))
            .map(|&(i, _, req)| (i, req))
            .collect();
        let ranges: Vec<(u64, usize)> = moved
            .iter()
            .filter_map(|(_, req)| self.known.get(req))
            .map(|k| (k.key.wrapping_add(STR_HASH), 8))
            .collect();
        let mut buf = vec![0u8; ranges.len() * 8];
        let ok = o.memory().read_many(&ranges, &mut buf);
        for (n, (i, req)) in moved.into_iter().enumerate() {
            let hash = buf[n * 8..n * 8 + 8]
                .try_into()
                .map_or(0, u64::from_le_bytes);
            if let Some(k) = self.known.get_mut(&req) {
                if ok[n] && hash == k.key_hash {
                    k.entry = (table.keys, i);
                }
            }
        }
    }

    /// Which known requests to read again (those in `running` now or before and at the front
    /// of `waiting`, then the next ones in turn) and which entries are new: (position, key,
    /// request). A known request's addresses under another insertion (both freed and reused)
    /// are a new request, and the one remembered there is gone.
    fn plan(
        &mut self,
        table: &DictEntries,
        touched: &HashSet<u64>,
        gone: &mut Vec<String>,
    ) -> (Vec<u64>, Vec<(usize, u64, u64)>) {
        let mut again = Vec::new();
        let mut rest = Vec::new();
        let mut new = Vec::new();
        for &(i, key, req) in &table.entries {
            match self.known.get_mut(&req) {
                Some(k) if k.key == key && k.entry == (table.keys, i) => {
                    k.seen = self.polls;
                    if k.retry || touched.contains(&req) {
                        again.push(req);
                    } else {
                        rest.push(req);
                    }
                }
                Some(_) => {
                    if let Some(k) = self.known.remove(&req) {
                        gone.push(k.state.id);
                    }
                    new.push((i, key, req));
                }
                None => new.push((i, key, req)),
            }
        }
        if !rest.is_empty() {
            let start = self.cursor % rest.len();
            let take = REREAD_PER_POLL.min(rest.len());
            again.extend(rest.iter().cycle().skip(start).take(take));
            self.cursor = start + take;
        }
        (again, new)
    }

    /// Reads the known requests `reqs` again: one batch of their heads, dict keys pointers,
    /// values, key hashes and output list lengths; a request whose head, keys or key moved
    /// is read in full.
    fn reread(
        &mut self,
        o: &Objects<'_>,
        names: &StateNames,
        reqs: &[u64],
        poll: &mut RequestPoll,
    ) -> Result<(), StateError> {
        let reqs: Vec<u64> = reqs
            .iter()
            .copied()
            .filter(|r| self.known.contains_key(r))
            .collect();
        let mut ranges = Vec::with_capacity(reqs.len() * PARTS);
        for req in &reqs {
            let Some(k) = self.known.get(req) else {
                continue;
            };
            let (dict, array, bytes) = k.slots.as_ref().map_or((0, 0, 0), |s| {
                let dict = s.dict.map_or(0, |(d, _)| d + AttrSlots::DICT_KEYS);
                (dict, s.array, s.array_bytes())
            });
            ranges.push((
                req.wrapping_sub(AttrSlots::HEAD_BEFORE),
                AttrSlots::HEAD_LEN,
            ));
            ranges.push((dict, if dict == 0 { 0 } else { 8 }));
            ranges.push((array, bytes));
            ranges.push((k.key.wrapping_add(STR_HASH), 8));
            ranges.push((k.fields[OUTPUT].wrapping_add(OB_SIZE), 8));
        }
        let total = ranges.iter().map(|r| r.1).sum();
        let mut buf = vec![0u8; total];
        let ok = o.memory().read_many(&ranges, &mut buf);
        let mut at = 0;
        for (i, &req) in reqs.iter().enumerate() {
            let mut parts: [&[u8]; PARTS] = [&[]; PARTS];
            for (part, r) in parts.iter_mut().zip(&ranges[i * PARTS..(i + 1) * PARTS]) {
                *part = &buf[at..at + r.1];
                at += r.1;
            }
            let read_whole = ok[i * PARTS..(i + 1) * PARTS].iter().all(|&b| b);
            if read_whole && self.update(o, names, req, &parts, &mut poll.changed)? {
                poll.read += 1;
            } else {
                let (entry, key) = self
                    .known
                    .get(&req)
                    .map_or((ENTRY_NONE, 0), |k| (k.entry, k.key));
                self.read_new(o, names, entry, key, req, poll)?;
            }
        }
        Ok(())
    }

    /// Applies a batched read of a known request; false when it must be read in full (its
    /// head, dict keys, key or field locations changed, or it has no slots).
    fn update(
        &mut self,
        o: &Objects<'_>,
        names: &StateNames,
        req: u64,
        parts: &[&[u8]; PARTS],
        changed: &mut Vec<RequestState>,
    ) -> Result<bool, StateError> {
        let Some(k) = self.known.get_mut(&req) else {
            return Ok(false);
        };
        let Some(slots) = k.slots.as_ref().filter(|_| !k.retry) else {
            return Ok(false);
        };
        let word = |b: &[u8]| b.try_into().map_or(0, u64::from_le_bytes);
        let keys_moved = slots.dict.is_some_and(|(_, keys)| word(parts[1]) != keys);
        if AttrSlots::words(parts[0]) != slots.words || keys_moved || word(parts[3]) != k.key_hash {
            return Ok(false);
        }
        let mut fields = [0; FIELDS];
        for (n, f) in fields.iter_mut().enumerate() {
            *f = slots.value(parts[2], n);
        }
        let lost = slots
            .index
            .iter()
            .zip(&fields)
            .any(|(i, &f)| i.is_some() && f == 0);
        if fields[ID] != k.key || lost {
            return Ok(false);
        }
        let before = k.state.clone();
        let statuses = Statuses(names.request.statuses);
        for i in (0..FIELDS).filter(|&i| fields[i] != k.fields[i]) {
            match decode(o, &statuses, &mut self.strings, i, fields[i], &mut k.state) {
                Ok(()) => {}
                Err(e @ StateError::MissingName(..)) => return Err(e),
                Err(_) => return Ok(false),
            }
        }
        if fields[OUTPUT] == k.fields[OUTPUT] {
            k.state.num_output_tokens = word(parts[4]);
        }
        k.fields = fields;
        if k.state != before {
            changed.push(k.state.clone());
        }
        Ok(true)
    }

    /// Reads a request in full by name and remembers where its fields live.
    fn read_new(
        &mut self,
        o: &Objects<'_>,
        names: &StateNames,
        entry: (u64, usize),
        key: u64,
        req: u64,
        poll: &mut RequestPoll,
    ) -> Result<(), StateError> {
        match read_request(o, names, &mut self.strings, req) {
            Ok((fields, state)) => {
                poll.read += 1;
                poll.read_in_full += 1;
                let slots = o.attr_slots(req, &field_names(names)).ok().flatten();
                let key_hash = o.str_hash(key).unwrap_or(0);
                poll.changed.push(state.clone());
                let known = Known {
                    key,
                    key_hash,
                    entry,
                    slots,
                    fields,
                    state,
                    retry: false,
                    seen: self.polls,
                };
                self.known.insert(req, known);
            }
            // A renamed field is a version problem, not a torn read: report it.
            Err(e @ StateError::MissingName(..)) => return Err(e),
            Err(_) => {
                if let Some(k) = self.known.get_mut(&req) {
                    k.retry = true;
                }
                poll.unreadable += 1;
            }
        }
        Ok(())
    }
}

/// No entry (a request whose position is not known).
const ENTRY_NONE: (u64, usize) = (0, usize::MAX);

/// Ranges read per request in a batch: head, dict keys pointer, values, key hash, output
/// list length.
const PARTS: usize = 5;

/// `str.hash` and a list's `ob_size` offsets (CPython 3.11-3.14).
const STR_HASH: u64 = 24;
const OB_SIZE: u64 = 16;

fn field_names(names: &StateNames) -> [&'static str; FIELDS] {
    let n = &names.request;
    [
        n.request_id,
        n.status,
        n.num_preemptions,
        n.num_computed_tokens,
        n.num_prompt_tokens,
        n.output_token_ids,
        n.arrival_time,
    ]
}

/// A request's field objects and values, read by name.
fn read_request(
    o: &Objects<'_>,
    names: &StateNames,
    strings: &mut StrCache,
    req: u64,
) -> Result<([u64; FIELDS], RequestState), StateError> {
    let all = field_names(names);
    let found = o.attrs(req, all)?;
    let mut fields = [0; FIELDS];
    for (i, (f, v)) in fields.iter_mut().zip(found).enumerate() {
        // arrival_time is optional (older or newer vLLMs may lack it).
        *f = match v {
            Some(v) => v,
            None if i == ARRIVAL => 0,
            None => return Err(StateError::MissingName(all[i], "request")),
        };
    }
    let mut state = RequestState {
        id: String::new(),
        status: String::new(),
        num_preemptions: 0,
        num_computed_tokens: 0,
        num_prompt_tokens: 0,
        num_output_tokens: 0,
        arrival_time: None,
    };
    let statuses = Statuses(names.request.statuses);
    for (i, &f) in fields.iter().enumerate().filter(|(_, &f)| f != 0) {
        decode(o, &statuses, strings, i, f, &mut state)?;
    }
    Ok((fields, state))
}

/// Sets field `i` of `state` from the object at `obj`.
fn decode(
    o: &Objects<'_>,
    statuses: &Statuses,
    strings: &mut StrCache,
    i: usize,
    obj: u64,
    state: &mut RequestState,
) -> Result<(), StateError> {
    let count =
        |obj: u64| -> Result<u64, ObjectError> { Ok(u64::try_from(o.int(obj)?).unwrap_or(0)) };
    match i {
        ID => state.id = strings.get(o, obj)?,
        STATUS => state.status = statuses.name(o.int(obj)?),
        PREEMPTIONS => state.num_preemptions = count(obj)?,
        COMPUTED => state.num_computed_tokens = count(obj)?,
        PROMPT => state.num_prompt_tokens = count(obj)?,
        OUTPUT => state.num_output_tokens = o.len(obj)?,
        _ => state.arrival_time = o.float(obj).ok(),
    }
    Ok(())
}

/// `RequestStatus` values and names of one vLLM range.
pub struct Statuses(pub &'static [(i64, &'static str)]);

impl Statuses {
    /// The member name of `value` (`STATUS_<value>` for one the table lacks).
    #[must_use]
    pub fn name(&self, value: i64) -> String {
        self.0
            .iter()
            .find(|(v, _)| *v == value)
            .map_or_else(|| format!("STATUS_{value}"), |(_, name)| (*name).to_owned())
    }
}

#[cfg(test)]
mod tests {
    //! Against live CPython processes (3.11 and the pyenv versions present): a scheduler-shaped
    //! object whose requests the script moves through waiting, running, preempted and
    //! finished, printing the truth after every change.
    use std::{
        collections::HashMap,
        io::{BufRead, BufReader, Write},
        process::{Child, ChildStdin, Command, Stdio},
    };

    use super::*;
    use crate::{
        python::{self, objects::object_layout, remote::ProcessMemory},
        vllm::v0_33::STATE as VLLM_0_33,
    };

    const SCRIPT: &str = r#"
import collections, enum, json, sys
WIDE = sys.argv[2] == "wide"
class RequestStatus(enum.IntEnum):
    WAITING = 1
    WAITING_FOR_REMOTE_KVS = 3
    RUNNING = 5
    PREEMPTED = 6
class Request:
    def __init__(self, i):
        self.request_id = f"req-{i}"
        self.status = RequestStatus.WAITING
        self.num_preemptions = 0
        self.num_computed_tokens = 0
        self.num_prompt_tokens = 100 + i % 50
        self._output_token_ids = []
        self.arrival_time = 1000.0 + i
        if WIDE:
            # More attributes than the class's shared keys take (a real vLLM Request has
            # ~60): the instance gets its own combined dict.
            for n in range(60):
                setattr(self, f"extra_{n}", n)
class Queue(collections.deque):
    pass
class Scheduler:
    def __init__(self):
        self.requests = {}
        self.running = []
        self.waiting = Queue()
s = Scheduler()
nxt = 0
def add(n):
    global nxt
    for _ in range(n):
        r = Request(nxt); nxt += 1
        s.requests[r.request_id] = r
        s.waiting.append(r)
add(int(sys.argv[1]))
def step(k):
    # Like vLLM: the front of waiting runs, the newest running is preempted every third step
    # and put back at the front, the longest-running finish, a few arrive at the back.
    for _ in range(min(4, len(s.waiting))):
        r = s.waiting.popleft()
        r.status = RequestStatus.RUNNING
        s.running.append(r)
    for r in s.running:
        r.num_computed_tokens += 7
        r._output_token_ids.append(k)
    if k % 3 == 0 and s.running:
        r = s.running.pop()
        r.status = RequestStatus.PREEMPTED
        r.num_preemptions += 1
        r.num_computed_tokens = 0
        s.waiting.appendleft(r)
    while len(s.running) > 12:
        r = s.running.pop(0)
        del s.requests[r.request_id]
    add(3)
    if k == 5:
        # A request deep in the queue that changes without running.
        s.waiting[-10].status = RequestStatus.WAITING_FOR_REMOTE_KVS
def truth():
    return {r.request_id: [r.status.name, r.num_preemptions, r.num_computed_tokens,
                           r.num_prompt_tokens, len(r._output_token_ids)]
            for r in s.requests.values()}
print(json.dumps({"root": id(s)}), flush=True)
k = 0
for line in sys.stdin:
    if line.strip() == "step":
        k += 1
        step(k)
    print(json.dumps(truth()), flush=True)
"#;

    struct Target {
        child: Child,
        stdin: ChildStdin,
        lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    }

    impl Target {
        fn ask(&mut self, what: &str) -> HashMap<String, Vec<serde_json::Value>> {
            writeln!(self.stdin, "{what}").expect("write");
            let line = self.lines.next().expect("line").expect("read");
            serde_json::from_str(&line).expect("truth json")
        }
    }

    impl Drop for Target {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn view(state: &RequestState) -> Vec<serde_json::Value> {
        serde_json::json!([
            state.status,
            state.num_preemptions,
            state.num_computed_tokens,
            state.num_prompt_tokens,
            state.num_output_tokens
        ])
        .as_array()
        .cloned()
        .unwrap_or_default()
    }

    #[test]
    fn incremental_polls_keep_the_exact_request_table_at_a_bounded_cost() {
        let pythons = crate::python::objects::tests_support::interpreters();
        if pythons.is_empty() {
            eprintln!("SKIP: no CPython 3.11-3.13 installed");
            return;
        }
        for py in pythons {
            check(&py, 3000, "narrow");
            check(&py, 3000, "wide");
        }
    }

    fn check(py: &std::path::Path, backlog: usize, shape: &str) {
        let mut child = Command::new(py)
            .args(["-c", SCRIPT, &backlog.to_string(), shape])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first: serde_json::Value =
            serde_json::from_str(&lines.next().expect("line").expect("read")).expect("json");
        let root = first["root"].as_u64().expect("root");
        let mut target = Target {
            child,
            stdin,
            lines,
        };
        let interp = python::find(target.child.id()).expect("interpreter");
        let ol = object_layout(interp.layout.version).expect("object layout");
        let mem = ProcessMemory::new(target.child.id());
        let cache = crate::python::objects::AttrCache::default();
        let o = Objects::new(&mem, &interp.layout, ol).with_cache(&cache);
        let mut tracker = RequestTracker::default();
        let mut seen: HashMap<String, RequestState> = HashMap::new();
        let apply = |p: &RequestPoll, seen: &mut HashMap<String, RequestState>| {
            for r in &p.changed {
                seen.insert(r.id.clone(), r.clone());
            }
            for id in &p.gone {
                assert!(seen.remove(id).is_some(), "{id} gone but never seen");
            }
        };
        // Learning the backlog takes held / NEW_PER_POLL polls; each is bounded.
        let mut polls = 0;
        loop {
            let p = tracker.poll(&o, &VLLM_0_33, root).expect("poll");
            assert!(
                p.read as usize <= NEW_PER_POLL + FRONT + REREAD_PER_POLL,
                "{} read",
                p.read
            );
            apply(&p, &mut seen);
            polls += 1;
            if p.deferred == 0 {
                break;
            }
        }
        assert_eq!(polls, backlog.div_ceil(NEW_PER_POLL));
        let truth = target.ask("truth");
        assert_eq!(seen.len(), truth.len());
        // Every request is re-read by the batch, not by name.
        let batched = tracker.known.values().filter(|k| k.slots.is_some()).count();
        assert_eq!(
            batched,
            seen.len(),
            "{} {shape}: requests without slots",
            py.display()
        );
        let slow_turn = backlog.div_ceil(REREAD_PER_POLL) + 1;
        for k in 1..=(5 + slow_turn) {
            let truth = target.ask("step");
            let p = tracker.poll(&o, &VLLM_0_33, root).expect("poll");
            // Running now and before (at most 16 + 16), the front, the turn's share, the
            // arrivals; only the arrivals (3 a step) and the one request whose status changed
            // deep in the queue are read in full, the rest by the batch.
            assert!(
                p.read as usize <= 32 + FRONT + REREAD_PER_POLL + 3,
                "{} read",
                p.read
            );
            assert!(
                p.read_in_full <= 3 + 1,
                "{}: {} read in full",
                py.display(),
                p.read_in_full
            );
            apply(&p, &mut seen);
            assert_eq!(seen.len(), truth.len(), "{}: step {k}", py.display());
            for (id, want) in &truth {
                let got = view(seen.get(id).unwrap_or_else(|| panic!("{id} not seen")));
                if want[0] == "WAITING_FOR_REMOTE_KVS" && got != *want {
                    // Changed without running: seen at its round-robin turn.
                    assert!(k < 5 + slow_turn, "{id} still {got:?} at step {k}");
                    continue;
                }
                assert_eq!(&got, want, "{}: {id} at step {k}", py.display());
            }
        }
    }
}
