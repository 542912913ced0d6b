//! What the store holds, and keeping it tidy: `list`, `show`, `rm`, `gc`, `export`.
//!
//! "In use" is the kernel helper's shared lock on the environment's marker (held by the
//! kernel for as long as it runs, on whichever node): an environment whose marker cannot
//! be locked exclusively has a running kernel. "Last used" is the newest of the
//! `used/<slot>.<uid>` stamps the helper touches (atime is useless on `noatime` mounts).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{read_pins, require_maintainer, CollabError, Pin};
use crate::events::Reporter;
use crate::settings::Settings;
use crate::store::{self, Ready, Slot, Store};

/// One environment, as `list` and `show` describe it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The store entry (`<key16>` or `<key16>-u<uid>`).
    pub slot: String,
    /// The full key.
    pub key: String,
    /// Where it was built from.
    pub source: String,
    /// `venv`, `conda`, an engine.
    pub target: String,
    /// The prefix.
    pub prefix: PathBuf,
    /// Bytes on disk (each file once).
    pub size: u64,
    /// When it was built (seconds since the epoch).
    pub built: u64,
    /// Who built it.
    pub built_by: String,
    /// When a kernel last started from it, if ever.
    pub last_used: Option<u64>,
    /// Pins pointing at it (`name`, or `name (history)`).
    pub pins: Vec<String>,
    /// Kernelspecs pointing at it (the store's shared ones and this user's).
    pub kernels: Vec<String>,
    /// A kernel runs from it now.
    pub in_use: bool,
    /// Its lock files (relative to the prefix).
    pub locks: Vec<String>,
}

/// One package of an environment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Package {
    /// `conda` or `pip`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// sha256 of the package file (conda), or the hashes its lock allows (pip).
    pub sha256: String,
}

/// Every environment with a marker in the store, oldest first.
pub fn entries(store: &Store, settings: &Settings) -> anyhow::Result<Vec<Entry>> {
    let pins = read_pins(store.root(), settings)?;
    let kernels = kernel_index(settings);
    let mut out = Vec::new();
    for item in fs_err::read_dir(store.root().join("e"))? {
        let path = item?.path();
        let Some(slot) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".toml"))
            .filter(|n| !n.starts_with('.'))
        else {
            continue;
        };
        let Some(ready) = ready_in(store, slot) else {
            continue;
        };
        out.push(entry(store, slot, &ready, &pins, &kernels));
    }
    out.sort_by_key(|e| (e.built, e.slot.clone()));
    Ok(out)
}

/// The trusted ready record of `slot`.
fn ready_in(store: &Store, slot: &str) -> Option<Ready> {
    let text = fs_err::read_to_string(store.root().join("e").join(format!("{slot}.toml"))).ok()?;
    let ready: Ready = toml::from_str(&text).ok()?;
    let slot = Slot {
        name: slot.to_string(),
        passed_over: None,
    };
    store.lookup(&slot, &ready.key)
}

fn entry(
    store: &Store,
    slot: &str,
    ready: &Ready,
    pins: &BTreeMap<String, Pin>,
    kernels: &BTreeMap<String, Vec<String>>,
) -> Entry {
    let marker = store.root().join("e").join(format!("{slot}.toml"));
    let mut pinned = Vec::new();
    for (name, pin) in pins {
        if pin.current.slot == slot {
            pinned.push(name.clone());
        } else if pin.history.iter().any(|t| t.slot == slot) {
            pinned.push(format!("{name} (history)"));
        }
    }
    Entry {
        slot: slot.to_string(),
        key: ready.key.clone(),
        source: crate::source::redact(&ready.source),
        target: ready.target.clone(),
        prefix: ready.prefix.clone(),
        size: disk_usage(&ready.prefix),
        built: ready.created,
        built_by: fs_err::metadata(&marker)
            .map(|m| store::trust::user_name(m.uid()))
            .unwrap_or_default(),
        last_used: last_used(store.root(), slot),
        pins: pinned,
        kernels: kernels.get(&ready.key).cloned().unwrap_or_default(),
        in_use: in_use(&marker),
        locks: ready.locks.clone(),
    }
}

