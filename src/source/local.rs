//! Local directories: git work trees are read in place; plain folders get a content digest.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::{Checkout, Identity, SourceError};

/// Open a local directory as it is on disk.
pub fn open(path: &Path) -> Result<Checkout, SourceError> {
    let root = fs_err::canonicalize(path)?;
    let slug = slug_for_dir(&root);
    // Only a repository whose work tree *is* this directory counts; a folder nested inside
    // some other repository is a plain folder.
    // libgit2's first use initialises OpenSSL, which parses the whole CA bundle (~25 ms);
    // a folder without `.git` never pays for it.
    let is_work_tree = root.join(".git").exists();
    if let Some(repo) = is_work_tree
        .then(|| git2::Repository::open(&root).ok())
        .flatten()
    {
        if let Some(commit) = repo.head().ok().and_then(|h| h.peel_to_commit().ok()) {
            let origin = repo
                .find_remote("origin")
                .ok()
                .and_then(|r| r.url().map(super::redact))
                .unwrap_or_else(|| format!("file://{}", root.display()));
            let dirty = is_dirty(&repo);
            let content_digest = if dirty {
                Some(tree_digest(&root)?)
            } else {
                None
            };
            return Ok(Checkout {
                identity: Identity {
                    kind: "git",
                    origin,
                    reference: None,
                    commit: Some(commit.id().to_string()),
                    content_digest,
                    dirty,
                },
                root,
                slug,
                _lock: None,
            });
        }
    }
    Ok(Checkout {
        identity: Identity {
            kind: "directory",
            origin: format!("file://{}", root.display()),
            reference: None,
            commit: None,
            content_digest: Some(tree_digest(&root)?),
            dirty: false,
        },
        root,
        slug,
        _lock: None,
    })
}

fn is_dirty(repo: &git2::Repository) -> bool {
    let mut options = git2::StatusOptions::new();
    options
        .include_untracked(true)
        .include_ignored(false)
        .exclude_submodules(true);
    repo.statuses(Some(&mut options))
        .map(|s| !s.is_empty())
        .unwrap_or(true)
}

/// The directory's own name, made safe for kernel and image names.
pub fn slug_for_dir(root: &Path) -> String {
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "repo".into());
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// sha256 over every file below `root` (except `.git`): relative path, executable bit,
/// and contents (or a symlink's target text), in sorted order. Stable across machines.
pub fn tree_digest(root: &Path) -> Result<String, SourceError> {
    let mut hasher = Sha256::new();
    let walker = walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || e.file_name() != ".git");
    for entry in walker {
        let entry = entry.map_err(|e| SourceError::Io(e.into()))?;
        let relative = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let name = relative.to_string_lossy().replace('\\', "/");
        let file_type = entry.file_type();
        if file_type.is_symlink() {
            let target = fs_err::read_link(entry.path())?;
            hasher.update(format!("L {name}\0{}\0", target.display()));
        } else if file_type.is_file() {
            let executable = is_executable(entry.path());
            // Streamed: a large data file must not be read into memory whole.
            let mut file = fs_err::File::open(entry.path())?;
            let mut contents = Sha256::new();
            let length = std::io::copy(&mut file, &mut contents)?;
            hasher.update(format!("F {name}\0{}\0{length}\0", u8::from(executable)));
            hasher.update(contents.finalize());
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs_err::metadata(path)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_executable(_path: &Path) -> bool {
    false
}
