//! The zip half of the hostile corpus: zip-slip, Windows separators, symlink entries
//! (CVE-2025-29787), duplicate central-directory names, bombs, broken archives.

use super::builders::*;
use hpcbinder::source::archive::Format;

#[test]
fn zip_slip_is_refused() {
    refused(
        &raw_zip(&[zip_file("../../../outside/pwned", "x")]),
        Format::Zip,
        &test_limits(),
        &["`..` in the path"],
    );
}

#[test]
fn zip_absolute_name_is_refused() {
    let sandbox = Sandbox::new();
    let name = format!("{}/pwned", sandbox.outside.display());
    refused(
        &raw_zip(&[zip_file(name, "x")]),
        Format::Zip,
        &test_limits(),
        &["absolute path"],
    );
}

#[test]
fn zip_backslash_dotdot_name_is_refused() {
    let archive = raw_zip(&[zip_file("..\\..\\..\\outside\\pwned", "x")]);
    refused(
        &archive,
        Format::Zip,
        &test_limits(),
        &["..\\..\\..\\outside\\pwned", "`..` in the path"],
    );
}

#[test]
fn zip_backslash_absolute_name_is_refused() {
    refused(
        &raw_zip(&[zip_file("\\outside\\pwned", "x")]),
        Format::Zip,
        &test_limits(),
        &["absolute path"],
    );
}

#[test]
fn zip_symlink_pointing_out_is_refused() {
    let archive = raw_zip(&[
        zip_symlink("evil", "../../../outside"),
        zip_file("evil/pwned", "x"),
    ]);
    refused(
        &archive,
        Format::Zip,
        &test_limits(),
        &["`evil`", "points outside"],
    );
}

#[test]
fn zip_file_written_through_an_earlier_symlink_is_refused() {
    // CVE-2025-29787: zip's own extract followed links made earlier in the archive.
    let archive = raw_zip(&[
        zip_file("sub/keep", "k"),
        zip_symlink("link", "sub"),
        zip_file("link/x", "x"),
    ]);
    refused(
        &archive,
        Format::Zip,
        &test_limits(),
        &["link/x", "parent `link` is a symlink"],
    );
}

#[test]
fn zip_duplicate_names_are_refused() {
    let archive = raw_zip(&[zip_file("a.txt", "one"), zip_file("a.txt", "two")]);
    refused(&archive, Format::Zip, &test_limits(), &["more than once"]);
}

#[test]
fn zip_names_differing_only_in_case_are_refused() {
    let archive = raw_zip(&[zip_file("Makefile", "a"), zip_file("makefile", "b")]);
    refused(&archive, Format::Zip, &test_limits(), &["only in case"]);
}

#[test]
fn zip_name_that_is_not_utf8_is_refused() {
    refused(
        &raw_zip(&[zip_file(b"\xff\xfe.txt", "x")]),
        Format::Zip,
        &test_limits(),
        &["not valid UTF-8"],
    );
}

#[test]
fn zip_empty_name_is_refused() {
    refused(
        &raw_zip(&[zip_file("", "x")]),
        Format::Zip,
        &test_limits(),
        &["empty name"],
    );
}

#[test]
fn zip_fifo_mode_is_refused() {
    let archive = raw_zip(&[ZipEntry {
        name: b"pipe".to_vec(),
        data: Vec::new(),
        mode: Some(0o010644),
    }]);
    refused(&archive, Format::Zip, &test_limits(), &["`pipe`", "FIFO"]);
}

#[test]
fn zip_bomb_is_refused_by_ratio() {
    let zeros = vec![0u8; 4 << 20];
    let archive = deflated_zip(&[("zeros.bin", &zeros, 0o644)]);
    refused(
        &archive,
        Format::Zip,
        &test_limits(),
        &["`zeros.bin`", "decompression bomb"],
    );
}

#[test]
fn zip_with_too_many_entries_is_refused() {
    let entries: Vec<_> = (0..101).map(|i| zip_file(format!("f{i}"), "")).collect();
    refused(
        &raw_zip(&entries),
        Format::Zip,
        &test_limits(),
        &["more than 100 entries"],
    );
}

#[test]
fn zip_with_a_wrong_checksum_is_refused() {
    let mut archive = raw_zip(&[zip_file("a.txt", "hello")]);
    let data_at = 30 + "a.txt".len();
    archive[data_at] = b'j';
    refused(
        &archive,
        Format::Zip,
        &test_limits(),
        &["not a valid zip archive"],
    );
}

#[test]
fn zip_truncated_is_refused() {
    let archive = deflated_zip(&[("a.txt", b"hello".as_slice(), 0o644)]);
    refused(
        &archive[..archive.len() - 30],
        Format::Zip,
        &test_limits(),
        &["not a valid zip archive"],
    );
}

/// Set a 16-bit field in the local and central headers of a one-entry `raw_zip`.
fn patch_field(archive: &mut [u8], name: &str, data: &str, local_at: usize, value: u16) {
    let central = 30 + name.len() + data.len();
    archive[local_at..local_at + 2].copy_from_slice(&value.to_le_bytes());
    archive[central + local_at + 2..central + local_at + 4].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn zip_encrypted_entry_is_refused_as_unsupported() {
    let mut archive = raw_zip(&[zip_file("secret.txt", "hello")]);
    patch_field(&mut archive, "secret.txt", "hello", 6, 0x0801);
    refused(
        &archive,
        Format::Zip,
        &test_limits(),
        &["`secret.txt`", "encrypted"],
    );
}

#[test]
fn zip_compression_method_we_lack_is_named() {
    let mut archive = raw_zip(&[zip_file("data.bin", "hello")]);
    patch_field(&mut archive, "data.bin", "hello", 8, 12); // bzip2
    refused(
        &archive,
        Format::Zip,
        &test_limits(),
        &["cannot extract `data.bin`"],
    );
}
