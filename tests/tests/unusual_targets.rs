//! Targets and tracers outside the usual case, end to end on the fake CUDA libraries: a
//! CUDA library deleted after the target mapped it (an in-place upgrade), a target under a
//! seccomp filter, and a tracer running as an unprivileged user with only the capabilities
//! README names. Needs root (to start the others with fewer privileges); skips elsewhere.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use profilemate_tests::{
    can_attach, fake_cuda_dir, fixture_bin, profilemate_bin, scratch, serial, Proc, Target, Tracer,
};

const STEPS: usize = 40;

/// A copy of the fake CUDA libraries in `dir/libs`, readable by every user.
fn copied_libraries(dir: &Path) -> PathBuf {
    let libs = dir.join("libs");
    std::fs::create_dir_all(&libs).expect("libs dir");
    for e in std::fs::read_dir(fake_cuda_dir())
        .expect("fake CUDA dir")
        .flatten()
    {
        std::fs::copy(e.path(), libs.join(e.file_name())).expect("copy library");
    }
    libs
}

/// The Rust fixture on the libraries in `libs`, started and loaded ("ready").
fn fixture_on(dir: &Path, libs: &Path, extra: &[&str]) -> Target {
    let log = dir.join("truth.log");
    let mut cmd = Command::new(fixture_bin());
    cmd.arg("--lib-dir")
        .arg(libs)
        .args([
            "--wait-after-load-ms",
            "2500",
            "--steps",
            &STEPS.to_string(),
        ])
        .args(extra)
        .env("FAKE_CUDA_LOG", &log);
    let mut target = Target {
        proc: Proc::spawn(&mut cmd),
        log,
    };
    target.proc.wait_line("ready");
    target
}

#[test]
fn a_cuda_library_deleted_after_it_was_mapped_is_still_probed() {
    let test = "a_cuda_library_deleted_after_it_was_mapped_is_still_probed";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let dir = scratch("deleted-lib");
    let libs = copied_libraries(&dir);
    let mut target = fixture_on(&dir, &libs, &[]);
    // The upgrade: the files the target mapped are gone from the disk.
    std::fs::remove_dir_all(&libs).expect("delete the libraries");
    let mut tracer = Tracer::attach(target.proc.pid(), &dir, &[]);
    tracer.wait_attached();
    assert_eq!(target.proc.wait_exit(Duration::from_secs(60)), 0);
    let s = tracer.finish(Duration::from_secs(30));
    assert_eq!(s.csv("forward_pass_timing.csv").len(), STEPS);
    let md = s.json("metadata.json");
    let found = md["targets"][0]["libraries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(found.len(), 2, "libcudart and libcuda: {md}");
    for l in &found {
        assert_eq!(l["deleted"], true, "{l}");
        assert!(
            l["host_path"]
                .as_str()
                .is_some_and(|p| p.contains("/map_files/")),
            "{l}"
        );
    }
}

#[test]
fn a_target_under_seccomp_keeps_running_and_says_what_it_got() {
    let test = "a_target_under_seccomp_keeps_running_and_says_what_it_got";
    if !can_attach(test) {
        return;
    }
    let _g = serial();
    let dir = scratch("seccomp");
    // A filter that kills the process at the `uretprobe` syscall, as a sandbox that does not
    // know it would: on 6.11-6.13 the tracer must leave return probes out, elsewhere it may
    // use them; either way the target lives and every step is found.
    let mut target = fixture_on(&dir, &fake_cuda_dir(), &["--seccomp-kill-uretprobe"]);
    let mut tracer = Tracer::attach(target.proc.pid(), &dir, &[]);
    tracer.wait_attached();
    assert_eq!(
        target.proc.wait_exit(Duration::from_secs(60)),
        0,
        "the target under seccomp did not survive"
    );
    let s = tracer.finish(Duration::from_secs(30));
    assert_eq!(s.csv("forward_pass_timing.csv").len(), STEPS);
    let t = &s.json("metadata.json")["targets"][0];
    assert_eq!(t["seccomp"], "filter", "{t}");
    let probes = t["return_probes"].as_str().unwrap_or_default();
    assert!(["attach", "entry_only"].contains(&probes), "{t}");
    assert_eq!(
        probes == "entry_only",
        t["return_probes_lost"].is_string(),
        "{t}"
    );
}

/// `setpriv` running `profilemate` as user `nobody` with `caps` (e.g. "+sys_admin") as its
/// only capabilities; the binary is copied where that user can run it.
fn unprivileged(dir: &Path, caps: &str) -> Command {
    let bin = dir.join("profilemate");
    std::fs::copy(profilemate_bin(), &bin).expect("copy profilemate");
    let sessions = dir.join("sessions");
    std::fs::create_dir_all(&sessions).expect("sessions dir");
    // The user's own output directory (one writable by others is refused, rightly).
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(&sessions, Some(65534), Some(65534)).expect("chown");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(format!("--inh-caps=-all{caps}"))
        .arg(format!("--ambient-caps=-all{caps}"))
        .arg(&bin);
    cmd
}

fn has_setpriv(test: &str) -> bool {
    let ok = Command::new("setpriv").arg("--version").output().is_ok();
    if !ok {
        eprintln!("SKIPPED {test}: needs setpriv (util-linux)");
    }
    ok
}

#[test]
fn an_unprivileged_tracer_with_sys_admin_and_sys_ptrace_profiles() {
    let test = "an_unprivileged_tracer_with_sys_admin_and_sys_ptrace_profiles";
    if !can_attach(test) || !has_setpriv(test) {
        return;
    }
    let _g = serial();
    let dir = scratch("least-privilege");
    let libs = copied_libraries(&dir);
    let mut target = fixture_on(&dir, &libs, &[]);
    let cmd = unprivileged(&dir, ",+sys_admin,+sys_ptrace");
    let mut tracer = Tracer::attach_with(cmd, target.proc.pid(), &dir, &[]);
    tracer.wait_attached();
    assert_eq!(target.proc.wait_exit(Duration::from_secs(60)), 0);
    let s = tracer.finish(Duration::from_secs(30));
    assert_eq!(s.csv("forward_pass_timing.csv").len(), STEPS);
}

#[test]
fn a_tracer_without_the_capabilities_says_which_it_needs() {
    let test = "a_tracer_without_the_capabilities_says_which_it_needs";
    if !can_attach(test) || !has_setpriv(test) {
        return;
    }
    let _g = serial();
    let dir = scratch("no-caps");
    let mut target = fixture_on(&dir, &fake_cuda_dir(), &[]);
    let cmd = unprivileged(&dir, ",+sys_ptrace");
    let mut tracer = Tracer::attach_with(cmd, target.proc.pid(), &dir, &[]);
    let (code, stderr) = tracer.exit_code_and_stderr(Duration::from_secs(30));
    assert_ne!(code, 0, "{stderr:?}");
    let said = stderr.join("\n");
    assert!(
        said.contains("CAP_SYS_ADMIN") && said.contains("CAP_SYS_PTRACE"),
        "{said}"
    );
    // Nothing happened to the target.
    assert_eq!(target.proc.wait_exit(Duration::from_secs(60)), 0);
}
