//! Where a build may download packages from: the site decides (reliability.md §2.4).
//!
//! A repository names package sources in many places: environment.yml and pixi.toml
//! channels, `--index-url` / `--extra-index-url` / `--find-links` / `--trusted-host` lines
//! in requirement files, and the URLs of the packages a lock file (conda-lock, `@EXPLICIT`,
//! pixi.lock) downloads. A remote repository may use only sources on the site's
//! allow-list (`package-sources`; by default the configured channels, channel alias,
//! mirrors, index and find-links plus the public conda and PyPI hosts). A local repository
//! is the user's own: its sources are the user's choice, unless the site turns local
//! sources off (`local-sources = false`, as the launch service does), when nothing on this
//! machine (a path, `file://`, a loopback server) may be used by anyone.

use crate::detect::{is_local_channel, EnvSpec};
use crate::plan::PlanError;
use crate::settings::Settings;

/// The public hosts a remote repository may use when the site lists no sources.
pub const PUBLIC: &[&str] = &[
    "https://conda.anaconda.org/",
    "https://repo.anaconda.com/",
    "https://pypi.org/simple",
    "https://files.pythonhosted.org/",
];

/// One source as a repository names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// Where it is named (`binder/environment.yml`, `requirements.txt: --index-url ...`).
    pub place: String,
    /// A channel name, a URL, a path, or a host (`--trusted-host`).
    pub value: String,
    /// Whether `value` is a host that loses TLS verification (`--trusted-host`).
    pub trusted_host: bool,
}

/// Every package source the spec names, besides the site's own.
pub fn named(spec: &EnvSpec) -> Vec<Named> {
    let mut out = Vec::new();
    let channel_file = spec
        .files
        .iter()
        .find(|f| {
            f.ends_with("environment.yml")
                || f.ends_with("environment.yaml")
                || f.ends_with("pixi.toml")
        })
        .cloned()
        .unwrap_or_default();
    let channels = spec
        .conda
        .iter()
        .chain(spec.parsed.pixi.iter())
        .flat_map(|c| c.channels.iter());
    for channel in channels.filter(|c| c.as_str() != "nodefaults") {
        out.push(Named {
            place: format!("{channel_file}: channel {channel}"),
            value: channel.clone(),
            trusted_host: false,
        });
    }
    // Options, as `file: line`; local channels were recorded the same way.
    for source in &spec.package_sources {
        let line = source.split_once(": ").map_or(source.as_str(), |(_, l)| l);
        if line.starts_with("channel ") {
            continue; // Among the channels above.
        }
        let value = line
            .split_once(['=', ' ', '\t'])
            .map_or("", |(_, v)| v)
            .trim()
            .to_string();
        out.push(Named {
            place: source.clone(),
            value,
            trusted_host: line.starts_with("--trusted-host"),
        });
    }
    let lock = spec
        .lock
        .as_ref()
        .map(|l| l.file.clone())
        .unwrap_or_default();
    for url in spec
        .parsed
        .locked
        .iter()
        .map(|p| &p.url)
        .chain(spec.parsed.lock_urls.iter())
    {
        out.push(Named {
            place: format!("{lock}: {url}"),
            value: url.clone(),
            trusted_host: false,
        });
    }
    out
}

/// `host:port` of a URL (default ports by scheme), lower case; `None` for paths.
pub fn host_port(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str()?.to_ascii_lowercase();
    let port = parsed.port_or_known_default()?;
    Some(format!(
        "{}:{port}",
        host.trim_start_matches('[').trim_end_matches(']')
    ))
}

/// Whether a source is on this machine: a path, `file:`, or a loopback server.
pub fn is_local(value: &str) -> bool {
    is_local_channel(value)
}

/// The URL prefixes and channel names the site allows.
fn allowed(settings: &Settings) -> Vec<String> {
    let mut list: Vec<String> = if settings.package_sources.is_empty() {
        PUBLIC.iter().map(|s| s.to_string()).collect()
    } else {
        settings.package_sources.clone()
    };
    // The site's own configuration is always allowed; by default every channel name too
    // (it resolves under the site's channel alias).
    list.extend(settings.conda.channels.iter().cloned());
    if settings.package_sources.is_empty() {
        list.push(settings.conda.channel_alias.clone());
    }
    for (from, to) in &settings.conda.mirrors {
        list.push(from.clone());
        list.push(to.clone());
    }
    list.extend(settings.pip.index_url.iter().cloned());
    list.extend(settings.pip.find_links.iter().cloned());
    list
}

