//! BinderHub's repository providers as the service sees them: the spec grammar of each
//! (`reference/binderhub-hpc.md` §1.3), the display configs `/api/repoproviders` lists,
//! and turning a ref into the commit it names now.
//!
//! Departure from BinderHub: every provider resolves its ref with `git ls-remote` over
//! the git protocol (BinderHub asks GitHub's and GitLab's REST APIs), so one code path
//! serves every git host a site allows, and `source-hosts` applies before anything is
//! fetched.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::json;

use crate::source::{spec, RepoSpec};

/// One requested repository, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    /// `gh`, `gl`, `git` or `gist`.
    pub provider: String,
    /// The spec as requested (after the provider, trailing `/` removed).
    pub spec: String,
    /// The spec without its ref (`org/repo`, the escaped URL, `user/gist-id`).
    pub head: String,
    /// The ref as requested (`HEAD` when a gist names none).
    pub unresolved_ref: String,
    /// The clone URL.
    pub url: String,
    /// A short name (`org-repo`).
    pub slug: String,
}

impl Repo {
    /// Parse `<provider>/<spec>`; the error is BinderHub's message for the client.
    pub fn parse(provider: &str, raw_spec: &str, enabled: &[String]) -> Result<Self, String> {
        if !enabled.iter().any(|p| p == provider) {
            return Err(format!("No provider found for prefix {provider}"));
        }
        let spec = raw_spec.trim_end_matches('/').to_string();
        if spec::RecordProvider::from_name(provider).is_some() {
            // A record: the spec names it whole; the version it resolves to is the "commit".
            let parsed = spec::parse_provider(&format!("{provider}/{spec}"))
                .map_err(|e| crate::printer::sanitize_line(&with_causes(&e)))?;
            let RepoSpec::Record { id, .. } = parsed else {
                return Err("not a record".into());
            };
            return Ok(Self {
                provider: provider.to_string(),
                head: id.clone(),
                unresolved_ref: "latest".into(),
                url: format!("{provider}/{id}"),
                slug: provider.to_string(),
                spec,
            });
        }
        let (head, unresolved_ref) = match provider {
            "gh" => {
                let mut parts = spec.splitn(3, '/');
                let (user, repo, reference) = (parts.next(), parts.next(), parts.next());
                match (user, repo, reference) {
                    (Some(u), Some(r), Some(reference)) if !u.is_empty() && !r.is_empty() => {
                        (format!("{u}/{r}"), reference.to_string())
                    }
                    _ => (spec.clone(), String::new()),
                }
            }
            "gist" => {
                let parts: Vec<&str> = spec.split('/').collect();
                match parts.as_slice() {
                    [user, id] => (format!("{user}/{id}"), "HEAD".to_string()),
                    [user, id, reference] => (format!("{user}/{id}"), reference.to_string()),
                    _ => (spec.clone(), String::new()),
                }
            }
            _ => match spec.split_once('/') {
                Some((head, reference)) => (head.to_string(), reference.to_string()),
                None => (spec.clone(), String::new()),
            },
        };
        let parsed = spec::parse_provider(&format!("{provider}/{spec}"))
            .map_err(|e| crate::printer::sanitize_line(&with_causes(&e)))?;
        let RepoSpec::Git { url, slug, .. } = parsed else {
            return Err("not a repository provider spec".into());
        };
        if unresolved_ref.is_empty() {
            return Err(format!("no ref in {provider}/{spec}"));
        }
        let unresolved_ref = percent_encoding::percent_decode_str(&unresolved_ref)
            .decode_utf8_lossy()
            .into_owned();
        Ok(Self {
            provider: provider.to_string(),
            spec,
            head,
            unresolved_ref,
            url,
            slug,
        })
    }

    /// `v2/<provider>/<spec>` as requested (BinderHub's `binder_request`).
    pub fn request(&self) -> String {
        format!("v2/{}/{}", self.provider, self.spec)
    }

