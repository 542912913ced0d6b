//! Safe extraction of downloaded archives (zip, tar, tar.gz, tar.bz2, tar.xz).
//!
//! Every archive is hostile (`reference/reliability.md` §3.3). We never call tar-rs's
//! `unpack`: each entry's name is checked component by component, every parent must be a
//! directory this extraction created (so nothing is ever written through a link), files
//! are created with `O_EXCL | O_NOFOLLOW`, and sizes are counted from the bytes actually
//! decompressed, never from headers. Allowed: regular files, directories, and symlinks
//! whose target stays inside the tree; symlinks are created last, once every entry is
//! known, after resolving each target through the other links. A tar hard link to a
//! regular file this archive extracted earlier (its name checked like any entry's, then
//! followed through the archive's symlinks, all inside the tree) is written as an
//! independent copy of that file, whose bytes count towards the limits: a real link would
//! give one inode two names, and could alias a file outside the tree. Refused: hard links
//! to anything else (a later entry, a directory, itself, a path leaving the tree), devices,
//! FIFOs, `..`, absolute names, duplicates, names equal but for case, names that are not
//! UTF-8 or hold control characters. Setuid, setgid, sticky and group or other write bits
//! are dropped; the user's umask applies.

mod read;
mod tree;

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::diagnostic::{Blame, Diagnostic};
use read::Reading;
use tree::create_dir;

/// How much an archive may unpack to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of file contents written (hard-link copies included), counted while writing.
    /// Default 4 GiB: a record's repository content, not a data set; larger records
    /// should be fetched by the user.
    pub max_total_bytes: u64,
    /// Entries of any kind, and directories created for them that the archive does not
    /// list (inode exhaustion). Default 100,000, far above a repository.
    pub max_entries: u64,
    /// Decompressed bytes per compressed byte, checked once more than `ratio_floor_bytes`
    /// came out (cargo's `max(floor, size × ratio)`); hard-link copies count as
    /// decompressed. Default 100: source and data compress 3–30×, a gzip bomb about 1000×.
    pub max_ratio: u64,
    /// Below this many decompressed bytes the ratio is not checked. Default 64 MiB, so
    /// small archives of tiny, very compressible files pass.
    pub ratio_floor_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_total_bytes: 4 << 30,
            max_entries: 100_000,
            max_ratio: 100,
            ratio_floor_bytes: 64 << 20,
        }
    }
}

impl Limits {
    /// Decompressed bytes allowed for an archive of `compressed` bytes.
    fn ratio_cap(&self, compressed: u64) -> u64 {
        compressed
            .saturating_mul(self.max_ratio)
            .max(self.ratio_floor_bytes)
    }
}

/// A supported archive format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.zip` (stored or deflated entries).
    Zip,
    /// `.tar`.
    Tar,
    /// `.tar.gz`, `.tgz` (all gzip members are read).
    TarGz,
    /// `.tar.bz2`, `.tbz2`, `.tbz`.
    TarBz2,
    /// `.tar.xz`, `.txz`.
    TarXz,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Zip => "zip",
            Self::Tar => "tar",
            Self::TarGz => "tar.gz",
            Self::TarBz2 => "tar.bz2",
            Self::TarXz => "tar.xz",
        })
    }
}

impl Format {
    /// The format a file name announces, by its extension (case-insensitive).
    pub fn from_file_name(name: &str) -> Option<Self> {
        let name = name.to_ascii_lowercase();
        let table: [(&str, Self); 9] = [
            (".zip", Self::Zip),
            (".tar", Self::Tar),
            (".tar.gz", Self::TarGz),
            (".tgz", Self::TarGz),
            (".tar.bz2", Self::TarBz2),
            (".tbz2", Self::TarBz2),
            (".tbz", Self::TarBz2),
            (".tar.xz", Self::TarXz),
            (".txz", Self::TarXz),
        ];
        table
            .iter()
            .find(|(suffix, _)| name.ends_with(suffix))
            .map(|(_, format)| *format)
    }

