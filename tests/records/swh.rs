//! Software Heritage SWHIDs against a loopback server that answers like its Web API
//! (tests/common/records.rs): a revision (`/api/1/revision/<hash>/` with its `directory`),
//! the vault endpoint repo2docker uses (`POST`, then `GET`, `/api/1/vault/directory/<hash>/`
//! answering `status` new/pending/done/failed, `progress_message` and `fetch_url`), and the
//! bundle at that `fetch_url` (`/api/1/vault/flat/swh:1:dir:<hash>/raw/`): a tar.gz of the
//! folder `swh:1:dir:<hash>/` as today's vault cooks it. Each directory is a real folder whose
//! id real `git` computes (`git add -A`, `git write-tree`), independently of hpcbinder.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::records::{Answer, RecordServer};
use crate::common::{self, Sandbox};

/// A directory as Software Heritage archives it: its files in a folder, and its id.
struct Directory {
    folder: PathBuf,
    hash: String,
    _temp: tempfile::TempDir,
}

impl Directory {
    /// A repository needing `requirements`: a notebook, an executable script, a symbolic
    /// link and a subfolder; its id from real git.
    fn new(requirements: &str) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let folder = temp.path().join("tree");
        let write = |path: &str, text: &str| {
            let path = folder.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("requirements.txt", requirements);
        write(
            "index.ipynb",
            r#"{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}"#,
        );
        write("scripts/run.sh", "#!/bin/sh\necho hello\n");
        let script = folder.join("scripts/run.sh");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        write("notebooks/data/values.csv", "x,y\n1,2\n");
        std::os::unix::fs::symlink("../index.ipynb", folder.join("notebooks/index.ipynb")).unwrap();
        let hash = git_tree_id(&folder, &temp.path().join("git"));
        Self {
            folder,
            hash,
            _temp: temp,
        }
    }

    fn swhid(&self) -> String {
        format!("swh:1:dir:{}", self.hash)
    }

    /// The vault's bundle: a tar.gz of the folder named `root` (modes and links kept).
    fn bundle(&self, root: &str) -> Vec<u8> {
        let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut tar = tar::Builder::new(encoder);
        tar.follow_symlinks(false);
        tar.append_dir_all(root, &self.folder).unwrap();
        tar.into_inner().unwrap().finish().unwrap()
    }
}

