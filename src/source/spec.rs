//! The repository spec grammar: local paths, git URLs, `gh:`/`gl:` shorthands, BinderHub
//! provider specs (`gh/org/repo/ref`, `git/<escaped url>/ref`, ...) and whole launch URLs.
//!
//! Parsing is pure: nothing here touches git or the network. Hostile input (a URL or ref
//! that git would read as an option, `ext::` transports) is refused here, before git runs.

use std::path::PathBuf;

use percent_encoding::percent_decode_str;

use super::SourceError;

/// What the user asked for, before anything is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoSpec {
    /// A directory on this machine (a git work tree or a plain folder).
    Local {
        /// The directory as given.
        path: PathBuf,
        /// A ref to check out, for git work trees.
        reference: Option<String>,
    },
    /// An archived record (a DOI, a provider's record or dataset, a SWHID), downloaded
    /// over HTTP.
    Record {
        /// Which provider answers for it ([`RecordProvider::Doi`]: whichever the DOI
        /// resolves to).
        provider: RecordProvider,
        /// The record as given, decoded: a DOI (`10.5281/zenodo.3242074`), a HydroShare
        /// resource id or URL, a CKAN dataset URL, or a SWHID (`swh:1:dir:<40 hex>`).
        id: String,
        /// The record it must resolve to (`zenodo-<id>`), as `--ref` (the launch service
        /// passes the one it resolved, so a new version meanwhile is an error).
        reference: Option<String>,
    },
    /// A git repository to clone.
    Git {
        /// The clone URL (may carry credentials; redact before showing).
        url: String,
        /// Branch, tag or commit; `None` means the remote's HEAD.
        reference: Option<String>,
        /// A short, human name for kernels and images (`org-repo`).
        slug: String,
    },
}

/// Archive providers hpcbinder downloads records from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordProvider {
    /// A bare DOI: the provider it resolves to.
    Doi,
    /// Zenodo (and InvenioRDM sites configured as Zenodo).
    Zenodo,
    /// Figshare.
    Figshare,
    /// A Dataverse installation (`[records] dataverse` lists them).
    Dataverse,
    /// HydroShare.
    HydroShare,
    /// A CKAN site (`[records] ckan` lists them).
    Ckan,
    /// The Software Heritage archive (a SWHID).
    Swh,
}

impl RecordProvider {
    /// The provider of BinderHub's prefix `name` (`zenodo`, ..., `ckan`).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Zenodo,
            Self::Figshare,
            Self::Dataverse,
            Self::HydroShare,
            Self::Ckan,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }

    /// The provider's BinderHub prefix.
    pub fn name(self) -> &'static str {
        match self {
            Self::Doi => "doi",
            Self::Zenodo => "zenodo",
            Self::Figshare => "figshare",
            Self::Dataverse => "dataverse",
            Self::HydroShare => "hydroshare",
            Self::Ckan => "ckan",
            Self::Swh => "swh",
        }
    }

    /// Its name for people.
    pub fn display(self) -> &'static str {
        match self {
            Self::Doi => "the DOI's provider",
            Self::Zenodo => "Zenodo",
            Self::Figshare => "Figshare",
            Self::Dataverse => "Dataverse",
            Self::HydroShare => "HydroShare",
            Self::Ckan => "CKAN",
            Self::Swh => "Software Heritage",
        }
    }
}

/// BinderHub's providers of archived records (`<provider>/<spec>`).
pub const RECORD_PROVIDERS: &[&str] = &["zenodo", "figshare", "dataverse", "hydroshare", "ckan"];

/// URL schemes we hand to git.
const GIT_SCHEMES: &[&str] = &["https://", "http://", "ssh://", "git://", "file://"];