/// The `host:port` destinations a sandboxed step may reach: the hosts of the site's
/// package sources, and of those `spec` names (already checked by [`check`]).
pub fn allowed_hosts(spec: &EnvSpec, settings: &Settings) -> Vec<String> {
    let alias = settings.conda.channel_alias.trim_end_matches('/');
    let mut hosts: Vec<String> = allowed(settings)
        .into_iter()
        .chain(named(spec).into_iter().map(|n| n.value))
        .chain(std::iter::once(alias.to_string()))
        .filter_map(|entry| {
            let url = if entry.contains("://") {
                entry
            } else {
                format!("{alias}/{entry}")
            };
            host_port(&url)
        })
        .collect();
    // The public hosts' downloads live on their CDNs' names.
    if settings.package_sources.is_empty() {
        hosts.push("files.pythonhosted.org:443".into());
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

/// Whether `value` (a URL or channel name) is covered by an allow-list entry: the same
/// name, or a URL under the entry's URL at a path boundary.
fn covered(value: &str, entry: &str, channel_alias: &str) -> bool {
    let value = value.trim().trim_end_matches('/');
    let entry = entry.trim().trim_end_matches('/');
    if entry.is_empty() || value.is_empty() {
        return false;
    }
    if !value.contains("://") {
        // A channel name: listed by name, or under an allowed URL through the alias.
        let name = value.split('/').next().unwrap_or(value);
        if entry == value || entry == name {
            return true;
        }
        let alias = channel_alias.trim_end_matches('/');
        return !alias.is_empty() && covered(&format!("{alias}/{value}"), entry, "");
    }
    let (value, entry) = (lower_origin(value), lower_origin(entry));
    value == entry || value.starts_with(&format!("{entry}/"))
}

/// A URL with its scheme and host lower-cased (paths are case-sensitive).
fn lower_origin(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            format!(
                "{}://{}{path}",
                scheme.to_ascii_lowercase(),
                host.to_ascii_lowercase()
            )
        }
        None => url.to_string(),
    }
}

/// Refuse the sources a build of `spec` may not use; `local_repository` is whether the
/// repository is on this machine (the user's own).
pub fn check(spec: &EnvSpec, settings: &Settings, local_repository: bool) -> Result<(), PlanError> {
    let named = named(spec);
    let mut local: Vec<&Named> = named.iter().filter(|n| is_local(&n.value)).collect();
    let images: Vec<Named> = spec
        .parsed
        .images
        .iter()
        .filter_map(|image| {
            crate::detect::docker::local_image(image).map(|why| Named {
                place: format!("Dockerfile: image {image} ({why})"),
                value: image.clone(),
                trusted_host: false,
            })
        })
        .collect();
    local.extend(images.iter());
    if !settings.local_sources && !local.is_empty() {
        return Err(PlanError::LocalSources {
            sources: join(&local),
        });
    }
    if local_repository {
        return Ok(());
    }
    let allowed = allowed(settings);
    let refused: Vec<&Named> = named
        .iter()
        .filter(|n| {
            n.trusted_host
                || is_local(&n.value)
                || !allowed
                    .iter()
                    .any(|entry| covered(&n.value, entry, &settings.conda.channel_alias))
        })
        .collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(PlanError::RepositorySources {
            sources: join(&refused),
        })
    }
}

fn join(sources: &[&Named]) -> String {
    let places: Vec<String> = sources
        .iter()
        .take(5)
        .map(|n| crate::source::redact(&n.place))
        .collect();
    let more = sources.len().saturating_sub(places.len());
    if more > 0 {
        format!("{} (and {more} more)", places.join("; "))
    } else {
        places.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_is_at_path_boundaries_and_names_go_through_the_alias() {
        let alias = "https://conda.anaconda.org";
        assert!(covered(
            "https://pypi.org/simple",
            "https://pypi.org/simple",
            alias
        ));
        assert!(covered(
            "https://PyPI.org/simple/",
            "https://pypi.org/simple",
            alias
        ));
        assert!(!covered(
            "https://pypi.org.evil.example/simple",
            "https://pypi.org",
            alias
        ));
        assert!(!covered(
            "https://pypi.org/simplex",
            "https://pypi.org/simple",
            alias
        ));
        assert!(covered("conda-forge", "https://conda.anaconda.org/", alias));
        assert!(covered("conda-forge/label/dev", "conda-forge", alias));
        assert!(!covered(
            "conda-forge",
            "https://mirror.example/conda",
            alias
        ));
        assert!(!covered(
            "http://169.254.169.254/latest",
            "https://conda.anaconda.org/",
            alias
        ));
    }
}
