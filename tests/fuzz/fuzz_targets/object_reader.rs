//! The object reader (`python::objects::Objects`) over target memory made of fuzz bytes: type
//! names, ints, floats, strs, containers, dicts and instance attributes at fuzzer-chosen
//! addresses, with the 3.11, 3.12 and 3.13 object layouts, with and without the attribute
//! cache; and 3.13/3.14 layouts derived from fuzzed `_Py_DebugOffsets` (as a real target
//! hands them over), with code objects read through them; and the userspace walk of every
//! thread's live frames (`Interpreter::live_frames`) from a fuzzer-chosen interpreter.
//!
//! Input: flags (1 byte: bits 0-1 the layout, 0-2 = 3.11-3.13 built in, 3 = from debug
//! offsets at the start of memory, bit 4 then picking 3.14; bit 2 cyclic memory; bit 3 the
//! attribute cache), an operation count (1 byte), the operations (an op byte, then a u16
//! offset from the memory's start, or with the op byte's top bit a raw u64 address), then
//! the memory.

#![no_main]

use std::{path::PathBuf, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use profilemate::python::{
    code::{read_code, CodeCache},
    layout::{resolve, PyLayout},
    objects::{object_layout, AttrCache, Objects},
    remote::RemoteMemory,
    Interpreter,
};
use profilemate_fuzz::{py_layout, FuzzMemory, Input, BASE};

/// Operations per input at most (each may read up to a few MB in the worst case).
const MAX_OPS: usize = 12;
/// Attribute and key names looked up (op bits 5-6 pick one).
const NAMES: [&str; 4] = ["running", "a", "_name_", "request_id"];
/// Items asked for from containers.
const MAX: usize = 16;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let count = usize::from(input.u8()).min(MAX_OPS);
    let ops: Vec<(u8, u64)> = (0..count).map(|_| op(&mut input)).collect();
    let mem = FuzzMemory::new(input.rest(), flags & 4 != 0);
    let layout = match flags & 3 {
        0 => py_layout((3, 11)),
        1 => py_layout((3, 12)),
        2 => py_layout((3, 13)),
        _ => {
            let minor = if flags & 16 != 0 { 14 } else { 13 };
            match resolve((3, minor), &mem, BASE) {
                Ok(layout) => layout,
                Err(_) => return,
            }
        }
    };
    for &(_, addr) in &ops {
        let _ = read_code(&mem, &layout, addr, None);
    }
    let Some(ol) = object_layout(layout.version) else {
        return;
    };
    let cache = AttrCache::default();
    let objects = Objects::new(&mem, &layout, ol);
    if flags & 8 != 0 {
        // Twice: the second pass goes through the positions the first one cached.
        let cached = Objects::new(&mem, &layout, ol).with_cache(&cache);
        run(&cached, &mem, &layout, &ops);
        run(&cached, &mem, &layout, &ops);
    } else {
        run(&objects, &mem, &layout, &ops);
    }
});

/// One operation: its code and the address it reads at.
fn op(input: &mut Input<'_>) -> (u8, u64) {
    let code = input.u8();
    let addr = if code & 0x80 != 0 {
        input.u64()
    } else {
        BASE + u64::from(input.u16())
    };
    (code, addr)
}

fn run(o: &Objects<'_>, mem: &dyn RemoteMemory, layout: &PyLayout, ops: &[(u8, u64)]) {
    for &(code, addr) in ops {
        let name = NAMES[usize::from(code >> 5) & 3];
        // Each result is only looked at when tracing (checking what a seed reaches).
        macro_rules! call {
            ($e:expr) => {{
                let r = $e;
                if tracing() {
                    eprintln!("op {code:#04x} at {addr:#x}: {r:?}");
                }
            }};
        }
        match code & 31 {
            0 => call!(o.type_of(addr)),
            1 => call!(o.type_flags(addr)),
            2 => call!(o.type_name(addr)),
            3 => call!(o.int(addr)),
            4 => call!(o.float(addr)),
            5 => call!(o.str(addr)),
            6 => call!(o.str_hash(addr)),
            7 => call!(o.is_none(addr)),
            8 => call!(o.len(addr)),
            9 => call!(bounded(o.list_items(addr, MAX))),
            10 => call!(bounded(o.tuple_items(addr, MAX))),
            11 => call!(o.set_len(addr)),
            12 => call!(bounded(o.set_items(addr, MAX))),
            13 => call!(o.dict_version(addr)),
            14 => call!(bounded(o.dict_items(addr, MAX))),
            15 => call!(o.dict_get(addr, name)),
            16 => call!(o.enum_name(addr)),
            17 => call!(o.attr(addr, name)),
            18 => call!(o.attrs(addr, NAMES)),
            19 => call!(o.class_attr(addr, name)),
            20 => call!(o.function_code(addr)),
            21 => call!(o.attrs(addr, [name])),
            22 => call!(frames(mem, layout, addr)),
            23 => call!(bounded(o.deque_front(addr, MAX))),
            24 => call!(o.dict_entries(addr, MAX).map(|d| d.entries.len())),
            25 => call!(o.attr_slots(addr, &NAMES)),
            26 => call!(many(mem, addr)),
            _ => call!(o.type_of(addr).and_then(|ty| o.class_attr(ty, name))),
        }
    }
}

/// A batch of reads around `addr` (some past the end of the address space): which ones held.
fn many(mem: &dyn RemoteMemory, addr: u64) -> Vec<bool> {
    let ranges: Vec<(u64, usize)> = (0..6u64)
        .map(|i| {
            (
                addr.wrapping_add(i.wrapping_mul(addr >> 3)),
                (addr as usize >> (8 * i)) & 63,
            )
        })
        .collect();
    let mut buf = vec![0u8; ranges.iter().map(|r| r.1).sum()];
    mem.read_many(&ranges, &mut buf)
}

/// Every thread's live frames and their locals, with the main interpreter at `interp`.
fn frames(mem: &dyn RemoteMemory, layout: &PyLayout, interp: u64) -> usize {
    let interpreter = Interpreter {
        pid: 1,
        version: format!("{}.{}", layout.version.0, layout.version.1),
        binary: "python3".to_owned(),
        host_path: PathBuf::from("python3"),
        file_id: (0, 0),
        runtime_addr: BASE,
        code_type_addr: None,
        main_interp: interp,
        threads_at_attach: 1,
        layout: layout.clone(),
    };
    let mut codes = CodeCache::default();
    let frames = interpreter.live_frames(mem, &mut codes);
    frames.iter().map(|f| f.locals(mem, layout).len()).sum()
}

/// Whether `FUZZ_TRACE` is set: run an input by hand with it to see what each op read.
fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

/// A container read never hands back more items than asked for.
fn bounded<T, E>(items: Result<Vec<T>, E>) -> Result<Vec<T>, E> {
    if let Ok(v) = &items {
        assert!(v.len() <= MAX, "{} items for a maximum of {MAX}", v.len());
    }
    items
}
