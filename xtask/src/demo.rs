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

pub fn run(seconds: u64) -> Result<()> {
    // The target loads CUDA after a second, like a server loading its model; profilemate is
    // already waiting (--wait) and sees the graph captures at start-up.
    let target = start_fixture(&[
        "--wait-before-load-ms",
        "1000",
        "--wait-after-load-ms",
        "300",
    ])?;
    let pid = target.0.id();
    eprintln!("demo target pid {pid}: a vLLM-shaped step loop (CUDA graph capture, graph replays, eager steps, async event waits) over the fake CUDA libraries");
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
