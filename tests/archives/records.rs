//! What records really hold: ordinary archives in every format extract with their modes
//! and inside links, and a record that is one archive is unpacked one level
//! (repo2docker's `contentproviders/doi.py`).

use super::builders::*;
use super::mode_of;
use hpcbinder::source::archive::{self, ArchiveError, Format, Limits};
use tar::EntryType;

/// A small project: a directory entry, an executable, a file in a subdirectory listed
/// before its directory, and links that stay inside.
fn project() -> Vec<TarEntry> {
    vec![
        dir("./"),
        dir("project/"),
        entry(
            EntryType::Regular,
            "project/postBuild",
            "",
            0o755,
            "#!/bin/sh\necho hi\n",
        ),
        file("project/binder/environment.yml", "dependencies: [numpy]\n"),
        dir("project/binder/"),
        symlink("project/environment.yml", "binder/environment.yml"),
        symlink("project/docs", "../project/binder"),
        symlink("project/later", "missing-yet"),
    ]
}

fn assert_project(root: &std::path::Path) {
    let project = root.join("project");
    assert_eq!(
        std::fs::read_to_string(project.join("environment.yml")).unwrap(),
        "dependencies: [numpy]\n"
    );
    assert_eq!(
        std::fs::read_to_string(project.join("docs/environment.yml")).unwrap(),
        "dependencies: [numpy]\n"
    );
    assert_eq!(
        std::fs::read_link(project.join("later")).unwrap(),
        std::path::Path::new("missing-yet")
    );
    assert_eq!(
        mode_of(&project.join("postBuild")) & 0o111,
        0o111,
        "executable bits are kept"
    );
    assert_eq!(mode_of(&project.join("binder/environment.yml")) & 0o111, 0);
}

#[test]
fn tar_gz_extracts_files_modes_and_inside_symlinks() {
    let sandbox = Sandbox::new();
    let done = sandbox
        .extract(&gzip(&tar(&project())), Format::TarGz, &Limits::default())
        .unwrap();
    assert_eq!((done.files, done.bytes), (2, 40));
    assert_project(&sandbox.target);
    assert_eq!(
        mode_of(&sandbox.target),
        0o700,
        "the target stays private until published"
    );
}

#[test]
fn tar_bz2_tar_xz_and_plain_tar_extract_the_same_tree() {
    for (bytes, format) in [
        (bzip2(&tar(&project())), Format::TarBz2),
        (xz(&tar(&project())), Format::TarXz),
        (tar(&project()), Format::Tar),
    ] {
        let sandbox = Sandbox::new();
        sandbox.extract(&bytes, format, &Limits::default()).unwrap();
        assert_project(&sandbox.target);
    }
}

#[test]
fn multi_member_gzip_is_read_to_the_end() {
    let stream = tar(&[file("a.txt", "a"), file("b.txt", "b")]);
    let (first, second) = stream.split_at(1024);
    let mut archive = gzip(first);
    archive.extend(gzip(second));
    let sandbox = Sandbox::new();
    sandbox
        .extract(&archive, Format::TarGz, &Limits::default())
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(sandbox.target.join("b.txt")).unwrap(),
        "b"
    );
}

#[test]
fn git_archive_global_header_is_skipped() {
    let mut stream = Vec::new();
    tar_member(
        &mut stream,
        &entry(
            EntryType::XGlobalHeader,
            "pax_global_header",
            "",
            0o666,
            "52 comment=0123\n",
        ),
    );
    tar_member(&mut stream, &file("repo/README.md", "# hi\n"));
    stream.resize(stream.len() + 1024, 0);
    let sandbox = Sandbox::new();
    sandbox
        .extract(&stream, Format::Tar, &Limits::default())
        .unwrap();
    assert!(sandbox.target.join("repo/README.md").is_file());
    assert!(!sandbox.target.join("pax_global_header").exists());
}

#[test]
fn zip_extracts_files_modes_directories_and_inside_symlinks() {
    let archive = deflated_zip(&[
        ("repo/", b"", 0o755),
        ("repo/run.sh", b"#!/bin/sh\n", 0o4755),
        ("repo/requirements.txt", b"numpy\n", 0o666),
    ]);
    let sandbox = Sandbox::new();
    let done = sandbox
        .extract(&archive, Format::Zip, &Limits::default())
        .unwrap();
    assert_eq!((done.files, done.bytes), (2, 16));
    let repo = sandbox.target.join("repo");
    assert_eq!(
        std::fs::read_to_string(repo.join("requirements.txt")).unwrap(),
        "numpy\n"
    );
    assert_eq!(
        mode_of(&repo.join("run.sh")) & 0o4111,
        0o111,
        "setuid dropped, execute kept"
    );
    assert_eq!(mode_of(&repo.join("requirements.txt")) & 0o022, 0);

    let linked = raw_zip(&[
        zip_file("data/x.csv", "1,2\n"),
        zip_symlink("latest.csv", "data/x.csv"),
    ]);
    let sandbox = Sandbox::new();
    sandbox
        .extract(&linked, Format::Zip, &Limits::default())
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(sandbox.target.join("latest.csv")).unwrap(),
        "1,2\n"
    );
}