/// `git write-tree` of `folder` after `git add -A`, the repository kept in `git_dir`.
fn git_tree_id(folder: &Path, git_dir: &Path) -> String {
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .arg(format!("--git-dir={}", git_dir.display()))
            .arg(format!("--work-tree={}", folder.display()))
            .args(args)
            .output()
            .expect("run git");
        assert!(output.status.success(), "git {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["write-tree"])
}

fn vault_path(hash: &str) -> String {
    format!("/api/1/vault/directory/{hash}/")
}

fn raw_path(hash: &str) -> String {
    format!("/api/1/vault/flat/swh:1:dir:{hash}/raw/")
}

/// What the vault endpoint answers: its cooking task for `hash` in `status`.
fn vault_answer(server: &RecordServer, hash: &str, status: &str, progress: Option<&str>) -> Answer {
    Answer::json(&serde_json::json!({
        "fetch_url": format!("{}{}", server.base(), raw_path(hash)),
        "progress_message": progress,
        "id": 417,
        "status": status,
        "swhid": format!("swh:1:dir:{hash}"),
        "obj_type": "directory",
        "obj_id": hash,
    }))
}

/// The vault answers `statuses` in turn (the first to the POST), then serves `bundle`.
fn publish(server: &RecordServer, hash: &str, statuses: &[&str], bundle: Vec<u8>) {
    let answers = statuses
        .iter()
        .map(|status| vault_answer(server, hash, status, None))
        .collect();
    server.answers(&vault_path(hash), answers);
    server.route(&raw_path(hash), "application/gzip", bundle);
}

/// Revision `revision` of `directory`, as `/api/1/revision/` describes one.
fn publish_revision(server: &RecordServer, revision: &str, directory: &str) {
    server.route(
        &format!("/api/1/revision/{revision}/"),
        "application/json",
        serde_json::json!({
            "id": revision,
            "directory": directory,
            "author": {"fullname": "Jane Doe <jane@example.org>"},
            "message": "binder demo",
            "type": "git",
            "parents": [],
            "directory_url": format!("{}/api/1/directory/{directory}/", server.base()),
        })
        .to_string()
        .into_bytes(),
    );
}

/// What the user's cache keeps of Software Heritage records, and the store's environments.
fn kept(sandbox: &Sandbox) -> Vec<String> {
    let mut kept: Vec<String> = super::names_in(&super::user_cache(sandbox, "records"))
        .into_iter()
        .filter(|n| n.starts_with("swh-"))
        .collect();
    kept.extend(super::names_in(&sandbox.store().join("e")));
    kept
}

const REVISION: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";

#[test]
fn a_swh_directory_from_a_loopback_vault_waits_while_it_cooks_and_builds_a_venv_whose_kernel_answers(
) {
    let directory = Directory::new("six==1.16.0\n");
    let hash = &directory.hash;
    let server = RecordServer::start();
    // Cooking was already requested: pending for two polls, then done.
    publish(
        &server,
        hash,
        &["pending", "pending", "done"],
        directory.bundle(&directory.swhid()),
    );
    let sandbox = super::sandbox(&server);
    let spec = directory.swhid();
    let out = sandbox.ok(&["build", "--json", &spec]);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let waiting = format!("The Software Heritage vault is preparing {spec}; asking again in");
    let waits = events
        .iter()
        .filter(|e| e["phase"] == "waiting" && e["message"].as_str().unwrap().contains(&waiting))
        .count();
    assert_eq!(waits, 2, "{out}");
    assert_eq!(events.last().unwrap()["phase"], "ready", "{out}");
    assert_eq!(server.hits(&vault_path(hash)), 3);
    assert_eq!(server.hits(&raw_path(hash)), 1);
    let detected = sandbox.ok(&["detect", &spec]);
    assert!(detected.contains("requirements.txt"), "{detected}");
    // The folder's contents are the tree, with the executable bit and the link.
    let tree = super::record_tree(&sandbox, &format!("swh-{hash}-"));
    let script = std::fs::metadata(tree.join("scripts/run.sh")).unwrap();
    assert_eq!(script.permissions().mode() & 0o111, 0o111);
    let link = tree.join("notebooks/index.ipynb");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("../index.ipynb")
    );
    assert!(std::fs::read_to_string(&link).unwrap().contains("nbformat"));
    assert!(!tree.join(format!("swh:1:dir:{hash}")).exists());
    let ready = super::build_with_six(&sandbox, &spec);
    let by_directory = sandbox.ok(&["build", "--dry-run", &spec]);
    assert!(
        by_directory.contains(&format!("/api/1/directory/{hash}/")),
        "{by_directory}"
    );
    // A revision of that directory is the same record and the same environment: nothing
    // is cooked or downloaded again.
    publish_revision(&server, REVISION, hash);
    let revision = format!("swh:1:rev:{REVISION}");
    let by_revision = sandbox.ok(&["build", "--dry-run", &revision]);
    assert_eq!(
        super::key_line(&by_directory),
        super::key_line(&by_revision)
    );
    let again = sandbox.build_ready(&[&revision]);
    assert_eq!(again["prefix"], ready["prefix"]);
    assert_eq!(server.hits(&format!("/api/1/revision/{REVISION}/")), 2);
    assert_eq!(server.hits(&vault_path(hash)), 3);
    assert_eq!(server.hits(&raw_path(hash)), 1);
}

#[test]
fn two_swh_directories_are_two_identities_and_an_older_vaults_bundle_layout_is_read() {
    let first = Directory::new("six==1.16.0\n");
    let second = Directory::new("six==1.16.0\n# the second directory\n");
    assert_ne!(first.hash, second.hash);
    let server = RecordServer::start();
    publish(
        &server,
        &first.hash,
        &["done"],
        first.bundle(&first.swhid()),
    );
    // Older vaults (and repo2docker's tests) name the bundle's folder by the bare hash; the
    // API may redirect the download to the vault's storage, another loopback server here.
    let storage = RecordServer::start();
    let stored = format!("/vault-cache/flat/{}.tar.gz", second.hash);
    storage.route(&stored, "application/gzip", second.bundle(&second.hash));
    server.answers(
        &vault_path(&second.hash),
        vec![
            vault_answer(&server, &second.hash, "new", Some("Processing...")),
            vault_answer(&server, &second.hash, "done", None),
        ],
    );
    server.answers(
        &raw_path(&second.hash),
        vec![Answer::redirect(&format!("{}{stored}", storage.base()))],
    );
    let sandbox = super::sandbox(&server);
    let one = sandbox.ok(&["build", "--dry-run", &first.swhid()]);
    let output = sandbox.run(&["build", "--dry-run", &second.swhid()]);
    let (two, stderr) = (common::stdout(&output), common::stderr(&output));
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "The Software Heritage vault is preparing {} (Processing...); asking again in 1 s",
            second.swhid()
        )),
        "{stderr}"
    );
    assert_eq!(storage.hits(&stored), 1);
    assert!(
        one.contains(&format!("/directory/{}/", first.hash)),
        "{one}"
    );
    assert!(
        two.contains(&format!("/directory/{}/", second.hash)),
        "{two}"
    );
    assert_ne!(super::key_line(&one), super::key_line(&two));
    let tree = super::record_tree(&sandbox, &format!("swh-{}-", second.hash));
    let requirements = std::fs::read_to_string(tree.join("requirements.txt")).unwrap();
    assert!(
        requirements.contains("# the second directory"),
        "{requirements}"
    );
}

