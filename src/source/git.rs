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

use git2::{Oid, Repository};
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
    policy: &Policy,
    reporter: &dyn Reporter,
) -> Result<Checkout, SourceError> {
    let origin = redact(url);
    policy.check(url, None)?;
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
    // Each commit gets its own work tree, made once and never changed after: the clone's
    // lock is held only until it exists, so builds of other refs of the same repository
    // (or a build with a slow postBuild) do not wait for each other.
    let tree = git_dir
        .join(format!("{}-trees", &digest[..16]))
        .join(commit.to_string());
    // Written once the tree and its submodules are complete; beside the tree, so it is
    // never part of what the build reads.
    let ready = tree.with_extension("ready");
    if !ready.is_file() {
        reporter.phase(Phase::Fetching, format!("Checking out {commit}"));
        // Submodules follow the rules of the repository itself ([`Policy`]); `file://`
        // only when the repository itself is local: a remote one must not make us read
        // this machine's files.
        let policy = Policy {
            allow_local: policy.allow_local && url.starts_with("file://"),
            ..policy.clone()
        };
        let _ = fs_err::remove_file(&ready);
        make_tree(&path, &tree, commit, &origin)?;
        update_submodules(&tree, &policy, url, &origin, credentials.as_ref(), 0)?;
        fs_err::write(&ready, "")?;
    }
    drop(lock);
    Ok(Checkout {
        root: tree,
        identity: Identity {
            kind: "git",
            origin,
            reference: reference.map(str::to_string),
            commit: Some(commit.to_string()),
            content_digest: None,
            dirty: false,
        },
        slug,
        _lock: None,
    })
}

/// The commit a remote's ref names now (`git ls-remote -- <url> <ref>`), as BinderHub's
/// git provider resolves it before building: a full commit id is taken as it is, and
/// `None` means the remote has no such branch or tag. `url` must pass `policy` first.
pub fn ls_remote(
    url: &str,
    reference: &str,
    policy: &Policy,
) -> Result<Option<String>, SourceError> {
    policy.check(url, None)?;
    if is_full_sha(reference) {
        return Ok(Some(reference.to_ascii_lowercase()));
    }
    let (plain, credentials) = split_credentials(url);
    let protocol = if policy.allow_local {
        "protocol.file.allow=always"
    } else {
        "protocol.file.allow=never"
    };
    let listing = run_git(
        Path::new("/"),
        &[
            "-c",
            protocol,
            "-c",
            "protocol.ext.allow=never",
            "ls-remote",
            "--",
            &plain,
            reference,
        ],
        &redact(url),
        credentials.as_ref(),
    )?;
    Ok(listing
        .split_whitespace()
        .next()
        .filter(|sha| is_full_sha(sha))
        .map(str::to_string))
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
            .env("HPCBINDER_GIT_PASSWORD", &credentials.password)
            .env("HPCBINDER_GIT_HOST", &credentials.host);
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
    /// `host[:port]` they belong to: git asks for submodules' hosts too, and gets nothing.
    host: String,
}

/// git's credential helper protocol, answered from the environment of the one git
/// process that needs it (`/proc/<pid>/environ` is readable by this user only).
/// Only for the origin's own host: a submodule elsewhere must not receive them.
const CREDENTIAL_HELPER: &str = "credential.helper=!f() { test \"$1\" = get || return 0; h=; while IFS= read -r l; do case \"$l\" in host=*) h=\"${l#host=}\";; esac; done; test \"$h\" = \"$HPCBINDER_GIT_HOST\" || return 0; echo \"username=${HPCBINDER_GIT_USERNAME}\"; echo \"password=${HPCBINDER_GIT_PASSWORD}\"; }; f";

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
        host: match parsed.port() {
            Some(port) => format!("{}:{port}", parsed.host_str().unwrap_or_default()),
            None => parsed.host_str().unwrap_or_default().to_string(),
        },
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

