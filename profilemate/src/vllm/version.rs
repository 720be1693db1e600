//! Which vLLM a target process runs, and which name bundle fits it.
//!
//! Owns reading the version and choosing the bundle; the names themselves stay in `ops`,
//! `state`, `batch` and `events`. The version comes from the installed distribution's
//! metadata (`vllm-X.Y.Z.dist-info/METADATA`) beside the `vllm` package the process has
//! mapped (its compiled extensions, e.g. `vllm/_C.abi3.so`), read through /proc/PID/root:
//! the target's own files, never assumed.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::bundle;

/// What was found about one process's vLLM.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VllmVersion {
    /// As its metadata says (`0.26.0`, `0.33.0+cu130`).
    pub version: String,
    /// The metadata file read (as the target sees it).
    pub source: String,
    /// The name bundle used.
    pub bundle: &'static str,
    /// Set when the version is outside the bundle's range: the names are tried anyway.
    pub note: Option<String>,
}

/// Finds `pid`'s vLLM version; None when no vLLM package is mapped in the process.
#[must_use]
pub fn of_process(pid: u32) -> Option<Result<VllmVersion, String>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let site = maps.lines().find_map(site_of_mapping)?;
    Some(read_version(pid, &site))
}

/// Finds the vLLM version from one of its source files as the target loaded it (a code
/// object's `co_filename`, `.../site-packages/vllm/v1/core/sched/scheduler.py`): for a
/// process without any compiled vLLM extension mapped (a CPU-only install).
#[must_use]
pub fn of_source_file(pid: u32, filename: &str) -> Option<Result<VllmVersion, String>> {
    let (site, _) = filename.split_once("/vllm/")?;
    Some(read_version(pid, Path::new(site)))
}

/// The directory holding the `vllm` package, from a maps line naming a file inside it.
fn site_of_mapping(line: &str) -> Option<PathBuf> {
    let path = line.split_whitespace().nth(5)?;
    let (site, _) = path.split_once("/vllm/")?;
    path.ends_with(".so").then(|| PathBuf::from(site))
}

fn read_version(pid: u32, site: &Path) -> Result<VllmVersion, String> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let host_site = root.join(site.strip_prefix("/").unwrap_or(site));
    let entries = std::fs::read_dir(&host_site)
        .map_err(|e| format!("cannot list {}: {e}", site.display()))?;
    let dist = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("vllm-") && n.ends_with(".dist-info"))
        .ok_or_else(|| format!("no vllm-*.dist-info in {}", site.display()))?;
    let metadata = Path::new(&dist).join("METADATA");
    let text = std::fs::read_to_string(host_site.join(&metadata))
        .map_err(|e| format!("cannot read {}: {e}", site.join(&metadata).display()))?;
    let version = text
        .lines()
        .take(64)
        .find_map(|l| l.strip_prefix("Version: "))
        .map(|v| v.trim().chars().take(64).collect::<String>())
        .ok_or_else(|| format!("no Version line in {}", site.join(&metadata).display()))?;
    Ok(choose(version, site.join(&metadata).display().to_string()))
}

/// The bundle for `version`, with a note when it lies outside the verified range.
fn choose(version: String, source: String) -> VllmVersion {
    let mm = major_minor(&version);
    let choice = bundle::choose(mm);
    let name = choice.bundle.name;
    let note = match (mm, choice.note) {
        (Some(_), None) => None,
        (Some(_), Some(_)) => Some(format!(
            "vLLM {version} has no name bundle; the nearest, {name}, is used: names it lacks \
             are reported as not found"
        )),
        (None, _) => Some(format!(
            "cannot parse the vLLM version {version:?}; the {name} names are used"
        )),
    };
    VllmVersion {
        version,
        source,
        bundle: name,
        note,
    }
}

/// (major, minor) of `0.26.0`, `0.33.0+cu130`, `0.30.1rc2`.
fn major_minor(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split(['.', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vllm::v0_33::NAME as BUNDLE;

    #[test]
    fn versions_inside_the_range_use_the_bundle_quietly() {
        for v in ["0.26.0", "0.30.1rc2", "0.33.0+cu130"] {
            assert_eq!(choose(v.to_owned(), String::new()).note, None, "{v}");
        }
    }

    #[test]
    fn versions_outside_say_so_and_name_the_nearest_bundle() {
        for v in ["0.25.2", "0.34.0", "1.0.0", "banana"] {
            let c = choose(v.to_owned(), String::new());
            let note = c.note.unwrap_or_default();
            assert!(note.contains(BUNDLE) && note.contains(v), "{v}: {note}");
        }
    }

    #[test]
    fn the_package_directory_comes_from_a_mapped_extension() {
        let line = "7f00-7f10 r-xp 00000000 08:01 123 /tmp/site/vllm/_C.abi3.so";
        assert_eq!(site_of_mapping(line), Some(PathBuf::from("/tmp/site")));
        let other = "7f00-7f10 r-xp 00000000 08:01 123 /usr/lib/libvllm_like.so";
        assert_eq!(site_of_mapping(other), None);
        let text = "7f00-7f10 r--p 00000000 08:01 123 /tmp/site/vllm/data.json";
        assert_eq!(site_of_mapping(text), None);
    }

    #[test]
    fn the_version_is_read_from_the_dist_info_beside_the_package() {
        let dir = std::env::temp_dir().join(format!("pm-vllm-version-{}", std::process::id()));
        let dist = dir.join("vllm-0.26.0.dist-info");
        std::fs::create_dir_all(&dist).expect("temp dir");
        std::fs::write(
            dist.join("METADATA"),
            "Metadata-Version: 2.1\nName: vllm\nVersion: 0.26.0\n",
        )
        .expect("write");
        let v = read_version(std::process::id(), &dir).expect("found");
        assert_eq!((v.version.as_str(), v.note), ("0.26.0", None));
        std::fs::remove_dir_all(&dir).ok();
    }
}
