//! Sources: turn a repo spec into a local checkout with an immutable identity.
//!
//! A ref is always resolved to a full commit id before anything reads the tree. Remote
//! repositories are cloned into `<store>/cache/git/<digest of origin>/` and fetched again on
//! reuse; a cached clone is checked to belong to the same origin before it is trusted.
//! A local plain folder's identity is a content digest of its files.

pub mod archive;
pub mod git;
mod local;
pub mod spec;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::diagnostic::{Blame, Diagnostic};
use crate::events::{Phase, Reporter, ReporterExt};
pub use git::Policy;
pub use local::tree_digest;
pub use spec::{redact, RepoSpec};

/// Errors from parsing a spec or getting a checkout.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The spec does not parse.
    #[error("invalid repository spec `{spec}`: {reason}")]
    BadSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Neither an existing directory nor a recognised spec.
    #[error("`{spec}` is not a directory, a git URL or a repository spec")]
    NotFound {
        /// The spec as given.
        spec: String,
    },
    /// A provider we know but do not support yet.
    #[error("`{provider}` sources are not supported yet (`{spec}`)")]
    Unsupported {
        /// The spec as given.
        spec: String,
        /// The provider prefix.
        provider: String,
    },
    /// Refused for safety before git ran.
    #[error("refusing unsafe input: {reason}")]
    Hostile {
        /// Why.
        reason: String,
    },
    /// A ref that cannot be a git ref.
    #[error("`{reference}` is not a valid git ref")]
    BadRef {
        /// The ref as given.
        reference: String,
    },
    /// The ref does not exist in the repository.
    #[error("ref `{reference}` not found in {origin}")]
    MissingRef {
        /// The ref as given.
        reference: String,
        /// The repository (redacted).
        origin: String,
    },
    /// A short sha matching several commits.
    #[error("ref `{reference}` is ambiguous in {origin}")]
    AmbiguousRef {
        /// The ref as given.
        reference: String,
        /// The repository (redacted).
        origin: String,
    },
    /// Fetching or cloning failed.
    #[error("could not fetch {origin}: {message}")]
    Fetch {
        /// The repository (redacted).
        origin: String,
        /// git's message (redacted).
        message: String,
    },
    /// A record's provider failed or answered something unusable.
    #[error("{provider}: {message}")]
    Record {
        /// The provider (`Zenodo`, `the DOI resolver`).
        provider: String,
        /// What went wrong.
        message: String,
    },
    /// A downloaded file does not match the checksum its provider publishes.
    #[error("{file} does not match its published checksum ({expected}; downloaded {found})")]
    Checksum {
        /// The file's path in the record.
        file: String,
        /// The published checksum.
        expected: String,
        /// The downloaded file's.
        found: String,
    },
    /// Another git operation failed.
    #[error("git failed on {path}")]
    Git {
        /// Where.
        path: PathBuf,
        /// libgit2's error.
        #[source]
        source: ::git2::Error,
    },
    /// An I/O error, already naming its path (fs-err).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Diagnostic for SourceError {
    fn blame(&self) -> Blame {
        match self {
            // The repository is not there (or not visible to this user): the spec's fault.
            Self::Fetch { message, .. }
                if [
                    "not found",
                    "404",
                    "does not exist",
                    "does not appear to be a git repository",
                ]
                .iter()
                .any(|m| message.contains(m)) =>
            {
                Blame::User
            }
            Self::Record { message, .. }
                if message.contains("does not exist") || message.contains("not found") =>
            {
                Blame::User
            }
            Self::Fetch { .. }
            | Self::Git { .. }
            | Self::Io(_)
            | Self::Record { .. }
            | Self::Checksum { .. } => Blame::Environment,
            _ => Blame::User,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            Self::NotFound { .. } => Some(
                "give a local directory, a git URL (https://, ssh://, file://), gh:org/repo[@ref], \
                 gl:group/repo[@ref], or a BinderHub spec such as gh/org/repo/HEAD"
                    .into(),
            ),
            Self::Unsupported { .. } => Some("clone or download it yourself and pass the directory".into()),
            Self::MissingRef { .. } => {
                Some("check the branch, tag or commit name; `git ls-remote <url>` lists branches and tags".into())
            }
            Self::AmbiguousRef { .. } => Some("give more characters of the commit id".into()),
            Self::BadRef { .. } => Some("refs are branch names, tags or commit ids, e.g. main, v1.2, 3f2a9c1".into()),
            Self::Fetch { .. } => Some("check the URL and your network or proxy settings (https_proxy)".into()),
            Self::Record { .. } => Some("check the DOI, your network or proxy settings (https_proxy), and the [records] table's URLs (`hpcbinder config show`)".into()),
            Self::Checksum { .. } => Some("the download was damaged or the provider's file changed; nothing was kept, so run the build again".into()),
            _ => None,
        }
    }
}