    /// The format the first bytes of a file show (at least 262 bytes are needed to see a
    /// plain tar). Compressed streams are assumed to hold a tar.
    pub fn from_magic(head: &[u8]) -> Option<Self> {
        if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            Some(Self::Zip)
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Some(Self::TarGz)
        } else if head.starts_with(b"BZh") {
            Some(Self::TarBz2)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Self::TarXz)
        } else if head.get(257..262) == Some(b"ustar") {
            Some(Self::Tar)
        } else {
            None
        }
    }

    /// The format of a file whose name and first bytes agree; `None` for anything else
    /// (a `data.csv.gz` or a `.docx`, which is a zip, are not archives to unpack).
    pub fn detect(path: &Path) -> Result<Option<Self>, ArchiveError> {
        let Some(by_name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(Self::from_file_name)
        else {
            return Ok(None);
        };
        let mut head = Vec::with_capacity(512);
        fs_err::File::open(path)?.take(512).read_to_end(&mut head)?;
        Ok(Self::from_magic(&head).filter(|by_magic| *by_magic == by_name))
    }
}

/// What an extraction wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extracted {
    /// Regular files written.
    pub files: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
}

/// Why an archive was not extracted. Each names the entry and says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The target directory must be new.
    #[error("cannot extract into {}: it already exists", path.display())]
    TargetExists {
        /// The target.
        path: PathBuf,
    },
    /// An entry that could write outside the target, or is not a plain file, directory,
    /// safe symlink or hard link to a file extracted before it.
    #[error("refusing `{entry}`: {reason}")]
    Refused {
        /// The entry's name (control characters escaped).
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The same name twice: the second could replace or write through the first.
    #[error("refusing `{entry}`: the archive holds this name more than once")]
    Duplicate {
        /// The repeated name.
        entry: String,
    },
    /// A zip whose central directory lists a name twice (the `zip` crate keeps one).
    #[error("refusing the zip: its central directory lists a name more than once")]
    DuplicateInZip,
    /// Two names equal but for case, which collide on case-insensitive filesystems.
    #[error("refusing `{entry}`: it differs only in case from `{other}`")]
    CaseCollision {
        /// The later name.
        entry: String,
        /// The earlier one.
        other: String,
    },
    /// Over [`Limits::max_entries`].
    #[error("refusing the archive: it has more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// Over [`Limits::max_total_bytes`].
    #[error("refusing `{entry}`: the archive unpacks to more than {} bytes", limit)]
    TooLarge {
        /// The entry being written when the limit was reached.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// Over [`Limits::max_ratio`]: a decompression bomb.
    #[error(
        "refusing `{entry}`: the archive expands to more than {ratio}× its {compressed} bytes (a decompression bomb)"
    )]
    Bomb {
        /// The entry being read when the limit was reached.
        entry: String,
        /// The limit.
        ratio: u64,
        /// The archive's size.
        compressed: u64,
    },
    /// A feature we do not extract (encryption, sparse files, other zip compressions).
    #[error("cannot extract `{entry}`: {reason}")]
    Unsupported {
        /// The entry.
        entry: String,
        /// What it uses.
        reason: String,
    },
    /// Not a valid archive of its format: truncated, corrupt, or headers that lie.
    #[error("{} is not a valid {format} archive{at}: {message}", archive.display())]
    Corrupt {
        /// The archive file.
        archive: PathBuf,
        /// The format it was read as.
        format: Format,
        /// ` after `entry`` when some entries were read.
        at: String,
        /// The decoder's message.
        message: String,
    },
    /// An I/O error, already naming its path (fs-err).
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Diagnostic for ArchiveError {
    fn blame(&self) -> Blame {
        match self {
            Self::TargetExists { .. } | Self::Io(_) => Blame::Environment,
            _ => Blame::User,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            Self::TooManyEntries { .. } | Self::TooLarge { .. } | Self::Bomb { .. } => Some(
                "the record is larger than hpcbinder unpacks; download and extract it yourself and pass the directory"
                    .into(),
            ),
            Self::Corrupt { .. } => Some("download the record again; if it persists, the record's file is damaged".into()),
            Self::Io(_) | Self::TargetExists { .. } => None,
            _ => Some(
                "hpcbinder treats downloaded archives as hostile; if you trust this one, extract it yourself and pass the directory"
                    .into(),
            ),
        }
    }
}

