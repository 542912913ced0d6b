//! Safe extraction against a corpus of hostile archives built here (tar-rs and zip-slip
//! classics, link tricks, bombs, lying headers), and the ordinary archives records hold.
//! Every refusal is checked the same way (`builders::refused`): one clear line, nothing
//! outside the target touched, nothing half-extracted left behind. Hard links, extracted as
//! copies, are in `archives/hardlinks.rs`; the last test takes its limits from the site
//! config's `[archives]` table.

#[path = "archives/builders.rs"]
mod builders;
#[path = "archives/hardlinks.rs"]
mod hardlinks;
#[path = "archives/records.rs"]
mod records;
#[path = "archives/zips.rs"]
mod zips;

use std::os::unix::fs::PermissionsExt;

use builders::*;
use hpcbinder::settings::ArchivesTable;
use hpcbinder::source::archive::{Format, Limits};
use tar::EntryType;

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

// ---- tar: names ------------------------------------------------------------------------

#[test]
fn tar_absolute_path_is_refused() {
    let sandbox = Sandbox::new();
    let name = format!("{}/pwned", sandbox.outside.display());
    refused(
        &tar(&[file(name, "x")]),
        Format::Tar,
        &test_limits(),
        &["absolute path", "/pwned"],
    );
}

#[test]
fn tar_dotdot_escape_is_refused() {
    let archive = tar(&[file("../../../outside/pwned", "x")]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["../../../outside/pwned", "`..` in the path"],
    );
}

#[test]
fn tar_dotdot_after_a_directory_is_refused() {
    refused(
        &tar(&[file("a/../../x", "x")]),
        Format::Tar,
        &test_limits(),
        &["a/../../x", "`..`"],
    );
}

#[test]
fn tar_gnu_long_name_with_dotdot_is_refused() {
    let name = format!("{}/../../../../outside/pwned", "d/".repeat(60));
    refused(
        &tar(&[file(name, "x")]),
        Format::Tar,
        &test_limits(),
        &["`..` in the path"],
    );
}

#[test]
fn tar_pax_path_that_is_absolute_is_refused() {
    let mut stream = Vec::new();
    pax_member(&mut stream, &[("path", b"/tmp/hpcbinder-pax-pwned")]);
    tar_member(&mut stream, &file("innocent.txt", "x"));
    stream.resize(stream.len() + 1024, 0);
    refused(
        &stream,
        Format::Tar,
        &test_limits(),
        &["/tmp/hpcbinder-pax-pwned", "absolute path"],
    );
    assert!(!std::path::Path::new("/tmp/hpcbinder-pax-pwned").exists());
}

#[test]
fn tar_empty_name_is_refused() {
    refused(
        &tar(&[file("", "x")]),
        Format::Tar,
        &test_limits(),
        &["empty name"],
    );
}

#[test]
fn tar_name_that_is_not_utf8_is_refused() {
    refused(
        &tar(&[file(b"caf\xe9.txt", "x")]),
        Format::Tar,
        &test_limits(),
        &["caf", "not valid UTF-8"],
    );
}

#[test]
fn tar_name_with_terminal_escapes_is_refused_and_shown_escaped() {
    let message = refused(
        &tar(&[file("a\x1b[2Jb", "x")]),
        Format::Tar,
        &test_limits(),
        &["control character"],
    );
    assert!(
        message.contains("a\\u{1b}[2Jb") && !message.contains('\x1b'),
        "{message}"
    );
}

#[test]
fn tar_duplicate_file_name_is_refused() {
    let archive = tar(&[file("a.txt", "one"), file("a.txt", "two")]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["a.txt", "more than once"],
    );
}

#[test]
fn tar_names_differing_only_in_case_are_refused() {
    let archive = tar(&[file("README", "one"), file("readme", "two")]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["`readme`", "`README`", "only in case"],
    );
}

#[test]
fn tar_directories_differing_only_in_case_are_refused() {
    let archive = tar(&[file("Docs/a", "one"), file("docs/b", "two")]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["docs/b", "only in case"],
    );
}

#[test]
fn tar_directory_then_file_of_the_same_name_is_refused() {
    refused(
        &tar(&[dir("d/"), file("d", "x")]),
        Format::Tar,
        &test_limits(),
        &["`d`", "more than once"],
    );
}

#[test]
fn tar_file_then_entry_below_it_is_refused() {
    refused(
        &tar(&[file("f", "x"), file("f/g", "y")]),
        Format::Tar,
        &test_limits(),
        &["f/g", "parent `f` is a file"],
    );
}

// ---- tar: links -----------------------------------------------------------------------

#[test]
fn tar_symlink_to_etc_then_a_file_through_it_is_refused() {
    let archive = tar(&[symlink("etc", "/etc"), file("etc/hpcbinder-pwned", "x")]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["`etc`", "absolute path `/etc`"],
    );
}

#[test]
fn tar_symlink_out_then_a_file_through_it_is_refused() {
    let archive = tar(&[symlink("evil", "../../../outside"), file("evil/pwned", "x")]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["`evil`", "points outside the extraction directory"],
    );
}