/// Who the checkout is: where it came from and exactly which content it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// `git`, `directory` or `record`.
    pub kind: &'static str,
    /// The origin URL (credentials redacted) or `file://` path.
    pub origin: String,
    /// The ref that was asked for, if any.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// The full commit id (git sources).
    pub commit: Option<String>,
    /// A digest of the files (plain folders, and git work trees with local changes).
    pub content_digest: Option<String>,
    /// A git work tree whose files differ from its commit.
    pub dirty: bool,
}

impl Identity {
    /// `origin@commit` (or just the origin for a plain folder), for labels and markers.
    pub fn describe(&self) -> String {
        match &self.commit {
            Some(commit) => format!("{}@{commit}", self.origin),
            None => self.origin.clone(),
        }
    }
}

/// A local tree to detect and build from. Holding it keeps any cache lock it needs.
#[derive(Debug)]
pub struct Checkout {
    /// The directory holding the files.
    pub root: PathBuf,
    /// Where the files came from.
    pub identity: Identity,
    /// A short name for kernels and images.
    pub slug: String,
    _lock: Option<fs_err::File>,
}

impl Checkout {
    /// A checkout of `root` (no lock to hold).
    pub fn new(root: PathBuf, identity: Identity, slug: String) -> Self {
        Self {
            root,
            identity,
            slug,
            _lock: None,
        }
    }
}

/// Get a checkout for a spec: a local directory as it is, or a clone in the cache.
pub fn checkout(
    spec: &RepoSpec,
    cache_dir: &Path,
    policy: &git::Policy,
    reporter: &dyn Reporter,
) -> Result<Checkout, SourceError> {
    if let RepoSpec::Local { path, .. } = spec {
        if !policy.allow_local {
            return Err(SourceError::Hostile {
                reason: format!(
                    "{} is a path on this machine, and this site allows no local sources (local-sources = false)",
                    crate::printer::sanitize_line(&path.display().to_string())
                ),
            });
        }
    }
    match spec {
        RepoSpec::Local {
            path,
            reference: None,
        } => local::open(path),
        RepoSpec::Local {
            path,
            reference: Some(reference),
        } => {
            let absolute = fs_err::canonicalize(path)?;
            if ::git2::Repository::open(&absolute).is_err() {
                return Err(SourceError::BadSpec {
                    spec: path.display().to_string(),
                    reason: "--ref needs a git repository, and this directory is not one".into(),
                });
            }
            let url = format!("file://{}", absolute.display());
            reporter.phase(Phase::Fetching, format!("Resolving {reference} in {url}"));
            let slug = local::slug_for_dir(&absolute);
            git::checkout(&url, Some(reference), slug, cache_dir, policy, reporter)
        }
        RepoSpec::Record { provider, id, .. } => Err(SourceError::Unsupported {
            spec: id.clone(),
            // Records are fetched over HTTP by the records module, not here.
            provider: provider.name().to_string(),
        }),
        RepoSpec::Git {
            url,
            reference,
            slug,
        } => {
            reporter.phase(Phase::Fetching, format!("Fetching {}", redact(url)));
            git::checkout(
                url,
                reference.as_deref(),
                slug.clone(),
                cache_dir,
                policy,
                reporter,
            )
        }
    }
}
