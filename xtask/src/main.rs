//! The project's entry point for everything cargo alone cannot do: installing the eBPF
//! toolchain, building the kernel object (nightly, bpfel-unknown-none), staging the fake CUDA
//! libraries, and running the demo, the tests and the benchmarks.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod bench_polls;
mod demo;
mod fuzz;
mod modgraph;
mod real_vllm;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks (LLVM 22 dev packages, nightly rust-src, bpf-linker 0.13). Idempotent.
    Setup,
    /// Build the eBPF object (profilemate-ebpf) with the nightly toolchain.
    BuildEbpf,
    /// Build everything: eBPF object, the profilemate binary, fake CUDA libraries, fixtures.
    Build,
    /// Run the whole test suite (unit, and end-to-end against the fake CUDA libraries; the
    /// end-to-end tests need root and skip with a message otherwise). Installs headless
    /// Chromium (Debian's `chromium`) for the report tests, and Debian's python3-pandas and
    /// python3-matplotlib for the seeds' Python analyses, when missing.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Start the built-in demo target, attach for ~10 s, print a summary and the session path.
    Demo {
        /// Seconds to profile.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Throughput and overhead benchmarks (root); prints a table for docs/PERFORMANCE.md.
    Bench(bench::BenchArgs),
    /// Build the libFuzzer targets of tests/fuzz and run each for a bounded time over a copy
    /// of its committed corpus; fails on any crash, naming the input and how to reproduce it.
    Fuzz(fuzz::FuzzArgs),
    /// Copy what a machine without cargo needs into DIR: the stripped `profilemate`, the
    /// fixture target and the fake CUDA libraries (the GPU scripts in tests/gpu use them).
    Bundle {
        /// Destination directory.
        dir: PathBuf,
    },
    /// Print the profilemate crate's module graph by layer and its longest functions; fail on
    /// an import circle between top-level modules or a production function over 100 lines.
    Modgraph,
}

/// Repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs a command, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("+ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// `apt-get ARGS`, non-interactive, through sudo when we are not root.
pub fn apt(args: &[&str]) -> Command {
    let mut c = if is_root() {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    };
    c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    c
}

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const APT_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev"];

fn setup() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("setup: {} already installed", APT_PACKAGES.join(", "));
    } else {
        run(&mut apt(&["update", "-q"]))?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(missing.iter());
        run(&mut apt(&args))?;
    }
    let has_src = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src"))
        });
    if has_src {
        eprintln!("setup: nightly rust-src already installed");
    } else {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("0.13"));
    if linker_ok {
        eprintln!("setup: bpf-linker 0.13 already installed");
    } else {
        // bpf-linker must link the LLVM the nightly compiler uses (22); its build script finds
        // the library through LLVM_PREFIX, llvm-sys through LLVM_SYS_221_PREFIX.
        let path = format!(
            "{LLVM_PREFIX}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                "^0.13",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .env("PATH", path))?;
    }
    Ok(())
}

/// Headless Chromium for the report test (tests/tests/report.rs loads report.html in it).
const CHROMIUM: &str = "/usr/bin/chromium";
/// tmux for the live view test (tests/tests/top.rs runs `profilemate top` in a tmux pane).
const TMUX: &str = "/usr/bin/tmux";
/// pandas and matplotlib for Debian's python3, which run the seeds' Python analyses
/// unchanged on sessions (tests/src/seeds.rs; tests/tests/real_session.rs and python.rs).
const PANDAS: &str = "/usr/lib/python3/dist-packages/pandas/__init__.py";
const MATPLOTLIB: &str = "/usr/lib/python3/dist-packages/matplotlib/__init__.py";