/// Bytes of the files under `path`, each inode once.
pub fn disk_usage(path: &Path) -> u64 {
    let mut seen = BTreeSet::new();
    walkdir::WalkDir::new(path)
        .into_iter()
        .flatten()
        .filter_map(|e| e.path().symlink_metadata().ok())
        .filter(|m| m.is_file() && seen.insert((m.dev(), m.ino())))
        .map(|m| m.blocks() * 512)
        .sum()
}

fn last_used(root: &Path, slot: &str) -> Option<u64> {
    let prefix = format!("{slot}.");
    fs_err::read_dir(root.join("used"))
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .max()
}

/// Whether a kernel runs from the environment whose marker is `marker`: its helper holds
/// a shared lock on the marker while the kernel lives.
pub fn in_use(marker: &Path) -> bool {
    let Ok(file) = std::fs::File::open(marker) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

/// Key → kernel names of the kernelspecs that point at it: the store's shared ones and
/// this user's own.
fn kernel_index(settings: &Settings) -> BTreeMap<String, Vec<String>> {
    let mut index: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (dir, shared) in [
        (super::kernels_dir(settings), true),
        (crate::plan::default_kernels_dir(), false),
    ] {
        for (name, spec) in kernelspecs(&dir) {
            if let Some(key) = spec["metadata"]["hpcbinder"]["key"].as_str() {
                let label = if shared {
                    format!("{name} (shared)")
                } else {
                    name
                };
                index.entry(key.to_string()).or_default().push(label);
            }
        }
    }
    index
}

/// `(name, kernel.json)` of each kernelspec in `dir`.
fn kernelspecs(dir: &Path) -> Vec<(String, serde_json::Value)> {
    let Ok(items) = fs_err::read_dir(dir) else {
        return Vec::new();
    };
    items
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let text = fs_err::read_to_string(e.path().join("kernel.json")).ok()?;
            Some((name, serde_json::from_str(&text).ok()?))
        })
        .collect()
}

