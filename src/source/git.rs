//! Remote git repositories: a cached clone per origin, fetched on reuse, checked out at the
//! resolved commit with submodules.
//!
//! The cache lives at `<cache>/git/<first 16 hex of sha256(url)>/` and is locked (an OS file
//! lock next to it) for as long as the checkout is in use, so two hpcbinder processes never
//! move the same work tree under each other.

use std::path::Path;

use git2::{build::CheckoutBuilder, FetchOptions, Oid, RemoteCallbacks, Repository};
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
            let default_branch = fetch(&repo, &origin)?;
            resolve(&repo, wanted, default_branch.as_deref(), &origin)?
        }
    };
    reporter.phase(Phase::Fetching, format!("Checking out {commit}"));
    check_out(&repo, commit, &path)?;
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

fn callbacks<'a>() -> RemoteCallbacks<'a> {
    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(|url, username, allowed| {
        if allowed.contains(git2::CredentialType::SSH_KEY) {
            return git2::Cred::ssh_key_from_agent(username.unwrap_or("git"));
        }
        let config = git2::Config::open_default()?;
        git2::Cred::credential_helper(&config, url, username)
    });
    callbacks
}

/// Fetch branches and tags; returns the remote's default branch (its HEAD), if it has one.
fn fetch(repo: &Repository, origin: &str) -> Result<Option<String>, SourceError> {
    let fetch_error = |source| SourceError::Fetch {
        origin: origin.to_string(),
        source,
    };
    let mut remote = repo.find_remote("origin").map_err(fetch_error)?;
    let mut proxy = git2::ProxyOptions::new();
    proxy.auto();
    let connection = remote
        .connect_auth(git2::Direction::Fetch, Some(callbacks()), Some(proxy))
        .map_err(fetch_error)?;
    let default_branch = connection
        .default_branch()
        .ok()
        .and_then(|b| b.as_str().map(str::to_string));
    drop(connection);
    let mut options = FetchOptions::new();
    options.remote_callbacks(callbacks());
    let mut proxy = git2::ProxyOptions::new();
    proxy.auto();
    options.proxy_options(proxy);
    options.download_tags(git2::AutotagOption::All);
    options.prune(git2::FetchPrune::On);
    remote
        .fetch(REFSPECS, Some(&mut options), None)
        .map_err(fetch_error)?;
    Ok(default_branch)
}

/// Resolve a ref to a commit: remote HEAD, a branch, a tag, or a (short) commit id.
fn resolve(
    repo: &Repository,
    reference: Option<&str>,
    default_branch: Option<&str>,
    origin: &str,
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
            let mut remote = repo
                .find_remote("origin")
                .map_err(|source| SourceError::Fetch {
                    origin: origin.to_string(),
                    source,
                })?;
            let mut options = FetchOptions::new();
            options.remote_callbacks(callbacks());
            let _ = remote.fetch(&[reference], Some(&mut options), None);
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

/// Force the work tree to `commit` (detached), removing stray files, then submodules.
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
    repo.set_head_detached(commit).map_err(git_error)?;
    update_submodules(repo).map_err(git_error)
}

fn update_submodules(repo: &Repository) -> Result<(), git2::Error> {
    for mut submodule in repo.submodules()? {
        let mut options = git2::SubmoduleUpdateOptions::new();
        let mut fetch = FetchOptions::new();
        fetch.remote_callbacks(callbacks());
        options.fetch(fetch);
        submodule.update(true, Some(&mut options))?;
        if let Ok(sub_repo) = submodule.open() {
            update_submodules(&sub_repo)?;
        }
    }
    Ok(())
}
