//! vLLM's prefix-cached KV blocks followed from poll to poll, for kv_cache_evictions.csv:
//! when each cached block was first seen cached (its birth), last seen in use
//! (`ref_cnt > 0`) and seen evicted (gone from the cache map, or cached under other keys).
//!
//! Owns the reads of `BlockPool.cached_block_hash_to_block` (`BlockHashToBlockMap._cache`:
//! block hash with group id -> `KVCacheBlock`, or -> `{block_id: KVCacheBlock}` for
//! duplicates) and of the blocks' `ref_cnt`; not what the times mean for a user
//! (`profilers::kv_cache`).
//!
//! Cost, bounded whatever the pool's size: one read of the dict's head per poll; when it
//! changed, one read of its entry table (24 bytes per slot, at most `MAX_SLOTS`); one
//! batched read of at most `REFS_PER_POLL` `ref_cnt` pointers (the blocks cached now,
//! those in use at their last read first, the rest in turn); `block_id` read once per
//! block object (vLLM allocates every block at start and never frees one). An unchanged
//! `ref_cnt` pointer needs no decoding: CPython keeps one `0` object, so `ref_cnt == 0` is
//! one pointer comparison.
//!
//! Resolution: a birth and an eviction are known to lie between two polls of the map;
//! the end of a block's last use between its last read in use and its next read (or its
//! eviction). A block cached and evicted between two polls has no row: the dict's slots
//! are appended until a resize, so the slots inserted since the previous poll and already
//! deleted count those exactly (a lower bound when the table was resized in between).

use std::collections::HashMap;

use serde::Serialize;

use super::state::{StateError, StateNames};
use crate::python::objects::{DictSlots, ObjectError, Objects};

/// Entry slots of the cache dict read at most (24 bytes each: 6 MiB). A dict with more is
/// not followed (said in `BlockPoll::error`), never read in part.
pub const MAX_SLOTS: usize = 1 << 18;
/// `ref_cnt` pointers read per poll at most (one batched read).
pub const REFS_PER_POLL: usize = 16_384;
/// `block_id`s decoded per poll at most (evicted blocks first).
pub const IDS_PER_POLL: usize = 2_048;
/// Blocks under one duplicated hash read at most.
const MAX_DUPLICATES: usize = 64;

/// One evicted cached block, with the bounds of each time (CLOCK_MONOTONIC ns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockEviction {
    /// `KVCacheBlock.block_id` (None: not decoded within the per-poll bound).
    pub block_id: Option<i64>,
    /// The first poll that saw it cached (None: cached before the first poll).
    pub born_ns: Option<u64>,
    /// The poll before: the birth lies after it.
    pub born_after_ns: u64,
    /// The last read that saw it in use (`ref_cnt > 0`), or `born_ns` when none did.
    pub last_used_ns: Option<u64>,
    /// The read after that (or the eviction): its last use ended before it.
    pub last_used_until_ns: u64,
    /// The poll that saw it gone.
    pub evicted_ns: u64,
    /// The last poll that saw it cached: the eviction lies after it.
    pub evicted_after_ns: u64,
    /// Still in the map, but only under other keys (evicted and cached again between two
    /// polls).
    pub rehashed: bool,
}

/// What one poll of the cached blocks found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BlockPoll {
    /// Process.
    pub pid: u32,
    /// CLOCK_MONOTONIC ns of the map read.
    pub ts_ns: u64,
    /// Blocks seen evicted since the previous poll.
    pub evictions: Vec<BlockEviction>,
    /// The map object was replaced (a prefix cache reset): the blocks cached before left
    /// without eviction rows.
    pub reset: bool,
    /// Cached blocks now.
    pub cached: u64,
    /// Blocks first seen cached this poll.
    pub born: u64,
    /// Blocks cached and evicted since the previous poll, never seen (exact unless
    /// `unseen_is_lower_bound`).
    pub unseen: u64,
    /// The table was resized in between: `unseen` is a lower bound.
    pub unseen_is_lower_bound: bool,
    /// `ref_cnt`s read this poll.
    pub refs_read: u64,
    /// Cached blocks whose `ref_cnt` waited for a later poll (the per-poll bound).
    pub refs_deferred: u64,
    /// The map's head was unchanged: its entries were not read again.
    pub map_unchanged: bool,
    /// Entry slots read (0 when unchanged).
    pub slots_read: u64,
    /// The map changed during both reads of it: nothing concluded this poll.
    pub torn: bool,
    /// Why the blocks could not be followed (None: they were).
    pub error: Option<String>,
}

