//! Reading live Python objects of a target, read-only: type names, ints, floats, bools,
//! strs, lists, tuples, dicts, deques, and instance attributes (managed dicts and inline
//! values of 3.11-3.13, `tp_dictoffset` dicts, `__slots__`). Every read is bounded and
//! type-checked; a torn or implausible read is an error, never data.

use std::{
    cell::RefCell,
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{
    code::read_str,
    layout::PyLayout,
    remote::{field, ReadError, RemoteMemory},
};

/// Items read from one container at most.
pub const MAX_ITEMS: usize = 100_000;
/// Bytes of a C string (type names) read at most.
const MAX_CSTR: usize = 256;
/// A reference count above this is not a live object's (3.12+ immortal objects have 2^32-1).
const MAX_REFCOUNT: u64 = 1 << 40;

/// How instance attributes are stored, per version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ManagedDict {
    /// 3.11: dict pointer at -3 words, values pointer at -4 words.
    Split311,
    /// 3.12: one tagged word at -3 words: the values pointer minus 1 (odd), or the dict.
    Tagged312,
    /// 3.13: values inline after the object (`Py_TPFLAGS_INLINE_VALUES`), dict at -3 words.
    Inline313,
}

/// Object offsets of one CPython version (x86-64, default build).
#[derive(Clone, Copy, Debug)]
pub struct ObjectLayout {
    managed: ManagedDict,
    /// 3.12+: ints carry `lv_tag` (digit count << 3 | sign) instead of a signed size.
    long_tagged: bool,
    ht_cached_keys: u64,
    /// Offset of the value array inside `PyDictValues`.
    values_array: u64,
}

const TP_NAME: u64 = 24;
const TP_BASICSIZE: u64 = 32;
const TP_FLAGS: u64 = 168;
const TP_BASE: u64 = 256;
const TP_DICT: u64 = 264;
const TP_DICTOFFSET: u64 = 288;
const TP_MRO: u64 = 344;
const OB_SIZE: u64 = 16;
/// Items per block of a `collections.deque`, and a block's bytes (left link, items, right
/// link).
const DEQUE_BLOCK_LEN: u64 = 64;
const DEQUE_BLOCK_BYTES: usize = 8 + 8 * DEQUE_BLOCK_LEN as usize + 8;
const ITEMS: u64 = 24;
const FLOAT_VALUE: u64 = 16;
const DICT_USED: u64 = 16;
const DICT_VERSION: u64 = 24;
/// `PyASCIIObject.hash`.
const STR_HASH: u64 = 24;
const SET_USED: u64 = 24;
const SET_MASK: u64 = 32;
const SET_TABLE: u64 = 40;
const DICT_KEYS: u64 = 32;
const DICT_VALUES: u64 = 40;
/// `dk_log2_size`, followed by the bytes `dk_log2_index_bytes` and `dk_kind`.
const KEYS_LOG2_SIZE: u64 = 8;
const KEYS_NENTRIES: u64 = 24;
const KEYS_INDICES: u64 = 32;
const MEMBER_DESCR_MEMBER: u64 = 40;
const MEMBER_DEF_OFFSET: u64 = 16;
/// `PyFunctionObject.func_code` (after the object header and `func_globals`,
/// `func_builtins`, `func_name`, `func_qualname`; 3.11-3.14).
const FUNC_CODE: u64 = 48;
const FLAG_MANAGED_DICT: u64 = 1 << 4;
const FLAG_INLINE_VALUES: u64 = 1 << 2;
const FLAG_LONG_SUBCLASS: u64 = 1 << 24;
const FLAG_LIST_SUBCLASS: u64 = 1 << 25;
const FLAG_TUPLE_SUBCLASS: u64 = 1 << 26;
const FLAG_DICT_SUBCLASS: u64 = 1 << 29;

/// 3.11 objects.
pub(super) const OBJECTS_311: ObjectLayout = ObjectLayout {
    managed: ManagedDict::Split311,
    long_tagged: false,
    ht_cached_keys: 872,
    values_array: 0,
};
/// 3.12 objects.
pub(super) const OBJECTS_312: ObjectLayout = ObjectLayout {
    managed: ManagedDict::Tagged312,
    long_tagged: true,
    ht_cached_keys: 880,
    values_array: 0,
};
/// 3.13 objects.
pub(super) const OBJECTS_313: ObjectLayout = ObjectLayout {
    managed: ManagedDict::Inline313,
    long_tagged: true,
    ht_cached_keys: 880,
    values_array: 8,
};

/// The object layout of `version`, if ProfileMate reads that version's objects (its row in
/// `versions`).
#[must_use]
pub fn object_layout(version: (u8, u8)) -> Option<ObjectLayout> {
    super::versions::row(version).and_then(|r| r.objects)
}

/// A read that did not yield a value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ObjectError {
    /// Memory could not be read (freed, unmapped, process gone).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The object is not of the expected type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the caller asked for.
        expected: &'static str,
        /// The object's type name.
        found: String,
    },
    /// A header field is implausible (torn read, freed object).
    #[error("implausible object at {0:#x}")]
    Implausible(u64),
    /// An int does not fit 64 bits.
    #[error("int at {0:#x} does not fit 64 bits")]
    TooLarge(u64),
    /// A string field could not be read.
    #[error("unreadable str at {0:#x}")]
    BadString(u64),
}

/// Where str keys sit in dict keys objects, learned once per keys object: a class's
/// instances share one split keys object, and an object with a combined dict (a real vLLM
/// `Scheduler` has more attributes than 3.11 shares) keeps its keys object until the dict
/// grows, so after the first lookup an attribute costs two reads (the key check and the
/// value) instead of a scan reading every key string (~2 ms per snapshot on a real
/// scheduler, which tore every poll).
#[derive(Default)]
pub struct AttrCache {
    /// keys object -> attribute name -> (address of the entry's key, the key str object,
    /// index in the entries).
    slots: RefCell<HashMap<u64, HashMap<String, SplitPosition>>>,
    /// keys object -> attribute name -> the entry count when the name was not found (keys
    /// are only appended: the same count means still absent).
    misses: RefCell<HashMap<u64, HashMap<String, u64>>>,
    /// Attribute name -> (a str object holding it, its hash, when that was last checked):
    /// attribute names are interned, so every instance dict's entry for a name points at
    /// the same str, and a new dict's entry is found by comparing pointers, without reading
    /// a key string.
    interned: RefCell<HashMap<String, (u64, u64, Instant)>>,
}

/// Where a keys object's entries are and how they are laid out.
struct KeyEntries {
    base: u64,
    size: u64,
    /// Offset of the key pointer inside an entry.
    key_at: u64,
    /// `dk_nentries`: entries used so far (keys are only appended).
    nentries: u64,
}

/// An instance's split dict.
struct SplitValues {
    keys: u64,
    array: u64,
}

