#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets into tests/fuzz/corpus/<target>/.

The committed corpus came from this script; run it again only to regenerate the seeds (the
fuzzer's own finds and the regression inputs are added next to them by hand). Each seed is a
real input where one can be had here: an ELF built with <sys/sdt.h> and CPython's own SDT
notes, line tables compiled by each local CPython 3.11-3.13, and records laid out as the
kernel side writes them. Target memory for the object reader is laid out by hand from each
version's struct offsets (the ones profilemate/src/python/objects.rs reads).

    python3 tests/fuzz/seeds/make_seeds.py [--sdt-include DIR]
"""

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "corpus"
BASE = 0x7F00_0000_0000


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)
    print(f"{target}/{name}: {len(data)} bytes")


# --- usdt_notes -------------------------------------------------------------------------


def usdt_seeds(sdt_include):
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in [
            ("libprobes.so", []),
            # Byte-granular segments: the same notes in a 2.6 KB file.
            ("libprobes-small.so", ["-Wl,-z,max-page-size=16", "-Wl,-z,common-page-size=16",
                                    "-Wl,-z,noseparate-code"]),
        ]:
            out = Path(tmp) / name
            cmd = ["gcc", "-O1", "-fPIC", "-shared", "-nostdlib", "-Wl,--build-id=none",
                   "-Wl,-z,norelro", *extra, f"-I{sdt_include}", "-o", str(out),
                   str(HERE / "probes.c")]
            subprocess.run(cmd, check=True)
            subprocess.run(["strip", "--strip-unneeded", "-R", ".comment", str(out)], check=True)
            write("usdt_notes", name, out.read_bytes())
        python = Path("/usr/bin/python3.11")
        if python.exists():
            # CPython's own notes (Debian builds --with-dtrace), without the code around them.
            out = Path(tmp) / "python3.11-notes.elf"
            subprocess.run(["objcopy", "--only-section=.note.stapsdt",
                            "--only-section=.stapsdt.base", "--only-section=.probes",
                            str(python), str(out)], check=True, stderr=subprocess.DEVNULL)
            write("usdt_notes", "python3.11-notes.elf", out.read_bytes())
    write("usdt_notes", "arg-specs.txt", b"8@%rbp -4@%eax 8@-16(%rbp) -4@$5 4@(%rdi) -1@%sil 2@%r9w")


# --- line_table -------------------------------------------------------------------------

LINETABLES = r"""
import json, sys, email.utils, json.decoder
def gen(n):
    total = 0
    for i in range(n):
        try:
            total += (yield i) or 0
        except ValueError:
            total = -1
    return total
out = []
for f in (email.utils.parsedate_to_datetime, json.decoder.JSONDecoder.raw_decode, gen):
    c = f.__code__
    out.append([f.__qualname__, c.co_firstlineno, c.co_linetable.hex()])
print(json.dumps(out))
"""


def interpreters():
    home = Path(os.environ.get("HOME", "/root")) / ".pyenv/versions"
    found = {}
    for path in [Path("/usr/bin/python3.11"), *sorted(home.glob("3.1[1-4]*/bin/python3.1?"))]:
        if not path.exists():
            continue
        v = subprocess.run([str(path), "-c", "import sys; print(sys.version_info[1])"],
                           capture_output=True, text=True, check=True).stdout.strip()
        found.setdefault(int(v), path)
    return found


def line_table_seeds():
    import json
    for minor, python in sorted(interpreters().items()):
        tables = json.loads(subprocess.run([str(python), "-c", LINETABLES], capture_output=True,
                                           text=True, check=True).stdout)
        # Selector: 0-3 = 3.11-3.14. No 3.14 is installed here: its seed reuses the 3.13
        # tables (the format is the same) under the 3.14 layout.
        selectors = [minor - 11] + ([3] if minor == 13 else [])
        for qualname, first_line, hexed in tables:
            table = bytes.fromhex(hexed)
            for sel in selectors:
                head = struct.pack("<BiI", sel, first_line, 2 * len(table))
                name = f"py3{11 + sel}-{qualname.replace('.', '-')}.bin"
                if sel != minor - 11:
                    name = f"py3{11 + sel}-from-3{minor}-{qualname.replace('.', '-')}.bin"
                write("line_table", name, head + table)


# --- object_reader ----------------------------------------------------------------------

TP_NAME, TP_BASICSIZE, TP_FLAGS, TP_DICT, TP_DICTOFFSET, TP_MRO = 24, 32, 168, 264, 288, 344
LONG, LIST, TUPLE, DICT = 1 << 24, 1 << 25, 1 << 26, 1 << 29
HT_CACHED_KEYS = {11: 872, 12: 880, 13: 880}
STR_DATA = {11: 48, 12: 40, 13: 40}


class Image:
    """Target memory at BASE with a bump allocator."""

    def __init__(self):
        self.b = bytearray()

    def alloc(self, size):
        at = (len(self.b) + 7) & ~7
        self.b.extend(b"\0" * (at + size - len(self.b)))
        return BASE + at

    def put(self, addr, fmt, *v):
        at = addr - BASE
        struct.pack_into(fmt, self.b, at, *v)

    def cstr(self, text):
        a = self.alloc(len(text) + 1)
        self.b[a - BASE:a - BASE + len(text)] = text.encode()
        return a


def object_image(minor, prefix=b""):
    m = Image()
    if prefix:
        at = m.alloc(len(prefix))
        m.b[at - BASE:at - BASE + len(prefix)] = prefix
    else:
        m.alloc(16)  # nothing at BASE itself
    meta = m.alloc(400)
    types = {}

    def new_type(name, flags, dictoffset=0, size=1024):
        t = m.alloc(size)
        m.put(t, "<QQ", 1, meta)
        m.put(t + TP_NAME, "<Q", m.cstr(name))
        m.put(t + TP_BASICSIZE, "<Q", 16)
        m.put(t + TP_FLAGS, "<Q", flags)
        m.put(t + TP_DICTOFFSET, "<q", dictoffset)
        types[name] = t
        return t

    m.put(meta, "<QQ", 1, meta)
    m.put(meta + TP_NAME, "<Q", m.cstr("type"))
    for name, flags in [("int", LONG), ("str", 0), ("list", LIST), ("tuple", TUPLE),
                        ("dict", DICT), ("float", 0), ("NoneType", 0)]:
        new_type(name, flags)
    cls = new_type("Scheduler", 0, dictoffset=16)

    def obj(tname, size):
        a = m.alloc(size)
        m.put(a, "<QQ", 1, types[tname])
        return a

    def string(text):
        s = obj("str", STR_DATA[minor] + len(text) + 1)
        m.put(s + 16, "<Qq", len(text), -1)
        m.put(s + 32, "<I", (1 << 2) | (1 << 5) | (1 << 6))
        m.b[s - BASE + STR_DATA[minor]:s - BASE + STR_DATA[minor] + len(text)] = text.encode()
        return s

    def integer(v):
        n = obj("int", 32)
        head = (1 << 3) if minor >= 12 else 1
        m.put(n + 16, "<QI", head, v)
        return n

    n42 = integer(42)
    fl = obj("float", 24)
    m.put(fl + 16, "<d", 2.25)
    items = m.alloc(16)
    m.put(items, "<QQ", n42, string("r1"))
    lst = obj("list", 40)
    m.put(lst + 16, "<QQ", 2, items)
    mro = obj("tuple", 32)
    m.put(mro + 16, "<QQ", 1, cls)
    m.put(cls + TP_MRO, "<Q", mro)
    keys = m.alloc(32 + 8 + 3 * 16)
    m.put(keys, "<QBBB", 1, 3, 3, 1)  # refcnt, log2 size 8, log2 index bytes 8, unicode keys
    m.put(keys + 24, "<Q", 3)
    m.put(keys + 32, "<bbbbbbbb", 0, 1, 2, -1, -1, -1, -1, -1)
    for i, (k, v) in enumerate([("running", lst), ("a", n42), ("arrival_time", fl)]):
        m.put(keys + 40 + 16 * i, "<QQ", string(k), v)
    d = obj("dict", 48)
    m.put(d + 16, "<QQQQ", 3, 7, keys, 0)
    inst = obj("Scheduler", 24)
    m.put(inst + 16, "<Q", d)
    none = obj("NoneType", 16)
    return m, {"inst": inst, "dict": d, "list": lst, "int": n42, "float": fl, "none": none,
               "type": cls, "mro": mro}


def ops(refs, program):
    out = bytearray()
    for code, ref in program:
        out += struct.pack("<BH", code, refs[ref] - BASE)
    return bytes(out)


# (op code, object): op codes are object_reader.rs's `run` (name selector in bits 5-6).
PROGRAM = [(2, "inst"), (17, "inst"), (18, "inst"), (17 | 1 << 5, "inst"), (14, "dict"),
           (15, "dict"), (9, "list"), (3, "int"), (4, "float"), (7, "none"), (8, "dict"),
           (19, "type")]


def object_seeds():
    for minor in (11, 12, 13):
        mem, refs = object_image(minor)
        body = ops(refs, PROGRAM)
        for cache in (0, 8):
            head = bytes([(minor - 11) | cache, len(PROGRAM)])
            suffix = "-cached" if cache else ""
            write("object_reader", f"py3{minor}-scheduler{suffix}.bin", head + body + mem.b)
    for minor, size, fields in [(13, 584, DEBUG_313), (14, 760, DEBUG_314)]:
        raw = debug_offsets(minor, size, fields)
        # Layout 3 (from the debug offsets at the start of memory), bit 4 for 3.14: read
        # code objects at two addresses inside the struct.
        head = bytes([3 | (16 if minor == 14 else 0), 2]) + struct.pack("<BHBH", 2, 0, 2, 64)
        write("object_reader", f"py3{minor}-debug-offsets.bin", head + raw)
    # 3.13 objects read through a layout taken from the debug offsets in front of them, so
    # the fuzzer varies the offsets (ob_type's, the str header's) under real objects.
    mem, refs = object_image(13, debug_offsets(13, 584, DEBUG_313))
    head = bytes([3, len(PROGRAM)])
    write("object_reader", "py313-scheduler-via-debug-offsets.bin", head + ops(refs, PROGRAM) + mem.b)


def debug_offsets(minor, size, fields):
    raw = bytearray(size)
    raw[:8] = b"xdebugpy"
    struct.pack_into("<Q", raw, 8, 0x0300_00F0 | (minor << 16))
    for at, v in fields:
        struct.pack_into("<Q", raw, at, v)
    return bytes(raw)


# 3.13.0's _Py_DebugOffsets values (as in layout.rs's tests), by position in the struct.
DEBUG_313 = [(40, 632), (72, 7344), (168, 8), (176, 16), (184, 72), (200, 160), (232, 8),
             (240, 0), (248, 56), (256, 72), (264, 70), (280, 112), (288, 120), (296, 128),
             (304, 136), (312, 68), (344, 200), (360, 8), (520, 16), (528, 32), (544, 32),
             (552, 16), (560, 40)]
# 3.14: the same values at 3.14's positions (layout.rs DEBUG_314); plausible, not measured.
DEBUG_314 = [(40, 632), (72, 7344), (192, 8), (200, 16), (208, 72), (224, 160), (256, 8),
             (264, 0), (272, 56), (280, 72), (288, 70), (320, 112), (328, 120), (336, 128),
             (344, 136), (352, 68), (384, 200), (408, 8), (600, 16), (608, 32), (624, 32),
             (632, 16), (640, 40)]


# --- record_decode ----------------------------------------------------------------------

MAX_PY_FRAMES, SCRATCH_WORDS = 128, 16


def record_seeds():
    # CudaCallRecord: kind, api, tgid, tid, flags, ts_ns, args[6].
    write("record_decode", "entry.bin", struct.pack("<HHIIIQ6Q", 1, 0, 100, 101, 0, 5,
                                                    1, 2, 3, 4, 5, 6))
    write("record_decode", "return-out.bin", struct.pack("<HHIIIQ6Q", 2, 3, 100, 101, 1, 9,
                                                         0, 0xABC, 0, 0, 0, 0))
    # UsdtRecord: kind, probe, tgid, tid, failed_args, ts_ns, args[3].
    write("record_decode", "usdt.bin", struct.pack("<HHIIIQ3Q", 4, 1, 100, 101, 2, 7, 2, 0, 0))
    for name, reason, api, depth in [("stack-sample.bin", 1, 0, 3),
                                     ("stack-cuda.bin", 2, 5, 2),
                                     ("stack-breakpoint.bin", 3, 1, 1)]:
        head = struct.pack("<HHIIHHQHHI", 3, reason, 100, 101, depth, 0, 11, api, 0, 2500)
        frames = b"".join(struct.pack("<QIiQ", BASE + 0x1000 * (i + 1), 2 * i, 10 + i, 0)
                          for i in range(depth))
        frames += b"\0" * (24 * (MAX_PY_FRAMES - depth))
        write("record_decode", name, head + frames + b"\0" * (8 * SCRATCH_WORDS))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sdt-include", default="/usr/include/x86_64-linux-gnu",
                    help="directory holding sys/sdt.h (package systemtap-sdt-dev)")
    args = ap.parse_args()
    if (Path(args.sdt_include) / "sys/sdt.h").exists() and shutil.which("gcc"):
        usdt_seeds(args.sdt_include)
    else:
        print("no sys/sdt.h: usdt_notes seeds left as they are", file=sys.stderr)
    line_table_seeds()
    object_seeds()
    record_seeds()


if __name__ == "__main__":
    main()