/// Parse a repo spec; `cli_ref` is `--ref`, which must agree with a ref inside the spec.
pub fn parse(input: &str, cli_ref: Option<&str>) -> Result<RepoSpec, SourceError> {
    if input.is_empty() {
        return Err(SourceError::BadSpec {
            spec: String::new(),
            reason: "the repository spec is empty".into(),
        });
    }
    refuse_option_like("repository", input)?;
    if let Some(reference) = cli_ref {
        check_ref(reference)?;
    }
    let path = PathBuf::from(input);
    if path.is_dir() {
        return Ok(RepoSpec::Local {
            path,
            reference: cli_ref.map(str::to_string),
        });
    }
    if let Some(RepoSpec::Record { provider, id, .. }) = record_spec(input)? {
        return Ok(RepoSpec::Record {
            provider,
            id,
            reference: cli_ref.map(str::to_string),
        });
    }
    let (url, spec_ref, slug) = if let Some(launch) = launch_url_spec(input) {
        provider_spec(input, &launch)?
    } else if let Some(rest) = input.strip_prefix("gh:") {
        let (repo, reference) = split_at_ref(rest);
        let (org, name) = two_parts(input, repo)?;
        (
            format!("https://github.com/{org}/{}", strip_git(name)),
            reference,
            format!("{org}-{}", strip_git(name)),
        )
    } else if let Some(rest) = input.strip_prefix("gl:") {
        let (repo, reference) = split_at_ref(rest);
        if !repo.contains('/') {
            return Err(bad(input, "expected gl:group/project[@ref]"));
        }
        (
            format!("https://gitlab.com/{}", strip_git(repo)),
            reference,
            strip_git(repo).replace('/', "-"),
        )
    } else if is_git_url(input) {
        refuse_transport(input)?;
        (input.to_string(), None, slug_from_url(input))
    } else if let Some((provider, _)) = input.split_once('/') {
        if is_provider(provider) {
            provider_spec(input, input)?
        } else {
            return Err(SourceError::NotFound {
                spec: input.to_string(),
            });
        }
    } else {
        return Err(SourceError::NotFound {
            spec: input.to_string(),
        });
    };
    git_spec(input, url, spec_ref, cli_ref, slug)
}

/// The checked [`RepoSpec::Git`] of a parsed spec.
fn git_spec(
    input: &str,
    url: String,
    spec_ref: Option<String>,
    cli_ref: Option<&str>,
    slug: String,
) -> Result<RepoSpec, SourceError> {
    let reference = merge_refs(input, spec_ref, cli_ref)?;
    refuse_option_like("repository URL", &url)?;
    refuse_transport(&url)?;
    Ok(RepoSpec::Git {
        url,
        reference,
        slug,
    })
}

/// A BinderHub `<provider>/<spec>`, as the launch service receives it: never a path on
/// this machine, whatever directories the service's working directory holds.
pub fn parse_provider(spec: &str) -> Result<RepoSpec, SourceError> {
    refuse_option_like("repository", spec)?;
    if let Some(record) = record_spec(spec)? {
        return Ok(record);
    }
    let (url, reference, slug) = provider_spec(spec, spec)?;
    git_spec(spec, url, reference, None, slug)
}

fn bad(spec: &str, reason: &str) -> SourceError {
    SourceError::BadSpec {
        spec: spec.to_string(),
        reason: reason.to_string(),
    }
}

fn is_provider(name: &str) -> bool {
    matches!(name, "gh" | "gl" | "git" | "gist") || RECORD_PROVIDERS.contains(&name)
}

/// `zenodo/<doi>`, `figshare/<doi>`, `dataverse/<doi>`, `hydroshare/<id or url>`,
/// `ckan/<url-escaped dataset url>`, `doi:<doi>`, `https://doi.org/<doi>` (and launch URLs
/// of them), and SWHIDs.
fn record_spec(input: &str) -> Result<Option<RepoSpec>, SourceError> {
    if input.starts_with("swh:") {
        return swhid(input).map(Some);
    }
    let launch = launch_url_spec(input);
    let spec = launch.as_deref().unwrap_or(input);
    let doi_provider = [
        ("zenodo/", RecordProvider::Zenodo),
        ("figshare/", RecordProvider::Figshare),
        ("dataverse/", RecordProvider::Dataverse),
    ]
    .into_iter()
    .find_map(|(prefix, provider)| spec.strip_prefix(prefix).map(|doi| (provider, decode(doi))));
    let (provider, id) = if let Some(found) = doi_provider {
        found
    } else if let Some(resource) = spec.strip_prefix("hydroshare/") {
        return hydroshare_spec(input, &decode(resource)).map(Some);
    } else if let Some(dataset) = spec.strip_prefix("ckan/") {
        return ckan_spec(input, &decode(dataset)).map(Some);
    } else if let Some(doi) = spec.strip_prefix("doi:") {
        (RecordProvider::Doi, doi.to_string())
    } else if let Some(doi) = ["https://doi.org/", "http://doi.org/", "https://dx.doi.org/"]
        .iter()
        .find_map(|prefix| spec.strip_prefix(prefix))
    {
        (RecordProvider::Doi, decode(doi))
    } else {
        return Ok(None);
    };
    if !is_doi(&id) {
        return Err(bad(
            input,
            "expected a DOI such as 10.5281/zenodo.3242074 (BinderHub's `10\\.\\d+/.+`)",
        ));
    }
    Ok(Some(record(provider, id)))
}

