//! Safe reads of a repository's spec files, honouring `binder/` and `.binder/`.
//!
//! A spec file that is a symlink pointing outside the repository is not read (and its
//! target's contents are never shown); detection warns about it instead. Files are
//! capped in size so a hostile repository cannot make detection read gigabytes.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::DetectError;

/// Largest spec file we read.
const MAX_SPEC_BYTES: u64 = 1024 * 1024;

/// Lock files list every package with URLs and hashes: larger, but still bounded.
const MAX_LOCK_BYTES: u64 = 16 * 1024 * 1024;

/// Deeper YAML or JSON nesting than any real spec has; parsers take quadratic time on
/// hostile inputs such as a file of `[` characters.
const MAX_NESTING: usize = 64;

/// A repository's files as detection sees them.
#[derive(Debug)]
pub struct RepoFiles {
    root: PathBuf,
    canonical_root: PathBuf,
    binder_dir: Option<&'static str>,
    platform: String,
    refused: RefCell<BTreeSet<String>>,
}

impl RepoFiles {
    /// Look at `root` for an environment built for the conda `platform` (the configured
    /// one, which picks the lock entries); fails when both binder directories exist.
    pub fn open(root: &Path, platform: &str) -> Result<Self, DetectError> {
        let canonical_root = fs_err::canonicalize(root).map_err(|source| DetectError::Io {
            file: ".".into(),
            source,
        })?;
        let binder = root.join("binder").is_dir();
        let dot_binder = root.join(".binder").is_dir();
        let binder_dir = match (binder, dot_binder) {
            (true, true) => return Err(DetectError::BothBinderDirs),
            (true, false) => Some("binder"),
            (false, true) => Some(".binder"),
            (false, false) => None,
        };
        Ok(Self {
            root: root.to_path_buf(),
            canonical_root,
            binder_dir,
            platform: platform.to_string(),
            refused: RefCell::default(),
        })
    }

    /// The conda platform the environment is built for (`linux-64`, ...).
    pub fn platform(&self) -> &str {
        &self.platform
    }

    /// `binder` or `.binder`, when configuration lives there.
    pub fn binder_dir(&self) -> Option<&'static str> {
        self.binder_dir
    }

    /// The root-relative path of a config file (inside the binder dir when there is one).
    pub fn display(&self, name: &str) -> String {
        match self.binder_dir {
            Some(dir) => format!("{dir}/{name}"),
            None => name.to_string(),
        }
    }

    /// The absolute path of a root-relative path.
    pub fn absolute(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// Whether a config file exists (in the binder dir when there is one).
    pub fn exists(&self, name: &str) -> bool {
        self.absolute(&self.display(name))
            .symlink_metadata()
            .is_ok()
    }

    /// Whether a file exists at the repository root itself.
    pub fn exists_root(&self, name: &str) -> bool {
        self.root.join(name).symlink_metadata().is_ok()
    }

    /// Whether a config file is a regular file (following symlinks inside the repo).
    pub fn is_regular_file(&self, name: &str) -> bool {
        self.absolute(&self.display(name)).is_file()
    }

    /// Whether a root-relative path, every symlink on the way resolved, stays inside the
    /// repository (a path that does not exist yet counts by its parent).
    pub fn inside(&self, relative: &str) -> bool {
        let path = self.absolute(relative);
        let resolved = fs_err::canonicalize(&path).or_else(|_| {
            let parent = path.parent().unwrap_or(&path);
            fs_err::canonicalize(parent)
        });
        resolved.is_ok_and(|p| p.starts_with(&self.canonical_root))
    }

    /// Whether a path was refused (a symlink leaving the repository).
    pub fn was_refused(&self, relative: &str) -> bool {
        self.refused.borrow().contains(relative)
    }

    /// Read a config file (in the binder dir when there is one).
    pub fn read(&self, name: &str) -> Result<Option<String>, DetectError> {
        self.read_path(&self.display(name))
    }

    /// Read a file at the repository root, ignoring any binder dir.
    pub fn read_root(&self, name: &str) -> Result<Option<String>, DetectError> {
        self.read_path(name)
    }

    /// Read a root-relative path. `None` when it does not exist or is not a regular file;
    /// an error when it (or a directory on the way) is a symlink leaving the repository.
    pub fn read_path(&self, relative: &str) -> Result<Option<String>, DetectError> {
        let path = self.absolute(relative);
        if path.symlink_metadata().is_err() {
            return Ok(None);
        }
        let io = |source| DetectError::Io {
            file: relative.to_string(),
            source,
        };
        // Every component is resolved: a symlinked directory (`binder -> /outside`) leaves
        // the repository as surely as a symlinked file.
        {
            let inside = fs_err::canonicalize(&path)
                .map(|target| target.starts_with(&self.canonical_root))
                .unwrap_or(false);
            if !inside {
                // Loudly: a repository whose spec file points out of it is broken or
                // hostile, and falling back to another buildpack would hide that.
                self.refused.borrow_mut().insert(relative.to_string());
                return Err(DetectError::Unsupported {
                    message: format!(
                        "{relative} is a symlink that leaves the repository (or is broken)"
                    ),
                    hint: "hpcbinder reads only files inside the repository: put the file itself there".into(),
                });
            }
        }
        let metadata = fs_err::metadata(&path).map_err(io)?;
        if !metadata.is_file() {
            return Ok(None);
        }
        let is_lock = relative.ends_with(".lock")
            || relative.ends_with("conda-lock.yml")
            || relative.ends_with("conda-lock.yaml")
            || relative.ends_with("pylock.toml")
            || relative
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("conda-") && n.ends_with(".txt"));
        let limit = if is_lock {
            MAX_LOCK_BYTES
        } else {
            MAX_SPEC_BYTES
        };
        if metadata.len() > limit {
            return Err(DetectError::Malformed {
                file: relative.to_string(),
                line: None,
                message: format!(
                    "{} bytes is too large for a spec file (the limit is {} MiB)",
                    metadata.len(),
                    limit / 1024 / 1024
                ),
            });
        }
        let bytes = fs_err::read(&path).map_err(io)?;
        let text = String::from_utf8(bytes).map_err(|e| DetectError::Malformed {
            file: relative.to_string(),
            line: line_of_offset(e.as_bytes(), e.utf8_error().valid_up_to()),
            message: "not valid UTF-8".into(),
        })?;
        if let Some(line) = too_deep(&text) {
            return Err(DetectError::Malformed {
                file: relative.to_string(),
                line: Some(line),
                message: format!("nested more than {MAX_NESTING} levels deep"),
            });
        }
        Ok(Some(text))
    }
}

