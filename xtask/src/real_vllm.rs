//! The venv with the real vLLM that tests/tests/real_vllm.rs runs against: Debian's
//! python3.11, `pip install --no-deps -r tests/real_vllm/requirements.lock`, kept under
//! target/real-vllm-venv and rebuilt only when the lock's hash changes.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{root, run};

const LOCK: &str = "tests/real_vllm/requirements.lock";
/// Debian's interpreter (not a pyenv one): the one a CI machine of this kind has.
const PYTHON: &str = "/usr/bin/python3.11";
const STAMP: &str = ".profilemate-lock-hash";
const SMOKE: &str = "import vllm, vllm.v1.core.sched.scheduler, torch; \
                     print('vllm', vllm.__version__, 'torch', torch.__version__)";

/// Whether this run is CI's (`.ci/run` sets CI=true).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The venv's directory.
pub fn venv_dir() -> PathBuf {
    root().join("target/real-vllm-venv")
}

/// FNV-1a (64-bit) of the lock file: a change of pins rebuilds the venv.
fn lock_hash(text: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The Python of an up-to-date venv, if there is one (nothing is installed).
pub fn existing() -> Option<PathBuf> {
    let lock = std::fs::read(root().join(LOCK)).ok()?;
    let dir = venv_dir();
    let stamp = std::fs::read_to_string(dir.join(STAMP)).ok()?;
    let python = dir.join("bin/python");
    (stamp.trim() == lock_hash(&lock) && python.exists()).then_some(python)
}

/// Creates or refreshes the venv and returns its Python. Outside CI a failure is a warning
/// and the real-vLLM tests skip (`None`); in CI it fails the run.
pub fn ensure() -> Result<Option<PathBuf>> {
    match install() {
        Ok(python) => Ok(Some(python)),
        Err(e) if in_ci() => Err(e.context(
            "CI=true: the real-vLLM venv is required (tests/tests/real_vllm.rs runs in CI)",
        )),
        Err(e) => {
            eprintln!("warning: the real-vLLM tests will skip: {e:#}");
            Ok(None)
        }
    }
}

fn install() -> Result<PathBuf> {
    let lock_path = root().join(LOCK);
    let lock = std::fs::read(&lock_path)
        .with_context(|| format!("cannot read {}", lock_path.display()))?;
    let hash = lock_hash(&lock);
    let dir = venv_dir();
    if let Some(python) = existing() {
        eprintln!(
            "real vLLM: {} is up to date (lock {hash}); not reinstalled",
            dir.display()
        );
        return Ok(python);
    }
    if !Path::new(PYTHON).exists() {
        bail!(
            "{PYTHON} (Debian's python3.11) is missing: apt-get install python3.11 python3.11-venv"
        );
    }
    eprintln!(
        "real vLLM: building {} from {LOCK} (lock {hash}; ~2 min, ~6 GB: PyPI's torch brings \
         its CUDA libraries)",
        dir.display()
    );
    let t0 = Instant::now();
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove the old {}", dir.display()))?;
    }
    run(Command::new(PYTHON).args(["-m", "venv"]).arg(&dir))
        .context("cannot create the venv (Debian's python3.11-venv package provides ensurepip)")?;
    let python = dir.join("bin/python");
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "-r",
        ])
        .arg(&lock_path))
    .context("pip could not install the real-vLLM lock")?;
    run(Command::new(&python).args(["-c", SMOKE]))
        .context("the installed vLLM's scheduler does not import")?;
    std::fs::write(dir.join(STAMP), format!("{hash}\n"))
        .with_context(|| format!("cannot write {}", dir.join(STAMP).display()))?;
    eprintln!(
        "real vLLM: venv ready in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(python)
}