fn record(provider: RecordProvider, id: String) -> RepoSpec {
    RepoSpec::Record {
        provider,
        id,
        reference: None,
    }
}

/// `hydroshare/<32 hex>` or a HydroShare URL holding it (`.../resource/<32 hex>/`).
fn hydroshare_spec(input: &str, resource: &str) -> Result<RepoSpec, SourceError> {
    let is_id = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let id = if is_id(resource) {
        Some(resource)
    } else if resource.starts_with("https://") || resource.starts_with("http://") {
        let path = resource.split(['?', '#']).next().unwrap_or_default();
        path.trim_end_matches('/')
            .rsplit('/')
            .next()
            .filter(|last| is_id(last) && path.contains("/resource/"))
    } else {
        None
    };
    id.map(|id| record(RecordProvider::HydroShare, id.to_ascii_lowercase()))
        .ok_or_else(|| {
            bad(
                input,
                "expected hydroshare/<resource id> (32 hex digits) or the resource's URL",
            )
        })
}

/// `ckan/<url-escaped dataset URL>`: `http(s)://<site>[/prefix]/dataset/<name>`, with an
/// optional `/history/<activity>` or `?activity_id=<activity>`, as BinderHub reads it.
fn ckan_spec(input: &str, dataset: &str) -> Result<RepoSpec, SourceError> {
    let usable = url::Url::parse(dataset).ok().filter(|u| {
        matches!(u.scheme(), "https" | "http")
            && u.host_str().is_some()
            && u.username().is_empty()
            && u.password().is_none()
            && u.path().contains("/dataset/")
            && u.path()
                .split_once("/dataset/")
                .is_some_and(|(_, name)| !name.is_empty() && !name.starts_with('/'))
    });
    match usable {
        Some(_) if !dataset.contains("..") => Ok(record(RecordProvider::Ckan, dataset.to_string())),
        _ => Err(bad(
            input,
            "expected ckan/<url-escaped dataset URL>, such as ckan/https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fsample",
        )),
    }
}

/// A SWHID of a directory or revision (`swh:1:dir:<40 hex>`, `swh:1:rev:<40 hex>`, with
/// optional `;qualifiers`), as repo2docker accepts.
fn swhid(input: &str) -> Result<RepoSpec, SourceError> {
    let core = input.split(';').next().unwrap_or_default();
    let parts: Vec<&str> = core.split(':').collect();
    match parts.as_slice() {
        ["swh", "1", "dir" | "rev", hash]
            if hash.len() == 40 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(record(RecordProvider::Swh, core.to_string()))
        }
        ["swh", "1", "ori" | "cnt" | "snp" | "rel", _] => Err(bad(
            input,
            "only directory and revision SWHIDs (swh:1:dir:..., swh:1:rev:...) can be built",
        )),
        _ => Err(bad(
            input,
            "expected a SWHID such as swh:1:dir:<40 lowercase hex digits>",
        )),
    }
}

/// BinderHub's DOI grammar, `10\.\d+/(.)+`, with nothing a URL or a shell would read.
fn is_doi(text: &str) -> bool {
    let Some((prefix, suffix)) = text.split_once('/') else {
        return false;
    };
    let Some(registrant) = prefix.strip_prefix("10.") else {
        return false;
    };
    !registrant.is_empty()
        && !suffix.split('/').any(|s| s == ".." || s == ".")
        && registrant.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !suffix.is_empty()
        && suffix
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%' | b'\\'))
}

