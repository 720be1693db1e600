//! USDT (SystemTap SDT) probe points of a binary: the `.note.stapsdt` notes CPython builds
//! with `--with-dtrace` carry (`python:gc__start`, `python:gc__done`, ...).
//!
//! Owns: parsing the notes into attach points (file offsets of the probe and of its
//! semaphore) and decoding the argument specs into pt_regs locations for the eBPF side.
//! Attaching: aya cannot set a uprobe's `ref_ctr_offset`, so `attach` opens the uprobe with a
//! raw uprobe-PMU `perf_event_open` (the kernel raises the semaphore while the probe exists
//! and lowers it when the fd closes; see DESIGN §3) and links the loaded program to it with
//! `BPF_LINK_CREATE`, the bpf cookie naming the probe's spec slot. Format:
//! <https://sourceware.org/systemtap/wiki/UserSpaceProbeImplementation>.

use std::{ffi::CString, os::fd::BorrowedFd, os::unix::ffi::OsStrExt, path::Path};

use object::{Object, ObjectSection};
use profilemate_common::python::{usdt_location, UsdtArgSpec, UsdtSpec, USDT_MAX_ARGS};

use super::{
    perf_link::{open_linked, PerfEventAttr, PerfLink, PerfLinkError},
    symbols::{file_offset, map_file, parse_elf, SymbolError},
};

/// ELF note type of SDT probe descriptors.
const NT_STAPSDT: u32 = 3;
/// Longest note string accepted (provider, name, argument specs): the file is untrusted.
const MAX_NOTE_STRING: usize = 512;

/// One probe point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsdtProbe {
    /// Provider (`python`).
    pub provider: String,
    /// Probe name (`gc__start`).
    pub name: String,
    /// File offset of the probe instruction (where the uprobe goes).
    pub offset: u64,
    /// File offset of the semaphore (`ref_ctr_offset`), if the probe has one.
    pub semaphore_offset: Option<u64>,
    /// Decoded arguments, in order.
    pub args: Vec<UsdtArg>,
}

/// Where one argument lives when the probe fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgLocation {
    /// A register: byte offset in x86-64 `struct pt_regs`.
    Register(u16),
    /// Memory at register + displacement.
    Memory {
        /// Byte offset of the base register in `struct pt_regs`.
        base: u16,
        /// Displacement.
        disp: i32,
    },
    /// An immediate value.
    Constant(i64),
}

/// One decoded argument: its size in bytes, signedness and location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsdtArg {
    /// 1, 2, 4 or 8.
    pub size: u8,
    /// Sign-extend when widening.
    pub signed: bool,
    /// Where it is.
    pub location: ArgLocation,
}

/// A note or argument spec that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UsdtError {
    /// The file could not be read or parsed.
    #[error(transparent)]
    Elf(#[from] SymbolError),
    /// An argument spec this decoder does not understand.
    #[error("unsupported USDT argument spec `{0}`")]
    ArgSpec(String),
}

/// x86-64 `struct pt_regs` byte offsets by register name, every width of each register.
fn pt_regs_offset(reg: &str) -> Option<u16> {
    let off = match reg {
        "r15" | "r15d" | "r15w" | "r15b" => 0,
        "r14" | "r14d" | "r14w" | "r14b" => 8,
        "r13" | "r13d" | "r13w" | "r13b" => 16,
        "r12" | "r12d" | "r12w" | "r12b" => 24,
        "rbp" | "ebp" | "bp" | "bpl" => 32,
        "rbx" | "ebx" | "bx" | "bl" | "bh" => 40,
        "r11" | "r11d" | "r11w" | "r11b" => 48,
        "r10" | "r10d" | "r10w" | "r10b" => 56,
        "r9" | "r9d" | "r9w" | "r9b" => 64,
        "r8" | "r8d" | "r8w" | "r8b" => 72,
        "rax" | "eax" | "ax" | "al" | "ah" => 80,
        "rcx" | "ecx" | "cx" | "cl" | "ch" => 88,
        "rdx" | "edx" | "dx" | "dl" | "dh" => 96,
        "rsi" | "esi" | "si" | "sil" => 104,
        "rdi" | "edi" | "di" | "dil" => 112,
        "rip" | "eip" => 128,
        "rsp" | "esp" | "sp" | "spl" => 152,
        _ => return None,
    };
    Some(off)
}

