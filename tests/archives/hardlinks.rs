//! Tar hard links: one to a regular file the archive extracted before it is written as an
//! independent copy (never a real link, which could alias a file elsewhere); every other
//! hard link is refused with the usual contract (`builders::refused`), and copies count
//! towards the size and ratio limits.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use hpcbinder::source::archive::{Extracted, Format, Limits};
use tar::EntryType;

use super::builders::*;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn tar_hardlink_to_an_extracted_file_is_an_independent_copy() {
    let sandbox = Sandbox::new();
    let script = "#!/bin/sh\necho hello\n";
    let archive = gzip(&tar(&[
        dir("src/"),
        entry(EntryType::Regular, "src/tool", "", 0o755, script),
        hardlink("bin/tool", "src/tool"),
        hardlink("tool", "./src//tool"),
    ]));
    let extracted = sandbox
        .extract(&archive, Format::TarGz, &test_limits())
        .unwrap();
    assert_eq!(
        extracted,
        Extracted {
            files: 3,
            bytes: 3 * script.len() as u64,
        }
    );
    let original = sandbox.target.join("src/tool");
    for copy in ["bin/tool", "tool"] {
        let copy = sandbox.target.join(copy);
        let metadata = std::fs::symlink_metadata(&copy).unwrap();
        assert!(metadata.is_file(), "{}", copy.display());
        assert_eq!(read(&copy), script);
        assert_ne!(
            metadata.ino(),
            std::fs::metadata(&original).unwrap().ino(),
            "a copy, not a link"
        );
        assert_eq!(metadata.nlink(), 1);
        assert_eq!(metadata.mode() & 0o100, 0o100, "the original's mode");
    }
    assert_eq!(std::fs::metadata(&original).unwrap().nlink(), 1);
    std::fs::write(sandbox.target.join("tool"), "changed").unwrap();
    assert_eq!(
        read(&original),
        script,
        "writing the copy leaves the original"
    );
}

#[test]
fn tar_hardlink_then_a_rewrite_of_its_original_is_refused() {
    let archive = tar(&[
        file("a", "original"),
        hardlink("b", "a"),
        file("a", "rewritten"),
    ]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &["`a`", "more than once"],
    );
}

#[test]
fn tar_hardlinks_pointing_out_are_refused_and_nothing_escapes() {
    let passwd_links = std::fs::metadata("/etc/passwd").map(|m| m.nlink()).ok();
    let cases = [
        ("../x", "`..` in the path"),
        ("../../../outside/victim.txt", "`..` in the path"),
        ("a/../../outside/victim.txt", "`..` in the path"),
        ("/etc/passwd", "hard link to absolute path `/etc/passwd`"),
    ];
    for (target, reason) in cases {
        let archive = tar(&[
            file("a/f", "inside"),
            hardlink("h", target),
            file("h", "overwrite"),
        ]);
        refused(
            &archive,
            Format::Tar,
            &test_limits(),
            &["refusing `h`", reason],
        );
    }
    assert_eq!(
        std::fs::metadata("/etc/passwd").map(|m| m.nlink()).ok(),
        passwd_links
    );
}

#[test]
fn tar_hardlink_through_a_symlink_leading_out_is_refused() {
    // `out -> a/up/..` is lexically inside; through `a/up -> ..` it is above the root.
    let archive = tar(&[
        dir("a/"),
        symlink("a/up", ".."),
        symlink("out", "a/up/.."),
        hardlink("h", "out/outside/victim.txt"),
    ]);
    refused(
        &archive,
        Format::Tar,
        &test_limits(),
        &[
            "refusing `h`",
            "leads outside the extraction directory through links",
        ],
    );
}

#[test]
fn tar_hardlink_through_inside_symlinks_copies_the_file() {
    let sandbox = Sandbox::new();
    let archive = tar(&[
        file("real/data", "data"),
        symlink("alias", "real"),
        symlink("pointer", "alias/data"),
        hardlink("via-directory", "alias/data"),
        hardlink("via-file", "pointer"),
    ]);
    sandbox
        .extract(&archive, Format::Tar, &test_limits())
        .unwrap();
    for copy in ["via-directory", "via-file"] {
        let path = sandbox.target.join(copy);
        assert!(
            std::fs::symlink_metadata(&path).unwrap().is_file(),
            "{copy}"
        );
        assert_eq!(read(&path), "data");
    }
    assert!(std::fs::symlink_metadata(sandbox.target.join("pointer"))
        .unwrap()
        .is_symlink());
}

#[test]
fn tar_hardlink_to_a_later_or_missing_entry_is_refused() {
    for archive in [
        tar(&[hardlink("b", "a"), file("a", "later")]),
        tar(&[file("f", "x"), hardlink("h", "f/below")]),
        tar(&[symlink("s", "nowhere"), hardlink("h", "s")]),
    ] {
        refused(
            &archive,
            Format::Tar,
            &test_limits(),
            &["hard link to", "names no file extracted before it"],
        );
    }
}

#[test]
fn tar_hardlink_to_a_directory_is_refused() {
    for target in ["d", "d/", "./"] {
        refused(
            &tar(&[dir("d/"), file("d/f", "x"), hardlink("h", target)]),
            Format::Tar,
            &test_limits(),
            &["refusing `h`", "names a directory"],
        );
    }
}

#[test]
fn tar_hardlink_to_itself_is_refused() {
    for target in ["h", "./h"] {
        refused(
            &tar(&[hardlink("h", target)]),
            Format::Tar,
            &test_limits(),
            &["refusing `h`", "links to itself"],
        );
    }
}

#[test]
fn tar_hardlink_chain_copies_count_towards_the_size_limit() {
    let chain = |size: usize| {
        tar(&[
            file("a", vec![1u8; size]),
            hardlink("b", "a"),
            hardlink("c", "b"),
        ])
    };
    let sandbox = Sandbox::new();
    let extracted = sandbox
        .extract(&chain(300 << 10), Format::Tar, &test_limits())
        .unwrap();
    assert_eq!(
        extracted,
        Extracted {
            files: 3,
            bytes: 900 << 10,
        }
    );
    assert_eq!(
        std::fs::read(sandbox.target.join("c")).unwrap(),
        vec![1u8; 300 << 10]
    );
    refused(
        &chain(400 << 10),
        Format::Tar,
        &test_limits(),
        &["`c`", "more than 1048576 bytes"],
    );
}

#[test]
fn tar_gz_hardlink_copies_count_towards_the_ratio() {
    // A few hundred compressed bytes and a link per copy: a bomb that never decompresses.
    let mut entries = vec![file("zeros", vec![0u8; 200 << 10])];
    entries.extend((0..8).map(|i| hardlink(format!("copy{i}"), "zeros")));
    let limits = Limits {
        max_total_bytes: 64 << 20,
        ..test_limits()
    };
    refused(
        &gzip(&tar(&entries)),
        Format::TarGz,
        &limits,
        &["`copy0`", "decompression bomb"],
    );
}
