//! Software Heritage: a directory (`swh:1:dir:<hash>`), or a revision's
//! (`swh:1:rev:<hash>`, through `<api>/revision/<hash>/`), cooked by the vault and
//! verified against its own hash.
//!
//! As repo2docker does: `POST <api>/vault/directory/<hash>/` asks the vault to cook the
//! directory (the endpoint repo2docker uses; Software Heritage's docs now call it
//! deprecated in favour of `/vault/flat/<swhid>/`, which answers the same), `GET` on it
//! says how the cooking goes (`status`: `new`, `pending`, `done` or `failed`, with a
//! `progress_message`), and `fetch_url` is the bundle: a tar.gz of one folder, named
//! `swh:1:dir:<hash>` by today's vault and `<hash>` by older ones and repo2docker's tests.
//! A directory's hash is git's tree id of it, so the unpacked folder is hashed the same way
//! and must give the hash asked for: nothing else vouches for the bundle (so a directory
//! holding a submodule, which the vault cooks as an empty folder, or contents Software
//! Heritage did not archive, which it replaces by a notice, is refused). The API limits
//! anonymous requests; a token in `SWH_TOKEN` is sent as a bearer token to the API (the
//! bundle's download, one request that may redirect to the vault's storage, goes
//! without it).

use std::ffi::OsString;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha1::{Digest as _, Sha1};

use super::{record_error, same_origin, Layout, RecordFile, Resolved};
use crate::events::{Phase, Reporter, ReporterExt};
use crate::http::{self, HttpError};
use crate::settings::Settings;
use crate::source::archive::{self, Format};
use crate::source::SourceError;

const PROVIDER: &str = "Software Heritage";

const API_TIMEOUT: Duration = Duration::from_secs(60);

/// Links followed while checking where one symlink leads (Linux `MAXSYMLINKS`).
const MAX_LINKS: u32 = 40;