/// The environment `what` names: a pin, or a key (its first characters are enough, 8 at
/// least) or store entry.
pub fn resolve(store: &Store, settings: &Settings, what: &str) -> anyhow::Result<Entry> {
    let pins = read_pins(store.root(), settings)?;
    let all = entries(store, settings)?;
    if let Some(pin) = pins.get(what) {
        return all
            .into_iter()
            .find(|e| e.slot == pin.current.slot)
            .ok_or_else(|| {
                CollabError::NoEnvironment {
                    key: pin.current.slot.clone(),
                    store: store.root().to_path_buf(),
                }
                .into()
            });
    }
    let matches: Vec<Entry> = all
        .into_iter()
        .filter(|e| what.len() >= 8 && (e.key.starts_with(what) || e.slot == what))
        .collect();
    match matches.len() {
        1 => Ok(matches.into_iter().next().expect("one")),
        0 => Err(CollabError::NoEnvironment {
            key: what.to_string(),
            store: store.root().to_path_buf(),
        }
        .into()),
        _ => Err(CollabError::Ambiguous {
            key: what.to_string(),
            matches: matches
                .iter()
                .map(|e| e.slot.clone())
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into()),
    }
}

/// The packages of an environment: conda's from `conda-meta/`, pip's from its hashed lock.
pub fn packages(entry: &Entry) -> Vec<Package> {
    let mut out = Vec::new();
    if let Ok(items) = fs_err::read_dir(entry.prefix.join("conda-meta")) {
        for item in items.flatten() {
            let Ok(text) = fs_err::read_to_string(item.path()) else {
                continue;
            };
            let Ok(record) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let field = |name: &str| record[name].as_str().unwrap_or_default().to_string();
            if field("name").is_empty() {
                continue;
            }
            out.push(Package {
                kind: "conda".into(),
                name: field("name"),
                version: field("version"),
                sha256: field("sha256"),
            });
        }
    }
    for lock in ["hpcbinder/requirements.lock", "hpcbinder/pip.lock"] {
        if let Ok(text) = fs_err::read_to_string(entry.prefix.join(lock)) {
            out.extend(pip_packages(&text));
        }
    }
    out.sort();
    out
}

/// The `name==version` requirements of a hashed requirements lock, with their hashes.
fn pip_packages(text: &str) -> Vec<Package> {
    crate::backends::lock_blocks(text)
        .into_iter()
        .filter_map(|(requirement, hashes)| {
            let pinned = requirement.split([' ', ';']).next().unwrap_or_default();
            let (name, version) = pinned.split_once("==")?;
            Some(Package {
                kind: "pip".into(),
                name: name.to_ascii_lowercase(),
                version: version.to_string(),
                sha256: hashes.join(","),
            })
        })
        .collect()
}

/// What `rm` or `gc` removed (or would remove).
#[derive(Debug, Clone, Serialize)]
pub struct Freed {
    /// What it was.
    pub what: String,
    /// Its path.
    pub path: PathBuf,
    /// Bytes.
    pub bytes: u64,
}

/// Remove an environment: refused for a pinned one (its history included) or one a
/// running kernel uses, unless `force`.
pub fn remove(
    store: &Store,
    settings: &Settings,
    what: &str,
    force: bool,
    reporter: &dyn Reporter,
) -> anyhow::Result<Freed> {
    require_maintainer(store, settings, &format!("remove `{what}`"))?;
    let entry = resolve(store, settings, what)?;
    if !force {
        if !entry.pins.is_empty() {
            return Err(CollabError::InUse {
                what: format!("environment {}", entry.slot),
                why: format!("pinned ({})", entry.pins.join(", ")),
            }
            .into());
        }
        if entry.in_use {
            return Err(CollabError::InUse {
                what: format!("environment {}", entry.slot),
                why: "used by a running kernel".into(),
            }
            .into());
        }
    }
    delete_environment(store, &entry, reporter)
}

/// Remove an environment under its build lock: the marker first (so nothing trusts it
/// any more), then the prefix, renamed aside before it is deleted.
fn delete_environment(
    store: &Store,
    entry: &Entry,
    reporter: &dyn Reporter,
) -> anyhow::Result<Freed> {
    let _lock = store.lock(&entry.slot, reporter)?;
    let e = store.root().join("e");
    let bytes = entry.size;
    let trash = e.join(format!(
        ".trash-{}-{}",
        entry.slot,
        uuid::Uuid::new_v4().simple()
    ));
    let marker = e.join(format!("{}.toml", entry.slot));
    fs_err::remove_file(&marker)?;
    let _ = fs_err::remove_file(e.join(format!("{}.verified", entry.slot)));
    fs_err::rename(&entry.prefix, &trash)?;
    store::make_removable(&trash);
    fs_err::remove_dir_all(&trash)?;
    Ok(Freed {
        what: format!("environment {} ({})", entry.slot, entry.source),
        path: entry.prefix.clone(),
        bytes,
    })
}

/// `gc`: environments unpinned and unused for `older_than` days (only when given),
/// unfinished builds and temp files nobody holds, kernelspecs pointing at removed
/// environments, and this user's package-cache entries no environment uses.
pub fn gc(
    store: &Store,
    settings: &Settings,
    older_than: Option<u64>,
    dry_run: bool,
    reporter: &dyn Reporter,
) -> anyhow::Result<Vec<Freed>> {
    require_maintainer(store, settings, "collect garbage")?;
    let mut freed = Vec::new();
    let now = store::now();
    if let Some(days) = older_than {
        for entry in entries(store, settings)? {
            let last = entry.last_used.unwrap_or(0).max(entry.built);
            if !entry.pins.is_empty() || entry.in_use || now.saturating_sub(last) < days * 86_400 {
                continue;
            }
            if dry_run {
                freed.push(Freed {
                    what: format!("environment {} ({})", entry.slot, entry.source),
                    path: entry.prefix.clone(),
                    bytes: entry.size,
                });
            } else {
                freed.push(delete_environment(store, &entry, reporter)?);
            }
        }
    }
    let e = store.root().join("e");
    for item in fs_err::read_dir(&e)?.flatten() {
        let path = item.path();
        let name = item.file_name().to_string_lossy().to_string();
        let unfinished = !name.starts_with('.')
            && path.is_dir()
            && !e.join(format!("{name}.toml")).exists()
            && lock_free(store, &name);
        let leftover = name.starts_with(".trash-") || name.contains(".tmp-");
        if (unfinished || leftover) && owned(&path) {
            let what = if unfinished {
                "unfinished build"
            } else {
                "temporary file"
            };
            freed.push(remove_path(&path, what, dry_run)?);
        }
    }
    // Lock files of entries that no longer exist, which nobody holds (a builder that
    // opens one meanwhile takes it again: see `Store::lock`).
    for item in fs_err::read_dir(store.root().join("locks"))?.flatten() {
        let path = item.path();
        let name = item.file_name().to_string_lossy().to_string();
        let Some(slot) = name.strip_suffix(".lock") else {
            continue;
        };
        if !e.join(slot).exists() && lock_free(store, slot) && owned(&path) {
            freed.push(remove_path(&path, "lock file nobody holds", dry_run)?);
        }
    }
    // Kernelspecs whose environment is gone: the store's shared ones (not a pin's) and
    // this user's own.
    let pins = read_pins(store.root(), settings)?;
    for dir in [
        super::kernels_dir(settings),
        crate::plan::default_kernels_dir(),
    ] {
        for (name, spec) in kernelspecs(&dir) {
            let Some(prefix) = spec["metadata"]["hpcbinder"]["prefix"].as_str() else {
                continue;
            };
            if pins.contains_key(&name) || spec["metadata"]["hpcbinder"]["image"].is_string() {
                continue;
            }
            if prefix.starts_with(&*store.root().to_string_lossy()) && !Path::new(prefix).exists() {
                freed.push(remove_path(
                    &dir.join(&name),
                    "kernelspec of a removed environment",
                    dry_run,
                )?);
            }
        }
    }
    // Package-cache entries no environment links to: every file has one link left.
    for tool in ["conda", "uv/archive-v0"] {
        let cache = store::package_cache_at(store.root(), tool);
        let Ok(items) = fs_err::read_dir(&cache) else {
            continue;
        };
        for item in items.flatten() {
            let path = item.path();
            if path.is_dir() && !linked(&path) {
                freed.push(remove_path(&path, "package cache entry", dry_run)?);
            }
        }
    }
    Ok(freed)
}

/// Whether no build holds `slot`'s lock.
fn lock_free(store: &Store, slot: &str) -> bool {
    let path = store.root().join("locks").join(format!("{slot}.lock"));
    let Ok(file) = std::fs::File::open(&path) else {
        return true;
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            true
        }
        Err(_) => false,
    }
}

