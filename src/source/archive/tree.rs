//! The tree an extraction builds: checked names, every path it created, files written
//! with `O_EXCL | O_NOFOLLOW` under directories it made itself, hard links written as
//! copies of files it already extracted, and symlinks created last, once each target has
//! been resolved through the archive's other links.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fs_err::os::unix::fs::OpenOptionsExt as _;

use super::{ArchiveError, Extracted, Limits};

/// Longest entry name or symlink target we accept (Linux `PATH_MAX`).
pub(super) const MAX_NAME_BYTES: usize = 4096;
/// Longest path component (Linux `NAME_MAX`).
const MAX_COMPONENT_BYTES: usize = 255;
/// Links followed while resolving one symlink target (Linux `MAXSYMLINKS`).
const MAX_SYMLINK_EXPANSIONS: u32 = 40;
/// File modes keep only owner, group and other read/execute bits plus owner write.
const MODE_MASK: u32 = 0o755;

pub(super) fn refused(entry: &str, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Refused {
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

/// A name as it may be shown: lossy UTF-8, control characters escaped.
pub(super) fn shown(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// The checked components of an entry name; empty for the root (`./`).
pub(super) fn components(
    raw: &[u8],
    backslash_separates: bool,
) -> Result<Vec<String>, ArchiveError> {
    let entry = shown(raw);
    let name =
        std::str::from_utf8(raw).map_err(|_| refused(&entry, "its name is not valid UTF-8"))?;
    if name.is_empty() {
        return Err(refused("(empty)", "the entry has an empty name"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(refused(
            &entry,
            format!("its name is longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(refused(&entry, "its name holds a control character"));
    }
    let is_separator = |c: char| c == '/' || (backslash_separates && c == '\\');
    if name.starts_with(is_separator) {
        return Err(refused(&entry, "absolute path"));
    }
    let mut parts = Vec::new();
    for part in name.split(is_separator) {
        match part {
            "" | "." => {}
            ".." => return Err(refused(&entry, "`..` in the path")),
            _ if part.len() > MAX_COMPONENT_BYTES => {
                return Err(refused(
                    &entry,
                    format!("a path component is longer than {MAX_COMPONENT_BYTES} bytes"),
                ));
            }
            _ => parts.push(part.to_owned()),
        }
    }
    Ok(parts)
}

/// A symlink target as text, refused when it cannot be a safe relative link.
pub(super) fn link_target(entry: &str, raw: &[u8]) -> Result<String, ArchiveError> {
    let target = std::str::from_utf8(raw)
        .map_err(|_| refused(entry, "its symlink target is not valid UTF-8"))?;
    if target.is_empty() || target.len() > MAX_NAME_BYTES || target.chars().any(char::is_control) {
        return Err(refused(
            entry,
            format!("invalid symlink target `{}`", shown(raw)),
        ));
    }
    if target.starts_with('/') {
        return Err(refused(
            entry,
            format!("symlink to absolute path `{target}` points outside the extraction directory"),
        ));
    }
    Ok(target.to_owned())
}

/// A hard link's target: a member name, checked as entry names are.
pub(super) fn hard_link_target(entry: &str, raw: &[u8]) -> Result<Vec<String>, ArchiveError> {
    let target = shown(raw);
    if raw.is_empty() {
        return Err(refused(entry, "hard link with an empty target"));
    }
    match components(raw, false) {
        Ok(parts) => Ok(parts),
        Err(ArchiveError::Refused { reason, .. }) if reason == "absolute path" => Err(refused(
            entry,
            format!(
                "hard link to absolute path `{target}` points outside the extraction directory"
            ),
        )),
        Err(ArchiveError::Refused { reason, .. }) => Err(refused(
            entry,
            format!(
                "hard link to `{target}`: {}",
                reason.replace("its name", "its target")
            ),
        )),
        Err(other) => Err(other),
    }
}

/// What extraction created at a path.
enum Node {
    Dir { explicit: bool },
    File,
    Symlink { target: String },
}

/// Resolving a symlink target failed.
enum Escape {
    Outside,
    Loop,
    /// Strict resolution (a hard link's target) met a name not extracted yet, or went
    /// below something that is not a directory.
    Missing,
}

/// The tree being extracted: every path created so far, by its `/`-joined components.
pub(super) struct Tree<'a> {
    root: &'a Path,
    limits: &'a Limits,
    nodes: HashMap<String, Node>,
    /// Lowercased path → the path as first seen.
    folded: HashMap<String, String>,
    /// Symlinks in archive order, created by [`Tree::finish`].
    symlinks: Vec<(Vec<String>, String)>,
    entries: u64,
    done: Extracted,
}

impl<'a> Tree<'a> {
    pub(super) fn new(root: &'a Path, limits: &'a Limits) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(String::new(), Node::Dir { explicit: true });
        Self {
            root,
            limits,
            nodes,
            folded: HashMap::new(),
            symlinks: Vec::new(),
            entries: 0,
            done: Extracted::default(),
        }
    }

    pub(super) fn count_entry(&mut self) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    fn path_of(&self, parts: &[String]) -> PathBuf {
        parts
            .iter()
            .fold(self.root.to_path_buf(), |path, part| path.join(part))
    }

    /// Reserve `parts` for a new node: parents must be directories we made (created here
    /// when missing), the name must be new and must not collide on case.
    fn reserve(&mut self, parts: &[String], entry: &str) -> Result<String, ArchiveError> {
        for depth in 1..parts.len() {
            let key = parts[..depth].join("/");
            match self.nodes.get(&key) {
                Some(Node::Dir { .. }) => {}
                Some(Node::File) => {
                    return Err(refused(
                        entry,
                        format!("its parent `{key}` is a file in the archive"),
                    ))
                }
                Some(Node::Symlink { .. }) => {
                    return Err(refused(
                        entry,
                        format!(
                            "its parent `{key}` is a symlink; nothing is written through links"
                        ),
                    ));
                }
                None => {
                    // Directories the archive implies count too: one entry named
                    // `a/b/…/f` must not create thousands of inodes for free.
                    self.count_entry()?;
                    self.check_case(&key, entry)?;
                    create_dir(&self.path_of(&parts[..depth]), 0o755)?;
                    self.nodes.insert(key, Node::Dir { explicit: false });
                }
            }
        }
        let key = parts.join("/");
        if self.nodes.contains_key(&key) {
            return Err(ArchiveError::Duplicate {
                entry: entry.to_owned(),
            });
        }
        self.check_case(&key, entry)?;
        Ok(key)
    }

    fn check_case(&mut self, key: &str, entry: &str) -> Result<(), ArchiveError> {
        let folded = key.to_lowercase();
        match self.folded.get(&folded) {
            Some(other) if other != key => Err(ArchiveError::CaseCollision {
                entry: entry.to_owned(),
                other: other.clone(),
            }),
            Some(_) => Ok(()),
            None => {
                self.folded.insert(folded, key.to_owned());
                Ok(())
            }
        }
    }

    pub(super) fn add_dir(
        &mut self,
        parts: &[String],
        entry: &str,
        mode: u32,
    ) -> Result<(), ArchiveError> {
        let key = parts.join("/");
        match self.nodes.get_mut(&key) {
            // A directory listed after files inside it, or `./`.
            Some(Node::Dir { explicit }) if !*explicit || parts.is_empty() => {
                *explicit = true;
                return Ok(());
            }
            Some(_) => {
                return Err(ArchiveError::Duplicate {
                    entry: entry.to_owned(),
                })
            }
            None => {}
        }
        let key = self.reserve(parts, entry)?;
        create_dir(&self.path_of(parts), (mode & MODE_MASK) | 0o700)?;
        self.nodes.insert(key, Node::Dir { explicit: true });
        Ok(())
    }

    /// Write a regular file from `data`, counting what is written. `on_read_error` turns a
    /// failed read of the archive into its error (limits, corruption, or I/O).
    pub(super) fn add_file(
        &mut self,
        parts: &[String],
        entry: &str,
        mode: u32,
        data: &mut dyn Read,
        ratio: Option<(u64, u64)>,
        on_read_error: &dyn Fn(io::Error) -> ArchiveError,
    ) -> Result<u64, ArchiveError> {
        if parts.is_empty() {
            return Err(refused(
                entry,
                "a file cannot replace the extraction directory",
            ));
        }
        let mut file = self.create_file(parts, entry, mode)?;
        self.write_counted(&mut file, entry, data, ratio, on_read_error)
    }

    /// Extract a hard link to `target` (checked by [`hard_link_target`]) as an independent
    /// copy of the regular file it names, which this archive must have extracted already
    /// (followed through the archive's symlinks). A real link is never made: it would
    /// alias one inode under two names, and one anywhere else if the target were outside.
    /// The copy's bytes count towards the size limit, and towards `ratio` when given.
    pub(super) fn add_hard_link(
        &mut self,
        parts: &[String],
        entry: &str,
        target: &[String],
        ratio: Option<(u64, u64)>,
    ) -> Result<u64, ArchiveError> {
        let shown_target = if target.is_empty() {
            ".".to_owned()
        } else {
            target.join("/")
        };
        let refuse = |what: &str| refused(entry, format!("hard link to `{shown_target}` {what}"));
        if parts.is_empty() {
            return Err(refused(
                entry,
                "a hard link cannot replace the extraction directory",
            ));
        }
        if target == parts {
            return Err(refuse("links to itself"));
        }
        let mut budget = MAX_SYMLINK_EXPANSIONS;
        let source = match self.resolve(&[], &shown_target, &mut budget, true) {
            Ok(source) => source,
            Err(Escape::Outside) => {
                return Err(refuse(
                    "leads outside the extraction directory through links",
                ))
            }
            Err(Escape::Loop) => return Err(refuse("goes through a symlink loop")),
            Err(Escape::Missing) => {
                return Err(refuse(
                    "names no file extracted before it (a hard link must follow its target)",
                ))
            }
        };
        match self.nodes.get(&source.join("/")) {
            Some(Node::File) => {}
            Some(Node::Dir { .. }) => {
                return Err(refuse(
                    "names a directory; only links to files are extracted",
                ))
            }
            // Resolution follows every symlink, so what is left is a file or a directory.
            Some(Node::Symlink { .. }) | None => {
                return Err(refuse(
                    "names no file extracted before it (a hard link must follow its target)",
                ))
            }
        }
        let mut original = fs_err::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(self.path_of(&source))?;
        let metadata = original.metadata()?;
        if !metadata.is_file() {
            return Err(refuse("names something that is not a regular file"));
        }
        if self.done.bytes.saturating_add(metadata.len()) > self.limits.max_total_bytes {
            return Err(ArchiveError::TooLarge {
                entry: entry.to_owned(),
                limit: self.limits.max_total_bytes,
            });
        }
        let mut copy = self.create_file(parts, entry, metadata.permissions().mode())?;
        self.write_counted(&mut copy, entry, &mut original, ratio, &|error| {
            ArchiveError::Io(error)
        })
    }

    /// Reserve `parts` and create a new, empty regular file there.
    fn create_file(
        &mut self,
        parts: &[String],
        entry: &str,
        mode: u32,
    ) -> Result<fs_err::File, ArchiveError> {
        let key = self.reserve(parts, entry)?;
        let file = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode((mode & MODE_MASK) | 0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(self.path_of(parts))?;
        self.nodes.insert(key, Node::File);
        self.done.files += 1;
        Ok(file)
    }

    /// Copy `data` into `file`, counting each byte against the size limit and, when
    /// given, the ratio cap (`(cap, compressed size)`).
    fn write_counted(
        &mut self,
        file: &mut fs_err::File,
        entry: &str,
        data: &mut dyn Read,
        ratio: Option<(u64, u64)>,
        on_read_error: &dyn Fn(io::Error) -> ArchiveError,
    ) -> Result<u64, ArchiveError> {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            let n = match data.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(on_read_error(error)),
            };
            written += n as u64;
            self.done.bytes += n as u64;
            if self.done.bytes > self.limits.max_total_bytes {
                return Err(ArchiveError::TooLarge {
                    entry: entry.to_owned(),
                    limit: self.limits.max_total_bytes,
                });
            }
            if let Some((cap, compressed)) = ratio {
                if self.done.bytes > cap {
                    return Err(ArchiveError::Bomb {
                        entry: entry.to_owned(),
                        ratio: self.limits.max_ratio,
                        compressed,
                    });
                }
            }
            file.write_all(&buffer[..n])?;
        }
        Ok(written)
    }

    /// Record a symlink; it is created by [`Tree::finish`] once every entry is known.
    pub(super) fn add_symlink(
        &mut self,
        parts: &[String],
        entry: &str,
        target: String,
    ) -> Result<(), ArchiveError> {
        if parts.is_empty() {
            return Err(refused(
                entry,
                "a symlink cannot replace the extraction directory",
            ));
        }
        // The lexical check here gives the early, plain error; `finish` follows links too.
        let mut depth = parts.len() - 1;
        for part in target.split('/') {
            match part {
                "" | "." => {}
                ".." if depth == 0 => {
                    return Err(refused(
                        entry,
                        format!("symlink to `{target}` points outside the extraction directory"),
                    ));
                }
                ".." => depth -= 1,
                _ => depth += 1,
            }
        }
        let key = self.reserve(parts, entry)?;
        self.nodes.insert(
            key,
            Node::Symlink {
                target: target.clone(),
            },
        );
        self.symlinks.push((parts.to_vec(), target));
        Ok(())
    }

    /// Where `target`, read in directory `from`, leads, following the archive's symlinks.
    /// `strict` (a hard link's target) requires every name on the way to exist already,
    /// and each name a path continues below to be a directory.
    fn resolve(
        &self,
        from: &[String],
        target: &str,
        budget: &mut u32,
        strict: bool,
    ) -> Result<Vec<String>, Escape> {
        let mut at = from.to_vec();
        for part in target.split('/') {
            if strict
                && !matches!(part, "" | ".")
                && !matches!(self.nodes.get(&at.join("/")), Some(Node::Dir { .. }))
            {
                return Err(Escape::Missing);
            }
            match part {
                "" | "." => {}
                ".." => {
                    at.pop().ok_or(Escape::Outside)?;
                }
                _ => {
                    at.push(part.to_owned());
                    match self.nodes.get(&at.join("/")) {
                        Some(Node::Symlink { target }) => {
                            if *budget == 0 {
                                return Err(Escape::Loop);
                            }
                            *budget -= 1;
                            at.pop();
                            at = self.resolve(&at, target, budget, strict)?;
                        }
                        None if strict => return Err(Escape::Missing),
                        _ => {}
                    }
                }
            }
        }
        Ok(at)
    }

    /// Check every symlink against the complete tree, then create them.
    pub(super) fn finish(self) -> Result<Extracted, ArchiveError> {
        for (parts, target) in &self.symlinks {
            let entry = parts.join("/");
            let mut budget = MAX_SYMLINK_EXPANSIONS;
            match self.resolve(&parts[..parts.len() - 1], target, &mut budget, false) {
                Ok(_) | Err(Escape::Missing) => {}
                Err(Escape::Outside) => {
                    return Err(refused(
                        &entry,
                        format!("symlink to `{target}` leads outside the extraction directory through other links"),
                    ));
                }
                Err(Escape::Loop) => {
                    return Err(refused(
                        &entry,
                        format!("symlink to `{target}` is part of a loop"),
                    ))
                }
            }
        }
        for (parts, target) in &self.symlinks {
            fs_err::os::unix::fs::symlink(target, self.path_of(parts))?;
        }
        Ok(self.done)
    }
}

pub(super) fn create_dir(path: &Path, mode: u32) -> Result<(), ArchiveError> {
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|error| {
            ArchiveError::Io(io::Error::new(
                error.kind(),
                format!("failed to create directory `{}`: {error}", path.display()),
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_escapes_and_accept_plain_names() {
        assert_eq!(components(b"./a//b/", false).unwrap(), ["a", "b"]);
        assert!(components(b"./", false).unwrap().is_empty());
        assert_eq!(components(b"a\\b", false).unwrap(), ["a\\b"]);
        assert_eq!(components(b"a\\b", true).unwrap(), ["a", "b"]);
        for bad in [
            &b"/etc/passwd"[..],
            b"../x",
            b"a/../../x",
            b"a/..",
            b"",
            b"a\x1bb",
            b"\xff",
        ] {
            assert!(components(bad, false).is_err(), "{bad:?}");
        }
        assert!(components(b"..\\..\\x", true).is_err());
        assert!(components(b"\\x", true).is_err());
    }

    #[test]
    fn shown_escapes_control_characters() {
        assert_eq!(shown(b"a\x1b[31mb"), "a\\u{1b}[31mb");
        assert_eq!(shown(b"caf\xc3\xa9"), "café");
    }
}