/// Whether `text` is a SHA-1 as SWHIDs write it (40 lowercase hex digits).
fn is_hash(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The directory `swhid` names, with the vault endpoint that cooks it. Metadata only:
/// a revision is looked up, nothing is downloaded.
pub(super) fn record(
    settings: &Settings,
    swhid: &str,
    reporter: &dyn Reporter,
) -> Result<Resolved, SourceError> {
    let api = settings.records.software_heritage();
    let directory = match swhid.split(':').collect::<Vec<_>>().as_slice() {
        ["swh", "1", "dir", hash] if is_hash(hash) => hash.to_string(),
        ["swh", "1", "rev", hash] if is_hash(hash) => {
            reporter.phase(
                Phase::Fetching,
                format!("Fetching Software Heritage revision {hash}"),
            );
            let url = format!("{api}/revision/{hash}/");
            let revision = api_json(settings, &url, false, &format!("no revision {hash}"))?;
            revision["directory"]
                .as_str()
                .filter(|d| is_hash(d))
                .map(str::to_string)
                .ok_or_else(|| {
                    record_error(
                        PROVIDER,
                        format!("revision {hash} names no directory (a 40-digit hex `directory`)"),
                    )
                })?
        }
        _ => {
            return Err(record_error(
                PROVIDER,
                format!("`{swhid}` is not a directory or revision SWHID"),
            ))
        }
    };
    Ok(Resolved {
        provider: "swh",
        id: directory.clone(),
        page: format!("{api}/directory/{directory}/"),
        files: vec![RecordFile {
            path: format!("{directory}.tar.gz"),
            checksum: None,
            size: None,
            url: format!("{api}/vault/directory/{directory}/"),
        }],
        layout: Layout::SwhDirectory { hash: directory },
    })
}

/// Have the vault cook directory `hash` (waiting while it does), download its bundle into
/// `temp`, and unpack it into `root`, verified against the directory's hash.
pub(super) fn fetch_bundle(
    resolved: &Resolved,
    hash: &str,
    temp: &Path,
    root: &Path,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> Result<(), SourceError> {
    let swhid = format!("swh:1:dir:{hash}");
    let vault = resolved
        .files
        .first()
        .ok_or_else(|| record_error(PROVIDER, format!("{swhid} names no vault bundle")))?;
    let fetch_url = cook(settings, &vault.url, &swhid, reporter)?;
    let bundle = RecordFile {
        url: fetch_url,
        ..vault.clone()
    };
    let tarball = temp.join(&bundle.path);
    super::fetch::download_verified(settings, &bundle, &tarball, reporter).map_err(
        |e| match e {
            SourceError::Record { message, .. } => {
                record_error(PROVIDER, format!("the bundle of {swhid}: {message}"))
            }
            other => other,
        },
    )?;
    reporter.phase(
        Phase::Fetching,
        format!("Checking the bundle of {swhid} against its hash"),
    );
    let scratch = temp.join("bundle");
    archive::extract(
        &tarball,
        Format::TarGz,
        &scratch,
        &super::fetch::limits(settings),
    )
    .map_err(|e| record_error(PROVIDER, format!("the bundle of {swhid}: {e}")))?;
    let top = bundle_folder(&scratch, hash)?;
    let found = directory_id(&top)?;
    if found != hash {
        return Err(SourceError::Checksum {
            file: swhid.clone(),
            expected: swhid,
            found: format!("swh:1:dir:{found}"),
        });
    }
    check_links(&top, &swhid)?;
    for entry in fs_err::read_dir(&top)? {
        let entry = entry?;
        fs_err::rename(entry.path(), root.join(entry.file_name()))?;
    }
    fs_err::remove_dir_all(&scratch)?;
    fs_err::remove_file(&tarball)?;
    Ok(())
}

/// Ask the vault to cook `swhid` at `vault`, then ask again (1 s, 2 s, 4 s ... at most
/// 10 s apart) while it does, for at most `[records] prepare-timeout`. The bundle's URL.
fn cook(
    settings: &Settings,
    vault: &str,
    swhid: &str,
    reporter: &dyn Reporter,
) -> Result<String, SourceError> {
    reporter.phase(
        Phase::Fetching,
        format!("Asking the Software Heritage vault for {swhid}"),
    );
    let missing = format!("no directory {}", swhid.trim_start_matches("swh:1:dir:"));
    let mut patience = super::fetch::Patience::new(settings);
    let mut answer = api_json(settings, vault, true, &missing)?;
    loop {
        let progress = answer["progress_message"]
            .as_str()
            .map(str::trim)
            .filter(|m| !m.is_empty());
        match answer["status"].as_str() {
            Some("done") => return bundle_url(&answer, vault, settings, swhid),
            Some("failed") => {
                return Err(record_error(
                    PROVIDER,
                    format!(
                        "the vault could not prepare {swhid}: {}",
                        progress.unwrap_or("it gave no reason")
                    ),
                ))
            }
            Some("new" | "pending") => {}
            other => {
                return Err(record_error(
                    PROVIDER,
                    format!(
                        "the vault's answer about {swhid} has {} instead of new, pending, done or failed",
                        other.map_or_else(|| "no status".to_string(), |s| format!("the status `{s}`"))
                    ),
                ))
            }
        }
        patience
            .wait(reporter, |seconds| {
                format!(
                    "The Software Heritage vault is preparing {swhid}{}; asking again in {seconds} s",
                    progress
                        .map(|p| format!(" ({})", crate::printer::sanitize_line(p)))
                        .unwrap_or_default(),
                )
            })
            .map_err(|timeout| {
                record_error(
                    PROVIDER,
                    format!(
                        "the vault had not prepared {swhid} after {timeout} s ([records] prepare-timeout); it is still cooking it, try again later"
                    ),
                )
            })?;
        answer = api_json(settings, vault, false, &missing)?;
    }
}

/// The `fetch_url` of a cooked bundle (absolute, or relative to the vault endpoint as
/// older APIs wrote it), which must be on the API's own host.
fn bundle_url(
    answer: &Value,
    vault: &str,
    settings: &Settings,
    swhid: &str,
) -> Result<String, SourceError> {
    let api = settings.records.software_heritage();
    let named = answer["fetch_url"].as_str().unwrap_or_default();
    let url = url::Url::parse(vault)
        .and_then(|base| base.join(named))
        .map(String::from)
        .ok()
        .filter(|_| !named.is_empty())
        .ok_or_else(|| {
            record_error(
                PROVIDER,
                format!("the vault says {swhid} is ready but names no fetch_url"),
            )
        })?;
    if !same_origin(&url, api) {
        return Err(record_error(
            PROVIDER,
            format!(
                "the bundle of {swhid} is at {}, not on {api}",
                crate::source::redact(&url)
            ),
        ));
    }
    Ok(url)
}

/// GET (or POST) `url` of the API as JSON, with retries and the token in `SWH_TOKEN`;
/// a 404 says Software Heritage has `missing`.
fn api_json(
    settings: &Settings,
    url: &str,
    post: bool,
    missing: &str,
) -> Result<Value, SourceError> {
    let token = crate::variables::get(crate::variables::SWH_TOKEN);
    let token = token.as_deref();
    let json = Some("application/json");
    let response = http::retry(
        || {
            let method = if post {
                reqwest::Method::POST
            } else {
                reqwest::Method::GET
            };
            http::send(settings, method, url, json, API_TIMEOUT, token)
        },
        HttpError::is_transient,
    )
    .map_err(|e| match e {
        HttpError::Status { status: 404, .. } => record_error(
            PROVIDER,
            format!("Software Heritage has {missing} ({url} was not found, HTTP 404)"),
        ),
        HttpError::Status {
            status: status @ (401 | 403),
            ..
        } if token.is_some() => record_error(
            PROVIDER,
            format!("Software Heritage refused the token in SWH_TOKEN (HTTP {status} from {url})"),
        ),
        HttpError::Status { status: 429, .. } => record_error(
            PROVIDER,
            format!(
                "Software Heritage refused more requests for now (HTTP 429 from {url}: rate limited){}",
                if token.is_none() {
                    "; an API token in SWH_TOKEN raises the limit"
                } else {
                    ""
                }
            ),
        ),
        other => record_error(PROVIDER, format!("Software Heritage did not answer: {other}")),
    })?;
    serde_json::from_slice(&response.body).map_err(|e| {
        record_error(
            PROVIDER,
            format!("{url} is not the JSON Software Heritage sends: {e}"),
        )
    })
}

/// The one folder the bundle holds: `swh:1:dir:<hash>` (today's vault) or `<hash>`.
fn bundle_folder(scratch: &Path, hash: &str) -> Result<PathBuf, SourceError> {
    let names: Vec<OsString> = fs_err::read_dir(scratch)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    let expected = [format!("swh:1:dir:{hash}"), hash.to_string()];
    match names.as_slice() {
        [only] if expected.iter().any(|e| only.as_bytes() == e.as_bytes()) => {
            let top = scratch.join(only);
            if fs_err::symlink_metadata(&top)?.is_dir() {
                return Ok(top);
            }
        }
        _ => {}
    }
    let mut shown: Vec<String> = names
        .iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    shown.sort();
    Err(record_error(
        PROVIDER,
        format!(
            "the bundle of swh:1:dir:{hash} holds {} instead of one folder swh:1:dir:{hash}/",
            if shown.is_empty() {
                "nothing".to_string()
            } else {
                shown.join(", ")
            }
        ),
    ))
}

/// The Software Heritage id of the directory at `dir`, which is git's tree id: SHA-1 of
/// `tree <length>\0` and the entries `<mode> <name>\0<20-byte id>`, sorted by name as git
/// sorts them (a directory as if its name ended in `/`). Files are blobs (`blob
/// <length>\0<bytes>`) of mode 100755 when executable and 100644 otherwise, symbolic links
/// blobs of their target (120000), directories trees (40000; an empty one is the empty
/// tree, which Software Heritage keeps and git does not).
fn directory_id(dir: &Path) -> Result<String, SourceError> {
    tree_id(dir).map(hex::encode)
}

/// One entry of a tree object.
struct TreeEntry {
    name: Vec<u8>,
    mode: &'static str,
    id: [u8; 20],
}

impl TreeEntry {
    /// git's order: by name, a directory's as if it ended in `/`.
    fn sort_key(&self) -> Vec<u8> {
        let mut key = self.name.clone();
        if self.mode == "40000" {
            key.push(b'/');
        }
        key
    }
}

fn tree_id(dir: &Path) -> Result<[u8; 20], SourceError> {
    let mut entries = Vec::new();
    for entry in fs_err::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        let metadata = fs_err::symlink_metadata(&path)?;
        let kind = metadata.file_type();
        let (mode, id) = if kind.is_symlink() {
            let target = fs_err::read_link(&path)?;
            ("120000", blob_id(target.as_os_str().as_bytes()))
        } else if kind.is_dir() {
            ("40000", tree_id(&path)?)
        } else if kind.is_file() {
            let executable = metadata.permissions().mode() & 0o111 != 0;
            let mode = if executable { "100755" } else { "100644" };
            (mode, file_blob_id(&path, metadata.len())?)
        } else {
            return Err(record_error(
                PROVIDER,
                format!("{} is not a file, folder or symbolic link", path.display()),
            ));
        };
        entries.push(TreeEntry { name, mode, id });
    }
    entries.sort_by_cached_key(TreeEntry::sort_key);
    let mut body = Vec::new();
    for entry in &entries {
        body.extend_from_slice(entry.mode.as_bytes());
        body.push(b' ');
        body.extend_from_slice(&entry.name);
        body.push(0);
        body.extend_from_slice(&entry.id);
    }
    let mut hasher = Sha1::new();
    hasher.update(format!("tree {}\0", body.len()).as_bytes());
    hasher.update(&body);
    Ok(hasher.finalize().into())
}

fn blob_id(bytes: &[u8]) -> [u8; 20] {
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
    hasher.update(bytes);
    hasher.finalize().into()
}

/// The blob id of the file at `path` of `length` bytes, read in pieces.
fn file_blob_id(path: &Path, length: u64) -> Result<[u8; 20], SourceError> {
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {length}\0").as_bytes());
    let mut file = fs_err::File::open(path)?;
    let mut buffer = vec![0u8; 64 << 10];
    let mut read_total = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        read_total += read as u64;
        hasher.update(&buffer[..read]);
    }
    if read_total != length {
        return Err(SourceError::Io(std::io::Error::other(format!(
            "{} changed while it was being hashed",
            path.display()
        ))));
    }
    Ok(hasher.finalize().into())
}

