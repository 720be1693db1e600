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
//! changed, one read of its entry table (24 bytes per slot, at most `MAX_SLOTS`), compared
//! slot by slot with the previous read (a keys object's slots are only appended: only new
//! and changed slots are looked at); one batched read of at most `REFS_PER_POLL`
//! `ref_cnt` pointers (the blocks in use at their last read first, the rest in turn),
//! merged into page-sized ranges; `block_id` read once per block object (vLLM allocates
//! every block at start and never frees one). An unchanged `ref_cnt` pointer needs no
//! decoding: CPython keeps one `0` object, so `ref_cnt == 0` is one pointer comparison.
//! 100,000 cached blocks: 2-3 ms of CPU a poll, 4-7 ms when the map changed
//! (docs/OUTPUTS.md).
//!
//! Resolution: a birth and an eviction are known to lie between two polls of the map;
//! the end of a block's last use between its last read in use and its next read (or its
//! eviction). A block cached and evicted between two polls has no row: the dict's slots
//! are appended until a resize, so the slots inserted since the previous poll and already
//! deleted count those exactly (a lower bound when the table was resized in between).

use foldhash::{HashMap, HashSet};

pub use crate::model::scheduler::{BlockEviction, BlockPoll};

use super::state::{StateError, StateNames};
use crate::python::objects::{DictSlots, ObjectError, Objects};

/// Entry slots of the cache dict read at most (24 bytes each: 6 MiB). A dict with more is
/// not followed (said in `BlockPoll::error`), never read in part.
pub const MAX_SLOTS: usize = 1 << 18;
/// `ref_cnt` pointers read per poll at most (one batched read).
pub const REFS_PER_POLL: usize = 16_384;
/// `block_id`s decoded per poll at most (evicted blocks first).
pub const IDS_PER_POLL: usize = 2_048;
/// `ob_type`'s offset in an object (CPython 3.11-3.13, x86-64).
const OB_TYPE: u64 = 8;
/// A merged range is at most one page...
const SPAN_MAX: u64 = 4096;
/// ...and merges words less than this apart (vLLM allocates its blocks in one go, a few
/// dozen to a page).
const SPAN_GAP: u64 = 512;

/// (address, length) ranges for `RemoteMemory::read_many`.
type Ranges = Vec<(u64, usize)>;

/// The ranges that read the word at `offset` of each object of `sorted` (ascending),
/// merged where they lie close together, and where each word is: (range, byte offset in
/// the buffer `read_many` fills).
fn spans(sorted: &[u64], offset: u64) -> (Ranges, Vec<(usize, usize)>) {
    let mut spans: Vec<(u64, usize)> = Vec::new();
    let mut at = Vec::with_capacity(sorted.len());
    let mut base = 0usize;
    for &obj in sorted {
        let w = obj.wrapping_add(offset);
        match spans.last_mut() {
            Some((start, len))
                if w >= *start + *len as u64
                    && w + 8 - *start <= SPAN_MAX
                    && w - (*start + *len as u64) < SPAN_GAP =>
            {
                *len = (w + 8 - *start) as usize;
            }
            _ => {
                if let Some((_, len)) = spans.last() {
                    base += len;
                }
                spans.push((w, 8));
            }
        }
        let (start, _) = spans[spans.len() - 1];
        at.push((spans.len() - 1, base + (w - start) as usize));
    }
    (spans, at)
}

/// Blocks under one duplicated hash read at most.
const MAX_DUPLICATES: usize = 64;

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
    /// Its entries' keys: the key's hash (equal keys may be distinct bytes objects), or the
    /// key's address where the dict stores no hash.
    keys: Vec<u64>,
    born_ns: Option<u64>,
    born_after_ns: u64,
    last_used_ns: Option<u64>,
    last_used_until_ns: Option<u64>,
}

/// One entry slot as last read: its value and key id (0: deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    value: u64,
    key: u64,
}