/// Extract `archive` into `into`, which must not exist (its parent must). `into` is
/// created private (0700) and left so: the caller publishes it. On any error everything
/// written is removed.
pub fn extract(
    archive: &Path,
    format: Format,
    into: &Path,
    limits: &Limits,
) -> Result<Extracted, ArchiveError> {
    let compressed = fs_err::metadata(archive)?.len();
    let file = fs_err::File::open(archive)?;
    match create_dir(into, 0o700) {
        Err(ArchiveError::Io(error)) if error.kind() == io::ErrorKind::AlreadyExists => {
            return Err(ArchiveError::TargetExists {
                path: into.to_path_buf(),
            });
        }
        created => created?,
    }
    let reading = Reading {
        archive,
        format,
        compressed,
        limits,
    };
    let result = match format {
        Format::Zip => reading.zip(file.into_parts().0, into),
        _ => reading.tar(file.into_parts().0, into),
    };
    if result.is_err() {
        let _ = fs_err::remove_dir_all(into);
    }
    result
}

/// repo2docker's rule for records that are a single archive (`contentproviders/doi.py`):
/// when `dir` holds exactly one file and it is a supported archive (by name and first
/// bytes), extract it in its place, and when the archive holds a single top-level
/// directory, that directory's contents become `dir`'s. Returns whether it unpacked.
pub fn unpack_single_archive(dir: &Path, limits: &Limits) -> Result<bool, ArchiveError> {
    let children = fs_err::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    let [only] = children.as_slice() else {
        return Ok(false);
    };
    let archive = only.path();
    if !fs_err::symlink_metadata(&archive)?.is_file() {
        return Ok(false);
    }
    let Some(format) = Format::detect(&archive)? else {
        return Ok(false);
    };
    let staging = dir.join(format!(
        ".hpcbinder-unpack-{}",
        uuid::Uuid::new_v4().simple()
    ));
    extract(&archive, format, &staging, limits)?;
    let moved = (|| -> Result<(), ArchiveError> {
        fs_err::remove_file(&archive)?;
        let top = fs_err::read_dir(&staging)?.collect::<Result<Vec<_>, _>>()?;
        let from = match top.as_slice() {
            [single] if fs_err::symlink_metadata(single.path())?.is_dir() => single.path(),
            _ => staging.clone(),
        };
        for child in fs_err::read_dir(&from)? {
            let child = child?;
            fs_err::rename(child.path(), dir.join(child.file_name()))?;
        }
        if from != staging {
            fs_err::remove_dir(&from)?;
        }
        fs_err::remove_dir(&staging)?;
        Ok(())
    })();
    if moved.is_err() {
        let _ = fs_err::remove_dir_all(&staging);
    }
    moved.map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_file_name_knows_the_record_extensions() {
        assert_eq!(Format::from_file_name("code.ZIP"), Some(Format::Zip));
        assert_eq!(Format::from_file_name("v1.2.tar.gz"), Some(Format::TarGz));
        assert_eq!(Format::from_file_name("x.tgz"), Some(Format::TarGz));
        assert_eq!(Format::from_file_name("x.tar.bz2"), Some(Format::TarBz2));
        assert_eq!(Format::from_file_name("x.txz"), Some(Format::TarXz));
        assert_eq!(Format::from_file_name("x.tar"), Some(Format::Tar));
        assert_eq!(Format::from_file_name("data.csv.gz"), None);
        assert_eq!(Format::from_file_name("paper.docx"), None);
    }

    #[test]
    fn format_from_magic_reads_the_first_bytes() {
        assert_eq!(Format::from_magic(b"PK\x03\x04rest"), Some(Format::Zip));
        assert_eq!(Format::from_magic(&[0x1f, 0x8b, 8]), Some(Format::TarGz));
        assert_eq!(Format::from_magic(b"BZh91AY"), Some(Format::TarBz2));
        assert_eq!(
            Format::from_magic(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]),
            Some(Format::TarXz)
        );
        let mut tar = vec![0u8; 512];
        tar[257..263].copy_from_slice(b"ustar\0");
        assert_eq!(Format::from_magic(&tar), Some(Format::Tar));
        assert_eq!(Format::from_magic(b"hello"), None);
    }

    #[test]
    fn ratio_cap_has_a_floor() {
        let limits = Limits {
            max_ratio: 10,
            ratio_floor_bytes: 1000,
            ..Limits::default()
        };
        assert_eq!(limits.ratio_cap(5), 1000);
        assert_eq!(limits.ratio_cap(500), 5000);
    }
}
