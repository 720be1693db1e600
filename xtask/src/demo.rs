//! `cargo xtask demo`: the built-in demo target (the vLLM-shaped fixture over the fake CUDA
//! libraries), profiled for a few seconds.

use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

use crate::{fake_cuda_dir, is_root, release_dir, root};

/// Kills the child on drop, so an error path leaves no demo target running.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // SAFETY: plain signal to our own child; failure means it already exited.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// `profilemate` under sudo when we are not root.
pub fn profilemate_command() -> Command {
    let bin = release_dir().join("profilemate");
    if is_root() {
        Command::new(bin)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(bin);
        c
    }
}

/// Starts the demo target running until terminated.
pub fn start_fixture(extra: &[&str]) -> Result<Reaped> {
    let child = Command::new(release_dir().join("pm-fixture"))
        .arg("--lib-dir")
        .arg(fake_cuda_dir())
        .args([
            "--forever",
            "--graphs",
            "4",
            "--steps",
            "100",
            "--kernel-us",
            "300",
            "--step-gap-us",
            "500",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the demo target (pm-fixture)")?;
    Ok(Reaped(child))
}

/// The Python demo target: vLLM's module paths and functions (tests/pyfixture) running an
/// async-scheduling engine loop over the fake CUDA runtime, until terminated.
fn start_python_fixture(python: &str) -> Result<Reaped> {
    let out = root().join("target/demo-sessions");
    std::fs::create_dir_all(&out).context("cannot create target/demo-sessions")?;
    let child = Command::new(python)
        .arg(root().join("tests/scripts/vllm_fixture.py"))
        .arg("--lib-dir")
        .arg(fake_cuda_dir())
        .args(["--forever", "--wait-after-load-ms", "1500", "--truth"])
        .arg(out.join("demo_target_truth.jsonl"))
        .env("FAKE_CUDA_LOG", "/dev/null")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the demo target (tests/scripts/vllm_fixture.py)")?;
    Ok(Reaped(child))
}

pub fn run(seconds: u64) -> Result<()> {
    // Preferred target: the Python one (CPU per vLLM operation, stacks, GC pauses as well as
    // the CUDA steps); the Rust fixture where no python3 is installed. Either loads CUDA
    // after a moment, like a server loading its model; profilemate is already waiting
    // (--wait) and sees the graph captures at start-up.
    let python = ["/usr/bin/python3", "python3"].into_iter().find(|p| {
        Command::new(p)
            .arg("-c")
            .arg("pass")
            .status()
            .is_ok_and(|s| s.success())
    });
    let target = match python {
        Some(py) => {
            let t = start_python_fixture(py)?;
            eprintln!("demo target pid {}: vLLM's engine loop shape in Python ({py}; scheduler, model runner, sampler, output thread with vLLM's module paths) over the fake CUDA libraries", t.0.id());
            t
        }
        None => {
            let t = start_fixture(&[
                "--wait-before-load-ms",
                "1000",
                "--wait-after-load-ms",
                "300",
            ])?;
            eprintln!("demo target pid {}: a vLLM-shaped step loop (CUDA graph capture, graph replays, eager steps, async event waits) over the fake CUDA libraries", t.0.id());
            t
        }
    };
    let pid = target.0.id();
    let out = root().join("target/demo-sessions");
    let status = profilemate_command()
        .args([
            "attach",
            "--wait",
            "--rescan-ms",
            "100",
            "--pid",
            &pid.to_string(),
        ])
        .args(["--duration", &format!("{seconds}s"), "--out"])
        .arg(&out)
        .status()
        .context("cannot run profilemate")?;
    drop(target);
    anyhow::ensure!(status.success(), "profilemate attach failed: {status}");
    Ok(())
}
