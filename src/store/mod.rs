//! The store: environments under their EnvKey on a filesystem many users and nodes share.
//!
//! ```text
//! <store>/store.toml        layout version
//! <store>/e/<key16>/        an environment, built in place (conda embeds its prefix)
//! <store>/e/<key16>.toml    its metadata = the ready marker, written last, atomically
//! <store>/e/<key16>-u<uid>/ a user's private copy, when e/<key16> belongs to someone
//!                           they do not trust (see [`trust`])
//! <store>/locks/<key16>.lock  held (OS file lock) while that key is built
//! <store>/pkgs/u<uid>/      a user's package caches (conda, uv): same filesystem, so
//!                           hardlinks; per user, as environments share their inodes
//! <store>/cache/u<uid>/     a user's source clones and repodata
//! <store>/tools/            tools installed once (uv)
//! <store>/used/<slot>.<uid> touched by the kernel helper: when each user last used it
//! <store>/pins/, kernels/   collaborations' pins and shared kernels ([`crate::collab`])
//! ```
//!
//! Rules: nothing without a marker is trusted, nor anything a user outside the store's
//! trusted set could have written ([`trust`]); one build per key at a time (lock, then
//! re-check the marker); a prefix left without a marker by a crash is removed by the next
//! builder, under the lock. Lock failures of filesystems without locks (ENOLCK, ENOSYS)
//! are reported as such, never taken for "somebody else holds it".

mod lock;
pub mod trust;