/// `https://host/.../v2/<provider>/<spec>?urlpath=...` → `<provider>/<spec>`.
fn launch_url_spec(input: &str) -> Option<String> {
    if !(input.starts_with("https://") || input.starts_with("http://")) {
        return None;
    }
    let (_, after) = input.split_once("/v2/")?;
    let spec = after.split(['?', '#']).next()?;
    let provider = spec.split('/').next()?;
    is_provider(provider).then(|| spec.to_string())
}

/// BinderHub's `<provider>/<spec>` grammar (`reference/binderhub-hpc.md` §1.3).
fn provider_spec(input: &str, spec: &str) -> Result<(String, Option<String>, String), SourceError> {
    let (provider, rest) = spec.split_once('/').unwrap_or((spec, ""));
    match provider {
        "gh" => {
            let parts: Vec<&str> = rest.splitn(3, '/').collect();
            match parts.as_slice() {
                [org, repo, reference]
                    if !org.is_empty() && !repo.is_empty() && !reference.is_empty() =>
                {
                    let repo = strip_git(repo);
                    Ok((
                        format!("https://github.com/{org}/{repo}"),
                        Some(decode(reference)),
                        format!("{org}-{repo}"),
                    ))
                }
                [org, repo] if !org.is_empty() && !repo.is_empty() => Err(SourceError::BadSpec {
                    spec: input.to_string(),
                    reason: format!("no ref given; did you mean gh/{org}/{repo}/HEAD?"),
                }),
                _ => Err(bad(input, "expected gh/<org>/<repo>/<ref>")),
            }
        }
        "gl" => {
            let (namespace, reference) = rest
                .split_once('/')
                .filter(|(n, r)| !n.is_empty() && !r.is_empty())
                .ok_or_else(|| bad(input, "expected gl/<url-escaped group%2Fproject>/<ref>"))?;
            let namespace = decode(namespace);
            let namespace = strip_git(&namespace);
            Ok((
                format!("https://gitlab.com/{namespace}"),
                Some(decode(reference)),
                namespace.replace('/', "-"),
            ))
        }
        "git" => {
            // BinderHub splits at the first `/`: the URL is escaped, the ref may hold `/`.
            // An unescaped URL typed on the command line ends at the last `/` instead.
            let escaped_url = rest
                .split('/')
                .next()
                .is_some_and(|u| decode(u).contains("://"));
            let split = if escaped_url {
                rest.split_once('/')
            } else {
                rest.rsplit_once('/')
            };
            let (escaped, reference) = split
                .filter(|(u, r)| !u.is_empty() && !r.is_empty())
                .ok_or_else(|| bad(input, "expected git/<url-escaped clone URL>/<ref>"))?;
            let url = decode(escaped);
            let url = scp_to_ssh(&url);
            if !GIT_SCHEMES.iter().any(|s| url.starts_with(s)) {
                return Err(bad(
                    input,
                    "the URL inside git/... must be http(s), ssh, git or file",
                ));
            }
            let slug = slug_from_url(&url);
            Ok((url, Some(decode(reference)), slug))
        }
        "gist" => {
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                [_user, id] | [_user, id, ""] if !id.is_empty() => Ok((
                    format!("https://gist.github.com/{id}.git"),
                    None,
                    format!("gist-{id}"),
                )),
                [_user, id, reference] if !id.is_empty() => Ok((
                    format!("https://gist.github.com/{id}.git"),
                    Some(decode(reference)),
                    format!("gist-{id}"),
                )),
                _ => Err(bad(input, "expected gist/<user>/<id>[/<ref>]")),
            }
        }
        _ => Err(bad(input, "unknown provider")),
    }
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

fn strip_git(name: &str) -> &str {
    name.strip_suffix(".git").unwrap_or(name)
}

fn two_parts<'a>(input: &str, repo: &'a str) -> Result<(&'a str, &'a str), SourceError> {
    match repo.split_once('/') {
        Some((org, name)) if !org.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((org, name))
        }
        _ => Err(bad(input, "expected gh:org/repo[@ref]")),
    }
}