#[test]
fn a_tampered_swh_bundle_is_a_checksum_error_naming_the_swhid_and_nothing_is_kept() {
    let directory = Directory::new("six==1.16.0\n");
    let hash = &directory.hash;
    let spec = directory.swhid();
    // The bundle's requirements.txt is not the archived one.
    std::fs::write(directory.folder.join("requirements.txt"), "evil==6.6.6\n").unwrap();
    let server = RecordServer::start();
    publish(&server, hash, &["done"], directory.bundle(&spec));
    let sandbox = super::sandbox(&server);
    let output = sandbox.run(&["build", &spec]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{spec} does not match its published checksum ({spec}; downloaded swh:1:dir:"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: the download was damaged"),
        "{stderr}"
    );
    assert!(kept(&sandbox).is_empty(), "{:?}", kept(&sandbox));
    // A bundle whose folder is another directory's is refused before anything is hashed.
    let other = Directory::new("six==1.16.0\n");
    publish(
        &server,
        hash,
        &["done"],
        other.bundle("swh:1:dir:0000000000000000000000000000000000000000"),
    );
    let output = sandbox.run(&["build", &spec]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the bundle of {spec} holds swh:1:dir:0000000000000000000000000000000000000000 instead of one folder {spec}/"
        )),
        "{stderr}"
    );
    assert!(kept(&sandbox).is_empty(), "{:?}", kept(&sandbox));
}

#[test]
fn a_failed_cooking_an_unknown_revision_and_software_heritage_down_are_clear_errors() {
    let directory = Directory::new("six==1.16.0\n");
    let hash = &directory.hash;
    let spec = directory.swhid();
    let server = RecordServer::start();
    server.answers(
        &vault_path(hash),
        vec![
            vault_answer(&server, hash, "new", None),
            vault_answer(
                &server,
                hash,
                "failed",
                Some("Internal Server Error: object too large"),
            ),
        ],
    );
    let sandbox = super::sandbox(&server);
    let output = sandbox.run(&["build", &spec]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Software Heritage: the vault could not prepare {spec}: Internal Server Error: object too large"
        )),
        "{stderr}"
    );
    assert_eq!(server.hits(&raw_path(hash)), 0);
    assert!(kept(&sandbox).is_empty(), "{:?}", kept(&sandbox));
    // A revision Software Heritage does not have: the user's SWHID is wrong.
    let output = sandbox.run(&["build", &format!("swh:1:rev:{REVISION}")]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("Software Heritage has no revision {REVISION}")),
        "{stderr}"
    );
    // Software Heritage down: retried, then a clear error naming it.
    server.set_down(true);
    let output = sandbox.run(&["build", &spec]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("Software Heritage did not answer"),
        "{stderr}"
    );
    assert!(stderr.contains("HTTP 503"), "{stderr}");
    assert_eq!(server.hits(&vault_path(hash)), 2 + 4);
}

/// A loopback API that answers every request 404 and keeps each request's
/// `Authorization` header (or `-` without one).
fn recording_api() -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut authorization = "-".to_string();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("authorization") {
                        authorization = value.trim().to_string();
                    }
                }
            }
            let _ = sender.send(authorization);
            let body = r#"{"exception":"NotFoundExc","reason":"Revision not found."}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (base, receiver)
}

#[test]
fn the_token_in_swh_token_is_sent_as_a_bearer_token_and_never_shown() {
    let (base, requests) = recording_api();
    let sandbox = Sandbox::new();
    sandbox.native_site_config(&format!(
        "[records]\nsoftware-heritage = \"{base}/api/1\"\n"
    ));
    let spec = format!("swh:1:rev:{REVISION}");
    let token = "loopback-swh-token-5ecret";
    let output = sandbox
        .command()
        .env("SWH_TOKEN", token)
        .args(["build", &spec])
        .output()
        .unwrap();
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Software Heritage has no revision"),
        "{stderr}"
    );
    assert!(!stderr.contains(token), "{stderr}");
    assert!(!common::stdout(&output).contains(token));
    assert_eq!(requests.try_recv().unwrap(), format!("Bearer {token}"));
    // Without it, no Authorization header at all.
    let output = sandbox.run(&["build", &spec]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(requests.try_recv().unwrap(), "-");
    assert!(requests.try_recv().is_err());
}