#[test]
fn zip_made_on_windows_with_backslashes_extracts_into_directories() {
    let sandbox = Sandbox::new();
    let archive = raw_zip(&[ZipEntry {
        name: b"repo\\binder\\runtime.txt".to_vec(),
        data: b"python-3.11".to_vec(),
        mode: None,
    }]);
    sandbox
        .extract(&archive, Format::Zip, &Limits::default())
        .unwrap();
    assert!(sandbox.target.join("repo/binder/runtime.txt").is_file());
}

#[test]
fn existing_target_is_refused_and_left_alone() {
    let sandbox = Sandbox::new();
    std::fs::create_dir(&sandbox.target).unwrap();
    std::fs::write(sandbox.target.join("mine"), "keep").unwrap();
    let error = sandbox
        .extract(&tar(&[file("a", "a")]), Format::Tar, &Limits::default())
        .unwrap_err();
    assert!(
        matches!(error, ArchiveError::TargetExists { .. }),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(sandbox.target.join("mine")).unwrap(),
        "keep"
    );
}

#[test]
fn format_detection_needs_the_name_and_the_bytes_to_agree() {
    let sandbox = Sandbox::new();
    let zip = sandbox.write_archive("code.zip", &raw_zip(&[zip_file("a", "a")]));
    let tgz = sandbox.write_archive("code.tgz", &gzip(&tar(&[file("a", "a")])));
    let plain = sandbox.write_archive("code.tar", &tar(&[file("a", "a")]));
    let csv = sandbox.write_archive("data.csv.gz", &gzip(b"1,2\n"));
    let fake = sandbox.write_archive("page.zip", b"<html>not found</html>");
    assert_eq!(Format::detect(&zip).unwrap(), Some(Format::Zip));
    assert_eq!(Format::detect(&tgz).unwrap(), Some(Format::TarGz));
    assert_eq!(Format::detect(&plain).unwrap(), Some(Format::Tar));
    assert_eq!(Format::detect(&csv).unwrap(), None);
    assert_eq!(Format::detect(&fake).unwrap(), None);
}

// ---- a record that is one archive ---------------------------------------------------------

fn record_with(name: &str, bytes: &[u8]) -> tempfile::TempDir {
    let record = tempfile::tempdir().unwrap();
    std::fs::write(record.path().join(name), bytes).unwrap();
    record
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn single_archive_with_one_top_directory_becomes_the_record() {
    let record = record_with(
        "repo-v1.0.zip",
        &raw_zip(&[
            zip_file("repo-v1.0/environment.yml", "x"),
            zip_file("repo-v1.0/src/a.py", ""),
        ]),
    );
    assert!(archive::unpack_single_archive(record.path(), &Limits::default()).unwrap());
    assert_eq!(listing(record.path()), ["environment.yml", "src"]);
}

#[test]
fn single_archive_with_several_top_entries_is_unpacked_as_is() {
    let record = record_with(
        "code.tar.gz",
        &gzip(&tar(&[file("environment.yml", "x"), file("src/a.py", "")])),
    );
    assert!(archive::unpack_single_archive(record.path(), &Limits::default()).unwrap());
    assert_eq!(listing(record.path()), ["environment.yml", "src"]);
}

#[test]
fn single_archive_holding_only_a_file_is_unpacked_without_flattening() {
    let record = record_with("one.tar", &tar(&[file("requirements.txt", "numpy")]));
    assert!(archive::unpack_single_archive(record.path(), &Limits::default()).unwrap());
    assert_eq!(listing(record.path()), ["requirements.txt"]);
}

#[test]
fn records_that_are_not_a_single_archive_are_left_alone() {
    let data = record_with("data.csv.gz", &gzip(b"1,2\n"));
    assert!(!archive::unpack_single_archive(data.path(), &Limits::default()).unwrap());
    assert_eq!(listing(data.path()), ["data.csv.gz"]);

    let two = record_with("a.zip", &raw_zip(&[zip_file("a", "a")]));
    std::fs::write(two.path().join("README.md"), "hi").unwrap();
    assert!(!archive::unpack_single_archive(two.path(), &Limits::default()).unwrap());
    assert_eq!(listing(two.path()), ["README.md", "a.zip"]);
}

#[test]
fn single_hostile_archive_is_refused_and_the_record_kept_as_downloaded() {
    let record = record_with("code.zip", &raw_zip(&[zip_file("../pwned", "x")]));
    let error = archive::unpack_single_archive(record.path(), &Limits::default()).unwrap_err();
    assert!(error.to_string().contains("`..` in the path"), "{error}");
    assert_eq!(listing(record.path()), ["code.zip"]);
    assert!(!record.path().parent().unwrap().join("pwned").exists());
}