/// Decodes one argument spec: `8@%rbp`, `-4@%eax`, `8@-16(%rbp)`, `-4@$5`, `4@(%rdi)`.
pub fn parse_arg(spec: &str) -> Result<UsdtArg, UsdtError> {
    let bad = || UsdtError::ArgSpec(spec.chars().take(64).collect());
    let (size, loc) = spec.split_once('@').ok_or_else(bad)?;
    let size: i8 = size.parse().map_err(|_| bad())?;
    let signed = size < 0;
    let size = size.unsigned_abs();
    if ![1, 2, 4, 8].contains(&size) {
        return Err(bad());
    }
    let location = if let Some(reg) = loc.strip_prefix('%') {
        ArgLocation::Register(pt_regs_offset(reg).ok_or_else(bad)?)
    } else if let Some(imm) = loc.strip_prefix('$') {
        ArgLocation::Constant(imm.parse().map_err(|_| bad())?)
    } else {
        let (disp, rest) = loc.split_once('(').ok_or_else(bad)?;
        let reg = rest
            .strip_suffix(')')
            .and_then(|r| r.strip_prefix('%'))
            .ok_or_else(bad)?;
        let disp = if disp.is_empty() {
            0
        } else {
            disp.parse().map_err(|_| bad())?
        };
        ArgLocation::Memory {
            base: pt_regs_offset(reg).ok_or_else(bad)?,
            disp,
        }
    };
    Ok(UsdtArg {
        size,
        signed,
        location,
    })
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
}

/// Splits the NUL-terminated strings after the three addresses of a note descriptor.
fn note_strings(desc: &[u8]) -> Option<(String, String, String)> {
    let mut it = desc.get(24..)?.split(|b| *b == 0);
    let mut next = || {
        let s = it.next()?;
        (s.len() <= MAX_NOTE_STRING).then(|| String::from_utf8_lossy(s).into_owned())
    };
    Some((next()?, next()?, next().unwrap_or_default()))
}

/// Every SDT probe of the ELF file at `path`. Probes whose argument specs cannot be decoded
/// are returned with the error in place of their arguments.
pub fn probes(path: &Path) -> Result<Vec<Result<UsdtProbe, UsdtError>>, UsdtError> {
    let map = map_file(path)?;
    probes_in(path, &map)
}