#[test]
fn tar_file_written_through_an_inside_symlink_is_refused() {
    let archive = tar(&[dir("sub/"), symlink("alias", "sub"), file("alias/x", "x")]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["alias/x", "parent `alias` is a symlink"],
    );
}

#[test]
fn tar_symlink_then_directory_of_the_same_name_is_refused() {
    // RUSTSEC-2026-0067: the directory entry chmodded the link's target.
    let archive = tar(&[
        dir("sub/"),
        symlink("d", "sub"),
        entry(EntryType::Directory, "d/", "", 0o777, ""),
    ]);
    refused(&archive, Format::Tar, &test_limits(), &["more than once"]);
}

#[test]
fn tar_symlink_then_file_of_the_same_name_is_refused() {
    // RUSTSEC-2018-0002: the file was written through the link.
    let archive = tar(&[
        file("real", "r"),
        symlink("f", "real"),
        file("f", "overwrite"),
    ]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["`f`", "more than once"],
    );
}

#[test]
fn tar_symlink_chain_through_a_link_to_the_root_is_refused() {
    // `a/up -> ..` is the root, lexically fine; `out -> a/up/..` climbs above it.
    let archive = tar(&[
        dir("a/"),
        symlink("a/up", ".."),
        symlink("out", "a/up/.."),
        file("x", "x"),
    ]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["`out`", "through other links"],
    );
}

#[test]
fn tar_symlink_chain_resolved_against_later_links_is_refused() {
    // `c -> b/x/../..` is lexically inside; once the later `b -> .` exists it climbs out.
    let archive = tar(&[dir("x/"), symlink("c", "b/x/../.."), symlink("b", ".")]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["`c`", "through other links"],
    );
}

#[test]
fn tar_symlink_chain_a_to_b_to_parent_is_refused() {
    refused(
        &tar(&[symlink("a", "b"), symlink("b", "..")]),
        Format::Tar,
        &test_limits(),
        &["`b`", "points outside"],
    );
}

#[test]
fn tar_symlink_loop_is_refused() {
    refused(
        &tar(&[symlink("a", "b/x"), symlink("b", "a")]),
        Format::Tar,
        &test_limits(),
        &["loop"],
    );
}

#[test]
fn tar_hardlink_to_an_absolute_path_is_refused() {
    let sandbox = Sandbox::new();
    let target = format!("{}/victim.txt", sandbox.outside.display());
    let archive = tar(&[hardlink("h", target)]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &[
            "`h`",
            "hard link to absolute path",
            "points outside the extraction directory",
        ],
    );
}

#[test]
fn tar_hardlink_climbing_out_is_refused() {
    let archive = tar(&[
        hardlink("h", "../../../outside/victim.txt"),
        file("h", "overwrite"),
    ]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &[
            "`h`",
            "hard link to `../../../outside/victim.txt`",
            "`..` in the path",
        ],
    );
}

#[test]
fn tar_hardlink_to_an_extracted_file_then_a_write_through_it_is_refused() {
    // `b` is a copy of `a`, and a name is written once: the write can reach neither.
    let archive = tar(&[
        file("a", "original"),
        hardlink("b", "a"),
        file("b", "overwrites a"),
    ]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["`b`", "more than once"],
    );
}

// ---- tar: types and modes --------------------------------------------------------------

#[test]
fn tar_character_device_is_refused() {
    let archive = tar(&[entry(EntryType::Char, "null", "", 0o666, "")]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["`null`", "character device"],
    );
}

#[test]
fn tar_block_device_is_refused() {
    let archive = tar(&[entry(EntryType::Block, "sda", "", 0o660, "")]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["`sda`", "block device"],
    );
}

#[test]
fn tar_fifo_is_refused() {
    refused(
        &tar(&[entry(EntryType::Fifo, "pipe", "", 0o644, "")]),
        Format::Tar,
        &test_limits(),
        &["`pipe`", "FIFO"],
    );
}

#[test]
fn tar_sparse_file_is_refused() {
    let archive = tar(&[entry(EntryType::GNUSparse, "sparse", "", 0o644, "")]);
    refused(&archive, Format::Tar, &test_limits(), &["sparse"]);
}

#[test]
fn tar_setuid_setgid_sticky_and_world_writable_bits_are_dropped() {
    let sandbox = Sandbox::new();
    let archive = tar(&[
        entry(EntryType::Directory, "shared/", "", 0o3777, ""),
        entry(EntryType::Regular, "shared/tool", "", 0o7777, "#!/bin/sh\n"),
        entry(EntryType::Regular, "shared/data", "", 0o666, "d"),
    ]);
    sandbox
        .extract(&archive, Format::Tar, &test_limits())
        .unwrap();
    for path in ["shared", "shared/tool", "shared/data"] {
        let mode = mode_of(&sandbox.target.join(path));
        assert_eq!(mode & 0o7022, 0, "{path} kept {mode:o}");
    }
    assert_eq!(
        mode_of(&sandbox.target.join("shared/tool")) & 0o100,
        0o100,
        "owner execute is kept"
    );
}

