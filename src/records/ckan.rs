//! CKAN: a dataset of a configured site, in the version its last modification names (or
//! one activity's snapshot of it), its resources downloaded from the site itself.
//!
//! As repo2docker's CKAN provider: the site (scheme, host, port and any prefix before
//! `/dataset/`) must answer `api/3/action/status_show`; the dataset comes from
//! `package_show?id=<name>`, or with an activity (`/history/<id>` or `?activity_id=<id>`)
//! from `activity_data_show?id=<activity>&object_type=package`, which holds the dataset as
//! it was then. Unlike repo2docker, only the sites in `[records] ckan` are fetched from (a
//! launch link names any URL), resources linking elsewhere are left out with a warning,
//! and a resource's `hash` (free-form: `md5:<hex>`, `sha256:<hex>` or bare hex) verifies
//! its download when it is usable; the others are downloaded unverified, with a warning.

use std::collections::BTreeSet;

use serde_json::Value;

use super::checksum::Checksum;
use super::{check_file, epoch, get_json, record_error, same_origin, Layout, RecordFile, Resolved};
use crate::events::{Phase, Reporter, ReporterExt};
use crate::settings::Settings;
use crate::source::SourceError;

const CKAN: &str = "CKAN";

/// A CKAN dataset a spec names.
#[derive(Debug, Clone)]
pub(super) struct Dataset {
    /// The dataset URL as given.
    pub(super) url: String,
    /// The site: `scheme://host[:port][/prefix]`, one of `[records] ckan`.
    site: String,
    /// The dataset's name or id, as the URL gives it.
    name: String,
    /// The activity whose snapshot of the dataset is wanted.
    activity: Option<String>,
}

/// The dataset the URL `url` names, on a configured CKAN site that answers as CKAN does.
pub(super) fn locate(url: &str, settings: &Settings) -> Result<Dataset, SourceError> {
    let (site, name, activity) = split(url).ok_or_else(|| {
        record_error(
            CKAN,
            format!("{url} is not a CKAN dataset URL (<site>/dataset/<name>[/history/<activity>])"),
        )
    })?;
    let sites = settings.records.ckan();
    if !sites.iter().any(|s| normalize(s).as_deref() == Some(&site)) {
        return Err(record_error(
            CKAN,
            format!(
                "{site} is not one of the configured CKAN sites ({}); add it to [records] ckan to build its datasets",
                sites.join(", ")
            ),
        ));
    }
    let status_url = format!("{site}/api/3/action/status_show");
    let status = get_json(settings, CKAN, &status_url).map_err(|e| match e {
        SourceError::Record { message, .. } if message.contains("HTTP 404") => record_error(
            CKAN,
            format!("{site} does not answer as a CKAN site does ({status_url} answered HTTP 404)"),
        ),
        SourceError::Record { message, .. } if message.contains("is not the JSON") => record_error(
            CKAN,
            format!("{site} does not answer as a CKAN site does ({message})"),
        ),
        other => other,
    })?;
    if status["success"] != true || !status["result"].is_object() {
        return Err(record_error(
            CKAN,
            format!("{site} does not answer as a CKAN site does ({status_url} did not succeed)"),
        ));
    }
    Ok(Dataset {
        url: url.to_string(),
        site,
        name,
        activity,
    })
}