/// Installs Debian's `package` when `binary` is missing (idempotent), for the tests named
/// `test`. A failure is fatal in CI (CI=true), where those tests must run; elsewhere they
/// then skip with a message.
fn ensure_test_package(binary: &str, package: &str, test: &str) -> Result<()> {
    if Path::new(binary).exists() {
        eprintln!("setup: {package} already installed");
        return Ok(());
    }
    let started = std::time::Instant::now();
    let installed = run(&mut apt(&["update", "-q"]))
        .and_then(|()| run(&mut apt(&["install", "-y", "-q", package])));
    match installed {
        Ok(()) => {
            eprintln!(
                "setup: {package} installed in {:.0} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => Err(e.context(format!(
            "cannot install {package}, which the {test} test needs in CI"
        ))),
        Err(e) => {
            eprintln!("setup: {package} not installed ({e:#}); the {test} test will skip");
            Ok(())
        }
    }
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Path of the eBPF object the profilemate build embeds.
pub fn ebpf_object() -> PathBuf {
    root().join("profilemate-ebpf/target/bpfel-unknown-none/release/profilemate")
}

fn build_ebpf() -> Result<()> {
    let dir = root().join("profilemate-ebpf");
    // The crate's rust-toolchain.toml selects nightly; clear the host's flags so they do not
    // leak into the BPF target. The object must land where `ebpf_object` (and
    // profilemate/build.rs) look for it, whatever CARGO_TARGET_DIR the host build uses.
    run(Command::new("cargo")
        .current_dir(&dir)
        .args(["build", "--release"])
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC"))?;
    let obj = ebpf_object();
    if !obj.exists() {
        bail!("the eBPF build did not produce {}", obj.display());
    }
    Ok(())
}

/// Where the fake CUDA libraries are staged under their real file names.
pub fn fake_cuda_dir() -> PathBuf {
    root().join("target/fake-cuda")
}

/// Release binaries directory.
pub fn release_dir() -> PathBuf {
    root().join("target/release")
}

fn build() -> Result<()> {
    build_ebpf()?;
    run(Command::new("cargo").current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "profilemate",
        "-p",
        "fake-cuda",
        "-p",
        "fixture-target",
    ]))?;
    let lib = release_dir().join("libfakecuda.so");
    let dir = fake_cuda_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for name in ["libcudart.so.12", "libcudart.so.13", "libcuda.so.1"] {
        let dst = dir.join(name);
        // Copy to a temporary name and rename: a running fixture may still map the old file.
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::copy(&lib, &tmp)
            .with_context(|| format!("cannot copy {} to {}", lib.display(), tmp.display()))?;
        std::fs::rename(&tmp, &dst).with_context(|| format!("cannot install {}", dst.display()))?;
    }
    Ok(())
}

fn bundle(dir: &Path) -> Result<()> {
    let libs = dir.join("fake-cuda");
    std::fs::create_dir_all(&libs).with_context(|| format!("cannot create {}", libs.display()))?;
    for (src, dst) in [
        (release_dir().join("profilemate"), dir.join("profilemate")),
        (release_dir().join("pm-fixture"), dir.join("pm-fixture")),
    ] {
        std::fs::copy(&src, &dst).with_context(|| format!("cannot copy {}", src.display()))?;
        run(Command::new("strip").arg(&dst))?;
    }
    for entry in std::fs::read_dir(fake_cuda_dir())? {
        let entry = entry?;
        std::fs::copy(entry.path(), libs.join(entry.file_name()))?;
    }
    eprintln!(
        "bundle in {}: on the GPU machine run `tests/gpu/run.sh {0}/profilemate OUT` and \
         `tests/gpu/stress.sh {0}/profilemate {0}/pm-fixture {0}/fake-cuda OUT`",
        dir.display()
    );
    Ok(())
}

