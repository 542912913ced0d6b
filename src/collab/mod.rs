//! Collaborations: names (pins) a team's kernels follow, in the store (DESIGN §3).
//!
//! ```text
//! <store>/pins/pins.toml     name -> the environment it points at, and its history
//! <store>/pins/pins.lock     held (OS file lock) while pins.toml is changed
//! <store>/kernels/<name>/    the pin's shared kernelspec (JUPYTER_PATH=<store>)
//! <store>/used/<slot>.<uid>  touched by the kernel helper: when each user last used it
//! ```
//!
//! Only maintainers (root, the store's owner, `store-maintainers`) change pins or remove
//! environments; `pins/` and `kernels/` are theirs (never writable by the group), and a
//! `pins.toml` or kernel someone else could have written is refused, as every other
//! entry of a shared store ([`crate::store::trust`]). Re-pinning keeps the kernel's name:
//! its kernelspec is replaced whole (see [`crate::kernel::KernelSpec::install`]) and runs
//! `python` from the environment the helper activates, so notebooks keep their kernel.

pub mod inventory;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backends::register::{self, Registration};
use crate::diagnostic::{Blame, Diagnostic};
use crate::events::Reporter;
use crate::settings::Settings;
use crate::store::{self, trust, Ready, Store};

/// Errors of pins and store management.
#[derive(Debug, thiserror::Error)]
pub enum CollabError {
    /// Not a maintainer.
    #[error("{user} may not {action}: only the store's maintainers may ({maintainers})")]
    NotMaintainer {
        /// Who tried.
        user: String,
        /// What.
        action: String,
        /// Who may.
        maintainers: String,
    },
    /// No such pin.
    #[error("there is no pin named `{name}`")]
    NoPin {
        /// The name.
        name: String,
    },
    /// No such environment.
    #[error("no ready environment in {store} matches `{key}`")]
    NoEnvironment {
        /// The key (or prefix of one) asked for.
        key: String,
        /// The store.
        store: PathBuf,
    },
    /// More than one environment matches.
    #[error("`{key}` matches more than one environment: {matches}")]
    Ambiguous {
        /// What was asked for.
        key: String,
        /// The matches.
        matches: String,
    },
    /// A pin name outside Jupyter's kernel-name rule.
    #[error("`{name}` cannot name a pin: pins name kernels, which are letters, digits, `.`, `_` and `-`")]
    BadName {
        /// The name.
        name: String,
    },
    /// pins.toml or a shared kernel written by someone who is not a maintainer.
    #[error("not trusted: {why}")]
    Untrusted {
        /// Why.
        why: String,
    },
    /// Rollback past the history.
    #[error("pin `{name}` has {len} earlier targets; cannot roll back {steps}")]
    NoHistory {
        /// The pin.
        name: String,
        /// How many it has.
        len: usize,
        /// How many were asked.
        steps: usize,
    },
    /// Removing something in use or pinned.
    #[error("{what} is {why}")]
    InUse {
        /// What.
        what: String,
        /// Pinned, or used by a running kernel.
        why: String,
    },
    /// An environment without a lock in the format asked for.
    #[error("environment {slot} has no {format} lock (it is a {target} environment; its locks: {locks})")]
    NoLock {
        /// The store entry.
        slot: String,
        /// The format asked for.
        format: String,
        /// Its target.
        target: String,
        /// The locks it has.
        locks: String,
    },
    /// `pin --from-lock FILE` alone, with a file that is not such an export.
    #[error("{file} is not a lock hpcbinder can build from alone")]
    NotALock {
        /// The file.
        file: PathBuf,
    },
    /// `pin NAME` with nothing to point it at.
    #[error("`pin {name}` needs something to point at")]
    NothingToPin {
        /// The pin.
        name: String,
    },
    /// A malformed pins.toml.
    #[error("{path} is not a valid pins file: {message}")]
    BadPinsFile {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

impl Diagnostic for CollabError {
    fn blame(&self) -> Blame {
        match self {
            Self::Untrusted { .. } | Self::BadPinsFile { .. } => Blame::Environment,
            _ => Blame::User,
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            Self::NotMaintainer { .. } => "ask a maintainer, or (as the store's administrator) add the user to `store-maintainers` in the site config".into(),
            Self::NoPin { .. } => "`hpcbinder pins` lists the pins".into(),
            Self::NoEnvironment { .. } => "`hpcbinder list` shows the store's environments and their keys".into(),
            Self::Ambiguous { .. } => "give more characters of the key".into(),
            Self::BadName { .. } => "e.g. `desi-main` or `lsst.2024`".into(),
            Self::Untrusted { .. } => "a maintainer should remove it and pin again".into(),
            Self::NoHistory { .. } => "`hpcbinder pin NAME --history` shows the earlier targets".into(),
            Self::InUse { .. } => "unpin it first, wait for its kernels to stop, or pass --force".into(),
            Self::BadPinsFile { .. } => "restore it from a backup, or remove it and pin again".into(),
            Self::NoLock { .. } => "conda environments export as pixi or explicit (and their pip part as requirements); venvs as requirements".into(),
            Self::NotALock { .. } => "export it with `hpcbinder export KEY --format explicit` (conda) or `--format requirements` (venv), or give the repository too".into(),
            Self::NothingToPin { .. } => "give a repository, --key KEY, --history or --rollback".into(),
        })
    }
}

/// What a pin points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinTarget {
    /// The full EnvKey.
    pub key: String,
    /// The store entry (`<key16>` or `<key16>-u<uid>`).
    pub slot: String,
    /// Where it was built from (`origin@commit`).
    pub source: String,
    /// `venv`, `conda`, `podman`, ...
    pub target: String,
    /// Seconds since the epoch when the pin was set.
    pub at: u64,
    /// Who set it.
    pub by: String,
}

