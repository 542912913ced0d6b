//! Who may have written what a build reuses, in a store other users share.
//!
//! A member of the store's group can create entries in its shared directories, so an
//! environment, a marker or a tool there is trusted only when it belongs to this user,
//! root, the store's owner or a configured maintainer, and nobody else can write it. The
//! store applies its sharing mode explicitly (whatever the umask): results are readable
//! by the group (and by everyone when the store root is), writable only by their owner;
//! shared directories that members write into are sticky, so an entry can be renamed or
//! removed only by whoever made it.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::StoreError;

/// The users whose results this user trusts in one store.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    uids: BTreeSet<u32>,
    /// The users and groups `store-maintainers` names.
    named: Named,
}

/// The users `store-maintainers` names: user names or ids, and groups as `@name`.
#[derive(Debug, Clone, Default)]
pub struct Named {
    /// Users.
    pub uids: BTreeSet<u32>,
    /// Groups, whose members are all named.
    pub gids: BTreeSet<u32>,
}

impl Named {
    /// Resolve each entry (an unknown name is an error, never silently nobody).
    pub fn resolve(entries: &[String]) -> Result<Self, StoreError> {
        let mut named = Self::default();
        for entry in entries {
            match entry.strip_prefix('@') {
                Some(group) => named.gids.insert(resolve_group(group)?),
                None => named.uids.insert(resolve_user(entry)?),
            };
        }
        Ok(named)
    }

    /// Whether `uid` is named, itself or through a group.
    pub fn contains(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
            || (!self.gids.is_empty() && groups_of(uid).iter().any(|g| self.gids.contains(g)))
    }
}

impl Trust {
    /// This user, root, the owner of the store root, and `maintainers` (user names or
    /// numeric ids; a name that does not resolve is an error, never silently nobody).
    pub fn for_store(root: &Path, maintainers: &[String]) -> Result<Self, StoreError> {
        let mut uids = BTreeSet::from([0, super::current_uid()]);
        if let Ok(metadata) = fs_err::metadata(root) {
            uids.insert(metadata.uid());
        }
        Ok(Self {
            uids,
            named: Named::resolve(maintainers)?,
        })
    }

    /// Whether `uid` is trusted.
    pub fn trusts(&self, uid: u32) -> bool {
        self.uids.contains(&uid) || self.named.contains(uid)
    }

    /// Why `path` (an entry another build left) cannot be trusted, or `None` when it can:
    /// owned by a trusted user, not a symlink, writable by nobody else.
    pub fn doubt(&self, path: &Path) -> Option<String> {
        let metadata = path.symlink_metadata().ok()?;
        if metadata.file_type().is_symlink() {
            return Some(format!("{} is a symlink", path.display()));
        }
        if !self.trusts(metadata.uid()) {
            return Some(format!(
                "{} belongs to {}, whom this store does not trust",
                path.display(),
                user_name(metadata.uid())
            ));
        }
        if metadata.permissions().mode() & 0o022 != 0 {
            return Some(format!(
                "{} is writable by other users (mode {:o})",
                path.display(),
                metadata.permissions().mode() & 0o7777
            ));
        }
        None
    }
}

/// A user name or numeric id as a uid, through the system's user database (`id -u`, so
/// LDAP and sssd users resolve too).
pub fn resolve_user(name: &str) -> Result<u32, StoreError> {
    if let Ok(uid) = name.parse() {
        return Ok(uid);
    }
    let output = std::process::Command::new("id")
        .args(["-u", "--", name])
        .output()
        .map_err(StoreError::Io)?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|_| output.status.success())
        .ok_or_else(|| StoreError::UnknownUser {
            name: name.to_string(),
        })
}

/// A group name or numeric id as a gid (`getent group`, so LDAP groups resolve too).
fn resolve_group(name: &str) -> Result<u32, StoreError> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let output = std::process::Command::new("getent")
        .args(["group", "--", name])
        .output()
        .map_err(StoreError::Io)?;
    String::from_utf8_lossy(&output.stdout)
        .split(':')
        .nth(2)
        .and_then(|gid| gid.trim().parse().ok())
        .filter(|_| output.status.success())
        .ok_or_else(|| StoreError::UnknownUser {
            name: format!("@{name}"),
        })
}

/// The groups (primary and supplementary) of `uid`, through `id -G`.
pub fn groups_of(uid: u32) -> Vec<u32> {
    std::process::Command::new("id")
        .args(["-G", &uid.to_string()])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A uid as `name (uid N)` for messages, or `uid N` when it has no name.
pub fn user_name(uid: u32) -> String {
    std::process::Command::new("id")
        .args(["-nu", &uid.to_string()])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|n| !n.is_empty())
        .map_or_else(
            || format!("uid {uid}"),
            |name| format!("{name} (uid {uid})"),
        )
}

/// How a store is shared, read from its root's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharing {
    /// The group may create entries (the root is group-writable): shared directories
    /// are sticky.
    pub group_writes: bool,
    /// Everyone may read results (the root is world-searchable).
    pub world_reads: bool,
    /// New entries keep the root's group (setgid root).
    pub setgid: bool,
}