pub use lock::BuildLock;
use lock::{hostname, lock_error};

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
    /// Something in the store that another user could have changed.
    #[error("{path} is not safe to use: {why}")]
    Unsafe {
        /// The entry.
        path: PathBuf,
        /// Why.
        why: String,
        /// What to do.
        hint: String,
    },
    /// A configured maintainer that is no user here.
    #[error("store-maintainers names `{name}`, which is not a user on this machine")]
    UnknownUser {
        /// As configured.
        name: String,
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
            Self::Unsafe { hint, .. } => Some(hint.clone()),
            Self::UnknownUser { .. } => Some("fix store-maintainers in the config (`hpcbinder config show` says which file)".into()),
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

/// Whether a tool's output says the disk (or the quota) is full. Tools wrap long lines
/// (uv breaks "No space left on\n device"), so whitespace runs count as one space.
pub fn says_full(text: &str) -> bool {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    [
        "No space left on device",
        "os error 28",
        "Disk quota exceeded",
        "os error 122",
        "StorageFull",
    ]
    .iter()
    .any(|needle| flat.contains(needle))
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
    trust: trust::Trust,
    sharing: trust::Sharing,
}

/// Where one key's environment lives for this user: the shared entry, or a private one
/// when the shared entry belongs to someone this user does not trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// `e/<key16>` or `e/<key16>-u<uid>`.
    pub name: String,
    /// Why the shared entry was passed over, when it was.
    pub passed_over: Option<String>,
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
    /// Open (creating when missing) the store at `root`, trusting results of this user,
    /// root, the store's owner and `maintainers` (user names or ids).
    pub fn open(root: &Path, maintainers: &[String]) -> Result<Self, StoreError> {
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
                let sharing = trust::Sharing::of(root);
                write_atomic(&file, text.as_bytes(), sharing.file_mode())
                    .map_err(|e| classify(e, root))?;
            }
            Err(e) => return Err(classify(e, &file)),
        }
        let store = Self {
            root: root.to_path_buf(),
            trust: trust::Trust::for_store(root, maintainers)?,
            sharing: trust::Sharing::of(root),
        };
        for dir in ["e", "locks", "pkgs", "cache", "tools", "used"] {
            trust::shared_dir(&root.join(dir), store.sharing)?;
        }
        for dir in ["pkgs", "cache"] {
            trust::private_dir(&root.join(dir).join(format!("u{}", current_uid())))?;
        }
        Ok(store)
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How the store is shared.
    pub fn sharing(&self) -> trust::Sharing {
        self.sharing
    }

    /// Where `key16` lives for this user: `e/<key16>` unless its marker or prefix belongs
    /// to someone this user does not trust (or others could write it), then this user's
    /// own `e/<key16>-u<uid>`.
    pub fn slot(&self, key16: &str) -> Result<Slot, StoreError> {
        slot_at(&self.root, &self.trust, key16)
    }

    /// The prefix of a slot (`e/<name>`).
    pub fn prefix(&self, slot: &Slot) -> PathBuf {
        self.root.join("e").join(&slot.name)
    }

    /// The marker of a slot (`e/<name>.toml`).
    pub fn marker(&self, slot: &Slot) -> PathBuf {
        self.root.join("e").join(format!("{}.toml", slot.name))
    }

    /// This user's package cache for `tool` (`pkgs/u<uid>/<tool>`): environments hardlink
    /// their files from it, so a cache another member could write would let them change
    /// this user's environments; each user has their own, on the store's filesystem.
    pub fn package_cache(&self, tool: &str) -> PathBuf {
        package_cache_at(&self.root, tool)
    }

    /// Whether the environment in `slot` was verified (a kernel started and ran a cell):
    /// `e/<name>.verified`, trusted as a marker is.
    pub fn is_verified(&self, slot: &Slot) -> bool {
        let path = self.verified(slot);
        path.exists() && self.trust.doubt(&path).is_none()
    }

    /// `e/<name>.verified`.
    fn verified(&self, slot: &Slot) -> PathBuf {
        self.root.join("e").join(format!("{}.verified", slot.name))
    }

    /// Record that the environment in `slot` was verified.
    pub fn mark_verified(&self, slot: &Slot) -> std::io::Result<()> {
        let path = self.root.join("e").join(format!("{}.verified", slot.name));
        if self.is_verified(slot) {
            return Ok(());
        }
        write_atomic(
            &path,
            format!("{}\n", now()).as_bytes(),
            self.sharing.file_mode(),
        )
    }

    /// The ready environment for `key` in `slot`, if a valid, trusted marker says so.
    pub fn lookup(&self, slot: &Slot, key: &str) -> Option<Ready> {
        lookup_in(&self.root, &self.trust, slot, key)
    }

    /// Take the build lock named `name` (a slot's, or a tool's), waiting (and saying so)
    /// while another process holds it.
    pub fn lock(&self, name: &str, reporter: &dyn Reporter) -> Result<BuildLock, StoreError> {
        let path = self.root.join("locks").join(format!("{name}.lock"));
        // A lock file removed or replaced between our open and our lock locks nothing:
        // take it again until the file we hold is the one at the path.
        for _ in 0..20 {
            let lock = self.lock_once(name, &path, reporter)?;
            if lock.still_held() {
                return Ok(lock);
            }
        }
        Err(StoreError::Unsafe {
            path,
            why: "it keeps being replaced while we lock it".into(),
            hint: "stop whatever removes lock files in the store while builds run".into(),
        })
    }

    fn lock_once(
        &self,
        name: &str,
        path: &Path,
        reporter: &dyn Reporter,
    ) -> Result<BuildLock, StoreError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let path = path.to_path_buf();
        let file = match fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(file) => file,
            // Another member's lock file: a read-only descriptor locks as well.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && path.is_file() => {
                fs_err::File::open(&path).map_err(|e| classify(e, &path))?
            }
            Err(e) => return Err(classify(e, &path)),
        };
        if let Ok(metadata) = file.metadata() {
            let wanted = self.sharing.file_mode();
            if metadata.uid() == current_uid() && metadata.permissions().mode() & 0o7777 != wanted {
                let _ = file.set_permissions(std::fs::Permissions::from_mode(wanted));
            }
        }
        match file.file().try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = fs_err::read_to_string(&path).unwrap_or_default();
                // Written by whoever holds it: one short line, nothing that could fake output.
                let holder: String = holder
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(120)
                    .collect();
                reporter.phase(
                    Phase::Waiting,
                    format!(
                        "Another build of {name} is running{}; waiting for it",
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
        let identity = file
            .metadata()
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| classify(e, &path))?;
        Ok(BuildLock {
            _file: file,
            path,
            identity,
        })
    }
}

/// [`Store::lookup`] without opening (or creating) the store: for plans and dry runs.
/// The prefix is the key's own (`e/<key16>`), never one a marker names: a marker that
/// points elsewhere is not trusted.
/// [`Store::slot`] of the store at `root`.
pub fn slot_at(root: &Path, trust: &trust::Trust, key16: &str) -> Result<Slot, StoreError> {
    use std::os::unix::fs::MetadataExt;
    let e = root.join("e");
    let shared = [e.join(key16), e.join(format!("{key16}.toml"))]
        .iter()
        .find_map(|path| trust.doubt(path));
    let Some(why) = shared else {
        return Ok(Slot {
            name: key16.to_string(),
            passed_over: None,
        });
    };
    let name = format!("{key16}-u{}", current_uid());
    // This user's own entries: somebody else's under that name is a trap, not a copy.
    for path in [e.join(&name), e.join(format!("{name}.toml"))] {
        if let Ok(metadata) = path.symlink_metadata() {
            if metadata.uid() != current_uid() || metadata.file_type().is_symlink() {
                return Err(StoreError::Unsafe {
                    why: format!(
                        "it should be this user's own copy but belongs to {}",
                        trust::user_name(metadata.uid())
                    ),
                    path,
                    hint: "ask the store's owner to remove it; another user made it".into(),
                });
            }
        }
    }
    Ok(Slot {
        name,
        passed_over: Some(why),
    })
}