/// One pin: its target now, and where it pointed before (oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The display name given with `--display-name`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Where it points now.
    pub current: PinTarget,
    /// Earlier targets, oldest first.
    #[serde(default)]
    pub history: Vec<PinTarget>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PinsFile {
    #[serde(default)]
    pin: BTreeMap<String, Pin>,
}

/// The store's maintainers: root, the store's owner, and `store-maintainers` (users, and
/// groups as `@name`).
pub struct Maintainers {
    uids: BTreeSet<u32>,
    named: trust::Named,
    names: Vec<String>,
}

impl Maintainers {
    /// Whether `uid` is one.
    pub fn contains(&self, uid: &u32) -> bool {
        self.uids.contains(uid) || self.named.contains(*uid)
    }

    /// The maintainers' group, when `store-maintainers` names one: `pins/` and `kernels/`
    /// then belong to it and its members write them.
    fn group(&self) -> Option<u32> {
        self.named.gids.iter().next().copied()
    }
}

/// The maintainers of the store at `root`.
pub fn maintainers(root: &Path, settings: &Settings) -> Result<Maintainers, store::StoreError> {
    let mut uids = BTreeSet::from([0]);
    if let Ok(metadata) = fs_err::metadata(root) {
        uids.insert(metadata.uid());
    }
    let named = trust::Named::resolve(&settings.store_maintainers)?;
    uids.extend(named.uids.iter().copied());
    let mut names: Vec<String> = uids.iter().map(|uid| trust::user_name(*uid)).collect();
    names.extend(
        settings
            .store_maintainers
            .iter()
            .filter_map(|n| n.strip_prefix('@'))
            .map(|group| format!("members of {group}")),
    );
    Ok(Maintainers { uids, named, names })
}

/// Refuse `action` unless this user is a maintainer.
pub fn require_maintainer(store: &Store, settings: &Settings, action: &str) -> anyhow::Result<()> {
    let allowed = maintainers(store.root(), settings)?;
    if allowed.contains(&store::current_uid()) {
        return Ok(());
    }
    Err(CollabError::NotMaintainer {
        user: trust::user_name(store::current_uid()),
        action: action.to_string(),
        maintainers: allowed.names.join(", "),
    }
    .into())
}