fn split_at_ref(text: &str) -> (&str, Option<String>) {
    match text.split_once('@') {
        Some((repo, reference)) if !reference.is_empty() => (repo, Some(reference.to_string())),
        Some((repo, _)) => (repo, None),
        None => (text, None),
    }
}

fn merge_refs(
    input: &str,
    spec_ref: Option<String>,
    cli_ref: Option<&str>,
) -> Result<Option<String>, SourceError> {
    match (spec_ref, cli_ref) {
        (Some(a), Some(b)) if a != b => Err(SourceError::BadSpec {
            spec: input.to_string(),
            reason: format!("the spec names ref `{a}` but --ref says `{b}`"),
        }),
        (Some(a), _) => {
            check_ref(&a)?;
            Ok(Some(a))
        }
        (None, b) => Ok(b.map(str::to_string)),
    }
}

/// `git@host:org/repo` (scp-like) → `ssh://git@host/org/repo`.
fn scp_to_ssh(url: &str) -> String {
    if GIT_SCHEMES.iter().any(|s| url.starts_with(s)) {
        return url.to_string();
    }
    match url.split_once(':') {
        Some((user_host, path)) if user_host.contains('@') && !user_host.contains('/') => {
            format!("ssh://{user_host}/{}", path.trim_start_matches('/'))
        }
        _ => url.to_string(),
    }
}

fn is_git_url(input: &str) -> bool {
    if GIT_SCHEMES.iter().any(|s| input.starts_with(s)) {
        return true;
    }
    // scp-like `user@host:path`
    matches!(input.split_once(':'), Some((user_host, _)) if user_host.contains('@') && !user_host.contains('/'))
}

/// The last two path segments of a URL, joined by `-`, without `.git`.
pub fn slug_from_url(url: &str) -> String {
    // Never from the credentials: `https://TOKEN@host` would name kernels after the token.
    let redacted = redact(url);
    let url = redacted.as_str();
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    let segments: Vec<&str> = without_query
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .filter(|s| !s.is_empty())
        .take(2)
        .collect();
    let mut slug: Vec<&str> = segments.into_iter().rev().collect();
    if let Some(last) = slug.last_mut() {
        *last = strip_git(last);
    }
    let joined = slug.join("-");
    joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn refuse_option_like(what: &str, value: &str) -> Result<(), SourceError> {
    if value.starts_with('-') {
        return Err(SourceError::Hostile {
            reason: format!(
                "the {what} `{value}` starts with `-` and would be read by git as an option"
            ),
        });
    }
    Ok(())
}

/// git's remote-helper syntax (`ext::sh -c ...`, `fd::`) runs commands: never allowed.
fn refuse_transport(url: &str) -> Result<(), SourceError> {
    let before_colon = url.split(':').next().unwrap_or("");
    if url.contains("::") && !before_colon.contains('/') {
        return Err(SourceError::Hostile {
            reason: format!(
                "`{url}` uses a git transport helper (`<transport>::`), which can run commands"
            ),
        });
    }
    if !is_git_url(url) {
        return Err(SourceError::Hostile {
            reason: format!("`{url}` is not an http(s), ssh, git or file URL"),
        });
    }
    Ok(())
}

/// Refs must look like refs: no option syntax, no whitespace or control characters, none of
/// git's forbidden sequences.
pub fn check_ref(reference: &str) -> Result<(), SourceError> {
    refuse_option_like("ref", reference)?;
    let bad_char = reference.chars().any(|c| {
        c.is_whitespace() || c.is_control() || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    });
    if reference.is_empty()
        || bad_char
        || reference.contains("..")
        || reference.contains("@{")
        || reference.ends_with(".lock")
        || reference.ends_with('/')
        || reference.ends_with('.')
    {
        return Err(SourceError::BadRef {
            reference: reference.to_string(),
        });
    }
    Ok(())
}

/// Replace the credentials in every URL in `text` with `****` (userinfo, and secret query
/// values such as `private_token=`); ssh user names stay.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(index) = rest.find("://") {
        let (before, after) = rest.split_at(index + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>') || c.is_whitespace()
            })
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at) => {
                let user = &authority[..at];
                let host = &authority[at + 1..];
                // An ssh user name is not a secret; its password is.
                if before.ends_with("ssh://") && !user.contains(':') {
                    out.push_str(authority);
                } else if before.ends_with("ssh://") {
                    let name = user.split(':').next().unwrap_or_default();
                    out.push_str(&format!("{name}:****@{host}"));
                } else {
                    out.push_str(&format!("****@{host}"));
                }
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    redact_query_secrets(&out)
}