/// Where an instance's attributes live, for re-reading them all in one batch: a split
/// values array, or the entries table of the instance's own combined dict. The batch reads
/// `HEAD_LEN` bytes from `obj - HEAD_BEFORE`, the dict's keys pointer (a dict) and the
/// array; the locations still hold while the head's words and the keys pointer are
/// unchanged (a materialized or resized dict, a moved values array or another object at the
/// address changes one of them). Attribute values are immutable objects or containers whose
/// identity is what changes: an unchanged pointer is an unchanged value for the ints,
/// floats, strs and enum members an instance holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrSlots {
    /// The instance's type.
    pub ty: u64,
    /// The words of the head that locate the values: `obj - 32` (3.11's values pointer),
    /// `obj - 24` (the managed dict or tagged values pointer) and the type pointer.
    pub words: [u64; 3],
    /// The instance's own dict and its keys object, when the values are that dict's
    /// entries (None: a split values array).
    pub dict: Option<(u64, u64)>,
    /// Address of the values array or the entries table.
    pub array: u64,
    /// Bytes per element of `array` (8 in a values array; 16 or 24 per dict entry).
    pub stride: u64,
    /// Offset of the value pointer inside an element.
    pub value_at: u64,
    /// Element of each name (None: the instance lacks it).
    pub index: Vec<Option<u64>>,
}

impl AttrSlots {
    /// Bytes read before the object (the managed-dict pre-header).
    pub const HEAD_BEFORE: u64 = 32;
    /// Bytes of the head read: the pre-header's two words before the GC links (which change
    /// at every collection and are left out of the comparison), and the object's refcount and
    /// type.
    pub const HEAD_LEN: usize = 48;
    /// Offset of a dict's keys pointer (read with the batch to see a resize).
    pub const DICT_KEYS: u64 = DICT_KEYS;

    /// The locating words of a head read at `obj - HEAD_BEFORE`.
    #[must_use]
    pub fn words(head: &[u8]) -> [u64; 3] {
        [word_at(head, 0), word_at(head, 8), word_at(head, 40)]
    }

    /// Bytes to read from `array`: up to the highest element used.
    #[must_use]
    pub fn array_bytes(&self) -> usize {
        self.index
            .iter()
            .flatten()
            .max()
            .map_or(0, |&i| ((i + 1) * self.stride) as usize)
    }

    /// The value pointer of name `n` in `array_bytes` bytes read from `array` (0: absent).
    #[must_use]
    pub fn value(&self, bytes: &[u8], n: usize) -> u64 {
        self.index.get(n).copied().flatten().map_or(0, |i| {
            word_at(bytes, (i * self.stride + self.value_at) as usize)
        })
    }
}

/// The little-endian word at byte `at` of `b` (0 past its end).
fn word_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|w| w.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// A dict's live entries: (position in the keys object, key, value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DictEntries {
    /// The keys object (a new one after every resize).
    pub keys: u64,
    /// (position, key, value) of each live entry.
    pub entries: Vec<(usize, u64, u64)>,
}

/// Every entry slot of a combined dict (see `Objects::dict_slots`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DictSlots {
    /// The keys object (a new one after every resize).
    pub keys: u64,
    /// `ma_version_tag`: changes with every modification.
    pub version: u64,
    /// `ma_used`: live entries.
    pub used: u64,
    /// (hash, key, value) per slot in insertion order; key 0: deleted. The hash is the
    /// key's (general keys objects store it; 0 for str-only keys).
    pub slots: Vec<(u64, u64, u64)>,
}

/// Where an instance's attributes live.
enum Storage {
    /// A split dict: the class's shared keys and the instance's values array.
    Split(SplitValues),
    /// The instance's own dict object.
    Dict(u64),
    /// Neither (no dict yet, slots only) or no cache: the one-by-one path.
    Other,
}

/// (address of the entry's key pointer, the key object, index in the values array).
type SplitPosition = (u64, u64, u64);

/// How long an interned attribute name's str is trusted before its hash is checked again.
const INTERNED_RECHECK: Duration = Duration::from_millis(100);

/// Keys objects remembered at most (classes with split dicts: a few dozen in vLLM).
const MAX_CACHED_KEYS: usize = 4096;

/// Reads objects of one process.
pub struct Objects<'a> {
    mem: &'a dyn RemoteMemory,
    layout: &'a PyLayout,
    ol: ObjectLayout,
    cache: Option<&'a AttrCache>,
}

impl<'a> Objects<'a> {
    /// A reader over `mem` for an interpreter with `layout` and object layout `ol`.
    #[must_use]
    pub fn new(mem: &'a dyn RemoteMemory, layout: &'a PyLayout, ol: ObjectLayout) -> Self {
        Self {
            mem,
            layout,
            ol,
            cache: None,
        }
    }

    /// The same reader, remembering attribute positions in `cache` across reads.
    #[must_use]
    pub fn with_cache(self, cache: &'a AttrCache) -> Self {
        Self {
            cache: Some(cache),
            ..self
        }
    }