/// `dataset` in its current version (or its activity's), with its resources.
pub(super) fn record(
    settings: &Settings,
    dataset: &Dataset,
    reporter: &dyn Reporter,
) -> Result<Resolved, SourceError> {
    let Dataset {
        site,
        name,
        activity,
        ..
    } = dataset;
    let api = format!("{site}/api/3/action");
    let (url, what) = match activity {
        Some(activity) => (
            format!("{api}/activity_data_show?id={activity}&object_type=package"),
            format!("the dataset {name} as of activity {activity}"),
        ),
        None => (
            format!("{api}/package_show?id={name}"),
            format!("the dataset {name}"),
        ),
    };
    reporter.phase(Phase::Fetching, format!("Fetching CKAN {what} from {site}"));
    let missing = |detail: &str| {
        record_error(
            CKAN,
            format!("{what} does not exist on {site} or is not public ({detail})"),
        )
    };
    let answer = get_json(settings, CKAN, &url).map_err(|e| match e {
        SourceError::Record { message, .. } if message.contains("HTTP 404") => missing("HTTP 404"),
        SourceError::Record { message, .. } if message.contains("HTTP 403") => missing("HTTP 403"),
        other => other,
    })?;
    if answer["success"] != true {
        return Err(missing(
            answer["error"]["message"]
                .as_str()
                .unwrap_or("success: false"),
        ));
    }
    let package = &answer["result"];
    let package_name = package["name"]
        .as_str()
        .filter(|n| plain(n))
        .ok_or_else(|| record_error(CKAN, format!("{what} on {site} has no usable name")))?;
    let id = match activity {
        // An activity is a snapshot that never changes: its id is the version.
        Some(activity) => {
            if package["name"] != name.as_str() && package["id"] != name.as_str() {
                return Err(record_error(
                    CKAN,
                    format!("activity {activity} on {site} is not of the dataset {name}"),
                ));
            }
            format!("{package_name}.a{activity}")
        }
        None => {
            let modified = package["metadata_modified"].as_str().unwrap_or_default();
            let epoch = epoch(modified).ok_or_else(|| {
                record_error(
                    CKAN,
                    format!("{what} on {site} has no usable metadata_modified (`{modified}`)"),
                )
            })?;
            format!("{package_name}.v{epoch}")
        }
    };
    let files = resources(package, site, &what, reporter)?;
    Ok(Resolved {
        provider: "ckan",
        id,
        page: dataset.url.clone(),
        files,
        layout: Layout::Files,
    })
}

/// The downloadable resources of `package`: those with a URL on the site. A resource
/// linking elsewhere is left out and one without a usable hash is unverified, each with a
/// warning; a later resource with an earlier one's file name goes to `<resource id>/`.
fn resources(
    package: &Value,
    site: &str,
    what: &str,
    reporter: &dyn Reporter,
) -> Result<Vec<RecordFile>, SourceError> {
    let warn = |message: String| reporter.warning(crate::printer::sanitize_line(&message));
    let mut files: Vec<RecordFile> = Vec::new();
    let mut paths = BTreeSet::new();
    let mut elsewhere = 0;
    for resource in package["resources"].as_array().into_iter().flatten() {
        let url = resource["url"].as_str().unwrap_or_default().trim();
        if url.is_empty() {
            continue;
        }
        let id = resource["id"].as_str().unwrap_or_default();
        let mut path = file_name(url).unwrap_or_else(|| id.to_string());
        if !same_origin(url, site) {
            elsewhere += 1;
            warn(format!(
                "CKAN resource {path} of {what} links to {}, not a file on {site}: it is left out",
                crate::source::redact(url)
            ));
            continue;
        }
        if paths.contains(&path) && plain(id) {
            warn(format!(
                "{what} has several resources named {path}: resource {id}'s is {id}/{path}"
            ));
            path = format!("{id}/{path}");
        }
        if !paths.insert(path.clone()) {
            return Err(record_error(
                CKAN,
                format!("{what} has two resources named {path}"),
            ));
        }
        let size = resource["size"]
            .as_u64()
            .or_else(|| resource["size"].as_str().and_then(|s| s.parse().ok()));
        let file = RecordFile {
            path,
            checksum: resource["hash"].as_str().and_then(Checksum::parse),
            size,
            url: url.to_string(),
        };
        check_file(CKAN, what, &file, &[site.to_string()])?;
        files.push(file);
    }
    if files.is_empty() {
        let links = match elsewhere {
            0 => String::new(),
            n => format!(" ({n} linking elsewhere left out)"),
        };
        return Err(record_error(
            CKAN,
            format!("{what} on {site} has no resources to download{links}"),
        ));
    }
    for file in files.iter().filter(|f| f.checksum.is_none()) {
        warn(format!(
            "CKAN publishes no usable hash for {}: it is downloaded unverified",
            file.path
        ));
    }
    Ok(files)
}

