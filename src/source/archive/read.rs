//! Reading the archive streams: decompressors behind a meter that counts what they
//! produce (the ratio and metadata caps), and the tar and zip walks that hand each entry
//! to the [`Tree`].

use std::cell::Cell;
use std::fmt;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;

use super::tree::{
    components, hard_link_target, link_target, refused, shown, Tree, MAX_NAME_BYTES,
};
use super::{ArchiveError, Extracted, Format, Limits};

/// Bytes tar headers, long names and skipped data may take between two entries.
const MAX_METADATA_BYTES: u64 = 1 << 20;
/// Memory the xz decoder may use (a header can ask for a 4 GiB dictionary; `xz -9` uses 64 MiB).
const XZ_MEMORY_LIMIT_KIB: u32 = 256 * 1024;

/// What reading the archive stream has seen, shared with the readers that count it.
#[derive(Default)]
struct Meter {
    /// Bytes out of the decompressor.
    decompressed: Cell<u64>,
    /// Bytes read since the last entry while not copying file data.
    metadata: Cell<u64>,
    copying: Cell<bool>,
    tripped: Cell<Option<Trip>>,
    /// The archive file itself failed to read (an I/O error, not corruption).
    source_failed: Cell<bool>,
}

#[derive(Clone, Copy)]
enum Trip {
    Ratio,
    Metadata,
}

/// The archive file, noting read failures in the meter.
struct Source<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .inspect_err(|_| self.meter.source_failed.set(true))
    }
}

impl<R: Seek> Seek for Source<R> {
    fn seek(&mut self, position: SeekFrom) -> io::Result<u64> {
        self.inner
            .seek(position)
            .inspect_err(|_| self.meter.source_failed.set(true))
    }
}

/// The decompressed stream, counted against the ratio and metadata caps.
struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
    ratio_cap: Option<u64>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)? as u64;
        let meter = &self.meter;
        meter.decompressed.set(meter.decompressed.get() + n);
        if !meter.copying.get() {
            meter.metadata.set(meter.metadata.get() + n);
            if meter.metadata.get() > MAX_METADATA_BYTES {
                meter.tripped.set(Some(Trip::Metadata));
                return Err(io::Error::other("limit reached"));
            }
        }
        if self
            .ratio_cap
            .is_some_and(|cap| meter.decompressed.get() > cap)
        {
            meter.tripped.set(Some(Trip::Ratio));
            return Err(io::Error::other("limit reached"));
        }
        Ok(n as usize)
    }
}

pub(super) struct Reading<'a> {
    pub(super) archive: &'a Path,
    pub(super) format: Format,
    pub(super) compressed: u64,
    pub(super) limits: &'a Limits,
}

