//! `cargo xtask fuzz`: builds the libFuzzer targets of `tests/fuzz` and runs each for a
//! bounded time over a scratch copy of its committed corpus, failing on any crash, timeout
//! or out-of-memory, with the input's path and the command that reproduces it.
//!
//! The targets are built directly with cargo and the sanitizer-coverage flags cargo-fuzz
//! uses, on the workspace's own stable toolchain: nothing to install from the network but
//! the crates, and no dependency on a nightly of the day. No sanitizer is added: the parsers
//! are safe Rust (the one `unsafe` read of a record is length-checked), and the release
//! profile of `tests/fuzz` turns overflow checks and debug assertions on, so a panic of any
//! kind is a finding.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{root, run};

/// The fuzz targets, one per parser family (docs/RELIABILITY.md, "Fuzzing").
pub const TARGETS: &[&str] = &["usdt_notes", "line_table", "object_reader", "record_decode"];

/// One input running longer than this is a hang (the slowest seed runs in well under 1 s).
const INPUT_TIMEOUT_S: u64 = 25;

/// `cargo xtask fuzz` arguments.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds each target runs (0 builds them and runs none).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Targets to run (default: all).
    pub targets: Vec<String>,
}

/// Where the instrumented build goes (apart from the main workspace's `target/release`).
fn target_dir() -> PathBuf {
    root().join("target/fuzz")
}

/// Builds the targets and runs the chosen ones for `args.seconds` each.
pub fn fuzz(args: &FuzzArgs) -> Result<()> {
    let chosen: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &args.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!("no fuzz target {t} (targets: {})", TARGETS.join(", "));
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    let started = Instant::now();
    let bin_dir = build()?;
    eprintln!(
        "fuzz: targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let mut failures = Vec::new();
    for target in chosen {
        if let Err(e) = run_target(&bin_dir, target, args.seconds) {
            eprintln!("fuzz: {target} FAILED: {e:#}");
            failures.push(target);
        }
    }
    eprintln!("fuzz: done in {:.0} s", started.elapsed().as_secs_f64());
    if !failures.is_empty() {
        bail!("fuzz targets failed: {}", failures.join(", "));
    }
    Ok(())
}

/// The host's target triple: an explicit `--target` keeps the coverage flags off build
/// scripts and proc macros (which would not link without libFuzzer).
fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("cannot run rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV names no host")
}

/// Builds every target; returns the directory of the binaries.
fn build() -> Result<PathBuf> {
    ensure_cxx()?;
    let triple = host_triple()?;
    let dir = target_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The library embeds the kernel object, which no fuzz target loads: an empty stand-in
    // spares the fuzz build the eBPF toolchain.
    let no_object = dir.join("no-ebpf-object");
    std::fs::write(&no_object, b"")
        .with_context(|| format!("cannot write {}", no_object.display()))?;
    let flags = [
        "-Cpasses=sancov-module",
        "-Cllvm-args=-sanitizer-coverage-level=4",
        "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
        "-Cllvm-args=-sanitizer-coverage-pc-table",
        "-Cllvm-args=-sanitizer-coverage-trace-compares",
        "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
        "--cfg",
        "fuzzing",
    ];
    run(Command::new("cargo")
        .current_dir(root().join("tests/fuzz"))
        .args(["build", "--release", "--bins", "--target", &triple])
        .arg("--target-dir")
        .arg(&dir)
        .env("RUSTFLAGS", flags.join(" "))
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("PROFILEMATE_EBPF_OBJ", &no_object))?;
    Ok(dir.join(triple).join("release"))
}

/// libfuzzer-sys compiles libFuzzer itself, which takes a C++ compiler.
fn ensure_cxx() -> Result<()> {
    if Command::new("c++").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("fuzz: no C++ compiler; installing g++");
    let apt = crate::apt;
    run(&mut apt(&["update", "-q"]))?;
    run(&mut apt(&[
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "g++",
    ]))
}

/// Runs `target` for `seconds` over a fresh copy of its corpus (the committed one stays as
/// it is); crashes land in `target/fuzz/artifacts/TARGET/`.
fn run_target(bin_dir: &Path, target: &str, seconds: u64) -> Result<()> {
    if seconds == 0 {
        return Ok(());
    }
    let bin = bin_dir.join(target);
    let scratch = target_dir().join("run").join(target);
    let corpus = scratch.join("corpus");
    let artifacts = target_dir().join("artifacts").join(target);
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("cannot clear {}", scratch.display()))?;
    }
    for d in [&corpus, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let seeds = copy_corpus(target, &corpus)?;
    let log = scratch.join("fuzz.log");
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    eprintln!(
        "fuzz: {target} for {seconds} s over {seeds} seeds (log {})",
        log.display()
    );
    let before = list(&artifacts);
    let status = Command::new(&bin)
        .arg(&corpus)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let stat = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .map_or("?".to_owned(), |v| v.trim().to_owned())
    };
    eprintln!(
        "fuzz: {target}: {} executions, {} inputs of new coverage, peak RSS {} MB",
        stat("number_of_executed_units"),
        stat("new_units_added"),
        stat("peak_rss_mb"),
    );
    if status.success() {
        return Ok(());
    }
    report_failure(target, &bin, &text, &before, &artifacts)
}

/// Says what failed, where the input is and how to run it again.
fn report_failure(
    target: &str,
    bin: &Path,
    log: &str,
    before: &[PathBuf],
    artifacts: &Path,
) -> Result<()> {
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    for line in tail.iter().rev() {
        eprintln!("  | {line}");
    }
    let new: Vec<PathBuf> = list(artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if new.is_empty() {
        bail!("{target} exited with a failure and wrote no input (see the log above)");
    }
    for input in &new {
        eprintln!("fuzz: {target}: failing input {}", input.display());
        eprintln!("fuzz:   reproduce: {} {}", bin.display(), input.display());
    }
    eprintln!(
        "fuzz:   once fixed, add the input to tests/fuzz/corpus/{target}/ and a regression test \
         in the parser's module (docs/RELIABILITY.md, \"Fuzzing\")"
    );
    bail!("{target}: {} failing input(s)", new.len())
}

/// Copies the committed seeds of `target` into `dest`; returns how many.
fn copy_corpus(target: &str, dest: &Path) -> Result<usize> {
    let src = root().join("tests/fuzz/corpus").join(target);
    let mut n = 0;
    for path in list(&src) {
        let name = path.file_name().context("a corpus entry without a name")?;
        std::fs::copy(&path, dest.join(name))
            .with_context(|| format!("cannot copy {}", path.display()))?;
        n += 1;
    }
    Ok(n)
}

/// The files of `dir`, sorted (none if it cannot be read).
fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