/// A resource's file name: its URL's last path segment (decoded), when there is one and
/// it stays one segment.
fn file_name(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let last = parsed.path_segments()?.next_back()?;
    let name = percent_encoding::percent_decode_str(last)
        .decode_utf8_lossy()
        .into_owned();
    (!name.is_empty() && !name.contains(['/', '\\'])).then_some(name)
}

/// A dataset URL's site (`scheme://host[:port][/prefix]`), dataset name or id, and
/// activity (`/history/<id>` first, else `?activity_id=<id>`), as repo2docker reads them.
fn split(url: &str) -> Option<(String, String, Option<String>)> {
    let parsed = url::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return None;
    }
    let (prefix, rest) = parsed.path().split_once("/dataset/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let name = parts.first().copied().filter(|n| plain(n))?;
    let activity = match parts.iter().skip(1).position(|p| *p == "history") {
        Some(index) => Some(
            parts
                .get(index + 2)
                .copied()
                .filter(|a| plain(a))?
                .to_string(),
        ),
        None => match parsed.query_pairs().find(|(key, _)| key == "activity_id") {
            Some((_, value)) if value.is_empty() => None,
            Some((_, value)) if plain(&value) => Some(value.into_owned()),
            Some(_) => return None,
            None => None,
        },
    };
    let site = format!(
        "{}{}",
        parsed.origin().ascii_serialization(),
        prefix.trim_end_matches('/')
    );
    Some((site, name.to_string(), activity))
}

/// A configured site in the form [`split`] gives.
fn normalize(site: &str) -> Option<String> {
    let parsed = url::Url::parse(site).ok()?;
    Some(format!(
        "{}{}",
        parsed.origin().ascii_serialization(),
        parsed.path().trim_end_matches('/')
    ))
}

/// A CKAN name or id (letters, digits, `-` and `_`; at most 100): safe in a query.
fn plain(text: &str) -> bool {
    (1..=100).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_urls_split_into_site_name_and_activity() {
        let site = |s: &str| s.to_string();
        for (url, expected) in [
            (
                "http://demo.ckan.org/dataset/1234",
                (site("http://demo.ckan.org"), "1234", None),
            ),
            (
                "https://Data.Example.org:443/catalog/dataset/sample-1/",
                (site("https://data.example.org/catalog"), "sample-1", None),
            ),
            (
                "http://127.0.0.1:8080/dataset/1234?activity_id=5678",
                (site("http://127.0.0.1:8080"), "1234", Some("5678")),
            ),
            (
                "http://demo.ckan.org/dataset/1234/history/5678?activity_id=9",
                (site("http://demo.ckan.org"), "1234", Some("5678")),
            ),
            (
                "http://demo.ckan.org/dataset/1234/resource/abc",
                (site("http://demo.ckan.org"), "1234", None),
            ),
        ] {
            let (s, n, a) = split(url).unwrap_or_else(|| panic!("{url}"));
            assert_eq!(
                (s, n.as_str(), a.as_deref()),
                (expected.0, expected.1, expected.2),
                "{url}"
            );
        }
        for bad in [
            "http://demo.ckan.org/datasets/1234",
            "http://demo.ckan.org/dataset/",
            "http://demo.ckan.org/dataset/a%20b",
            "http://demo.ckan.org/dataset/1234/history/",
            "http://demo.ckan.org/dataset/1234?activity_id=x%26y%3D1",
            "ftp://demo.ckan.org/dataset/1234",
        ] {
            assert_eq!(split(bad), None, "{bad}");
        }
        assert_eq!(
            normalize("https://data.example.org/catalog/").as_deref(),
            Some("https://data.example.org/catalog")
        );
    }

    #[test]
    fn resource_file_names_are_their_urls_last_segment() {
        assert_eq!(
            file_name("http://x/dataset/a/resource/b/download/data%20set.csv?x=1").as_deref(),
            Some("data set.csv")
        );
        assert_eq!(file_name("http://x/dataset/a/"), None);
        assert_eq!(file_name("http://x/download/..%2F..%2Fetc"), None);
    }
}