/// Make `tree` a work tree of the clone at `commit` (`git worktree add --detach`), after
/// removing what an interrupted attempt left there.
fn make_tree(path: &Path, tree: &Path, commit: Oid, origin: &str) -> Result<(), SourceError> {
    if tree.exists() {
        fs_err::remove_dir_all(tree)?;
    }
    let _ = run_git(path, &["worktree", "prune"], origin, None);
    if let Some(parent) = tree.parent() {
        fs_err::create_dir_all(parent)?;
    }
    let tree_arg = tree.display().to_string();
    run_git(
        path,
        &[
            "worktree",
            "add",
            "--detach",
            "--force",
            &tree_arg,
            &commit.to_string(),
        ],
        origin,
        None,
    )
    .map(|_| ())
}

/// Check out every submodule (recursively, at most 8 deep) at the commit the tree
/// records, each URL checked against `policy` before git sees it.
fn update_submodules(
    path: &Path,
    policy: &Policy,
    parent_url: &str,
    origin: &str,
    credentials: Option<&Credentials>,
    depth: usize,
) -> Result<(), SourceError> {
    if !path.join(".gitmodules").is_file() {
        return Ok(());
    }
    if depth >= 8 {
        return Err(SourceError::Hostile {
            reason: format!("{origin} nests submodules more than 8 deep"),
        });
    }
    // Each submodule's (url, path), read once from `.gitmodules`.
    let text = run_git(
        path,
        &[
            "config",
            "-f",
            ".gitmodules",
            "--get-regexp",
            r"^submodule\..*\.(url|path)$",
        ],
        origin,
        None,
    )
    .unwrap_or_default();
    let mut submodules: std::collections::BTreeMap<&str, (&str, &str)> = Default::default();
    for (key, value) in text.lines().filter_map(|line| line.split_once(' ')) {
        let Some(rest) = key.strip_prefix("submodule.") else {
            continue;
        };
        if let Some(name) = rest.strip_suffix(".url") {
            submodules.entry(name).or_default().0 = value;
        } else if let Some(name) = rest.strip_suffix(".path") {
            submodules.entry(name).or_default().1 = value;
        }
    }
    for (url, _) in submodules.values() {
        policy.check(url, Some(parent_url))?;
    }
    let protocol = if policy.allow_local {
        "protocol.file.allow=always"
    } else {
        "protocol.file.allow=never"
    };
    run_git(
        path,
        &[
            "-c",
            protocol,
            "-c",
            "protocol.ext.allow=never",
            "submodule",
            "update",
            "--init",
            "--force",
            "--quiet",
        ],
        origin,
        credentials,
    )?;
    for (url, sub_path) in submodules.values().filter(|(_, p)| !p.is_empty()) {
        update_submodules(
            &path.join(sub_path),
            policy,
            &resolve_relative(url, parent_url),
            origin,
            credentials,
            depth + 1,
        )?;
    }
    Ok(())
}

/// A submodule URL relative to its parent's (`../lib.git`), made absolute as git does.
fn resolve_relative(url: &str, parent: &str) -> String {
    if !(url.starts_with("./") || url.starts_with("../")) {
        return url.to_string();
    }
    let mut base = parent.trim_end_matches('/').to_string();
    let mut rest = url;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            rest = r;
            if let Some(index) = base.rfind('/') {
                base.truncate(index);
            }
        } else {
            break;
        }
    }
    format!("{base}/{rest}")
}

/// Where repositories and their submodules may come from: the site's hosts
/// (`source-hosts`; empty means any), and local paths (`file://`) only when allowed (a
/// local repository on the command line, never the service).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Allowed hosts; empty allows any.
    pub hosts: Vec<String>,
    /// `file://` URLs and paths are allowed.
    pub allow_local: bool,
}