/// Follows one block pool's cached blocks.
#[derive(Default)]
pub struct BlockTracker {
    /// The cache map object (a new one after every reset) and the dict that holds it.
    map: u64,
    dict: u64,
    /// (used, version, keys) at the last consistent read.
    head: Option<(u64, u64, u64)>,
    /// The slots at the last read, by position (a keys object's slots are only appended,
    /// and only a deletion or a value change alters one: the next read compares).
    slots: Vec<Slot>,
    /// Blocks of slots whose value is a dict of duplicates, by position.
    duplicates: HashMap<usize, Vec<u64>>,
    cached: HashMap<u64, Cached>,
    /// Cached blocks in use (`ref_cnt > 0`) at their last read.
    in_use: HashSet<u64>,
    ids: HashMap<u64, i64>,
    layout: Option<BlockLayout>,
    /// The pointer of the int `0` (`ref_cnt` of a free block).
    zero: Option<u64>,
    /// Where the round-robin `ref_cnt` reads continue (a slot position).
    cursor: usize,
    /// The previous poll that read the map consistently.
    last_map_ns: Option<u64>,
}

/// What a poll changed, before it is reported.
#[derive(Default)]
struct Diff {
    /// Blocks that lost a key, with their keys before.
    touched: HashMap<u64, Vec<u64>>,
    born: Vec<u64>,
}

/// The prefix cache map of `pool` and the dict holding its entries (vLLM 0.26-0.33: a
/// `BlockHashToBlockMap` holding the dict; older: the dict itself).
fn cache_dict(o: &Objects<'_>, n: &StateNames, pool: u64) -> Result<(u64, u64), StateError> {
    let map = o
        .attr(pool, n.prefix_cache_map)?
        .ok_or(StateError::MissingName(n.prefix_cache_map, "block pool"))?;
    let dict = if o.dict_version(map).is_ok() {
        map
    } else {
        o.attr(map, n.prefix_cache_dict)?
            .ok_or(StateError::MissingName(
                n.prefix_cache_dict,
                "prefix cache map",
            ))?
    };
    Ok((map, dict))
}

/// Slots from `from` on (appended since the previous read) that are deleted now, but not
/// those whose key was put back later in the table.
fn deleted_since(read: &[(u64, u64, u64)], now: &[Slot], from: usize) -> u64 {
    let tail_live: HashSet<u64> = now[from.min(now.len())..]
        .iter()
        .filter(|s| s.value != 0)
        .map(|s| s.key)
        .collect();
    read[from.min(read.len())..]
        .iter()
        .filter(|(hash, key, _)| *key == 0 && (*hash == 0 || !tail_live.contains(hash)))
        .count() as u64
}