    /// `v2/<provider>/<spec at the commit>` (BinderHub's `binder_persistent_request`).
    pub fn persistent_request(&self, commit: &str) -> String {
        match (self.provider.as_str(), commit.split_once('-')) {
            // Every Zenodo version has its own DOI, 10.5281/zenodo.<record id>.
            ("zenodo", Some((_, id))) => format!("v2/zenodo/10.5281/zenodo.{id}"),
            // A Figshare DOI names a version with `.v<n>`.
            ("figshare", Some((_, article))) => {
                let version = article.rsplit_once(".v").map_or("1", |(_, v)| v);
                let doi = match self.head.rsplit_once(".v") {
                    Some((base, v)) if v.bytes().all(|b| b.is_ascii_digit()) => base,
                    _ => self.head.as_str(),
                };
                format!("v2/figshare/{doi}.v{version}")
            }
            // Dataverse, HydroShare and CKAN address only a record's newest version: the
            // spec is the request, and a build of it checks the version it resolved.
            ("dataverse" | "hydroshare" | "ckan", _) => self.request(),
            _ => format!("v2/{}/{}/{commit}", self.provider, self.head),
        }
    }

    /// A page showing the repository at `commit` (BinderHub's `binder_ref_url`).
    pub fn ref_url(&self, commit: &str) -> String {
        match self.provider.as_str() {
            "gh" => format!("{}/tree/{commit}", self.url),
            "gl" => format!("{}/tree/{commit}", self.url.trim_end_matches(".git")),
            "gist" => format!("{}/{commit}", self.url.trim_end_matches(".git")),
            "zenodo" | "figshare" | "dataverse" => format!("https://doi.org/{}", self.head),
            "hydroshare" => format!("https://www.hydroshare.org/resource/{}/", self.head),
            "ckan" => self.head.clone(),
            _ => crate::source::redact(&self.url),
        }
    }
}

/// An error and its causes on one line.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// `encodeURIComponent`, for building `git/<escaped URL>/<ref>` specs.
pub fn escape(text: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'!')
        .remove(b'~')
        .remove(b'*')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')');
    utf8_percent_encode(text, KEEP).to_string()
}

/// BinderHub's `display_config` of each enabled provider, for `/api/repoproviders`.
pub fn display_configs(enabled: &[String]) -> serde_json::Value {
    let all = [
        json!({
            "displayName": "GitHub", "id": "gh",
            "spec": {"validateRegex": "[^/]+/[^/]+/.+"},
            "detect": {"regex": "^(https?://github.com/)?(?<repo>.*[^/])/?"},
            "repo": {"label": "GitHub repository name or URL",
                     "placeholder": "example: binder-examples/requirements or https://github.com/binder-examples/requirements",
                     "urlEncode": false},
            "ref": {"enabled": true, "default": "HEAD"}
        }),
        json!({
            "displayName": "GitLab", "id": "gl",
            "spec": {"validateRegex": "[^/]+/.+"},
            "detect": {"regex": "^(https?://gitlab.com/)?(?<repo>.*[^/])/?"},
            "repo": {"label": "GitLab repository name or URL",
                     "placeholder": "example: https://gitlab.com/mosaik/examples/mosaik-tutorials-on-binder or mosaik/examples/mosaik-tutorials-on-binder",
                     "urlEncode": true},
            "ref": {"enabled": true, "default": "HEAD"}
        }),
        json!({
            "displayName": "Git repository", "id": "git",
            "spec": {"validateRegex": "[^/]+/.+"},
            "repo": {"label": "Arbitrary git repository URL",
                     "placeholder": "example: http://git.example.com/repo",
                     "urlEncode": true},
            "ref": {"enabled": true, "default": "HEAD"}
        }),
        json!({
            "displayName": "GitHub Gist", "id": "gist",
            "spec": {"validateRegex": "[^/]+/[^/]+(/[^/]+)?"},
            "detect": {"regex": "^(https?://gist.github.com/)?(?<repo>.*[^/])/?"},
            "repo": {"label": "Gist ID (username/gistId) or URL", "placeholder": "", "urlEncode": false},
            "ref": {"enabled": true, "default": "HEAD"}
        }),
        json!({
            "displayName": "Zenodo DOI", "id": "zenodo",
            "spec": {"validateRegex": "10\\.\\d+\\/(.)+"},
            "repo": {"label": "Zenodo DOI", "placeholder": "example: 10.5281/zenodo.3242074", "urlEncode": false},
            "ref": {"enabled": false}
        }),
        json!({
            "displayName": "Figshare DOI", "id": "figshare",
            "spec": {"validateRegex": "10\\.\\d+\\/(.)+"},
            "repo": {"label": "Figshare DOI", "placeholder": "example: 10.6084/m9.figshare.9782777.v1", "urlEncode": false},
            "ref": {"enabled": false}
        }),
        json!({
            "displayName": "HydroShare resource", "id": "hydroshare",
            "spec": {"validateRegex": "[^/]+"},
            "repo": {"label": "HydroShare resource id or URL", "placeholder": "example: 8f7c2f0341ef4180b0dd2d85a5b2a9e8 or https://www.hydroshare.org/resource/8f7c2f0341ef4180b0dd2d85a5b2a9e8", "urlEncode": true},
            "ref": {"enabled": false}
        }),
        json!({
            "displayName": "Dataverse DOI", "id": "dataverse",
            "spec": {"validateRegex": "10\\.\\d+\\/(.)+"},
            "repo": {"label": "Dataverse DOI", "placeholder": "example: 10.7910/DVN/TJCLKP", "urlEncode": false},
            "ref": {"enabled": false}
        }),
        json!({
            "displayName": "CKAN dataset", "id": "ckan",
            "spec": {"validateRegex": "[^/]+"},
            "repo": {"label": "CKAN dataset URL", "placeholder": "https://demo.ckan.org/dataset/sample-dataset-1", "urlEncode": true},
            "ref": {"enabled": false}
        }),
    ];
    serde_json::Value::Array(
        all.into_iter()
            .filter(|c| enabled.iter().any(|p| c["id"] == p.as_str()))
            .collect(),
    )
}