fn owned(path: &Path) -> bool {
    path.symlink_metadata()
        .is_ok_and(|m| m.uid() == store::current_uid())
}

/// Whether any regular file under `dir` is hardlinked elsewhere (into an environment).
fn linked(dir: &Path) -> bool {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.path().symlink_metadata().ok())
        .any(|m| m.is_file() && m.nlink() > 1)
}

fn remove_path(path: &Path, what: &str, dry_run: bool) -> anyhow::Result<Freed> {
    let bytes = disk_usage(path);
    if !dry_run {
        store::make_removable(path);
        if path.is_dir() {
            fs_err::remove_dir_all(path)?;
        } else {
            fs_err::remove_file(path)?;
        }
    }
    Ok(Freed {
        what: what.to_string(),
        path: path.to_path_buf(),
        bytes,
    })
}

/// The lock file `export` writes for `format` (`requirements`, `explicit`, `pixi`; by
/// default the environment's own kind), relative to the prefix.
pub fn export_file(entry: &Entry, format: Option<&str>) -> anyhow::Result<PathBuf> {
    let conda = entry.prefix.join("conda-meta").is_dir();
    let format = format.unwrap_or(if conda { "pixi" } else { "requirements" });
    let wanted: Vec<String> = match format {
        "requirements" => vec![
            "hpcbinder/requirements.lock".into(),
            "hpcbinder/pip.lock".into(),
        ],
        "pixi" => vec!["hpcbinder/pixi.lock".into()],
        "explicit" => entry
            .locks
            .iter()
            .filter(|l| l.starts_with("hpcbinder/conda-") && l.ends_with(".lock"))
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    wanted
        .iter()
        .map(|l| entry.prefix.join(l))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CollabError::NoLock {
                slot: entry.slot.clone(),
                format: format.to_string(),
                target: entry.target.clone(),
                locks: entry.locks.join(", "),
            }
            .into()
        })
}