    /// The memory read.
    #[must_use]
    pub fn memory(&self) -> &'a dyn RemoteMemory {
        self.mem
    }

    fn u64(&self, addr: u64) -> Result<u64, ObjectError> {
        Ok(self.mem.read_u64(addr)?)
    }

    /// The word `offset` bytes into the object at `base` (a pointer read from the target: the
    /// sum is checked, a corrupt pointer near the top of the address space is unreadable).
    fn at(&self, base: u64, offset: u64) -> Result<u64, ObjectError> {
        self.u64(field(base, offset)?)
    }

    /// The word `offset` bytes before the object at `obj` (the managed-dict words of 3.11+).
    fn before(&self, obj: u64, offset: u64) -> Result<u64, ObjectError> {
        self.u64(
            obj.checked_sub(offset)
                .ok_or(ObjectError::Implausible(obj))?,
        )
    }

    /// The object's type, after sanity checks of its header.
    pub fn type_of(&self, obj: u64) -> Result<u64, ObjectError> {
        if obj == 0 || !obj.is_multiple_of(8) {
            return Err(ObjectError::Implausible(obj));
        }
        // Refcount and type in one read where the type follows the refcount.
        let (refcnt, ty) = if self.layout.object_type == 8 {
            let mut head = [0u8; 16];
            self.mem.read(obj, &mut head)?;
            (word_at(&head, 0), word_at(&head, 8))
        } else {
            (self.u64(obj)?, self.at(obj, self.layout.object_type)?)
        };
        if refcnt == 0 || refcnt > MAX_REFCOUNT || ty == 0 || !ty.is_multiple_of(8) {
            return Err(ObjectError::Implausible(obj));
        }
        Ok(ty)
    }

    /// `tp_flags` of a type.
    pub fn type_flags(&self, ty: u64) -> Result<u64, ObjectError> {
        self.at(ty, TP_FLAGS)
    }

    /// The type's `tp_name` (for heap types the bare class name).
    pub fn type_name(&self, obj: u64) -> Result<String, ObjectError> {
        let ty = self.type_of(obj)?;
        let name = self.at(ty, TP_NAME)?;
        let mut buf = [0u8; MAX_CSTR];
        // Names are short; read what is readable in two steps (a page end may follow).
        self.mem
            .read(name, &mut buf[..64])
            .map_err(ObjectError::Read)?;
        if !buf[..64].contains(&0) {
            if let Ok(rest) = field(name, 64) {
                let _ = self.mem.read(rest, &mut buf[64..]);
            }
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(MAX_CSTR);
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    fn expect(&self, obj: u64, names: &[&str], expected: &'static str) -> Result<(), ObjectError> {
        let found = self.type_name(obj)?;
        if names.contains(&found.as_str()) {
            Ok(())
        } else {
            Err(ObjectError::WrongType { expected, found })
        }
    }

    /// Checks that `obj`'s type carries the subclass flag `flag` (the object is an
    /// `expected`, or a subclass of one).
    fn expect_flag(&self, obj: u64, flag: u64, expected: &'static str) -> Result<(), ObjectError> {
        if self.type_flags(self.type_of(obj)?)? & flag != 0 {
            return Ok(());
        }
        Err(ObjectError::WrongType {
            expected,
            found: self.type_name(obj)?,
        })
    }

    /// An int (or bool, or IntEnum member: any int subclass) that fits 64 bits. One read of
    /// the header and up to three digits, one of the type's flags.
    pub fn int(&self, obj: u64) -> Result<i64, ObjectError> {
        if obj == 0 || !obj.is_multiple_of(8) {
            return Err(ObjectError::Implausible(obj));
        }
        let mut buf = [0u8; 40];
        self.mem.read(obj, &mut buf)?;
        // `object_type` comes from the target's debug offsets on 3.13+: outside the header
        // read, the type reads as 0 (implausible).
        let word = |i: usize| {
            buf.get(i..i.saturating_add(8))
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        let (refcnt, ty) = (word(0), word(self.layout.object_type as usize));
        if refcnt == 0 || refcnt > MAX_REFCOUNT || ty == 0 || !ty.is_multiple_of(8) {
            return Err(ObjectError::Implausible(obj));
        }
        if self.type_flags(ty)? & FLAG_LONG_SUBCLASS == 0 {
            return Err(ObjectError::WrongType {
                expected: "int",
                found: self.type_name(obj)?,
            });
        }
        let head = word(OB_SIZE as usize);
        let (ndigits, negative) = if self.ol.long_tagged {
            (head >> 3, head & 3 == 2)
        } else {
            let size = head as i64;
            (size.unsigned_abs(), size < 0)
        };
        if ndigits > 3 {
            return Err(ObjectError::TooLarge(obj));
        }
        let mut value: u128 = 0;
        for i in 0..ndigits as usize {
            let at = ITEMS as usize + 4 * i;
            let digit = u32::from_le_bytes(buf[at..at + 4].try_into().unwrap_or([0; 4]));
            value |= u128::from(digit & ((1 << 30) - 1)) << (30 * i);
        }
        let value = i64::try_from(value).map_err(|_| ObjectError::TooLarge(obj))?;
        Ok(if negative { -value } else { value })
    }

    /// A float.
    pub fn float(&self, obj: u64) -> Result<f64, ObjectError> {
        self.expect(obj, &["float"], "float")?;
        Ok(f64::from_bits(self.at(obj, FLOAT_VALUE)?))
    }

    /// A str (bounded, lossy).
    pub fn str(&self, obj: u64) -> Result<String, ObjectError> {
        self.expect(obj, &["str"], "str")?;
        read_str(self.mem, self.layout, obj).map_err(|_| ObjectError::BadString(obj))
    }

    /// The cached hash of a str (-1 as u64 when not computed yet): an identity check for
    /// strs remembered by address.
    pub fn str_hash(&self, obj: u64) -> Result<u64, ObjectError> {
        self.at(obj, STR_HASH)
    }

    /// True for `None`.
    pub fn is_none(&self, obj: u64) -> Result<bool, ObjectError> {
        Ok(self.type_name(obj)? == "NoneType")
    }

    /// Length of a list, tuple or deque (`ob_size`), or a dict (`ma_used`).
    pub fn len(&self, obj: u64) -> Result<u64, ObjectError> {
        let is_dict = self.type_flags(self.type_of(obj)?)? & FLAG_DICT_SUBCLASS != 0;
        let n = self.at(obj, if is_dict { DICT_USED } else { OB_SIZE })?;
        if n as usize > MAX_ITEMS * 100 {
            return Err(ObjectError::Implausible(obj));
        }
        Ok(n)
    }

    fn items(&self, base: u64, n: u64, max: usize) -> Result<Vec<u64>, ObjectError> {
        let n = (n as usize).min(max).min(MAX_ITEMS);
        let mut buf = vec![0u8; n * 8];
        self.mem.read(base, &mut buf)?;
        Ok(buf
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }

    /// Items of a list (or list subclass), at most `max`.
    pub fn list_items(&self, obj: u64, max: usize) -> Result<Vec<u64>, ObjectError> {
        self.expect_flag(obj, FLAG_LIST_SUBCLASS, "list")?;
        let n = self.at(obj, OB_SIZE)?;
        let array = self.at(obj, ITEMS)?;
        if n > 0 && array == 0 {
            return Err(ObjectError::Implausible(obj));
        }
        self.items(array, n, max)
    }

    /// The first `max` items of a `collections.deque` (or a subclass: vLLM's
    /// `FCFSRequestQueue`), front first. Its items live in blocks of 64 linked left to
    /// right; the front block is read from `leftindex`.
    pub fn deque_front(&self, obj: u64, max: usize) -> Result<Vec<u64>, ObjectError> {
        self.expect_base(obj, "collections.deque", "deque")?;
        let mut head = [0u8; 32];
        self.mem.read(obj + OB_SIZE, &mut head)?;
        let (n, mut block, left) = (word_at(&head, 0), word_at(&head, 8), word_at(&head, 24));
        if n > MAX_ITEMS as u64 * 100 || left >= DEQUE_BLOCK_LEN || (n > 0 && block == 0) {
            return Err(ObjectError::Implausible(obj));
        }
        let want = (n as usize).min(max).min(MAX_ITEMS);
        let mut out = Vec::with_capacity(want);
        let mut from = left as usize;
        let mut buf = vec![0u8; DEQUE_BLOCK_BYTES];
        while out.len() < want {
            self.mem.read(block, &mut buf)?;
            let data = &buf[8..8 + 8 * DEQUE_BLOCK_LEN as usize];
            let take = (DEQUE_BLOCK_LEN as usize - from).min(want - out.len());
            out.extend((from..from + take).map(|i| word_at(data, i * 8)));
            block = word_at(&buf, DEQUE_BLOCK_BYTES - 8);
            from = 0;
            if block == 0 && out.len() < want {
                return Err(ObjectError::Implausible(obj));
            }
        }
        Ok(out)
    }

    /// Checks that `obj`'s type is `name` (a `tp_name`) or derives from it (`tp_base`, at
    /// most 8 levels).
    fn expect_base(&self, obj: u64, name: &str, expected: &'static str) -> Result<(), ObjectError> {
        let mut ty = self.type_of(obj)?;
        for _ in 0..8 {
            if ty == 0 {
                break;
            }
            let mut buf = [0u8; 64];
            let at = self.at(ty, TP_NAME)?;
            if self.mem.read(at, &mut buf[..name.len() + 1]).is_ok()
                && buf[..name.len()] == *name.as_bytes()
                && buf[name.len()] == 0
            {
                return Ok(());
            }
            ty = self.at(ty, TP_BASE)?;
        }
        Err(ObjectError::WrongType {
            expected,
            found: self.type_name(obj)?,
        })
    }

    /// Items of a tuple (or tuple subclass), at most `max`.
    pub fn tuple_items(&self, obj: u64, max: usize) -> Result<Vec<u64>, ObjectError> {
        self.expect_flag(obj, FLAG_TUPLE_SUBCLASS, "tuple")?;
        let n = self.at(obj, OB_SIZE)?;
        self.items(field(obj, ITEMS)?, n, max)
    }

    /// The entry table of a dict keys object (at most `max` entries), after sanity checks of
    /// its header.
    fn key_entries(&self, keys: u64, max: usize) -> Result<(KeyEntries, Vec<u8>), ObjectError> {
        let mut head = [0u8; 3];
        self.mem.read(field(keys, KEYS_LOG2_SIZE)?, &mut head)?;
        let (log2_size, log2_index_bytes, kind) = (head[0], head[1], head[2]);
        let nentries = self.at(keys, KEYS_NENTRIES)?;
        if log2_size > 40 || log2_index_bytes > 43 || nentries > (1u64 << log2_size) {
            return Err(ObjectError::Implausible(keys));
        }
        // General entries are (hash, key, value); unicode-only ones (key, value).
        let (size, key_at) = if kind == 0 { (24, 8) } else { (16, 0) };
        let e = KeyEntries {
            base: field(keys, KEYS_INDICES + (1u64 << log2_index_bytes))?,
            size,
            key_at,
            nentries,
        };
        let n = (nentries as usize).min(max).min(MAX_ITEMS);
        let mut buf = vec![0u8; n * size as usize];
        self.mem.read(e.base, &mut buf)?;
        Ok((e, buf))
    }

    /// (key, value) pairs of a dict's keys object and optional split values array.
    fn keys_items(
        &self,
        keys: u64,
        values: Option<u64>,
        max: usize,
    ) -> Result<Vec<(usize, u64, u64)>, ObjectError> {
        let (e, buf) = self.key_entries(keys, max)?;
        let entry_size = e.size as usize;
        let n = buf.len() / entry_size;
        let k = e.key_at as usize / 8;
        let word = |b: &[u8], i: usize| {
            u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]))
        };
        let split_values = match values {
            Some(v) => Some(self.items(field(v, self.ol.values_array)?, n as u64, n)?),
            None => None,
        };
        let mut out = Vec::with_capacity(n);
        for (i, e) in buf.chunks_exact(entry_size).enumerate() {
            let (key, value) = (word(e, k), word(e, k + 1));
            let value = match &split_values {
                Some(vals) => vals.get(i).copied().unwrap_or(0),
                None => value,
            };
            // Deleted entries and unset split slots.
            if key != 0 && value != 0 {
                out.push((i, key, value));
            }
        }
        Ok(out)
    }

    /// Checks that `obj` is a set or frozenset (no subclass flag exists for sets).
    fn expect_set(&self, obj: u64) -> Result<(), ObjectError> {
        self.expect(obj, &["set", "frozenset"], "set")
    }

    /// Number of items of a set.
    pub fn set_len(&self, obj: u64) -> Result<u64, ObjectError> {
        self.expect_set(obj)?;
        let used = self.at(obj, SET_USED)?;
        if used as usize > MAX_ITEMS * 100 {
            return Err(ObjectError::Implausible(obj));
        }
        Ok(used)
    }

    /// Items of a set, at most `max` (table order).
    pub fn set_items(&self, obj: u64, max: usize) -> Result<Vec<u64>, ObjectError> {
        self.expect_set(obj)?;
        let used = self.at(obj, SET_USED)?;
        let mask = self.at(obj, SET_MASK)?;
        let table = self.at(obj, SET_TABLE)?;
        // `mask + 1` cannot overflow below 2^32.
        if mask >= 1 << 32 || !(mask + 1).is_power_of_two() || used > mask + 1 || table == 0 {
            return Err(ObjectError::Implausible(obj));
        }
        let slots = ((mask + 1) as usize).min(MAX_ITEMS);
        let mut buf = vec![0u8; slots * 16];
        self.mem.read(table, &mut buf)?;
        let mut out = Vec::new();
        for e in buf.chunks_exact(16) {
            let key = u64::from_le_bytes(e[..8].try_into().unwrap_or([0; 8]));
            let hash = i64::from_le_bytes(e[8..].try_into().unwrap_or([0; 8]));
            // Empty slots are NULL; deleted ones hold the dummy key with hash -1.
            if key != 0 && hash != -1 {
                out.push(key);
                if out.len() >= max {
                    break;
                }
            }
        }
        if out.len() as u64 != used.min(max as u64) {
            // The table changed under the read.
            return Err(ObjectError::Implausible(obj));
        }
        Ok(out)
    }

    /// A dict's `ma_version_tag` (3.11-3.13): changes on every modification of any dict, so
    /// two reads of one address with equal tags saw the same unmodified dict.
    pub fn dict_version(&self, obj: u64) -> Result<u64, ObjectError> {
        self.expect_flag(obj, FLAG_DICT_SUBCLASS, "dict")?;
        self.at(obj, DICT_VERSION)
    }

    /// The name of an `enum.Enum` member (`_name_`).
    pub fn enum_name(&self, obj: u64) -> Result<String, ObjectError> {
        match self.attr(obj, "_name_")? {
            Some(n) => self.str(n),
            None => Err(ObjectError::WrongType {
                expected: "enum member",
                found: self.type_name(obj)?,
            }),
        }
    }

    /// (key, value) pairs of a dict, at most `max`.
    pub fn dict_items(&self, obj: u64, max: usize) -> Result<Vec<(u64, u64)>, ObjectError> {
        Ok(self
            .dict_entries(obj, max)?
            .entries
            .into_iter()
            .map(|(_, k, v)| (k, v))
            .collect())
    }

    /// A dict's live entries with their positions in its keys object, at most `max`. The
    /// entries of a keys object are only appended (a deleted entry's slot is never reused
    /// until a resize makes a new keys object), so (keys object, position) names one
    /// insertion even when a new key and value reuse a freed pair's addresses.
    pub fn dict_entries(&self, obj: u64, max: usize) -> Result<DictEntries, ObjectError> {
        self.expect_flag(obj, FLAG_DICT_SUBCLASS, "dict")?;
        let keys = self.at(obj, DICT_KEYS)?;
        let values = self.at(obj, DICT_VALUES)?;
        let entries = self.keys_items(keys, (values != 0).then_some(values), max)?;
        Ok(DictEntries { keys, entries })
    }

    /// Every entry slot of a combined dict (live and deleted, in insertion order), its keys
    /// object, version tag and live count, at most `max` slots (whatever `MAX_ITEMS` says:
    /// the caller bounds the read). A deleted slot has key 0; slots are only appended
    /// until a resize makes a new keys object, so slots past a count read earlier were
    /// inserted since. None when the dict holds more slots than `max` (never a truncated
    /// table) or is a split dict.
    pub fn dict_slots(&self, obj: u64, max: usize) -> Result<Option<DictSlots>, ObjectError> {
        self.expect_flag(obj, FLAG_DICT_SUBCLASS, "dict")?;
        let mut head = [0u8; 32];
        self.mem.read(field(obj, DICT_USED)?, &mut head)?;
        let (used, version, keys, values) = (
            word_at(&head, 0),
            word_at(&head, 8),
            word_at(&head, 16),
            word_at(&head, 24),
        );
        if values != 0 || keys == 0 {
            return Ok(None);
        }
        let mut kh = [0u8; 3];
        self.mem.read(field(keys, KEYS_LOG2_SIZE)?, &mut kh)?;
        let (log2_size, log2_index_bytes, kind) = (kh[0], kh[1], kh[2]);
        let nentries = self.at(keys, KEYS_NENTRIES)?;
        if log2_size > 40 || log2_index_bytes > 43 || nentries > (1u64 << log2_size) {
            return Err(ObjectError::Implausible(keys));
        }
        if nentries as usize > max || used > nentries {
            return Ok(None);
        }
        let (size, key_at) = if kind == 0 {
            (24usize, 8usize)
        } else {
            (16, 0)
        };
        let base = field(keys, KEYS_INDICES + (1u64 << log2_index_bytes))?;
        let mut buf = vec![0u8; nentries as usize * size];
        self.mem.read(base, &mut buf)?;
        let slots = buf
            .chunks_exact(size)
            .map(|e| {
                let hash = if kind == 0 { word_at(e, 0) } else { 0 };
                (hash, word_at(e, key_at), word_at(e, key_at + 8))
            })
            .collect();
        Ok(Some(DictSlots {
            keys,
            version,
            used,
            slots,
        }))
    }

    /// `(ma_used, ma_version_tag, ma_keys)` of a dict: whether it changed since a
    /// `dict_slots` read, in one read.
    pub fn dict_head(&self, obj: u64) -> Result<(u64, u64, u64), ObjectError> {
        let mut head = [0u8; 24];
        self.mem.read(field(obj, DICT_USED)?, &mut head)?;
        Ok((word_at(&head, 0), word_at(&head, 8), word_at(&head, 16)))
    }

    /// The value of str key `name` in a list of (key, value) pairs.
    fn find_str_key(&self, items: &[(u64, u64)], name: &str) -> Option<u64> {
        items.iter().find_map(|&(k, v)| {
            read_str(self.mem, self.layout, k)
                .ok()
                .filter(|s| s == name)
                .map(|_| v)
        })
    }

    /// `d[name]` for a dict with str keys.
    pub fn dict_get(&self, obj: u64, name: &str) -> Result<Option<u64>, ObjectError> {
        if self.cache.is_some() {
            let [v] = self.dict_values(obj, [name])?;
            return Ok(v);
        }
        let items = self.dict_items(obj, MAX_ITEMS)?;
        Ok(self.find_str_key(&items, name))
    }

    /// `d[name]` for several str keys of one dict: its header, entries and values are read
    /// once each, and keys are matched by the interned name's address where it is known.
    fn dict_values<const N: usize>(
        &self,
        dict: u64,
        names: [&str; N],
    ) -> Result<[Option<u64>; N], ObjectError> {
        self.expect_flag(dict, FLAG_DICT_SUBCLASS, "dict")?;
        let mut head = [0u8; 16];
        self.mem.read(field(dict, DICT_KEYS)?, &mut head)?;
        let word = |b: &[u8], i: usize| {
            u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]))
        };
        let (keys, values) = (word(&head, 0), word(&head, 1));
        let (e, buf) = self.key_entries(keys, MAX_ITEMS)?;
        let n = buf.len() / e.size as usize;
        let split = match values {
            0 => None,
            v => Some(self.items(field(v, self.ol.values_array)?, n as u64, n)?),
        };
        let k = e.key_at as usize / 8;
        let mut out = [None; N];
        for (slot, name) in out.iter_mut().zip(names) {
            let Some(i) = self.find_key_cached(keys, &e, &buf, name) else {
                continue;
            };
            let v = match &split {
                Some(vals) => vals.get(i).copied().unwrap_or(0),
                None => word(&buf[i * e.size as usize..], k + 1),
            };
            *slot = (v != 0).then_some(v);
        }
        Ok(out)
    }

    /// `find_key`, remembering a miss per keys object until an entry is added to it (a class
    /// dict of the MRO that lacks the name is not scanned again at every lookup).
    fn find_key_cached(&self, keys: u64, e: &KeyEntries, buf: &[u8], name: &str) -> Option<usize> {
        let missed = self.cache.and_then(|c| {
            c.misses
                .borrow()
                .get(&keys)
                .and_then(|m| m.get(name).copied())
        });
        if missed == Some(e.nentries) {
            return None;
        }
        let found = self.find_key(buf, e.size as usize, e.key_at as usize / 8, name);
        if let (None, Some(c)) = (found, self.cache) {
            remember(&c.misses, keys, name, e.nentries);
        }
        found
    }

    /// Index of the entry whose key is the str `name` in an entries table read into `buf`
    /// (`size` bytes per entry, key at word `k`).
    fn find_key(&self, buf: &[u8], size: usize, k: usize, name: &str) -> Option<usize> {
        let key_of =
            |e: &[u8]| u64::from_le_bytes(e[k * 8..k * 8 + 8].try_into().unwrap_or([0; 8]));
        let keys = || buf.chunks_exact(size).map(key_of);
        let known = self
            .cache
            .and_then(|c| c.interned.borrow().get(name).copied());
        if let Some((addr, hash, checked)) = known {
            if let Some(i) = keys().position(|key| key == addr) {
                // Still the same str? (its hash is fixed for its lifetime; checked again
                // now and then, not at every lookup)
                if checked.elapsed() < INTERNED_RECHECK {
                    return Some(i);
                }
                if self.str_hash(addr).is_ok_and(|h| h == hash) {
                    self.note_interned(name, addr, hash);
                    return Some(i);
                }
            }
        }
        let i = keys().position(|key| {
            key != 0 && read_str(self.mem, self.layout, key).is_ok_and(|s| s == name)
        })?;
        let addr = keys().nth(i).unwrap_or(0);
        if let Ok(hash) = self.str_hash(addr) {
            self.note_interned(name, addr, hash);
        }
        Some(i)
    }

    /// Remembers (or re-stamps) the str at `addr` as holding `name`.
    fn note_interned(&self, name: &str, addr: u64, hash: u64) {
        if let Some(c) = self.cache {
            let mut interned = c.interned.borrow_mut();
            if interned.len() >= MAX_CACHED_KEYS {
                interned.clear();
            }
            interned.insert(name.to_owned(), (addr, hash, Instant::now()));
        }
    }

    /// The instance's attribute `name` from its `__dict__` (managed, inline values, or
    /// `tp_dictoffset`) or a `__slots__` member; None when it has no such attribute.
    pub fn attr(&self, obj: u64, name: &str) -> Result<Option<u64>, ObjectError> {
        let ty = self.type_of(obj)?;
        let flags = self.type_flags(ty)?;
        if flags & FLAG_MANAGED_DICT != 0 {
            if let Some(v) = self.managed_attr(obj, ty, flags, name)? {
                return Ok(Some(v));
            }
        } else {
            let off = self.at(ty, TP_DICTOFFSET)? as i64;
            if off > 0 {
                let dict = self.at(obj, off as u64)?;
                if dict != 0 {
                    if let Some(v) = self.dict_get(dict, name)? {
                        return Ok(Some(v));
                    }
                }
            }
        }
        self.slot_attr(obj, ty, name)
    }

    /// Several attributes of one instance; with a cache this reads the instance's header
    /// once and its split values array or its own dict's entries once.
    pub fn attrs<const N: usize>(
        &self,
        obj: u64,
        names: [&str; N],
    ) -> Result<[Option<u64>; N], ObjectError> {
        let (storage, ty) = self.storage(obj)?;
        let mut out = match storage {
            Storage::Split(values) => self.split_attrs(&values, names)?,
            Storage::Dict(dict) => self.dict_values(dict, names)?,
            Storage::Other => {
                let mut out = [None; N];
                for (slot, name) in out.iter_mut().zip(names) {
                    *slot = self.attr(obj, name)?;
                }
                return Ok(out);
            }
        };
        // A name the dict lacks may still be a slot.
        for (slot, name) in out.iter_mut().zip(names) {
            if slot.is_none() {
                *slot = self.slot_attr(obj, ty, name)?;
            }
        }
        Ok(out)
    }

    fn split_attrs<const N: usize>(
        &self,
        values: &SplitValues,
        names: [&str; N],
    ) -> Result<[Option<u64>; N], ObjectError> {
        let mut out = [None; N];
        let known: Vec<_> = names
            .iter()
            .map(|n| self.cached_position(values.keys, n))
            .collect::<Result<_, _>>()?;
        if let Some(max) = known.iter().flatten().map(|&(_, _, i)| i).max() {
            let vals = self.items(values.array, max + 1, MAX_ITEMS)?;
            for (slot, k) in out.iter_mut().zip(&known) {
                *slot = k
                    .and_then(|(_, _, i)| vals.get(i as usize).copied())
                    .filter(|&v| v != 0);
            }
        }
        Ok(out)
    }

    /// Where the instance's attributes live, as far as the cached paths read them (always
    /// `Other` without a cache), and its type.
    fn storage(&self, obj: u64) -> Result<(Storage, u64), ObjectError> {
        if self.cache.is_none() {
            return Ok((Storage::Other, 0));
        }
        let ty = self.type_of(obj)?;
        let flags = self.type_flags(ty)?;
        if flags & FLAG_MANAGED_DICT == 0 {
            let off = self.at(ty, TP_DICTOFFSET)? as i64;
            let dict = if off > 0 {
                self.at(obj, off as u64)?
            } else {
                0
            };
            let storage = if dict != 0 {
                Storage::Dict(dict)
            } else {
                Storage::Other
            };
            return Ok((storage, ty));
        }
        let word = self.before(obj, 24)?;
        let values = match self.ol.managed {
            ManagedDict::Split311 if word != 0 => return Ok((Storage::Dict(word), ty)),
            ManagedDict::Split311 => self.before(obj, 32)?,
            ManagedDict::Tagged312 if word & 1 == 0 && word != 0 => {
                return Ok((Storage::Dict(word), ty))
            }
            ManagedDict::Tagged312 if word & 1 == 0 => 0,
            // Odd: the values pointer minus 1 (u64::MAX is no pointer).
            ManagedDict::Tagged312 => word.checked_add(1).unwrap_or(0),
            ManagedDict::Inline313 if word != 0 => return Ok((Storage::Dict(word), ty)),
            ManagedDict::Inline313 if flags & FLAG_INLINE_VALUES == 0 => 0,
            ManagedDict::Inline313 => field(obj, self.at(ty, TP_BASICSIZE)?)?,
        };
        let keys = self.at(ty, self.ol.ht_cached_keys)?;
        if values == 0 || keys == 0 {
            return Ok((Storage::Other, ty));
        }
        let split = SplitValues {
            keys,
            array: field(values, self.ol.values_array)?,
        };
        Ok((Storage::Split(split), ty))
    }

    /// Where the attributes `names` of `obj` live, for re-reading all of them with one
    /// batched read (`AttrSlots`): a split values array, or the entries of the instance's own
    /// combined dict. None for other storage (slots, a dict at `tp_dictoffset`) or without a
    /// cache.
    pub fn attr_slots(&self, obj: u64, names: &[&str]) -> Result<Option<AttrSlots>, ObjectError> {
        let (storage, ty) = self.storage(obj)?;
        let mut head = [0u8; AttrSlots::HEAD_LEN];
        self.mem
            .read(obj.wrapping_sub(AttrSlots::HEAD_BEFORE), &mut head)?;
        let words = AttrSlots::words(&head);
        let managed = self.type_flags(ty)? & FLAG_MANAGED_DICT != 0;
        let mut index = Vec::with_capacity(names.len());
        let slots = match storage {
            Storage::Split(values) => {
                for name in names {
                    index.push(self.cached_position(values.keys, name)?.map(|(_, _, i)| i));
                }
                AttrSlots {
                    ty,
                    words,
                    dict: None,
                    array: values.array,
                    stride: 8,
                    value_at: 0,
                    index,
                }
            }
            // Only a managed dict's pointer is in the head the batch compares.
            Storage::Dict(dict) if managed && words[1] == dict => {
                let keys = self.at(dict, DICT_KEYS)?;
                if self.at(dict, DICT_VALUES)? != 0 {
                    return Ok(None);
                }
                let (e, buf) = self.key_entries(keys, MAX_ITEMS)?;
                for name in names {
                    let i = self.find_key_cached(keys, &e, &buf, name);
                    index.push(i.map(|i| i as u64));
                }
                AttrSlots {
                    ty,
                    words,
                    dict: Some((dict, keys)),
                    array: e.base,
                    stride: e.size,
                    value_at: e.key_at + 8,
                    index,
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(slots))
    }

    /// The cached (validated) or newly found position of `name` in split keys `keys`.
    fn cached_position(
        &self,
        keys: u64,
        name: &str,
    ) -> Result<Option<(u64, u64, u64)>, ObjectError> {
        let Some(cache) = self.cache else {
            return self.split_position(keys, name);
        };
        let known = cache
            .slots
            .borrow()
            .get(&keys)
            .and_then(|m| m.get(name).copied());
        if let Some((entry, key, index)) = known {
            if self.u64(entry)? == key {
                return Ok(Some((entry, key, index)));
            }
        }
        let missed = cache
            .misses
            .borrow()
            .get(&keys)
            .and_then(|m| m.get(name).copied());
        let nentries = self.at(keys, KEYS_NENTRIES)?;
        if missed == Some(nentries) {
            return Ok(None);
        }
        let found = self.split_position(keys, name)?;
        match found {
            Some(pos) => remember(&cache.slots, keys, name, pos),
            None => remember(&cache.misses, keys, name, nentries),
        }
        Ok(found)
    }

    fn managed_attr(
        &self,
        obj: u64,
        ty: u64,
        flags: u64,
        name: &str,
    ) -> Result<Option<u64>, ObjectError> {
        let cached_keys = || self.at(ty, self.ol.ht_cached_keys);
        let (dict, values) = match self.ol.managed {
            ManagedDict::Split311 => (self.before(obj, 24)?, self.before(obj, 32)?),
            ManagedDict::Tagged312 => {
                let w = self.before(obj, 24)?;
                if w & 1 == 1 {
                    (0, w.checked_add(1).unwrap_or(0))
                } else {
                    (w, 0)
                }
            }
            ManagedDict::Inline313 => {
                let dict = self.before(obj, 24)?;
                let values = if dict == 0 && flags & FLAG_INLINE_VALUES != 0 {
                    field(obj, self.at(ty, TP_BASICSIZE)?)?
                } else {
                    0
                };
                (dict, values)
            }
        };
        if dict != 0 {
            return self.dict_get(dict, name);
        }
        if values != 0 {
            let keys = cached_keys()?;
            if keys == 0 {
                return Ok(None);
            }
            if self.cache.is_some() {
                return Ok(match self.cached_position(keys, name)? {
                    Some((_, _, index)) => {
                        let v = self.at(values, self.ol.values_array + 8 * index)?;
                        (v != 0).then_some(v)
                    }
                    None => None,
                });
            }
            let items: Vec<(u64, u64)> = self
                .keys_items(keys, Some(values), MAX_ITEMS)?
                .into_iter()
                .map(|(_, k, v)| (k, v))
                .collect();
            return Ok(self.find_str_key(&items, name));
        }
        Ok(None)
    }

    /// Where str key `name` sits in a split keys object: (address of the entry's key
    /// pointer, the key object, index).
    fn split_position(
        &self,
        keys: u64,
        name: &str,
    ) -> Result<Option<(u64, u64, u64)>, ObjectError> {
        let (e, buf) = self.key_entries(keys, MAX_ITEMS)?;
        for (i, entry) in buf.chunks_exact(e.size as usize).enumerate() {
            let at = e.key_at as usize;
            let key = u64::from_le_bytes(entry[at..at + 8].try_into().unwrap_or([0; 8]));
            if key != 0 && read_str(self.mem, self.layout, key).is_ok_and(|s| s == name) {
                let entry = field(e.base, i as u64 * e.size + e.key_at)?;
                return Ok(Some((entry, key, i as u64)));
            }
        }
        Ok(None)
    }

    /// `name` as the class `ty` resolves it: the first type dict of its MRO that has it.
    pub fn class_attr(&self, ty: u64, name: &str) -> Result<Option<u64>, ObjectError> {
        let mro = self.at(ty, TP_MRO)?;
        if mro == 0 {
            return Ok(None);
        }
        for t in self.tuple_items(mro, 64)? {
            let tdict = self.at(t, TP_DICT)?;
            if tdict == 0 {
                continue;
            }
            if let Ok(Some(v)) = self.dict_get(tdict, name) {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The code object of the plain Python function `func` (`func.__code__`); None for
    /// anything that is not a `function`.
    pub fn function_code(&self, func: u64) -> Result<Option<u64>, ObjectError> {
        if self.type_name(func)? != "function" {
            return Ok(None);
        }
        let code = self.at(func, FUNC_CODE)?;
        if code == 0 || self.type_name(code)? != "code" {
            return Err(ObjectError::Implausible(func));
        }
        Ok(Some(code))
    }

    /// A `__slots__` member: a member descriptor in a type dict of the MRO.
    fn slot_attr(&self, obj: u64, ty: u64, name: &str) -> Result<Option<u64>, ObjectError> {
        let Some(off) = self.slot_offset(ty, name)? else {
            return Ok(None);
        };
        let v = self.at(obj, off)?;
        Ok((v != 0).then_some(v))
    }

    /// The byte offset of `__slots__` member `name` in instances of `ty` (None: `name` is
    /// not a slot of the class), from its member descriptor: the object word there is the
    /// value, for batched reads of many instances.
    pub fn slot_offset(&self, ty: u64, name: &str) -> Result<Option<u64>, ObjectError> {
        let Some(descr) = self.class_attr(ty, name)? else {
            return Ok(None);
        };
        if self.type_name(descr)? != "member_descriptor" {
            return Ok(None);
        }
        let def = self.at(descr, MEMBER_DESCR_MEMBER)?;
        let off = self.at(def, MEMBER_DEF_OFFSET)?;
        if off == 0 || off > 1 << 20 {
            return Err(ObjectError::Implausible(descr));
        }
        Ok(Some(off))
    }
}

/// Stores `v` for (`keys`, `name`), starting over when too many keys objects are known.
fn remember<V>(map: &RefCell<HashMap<u64, HashMap<String, V>>>, keys: u64, name: &str, v: V) {
    let mut map = map.borrow_mut();
    if map.len() >= MAX_CACHED_KEYS {
        map.clear();
    }
    map.entry(keys).or_default().insert(name.to_owned(), v);
}

/// What tests of readers over live objects share.
#[cfg(test)]
pub mod tests_support {
    /// The CPython interpreters present to read live objects of: Debian's 3.11 and the
    /// pyenv 3.11-3.13 builds.
    pub fn interpreters() -> Vec<std::path::PathBuf> {
        let mut v = vec![std::path::PathBuf::from("/usr/bin/python3.11")];
        if let Ok(home) = std::env::var("HOME") {
            for m in ["3.11.7", "3.12.1", "3.13.0"] {
                let minor = &m[..4];
                v.push(format!("{home}/.pyenv/versions/{m}/bin/python{minor}").into());
            }
        }
        v.into_iter().filter(|p| p.exists()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
    };

    use super::*;
    use crate::python::{
        self,
        layout::PY312,
        remote::{BufferMemory, ProcessMemory},
    };

    /// Memory in which every address reads as data: the word at each 8-byte step is `f` of
    /// its address, so a wrapped address would be read rather than fail.
    struct Words<F: Fn(u64) -> u64>(F);

    impl<F: Fn(u64) -> u64> RemoteMemory for Words<F> {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            for (i, chunk) in buf.chunks_mut(8).enumerate() {
                let word = (self.0)(addr.wrapping_add(8 * i as u64)).to_le_bytes();
                chunk.copy_from_slice(&word[..chunk.len()]);
            }
            Ok(())
        }
    }

    #[test]
    fn managed_dict_words_below_address_24_are_implausible_not_wrapped() {
        // Every word is 16 (a plausible refcount, an aligned type whose flags say "managed
        // dict") but at the top of memory, where the words 24 and 32 bytes below object 16
        // would wrap to: there a wrapped read would find no dict and go on to the class.
        let mem = Words(|a| if a > u64::MAX - 64 { 0 } else { 16 });
        for minor in [11, 12, 13] {
            let ol = object_layout((3, minor)).expect("layout");
            let o = Objects::new(&mem, &PY312, ol);
            assert!(
                matches!(o.attr(16, "x"), Err(ObjectError::Implausible(16))),
                "3.{minor}"
            );
        }
    }

    #[test]
    fn inline_values_past_the_end_of_the_address_space_are_unreadable_not_wrapped() {
        // Found by the object_reader fuzz target: a 3.13 instance near the top of memory whose
        // type claims a basic size that carries `obj + tp_basicsize` past u64::MAX.
        const TY: u64 = 0x10_0000;
        let obj = u64::MAX - 0xfff;
        let mem = Words(|a| match a {
            a if a == obj => 1,
            a if a == obj + 8 => TY,
            a if a == TY + TP_FLAGS => FLAG_MANAGED_DICT | FLAG_INLINE_VALUES,
            a if a == TY + TP_BASICSIZE => 0x2000,
            a if a == TY + 880 => 0x20_0000,
            _ => 0,
        });
        let o = Objects::new(&mem, &PY312, object_layout((3, 13)).expect("layout"));
        assert!(matches!(
            o.attr(obj, "x"),
            Err(ObjectError::Read(ReadError { addr, .. })) if addr == obj
        ));
    }

    #[test]
    fn an_ob_type_offset_outside_the_int_header_is_implausible_not_a_panic() {
        // 3.13+ take `ob_type`'s offset from the target's debug offsets (up to 0xffff): one
        // past the 40 bytes `int` reads at once indexed out of its buffer.
        let layout = PyLayout {
            object_type: 64,
            ..PY312
        };
        let mut bytes = vec![8; 0x100];
        bytes[..8].copy_from_slice(&1u64.to_le_bytes());
        let mem = BufferMemory {
            base: 0x1000,
            bytes,
        };
        let o = Objects::new(&mem, &layout, object_layout((3, 13)).expect("layout"));
        assert!(matches!(
            o.int(0x1000),
            Err(ObjectError::Implausible(0x1000))
        ));
    }

    const SCRIPT: &str = r#"
import collections, dataclasses, enum, json, sys
class Status(enum.IntEnum):
    RUNNING = 5
    PREEMPTED = 6
@dataclasses.dataclass
class Request:
    request_id: str
    num_prompt_tokens: int
    status: Status
    arrival_time: float
class Queue(collections.deque):
    pass
class Slotted:
    __slots__ = ("a", "b")
    def __init__(self):
        self.a = 7
        self.b = "slot"
class Scheduler:
    def __init__(self):
        self.requests = {"r1": Request("r1", 12, Status.RUNNING, 1.5),
                         "r2": Request("r2", 40, Status.PREEMPTED, 2.25)}
        self.running = [self.requests["r1"]]
        self.waiting = Queue([self.requests["r2"]])
        self.max_num_seqs = 256
        self.big = -(2 ** 40 + 5)
        self.name = "añ€"
        self.slotted = Slotted()
        self.pair = (1, 2)
        self.long = collections.deque()
        for i in range(150):
            self.long.appendleft(i)
        self.flag = True
        self.nothing = None
root = Scheduler()
touched = Request("r3", 1, Status.RUNNING, 0.0)
touched.__dict__["extra"] = 99  # materializes a real dict
root.touched = touched
print(json.dumps({"root": id(root)}), flush=True)
sys.stdin.read()
"#;

    use tests_support::interpreters;

    #[test]
    fn reads_live_objects_of_each_version() {
        let pythons = interpreters();
        if pythons.is_empty() {
            eprintln!("SKIP: no CPython 3.11-3.13 installed");
            return;
        }
        for py in pythons {
            let mut child = Command::new(&py)
                .args(["-c", SCRIPT])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn python");
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("root line");
            let v: serde_json::Value = serde_json::from_str(&line).expect("json");
            let root = v["root"].as_u64().expect("root id");
            let pid = child.id();
            let result = std::panic::catch_unwind(|| check(pid, root));
            let _ = child.kill();
            let _ = child.wait();
            if let Err(e) = result {
                panic!("{}: {:?}", py.display(), e.downcast_ref::<String>());
            }
        }
    }

    fn check(pid: u32, root: u64) {
        let interp = match python::find(pid) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("SKIP: cannot read pid {pid}: {e}");
                return;
            }
        };
        let (maj, min) = interp.layout.version;
        let ol = object_layout((maj, min)).expect("object layout");
        let mem = ProcessMemory::new(pid);
        let o = Objects::new(&mem, &interp.layout, ol);
        let attr = |obj: u64, name: &str| {
            o.attr(obj, name)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .unwrap_or_else(|| panic!("no attribute {name}"))
        };
        assert_eq!(o.type_name(root).expect("type"), "Scheduler");
        assert_eq!(o.int(attr(root, "max_num_seqs")).expect("int"), 256);
        assert_eq!(o.int(attr(root, "big")).expect("int"), -(1i64 << 40) - 5);
        assert_eq!(o.str(attr(root, "name")).expect("str"), "añ€");
        assert_eq!(o.int(attr(root, "flag")).expect("bool"), 1);
        assert!(o.is_none(attr(root, "nothing")).expect("none"));
        assert!(o.attr(root, "missing").expect("lookup").is_none());
        let pair = o.tuple_items(attr(root, "pair"), 10).expect("tuple");
        assert_eq!(pair.len(), 2);
        assert_eq!(o.int(pair[1]).expect("int"), 2);
        let slotted = attr(root, "slotted");
        assert_eq!(o.int(attr(slotted, "a")).expect("slot a"), 7);
        assert_eq!(o.str(attr(slotted, "b")).expect("slot b"), "slot");
        let requests = attr(root, "requests");
        assert_eq!(o.len(requests).expect("len"), 2);
        let r2 = o.dict_get(requests, "r2").expect("get").expect("r2");
        assert_eq!(o.type_name(r2).expect("type"), "Request");
        assert_eq!(o.str(attr(r2, "request_id")).expect("id"), "r2");
        assert_eq!(o.int(attr(r2, "num_prompt_tokens")).expect("n"), 40);
        assert_eq!(o.int(attr(r2, "status")).expect("status"), 6);
        assert!((o.float(attr(r2, "arrival_time")).expect("float") - 2.25).abs() < 1e-12);
        let running = o.list_items(attr(root, "running"), 10).expect("list");
        assert_eq!(running.len(), 1);
        assert_eq!(o.str(attr(running[0], "request_id")).expect("id"), "r1");
        assert_eq!(o.len(attr(root, "waiting")).expect("deque len"), 1);
        let waiting = o
            .deque_front(attr(root, "waiting"), 10)
            .expect("deque front");
        assert_eq!(o.str(attr(waiting[0], "request_id")).expect("id"), "r2");
        let long = o.deque_front(attr(root, "long"), 1000).expect("long deque");
        let values: Vec<i64> = long.iter().map(|&v| o.int(v).expect("int")).collect();
        assert_eq!(
            values,
            (0..150).rev().collect::<Vec<i64>>(),
            "front first across blocks"
        );
        assert_eq!(
            o.deque_front(attr(root, "long"), 70).expect("front").len(),
            70
        );
        assert!(o.deque_front(requests, 10).is_err(), "a dict is no deque");
        let touched = attr(root, "touched");
        assert_eq!(
            o.int(attr(touched, "extra")).expect("materialized dict"),
            99
        );
        assert_eq!(o.str(attr(touched, "request_id")).expect("id"), "r3");
        // Wrong types are errors, not data.
        assert!(o.int(attr(root, "name")).is_err());
        assert!(o.list_items(requests, 10).is_err());
    }
}
