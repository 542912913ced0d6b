//! Remote git repositories: a cached clone per origin, fetched on reuse, checked out at the
//! resolved commit with submodules.
//!
//! Network steps (ls-remote, fetch, submodules) run the `git` command, so the user's own
//! credential helpers, proxies and ssh configuration apply and no credential is ever
//! written by us; everything local (opening, resolving, checking out) is libgit2,
//! built without TLS: initialising OpenSSL parses the CA bundle, ~30 ms that every
//! command on a local work tree would otherwise pay.
//!
//! The cache lives at `<cache>/git/<first 16 hex of sha256(url)>/` and is locked (an OS file
//! lock next to it) for as long as the checkout is in use, so two hpcbinder processes never
//! move the same work tree under each other.

use std::path::Path;
use std::process::{Command, Stdio};

use git2::{build::CheckoutBuilder, Oid, Repository};
use sha2::{Digest, Sha256};

use super::{redact, Checkout, Identity, SourceError};
use crate::events::{Phase, Reporter, ReporterExt};

const REFSPECS: &[&str] = &[
    "+refs/heads/*:refs/remotes/origin/*",
    "+refs/tags/*:refs/tags/*",
];

/// Clone or update the cache for `url`, resolve `reference`, check it out.
pub fn checkout(
    url: &str,
    reference: Option<&str>,
    slug: String,
    cache_dir: &Path,
    reporter: &dyn Reporter,
) -> Result<Checkout, SourceError> {
    let origin = redact(url);
    // Credentials in the URL are never written to disk (the clone's config is readable by
    // others): the clone knows the URL without them, and each fetch gets them from a
    // credential helper reading this process's environment.
    let (url, credentials) = split_credentials(url);
    let url = url.as_str();
    let digest = hex::encode(Sha256::digest(url.as_bytes()));
    let git_dir = cache_dir.join("git");
    fs_err::create_dir_all(&git_dir)?;
    let path = git_dir.join(&digest[..16]);
    let lock = fs_err::File::create(git_dir.join(format!("{}.lock", &digest[..16])))?;
    if lock.file().try_lock().is_err() {
        reporter.phase(
            Phase::Waiting,
            format!("Waiting for another hpcbinder using the clone of {origin}"),
        );
        lock.file().lock()?;
    }

    let repo = open_cached(&path, url)?;
    let wanted = reference.filter(|r| *r != "HEAD");
    // A full commit id that the cache already holds needs no network at all.
    let known = wanted
        .filter(|r| is_full_sha(r))
        .and_then(|r| Oid::from_str(r).ok())
        .filter(|oid| repo.find_commit(*oid).is_ok());
    let commit = match known {
        Some(oid) => oid,
        None => {
            let default_branch = fetch(&path, &origin, credentials.as_ref())?;
            resolve(
                &repo,
                &path,
                wanted,
                default_branch.as_deref(),
                &origin,
                credentials.as_ref(),
            )?
        }
    };
    reporter.phase(Phase::Fetching, format!("Checking out {commit}"));
    check_out(&repo, commit, &path)?;
    // Submodules from `file://` only when the repository itself is local: a remote
    // repository must not make us read this machine's files.
    update_submodules(
        &path,
        url.starts_with("file://"),
        &origin,
        credentials.as_ref(),
    )?;
    Ok(Checkout {
        root: path,
        identity: Identity {
            kind: "git",
            origin,
            reference: reference.map(str::to_string),
            commit: Some(commit.to_string()),
            content_digest: None,
            dirty: false,
        },
        slug,
        _lock: Some(lock),
    })
}