impl Slot {
    /// A slot read as (hash, key, value): empty when deleted, keyed by its hash when known.
    fn of((hash, key, value): (u64, u64, u64)) -> Self {
        let live = key != 0 && value != 0;
        Self {
            value: if live { value } else { 0 },
            key: if !live {
                0
            } else if hash == 0 {
                key
            } else {
                hash
            },
        }
    }
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
        let (map, dict) = cache_dict(o, n, pool)?;
        let mut poll = BlockPoll {
            reset: self.forget_replaced(map, dict),
            ..BlockPoll::default()
        };
        let first = self.map == 0;
        self.map = map;
        self.dict = dict;
        if self.unchanged(o, dict, &mut poll)? {
            return Ok(poll);
        }
        let Some((slots, ts)) = Self::read_slots(o, dict)? else {
            poll.torn = true;
            poll.ts_ns = crate::model::monotonic_ns();
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
        self.learn_layout(o, n, &slots)?;
        // Same keys object: its first slots are the ones read before (compare them);
        // otherwise (first read, reset, resize) every slot is compared with nothing.
        let new_keys = self.head.is_none_or(|(_, _, keys)| keys != slots.keys);
        let now: Vec<Slot> = slots.slots.iter().map(|&s| Slot::of(s)).collect();
        // The slots read before are still these (the same table, only appended to and
        // deleted from) when each kept its key or was deleted, and none came back. A new
        // table with another address is compacted in insertion order: when its first slots
        // agree they are the same entries. The address alone proves nothing: a freed keys
        // object's address is soon reused (CPython keeps a free list of small ones).
        let resized = self.head.is_none()
            || now.len() < self.slots.len()
            || self
                .slots
                .iter()
                .zip(&now)
                .any(|(a, b)| b.key != 0 && a.key != b.key);
        // Every read first: a value that cannot be read (freed under the read) makes the
        // poll torn before anything is changed, so the next poll compares with this one's
        // predecessor and misses nothing.
        let Some(resolved) = self.resolve(o, &now, resized) else {
            poll.torn = true;
            return Ok(poll);
        };
        if resized {
            self.slots.clear();
            self.duplicates.clear();
        }
        let from = self.slots.len();
        let after = self.last_map_ns.unwrap_or(0);
        let mut diff = Diff::default();
        if resized {
            // A new table: every block's keys are read again from it.
            for (b, c) in &mut self.cached {
                diff.touched.insert(*b, std::mem::take(&mut c.keys));
            }
        }
        let dups = self.apply(&now, &resolved, (first, ts, after), &mut diff);
        // Slots appended since the previous read and already deleted: cached and evicted in
        // between; a deleted slot keeps its hash, and one whose key was put back later (vLLM
        // pops a duplicated hash and reinserts the rest of its blocks) is no eviction.
        let deleted = deleted_since(&slots.slots, &now, from);
        self.slots = now;
        self.duplicates = dups;
        self.report(o, &mut diff, ts, &mut poll);
        if !first && !poll.reset {
            if resized {
                // Deleted slots of a new table: removals since the resize, seen or not.
                poll.unseen = deleted.saturating_sub(poll.evictions.len() as u64);
                poll.unseen_is_lower_bound = true;
            } else {
                // New slots already deleted; a resize in between dropped some (a bound).
                poll.unseen = deleted;
                poll.unseen_is_lower_bound = new_keys;
            }
        }
        poll.cached = self.cached.len() as u64;
        self.head = Some((slots.used, slots.version, slots.keys));
        self.last_map_ns = Some(ts);
        self.read_refs(o, &diff.born, &mut poll);
        Ok(poll)
    }

    /// When the cache dict's head is the one read last (nothing added or deleted): the
    /// poll is the `ref_cnt` reads alone; true when so.
    fn unchanged(
        &mut self,
        o: &Objects<'_>,
        dict: u64,
        poll: &mut BlockPoll,
    ) -> Result<bool, StateError> {
        // Stamped before the head is read: the map is known unchanged at a moment after this
        // stamp (a later stamp could follow a descheduling and pass an eviction).
        let head_ns = crate::model::monotonic_ns();
        let head = o.dict_head(dict)?;
        if self.head != Some(head) {
            return Ok(false);
        }
        poll.map_unchanged = true;
        poll.ts_ns = head_ns;
        poll.cached = self.cached.len() as u64;
        self.last_map_ns = Some(head_ns);
        self.read_refs(o, &[], poll);
        Ok(true)
    }

    /// A new map or dict (a prefix cache reset): forgets every block; true when so.
    fn forget_replaced(&mut self, map: u64, dict: u64) -> bool {
        let replaced = self.map != 0 && (map != self.map || dict != self.dict);
        if replaced {
            self.cached.clear();
            self.in_use.clear();
            self.slots.clear();
            self.duplicates.clear();
            self.head = None;
        }
        replaced
    }