/// Where a `KVCacheBlock`'s fields are (a `__slots__` dataclass in vLLM 0.26-0.33).
#[derive(Debug, Clone, Copy)]
struct BlockLayout {
    ty: u64,
    block_id: u64,
    ref_cnt: u64,
}

/// A block seen cached.
#[derive(Debug, Clone)]
struct Cached {
    /// Its entries' keys at the last map read: the key's hash (equal keys may be distinct
    /// bytes objects), or the key's address where the dict stores no hash.
    keys: Vec<u64>,
    born_ns: Option<u64>,
    born_after_ns: u64,
    last_used_ns: Option<u64>,
    last_used_until_ns: Option<u64>,
    last_map_ns: u64,
}

/// Follows one block pool's cached blocks.
#[derive(Default)]
pub struct BlockTracker {
    /// The cache map object (a new one after every reset) and the dict that holds it.
    map: u64,
    dict: u64,
    /// (used, version, keys) at the last consistent read, and the slots then.
    head: Option<(u64, u64, u64)>,
    nentries: usize,
    cached: HashMap<u64, Cached>,
    ids: HashMap<u64, i64>,
    layout: Option<BlockLayout>,
    /// The pointer of the int `0` (`ref_cnt` of a free block).
    zero: Option<u64>,
    cursor: usize,
    /// The previous poll that read the map consistently.
    last_map_ns: Option<u64>,
}