/// The line where `[`/`{` nesting (outside quoted strings) first exceeds [`MAX_NESTING`].
fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line, mut quote) = (0usize, 1usize, None::<char>);
    let (mut escaped, mut previous) = (false, '\n');
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        match quote {
            Some('"') if c == '\\' && !escaped => {
                escaped = true;
                previous = c;
                continue;
            }
            Some(q) if c == q && !escaped => quote = None,
            Some(_) => {}
            // A quote opens a string only where a token starts (`don't` is plain text).
            None if (c == '"' || c == '\'')
                && matches!(
                    previous,
                    '\n' | ' ' | '\t' | ':' | ',' | '[' | '{' | '-' | '='
                ) =>
            {
                quote = Some(c);
            }
            None if c == '[' || c == '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(line);
                }
            }
            None if c == ']' || c == '}' => depth = depth.saturating_sub(1),
            None => {}
        }
        escaped = false;
        previous = c;
    }
    None
}

fn line_of_offset(bytes: &[u8], offset: usize) -> Option<usize> {
    Some(
        bytes[..offset.min(bytes.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1,
    )
}

/// The 1-based line of the first line containing `needle`.
pub fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// The 1-based line of a byte offset in `text`.
pub fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Turn a TOML parse error into a `Malformed` error with its line.
pub fn toml_error(file: &str, text: &str, error: &toml::de::Error) -> DetectError {
    DetectError::Malformed {
        file: file.to_string(),
        line: error.span().map(|span| line_at(text, span.start)),
        message: format!(
            "invalid TOML: {}",
            error.message().trim().replace('\n', "; ")
        ),
    }
}

/// Turn a YAML parse error into a `Malformed` error with its line.
pub fn yaml_error(file: &str, error: &serde_yaml_ng::Error) -> DetectError {
    let message = error.to_string();
    // serde_yaml_ng appends " at line N column M"; we carry the line separately.
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_string();
    DetectError::Malformed {
        file: file.to_string(),
        line: error.location().map(|l| l.line()),
        message: format!("invalid YAML: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::too_deep;

    #[test]
    fn deep_nesting_is_found_and_quoted_or_plain_text_is_not_counted() {
        assert_eq!(too_deep(&"[".repeat(320_000)), Some(1));
        assert_eq!(
            too_deep(&format!("a: don't\nb: {}", "[".repeat(100))),
            Some(2)
        );
        assert_eq!(too_deep(&format!("a: '{}'\n", "[".repeat(100))), None);
        assert_eq!(too_deep(&format!("a: \"x\\\" {}\"", "{".repeat(100))), None);
        assert_eq!(
            too_deep("dependencies: [python=3.11, {pip: [six]}]\n"),
            None
        );
    }
}
