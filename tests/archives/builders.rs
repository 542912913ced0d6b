//! Builders for the archive corpus: tar streams written header by header (so names,
//! sizes and types can be anything an attacker writes), zips written byte by byte for the
//! same reason (plus the `zip` crate's writer for ordinary, deflated ones), compressors,
//! and a sandbox that proves nothing outside the target changed.

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hpcbinder::source::archive::{self, ArchiveError, Extracted, Format, Limits};
use tar::EntryType;

/// One tar member, exactly as written.
pub struct TarEntry {
    pub kind: EntryType,
    pub name: Vec<u8>,
    pub link: Vec<u8>,
    pub mode: u32,
    pub data: Vec<u8>,
    /// A size field that differs from the data's length (a lying header).
    pub size: Option<u64>,
}

pub fn file(name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> TarEntry {
    entry(EntryType::Regular, name, b"", 0o644, data)
}

pub fn dir(name: impl AsRef<[u8]>) -> TarEntry {
    entry(EntryType::Directory, name, b"", 0o755, b"")
}

pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> TarEntry {
    entry(EntryType::Symlink, name, target, 0o777, b"")
}

pub fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> TarEntry {
    entry(EntryType::Link, name, target, 0o644, b"")
}

pub fn entry(
    kind: EntryType,
    name: impl AsRef<[u8]>,
    link: impl AsRef<[u8]>,
    mode: u32,
    data: impl AsRef<[u8]>,
) -> TarEntry {
    TarEntry {
        kind,
        name: name.as_ref().to_vec(),
        link: link.as_ref().to_vec(),
        mode,
        data: data.as_ref().to_vec(),
        size: None,
    }
}

fn pad(out: &mut Vec<u8>) {
    let rest = out.len() % 512;
    if rest != 0 {
        out.resize(out.len() + 512 - rest, 0);
    }
}

fn header(kind: EntryType, name: &[u8], link: &[u8], mode: u32, size: u64) -> [u8; 512] {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    header.set_cksum();
    *header.as_bytes()
}

/// A member's header and data; names over 100 bytes get a GNU long-name member first.
pub fn tar_member(out: &mut Vec<u8>, entry: &TarEntry) {
    let name = if entry.name.len() > 100 {
        let mut long = entry.name.clone();
        long.push(0);
        out.extend_from_slice(&header(
            EntryType::GNULongName,
            b"././@LongLink",
            b"",
            0o644,
            long.len() as u64,
        ));
        out.extend_from_slice(&long);
        pad(out);
        &b"long"[..]
    } else {
        &entry.name[..]
    };
    let size = entry.size.unwrap_or(entry.data.len() as u64);
    out.extend_from_slice(&header(entry.kind, name, &entry.link, entry.mode, size));
    out.extend_from_slice(&entry.data);
    pad(out);
}

/// A PAX extended header (`x`) holding `records`, which apply to the next member.
pub fn pax_member(out: &mut Vec<u8>, records: &[(&str, &[u8])]) {
    let mut body = Vec::new();
    for (key, value) in records {
        let text_len = key.len() + value.len() + 3;
        let mut len = text_len + text_len.to_string().len();
        if (text_len + len.to_string().len()) != len {
            len += 1;
        }
        body.extend_from_slice(format!("{len} {key}=").as_bytes());
        body.extend_from_slice(value);
        body.push(b'\n');
    }
    out.extend_from_slice(&header(
        EntryType::XHeader,
        b"PaxHeader",
        b"",
        0o644,
        body.len() as u64,
    ));
    out.extend_from_slice(&body);
    pad(out);
}

/// A complete tar stream: the members, then the two zero blocks.
pub fn tar(entries: &[TarEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        tar_member(&mut out, entry);
    }
    out.resize(out.len() + 1024, 0);
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub fn bzip2(data: &[u8]) -> Vec<u8> {
    let mut encoder = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut encoder =
        lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(6)).unwrap();
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// One zip member, stored (not compressed), written byte by byte.
pub struct ZipEntry {
    pub name: Vec<u8>,
    pub data: Vec<u8>,
    /// Unix mode with file type bits (`0o100644`, `0o120777`); `None` writes a DOS entry.
    pub mode: Option<u32>,
}

pub fn zip_file(name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> ZipEntry {
    ZipEntry {
        name: name.as_ref().to_vec(),
        data: data.as_ref().to_vec(),
        mode: Some(0o100644),
    }
}

pub fn zip_symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> ZipEntry {
    ZipEntry {
        name: name.as_ref().to_vec(),
        data: target.as_ref().to_vec(),
        mode: Some(0o120777),
    }
}

fn u16le(out: &mut Vec<u8>, value: usize) {
    out.extend_from_slice(&u16::try_from(value).unwrap().to_le_bytes());
}

fn u32le(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&u32::try_from(value).unwrap().to_le_bytes());
}

/// A zip with whatever names, duplicates and modes the entries have.
pub fn raw_zip(entries: &[ZipEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for entry in entries {
        let offset = out.len() as u64;
        let mut crc = flate2::Crc::new();
        crc.update(&entry.data);
        let flags = if std::str::from_utf8(&entry.name).is_ok() {
            0x0800
        } else {
            0
        };
        let size = entry.data.len() as u64;
        let mut common = Vec::new();
        u16le(&mut common, 20); // version needed
        u16le(&mut common, flags);
        u16le(&mut common, 0); // stored
        u16le(&mut common, 0); // time
        u16le(&mut common, 0x21); // 1980-01-01
        u32le(&mut common, u64::from(crc.sum()));
        u32le(&mut common, size);
        u32le(&mut common, size);
        u16le(&mut common, entry.name.len());
        u16le(&mut common, 0); // extra
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&common);
        out.extend_from_slice(&entry.name);
        out.extend_from_slice(&entry.data);

        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        u16le(
            &mut central,
            if entry.mode.is_some() {
                (3 << 8) | 20
            } else {
                20
            },
        );
        central.extend_from_slice(&common);
        u16le(&mut central, 0); // comment
        u16le(&mut central, 0); // disk
        u16le(&mut central, 0); // internal attributes
        u32le(&mut central, u64::from(entry.mode.unwrap_or(0)) << 16);
        u32le(&mut central, offset);
        central.extend_from_slice(&entry.name);
    }
    let central_offset = out.len() as u64;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    u16le(&mut out, 0);
    u16le(&mut out, 0);
    u16le(&mut out, entries.len());
    u16le(&mut out, entries.len());
    u32le(&mut out, central.len() as u64);
    u32le(&mut out, central_offset);
    u16le(&mut out, 0);
    out
}

/// A deflated zip made by the `zip` crate: `(name, data, mode)`; names ending in `/` are
/// directories.
pub fn deflated_zip(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data, mode) in entries {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(*mode);
        if name.ends_with('/') {
            writer.add_directory(*name, options).unwrap();
        } else {
            writer.start_file(*name, options).unwrap();
            writer.write_all(data).unwrap();
        }
    }
    writer.finish().unwrap().into_inner()
}

/// Small limits so bombs and floods are cheap to build.
pub fn test_limits() -> Limits {
    Limits {
        max_total_bytes: 1 << 20,
        max_entries: 100,
        max_ratio: 50,
        ratio_floor_bytes: 256 << 10,
    }
}

/// A temporary tree: `outside/victim.txt` (a sentinel a hostile archive aims at) and the
/// target `work/deep/out`, so `..` escapes of one to three levels land inside the sandbox.
pub struct Sandbox {
    pub temp: tempfile::TempDir,
    pub target: PathBuf,
    pub outside: PathBuf,
}

impl Sandbox {
    pub fn new() -> Self {
        let temp = tempfile::tempdir().unwrap();
        let outside = temp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim.txt"), "victim").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::create_dir_all(temp.path().join("work/deep")).unwrap();
        let target = temp.path().join("work/deep/out");
        Self {
            temp,
            target,
            outside,
        }
    }

    /// Every path under the sandbox but the target, with its type, mode and contents.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut seen = BTreeMap::new();
        for entry in walkdir::WalkDir::new(self.temp.path()).follow_links(false) {
            let entry = entry.unwrap();
            if entry.path().starts_with(&self.target) {
                continue;
            }
            let meta = entry.path().symlink_metadata().unwrap();
            let contents = if meta.is_file() {
                std::fs::read_to_string(entry.path()).unwrap_or_default()
            } else {
                String::new()
            };
            let described = format!(
                "{:?} {:o} {contents}",
                meta.file_type(),
                meta.permissions().mode()
            );
            seen.insert(entry.path().to_path_buf(), described);
        }
        seen
    }

    pub fn write_archive(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.temp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    pub fn extract(
        &self,
        bytes: &[u8],
        format: Format,
        limits: &Limits,
    ) -> Result<Extracted, ArchiveError> {
        let archive = self.write_archive(&format!("archive.{format}"), bytes);
        archive::extract(&archive, format, &self.target, limits)
    }
}

/// Extract a hostile archive and check the whole contract: an error of one line holding
/// every `expected` phrase, nothing changed outside the target, no target left behind.
/// Returns the message.
pub fn refused(bytes: &[u8], format: Format, limits: &Limits, expected: &[&str]) -> String {
    let sandbox = Sandbox::new();
    let archive = sandbox.write_archive(&format!("archive.{format}"), bytes);
    let before = sandbox.snapshot();
    let result = archive::extract(&archive, format, &sandbox.target, limits);
    let error = result.expect_err("a hostile archive must be refused");
    let message = error.to_string();
    assert!(!message.contains('\n'), "one line: {message}");
    for phrase in expected {
        assert!(
            message.contains(phrase),
            "`{message}` should say `{phrase}`"
        );
    }
    assert_eq!(
        sandbox.snapshot(),
        before,
        "something outside the target changed ({message})"
    );
    assert!(
        !sandbox.target.exists() && sandbox.target.symlink_metadata().is_err(),
        "the target was left behind ({message})"
    );
    assert!(!Path::new("/etc/hpcbinder-pwned").exists());
    message
}
