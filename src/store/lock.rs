//! One build per key at a time: the OS file lock on `locks/<key16>.lock`, the builder's
//! mark in the prefix being built, and telling a live builder from a dead one.

use std::path::{Path, PathBuf};

use super::{classify, make_removable, os_code, write_atomic, Ready, Slot, Store, StoreError};

pub(super) fn lock_error(error: std::io::Error, path: &Path) -> StoreError {
    match os_code(&error) {
        // ENOLCK, ENOSYS, EOPNOTSUPP: no locks here. Never treat these as "locked".
        Some(37) | Some(38) | Some(95) => StoreError::LocksUnsupported {
            path: path.to_path_buf(),
            source: error,
        },
        _ => classify(error, path),
    }
}

/// A running process's start time (clock ticks since boot, `/proc/<pid>/stat` field 22);
/// `None` when it is gone, a zombie, or exiting (a killed process releases its files,
/// and with them its locks, before it turns into a zombie: `PF_EXITING` says so).
fn process_start(pid: u32) -> Option<String> {
    const PF_EXITING: u64 = 0x4;
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 9 (flags) is rest[6], field 22 is rest[19].
    let exiting = fields
        .get(6)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_EXITING != 0);
    (!exiting && !matches!(fields.first(), Some(&"Z") | Some(&"X")))
        .then(|| fields.get(19).map(|s| s.to_string()))?
}

/// Whether the builder `pid` (started at `started`) runs, giving a process that is being
/// killed a moment to finish dying (its lock is free a little before it is gone).
fn builder_alive(pid: u32, started: &str) -> bool {
    for _ in 0..20 {
        if process_start(pid).as_deref() != Some(started) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    true
}

pub(super) fn hostname() -> String {
    fs_err::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown host".into())
}

/// Holds a key's build lock until dropped (including on error paths).
#[derive(Debug)]
pub struct BuildLock {
    pub(super) _file: fs_err::File,
    pub(super) path: PathBuf,
    /// The locked file's device and inode.
    pub(super) identity: (u64, u64),
}

/// The builder's mark in a prefix being built (`hpcbinder/builder`): pid and host.
const BUILDER_FILE: &str = "hpcbinder/builder";

impl BuildLock {
    /// Whether the file we hold locked is still the one at the lock's path (nobody removed
    /// or replaced it, which would let another builder in).
    pub fn still_held(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        fs_err::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.identity)
    }

    /// An error when the lock was swapped under us and another process holds the file now
    /// at the path: it may be building, so this build must not publish. When nobody holds
    /// the new file, this build takes it and goes on.
    pub fn verify(&mut self) -> Result<(), StoreError> {
        use std::os::unix::fs::MetadataExt;
        if self.still_held() {
            return Ok(());
        }
        let retaken = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.path)
            .ok()
            .filter(|file| file.file().try_lock().is_ok());
        if let Some(file) = retaken {
            if let Ok(metadata) = file.metadata() {
                self.identity = (metadata.dev(), metadata.ino());
                self._file = file;
                if self.still_held() {
                    return Ok(());
                }
            }
        }
        Err(StoreError::Unsafe {
            path: self.path.clone(),
            why: "the lock file was replaced while this build held it, and another build holds the new one; not publishing".into(),
            hint: "run the build again; and stop whatever removes lock files in the store while builds run".into(),
        })
    }

    /// Mark `prefix` as being built by this process (see [`BuildLock::clear_partial`]).
    pub fn mark_builder(&self, prefix: &Path) -> std::io::Result<()> {
        let path = prefix.join(BUILDER_FILE);
        fs_err::create_dir_all(path.parent().unwrap_or(prefix))?;
        let pid = std::process::id();
        let started = process_start(pid).unwrap_or_default();
        fs_err::write(path, format!("{pid} {started} {}\n", hostname()))
    }

    /// Publish `ready` as the marker of `slot`: temp file, fsync, rename, fsync the dir;
    /// readable by the store's readers, writable by nobody else.
    pub fn publish(&self, store: &Store, slot: &Slot, ready: &Ready) -> Result<(), StoreError> {
        let text = toml::to_string(ready).map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let marker = store.marker(slot);
        write_atomic(&marker, text.as_bytes(), store.sharing.file_mode())
            .map_err(|e| classify(e, &marker))
    }

    /// Remove what an unfinished build left in `slot` (we hold the lock, so nobody is
    /// building it now, and without a marker nobody trusts it).
    pub fn clear_partial(&self, store: &Store, slot: &Slot) -> Result<bool, StoreError> {
        let prefix = store.prefix(slot);
        let marker = store.marker(slot);
        let verified = store.verified(slot);
        if verified.symlink_metadata().is_ok() {
            fs_err::remove_file(&verified).map_err(|e| classify(e, &verified))?;
        }
        if marker.symlink_metadata().is_ok() {
            // A marker for another key with the same 16-hex prefix, or a stale one: both untrusted.
            fs_err::remove_file(&marker).map_err(|e| classify(e, &marker))?;
        }
        if prefix.symlink_metadata().is_err() {
            return Ok(false);
        }
        // A live builder on this host whose lock was taken from it: never pull its prefix
        // from under it.
        if let Ok(text) = fs_err::read_to_string(prefix.join(BUILDER_FILE)) {
            let mut fields = text.split_whitespace();
            let pid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let started = fields.next().unwrap_or_default();
            let host = fields.next();
            // The same process (its start time: pids are reused), running (a killed
            // builder can linger as a zombie until its parent reaps it), on this host.
            let alive = pid != 0
                && pid != std::process::id()
                && host == Some(hostname().as_str())
                && builder_alive(pid, started);
            if alive {
                return Err(StoreError::Unsafe {
                    path: prefix,
                    why: format!("process {pid} on this host is still building it, though its lock file was removed"),
                    hint: "wait for that build to finish, then run this one again".into(),
                });
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_builder_is_alive_only_while_its_process_runs() {
        assert!(process_start(std::process::id()).is_some());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(200));
        // Exited, not reaped yet: a zombie, which builds nothing.
        assert_eq!(process_start(pid), None);
        child.wait().unwrap();
        assert_eq!(process_start(pid), None);
    }

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