fn test(args: &[String]) -> Result<()> {
    setup()?;
    build()?;
    // The real-vLLM tests run against a venv of the real package: built (or found up to
    // date) for the whole suite and for a filter that names them; any other filter uses one
    // already there. PROFILEMATE_REAL_VLLM_PYTHON, when set, is used as it is.
    // The report tests load the page in headless Chromium, the top test runs in tmux, the
    // seeds' Python analyses need pandas and matplotlib: each installed for the whole suite
    // and for a filter that names its test.
    if args.is_empty()
        || args
            .iter()
            .any(|a| a.contains("report") || a.contains("real_session"))
    {
        // About 155 MB.
        ensure_test_package(CHROMIUM, "chromium", "report")?;
    }
    if args.is_empty() || args.iter().any(|a| a.contains("top")) {
        ensure_test_package(TMUX, "tmux", "top")?;
    }
    if args.is_empty()
        || args.iter().any(|a| {
            ["real_session", "python", "seed", "vllm_batches"]
                .iter()
                .any(|t| a.contains(t))
        })
    {
        ensure_test_package(PANDAS, "python3-pandas", "real_session")?;
        ensure_test_package(MATPLOTLIB, "python3-matplotlib", "real_session")?;
    }
    let real_vllm = if let Some(p) = std::env::var_os("PROFILEMATE_REAL_VLLM_PYTHON") {
        Some(PathBuf::from(p))
    } else if args.is_empty() || args.iter().any(|a| a.contains("real_vllm")) {
        real_vllm::ensure()?
    } else {
        real_vllm::existing()
    };
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args(["test", "--release", "--workspace"])
        .args(args)
        .env("PROFILEMATE_BIN", release_dir().join("profilemate"))
        .env("PROFILEMATE_FIXTURE", release_dir().join("pm-fixture"))
        .env("PROFILEMATE_FAKE_CUDA", fake_cuda_dir());
    if let Some(python) = &real_vllm {
        eprintln!(
            "real vLLM: PROFILEMATE_REAL_VLLM_PYTHON={}",
            python.display()
        );
        cmd.env("PROFILEMATE_REAL_VLLM_PYTHON", python);
    }
    run(&mut cmd)?;
    if !args.is_empty() {
        return Ok(());
    }
    // Every vLLM name the build reads, against the real source of the releases it claims.
    run(Command::new("python3")
        .current_dir(root())
        .arg("tests/vllm_names/run.py")
        .arg(release_dir().join("profilemate")))?;
    ci_fuzz()
}

/// Seconds per fuzz target in CI: 4 targets x 45 s plus a cold instrumented build (~4-5 min
/// on 2 cores) keep the step under 8 minutes.
const CI_FUZZ_SECONDS: u64 = 45;

/// In CI (`CI` set), every fuzz target for `PROFILEMATE_FUZZ_SECONDS` (default
/// `CI_FUZZ_SECONDS`; 0 skips the step).
fn ci_fuzz() -> Result<()> {
    if std::env::var_os("CI").is_none_or(|v| v.is_empty() || v == "false") {
        return Ok(());
    }
    let seconds = match std::env::var("PROFILEMATE_FUZZ_SECONDS") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("PROFILEMATE_FUZZ_SECONDS={v} is not a number of seconds"))?,
        Err(_) => CI_FUZZ_SECONDS,
    };
    if seconds == 0 {
        eprintln!("fuzz: skipped (PROFILEMATE_FUZZ_SECONDS=0)");
        return Ok(());
    }
    fuzz::fuzz(&fuzz::FuzzArgs {
        seconds,
        targets: Vec::new(),
    })
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup(),
        Cmd::BuildEbpf => build_ebpf(),
        Cmd::Build => {
            setup()?;
            build()
        }
        Cmd::Test { args } => test(&args),
        Cmd::Demo { seconds } => {
            setup()?;
            build()?;
            demo::run(seconds)
        }
        Cmd::Fuzz(args) => fuzz::fuzz(&args),
        Cmd::Modgraph => modgraph::run(),
        Cmd::Bundle { dir } => {
            setup()?;
            build()?;
            bundle(&dir)
        }
        Cmd::Bench(args) => {
            setup()?;
            build()?;
            bench::run(&args)
        }
    }
}
