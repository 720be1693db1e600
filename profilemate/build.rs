//! Embeds the kernel object built by `cargo xtask build-ebpf`.
//!
//! The eBPF crate needs nightly and `build-std` for `bpfel-unknown-none`, which a stable
//! build script cannot drive cleanly; xtask builds it, this script only locates it.
use std::{env, path::PathBuf};

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let obj = match env::var_os("PROFILEMATE_EBPF_OBJ") {
        Some(p) => PathBuf::from(p),
        None => manifest.join("../profilemate-ebpf/target/bpfel-unknown-none/release/profilemate"),
    };
    println!("cargo:rerun-if-env-changed=PROFILEMATE_EBPF_OBJ");
    println!("cargo:rerun-if-changed={}", obj.display());
    if !obj.exists() {
        panic!(
            "eBPF object {} not found: run `cargo xtask build-ebpf` first (or `cargo xtask build`)",
            obj.display()
        );
    }
    println!("cargo:rustc-env=PROFILEMATE_EBPF_OBJ={}", obj.display());
}