// ---- tar: lying, broken, huge ----------------------------------------------------------

#[test]
fn tar_header_claiming_more_data_than_the_archive_holds_is_refused() {
    let mut lying = file("big.bin", "only ten b");
    lying.size = Some(100_000);
    let mut stream = Vec::new();
    tar_member(&mut stream, &lying);
    stream.truncate(512 + 10);
    refused(
        &stream,
        Format::Tar,
        &test_limits(),
        &["not a valid tar archive", "declares 100000 bytes"],
    );
}

#[test]
fn tar_header_claiming_less_data_than_follows_is_refused() {
    let mut lying = file("small.txt", "x".repeat(2000));
    lying.size = Some(10);
    let archive = tar(&[lying]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["not a valid tar archive", "after `small.txt`", "cksum"],
    );
}

#[test]
fn tar_gz_truncated_is_refused() {
    let whole = gzip(&tar(&[file("a.txt", "x".repeat(5000)), file("b.txt", "y")]));
    refused(
        &whole[..whole.len() / 2],
        Format::TarGz,
        &test_limits(),
        &["not a valid tar.gz archive"],
    );
}

#[test]
fn tar_gz_that_is_not_gzip_is_refused() {
    refused(
        b"this is an HTML error page, not a tarball",
        Format::TarGz,
        &test_limits(),
        &["not a valid tar.gz"],
    );
}

#[test]
fn tar_gz_bomb_is_refused_by_ratio() {
    let archive = gzip(&tar(&[file("zeros", vec![0u8; 4 << 20])]));
    refused(
        &archive,
        Format::TarGz,
        &test_limits(),
        &["`zeros`", "decompression bomb"],
    );
}

#[test]
fn tar_bz2_bomb_is_refused_by_ratio() {
    let archive = bzip2(&tar(&[file("zeros", vec![0u8; 4 << 20])]));
    refused(
        &archive,
        Format::TarBz2,
        &test_limits(),
        &["decompression bomb"],
    );
}

#[test]
fn tar_xz_bomb_is_refused_by_ratio() {
    let archive = xz(&tar(&[file("zeros", vec![0u8; 4 << 20])]));
    refused(
        &archive,
        Format::TarXz,
        &test_limits(),
        &["decompression bomb"],
    );
}

#[test]
fn tar_with_too_many_entries_is_refused() {
    let entries: Vec<_> = (0..101).map(|i| file(format!("f{i}"), "")).collect();
    refused(
        &gzip(&tar(&entries)),
        Format::TarGz,
        &test_limits(),
        &["more than 100 entries"],
    );
}

#[test]
fn tar_over_the_total_size_is_refused() {
    let archive = tar(&[
        file("a", vec![1u8; 600 << 10]),
        file("b", vec![2u8; 600 << 10]),
    ]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["`b`", "more than 1048576 bytes"],
    );
}

#[test]
fn tar_long_name_over_the_metadata_cap_is_refused() {
    let mut stream = Vec::new();
    let huge = vec![b'a'; 2 << 20];
    tar_member(
        &mut stream,
        &entry(EntryType::GNULongName, "././@LongLink", "", 0o644, &huge),
    );
    tar_member(&mut stream, &file("x", "x"));
    stream.resize(stream.len() + 1024, 0);
    let limits = Limits {
        max_total_bytes: 64 << 20,
        ..test_limits()
    };
    refused(
        &stream,
        Format::Tar,
        &limits,
        &["headers or long names over"],
    );
}

#[test]
fn tar_deep_paths_count_their_implied_directories_as_entries() {
    let deep = format!("{}f", "d/".repeat(150));
    refused(
        &tar(&[file(deep, "x")]),
        Format::Tar,
        &test_limits(),
        &["more than 100 entries"],
    );
}

// ---- limits from the site config -------------------------------------------------------

#[test]
fn limits_from_the_archives_table_refuse_what_the_defaults_accept() {
    let table: ArchivesTable = toml::from_str("max-entries = 3\nmax-bytes = 1048576").unwrap();
    let limits = table.limits();
    assert_eq!(
        limits,
        Limits {
            max_entries: 3,
            max_total_bytes: 1 << 20,
            ..Limits::default()
        }
    );

    let many: Vec<_> = (0..5).map(|i| file(format!("f{i}"), "x")).collect();
    let many = gzip(&tar(&many));
    Sandbox::new()
        .extract(&many, Format::TarGz, &Limits::default())
        .expect("the default limits accept five small files");
    refused(&many, Format::TarGz, &limits, &["more than 3 entries"]);

    let big = tar(&[file("data.bin", vec![7u8; 2 << 20])]);
    Sandbox::new()
        .extract(&big, Format::Tar, &Limits::default())
        .expect("the default limits accept 2 MiB");
    refused(
        &big,
        Format::Tar,
        &limits,
        &["`data.bin`", "more than 1048576 bytes"],
    );
}