fn is_full_sha(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Open the cached clone, or start a new one; a clone of another origin is discarded.
fn open_cached(path: &Path, url: &str) -> Result<Repository, SourceError> {
    if path.exists() {
        if let Ok(repo) = Repository::open(path) {
            let same_origin = repo
                .find_remote("origin")
                .ok()
                .and_then(|r| r.url().map(|u| u == url))
                .unwrap_or(false);
            if same_origin {
                return Ok(repo);
            }
        }
        fs_err::remove_dir_all(path)?;
    }
    let repo = Repository::init(path).map_err(|source| SourceError::Git {
        path: path.to_path_buf(),
        source,
    })?;
    repo.remote("origin", url)
        .map_err(|source| SourceError::Git {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(repo)
}

/// `git -C <path> <args>` for a network step: no prompts (batch jobs have no terminal),
/// none of the caller's `GIT_DIR`-style variables; stdout on success, else a `Fetch`
/// error with git's own message (credentials redacted).
fn run_git(
    path: &Path,
    args: &[&str],
    origin: &str,
    credentials: Option<&Credentials>,
) -> Result<String, SourceError> {
    let mut command = Command::new("git");
    command.arg("-C").arg(path);
    if let Some(credentials) = credentials {
        // The first helper setting clears the user's own helpers for this call.
        command
            .args(["-c", "credential.helper="])
            .args(["-c", CREDENTIAL_HELPER])
            .env("HPCBINDER_GIT_USERNAME", &credentials.username)
            .env("HPCBINDER_GIT_PASSWORD", &credentials.password);
    }
    let output = command
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_OBJECT_DIRECTORY")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SourceError::Fetch {
            origin: origin.to_string(),
            message: format!("git could not be run: {e}"),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(SourceError::Fetch {
            origin: origin.to_string(),
            message: redact(&message),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A user name and password (or token) taken out of a URL.
#[derive(Clone)]
struct Credentials {
    username: String,
    password: String,
}

/// git's credential helper protocol, answered from the environment of the one git
/// process that needs it (`/proc/<pid>/environ` is readable by this user only).
const CREDENTIAL_HELPER: &str = "credential.helper=!f() { test \"$1\" = get || return 0; echo \"username=${HPCBINDER_GIT_USERNAME}\"; echo \"password=${HPCBINDER_GIT_PASSWORD}\"; }; f";

/// The URL without its userinfo, and the credentials it held (http, https, git).
fn split_credentials(url: &str) -> (String, Option<Credentials>) {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return (url.to_string(), None);
    };
    if parsed.scheme() == "ssh" || (parsed.username().is_empty() && parsed.password().is_none()) {
        return (url.to_string(), None);
    }
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    let credentials = Credentials {
        username: decode(parsed.username()),
        password: decode(parsed.password().unwrap_or_default()),
    };
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    (parsed.to_string(), Some(credentials))
}

/// Fetch branches and tags; returns the remote's default branch (its HEAD), if it has one.
fn fetch(
    path: &Path,
    origin: &str,
    credentials: Option<&Credentials>,
) -> Result<Option<String>, SourceError> {
    let heads = run_git(
        path,
        &["ls-remote", "--symref", "origin", "HEAD"],
        origin,
        credentials,
    )?;
    let default_branch = heads.lines().find_map(|line| {
        line.strip_prefix("ref: ")
            .and_then(|rest| rest.split('\t').next())
            .map(str::to_string)
    });
    let mut args = vec![
        "fetch",
        "--quiet",
        "--prune",
        "--force",
        "--no-write-fetch-head",
        "origin",
    ];
    args.extend_from_slice(REFSPECS);
    run_git(path, &args, origin, credentials)?;
    Ok(default_branch)
}

/// Resolve a ref to a commit: remote HEAD, a branch, a tag, or a (short) commit id.
fn resolve(
    repo: &Repository,
    path: &Path,
    reference: Option<&str>,
    default_branch: Option<&str>,
    origin: &str,
    credentials: Option<&Credentials>,
) -> Result<Oid, SourceError> {
    let missing = || SourceError::MissingRef {
        reference: reference.unwrap_or("HEAD").to_string(),
        origin: origin.to_string(),
    };
    let commit_of = |name: &str| {
        repo.find_reference(name)
            .ok()
            .and_then(|r| r.peel_to_commit().ok())
            .map(|c| c.id())
    };
    let Some(reference) = reference else {
        let branch = default_branch
            .and_then(|b| b.strip_prefix("refs/heads/"))
            .ok_or_else(missing)?;
        return commit_of(&format!("refs/remotes/origin/{branch}")).ok_or_else(missing);
    };
    if let Some(oid) = commit_of(&format!("refs/remotes/origin/{reference}"))
        .or_else(|| commit_of(&format!("refs/tags/{reference}")))
    {
        return Ok(oid);
    }
    if reference.len() >= 4 && reference.bytes().all(|b| b.is_ascii_hexdigit()) {
        if is_full_sha(reference) {
            // A commit that no branch or tag advertises; servers that allow it send it by id.
            let _ = run_git(
                path,
                &[
                    "fetch",
                    "--quiet",
                    "--no-write-fetch-head",
                    "origin",
                    reference,
                ],
                origin,
                credentials,
            );
        }
        return match repo.revparse_single(reference) {
            Ok(object) => object
                .peel_to_commit()
                .map(|c| c.id())
                .map_err(|_| missing()),
            Err(e) if e.code() == git2::ErrorCode::Ambiguous => Err(SourceError::AmbiguousRef {
                reference: reference.to_string(),
                origin: origin.to_string(),
            }),
            Err(_) => Err(missing()),
        };
    }
    Err(missing())
}

/// Force the work tree to `commit` (detached), removing stray files.
fn check_out(repo: &Repository, commit: Oid, path: &Path) -> Result<(), SourceError> {
    let git_error = |source| SourceError::Git {
        path: path.to_path_buf(),
        source,
    };
    let object = repo.find_object(commit, None).map_err(git_error)?;
    let mut builder = CheckoutBuilder::new();
    builder.force().remove_untracked(true).remove_ignored(true);
    repo.checkout_tree(&object, Some(&mut builder))
        .map_err(git_error)?;
    repo.set_head_detached(commit).map_err(git_error)
}

/// Check out every submodule (recursively) at the commit the tree records.
fn update_submodules(
    path: &Path,
    allow_file: bool,
    origin: &str,
    credentials: Option<&Credentials>,
) -> Result<(), SourceError> {
    if !path.join(".gitmodules").is_file() {
        return Ok(());
    }
    let protocol = if allow_file {
        "protocol.file.allow=always"
    } else {
        "protocol.file.allow=never"
    };
    run_git(
        path,
        &[
            "-c",
            protocol,
            "submodule",
            "update",
            "--init",
            "--recursive",
            "--force",
            "--quiet",
        ],
        origin,
        credentials,
    )
    .map(|_| ())
}