/// A directory only maintainers write, readable as the store is: this user's alone
/// (never group-writable), or, when `store-maintainers` names a group, that group's
/// (setgid, group-writable: its members replace each other's pins and kernels).
fn maintainer_dir(store: &Store, settings: &Settings, path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        fs_err::create_dir_all(path)?;
    }
    if fs_err::metadata(path)?.uid() != store::current_uid() {
        return Ok(());
    }
    let mut mode = store.sharing().result_mode(0o755, true) | 0o200;
    match maintainers(store.root(), settings)?.group() {
        Some(gid) => {
            // The directory's group is the maintainers', so the store's other members
            // read it as others: only those who can reach the store root at all.
            std::os::unix::fs::chown(path, None, Some(gid))?;
            mode |= 0o2075;
        }
        None => mode |= fs_err::metadata(store.root())?.mode() & 0o2000,
    }
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Why `path` is not to be trusted as written by a maintainer, if it is not.
fn doubt(path: &Path, maintainers: &Maintainers) -> Option<String> {
    let metadata = path.symlink_metadata().ok()?;
    if metadata.file_type().is_symlink() {
        return Some(format!("{} is a symlink", path.display()));
    }
    if !maintainers.contains(&metadata.uid()) {
        return Some(format!(
            "{} belongs to {}, who is not a maintainer of this store",
            path.display(),
            trust::user_name(metadata.uid())
        ));
    }
    // Group-writable only by the maintainers' own group.
    let group_ok = metadata.mode() & 0o020 == 0 || maintainers.named.gids.contains(&metadata.gid());
    if metadata.mode() & 0o002 != 0 || !group_ok {
        return Some(format!(
            "{} is writable by other users (mode {:o})",
            path.display(),
            metadata.mode() & 0o7777
        ));
    }
    None
}

/// The pins of the store at `root` (empty when there are none), refused when anyone but
/// a maintainer could have written them.
pub fn read_pins(root: &Path, settings: &Settings) -> anyhow::Result<BTreeMap<String, Pin>> {
    let dir = root.join("pins");
    let path = dir.join("pins.toml");
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let allowed = maintainers(root, settings)?;
    for entry in [&dir, &path] {
        if let Some(why) = doubt(entry, &allowed) {
            return Err(CollabError::Untrusted { why }.into());
        }
    }
    let text = fs_err::read_to_string(&path)?;
    let file: PinsFile = toml::from_str(&text).map_err(|e| CollabError::BadPinsFile {
        path: path.clone(),
        message: e.message().to_string(),
    })?;
    Ok(file.pin)
}

/// Change the pins under the pins lock (so no concurrent change is lost), then write them
/// atomically. `change` returns its result, or an error that leaves the file as it was.
pub fn update_pins<T>(
    store: &Store,
    settings: &Settings,
    change: impl FnOnce(&mut BTreeMap<String, Pin>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let dir = store.root().join("pins");
    maintainer_dir(store, settings, &dir)?;
    let lock_path = dir.join("pins.lock");
    // Another maintainer's lock file may not be writable for us: a read-only descriptor
    // locks as well.
    let lock = fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .or_else(|_| fs_err::File::open(&lock_path))?;
    lock.file().lock()?;
    let mut pins = read_pins(store.root(), settings)?;
    let result = change(&mut pins)?;
    let text = toml::to_string(&PinsFile { pin: pins })?;
    let text =
        format!("# Written by hpcbinder under pins.lock; edit with `hpcbinder pin`.\n{text}");
    let mode = if maintainers(store.root(), settings)?.group().is_some() {
        0o644
    } else {
        store.sharing().file_mode()
    };
    store::write_atomic(&dir.join("pins.toml"), text.as_bytes(), mode)?;
    drop(lock);
    Ok(result)
}

/// Jupyter's kernel-name rule, which pin names follow.
pub fn check_name(name: &str) -> Result<(), CollabError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(CollabError::BadName {
            name: crate::printer::sanitize_line(name),
        })
    }
}