impl Policy {
    /// Refuse `url` (relative URLs resolve against `parent`) unless the policy allows it.
    pub fn check(&self, url: &str, parent: Option<&str>) -> Result<(), SourceError> {
        let absolute = match parent {
            Some(parent) => resolve_relative(url, parent),
            None => url.to_string(),
        };
        let refuse = |why: String| {
            Err(SourceError::Hostile {
                reason: format!("{} {why}", redact(&absolute)),
            })
        };
        let is_local = absolute.starts_with("file:") || absolute.starts_with('/');
        if is_local {
            return if self.allow_local {
                Ok(())
            } else {
                refuse(
                    "is on this machine; only a local repository may use local submodules".into(),
                )
            };
        }
        // `<transport>::<address>`: a remote helper (`ext::` runs a command).
        if let Some((transport, _)) = absolute.split_once("::") {
            if !transport.contains('/') {
                return refuse(format!(
                    "uses `{transport}::`, which is not a git transport hpcbinder allows (https, http, ssh, git)"
                ));
            }
        }
        // scp-like `user@host:path`.
        let host = if let Some((user_host, _)) = absolute
            .split_once(':')
            .filter(|(before, after)| !before.contains('/') && !after.starts_with("//"))
        {
            user_host
                .rsplit('@')
                .next()
                .unwrap_or(user_host)
                .to_string()
        } else {
            match url::Url::parse(&absolute) {
                Ok(parsed) if ["https", "http", "ssh", "git"].contains(&parsed.scheme()) => {
                    parsed.host_str().unwrap_or_default().to_string()
                }
                Ok(parsed) => {
                    return refuse(format!("uses `{}:`, which is not a git transport hpcbinder allows (https, http, ssh, git)", parsed.scheme()))
                }
                Err(_) => return refuse("is not a URL".into()),
            }
        };
        let listed = self.hosts.iter().any(|h| h.eq_ignore_ascii_case(&host));
        // Without local sources (the launch service), a URL may not reach this machine or a
        // link-local address (a cloud metadata service) unless the site lists the host.
        if !self.allow_local && !listed && is_machine_local(&host) {
            return refuse(format!(
                "is on {host}, this machine or a link-local address, which this site allows no one to build from (local-sources = false)"
            ));
        }
        if self.hosts.is_empty() || listed {
            Ok(())
        } else {
            refuse(format!(
                "is on {host}, which is not one of the site's source-hosts ({})",
                self.hosts.join(", ")
            ))
        }
    }
}

/// Whether `host` is this machine (loopback, unspecified, `localhost`) or link-local, by
/// its literal address or by what it resolves to now.
fn is_machine_local(host: &str) -> bool {
    use std::net::{IpAddr, ToSocketAddrs};
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_link_local())
        }
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return local(ip);
    }
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return true;
    }
    (host, 0)
        .to_socket_addrs()
        .map(|mut addresses| addresses.any(|a| local(a.ip())))
        .unwrap_or(false)
}

#[cfg(test)]
mod machine_local_tests {
    use super::*;

    #[test]
    fn without_local_sources_urls_may_not_reach_this_machine_or_link_local_addresses() {
        let service = Policy {
            hosts: Vec::new(),
            allow_local: false,
        };
        for url in [
            "http://127.0.0.1:8081/hub/api",
            "http://localhost/x.git",
            "https://169.254.169.254/latest/meta-data",
            "http://[::1]:9/x",
            "http://[fe80::1]/x",
            "http://0.0.0.0/x",
        ] {
            let error = service.check(url, None).unwrap_err().to_string();
            assert!(error.contains("local-sources = false"), "{url}: {error}");
        }
        assert!(service.check("https://github.com/org/repo", None).is_ok());
        let listed = Policy {
            hosts: vec!["127.0.0.1".into()],
            allow_local: false,
        };
        assert!(listed.check("http://127.0.0.1:3000/org/repo", None).is_ok());
        let cli = Policy {
            hosts: Vec::new(),
            allow_local: true,
        };
        assert!(cli.check("http://127.0.0.1:8081/x", None).is_ok());
    }
}