/// [`Store::lookup`] of the store at `root`.
pub fn lookup_in(root: &Path, trust: &trust::Trust, slot: &Slot, key: &str) -> Option<Ready> {
    use std::os::unix::fs::MetadataExt;
    let marker = root.join("e").join(format!("{}.toml", slot.name));
    let prefix = root.join("e").join(&slot.name);
    if trust.doubt(&marker).is_some() || trust.doubt(&prefix).is_some() {
        return None;
    }
    // The environment is its marker's owner's: a marker cannot vouch for another's files.
    let owner = |path: &Path| path.symlink_metadata().ok().map(|m| m.uid());
    if owner(&marker)? != owner(&prefix)? {
        return None;
    }
    let text = fs_err::read_to_string(&marker).ok()?;
    let ready: Ready = toml::from_str(&text).ok()?;
    (ready.format == 1
        && ready.key == key
        && slot.name.starts_with(key.get(..16)?)
        && ready.prefix == prefix
        && prefix.is_dir())
    .then_some(ready)
}

/// Where `key` lives for this user in the store at `root`, and whether it is ready
/// there (for plans, which open and create nothing).
pub fn slot_and_ready(root: &Path, maintainers: &[String], key: &str) -> (Slot, bool) {
    let key16 = key.get(..16).unwrap_or(key);
    let trust = trust::Trust::for_store(root, maintainers).ok();
    let slot = trust
        .as_ref()
        .and_then(|trust| slot_at(root, trust, key16).ok());
    match (trust, slot) {
        (Some(trust), Some(slot)) => {
            let ready = lookup_in(root, &trust, &slot, key).is_some();
            (slot, ready)
        }
        // The build reports the error.
        _ => (
            Slot {
                name: key16.to_string(),
                passed_over: None,
            },
            false,
        ),
    }
}

/// [`Store::package_cache`] of the store at `root`.
pub fn package_cache_at(root: &Path, tool: &str) -> PathBuf {
    root.join("pkgs")
        .join(format!("u{}", current_uid()))
        .join(tool)
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

/// A hidden temporary name beside `name`, random so that two threads of one process
/// (the service) never collide, as pids would.
pub fn temp_name(name: &str) -> String {
    format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple())
}

/// Write a file atomically with `mode` (whatever the umask): a temp file beside it,
/// fsync, rename over, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(temp_name(&name));
    let result = (|| {
        let mut file = fs_err::File::create(&temp)?;
        file.write_all(bytes)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
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
pub fn make_removable(path: &Path) {
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

/// Make a finished result safe to share ([`trust::Sharing::result_mode`]): readable as
/// the store is, writable only by its owner, no setuid/setgid on files, whatever the
/// umask was.
pub fn harden_permissions(path: &Path, sharing: trust::Sharing) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(path) {
        let entry = entry.map_err(std::io::Error::other)?;
        if entry.file_type().is_symlink() {
            continue;
        }
        let metadata = entry.metadata().map_err(std::io::Error::other)?;
        let mode = metadata.permissions().mode() & 0o7777;
        let new = sharing.result_mode(mode, entry.file_type().is_dir());
        if new != mode {
            fs_err::set_permissions(entry.path(), std::fs::Permissions::from_mode(new))?;
        }
    }
    Ok(())
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
    fn a_full_disk_is_recognised_in_wrapped_tool_output() {
        // uv's own wrapping, as a CI run printed it.
        let uv = "  cause: failed to write to file\n         `/s/pkgs/u0/uv/.tmp/debugpy/public_api.py`: No space left on\n         device (os error 28)\n";
        assert!(says_full(uv));
        assert!(says_full("OSError: [Errno 122] Disk quota exceeded"));
        assert!(!says_full(
            "error: No solution found when resolving dependencies"
        ));
        assert!(!says_full("No space left for doubt"));
    }

    #[test]
    fn harden_strips_setuid_and_world_write() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tool");
        fs_err::write(&file, "x").unwrap();
        fs_err::set_permissions(&file, std::fs::Permissions::from_mode(0o4777)).unwrap();
        let sharing = trust::Sharing {
            group_writes: true,
            world_reads: true,
            setgid: false,
        };
        harden_permissions(dir.path(), sharing).unwrap();
        let mode = fs_err::metadata(&file).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        write_atomic(&path, b"a", 0o644).unwrap();
        write_atomic(&path, b"b", 0o600).unwrap();
        assert_eq!(fs_err::read_to_string(&path).unwrap(), "b");
        let mode = fs_err::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "the mode asked for, not the umask's");
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
                        write_atomic(path, format!("writer {i}\n").as_bytes(), 0o644).unwrap();
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
