//! The session directory and the writers every profiler uses.
//!
//! Owns: creating `DIR/session_YYYYmmdd_HHMMSS/` safely (no symlink following, no
//! world-writable files, owned by the invoking user under sudo), CSV and JSON writing (every
//! CSV text cell through `cells::neutralize`), the folded-stack format, terminal lines, and
//! latency summaries; the sink layer (`sink`) with its formats: the session directory's CSV
//! and JSON files (`csv`, which owns every file name and header) and row counts (`counts`).
//! Does not own what the rows say (the profilers).

pub mod cells;
pub use crate::console;
pub mod counts;
pub mod csv;
pub mod folded;
pub mod sink;
pub mod summary;

use std::{
    ffi::CString,
    fs::File,
    io::{BufWriter, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::{DirBuilderExt, MetadataExt},
    },
    path::{Path, PathBuf},
};

use serde::Serialize;

pub use crate::model::clock::{monotonic_ns, ms, TimeBase};

/// A failure to create or write output.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The base directory is unusable.
    #[error("output directory {path} is not usable: {why}; choose another with --out DIR or VLLM_PROFILING_DIR")]
    BaseDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A file could not be created or written.
    #[error("cannot write {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// CSV serialization failed.
    #[error("cannot write {path}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: ::csv::Error,
    },
}

/// The session directory, held open: files are created relative to this descriptor, so a
/// directory renamed or replaced by a symlink after creation cannot redirect them.
#[derive(Debug)]
pub struct SessionDir {
    path: PathBuf,
    dir: OwnedFd,
    owner: Option<(u32, u32)>,
}

/// The user that invoked sudo, if any (files are handed to them).
fn sudo_owner() -> Option<(u32, u32)> {
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    Some((uid, gid))
}

