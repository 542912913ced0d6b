//! The store: environments under their EnvKey on a filesystem many users and nodes share.
//!
//! ```text
//! <store>/store.toml        layout version
//! <store>/e/<key16>/        an environment, built in place (conda embeds its prefix)
//! <store>/e/<key16>.toml    its metadata = the ready marker, written last, atomically
//! <store>/locks/<key16>.lock  held (OS file lock) while that key is built
//! <store>/pkgs/             package caches (conda, uv): same filesystem, so hardlinks
//! <store>/cache/            source clones, repodata
//! ```
//!
//! Rules: nothing without a marker is trusted; one build per key at a time (lock, then
//! re-check the marker); a prefix left without a marker by a crash is removed by the next
//! builder, under the lock. Lock failures of filesystems without locks (ENOLCK, ENOSYS)
//! are reported as such, never taken for "somebody else holds it".

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diagnostic::{Blame, Diagnostic};
use crate::events::{Phase, Reporter, ReporterExt};

/// The on-disk layout version, written to `store.toml`.
pub const LAYOUT_VERSION: u32 = 1;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be written.
    #[error("the store {path} is not writable")]
    ReadOnly {
        /// The store root.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The filesystem has no working file locks.
    #[error("cannot lock {path}: this filesystem does not support file locks")]
    LocksUnsupported {
        /// The lock file.
        path: PathBuf,
        /// The I/O error (ENOLCK or ENOSYS).
        #[source]
        source: std::io::Error,
    },
    /// The disk is full.
    #[error("no space left on the device holding {path}")]
    Full {
        /// Where the write failed.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A store written by an incompatible hpcbinder.
    #[error("{path} has layout version {found}; this hpcbinder uses {LAYOUT_VERSION}")]
    Layout {
        /// `store.toml`.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// Any other I/O error (fs-err names the path).
    #[error(transparent)]
    Io(std::io::Error),
}

impl Diagnostic for StoreError {
    fn blame(&self) -> Blame {
        Blame::Environment
    }

    fn hint(&self) -> Option<String> {
        match self {
            Self::ReadOnly { .. } => Some("pass --store DIR (or set HPCBINDER_STORE) to a directory you can write".into()),
            Self::LocksUnsupported { .. } => Some(
                "put the store on a filesystem mounted with working locks (e.g. Lustre `flock`, NFS with lockd)".into(),
            ),
            Self::Full { .. } => Some("free space in the store or point --store at a larger filesystem".into()),
            Self::Layout { .. } => Some("use a store made by the same hpcbinder version, or a new --store".into()),
            Self::Io(_) => None,
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(error: std::io::Error) -> Self {
        classify(error, Path::new(""))
    }
}

/// Map an I/O error to the store error a user can act on.
pub fn classify(error: std::io::Error, path: &Path) -> StoreError {
    use std::io::ErrorKind;
    let code = os_code(&error);
    match (error.kind(), code) {
        (ErrorKind::StorageFull | ErrorKind::QuotaExceeded, _) | (_, Some(28 | 122)) => {
            StoreError::Full {
                path: path.to_path_buf(),
                source: error,
            }
        }
        (ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied, _)
        | (_, Some(30 | 13 | 1)) => StoreError::ReadOnly {
            path: path.to_path_buf(),
            source: error,
        },
        _ => StoreError::Io(error),
    }
}

/// The OS error number, also when fs-err has wrapped the error to add its path.
pub fn os_code(error: &std::io::Error) -> Option<i32> {
    if let Some(code) = error.raw_os_error() {
        return Some(code);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = error.get_ref().map(|e| e as _);
    while let Some(cause) = source {
        if let Some(code) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return Some(code);
        }
        source = cause.source();
    }
    None
}

#[derive(Debug, Serialize, Deserialize)]
struct StoreFile {
    layout: u32,
}

/// An opened store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// The ready marker's contents: what was built, from what, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    /// Marker format.
    pub format: u32,
    /// The full EnvKey.
    pub key: String,
    /// `conda`, `venv`, ...
    pub target: String,
    /// The primary buildpack.
    pub buildpack: String,
    /// The environment's directory.
    pub prefix: PathBuf,
    /// The Python version inside.
    pub python: Option<String>,
    /// Seconds since the Unix epoch when it was published.
    pub created: u64,
    /// hpcbinder's version.
    pub hpcbinder: String,
    /// Lock files written into the environment (relative to the prefix).
    pub locks: Vec<String>,
    /// The source it was first built from (origin, commit).
    pub source: String,
    /// The image, for container targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// Every key input and its digest.
    pub inputs: std::collections::BTreeMap<String, String>,
}

/// What a container build produced.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Artifact {
    /// The engine.
    pub engine: crate::target::Target,
    /// A Podman image reference, a registry reference (Shifter), or a path in the store
    /// (Charliecloud directory, Apptainer SIF).
    pub image: String,
    /// The squashfs file, for engines that have one.
    pub squashfs: Option<PathBuf>,
    /// The Python that runs the kernel inside the image.
    pub python: String,
    /// The image's `start` script (its entrypoint), for engines that ignore entrypoints.
    pub entrypoint: Option<String>,
    /// The kernel's language when it is not Python (`R`: IRkernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// That language's version, found in the image (R images: `4.2.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

impl Store {
    /// Open (creating when missing) the store at `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let store = Self {
            root: root.to_path_buf(),
        };
        let file = root.join("store.toml");
        match fs_err::read_to_string(&file) {
            Ok(text) => {
                let found: StoreFile =
                    toml::from_str(&text).map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
                if found.layout != LAYOUT_VERSION {
                    return Err(StoreError::Layout {
                        path: file,
                        found: found.layout,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs_err::create_dir_all(root).map_err(|e| classify(e, root))?;
                let text = toml::to_string(&StoreFile {
                    layout: LAYOUT_VERSION,
                })
                .expect("serialises");
                write_atomic(&file, text.as_bytes()).map_err(|e| classify(e, root))?;
            }
            Err(e) => return Err(classify(e, &file)),
        }
        for dir in ["e", "locks", "pkgs", "cache"] {
            let path = root.join(dir);
            fs_err::create_dir_all(&path).map_err(|e| classify(e, &path))?;
        }
        Ok(store)
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The prefix of a key (`e/<key16>`).
    pub fn prefix(&self, key16: &str) -> PathBuf {
        self.root.join("e").join(key16)
    }

    /// The marker of a key (`e/<key16>.toml`).
    pub fn marker(&self, key16: &str) -> PathBuf {
        self.root.join("e").join(format!("{key16}.toml"))
    }

    /// This user's package cache for `tool` (`pkgs/<tool>-<uid>`): environments hardlink
    /// their files from it, so a cache another member could write would let them change
    /// this user's environments; each user has their own, on the store's filesystem.
    pub fn package_cache(&self, tool: &str) -> PathBuf {
        package_cache_at(&self.root, tool)
    }

    /// The ready environment for `key`, if a valid marker says so.
    pub fn lookup(&self, key: &str) -> Option<Ready> {
        lookup_at(&self.root, key)
    }

    /// Take the build lock of `key16`, waiting (and saying so) while another process holds it.
    pub fn lock(&self, key16: &str, reporter: &dyn Reporter) -> Result<BuildLock, StoreError> {
        let path = self.root.join("locks").join(format!("{key16}.lock"));
        let file = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| classify(e, &path))?;
        match file.file().try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = fs_err::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                reporter.phase(
                    Phase::Waiting,
                    format!(
                        "Another build of {key16} is running{}; waiting for it",
                        if holder.is_empty() {
                            String::new()
                        } else {
                            format!(" ({holder})")
                        }
                    ),
                );
                file.file().lock().map_err(|e| lock_error(e, &path))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(lock_error(e, &path)),
        }
        // Who holds it, for the next waiter's message. One byte at least: some filesystems
        // turn flock into byte-range locks, which need a non-empty file.
        let mut handle = file.file();
        let _ = handle.set_len(0);
        let _ = writeln!(handle, "pid {} on {}", std::process::id(), hostname());
        Ok(BuildLock { _file: file })
    }
}

fn lock_error(error: std::io::Error, path: &Path) -> StoreError {
    match os_code(&error) {
        // ENOLCK, ENOSYS, EOPNOTSUPP: no locks here. Never treat these as "locked".
        Some(37) | Some(38) | Some(95) => StoreError::LocksUnsupported {
            path: path.to_path_buf(),
            source: error,
        },
        _ => classify(error, path),
    }
}

fn hostname() -> String {
    fs_err::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown host".into())
}

/// [`Store::lookup`] without opening (or creating) the store: for plans and dry runs.
/// The prefix is the key's own (`e/<key16>`), never one a marker names: a marker that
/// points elsewhere is not trusted.
pub fn lookup_at(root: &Path, key: &str) -> Option<Ready> {
    let key16 = key.get(..16)?;
    let marker = root.join("e").join(format!("{key16}.toml"));
    let text = fs_err::read_to_string(marker).ok()?;
    let ready: Ready = toml::from_str(&text).ok()?;
    let prefix = root.join("e").join(key16);
    (ready.format == 1 && ready.key == key && ready.prefix == prefix && prefix.is_dir())
        .then_some(ready)
}

/// [`Store::package_cache`] of the store at `root`.
pub fn package_cache_at(root: &Path, tool: &str) -> PathBuf {
    root.join("pkgs").join(format!("{tool}-{}", current_uid()))
}

/// This user's cache directory in the store at `root` (`cache/u<uid>`: clones, repodata).
pub fn user_cache_at(root: &Path) -> PathBuf {
    root.join("cache").join(format!("u{}", current_uid()))
}

/// This process's user id (the owner of `/proc/self`).
pub fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs_err::metadata("/proc/self").map_or(0, |m| m.uid())
}

/// Holds a key's build lock until dropped (including on error paths).
#[derive(Debug)]
pub struct BuildLock {
    _file: fs_err::File,
}

impl BuildLock {
    /// Publish `ready` as the marker of its key: temp file, fsync, rename, fsync the dir.
    pub fn publish(&self, store: &Store, ready: &Ready) -> Result<(), StoreError> {
        let text = toml::to_string(ready).map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let marker = store.marker(&ready.key[..16]);
        write_atomic(&marker, text.as_bytes()).map_err(|e| classify(e, &marker))
    }

    /// Remove what an unfinished build left at `prefix` (we hold the lock, so nobody is
    /// building it now, and without a marker nobody trusts it).
    pub fn clear_partial(&self, store: &Store, key16: &str) -> Result<bool, StoreError> {
        let prefix = store.prefix(key16);
        let marker = store.marker(key16);
        if marker.exists() {
            // A marker for another key with the same 16-hex prefix, or a stale one: both untrusted.
            fs_err::remove_file(&marker).map_err(|e| classify(e, &marker))?;
        }
        if prefix.symlink_metadata().is_err() {
            return Ok(false);
        }
        // A failed build's last writers (the installer's blocking tasks) may still be
        // finishing: retry a few times before giving up on a non-empty directory.
        let mut attempt = 0;
        loop {
            make_removable(&prefix);
            match fs_err::remove_dir_all(&prefix) {
                Ok(()) => return Ok(true),
                Err(_) if prefix.symlink_metadata().is_err() => return Ok(true),
                Err(error) if attempt >= 10 => return Err(classify(error, &prefix)),
                Err(_) => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }
}

/// A hidden temporary name beside `name`, random so that two threads of one process
/// (the service) never collide, as pids would.
pub fn temp_name(name: &str) -> String {
    format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple())
}

/// Write a file atomically: a temp file beside it, fsync, rename over, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(temp_name(&name));
    let result = (|| {
        let mut file = fs_err::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs_err::rename(&temp, path)?;
        fs_err::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs_err::remove_file(&temp);
    }
    result
}

/// Builds may leave read-only directories (packages, pip); make a tree deletable.
fn make_removable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(path)
        .into_iter()
        .filter_map(Result::ok)
    {
        if entry.file_type().is_dir() {
            if let Ok(metadata) = entry.metadata() {
                let mode = metadata.permissions().mode();
                if mode & 0o700 != 0o700 {
                    let _ = fs_err::set_permissions(
                        entry.path(),
                        std::fs::Permissions::from_mode(mode | 0o700),
                    );
                }
            }
        }
    }
}

/// Make a finished environment safe to share with the group: everything group-readable
/// (and group-executable where the owner can execute), nothing world-writable, and no
/// setuid/setgid bits on files (packages and archives must not smuggle them in).
/// Directories keep their setgid bit so a group-owned store stays group-owned.
pub fn harden_permissions(path: &Path) -> std::io::Result<()> {
    harden_permissions_to_depth(path, usize::MAX)
}

/// [`harden_permissions`] for the top `depth` levels of `path` only.
pub fn harden_permissions_to_depth(path: &Path, depth: usize) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(path).max_depth(depth) {
        let entry = entry.map_err(std::io::Error::other)?;
        if entry.file_type().is_symlink() {
            continue;
        }
        let metadata = entry.metadata().map_err(std::io::Error::other)?;
        let mode = metadata.permissions().mode() & 0o7777;
        let new = shared_mode(mode, entry.file_type().is_file());
        if new != mode {
            fs_err::set_permissions(entry.path(), std::fs::Permissions::from_mode(new))?;
        }
    }
    Ok(())
}

/// `mode` made shareable with the group: group-readable (and group-executable where the
/// owner may execute or search), never world-writable, no setuid/setgid on files.
pub fn shared_mode(mode: u32, is_file: bool) -> u32 {
    let mut new = (mode & !0o002) | 0o040;
    if mode & 0o100 != 0 {
        new |= 0o010;
    }
    if is_file {
        new &= !0o6000;
    }
    new
}

/// Whether this process's umask keeps files group-readable and never world-writable
/// (read from `/proc/self/status`; unknown counts as no).
pub fn umask_is_shareable() -> bool {
    let Ok(status) = fs_err::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
        .is_some_and(|mask| mask & 0o040 == 0 && mask & 0o002 != 0)
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn harden_strips_setuid_and_world_write() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tool");
        fs_err::write(&file, "x").unwrap();
        fs_err::set_permissions(&file, std::fs::Permissions::from_mode(0o4757)).unwrap();
        harden_permissions(dir.path()).unwrap();
        let mode = fs_err::metadata(&file).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        write_atomic(&path, b"a").unwrap();
        write_atomic(&path, b"b").unwrap();
        assert_eq!(fs_err::read_to_string(&path).unwrap(), "b");
        assert_eq!(fs_err::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn threads_of_one_process_write_the_same_file_without_colliding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.toml");
        std::thread::scope(|scope| {
            for i in 0..16 {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(path, format!("writer {i}\n").as_bytes()).unwrap();
                    }
                });
            }
        });
        assert!(fs_err::read_to_string(&path)
            .unwrap()
            .starts_with("writer "));
        assert_eq!(
            fs_err::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp left"
        );
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn filesystems_without_locks_are_not_taken_for_held_locks() {
        // ENOLCK (NFS without lockd), ENOSYS (Lustre mounted `noflock`), EOPNOTSUPP.
        for code in [37, 38, 95] {
            let error = lock_error(
                std::io::Error::from_raw_os_error(code),
                Path::new("/s/locks/k.lock"),
            );
            assert!(
                matches!(error, StoreError::LocksUnsupported { .. }),
                "{code}: {error:?}"
            );
        }
        let wrapped = fs_err::File::open("/nonexistent/dir/x").unwrap_err();
        assert_eq!(
            os_code(&wrapped),
            Some(2),
            "codes are found through fs-err's wrapper"
        );
    }
}