/// Every symbolic link under `top` must lead inside it (following other links): the
/// extractor kept them inside the bundle, and its folder becomes the tree.
fn check_links(top: &Path, swhid: &str) -> Result<(), SourceError> {
    for entry in walkdir::WalkDir::new(top).follow_links(false) {
        let entry = entry.map_err(|e| SourceError::Io(std::io::Error::other(e)))?;
        if !entry.file_type().is_symlink() {
            continue;
        }
        let relative = entry.path().strip_prefix(top).unwrap_or(entry.path());
        let mut from: Vec<OsString> = relative
            .components()
            .map(|c| c.as_os_str().to_owned())
            .collect();
        from.pop();
        let target = fs_err::read_link(entry.path())?;
        let mut budget = MAX_LINKS;
        if resolve(top, from, &target, &mut budget).is_none() {
            return Err(record_error(
                PROVIDER,
                format!(
                    "{swhid} holds a symbolic link {} to `{}`, which leads outside the directory; hpcbinder builds no tree with such links",
                    relative.display(),
                    target.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Where `target`, read in folder `at` (names under `top`), leads, following the links it
/// meets; `None` when it leaves `top` (or loops). A name that does not exist is passed
/// through as a name, so `..` after it still counts.
fn resolve(
    top: &Path,
    mut at: Vec<OsString>,
    target: &Path,
    budget: &mut u32,
) -> Option<Vec<OsString>> {
    for component in target.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                at.pop()?;
            }
            Component::Normal(name) => {
                at.push(name.to_owned());
                let path = at.iter().fold(top.to_path_buf(), |p, n| p.join(n));
                let is_link =
                    std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
                if is_link {
                    *budget = budget.checked_sub(1)?;
                    let next = std::fs::read_link(&path).ok()?;
                    at.pop();
                    at = resolve(top, at, &next, budget)?;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        fs_err::create_dir_all(path.parent().unwrap()).unwrap();
        fs_err::write(path, text).unwrap();
    }

    #[test]
    fn directory_ids_are_git_tree_ids() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("d");
        fs_err::create_dir(&dir).unwrap();
        // git's empty tree.
        assert_eq!(
            directory_id(&dir).unwrap(),
            "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
        );
        // The folder of repo2docker's test (`git add -A && git write-tree` of it; the id
        // that test names, 89a3bd29..., is not this folder's, and repo2docker never checks).
        write(&dir.join("file1.txt"), "Some content\n");
        assert_eq!(
            directory_id(&dir).unwrap(),
            "eebebda70eb0c2b8e4e576e2d2610e58b9c46a5d"
        );
    }

    #[test]
    fn entries_sort_modes_and_links_agree_with_libgit2() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("d");
        // `a` a folder sorts after `a.b` (as `a/`); `b` a file sorts before `b.c`.
        write(&dir.join("a/x"), "x\n");
        write(&dir.join("a.b"), "ab\n");
        write(&dir.join("b"), "b\n");
        write(&dir.join("b.c"), "bc\n");
        write(&dir.join("run.sh"), "#!/bin/sh\n");
        fs_err::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("a.b", dir.join("link")).unwrap();
        // Before libgit2 writes its `.git` link file into the folder.
        let ours = directory_id(&dir).unwrap();
        // libgit2's tree of the same folder, its repository kept outside it.
        let mut options = git2::RepositoryInitOptions::new();
        options.workdir_path(&dir);
        let repository =
            git2::Repository::init_opts(temp.path().join("repo.git"), &options).unwrap();
        let mut index = repository.index().unwrap();
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        let tree = repository.find_tree(index.write_tree().unwrap()).unwrap();
        assert_eq!(tree.len(), 6);
        assert_eq!(
            tree.get_name("run.sh").unwrap().filemode(),
            0o100755,
            "libgit2 saw the executable bit"
        );
        assert_eq!(tree.get_name("link").unwrap().filemode(), 0o120000);
        assert_eq!(ours, tree.id().to_string());
        // An empty folder, which git cannot hold: the entry `40000 e` of the empty tree.
        let only_empty = temp.path().join("only-empty");
        fs_err::create_dir_all(only_empty.join("e")).unwrap();
        let mut body = b"40000 e\0".to_vec();
        body.extend_from_slice(&hex::decode("4b825dc642cb6eb9a060e54bf8d69288fbee4904").unwrap());
        let mut hasher = Sha1::new();
        hasher.update(format!("tree {}\0", body.len()).as_bytes());
        hasher.update(&body);
        assert_eq!(
            directory_id(&only_empty).unwrap(),
            hex::encode(hasher.finalize())
        );
        // git's blob id of "x\n" (`git hash-object`).
        assert_eq!(
            hex::encode(blob_id(b"x\n")),
            "587be6b4c3f93f93c489c0111bba5596147a26cb"
        );
    }

    #[test]
    fn links_must_stay_inside_the_directory() {
        let temp = tempfile::tempdir().unwrap();
        let top = temp.path().join("top");
        write(&top.join("d/file"), "x");
        let link = |target: &str, at: &str| {
            std::os::unix::fs::symlink(target, top.join(at)).unwrap();
        };
        link("file", "d/ok");
        link("d/missing", "dangling");
        link("..", "d/up");
        let inside = |from: &[&str], target: &str| {
            let from = from.iter().map(OsString::from).collect();
            resolve(&top, from, Path::new(target), &mut 40).is_some()
        };
        assert!(inside(&["d"], "file"));
        assert!(inside(&[], "d/up/d/file"));
        assert!(inside(&[], "d/missing/../file"));
        assert!(!inside(&[], "../x"));
        assert!(!inside(&[], "d/up/.."));
        assert!(!inside(&[], "/etc/passwd"));
        check_links(&top, "swh:1:dir:x").unwrap();
        link("d/up/../top", "escape");
        let error = check_links(&top, "swh:1:dir:x").unwrap_err().to_string();
        assert!(
            error.contains("symbolic link escape to `d/up/../top`"),
            "{error}"
        );
        assert!(is_hash("4b825dc642cb6eb9a060e54bf8d69288fbee4904"));
        assert!(!is_hash("4B825DC642CB6EB9A060E54BF8D69288FBEE4904"));
    }
}