impl BlockTracker {
    /// Reads `pool`'s cached blocks (pid left 0). Missing names and unreadable objects are
    /// errors; a map too large or torn is a poll saying so.
    pub fn poll(
        &mut self,
        o: &Objects<'_>,
        n: &StateNames,
        pool: u64,
    ) -> Result<BlockPoll, StateError> {
        let map = o
            .attr(pool, n.prefix_cache_map)?
            .ok_or(StateError::MissingName(n.prefix_cache_map, "block pool"))?;
        // vLLM 0.26-0.33: a `BlockHashToBlockMap` holding the dict; older: the dict itself.
        let dict = if o.dict_version(map).is_ok() {
            map
        } else {
            o.attr(map, n.prefix_cache_dict)?
                .ok_or(StateError::MissingName(
                    n.prefix_cache_dict,
                    "prefix cache map",
                ))?
        };
        let mut poll = BlockPoll::default();
        if self.map != 0 && (map != self.map || dict != self.dict) {
            poll.reset = true;
            self.cached.clear();
            self.head = None;
            self.nentries = 0;
        }
        let first = self.map == 0;
        self.map = map;
        self.dict = dict;
        let head = o.dict_head(dict)?;
        if self.head == Some(head) {
            poll.map_unchanged = true;
            poll.ts_ns = crate::output::monotonic_ns();
            poll.cached = self.cached.len() as u64;
            for c in self.cached.values_mut() {
                c.last_map_ns = poll.ts_ns;
            }
            self.last_map_ns = Some(poll.ts_ns);
            self.read_refs(o, &[], &mut poll);
            return Ok(poll);
        }
        let Some((slots, ts)) = Self::read_slots(o, dict)? else {
            poll.torn = true;
            poll.ts_ns = crate::output::monotonic_ns();
            return Ok(poll);
        };
        poll.ts_ns = ts;
        let Some(slots) = slots else {
            poll.error = Some(format!(
                "the prefix cache dict holds more than {MAX_SLOTS} entry slots (or is split); its blocks are not followed"
            ));
            return Ok(poll);
        };
        poll.slots_read = slots.slots.len() as u64;
        let present = self.present(o, n, &slots)?;
        // Slots appended since the previous read and already deleted: cached and evicted
        // in between.
        let resized = self.head.is_none_or(|(_, _, keys)| keys != slots.keys);
        let from = if resized { 0 } else { self.nentries };
        // A deleted slot keeps its hash: one whose key is cached again (vLLM pops a
        // duplicated hash and puts the rest of its blocks back) is not an eviction.
        let live: std::collections::HashSet<u64> = slots
            .slots
            .iter()
            .filter(|(_, key, _)| *key != 0)
            .map(|(hash, _, _)| *hash)
            .collect();
        let deleted = slots
            .slots
            .iter()
            .skip(from)
            .filter(|(hash, key, _)| *key == 0 && (*hash == 0 || !live.contains(hash)))
            .count() as u64;
        let after = self.last_map_ns.unwrap_or(0);
        let mut born = Vec::new();
        let mut evicted = Vec::new();
        for (block, keys) in &present {
            match self.cached.get_mut(block) {
                Some(c) if c.keys.iter().any(|k| keys.contains(k)) => {
                    c.keys.clone_from(keys);
                    c.last_map_ns = ts;
                }
                Some(_) => {
                    evicted.push((*block, true));
                    born.push(*block);
                }
                None => born.push(*block),
            }
        }
        for block in self.cached.keys() {
            if !present.contains_key(block) {
                evicted.push((*block, false));
            }
        }
        self.decode_ids(o, evicted.iter().map(|e| e.0).chain(born.iter().copied()));
        for (block, rehashed) in evicted {
            let Some(c) = self.cached.remove(&block) else {
                continue;
            };
            poll.evictions.push(BlockEviction {
                block_id: self.ids.get(&block).copied(),
                born_ns: c.born_ns,
                born_after_ns: c.born_after_ns,
                last_used_ns: c.last_used_ns.or(c.born_ns),
                last_used_until_ns: c.last_used_until_ns.unwrap_or(ts),
                evicted_ns: ts,
                evicted_after_ns: c.last_map_ns,
                rehashed,
            });
        }
        poll.born = born.len() as u64;
        for block in &born {
            let keys = present.get(block).cloned().unwrap_or_default();
            self.cached.insert(
                *block,
                Cached {
                    keys,
                    born_ns: (!first).then_some(ts),
                    born_after_ns: after,
                    last_used_ns: None,
                    last_used_until_ns: None,
                    last_map_ns: ts,
                },
            );
        }
        if !first {
            if resized {
                // Deleted slots of a new table: removals since the resize, seen or not.
                let seen = poll.evictions.len() as u64;
                poll.unseen = deleted.saturating_sub(seen);
                poll.unseen_is_lower_bound = true;
            } else {
                poll.unseen = deleted;
            }
        }
        poll.cached = self.cached.len() as u64;
        self.head = Some((slots.used, slots.version, slots.keys));
        self.nentries = slots.slots.len();
        self.last_map_ns = Some(ts);
        self.read_refs(o, &born, &mut poll);
        Ok(poll)
    }

    /// The dict's slots, read while its head stayed the same (twice at most), and the time
    /// between the two head reads (the slots held then). None: changed during both reads.
    /// The inner None: too many slots.
    fn read_slots(
        o: &Objects<'_>,
        dict: u64,
    ) -> Result<Option<(Option<DictSlots>, u64)>, StateError> {
        for _ in 0..2 {
            let Some(slots) = o.dict_slots(dict, MAX_SLOTS)? else {
                return Ok(Some((None, crate::output::monotonic_ns())));
            };
            let ts = crate::output::monotonic_ns();
            if o.dict_head(dict)? == (slots.used, slots.version, slots.keys) {
                return Ok(Some((Some(slots), ts)));
            }
        }
        Ok(None)
    }