    /// Compares each slot with the one read before at its position: keys that left their
    /// blocks and blocks that gained keys go to `diff`. `at`: (first poll, this read's time,
    /// the previous read's). Returns the slots whose value is a dict of duplicates.
    fn apply(
        &mut self,
        now: &[Slot],
        resolved: &HashMap<u64, Vec<u64>>,
        at: (bool, u64, u64),
        diff: &mut Diff,
    ) -> HashMap<usize, Vec<u64>> {
        let (first, ts, after) = at;
        let mut dups = HashMap::default();
        let blocks_of = |v: u64| resolved.get(&v).cloned().unwrap_or_else(|| vec![v]);
        for (pos, &slot) in now.iter().enumerate() {
            let (live, value) = (slot.value != 0, slot.value);
            let before = self.slots.get(pos).copied();
            if before == Some(slot) {
                // The same dict of duplicates may hold other blocks now.
                if let Some(old) = self.duplicates.remove(&pos) {
                    let blocks = blocks_of(value);
                    for &b in old.iter().filter(|b| !blocks.contains(b)) {
                        self.drop_key(b, slot.key, diff);
                    }
                    for &b in blocks.iter().filter(|b| !old.contains(b)) {
                        self.add_key(b, slot.key, first, ts, after, diff);
                    }
                    dups.insert(pos, blocks);
                }
                continue;
            }
            if let Some(old) = before.filter(|s| s.value != 0) {
                let blocks = self
                    .duplicates
                    .remove(&pos)
                    .unwrap_or_else(|| vec![old.value]);
                for b in blocks {
                    self.drop_key(b, old.key, diff);
                }
            }
            if live {
                let blocks = blocks_of(value);
                for &b in &blocks {
                    self.add_key(b, slot.key, first, ts, after, diff);
                }
                if blocks.len() != 1 || blocks[0] != value {
                    dups.insert(pos, blocks);
                }
            }
        }
        dups
    }

    /// The block's key `key` left the map.
    fn drop_key(&mut self, block: u64, key: u64, diff: &mut Diff) {
        if let Some(c) = self.cached.get_mut(&block) {
            diff.touched.entry(block).or_insert_with(|| c.keys.clone());
            if let Some(i) = c.keys.iter().position(|k| *k == key) {
                c.keys.swap_remove(i);
            }
        }
    }

    /// The block is in the map under `key`: a birth when it was not cached.
    fn add_key(&mut self, block: u64, key: u64, first: bool, ts: u64, after: u64, diff: &mut Diff) {
        match self.cached.get_mut(&block) {
            Some(c) => {
                if !c.keys.contains(&key) {
                    c.keys.push(key);
                }
            }
            None => {
                diff.born.push(block);
                self.cached.insert(
                    block,
                    Cached {
                        keys: vec![key],
                        born_ns: (!first).then_some(ts),
                        born_after_ns: after,
                        last_used_ns: None,
                        last_used_until_ns: None,
                    },
                );
            }
        }
    }