/// A repository URL and a ref.
type RefKey = (String, String);
/// One resolution at a time per [`RefKey`].
type Gate = std::sync::Arc<tokio::sync::Mutex<()>>;

/// Resolved refs, kept briefly: a launch link clicked by a whole class resolves once, and
/// a moved branch is seen within [`RESOLVE_TTL`] (BinderHub caches by ETag instead).
pub struct Resolver {
    cache: Mutex<HashMap<RefKey, (Instant, Option<String>)>>,
    policy: crate::source::git::Policy,
    /// For records: the `[records]` table, the CA bundle.
    settings: std::sync::Arc<crate::settings::Settings>,
    /// One resolution at a time per (url, ref): the rest wait for its answer.
    inflight: tokio::sync::Mutex<HashMap<RefKey, Gate>>,
}

/// How long a resolved ref is reused.
pub const RESOLVE_TTL: Duration = Duration::from_secs(3);

impl Resolver {
    /// A resolver that checks every URL against `policy` first.
    pub fn new(policy: crate::source::git::Policy, settings: crate::settings::Settings) -> Self {
        Self {
            cache: Mutex::new(HashMap::new()),
            policy,
            settings: std::sync::Arc::new(settings),
            inflight: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &(String, String)) -> Option<Option<String>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|(when, _)| when.elapsed() < RESOLVE_TTL)
            .map(|(_, commit)| commit.clone())
    }

    /// The commit `repo`'s ref names now; `Ok(None)` when the remote has no such ref.
    pub async fn resolve(&self, repo: &Repo) -> Result<Option<String>, String> {
        let key = (repo.url.clone(), repo.unresolved_ref.clone());
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let gate = {
            let mut inflight = self.inflight.lock().await;
            inflight.entry(key.clone()).or_default().clone()
        };
        let _turn = gate.lock().await;
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let (url, reference, policy) = (key.0.clone(), key.1.clone(), self.policy.clone());
        let settings = self.settings.clone();
        let record = spec::RecordProvider::from_name(&repo.provider)
            .map(|provider| (provider, repo.head.clone()));
        let answer = tokio::task::spawn_blocking(move || match record {
            Some((provider, id)) => crate::records::resolve(provider, &id, &settings),
            None => crate::source::git::ls_remote(&url, &reference, &policy),
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| crate::printer::sanitize_line(&with_causes(&e)))?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 4096 {
            cache.retain(|_, (when, _)| when.elapsed() < RESOLVE_TTL);
        }
        cache.insert(key, (Instant::now(), answer.clone()));
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<String> {
        ["gh", "gl", "git", "gist"].map(String::from).to_vec()
    }

    #[test]
    fn specs_parse_as_binderhub_does() {
        let gh = Repo::parse("gh", "org/repo.git/feature/x", &all()).unwrap();
        assert_eq!(gh.url, "https://github.com/org/repo");
        assert_eq!(gh.unresolved_ref, "feature/x");
        assert_eq!(
            gh.persistent_request("a".repeat(40).as_str()),
            format!("v2/gh/org/repo.git/{}", "a".repeat(40))
        );
        let gl = Repo::parse("gl", "group%2Fsub%2Fproject/main", &all()).unwrap();
        assert_eq!(gl.url, "https://gitlab.com/group/sub/project");
        assert_eq!(gl.head, "group%2Fsub%2Fproject");
        let url = "https://example.org/a/b.git";
        let git = Repo::parse("git", &format!("{}/release/1.0", escape(url)), &all()).unwrap();
        assert_eq!(git.url, url);
        assert_eq!(git.unresolved_ref, "release/1.0");
        let gist = Repo::parse("gist", "user/abc123", &all()).unwrap();
        assert_eq!(gist.unresolved_ref, "HEAD");
        assert_eq!(gist.url, "https://gist.github.com/abc123.git");
    }

    #[test]
    fn bad_specs_get_binderhubs_messages() {
        assert_eq!(
            Repo::parse("nope", "a/b", &all()).unwrap_err(),
            "No provider found for prefix nope"
        );
        assert!(Repo::parse("gh", "only-one-part", &all()).is_err());
        let two = Repo::parse("gh", "org/repo", &all()).unwrap_err();
        assert!(two.contains("did you mean gh/org/repo/HEAD"), "{two}");
        assert!(Repo::parse("git", &format!("{}/HEAD", escape("ext::sh -c x")), &all()).is_err());
        assert!(Repo::parse(
            "git",
            &format!("{}/--upload-pack=x", escape("https://h/r")),
            &all()
        )
        .is_err());
        let only_gh = vec!["gh".to_string()];
        assert!(Repo::parse("gl", "a%2Fb/main", &only_gh).is_err());
    }

    #[test]
    fn records_of_every_provider_name_their_version_as_binderhub_does() {
        let enabled: Vec<String> = crate::serve::config::PROVIDERS
            .iter()
            .map(|p| p.to_string())
            .collect();
        let zenodo = Repo::parse("zenodo", "10.5281/zenodo.1000", &enabled).unwrap();
        assert_eq!(
            zenodo.persistent_request("zenodo-3242074"),
            "v2/zenodo/10.5281/zenodo.3242074"
        );
        let figshare = Repo::parse("figshare", "10.6084/m9.figshare.9782777", &enabled).unwrap();
        assert_eq!(
            figshare.persistent_request("figshare-9782777.v3"),
            "v2/figshare/10.6084/m9.figshare.9782777.v3"
        );
        let dataverse = Repo::parse("dataverse", "10.7910/DVN/TJCLKP", &enabled).unwrap();
        assert_eq!(dataverse.head, "10.7910/DVN/TJCLKP");
        assert_eq!(
            dataverse.persistent_request("dataverse-3323458.v1.0"),
            "v2/dataverse/10.7910/DVN/TJCLKP"
        );
        let id = "b8f6eae9d89241cf8b5904033460af61";
        let hydroshare = Repo::parse("hydroshare", id, &enabled).unwrap();
        assert_eq!(
            hydroshare.ref_url("x"),
            format!("https://www.hydroshare.org/resource/{id}/")
        );
        let ckan = Repo::parse(
            "ckan",
            "https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fsample",
            &enabled,
        )
        .unwrap();
        assert_eq!(ckan.head, "https://demo.ckan.org/dataset/sample");
        assert!(Repo::parse("hydroshare", "not-an-id", &enabled).is_err());
        assert_eq!(
            display_configs(&enabled).as_array().unwrap().len(),
            enabled.len()
        );
    }

    #[test]
    fn display_configs_list_only_enabled_providers() {
        let configs = display_configs(&["git".to_string()]);
        assert_eq!(configs.as_array().unwrap().len(), 1);
        assert_eq!(configs[0]["repo"]["urlEncode"], true);
    }
}