    /// The blocks of the live slots, with their keys (see `Cached::keys`). A value is a block, or
    /// a dict of duplicates `{block_id: block}`.
    fn present(
        &mut self,
        o: &Objects<'_>,
        n: &StateNames,
        slots: &DictSlots,
    ) -> Result<HashMap<u64, Vec<u64>>, StateError> {
        let mut present: HashMap<u64, Vec<u64>> = HashMap::with_capacity(slots.used as usize);
        for &(hash, key, value) in &slots.slots {
            if key == 0 || value == 0 {
                continue;
            }
            let id = if hash == 0 { key } else { hash };
            if self.ids.contains_key(&value) || self.cached.contains_key(&value) {
                present.entry(value).or_default().push(id);
                continue;
            }
            let ty = o.type_of(value)?;
            let layout = match self.layout {
                Some(l) => l,
                None if o.type_name(value)? == n.block_type => {
                    let slot = |name: &'static str| -> Result<u64, StateError> {
                        o.slot_offset(ty, name)?
                            .ok_or(StateError::MissingName(name, "KV cache block (a slot)"))
                    };
                    let l = BlockLayout {
                        ty,
                        block_id: slot(n.block_id)?,
                        ref_cnt: slot(n.ref_cnt)?,
                    };
                    self.layout = Some(l);
                    l
                }
                None => BlockLayout {
                    ty: 0,
                    block_id: 0,
                    ref_cnt: 0,
                },
            };
            if ty == layout.ty {
                present.entry(value).or_default().push(id);
            } else if o.dict_version(value).is_ok() {
                for (_, b) in o.dict_items(value, MAX_DUPLICATES)? {
                    if self.layout.is_some_and(|l| o.type_of(b).ok() == Some(l.ty)) {
                        present.entry(b).or_default().push(id);
                    }
                }
            }
        }
        Ok(present)
    }

    /// Decodes the `block_id` of blocks not known yet (a bounded number per poll).
    fn decode_ids(&mut self, o: &Objects<'_>, blocks: impl Iterator<Item = u64>) {
        let Some(l) = self.layout else {
            return;
        };
        let mut budget = IDS_PER_POLL;
        for block in blocks {
            if budget == 0 {
                break;
            }
            if self.ids.contains_key(&block) {
                continue;
            }
            budget -= 1;
            let id = o
                .memory()
                .read_u64(block.wrapping_add(l.block_id))
                .map_err(ObjectError::from)
                .and_then(|p| o.int(p));
            if let Ok(id) = id {
                if self.ids.len() < MAX_SLOTS {
                    self.ids.insert(block, id);
                }
            }
        }
    }

    /// Reads the `ref_cnt` of the cached blocks: `first` (new this poll), those in use at
    /// their last read, then the others in turn, `REFS_PER_POLL` at most, in one batch.
    fn read_refs(&mut self, o: &Objects<'_>, first: &[u64], poll: &mut BlockPoll) {
        let Some(l) = self.layout else {
            return;
        };
        let mut order: Vec<u64> = first.to_vec();
        let first: std::collections::HashSet<u64> = first.iter().copied().collect();
        let mut rest = Vec::new();
        for (block, c) in &self.cached {
            if first.contains(block) {
                continue;
            }
            if c.last_used_ns.is_some() && c.last_used_until_ns.is_none() {
                order.push(*block);
            } else {
                rest.push(*block);
            }
        }
        order.truncate(REFS_PER_POLL);
        let room = REFS_PER_POLL - order.len();
        if !rest.is_empty() && room > 0 {
            // Hash-map order is stable between polls without inserts; sorting makes the turn
            // independent of it.
            rest.sort_unstable();
            let start = self.cursor % rest.len();
            let take = room.min(rest.len());
            order.extend(rest.iter().cycle().skip(start).take(take));
            self.cursor = start + take;
        }
        poll.refs_deferred = (self.cached.len() - order.len().min(self.cached.len())) as u64;
        let ranges: Vec<(u64, usize)> = order
            .iter()
            .map(|b| (b.wrapping_add(l.ref_cnt), 8))
            .collect();
        let mut buf = vec![0u8; ranges.len() * 8];
        let ok = o.memory().read_many(&ranges, &mut buf);
        let ts = crate::output::monotonic_ns();
        let mut decoded: HashMap<u64, bool> = HashMap::new();
        for (i, block) in order.iter().enumerate() {
            if !ok.get(i).copied().unwrap_or(false) {
                continue;
            }
            let p = buf[i * 8..i * 8 + 8]
                .try_into()
                .map_or(0, u64::from_le_bytes);
            let in_use = if self.zero == Some(p) {
                false
            } else if self.zero.is_some() {
                true
            } else if let Some(&u) = decoded.get(&p) {
                u
            } else {
                let Ok(v) = o.int(p) else { continue };
                if v == 0 {
                    self.zero = Some(p);
                }
                decoded.insert(p, v != 0);
                v != 0
            };
            poll.refs_read += 1;
            if let Some(c) = self.cached.get_mut(block) {
                if in_use {
                    c.last_used_ns = Some(ts);
                    c.last_used_until_ns = None;
                } else if c.last_used_ns.is_some() && c.last_used_until_ns.is_none() {
                    c.last_used_until_ns = Some(ts);
                } else if c.last_used_ns.is_none() && c.last_used_until_ns.is_none() {
                    // Never seen in use: its use ended before this read.
                    c.last_used_until_ns = Some(ts);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against live CPython processes (3.11 and the pyenv versions present): a block pool of
    //! vLLM's shape (a `__slots__` dataclass `KVCacheBlock`, a `BlockHashToBlockMap` whose
    //! `_cache` maps bytes keys to blocks or to `{block_id: block}`), changed by the test
    //! between two polls, so that every birth, use and eviction lies between known polls.
    use std::{
        collections::{BTreeMap, BTreeSet},
        io::{BufRead, BufReader, Write},
        process::{Child, ChildStdin, Command, Stdio},
    };

    use super::*;
    use crate::{
        python::{self, objects::object_layout, remote::ProcessMemory},
        vllm::state::VLLM_0_33,
    };

    const SCRIPT: &str = r#"
import dataclasses, json, sys
@dataclasses.dataclass(slots=True)
class KVCacheBlock:
    block_id: int
    ref_cnt: int = 0
    _block_hash: bytes | None = None
    prev_free_block: object = None
    next_free_block: object = None
    is_null: bool = False
class BlockHashToBlockMap:
    def __init__(self):
        self._cache = {}
class BlockPool:
    def __init__(self, n):
        self.blocks = [KVCacheBlock(i) for i in range(n)]
        self.cached_block_hash_to_block = BlockHashToBlockMap()
pool = BlockPool(int(sys.argv[1]))
def key(k):
    return k.to_bytes(32, "big") + bytes(4)
def cache(i, k, ref):
    b = pool.blocks[i]
    b.ref_cnt += ref
    b._block_hash = key(k)
    c = pool.cached_block_hash_to_block._cache
    old = c.get(b._block_hash)
    if old is None:
        c[b._block_hash] = b
    elif isinstance(old, KVCacheBlock):
        c[b._block_hash] = {old.block_id: old, b.block_id: b}
    else:
        old[b.block_id] = b
def evict(i):
    b = pool.blocks[i]
    c = pool.cached_block_hash_to_block._cache
    v = c.pop(b._block_hash)
    if isinstance(v, dict):
        v.pop(i)
        if v:
            c[b._block_hash] = v
    b._block_hash = None
print(json.dumps({"pool": id(pool)}), flush=True)
for line in sys.stdin:
    for op in json.loads(line):
        if op[0] == "cache":
            cache(op[1], op[2], op[3])
        elif op[0] == "bulk":
            for i in range(op[1], op[2]):
                cache(i, 1_000_000 + i, 0)
        elif op[0] == "free":
            pool.blocks[op[1]].ref_cnt -= 1
        elif op[0] == "use":
            pool.blocks[op[1]].ref_cnt += 1
        elif op[0] == "evict":
            evict(op[1])
        elif op[0] == "reset":
            pool.cached_block_hash_to_block = BlockHashToBlockMap()
            for b in pool.blocks:
                b._block_hash = None
    print("ok", flush=True)
"#;

    struct Target {
        child: Child,
        stdin: ChildStdin,
        lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    }

    impl Target {
        fn spawn(py: &std::path::Path, blocks: usize) -> (Self, u64) {
            let mut child = Command::new(py)
                .args(["-c", SCRIPT, &blocks.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn python");
            let stdin = child.stdin.take().expect("stdin");
            let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
            let first: serde_json::Value =
                serde_json::from_str(&lines.next().expect("line").expect("read")).expect("json");
            let pool = first["pool"].as_u64().expect("pool");
            (
                Self {
                    child,
                    stdin,
                    lines,
                },
                pool,
            )
        }

        fn ops(&mut self, ops: serde_json::Value) {
            writeln!(self.stdin, "{ops}").expect("write");
            assert_eq!(self.lines.next().expect("line").expect("read"), "ok");
        }
    }

    impl Drop for Target {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn ids(p: &BlockPoll) -> BTreeSet<i64> {
        p.evictions.iter().filter_map(|e| e.block_id).collect()
    }

    #[test]
    fn evictions_lifetimes_and_unseen_blocks_are_exact_between_polls() {
        let pythons = crate::python::objects::tests_support::interpreters();
        if pythons.is_empty() {
            eprintln!("SKIP: no CPython 3.11-3.13 installed");
            return;
        }
        for py in pythons {
            check(&py);
            check_bounded_cost(&py);
        }
    }

    fn check(py: &std::path::Path) {
        use serde_json::json;
        let (mut t, pool) = Target::spawn(py, 64);
        const { assert!(MAX_SLOTS >= 64 && IDS_PER_POLL >= 64) };
        let interp = python::find(t.child.id()).expect("interpreter");
        let ol = object_layout(interp.layout.version).expect("object layout");
        let mem = ProcessMemory::new(t.child.id());
        let cache = crate::python::objects::AttrCache::default();
        let o = Objects::new(&mem, &interp.layout, ol).with_cache(&cache);
        let mut tr = BlockTracker::default();
        let name = py.display();
        // Cached before the first poll: evicted later without a birth. Blocks 20-44 make the
        // dict's table large enough that the slots below are appended without a resize.
        t.ops(json!([
            ["cache", 1, 1, 0],
            ["cache", 2, 2, 1],
            ["bulk", 20, 45]
        ]));
        let p0 = tr.poll(&o, &VLLM_0_33, pool).expect("poll");
        assert_eq!((p0.cached, p0.born, p0.unseen), (27, 27, 0), "{name}");
        // Blocks 3-5 cached in use (two of them under one hash: a duplicate), 1 evicted.
        t.ops(json!([
            ["cache", 3, 3, 1],
            ["cache", 4, 4, 1],
            ["cache", 5, 4, 1],
            ["evict", 1]
        ]));
        let p1 = tr.poll(&o, &VLLM_0_33, pool).expect("poll");
        assert_eq!(ids(&p1), BTreeSet::from([1]), "{name}");
        assert_eq!(p1.evictions[0].born_ns, None, "{name}");
        assert_eq!((p1.cached, p1.born), (29, 3), "{name}");
        // Nothing changed: the map's entries are not read again.
        let p2 = tr.poll(&o, &VLLM_0_33, pool).expect("poll");
        assert!(
            p2.map_unchanged && p2.slots_read == 0 && p2.evictions.is_empty(),
            "{name}"
        );
        // 3 and 4 freed; 6 cached and evicted between two polls (unseen); 5 evicted from
        // its duplicate hash while in use.
        t.ops(json!([
            ["free", 3],
            ["free", 4],
            ["cache", 6, 6, 0],
            ["evict", 6],
            ["evict", 5]
        ]));
        let p3 = tr.poll(&o, &VLLM_0_33, pool).expect("poll");
        assert_eq!(ids(&p3), BTreeSet::from([5]), "{name}");
        assert_eq!((p3.unseen, p3.unseen_is_lower_bound), (1, false), "{name}");
        let e5 = &p3.evictions[0];
        assert_eq!(e5.born_ns, Some(p1.ts_ns), "{name}");
        assert_eq!(e5.born_after_ns, p0.ts_ns, "{name}");
        assert_eq!(e5.evicted_after_ns, p2.ts_ns, "{name}");
        assert_eq!(e5.evicted_ns, p3.ts_ns, "{name}");
        // In use at every read until evicted: its use lasts until the eviction's poll.
        assert!(
            e5.last_used_ns
                .is_some_and(|u| u > p2.ts_ns && u < p3.ts_ns),
            "{e5:?}"
        );
        // 3 evicted and cached again under another hash between two polls; 4 evicted.
        t.ops(json!([["evict", 3], ["cache", 3, 30, 1], ["evict", 4]]));
        let p4 = tr.poll(&o, &VLLM_0_33, pool).expect("poll");
        assert_eq!(ids(&p4), BTreeSet::from([3, 4]), "{name}");
        let by: BTreeMap<i64, &BlockEviction> = p4
            .evictions
            .iter()
            .filter_map(|e| Some((e.block_id?, e)))
            .collect();
        assert!(by[&3].rehashed && !by[&4].rehashed, "{name}");
        for e in by.values() {
            assert_eq!(e.born_ns, Some(p1.ts_ns), "{name}");
            assert_eq!(
                (e.evicted_after_ns, e.evicted_ns),
                (p3.ts_ns, p4.ts_ns),
                "{name}"
            );
            // Freed between p2 and p3: last seen in use at p2's read, free at p3's.
            let (used, until) = (e.last_used_ns.expect("used"), e.last_used_until_ns);
            assert!(used > p2.ts_ns && used < p3.ts_ns, "{name}: {e:?}");
            assert!(until > p3.ts_ns && until < p4.ts_ns, "{name}: {e:?}");
        }
        // A reset: the blocks leave without eviction rows; a block cached after it is born
        // after the poll before.
        t.ops(json!([["reset"], ["cache", 7, 7, 1]]));
        let p5 = tr.poll(&o, &VLLM_0_33, pool).expect("poll");
        assert!(p5.reset && p5.evictions.is_empty(), "{name}: {p5:?}");
        assert_eq!((p5.cached, p5.born), (1, 1), "{name}");
        t.ops(json!([["free", 7], ["evict", 7]]));
        let p6 = tr.poll(&o, &VLLM_0_33, pool).expect("poll");
        assert_eq!(ids(&p6), BTreeSet::from([7]), "{name}");
        assert_eq!(p6.evictions[0].born_ns, Some(p5.ts_ns), "{name}");
        assert_eq!(p6.evictions[0].born_after_ns, p4.ts_ns, "{name}");
    }

    /// A production-size pool: each poll reads at most `REFS_PER_POLL` ref counts and
    /// every cached block's in turn; an unchanged map is not read again.
    fn check_bounded_cost(py: &std::path::Path) {
        use serde_json::json;
        let blocks = 40_000;
        let (mut t, pool) = Target::spawn(py, blocks + 1);
        let interp = python::find(t.child.id()).expect("interpreter");
        let ol = object_layout(interp.layout.version).expect("object layout");
        let mem = ProcessMemory::new(t.child.id());
        let cache = crate::python::objects::AttrCache::default();
        let o = Objects::new(&mem, &interp.layout, ol).with_cache(&cache);
        let mut tr = BlockTracker::default();
        t.ops(json!([["bulk", 1, blocks + 1]]));
        let first = tr.poll(&o, &VLLM_0_33, pool).expect("poll");
        assert_eq!(first.cached, blocks as u64);
        assert_eq!(first.refs_read, REFS_PER_POLL as u64);
        assert_eq!(first.refs_deferred, (blocks - REFS_PER_POLL) as u64);
        // Block 1 taken by a request and evicted two polls later: seen in use by a read.
        t.ops(json!([["use", 40_000]]));
        let mut read = first.refs_read;
        for _ in 0..blocks.div_ceil(REFS_PER_POLL) {
            let p = tr.poll(&o, &VLLM_0_33, pool).expect("poll");
            assert!(p.map_unchanged && p.slots_read == 0, "{p:?}");
            assert!(p.refs_read <= REFS_PER_POLL as u64);
            read += p.refs_read;
        }
        assert!(read > blocks as u64);
        t.ops(json!([["free", 40_000], ["evict", 40_000]]));
        let p = tr.poll(&o, &VLLM_0_33, pool).expect("poll");
        assert_eq!(ids(&p), BTreeSet::from([40_000]));
        assert!(p.evictions[0].last_used_ns.is_some(), "{p:?}");
        assert!(p.slots_read as usize <= MAX_SLOTS);
    }
}