impl Reading<'_> {
    fn corrupt(&self, last: &str, message: impl fmt::Display) -> ArchiveError {
        let at = if last.is_empty() {
            String::new()
        } else {
            format!(" after `{last}`")
        };
        ArchiveError::Corrupt {
            archive: self.archive.to_path_buf(),
            format: self.format,
            at,
            message: message.to_string(),
        }
    }

    /// A failed read of the stream: a limit we tripped, the disk, or a bad archive.
    fn stream_error(
        &self,
        meter: &Meter,
        entry: &str,
        last: &str,
        error: io::Error,
    ) -> ArchiveError {
        let entry = match (entry, last) {
            ("", "") => "(the first entry)".to_owned(),
            ("", last) => format!("(the entry after {last})"),
            (entry, _) => entry.to_owned(),
        };
        match meter.tripped.take() {
            Some(Trip::Ratio) => ArchiveError::Bomb {
                entry,
                ratio: self.limits.max_ratio,
                compressed: self.compressed,
            },
            Some(Trip::Metadata) => refused(
                &entry,
                format!("headers or long names over {MAX_METADATA_BYTES} bytes"),
            ),
            None if meter.source_failed.get() => ArchiveError::Io(error),
            None => self.corrupt(last, error),
        }
    }

    pub(super) fn tar(&self, file: std::fs::File, into: &Path) -> Result<Extracted, ArchiveError> {
        let meter = Rc::new(Meter::default());
        let source = BufReader::new(Source {
            inner: file,
            meter: meter.clone(),
        });
        let (decoder, ratio_cap): (Box<dyn Read>, _) = match self.format {
            Format::TarGz => (Box::new(flate2::bufread::MultiGzDecoder::new(source)), true),
            Format::TarBz2 => (Box::new(bzip2::bufread::MultiBzDecoder::new(source)), true),
            Format::TarXz => (
                Box::new(lzma_rust2::XzReader::new_mem_limit(
                    source,
                    true,
                    XZ_MEMORY_LIMIT_KIB,
                )),
                true,
            ),
            _ => (Box::new(source), false),
        };
        let ratio_cap = ratio_cap.then(|| self.limits.ratio_cap(self.compressed));
        let metered = Metered {
            inner: decoder,
            meter: meter.clone(),
            ratio_cap,
        };
        let mut archive = tar::Archive::new(metered);
        let mut tree = Tree::new(into, self.limits);
        let mut last = String::new();
        let entries = archive
            .entries()
            .map_err(|e| self.stream_error(&meter, "", &last, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.stream_error(&meter, "", &last, e))?;
            meter.metadata.set(0);
            tree.count_entry()?;
            let raw = entry.path_bytes().into_owned();
            let name = shown(&raw);
            let kind = entry.header().entry_type();
            if kind.is_pax_global_extensions() {
                // `git archive` writes one (the commit id); it describes no file.
                continue;
            }
            let parts = components(&raw, false)?;
            let mode = entry.header().mode().map_err(|e| self.corrupt(&last, e))?;
            use tar::EntryType as T;
            match kind {
                T::Directory => tree.add_dir(&parts, &name, mode)?,
                T::Regular | T::Continuous if raw.ends_with(b"/") => {
                    tree.add_dir(&parts, &name, mode)?
                }
                T::Regular | T::Continuous => {
                    let declared = entry.size();
                    meter.copying.set(true);
                    let on_error = |e| self.stream_error(&meter, &name, &last, e);
                    let written =
                        tree.add_file(&parts, &name, mode, &mut entry, None, &on_error)?;
                    meter.copying.set(false);
                    if written != declared {
                        return Err(self.corrupt(
                            &last,
                            format!("`{name}` declares {declared} bytes but the archive ends after {written}"),
                        ));
                    }
                }
                T::Symlink => {
                    let raw_target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    let target = link_target(&name, &raw_target)?;
                    tree.add_symlink(&parts, &name, target)?;
                }
                T::Link => {
                    let raw_target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    let target = hard_link_target(&name, &raw_target)?;
                    // The copy is written from disk, not the stream: count it as decompressed.
                    let ratio = ratio_cap.map(|cap| (cap, self.compressed));
                    tree.add_hard_link(&parts, &name, &target, ratio)?;
                }
                T::Char => return Err(refused(&name, "character device entries are not allowed")),
                T::Block => return Err(refused(&name, "block device entries are not allowed")),
                T::Fifo => return Err(refused(&name, "FIFO (named pipe) entries are not allowed")),
                T::GNUSparse => {
                    return Err(ArchiveError::Unsupported {
                        entry: name,
                        reason: "sparse files are not supported".into(),
                    });
                }
                other => {
                    return Err(ArchiveError::Unsupported {
                        entry: name,
                        reason: format!(
                            "tar entry type `{}` is not supported",
                            shown(&[other.as_byte()])
                        ),
                    });
                }
            }
            last = name;
        }
        tree.finish()
    }

    pub(super) fn zip(&self, file: std::fs::File, into: &Path) -> Result<Extracted, ArchiveError> {
        let meter = Rc::new(Meter::default());
        let source = BufReader::new(Source {
            inner: file,
            meter: meter.clone(),
        });
        let zip_error = |last: &str, error: zip::result::ZipError| match error {
            zip::result::ZipError::Io(error) if meter.source_failed.get() => {
                ArchiveError::Io(error)
            }
            other => self.corrupt(last, other),
        };
        let mut zip = zip::ZipArchive::new(source).map_err(|e| zip_error("", e))?;
        if zip.len() as u64 > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        if zip.has_duplicate_names() {
            return Err(ArchiveError::DuplicateInZip);
        }
        let ratio = Some((self.limits.ratio_cap(self.compressed), self.compressed));
        let mut tree = Tree::new(into, self.limits);
        let mut last = String::new();
        for index in 0..zip.len() {
            tree.count_entry()?;
            // Names come from the central directory, which is all we trust; local headers
            // only locate the data. The raw entry gives them without decoding anything.
            let (raw, unix_mode, is_dir, encrypted) = {
                let entry = zip.by_index_raw(index).map_err(|e| zip_error(&last, e))?;
                (
                    entry.name_raw().to_vec(),
                    entry.unix_mode(),
                    entry.is_dir(),
                    entry.encrypted(),
                )
            };
            let name = shown(&raw);
            let parts = components(&raw, true)?;
            if encrypted {
                return Err(ArchiveError::Unsupported {
                    entry: name,
                    reason: "encrypted zip entries are not supported".into(),
                });
            }
            let mode = unix_mode.unwrap_or(0o644);
            match mode & 0o170000 {
                0o040000 => tree.add_dir(&parts, &name, mode)?,
                _ if is_dir => tree.add_dir(&parts, &name, mode)?,
                0o120000 => {
                    let mut raw_target = Vec::new();
                    let read = self
                        .zip_entry(&mut zip, index, &name, &last, &meter)?
                        .take(MAX_NAME_BYTES as u64 + 1)
                        .read_to_end(&mut raw_target);
                    read.map_err(|e| self.corrupt(&last, e))?;
                    let target = link_target(&name, &raw_target)?;
                    tree.add_symlink(&parts, &name, target)?;
                }
                0 | 0o100000 => {
                    let on_error = |e: io::Error| {
                        if meter.source_failed.get() {
                            ArchiveError::Io(e)
                        } else if e.kind() == io::ErrorKind::Unsupported {
                            ArchiveError::Unsupported {
                                entry: name.clone(),
                                reason: e.to_string(),
                            }
                        } else {
                            self.corrupt(&last, format!("`{name}`: {e}"))
                        }
                    };
                    let mut entry = self.zip_entry(&mut zip, index, &name, &last, &meter)?;
                    tree.add_file(&parts, &name, mode, &mut entry, ratio, &on_error)?;
                }
                0o020000 => return Err(refused(&name, "character device entries are not allowed")),
                0o060000 => return Err(refused(&name, "block device entries are not allowed")),
                0o010000 => {
                    return Err(refused(&name, "FIFO (named pipe) entries are not allowed"))
                }
                _ => {
                    return Err(refused(
                        &name,
                        format!("file type {:o} is not allowed", mode & 0o170000),
                    ))
                }
            }
            last = name;
        }
        tree.finish()
    }

    /// A zip entry's decoded data; a compression method we lack is named as such.
    fn zip_entry<'z, R: Read + Seek>(
        &self,
        zip: &'z mut zip::ZipArchive<R>,
        index: usize,
        name: &str,
        last: &str,
        meter: &Meter,
    ) -> Result<zip::read::ZipFile<'z, R>, ArchiveError> {
        match zip.by_index(index) {
            Ok(entry) => Ok(entry),
            Err(
                error @ (zip::result::ZipError::UnsupportedArchive(_)
                | zip::result::ZipError::CompressionMethodNotSupported(_)),
            ) => Err(ArchiveError::Unsupported {
                entry: name.to_owned(),
                reason: error.to_string(),
            }),
            Err(zip::result::ZipError::Io(error)) if meter.source_failed.get() => {
                Err(ArchiveError::Io(error))
            }
            Err(error) => Err(self.corrupt(last, error)),
        }
    }
}