    /// Turns the blocks that lost keys into evictions: those left with none (`gone`) and
    /// those whose keys are all new (`recached`: evicted and cached again in between).
    fn report(&mut self, o: &Objects<'_>, diff: &mut Diff, ts: u64, poll: &mut BlockPoll) {
        let mut evicted = Vec::new();
        for (block, before) in &diff.touched {
            let Some(c) = self.cached.get(block) else {
                continue;
            };
            if c.keys.is_empty() {
                evicted.push((*block, false));
            } else if !c.keys.iter().any(|k| before.contains(k)) {
                evicted.push((*block, true));
            }
        }
        evicted.sort_unstable();
        self.decode_ids(
            o,
            evicted.iter().map(|e| e.0).chain(diff.born.iter().copied()),
        );
        let after = self.last_map_ns.unwrap_or(0);
        for (block, rehashed) in evicted {
            let Some(c) = self.cached.remove(&block) else {
                continue;
            };
            self.in_use.remove(&block);
            poll.evictions.push(BlockEviction {
                block_id: self.ids.get(&block).copied(),
                born_ns: c.born_ns,
                born_after_ns: c.born_after_ns,
                last_used_ns: c.last_used_ns.or(c.born_ns),
                last_used_until_ns: c.last_used_until_ns.unwrap_or(ts),
                evicted_ns: ts,
                evicted_after_ns: after,
                rehashed,
            });
            if rehashed {
                diff.born.push(block);
                self.cached.insert(
                    block,
                    Cached {
                        keys: c.keys,
                        born_ns: Some(ts),
                        born_after_ns: after,
                        last_used_ns: None,
                        last_used_until_ns: None,
                    },
                );
            }
        }
        poll.born = diff.born.len() as u64;
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
                return Ok(Some((None, crate::model::monotonic_ns())));
            };
            let ts = crate::model::monotonic_ns();
            if o.dict_head(dict)? == (slots.used, slots.version, slots.keys) {
                return Ok(Some((Some(slots), ts)));
            }
        }
        Ok(None)
    }

    /// Learns where a `KVCacheBlock`'s fields are, from the first block value.
    fn learn_layout(
        &mut self,
        o: &Objects<'_>,
        n: &StateNames,
        slots: &DictSlots,
    ) -> Result<(), StateError> {
        if self.layout.is_some() {
            return Ok(());
        }
        for &(_, _, value) in slots.slots.iter().filter(|s| s.1 != 0 && s.2 != 0) {
            let mut value = value;
            if o.dict_version(value).is_ok() {
                match o.dict_items(value, 1)?.first() {
                    Some(&(_, b)) => value = b,
                    None => continue,
                }
            }
            if o.type_name(value)? != n.block_type {
                continue;
            }
            let ty = o.type_of(value)?;
            let slot = |name: &'static str| -> Result<u64, StateError> {
                o.slot_offset(ty, name)?
                    .ok_or(StateError::MissingName(name, "KV cache block (a slot)"))
            };
            self.layout = Some(BlockLayout {
                ty,
                block_id: slot(n.block_id)?,
                ref_cnt: slot(n.ref_cnt)?,
            });
            return Ok(());
        }
        Ok(())
    }

    /// The blocks of every value the diff will look at (new or changed slots, and dicts of
    /// duplicates, which change inside): None when one could not be read. A value absent
    /// from the map is a known block (itself).
    fn resolve(
        &self,
        o: &Objects<'_>,
        now: &[Slot],
        resized: bool,
    ) -> Option<HashMap<u64, Vec<u64>>> {
        let prev: &[Slot] = if resized { &[] } else { &self.slots };
        let types = self.prefetch_types(o, now, prev);
        let mut resolved: HashMap<u64, Vec<u64>> = HashMap::default();
        for (pos, slot) in now.iter().enumerate() {
            let v = slot.value;
            let dup = !resized && self.duplicates.contains_key(&pos);
            if v == 0 || (prev.get(pos) == Some(slot) && !dup) || resolved.contains_key(&v) {
                continue;
            }
            let blocks = match types.get(&v) {
                Some(&ty) if self.layout.is_some_and(|l| l.ty == ty) => vec![v],
                _ => self.blocks_of(o, v).ok()?,
            };
            if blocks.len() != 1 || blocks[0] != v {
                resolved.insert(v, blocks);
            }
        }
        Some(resolved)
    }

    /// The types of the live values not known as blocks yet, in one batched read (a first
    /// poll meets every cached block at once). A value whose type is not the block type
    /// is looked at again one by one (`blocks_of`), so a wrong guess only costs time.
    fn prefetch_types(&self, o: &Objects<'_>, now: &[Slot], prev: &[Slot]) -> HashMap<u64, u64> {
        let mut values: Vec<u64> = now
            .iter()
            .enumerate()
            .filter(|&(pos, s)| s.value != 0 && prev.get(pos) != Some(s))
            .map(|(_, s)| s.value)
            .filter(|v| !self.ids.contains_key(v) && !self.cached.contains_key(v))
            .collect();
        values.sort_unstable();
        values.dedup();
        let (spans, at) = spans(&values, OB_TYPE);
        let mut buf = vec![0u8; spans.iter().map(|s| s.1).sum()];
        let ok = o.memory().read_many(&spans, &mut buf);
        values
            .iter()
            .zip(at)
            .filter_map(|(&v, (span, off))| {
                let w = buf.get(off..off + 8)?.try_into().ok()?;
                ok.get(span)
                    .copied()
                    .unwrap_or(false)
                    .then(|| (v, u64::from_le_bytes(w)))
            })
            .collect()
    }

    /// The blocks a cache value holds: itself, or the blocks of a dict of duplicates
    /// `{block_id: block}`. A known block needs no read (vLLM never frees one).
    fn blocks_of(&self, o: &Objects<'_>, value: u64) -> Result<Vec<u64>, StateError> {
        if self.ids.contains_key(&value) || self.cached.contains_key(&value) {
            return Ok(vec![value]);
        }
        let Some(l) = self.layout else {
            return Ok(Vec::new());
        };
        let ty = o.type_of(value)?;
        if ty == l.ty {
            return Ok(vec![value]);
        }
        if o.dict_version(value).is_ok() {
            return Ok(o
                .dict_items(value, MAX_DUPLICATES)?
                .into_iter()
                .map(|(_, b)| b)
                .filter(|&b| o.type_of(b).ok() == Some(l.ty))
                .collect());
        }
        Ok(Vec::new())
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
    /// their last read, then the others in slot order from where the last poll stopped,
    /// `REFS_PER_POLL` at most, in one batch whose ranges are merged where blocks lie
    /// close together (vLLM allocates its blocks in one go: they fill whole pages).
    fn read_refs(&mut self, o: &Objects<'_>, first: &[u64], poll: &mut BlockPoll) {
        let Some(l) = self.layout else {
            return;
        };
        let mut chosen: HashSet<u64> = HashSet::default();
        chosen.extend(first.iter().take(REFS_PER_POLL));
        for b in &self.in_use {
            if chosen.len() >= REFS_PER_POLL {
                break;
            }
            chosen.insert(*b);
        }
        let n = self.slots.len();
        let mut steps = 0;
        while chosen.len() < REFS_PER_POLL.min(self.cached.len()) && steps < n {
            let pos = (self.cursor + steps) % n;
            steps += 1;
            let v = self.slots[pos].value;
            if v == 0 {
                continue;
            }
            match self.duplicates.get(&pos) {
                Some(blocks) => chosen.extend(blocks),
                None => {
                    chosen.insert(v);
                }
            }
        }
        self.cursor = if n == 0 { 0 } else { (self.cursor + steps) % n };
        let mut order: Vec<u64> = chosen
            .into_iter()
            .filter(|b| self.cached.contains_key(b))
            .collect();
        order.sort_unstable();
        poll.refs_deferred = (self.cached.len().saturating_sub(order.len())) as u64;
        let (spans, at) = spans(&order, l.ref_cnt);
        let total = spans.iter().map(|s| s.1).sum();
        let mut buf = vec![0u8; total];
        // A block seen in use was in use at some moment after `before`; one seen free was
        // free at some moment before `after` (a reader descheduled around the read must not
        // move either past the truth).
        let before = crate::model::monotonic_ns();
        let ok = o.memory().read_many(&spans, &mut buf);
        let after = crate::model::monotonic_ns();
        let mut decoded: HashMap<u64, bool> = HashMap::default();
        for (block, (span, off)) in order.into_iter().zip(at) {
            if !ok.get(span).copied().unwrap_or(false) {
                continue;
            }
            let Some(p) = buf.get(off..off + 8).and_then(|w| w.try_into().ok()) else {
                continue;
            };
            let p = u64::from_le_bytes(p);
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
            if let Some(c) = self.cached.get_mut(&block) {
                if in_use {
                    c.last_used_ns = Some(before);
                    c.last_used_until_ns = None;
                    self.in_use.insert(block);
                } else {
                    self.in_use.remove(&block);
                    if c.last_used_until_ns.is_none() {
                        // Its use (or, never seen in use, its caching) ended before now.
                        c.last_used_until_ns = Some(after);
                    }
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
        vllm::v0_33::STATE as VLLM_0_33,
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
            check_churn(&py);
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

    #[test]
    #[ignore = "a measurement, not a check: cargo test --release -- --ignored --nocapture"]
    fn measure_poll_cost_of_a_100k_block_pool() {
        use serde_json::json;
        let py = std::path::Path::new("/usr/bin/python3.11");
        let blocks = 100_000;
        let (mut t, pool) = Target::spawn(py, blocks + 1);
        let interp = python::find(t.child.id()).expect("interpreter");
        let ol = object_layout(interp.layout.version).expect("object layout");
        let mem = ProcessMemory::new(t.child.id());
        let cache = crate::python::objects::AttrCache::default();
        let o = Objects::new(&mem, &interp.layout, ol).with_cache(&cache);
        let mut tr = BlockTracker::default();
        t.ops(json!([["bulk", 1, blocks + 1]]));
        let cpu = || {
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
                .map_or(0.0, |t| t.tv_sec() as f64 * 1e3 + t.tv_nsec() as f64 / 1e6)
        };
        let timed = |what: &str, tr: &mut BlockTracker| {
            let (w, c) = (std::time::Instant::now(), cpu());
            let p = tr.poll(&o, &VLLM_0_33, pool).expect("poll");
            eprintln!(
                "{what}: wall {:.2} ms, cpu {:.2} ms; slots {} refs {} deferred {} cached {}",
                w.elapsed().as_secs_f64() * 1e3,
                cpu() - c,
                p.slots_read,
                p.refs_read,
                p.refs_deferred,
                p.cached
            );
        };
        timed("first poll (learning)", &mut tr);
        for _ in 0..3 {
            timed("unchanged map", &mut tr);
        }
        for k in 0..3 {
            t.ops(json!([["evict", 100 + k], ["use", 200 + k]]));
            timed("changed map", &mut tr);
        }
    }

    /// Random churn like the fixture's (a small cache, its oldest blocks evicted, blocks
    /// reused under new keys between two polls, the dict resized now and then): each poll
    /// reports exactly the blocks whose key left the map since the previous one.
    fn check_churn(py: &std::path::Path) {
        use serde_json::json;
        let (mut t, pool) = Target::spawn(py, 64);
        let interp = python::find(t.child.id()).expect("interpreter");
        let ol = object_layout(interp.layout.version).expect("object layout");
        let mem = ProcessMemory::new(t.child.id());
        let cache = crate::python::objects::AttrCache::default();
        let o = Objects::new(&mem, &interp.layout, ol).with_cache(&cache);
        let mut tr = BlockTracker::default();
        let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // block -> key now; the keys at the previous poll.
        let mut keys: BTreeMap<u64, u64> = BTreeMap::new();
        let mut next_key = 1000;
        let _ = tr.poll(&o, &VLLM_0_33, pool).expect("poll");
        let mut polled = keys.clone();
        // Insertion order, for evicting the oldest (the fixture's and vLLM's LRU).
        let mut order: Vec<u64> = Vec::new();
        let mut free: std::collections::VecDeque<u64> = (1..64).collect();
        for round in 0..300 {
            let mut ops = Vec::new();
            for _ in 0..(next() % 12) {
                if next() % 2 == 0 && !order.is_empty() {
                    let n = 1 + (next() % 6) as usize;
                    for b in order.drain(..n.min(order.len())) {
                        keys.remove(&b);
                        free.push_back(b);
                        ops.push(json!(["evict", b]));
                    }
                } else if let Some(b) = free.pop_front() {
                    keys.insert(b, next_key);
                    order.push(b);
                    ops.push(json!(["cache", b, next_key, 0]));
                    next_key += 1;
                }
            }
            t.ops(json!(ops));
            let p = tr.poll(&o, &VLLM_0_33, pool).expect("poll");
            let want: BTreeSet<i64> = polled
                .iter()
                .filter(|(b, k)| keys.get(b) != Some(k))
                .map(|(b, _)| *b as i64)
                .collect();
            assert_eq!(ids(&p), want, "{}: round {round}: {p:?}", py.display());
            for e in &p.evictions {
                let b = e.block_id.expect("id") as u64;
                assert_eq!(e.rehashed, keys.contains_key(&b), "round {round}: {e:?}");
            }
            assert_eq!(p.cached as usize, keys.len(), "round {round}");
            polled = keys.clone();
        }
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