/// The shared kernels directory: `shared-kernels`, else the store's `kernels/`.
pub fn kernels_dir(settings: &Settings) -> PathBuf {
    settings
        .shared_kernels
        .clone()
        .unwrap_or_else(|| settings.store.join("kernels"))
}

/// The display name of a pin's kernel: the given one, else `NAME (origin @ commit7)`.
pub fn display_name(name: &str, pin: &Pin) -> String {
    if let Some(given) = &pin.display_name {
        return given.clone();
    }
    let source = crate::source::redact(&pin.current.source);
    let short = match source.rsplit_once('@') {
        Some((origin, commit))
            if commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            format!("{origin} @ {}", &commit[..7])
        }
        _ => source,
    };
    format!("{name} ({short})")
}

/// The environment a pin is to point at.
pub struct Choice<'a> {
    /// Its ready record.
    pub ready: &'a Ready,
    /// Its store entry.
    pub slot: &'a str,
    /// A display name for the kernel (else the pin's earlier one, else the default).
    pub display_name: Option<String>,
}

/// Point `name` at the ready environment `ready` (in `slot`): record it (the old target
/// goes to the history), then write the shared kernel and prove it answers. The pin is
/// written only after its kernel works.
pub fn pin_ready(
    store: &Store,
    settings: &Settings,
    name: &str,
    choice: Choice<'_>,
    verify: bool,
    reporter: &dyn Reporter,
) -> anyhow::Result<Pin> {
    check_name(name)?;
    require_maintainer(store, settings, &format!("pin `{name}`"))?;
    let Choice {
        ready,
        slot,
        display_name: display,
    } = choice;
    let target = PinTarget {
        key: ready.key.clone(),
        slot: slot.to_string(),
        source: ready.source.clone(),
        target: ready.target.clone(),
        at: store::now(),
        by: trust::user_name(store::current_uid()),
    };
    let existing = read_pins(store.root(), settings)?.remove(name);
    let pin = Pin {
        display_name: display.or_else(|| existing.as_ref().and_then(|p| p.display_name.clone())),
        current: target.clone(),
        history: Vec::new(),
    };
    register_pin_kernel(store, settings, name, &pin, ready, verify, reporter)?;
    update_pins(store, settings, |pins| {
        let entry = pins.entry(name.to_string()).or_insert_with(|| pin.clone());
        if entry.current != target {
            let old = std::mem::replace(&mut entry.current, target.clone());
            if old.key != target.key {
                entry.history.push(old);
            }
        }
        entry.display_name = pin.display_name.clone();
        Ok(entry.clone())
    })
}

/// Write `<store>/kernels/<name>/` for `pin`, pointing at `ready`.
fn register_pin_kernel(
    store: &Store,
    settings: &Settings,
    name: &str,
    pin: &Pin,
    ready: &Ready,
    verify: bool,
    reporter: &dyn Reporter,
) -> anyhow::Result<PathBuf> {
    let kernels = kernels_dir(settings);
    maintainer_dir(store, settings, &kernels)?;
    let display = display_name(name, pin);
    let registered = register::register(
        settings,
        ready,
        &Registration {
            name,
            display_name: &display,
            kernels_dir: &kernels,
            origin: &pin.current.source,
            follow: true,
        },
        verify,
        reporter,
    )?;
    // Readable by the store's members, as the environment is; writable by its owner
    // only (a re-pin replaces it whole).
    let group = maintainers(store.root(), settings)?.group().is_some();
    for entry in walkdir::WalkDir::new(&registered.dir).into_iter().flatten() {
        let is_dir = entry.file_type().is_dir();
        let mode = entry.metadata()?.mode();
        let mut new = store.sharing().result_mode(mode, is_dir);
        if is_dir {
            // The maintainers' group replaces it whole on a re-pin.
            new |= if group { 0o2275 } else { 0o200 };
        } else if group {
            new |= (new & 0o500) >> 6;
        }
        fs_err::set_permissions(entry.path(), std::fs::Permissions::from_mode(new))?;
    }
    Ok(registered.dir)
}