impl Sharing {
    /// The sharing of the store at `root` (private when it cannot be read).
    pub fn of(root: &Path) -> Self {
        let mode = fs_err::metadata(root).map_or(0o700, |m| m.permissions().mode());
        Self {
            group_writes: mode & 0o020 != 0,
            world_reads: mode & 0o001 != 0,
            setgid: mode & 0o2000 != 0,
        }
    }

    /// The mode of a result file or directory whose owner bits are `mode`'s: the owner's
    /// read and execute bits copied to the group (and to others when the store is
    /// world-readable), write for the owner's files only, no setuid/setgid on files. The
    /// umask plays no part. Directories are read-only even for the owner: a finished
    /// result never changes, and nothing run from it later (a kernel writing
    /// `__pycache__` under umask 002) can add an entry others could write.
    pub fn result_mode(&self, mode: u32, is_dir: bool) -> u32 {
        let mut owner = mode & 0o700;
        if is_dir {
            owner &= !0o200;
        }
        let read_execute = (owner >> 6) & 0o5;
        let mut new = owner | (read_execute << 3);
        if self.world_reads {
            new |= read_execute;
        }
        if is_dir && self.setgid {
            new |= 0o2000;
        }
        new
    }

    /// The mode of a shared directory members create entries in (`e/`, `locks/`, ...).
    pub fn shared_dir_mode(&self) -> u32 {
        let mut mode = 0o750;
        if self.world_reads {
            mode |= 0o005;
        }
        if self.setgid {
            mode |= 0o2000;
        }
        if self.group_writes {
            mode |= 0o1020;
        }
        mode
    }

    /// The mode of a file others only read (markers, lock files' holder lines).
    pub fn file_mode(&self) -> u32 {
        self.result_mode(0o644, false)
    }
}

/// Make a shared directory of the store (creating it) and apply its mode when this user
/// owns it; one owned by someone else must already be safe: not writable by others, or
/// sticky so members cannot rename each other's entries.
pub fn shared_dir(path: &Path, sharing: Sharing) -> Result<(), StoreError> {
    fs_err::create_dir_all(path).map_err(|e| super::classify(e, path))?;
    let metadata = fs_err::metadata(path).map_err(|e| super::classify(e, path))?;
    let mode = metadata.permissions().mode() & 0o7777;
    let wanted = sharing.shared_dir_mode();
    if metadata.uid() == super::current_uid() {
        if mode != wanted {
            fs_err::set_permissions(path, std::fs::Permissions::from_mode(wanted))
                .map_err(|e| super::classify(e, path))?;
        }
        return Ok(());
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(StoreError::Unsafe {
            path: path.to_path_buf(),
            why: format!(
                "it is writable by other users (mode {mode:o}) without the sticky bit, so they could replace any environment in it"
            ),
            hint: format!(
                "ask its owner, {}, to run `chmod +t {}`",
                user_name(metadata.uid()),
                path.display()
            ),
        });
    }
    Ok(())
}

/// Make this user's own directory in the store (`cache/u<uid>`, `pkgs/u<uid>`), readable
/// only by them, and refuse one somebody else made for them.
pub fn private_dir(path: &Path) -> Result<(), StoreError> {
    match fs_err::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.parent().is_some() => {
            let parent = path.parent().expect("checked");
            fs_err::create_dir_all(parent).map_err(|e| super::classify(e, parent))?;
            fs_err::create_dir(path).map_err(|e| super::classify(e, path))?;
        }
        Err(e) => return Err(super::classify(e, path)),
    }
    let metadata = path
        .symlink_metadata()
        .map_err(|e| super::classify(e, path))?;
    if !metadata.is_dir() || metadata.uid() != super::current_uid() {
        return Err(StoreError::Unsafe {
            path: path.to_path_buf(),
            why: format!(
                "it should be this user's own directory but belongs to {}",
                user_name(metadata.uid())
            ),
            hint: "ask the store's owner to remove it; another user made it".into(),
        });
    }
    // Private, but keeping the store's group for what is made inside (environments
    // hardlink their files from the package caches here).
    let wanted = 0o700 | (metadata.permissions().mode() & 0o2000);
    if metadata.permissions().mode() & 0o7777 != wanted {
        fs_err::set_permissions(path, std::fs::Permissions::from_mode(wanted))
            .map_err(|e| super::classify(e, path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_modes_ignore_the_umask_and_never_let_others_write() {
        let group = Sharing {
            group_writes: true,
            world_reads: false,
            setgid: true,
        };
        assert_eq!(group.result_mode(0o600, false), 0o640);
        assert_eq!(group.result_mode(0o777, false), 0o750);
        assert_eq!(group.result_mode(0o4755, false), 0o750);
        assert_eq!(group.result_mode(0o700, true), 0o2550);
        assert_eq!(group.shared_dir_mode(), 0o3770);
        let public = Sharing {
            group_writes: false,
            world_reads: true,
            setgid: false,
        };
        assert_eq!(public.result_mode(0o664, false), 0o644);
        assert_eq!(public.result_mode(0o700, true), 0o555);
        assert_eq!(public.shared_dir_mode(), 0o755);
    }
}