/// `probes` over the bytes of an ELF file already read (`path` names it in errors only): the
/// parsing of untrusted file contents, apart from the reading, so it can be fuzzed.
pub fn probes_in(path: &Path, data: &[u8]) -> Result<Vec<Result<UsdtProbe, UsdtError>>, UsdtError> {
    let elf = parse_elf(path, data)?;
    let Some(notes) = elf.section_by_name(".note.stapsdt") else {
        return Ok(Vec::new());
    };
    let data = notes.data().unwrap_or(&[]);
    // Prelink may move the binary: addresses in notes are relative to `.stapsdt.base`.
    let actual_base = elf.section_by_name(".stapsdt.base").map(|s| s.address());
    let mut out = Vec::new();
    let mut at = 0usize;
    let align4 = |n: usize| n.div_ceil(4) * 4;
    while let (Some(namesz), Some(descsz), Some(kind)) = (
        read_u32(data, at),
        read_u32(data, at + 4),
        read_u32(data, at + 8),
    ) {
        let (namesz, descsz) = (namesz as usize, descsz as usize);
        let name_at = at + 12;
        let desc_at = name_at + align4(namesz);
        let next = desc_at + align4(descsz);
        let owner = data.get(name_at..name_at + namesz.saturating_sub(1));
        let desc = data.get(desc_at..desc_at + descsz);
        at = next;
        let (Some(owner), Some(desc)) = (owner, desc) else {
            break;
        };
        if kind != NT_STAPSDT || owner != b"stapsdt" {
            continue;
        }
        let (Some(pc), Some(base), Some(sem), Some((provider, name, args))) = (
            read_u64(desc, 0),
            read_u64(desc, 8),
            read_u64(desc, 16),
            note_strings(desc),
        ) else {
            continue;
        };
        let adjust = |addr: u64| match actual_base {
            Some(actual) => addr.wrapping_add(actual).wrapping_sub(base),
            None => addr,
        };
        let Some(offset) = file_offset(&elf, adjust(pc)) else {
            continue;
        };
        let semaphore_offset = (sem != 0).then(|| file_offset(&elf, adjust(sem))).flatten();
        let parsed: Result<Vec<UsdtArg>, UsdtError> =
            args.split_whitespace().map(parse_arg).collect();
        out.push(parsed.map(|args| UsdtProbe {
            provider,
            name,
            offset,
            semaphore_offset,
            args,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_argument_spec_forms() {
        assert_eq!(
            parse_arg("8@%rbp").ok(),
            Some(UsdtArg {
                size: 8,
                signed: false,
                location: ArgLocation::Register(32)
            })
        );
        assert_eq!(
            parse_arg("-4@%eax").ok(),
            Some(UsdtArg {
                size: 4,
                signed: true,
                location: ArgLocation::Register(80)
            })
        );
        assert_eq!(
            parse_arg("8@-16(%rbp)").ok(),
            Some(UsdtArg {
                size: 8,
                signed: false,
                location: ArgLocation::Memory {
                    base: 32,
                    disp: -16
                }
            })
        );
        assert_eq!(
            parse_arg("4@(%rdi)").ok(),
            Some(UsdtArg {
                size: 4,
                signed: false,
                location: ArgLocation::Memory { base: 112, disp: 0 }
            })
        );
        assert_eq!(
            parse_arg("-4@$5").ok(),
            Some(UsdtArg {
                size: 4,
                signed: true,
                location: ArgLocation::Constant(5)
            })
        );
        for bad in [
            "",
            "8",
            "3@%rax",
            "8@%xmm0",
            "8@16(%rbp",
            "x@%rax",
            "8@$abc",
        ] {
            assert!(parse_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_probes_of_the_fuzz_seed_library_decode_with_their_semaphores() {
        // tests/fuzz/seeds/probes.c, built with <sys/sdt.h> (the usdt_notes fuzz seed).
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fuzz/corpus/usdt_notes/libprobes-small.so");
        let data = std::fs::read(&path).expect("the committed seed");
        let all: Vec<UsdtProbe> = probes_in(&path, &data)
            .expect("parses")
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("every spec decodes");
        let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["gc__start", "gc__done", "function__entry"]);
        assert_eq!(all[0].offset, 0x308);
        assert_eq!(all[0].semaphore_offset, Some(0x49c));
        assert_eq!(
            all[1].args[1].location,
            ArgLocation::Memory { base: 96, disp: 12 }
        );
        assert_eq!(all[2].args[2].location, ArgLocation::Constant(5));
    }

    #[test]
    fn finds_the_gc_probes_of_a_dtrace_python() {
        // Debian's python3.11 is built --with-dtrace; other systems may lack it.
        let path = Path::new("/usr/bin/python3.11");
        let Ok(all) = probes(path) else {
            eprintln!(
                "SKIPPED finds_the_gc_probes_of_a_dtrace_python: {} not readable",
                path.display()
            );
            return;
        };
        if all.is_empty() {
            eprintln!(
                "SKIPPED finds_the_gc_probes_of_a_dtrace_python: {} has no SDT notes",
                path.display()
            );
            return;
        }
        let ok: Vec<&UsdtProbe> = all.iter().filter_map(|p| p.as_ref().ok()).collect();
        assert_eq!(
            ok.len(),
            all.len(),
            "every CPython arg spec decodes: {all:?}"
        );
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        for name in ["gc__start", "gc__done"] {
            let p = ok
                .iter()
                .find(|p| p.provider == "python" && p.name == name)
                .unwrap_or_else(|| panic!("{name}: {ok:?}"));
            assert!(p.offset < len, "{name} offset inside the file");
            assert!(p.semaphore_offset.is_some(), "{name} has a semaphore");
            assert_eq!(p.args.len(), 1, "{name}: one argument ({:?})", p.args);
        }
    }
}

impl UsdtProbe {
    /// The kernel-side spec of this probe, reported as `probe_id`.
    #[must_use]
    pub fn spec(&self, probe_id: u16) -> UsdtSpec {
        let mut spec = UsdtSpec {
            probe: probe_id,
            nargs: self.args.len().min(USDT_MAX_ARGS) as u16,
            ..UsdtSpec::default()
        };
        for (slot, arg) in spec.args.iter_mut().zip(&self.args) {
            let (location, reg_offset, value) = match arg.location {
                ArgLocation::Register(r) => (usdt_location::REGISTER, r, 0),
                ArgLocation::Memory { base, disp } => {
                    (usdt_location::MEMORY, base, i64::from(disp))
                }
                ArgLocation::Constant(v) => (usdt_location::CONSTANT, 0, v),
            };
            *slot = UsdtArgSpec {
                location,
                size: arg.size,
                signed: u8::from(arg.signed),
                _pad: 0,
                reg_offset,
                _pad2: 0,
                value,
            };
        }
        spec
    }
}

/// Attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum UsdtAttachError {
    /// The uprobe PMU is missing.
    #[error("cannot read the uprobe PMU type (/sys/bus/event_source/devices/uprobe/type)")]
    NoPmu(#[source] std::io::Error),
    /// Opening the uprobe or linking the program failed.
    #[error(transparent)]
    Perf(#[from] PerfLinkError),
    /// The path has an interior NUL.
    #[error("unusable path")]
    Path,
}

fn uprobe_pmu_type() -> Result<u32, UsdtAttachError> {
    let text = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
        .map_err(UsdtAttachError::NoPmu)?;
    text.trim().parse().map_err(|e| {
        UsdtAttachError::NoPmu(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    })
}

/// Attaches `prog` (a loaded uprobe program) at `probe` in the file at `path`, for process
/// `pid` only, with `cookie`. Dropping the link detaches it (and the kernel lowers the
/// semaphore it raised).
pub fn attach(
    prog: BorrowedFd<'_>,
    path: &Path,
    probe: &UsdtProbe,
    pid: u32,
    cookie: u64,
) -> Result<PerfLink, UsdtAttachError> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| UsdtAttachError::Path)?;
    let attr = PerfEventAttr {
        kind: uprobe_pmu_type()?,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        // Bits 32-63: ref_ctr_offset (the semaphore), bit 0 clear: an entry probe.
        config: probe.semaphore_offset.unwrap_or(0) << 32,
        config1: path.as_ptr() as u64,
        config2: probe.offset,
        ..PerfEventAttr::default()
    };
    Ok(open_linked(&attr, pid, prog, cookie)?)
}