/// The ready environment a pin target names, checked as any reuse is: its marker must
/// be trusted and record the same key.
pub fn ready_of(store: &Store, target: &PinTarget) -> anyhow::Result<Ready> {
    let slot = store::Slot {
        name: target.slot.clone(),
        passed_over: None,
    };
    store.lookup(&slot, &target.key).ok_or_else(|| {
        CollabError::NoEnvironment {
            key: target.key[..16.min(target.key.len())].to_string(),
            store: store.root().to_path_buf(),
        }
        .into()
    })
}

/// Move `name` back `steps` targets in its history (the current one is kept in the
/// history too, so a rollback can itself be undone).
pub fn rollback(
    store: &Store,
    settings: &Settings,
    name: &str,
    steps: usize,
    reporter: &dyn Reporter,
) -> anyhow::Result<Pin> {
    require_maintainer(store, settings, &format!("roll back `{name}`"))?;
    let pins = read_pins(store.root(), settings)?;
    let pin = pins.get(name).ok_or_else(|| CollabError::NoPin {
        name: name.to_string(),
    })?;
    let len = pin.history.len();
    if steps == 0 || steps > len {
        return Err(CollabError::NoHistory {
            name: name.to_string(),
            len,
            steps,
        }
        .into());
    }
    let back = pin.history[len - steps].clone();
    let ready = ready_of(store, &back)?;
    pin_ready(
        store,
        settings,
        name,
        Choice {
            ready: &ready,
            slot: &back.slot,
            display_name: pin.display_name.clone(),
        },
        true,
        reporter,
    )
}

/// Remove a pin and its shared kernel (the environments stay, for `gc` to judge).
pub fn unpin(store: &Store, settings: &Settings, name: &str) -> anyhow::Result<Pin> {
    require_maintainer(store, settings, &format!("unpin `{name}`"))?;
    let removed = update_pins(store, settings, |pins| {
        pins.remove(name).ok_or_else(|| {
            CollabError::NoPin {
                name: name.to_string(),
            }
            .into()
        })
    })?;
    let kernel = kernels_dir(settings).join(name);
    if kernel.exists() {
        store::make_removable(&kernel);
        fs_err::remove_dir_all(&kernel)?;
    }
    Ok(removed)
}

/// Copy a pin's shared kernel into `kernels_dir` (a member's own), still following the
/// pin: its command is the shared helper, which a re-pin replaces.
pub fn kernel_add(
    root: &Path,
    settings: &Settings,
    name: &str,
    kernels_dir_to: &Path,
) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let shared = kernels_dir(settings).join(name);
    let pins = read_pins(root, settings)?;
    if !pins.contains_key(name) || !shared.join("kernel.json").is_file() {
        return Err(CollabError::NoPin {
            name: name.to_string(),
        }
        .into());
    }
    let allowed = maintainers(root, settings)?;
    for entry in [
        shared.clone(),
        shared.join("kernel.json"),
        shared.join("kernel-helper.sh"),
    ] {
        if let Some(why) = doubt(&entry, &allowed) {
            return Err(CollabError::Untrusted { why }.into());
        }
    }
    let text = fs_err::read_to_string(shared.join("kernel.json"))?;
    let target = kernels_dir_to.join(name);
    fs_err::create_dir_all(&target)?;
    store::write_atomic(&target.join("kernel.json"), text.as_bytes(), 0o644)?;
    Ok(target)
}

/// The `JUPYTER_PATH` entry that makes the shared kernels visible: the parent of the
/// shared `kernels` directory.
pub fn jupyter_path(settings: &Settings) -> String {
    let kernels = kernels_dir(settings);
    kernels.parent().unwrap_or(&kernels).display().to_string()
}