impl SessionDir {
    /// Creates `base/session_<stamp>/` (and `base` if missing). Every step after the base is
    /// opened works on descriptors (`mkdirat`, `openat`, `fchown`), so nothing can be
    /// redirected through a symlink planted in a shared directory such as /tmp. Refuses a
    /// base that is a symlink, belongs to another user, or is writable by group or others
    /// without the sticky bit.
    pub fn create(base: &Path, stamp: &str) -> Result<Self, OutputError> {
        let owner = sudo_owner();
        let base_err = |why: String| OutputError::BaseDir {
            path: base.to_owned(),
            why,
        };
        let mut created = false;
        let lstat = std::fs::symlink_metadata(base);
        if lstat.as_ref().is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(base_err(symlink_refusal(base)));
        }
        if lstat.is_err() {
            if let Some(parent) = base.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| base_err(format!("cannot create its parent: {e}")))?;
            }
            match std::fs::DirBuilder::new().mode(0o755).create(base) {
                Ok(()) => created = true,
                // Someone else made it meanwhile: the checks below decide.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(base_err(format!("cannot create it: {e}"))),
            }
        }
        let base_dir = open_dir(None, base).map_err(|e| {
            let now_a_link = std::fs::symlink_metadata(base).is_ok_and(|m| m.is_symlink());
            if e.raw_os_error() == Some(libc::ELOOP) || now_a_link {
                base_err(symlink_refusal(base))
            } else {
                base_err(format!("cannot open it: {e}"))
            }
        })?;
        let meta = File::from(base_dir.try_clone().map_err(|e| base_err(e.to_string()))?)
            .metadata()
            .map_err(|e| base_err(e.to_string()))?;
        if created {
            // SAFETY: valid fd; plain mode and ownership changes on the directory just made.
            unsafe {
                libc::fchmod(base_dir.as_raw_fd(), 0o755);
                if let Some((uid, gid)) = owner {
                    libc::fchown(base_dir.as_raw_fd(), uid, gid);
                }
            }
        } else if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
            return Err(base_err(
                "it is writable by other users and has no sticky bit".into(),
            ));
        } else if !trusted_owner(meta.uid(), owner) {
            return Err(base_err(format!(
                "it belongs to uid {}, neither root nor the invoking user",
                meta.uid()
            )));
        }
        let mut name = format!("session_{stamp}");
        let mut n = 1;
        loop {
            let cname = CString::new(name.as_str()).map_err(|e| base_err(e.to_string()))?;
            // SAFETY: valid directory fd and NUL-terminated name.
            if unsafe { libc::mkdirat(base_dir.as_raw_fd(), cname.as_ptr(), 0o755) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::AlreadyExists || n >= 100 {
                return Err(base_err(format!("cannot create {name}: {e}")));
            }
            name = format!("session_{stamp}_{n}");
            n += 1;
        }
        let path = base.join(&name);
        let dir = open_dir(Some(&base_dir), Path::new(&name))
            .map_err(|e| base_err(format!("cannot open {}: {e}", path.display())))?;
        if let Some((uid, gid)) = owner {
            // SAFETY: valid fd. Best effort: failure leaves the directory root-owned, readable.
            unsafe { libc::fchown(dir.as_raw_fd(), uid, gid) };
        }
        Ok(Self { path, dir, owner })
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the new subdirectory `name` (never an existing one, never through a
    /// symlink: made with `mkdirat` and opened with `O_NOFOLLOW` relative to this one),
    /// mode 0755, owned like the session's files.
    pub fn subdir(&self, name: &str) -> Result<SessionDir, OutputError> {
        let path = self.path.join(name);
        let io_err = |source| OutputError::Io {
            path: path.clone(),
            source,
        };
        let cname =
            CString::new(name).map_err(|_| io_err(std::io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: valid directory fd and NUL-terminated name.
        if unsafe { libc::mkdirat(self.dir.as_raw_fd(), cname.as_ptr(), 0o755) } != 0 {
            return Err(io_err(std::io::Error::last_os_error()));
        }
        let dir = open_dir(Some(&self.dir), Path::new(name)).map_err(io_err)?;
        if let Some((uid, gid)) = self.owner {
            // SAFETY: valid fd. Best effort, as for the session directory.
            unsafe { libc::fchown(dir.as_raw_fd(), uid, gid) };
        }
        Ok(SessionDir {
            path,
            dir,
            owner: self.owner,
        })
    }

    /// Creates a new file in the session directory (never an existing one, never through a
    /// symlink), mode 0644.
    /// Another handle on the same directory (the file sink owns one on the pipeline thread).
    ///
    /// # Errors
    ///
    /// The descriptor cannot be duplicated.
    pub fn try_clone(&self) -> Result<Self, OutputError> {
        let dir = self.dir.try_clone().map_err(|source| OutputError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(Self {
            path: self.path.clone(),
            dir,
            owner: self.owner,
        })
    }

    pub fn create_file(&self, name: &str) -> Result<BufWriter<File>, OutputError> {
        let path = self.path.join(name);
        let io_err = |source| OutputError::Io {
            path: path.clone(),
            source,
        };
        let cname =
            CString::new(name).map_err(|_| io_err(std::io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: valid directory fd and NUL-terminated name; the returned fd is owned below.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                cname.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io_err(std::io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by openat and is owned by nobody else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if let Some((uid, gid)) = self.owner {
            // Best effort: hand the file to the sudo user; failure leaves it root-owned, readable.
            let _ = std::os::unix::fs::fchown(&file, Some(uid), Some(gid));
        }
        Ok(BufWriter::new(file))
    }

    /// Writes a text file into the session directory.
    pub fn write_text(&self, name: &str, text: &str) -> Result<(), OutputError> {
        use std::io::Write;
        let mut f = self.create_file(name)?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.flush())
            .map_err(|source| OutputError::Io {
                path: self.path.join(name),
                source,
            })
    }

    /// Writes `value` as pretty JSON into `name`.
    pub fn write_json(&self, name: &str, value: &impl Serialize) -> Result<(), OutputError> {
        let path = self.path.join(name);
        let mut w = self.create_file(name)?;
        serde_json::to_writer_pretty(&mut w, value).map_err(|e| OutputError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        w.write_all(b"\n")
            .and_then(|()| w.flush())
            .map_err(|source| OutputError::Io { path, source })
    }
}

/// Opens a directory (relative to `at` when given) without following a final symlink.
fn open_dir(at: Option<&OwnedFd>, path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let dirfd = at.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
    // SAFETY: valid (or AT_FDCWD) directory fd and NUL-terminated path.
    let fd = unsafe {
        libc::openat(
            dirfd,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Why a symlinked `--out` is refused, naming where it points.
/// What [`SessionDir::create`] would find at `base`, without creating anything: None when it
/// does not exist yet (it would be created), its metadata when it exists and would be used.
///
/// # Errors
///
/// The same refusals `create` makes: a symbolic link, another user's directory, one writable
/// by others without the sticky bit, or not a directory.
pub fn inspect_base(base: &Path) -> Result<Option<std::fs::Metadata>, OutputError> {
    let base_err = |why: String| OutputError::BaseDir {
        path: base.to_owned(),
        why,
    };
    let meta = match std::fs::symlink_metadata(base) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(base_err(format!("cannot inspect it: {e}"))),
    };
    if meta.file_type().is_symlink() {
        return Err(base_err(symlink_refusal(base)));
    }
    if !meta.is_dir() {
        return Err(base_err("it is not a directory".to_owned()));
    }
    if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
        return Err(base_err(
            "it is writable by other users and has no sticky bit".into(),
        ));
    }
    if !trusted_owner(meta.uid(), sudo_owner()) {
        return Err(base_err(format!(
            "it belongs to uid {}, neither root nor the invoking user",
            meta.uid()
        )));
    }
    Ok(Some(meta))
}

fn symlink_refusal(base: &Path) -> String {
    let to = std::fs::read_link(base).map_or_else(|_| "?".to_owned(), |t| t.display().to_string());
    format!(
        "it is a symbolic link (to {to}); symbolic links are refused for safety (one planted \
         in a shared directory could redirect root's files): pass the real directory"
    )
}

/// A directory we did not create may be used only when root or the invoking user owns it.
fn trusted_owner(uid: u32, owner: Option<(u32, u32)>) -> bool {
    // SAFETY: geteuid has no preconditions.
    uid == 0 || uid == unsafe { libc::geteuid() } || owner.is_some_and(|(u, _)| u == uid)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("pm-out-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    const A_CSV: &str = "a.csv";
    const B_CSV: &str = "b.csv";

    crate::csv_family! {
        struct XyRow in A_CSV { x: u32, y: &'static str }
    }
    crate::csv_family! {
        struct IdRow in A_CSV { id: &'static str, v: f64 }
    }
    crate::csv_family! {
        struct IdIntRow in B_CSV { id: &'static str, v: i32 }
    }

    use sink::Sink as _;

    /// Writes `rows` (one family) through the file sink.
    fn write_rows(dir: &SessionDir, rows: &[&dyn sink::Row]) {
        let mut files = csv::Files::new(dir.try_clone().expect("dir"));
        if let Some(first) = rows.first() {
            files.open(first.family()).expect("open");
        }
        for r in rows {
            files.row(*r);
        }
        files.finish().expect("finish");
    }

    #[test]
    fn creates_session_files_without_following_symlinks() {
        let base = tmp("symlink");
        let s = SessionDir::create(&base, "20260101_000000").expect("session");
        std::os::unix::fs::symlink("/etc/passwd", s.path().join("evil.csv")).expect("symlink");
        assert!(
            s.create_file("evil.csv").is_err(),
            "must not write through a symlink"
        );
        write_rows(&s, &[&XyRow { x: 1, y: "a,\"b\"" }]);
        let text = std::fs::read_to_string(s.path().join("a.csv")).expect("read");
        assert_eq!(text, "x,y\n1,\"a,\"\"b\"\"\"\n");
        let mode = std::fs::metadata(s.path().join("a.csv"))
            .expect("meta")
            .mode();
        assert_eq!(mode & 0o022, 0, "not group/world writable");
        // A second session in the same second gets its own directory.
        let s2 = SessionDir::create(&base, "20260101_000000").expect("session 2");
        assert_ne!(s.path(), s2.path());
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn csv_files_neutralize_formula_cells_from_the_target() {
        let base = tmp("inject");
        let s = SessionDir::create(&base, "20260101_000000").expect("session");
        let evil = r#"=HYPERLINK("http://evil.example/","x")"#;
        write_rows(&s, &[&IdRow { id: evil, v: -3.5 }]);
        write_rows(
            &s,
            &[&IdIntRow {
                id: "@x\nwith\0nul",
                v: -1,
            }],
        );
        let a = std::fs::read_to_string(s.path().join("a.csv")).expect("read");
        assert_eq!(
            a,
            "id,v\n\"'=HYPERLINK(\"\"http://evil.example/\"\",\"\"x\"\")\",-3.5\n"
        );
        let b = std::fs::read_to_string(s.path().join("b.csv")).expect("read");
        assert_eq!(b, "id,v\n'@x\u{FFFD}withnul,-1\n");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn a_symlinked_out_dir_is_refused_as_a_symlink() {
        let base = tmp("real");
        std::fs::create_dir_all(&base).expect("mkdir");
        let link = tmp("alias");
        std::os::unix::fs::symlink(&base, &link).expect("symlink");
        let err = SessionDir::create(&link, "x")
            .expect_err("a symlink")
            .to_string();
        assert!(
            err.contains("symbolic link") && err.contains("refused for safety"),
            "{err}"
        );
        assert!(!err.contains("Not a directory"), "{err}");
        std::fs::remove_file(&link).expect("cleanup");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn refuses_symlinked_or_world_writable_base() {
        let base = tmp("base");
        std::fs::create_dir_all(&base).expect("mkdir");
        let link = tmp("link");
        std::os::unix::fs::symlink(&base, &link).expect("symlink");
        let err = SessionDir::create(&link, "x").expect_err("a symlink");
        assert!(matches!(err, OutputError::BaseDir { .. }));
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(matches!(
            SessionDir::create(&base, "x"),
            Err(OutputError::BaseDir { .. })
        ));
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        assert!(
            SessionDir::create(&base, "x").is_ok(),
            "sticky /tmp-like base is fine"
        );
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o775)).expect("chmod");
        assert!(
            matches!(
                SessionDir::create(&base, "y"),
                Err(OutputError::BaseDir { .. })
            ),
            "group-writable"
        );
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&base, Some(65534), Some(65534)).expect("chown");
            let err = SessionDir::create(&base, "z").expect_err("owned by another user");
            assert!(err.to_string().contains("--out"), "{err}");
        }
        std::fs::remove_file(&link).expect("cleanup");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
