//! ELF files as ProfileMate reads them from a target: the `.note.stapsdt` probe notes and
//! their argument specs (`usdt::probes_in`), the exported symbols the CUDA probes resolve
//! (`SymbolOffsets::resolve_in`), and virtual address -> file offset through the segments.
//!
//! Input: the file's bytes.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use profilemate::probes::{
    symbols::{file_offset, parse_elf, SymbolOffsets},
    usdt::{parse_arg, probes_in},
};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzzed.so");
    if let Ok(probes) = probes_in(path, data) {
        for probe in probes.iter().flatten() {
            let spec = probe.spec(7);
            assert!(usize::from(spec.nargs) <= spec.args.len());
        }
    }
    let _ = SymbolOffsets::resolve_in(path, data, &["cudaLaunchKernel", "_PyRuntime", "malloc"]);
    if let Ok(elf) = parse_elf(path, data) {
        let tail = data.len().saturating_sub(8);
        let picked = data
            .get(tail..)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        for addr in [0, 1, picked, u64::MAX - 1, u64::MAX] {
            let _ = file_offset(&elf, addr);
        }
    }
    // Argument specs on their own: the words of a short text input.
    if data.len() <= 256 {
        if let Ok(text) = std::str::from_utf8(data) {
            for word in text.split_whitespace() {
                let _ = parse_arg(word);
            }
        }
    }
});