/// `?private_token=...`, `access_token=`, `token=`, `password=` values in URLs.
fn redact_query_secrets(text: &str) -> String {
    let mut out = text.to_string();
    for name in [
        "private_token=",
        "access_token=",
        "token=",
        "password=",
        "secret=",
    ] {
        let mut from = 0;
        while let Some(found) = out[from..].to_ascii_lowercase().find(name) {
            let start = from + found + name.len();
            let end = out[start..]
                .find(|c: char| matches!(c, '&' | '#' | '"' | '\'') || c.is_whitespace())
                .map_or(out.len(), |e| start + e);
            if out[start..end] != *"****" {
                out.replace_range(start..end, "****");
            }
            from = start + 4;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(input: &str) -> (String, Option<String>, String) {
        match parse(input, None).unwrap() {
            RepoSpec::Git {
                url,
                reference,
                slug,
            } => (url, reference, slug),
            other => panic!("not git: {other:?}"),
        }
    }

    #[test]
    fn shorthands_and_binderhub_specs() {
        assert_eq!(
            git("gh:org/repo@v1"),
            (
                "https://github.com/org/repo".into(),
                Some("v1".into()),
                "org-repo".into()
            )
        );
        assert_eq!(
            git("gh/org/repo.git/feature/x"),
            (
                "https://github.com/org/repo".into(),
                Some("feature/x".into()),
                "org-repo".into()
            )
        );
        assert_eq!(
            git("gl/group%2Fsub%2Fproj/main"),
            (
                "https://gitlab.com/group/sub/proj".into(),
                Some("main".into()),
                "group-sub-proj".into()
            )
        );
        assert_eq!(
            git("git/https%3A%2F%2Fexample.org%2Fa%2Fb.git/abc123"),
            (
                "https://example.org/a/b.git".into(),
                Some("abc123".into()),
                "a-b".into()
            )
        );
        assert_eq!(
            git("git/git%40example.org%3Aa%2Fb.git/main").0,
            "ssh://git@example.org/a/b.git"
        );
        assert_eq!(
            git("gist/someone/0123abcd"),
            (
                "https://gist.github.com/0123abcd.git".into(),
                None,
                "gist-0123abcd".into()
            )
        );
        assert_eq!(
            git("https://mybinder.org/v2/gh/org/repo/HEAD?urlpath=lab"),
            (
                "https://github.com/org/repo".into(),
                Some("HEAD".into()),
                "org-repo".into()
            )
        );
    }

    #[test]
    fn rejects_bad_and_hostile_specs() {
        assert!(
            matches!(parse("gh/org/repo", None), Err(SourceError::BadSpec { reason, .. }) if reason.contains("gh/org/repo/HEAD"))
        );
        assert!(matches!(
            parse("zenodo/10.5281/zenodo.1", None),
            Ok(RepoSpec::Record { provider: RecordProvider::Zenodo, ref id, reference: None }) if id == "10.5281/zenodo.1"
        ));
        assert!(matches!(
            parse("https://doi.org/10.5281/zenodo.1", Some("zenodo-1")),
            Ok(RepoSpec::Record {
                provider: RecordProvider::Doi,
                reference: Some(_),
                ..
            })
        ));
        assert!(matches!(
            parse(
                "https://mybinder.org/v2/zenodo/10.5281/zenodo.1?urlpath=lab",
                None
            ),
            Ok(RepoSpec::Record {
                provider: RecordProvider::Zenodo,
                ..
            })
        ));
        for hostile in [
            "doi:10.1/../x",
            "doi:10.1/a?b",
            "zenodo/11.1/x",
            "doi:10.x/y",
            "doi:10.1/",
        ] {
            assert!(
                matches!(parse(hostile, None), Err(SourceError::BadSpec { .. })),
                "{hostile}"
            );
        }
        assert!(matches!(
            parse("-uhack", None),
            Err(SourceError::Hostile { .. })
        ));
        assert!(matches!(
            parse("ext::sh -c touch% /tmp/x", None),
            Err(SourceError::NotFound { .. }) | Err(SourceError::Hostile { .. })
        ));
        assert!(matches!(
            parse("git/ext%3A%3Ash%20-c%20id/main", None),
            Err(SourceError::BadSpec { .. }) | Err(SourceError::Hostile { .. })
        ));
        assert!(matches!(
            parse("gh:org/repo", Some("--upload-pack=x")),
            Err(SourceError::Hostile { .. })
        ));
        assert!(matches!(
            parse("gh:org/repo", Some("a..b")),
            Err(SourceError::BadRef { .. })
        ));
        assert!(matches!(
            parse("gh:org/repo@v1", Some("v2")),
            Err(SourceError::BadSpec { .. })
        ));
    }

    #[test]
    fn parses_every_record_provider() {
        let record = |spec: &str| match parse_provider(spec) {
            Ok(RepoSpec::Record { provider, id, .. }) => Ok((provider, id)),
            Ok(other) => panic!("{spec}: {other:?}"),
            Err(e) => Err(e.to_string()),
        };
        let hs = "b8f6eae9d89241cf8b5904033460af61";
        for (spec, provider, id) in [
            (
                "dataverse/10.7910/DVN/TJCLKP",
                RecordProvider::Dataverse,
                "10.7910/DVN/TJCLKP",
            ),
            (
                &format!("hydroshare/{hs}") as &str,
                RecordProvider::HydroShare,
                hs,
            ),
            (
                &format!("hydroshare/https%3A%2F%2Fwww.hydroshare.org%2Fresource%2F{hs}%2F"),
                RecordProvider::HydroShare,
                hs,
            ),
            (
                "ckan/https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fsample%2Fhistory%2F1",
                RecordProvider::Ckan,
                "https://demo.ckan.org/dataset/sample/history/1",
            ),
        ] {
            assert_eq!(record(spec), Ok((provider, id.to_string())), "{spec}");
        }
        let dir = "swh:1:dir:0123456789abcdef0123456789abcdef01234567";
        assert!(matches!(
            parse(&format!("{dir};origin=https://example.org"), None),
            Ok(RepoSpec::Record { provider: RecordProvider::Swh, ref id, .. }) if id == dir
        ));
        for bad in [
            "hydroshare/123",
            "hydroshare/https%3A%2F%2Fexample.org%2Fx",
            "ckan/https%3A%2F%2Fdemo.ckan.org%2Fgroups%2Fx",
            "ckan/file%3A%2F%2F%2Fetc%2Fdataset%2Fx",
            "ckan/https%3A%2F%2Fu%3Ap%40demo.ckan.org%2Fdataset%2Fx",
            "dataverse/DVN/TJCLKP",
        ] {
            assert!(record(bad).is_err(), "{bad}");
        }
        for bad in [
            "swh:1:cnt:0123456789abcdef0123456789abcdef01234567",
            "swh:1:dir:0123",
            "swh:2:dir:0123456789abcdef0123456789abcdef01234567",
            "swh:1:dir:0123456789ABCDEF0123456789abcdef01234567",
        ] {
            assert!(
                matches!(parse(bad, None), Err(SourceError::BadSpec { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact("https://user:tok@host/a.git"),
            "https://****@host/a.git"
        );
        assert_eq!(redact("https://tok@host/a@b"), "https://****@host/a@b");
        assert_eq!(redact("ssh://git@host/a"), "ssh://git@host/a");
        assert_eq!(redact("file:///tmp/a"), "file:///tmp/a");
        assert_eq!(
            redact(
                "could not fetch git://u:pw@host/r: failed (https://t@h/x?private_token=abc&y=1)"
            ),
            "could not fetch git://****@host/r: failed (https://****@h/x?private_token=****&y=1)"
        );
        assert_eq!(redact("ssh://me:pw@host/a"), "ssh://me:****@host/a");
    }
}
