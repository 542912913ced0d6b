//! Archived records as sources: a DOI (`doi:10.x/y`, `https://doi.org/10.x/y`), a
//! provider's record (`zenodo/<doi>`, `figshare/<doi>`, `dataverse/<doi>`,
//! `hydroshare/<id>`, `ckan/<dataset url>`) or a SWHID, downloaded over HTTP into the
//! user's cache.
//!
//! A record resolves to an immutable identity before anything is downloaded, as
//! BinderHub's `get_resolved_ref` does: a DOI through the resolver's handle API
//! (`<doi-resolver>/api/handles/<doi>`) to the provider's page, and that to the record in
//! one version (`zenodo-<record id>`, `figshare-<id>.v<n>`, `dataverse-<id>.v<major>.<minor>`,
//! `hydroshare-<id>.v<modified epoch>`, `ckan-<dataset>.v<modified epoch>`,
//! `swh-<directory hash>`). Every file whose provider publishes a checksum (md5, SHA-1,
//! SHA-256, SHA-512) is downloaded once into a cache keyed by it
//! (`cache/u<uid>/downloads/<algorithm>-<hex>`) and verified: a mismatch is an error naming
//! the file. HydroShare's bags are verified against their BagIt manifest, Software
//! Heritage's bundles against the directory's own hash; a CKAN resource without a
//! published hash is the one thing not verified, and the build warns so. The record's tree
//! is then assembled; a record that is a single archive is unpacked one level, as
//! repo2docker does, with [`crate::source::archive`]'s rules for hostile archives.
//!
//! Requests go through [`crate::http`] (rustls, the site's CA bundle, the proxy
//! variables, timeouts), with retries and backoff on 5xx, 429 and no answer. The URLs a
//! provider's answers name must be on the provider's own hosts, and only the configured
//! Dataverse installations and CKAN sites are fetched from.

mod checksum;
mod ckan;
mod dataverse;
mod fetch;
mod figshare;
mod hydroshare;
mod swh;
mod zenodo;

use std::time::Duration;

use serde_json::Value;

use crate::events::{Phase, Reporter, ReporterExt};
use crate::http::{self, HttpError};
use crate::settings::Settings;
use crate::source::spec::RecordProvider;
use crate::source::{Checkout, Identity, SourceError};

use checksum::Checksum;

const METADATA_TIMEOUT: Duration = Duration::from_secs(60);

/// A file of a record, as its provider lists it.
#[derive(Debug, Clone)]
struct RecordFile {
    /// Its path in the record (checked: relative, no `..`).
    path: String,
    /// The checksum the provider publishes; `None` only where a provider may publish
    /// none (CKAN).
    checksum: Option<Checksum>,
    /// Its size in bytes, when published.
    size: Option<u64>,
    /// Where to download it.
    url: String,
}

/// How a record's downloads become its tree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// The files as listed; a record of one archive is unpacked one level.
    Files,
    /// One HydroShare bag (a BagIt zip): its manifest verifies the payload, and
    /// `<resource>/data/contents` is the tree.
    Bag { resource: String },
    /// One Software Heritage vault bundle (a tar.gz of `<hash>/`), verified against the
    /// directory's hash, which is its tree.
    SwhDirectory { hash: String },
}

/// A resolved record: who it is, in which version, and what it holds.
struct Resolved {
    provider: &'static str,
    /// The record in one version (`<id>.v<n>`); `<provider>-<id>` is its name.
    id: String,
    page: String,
    files: Vec<RecordFile>,
    layout: Layout,
}

impl Resolved {
    fn name(&self) -> String {
        format!("{}-{}", self.provider, self.id)
    }
}

/// Which record a spec names (not yet in a version).
enum Found {
    Zenodo { id: String },
    Figshare { id: String, version: Option<u64> },
    Dataverse { site: String, persistent_id: String },
    HydroShare { id: String },
    Ckan { dataset: ckan::Dataset },
    Swh { swhid: String },
}

/// The record `id` of `provider` names, or `None` when its DOI does not exist.
fn locate(
    provider: RecordProvider,
    id: &str,
    settings: &Settings,
) -> Result<Option<Found>, SourceError> {
    match provider {
        RecordProvider::HydroShare => return Ok(Some(Found::HydroShare { id: id.to_string() })),
        RecordProvider::Ckan => {
            return ckan::locate(id, settings).map(|dataset| Some(Found::Ckan { dataset }))
        }
        RecordProvider::Swh => {
            return Ok(Some(Found::Swh {
                swhid: id.to_string(),
            }))
        }
        RecordProvider::Doi
        | RecordProvider::Zenodo
        | RecordProvider::Figshare
        | RecordProvider::Dataverse => {}
    }
    let page = match resolve_doi(settings, id) {
        Ok(page) => page,
        Err(SourceError::Record { message, .. }) if message.contains("does not exist") => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let records = &settings.records;
    let found = zenodo::record_id(&page, records.zenodo())
        .map(|id| Found::Zenodo { id })
        .or_else(|| {
            figshare::article(&page, records.figshare())
                .map(|(id, version)| Found::Figshare { id, version })
        })
        .or_else(|| {
            dataverse::dataset(&page, &records.dataverse()).map(|(site, persistent_id)| {
                Found::Dataverse {
                    site,
                    persistent_id,
                }
            })
        })
        .or_else(|| {
            hydroshare::resource(&page, records.hydroshare()).map(|id| Found::HydroShare { id })
        });
    match (provider, found) {
        (RecordProvider::Doi, Some(found))
        | (RecordProvider::Zenodo, Some(found @ Found::Zenodo { .. }))
        | (RecordProvider::Figshare, Some(found @ Found::Figshare { .. }))
        | (RecordProvider::Dataverse, Some(found @ Found::Dataverse { .. })) => Ok(Some(found)),
        (RecordProvider::Doi, None) => Err(SourceError::Unsupported {
            spec: format!("doi:{id} (resolves to {page})"),
            provider: host_of(&page),
        }),
        (provider, _) => Err(record_error(
            provider.display(),
            format!(
                "the DOI {id} resolves to {page}, which is not a {} record{}",
                provider.display(),
                if provider == RecordProvider::Dataverse {
                    " (add its installation to [records] dataverse if it is one)"
                } else {
                    ""
                }
            ),
        )),
    }
}

/// The record `found` in its version now, with its files.
fn describe(
    found: Found,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> Result<Resolved, SourceError> {
    match found {
        Found::Zenodo { id } => zenodo::record(settings, &id, reporter),
        Found::Figshare { id, version } => {
            let version = match version {
                Some(version) => version,
                None => figshare::latest(settings, &id)?,
            };
            figshare::record(settings, &id, version, reporter)
        }
        Found::Dataverse {
            site,
            persistent_id,
        } => dataverse::record(settings, &site, &persistent_id, reporter),
        Found::HydroShare { id } => hydroshare::record(settings, &id, reporter),
        Found::Ckan { dataset } => ckan::record(settings, &dataset, reporter),
        Found::Swh { swhid } => swh::record(settings, &swhid, reporter),
    }
}

/// Reports nothing: resolving is quiet.
struct Quiet;

impl Reporter for Quiet {
    fn report(&self, _event: crate::events::Event) {}
}

/// What the record `id` of `provider` is now (`zenodo-<record id>`,
/// `figshare-<article id>.v<version>`, ...: the launch service's "commit"), or `None`
/// when its DOI does not exist.
pub fn resolve(
    provider: RecordProvider,
    id: &str,
    settings: &Settings,
) -> Result<Option<String>, SourceError> {
    match locate(provider, id, settings)? {
        Some(found) => Ok(Some(describe(found, settings, &Quiet)?.name())),
        None => Ok(None),
    }
}

/// Get a checkout of the record `id` of `provider`; with `expected`, the record must
/// still be that one ([`resolve`]'s answer).
pub fn checkout(
    provider: RecordProvider,
    id: &str,
    expected: Option<&str>,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> Result<Checkout, SourceError> {
    reporter.phase(Phase::Fetching, format!("Resolving {id}"));
    let found = locate(provider, id, settings)?.ok_or_else(|| {
        record_error(
            "the DOI resolver",
            format!(
                "the DOI {id} does not exist ({} does not know it)",
                settings.records.doi_resolver()
            ),
        )
    })?;
    let resolved = describe(found, settings, reporter)?;
    let now = resolved.name();
    if let Some(expected) = expected.filter(|e| *e != now) {
        return Err(record_error(
            provider.display(),
            format!("{id} now resolves to {now}, not {expected} (a new version was published)"),
        ));
    }
    let cache = crate::store::user_cache_at(&settings.store);
    let tree = fetch::assemble(&resolved, &cache, settings, reporter)?;
    Ok(Checkout::new(
        tree,
        Identity {
            kind: "record",
            origin: resolved.page.clone(),
            reference: None,
            commit: None,
            content_digest: Some(listing_digest(&resolved)),
            dirty: false,
        },
        now,
    ))
}

fn record_error(provider: &str, message: String) -> SourceError {
    SourceError::Record {
        provider: provider.to_string(),
        message: crate::printer::sanitize_line(&message),
    }
}

fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "this DOI's host".into())
}

/// GET a JSON document from `provider`, with retries.
fn get_json(settings: &Settings, provider: &str, url: &str) -> Result<Value, SourceError> {
    let response = http::retry(
        || http::get(settings, url, Some("application/json"), METADATA_TIMEOUT),
        HttpError::is_transient,
    )
    .map_err(|e| match e {
        HttpError::Status { status: 404, .. } => record_error(
            provider,
            format!("{} was not found (HTTP 404)", crate::source::redact(url)),
        ),
        other => record_error(provider, format!("{provider} did not answer: {other}")),
    })?;
    serde_json::from_slice(&response.body).map_err(|e| {
        record_error(
            provider,
            format!(
                "{} is not the JSON {provider} sends: {e}",
                crate::source::redact(url)
            ),
        )
    })
}

/// The URL a DOI names, from the resolver's handle API (`values[].type == "URL"`).
fn resolve_doi(settings: &Settings, doi: &str) -> Result<String, SourceError> {
    let resolver = settings.records.doi_resolver();
    let url = format!("{resolver}/api/handles/{doi}");
    let document = get_json(settings, "the DOI resolver", &url).map_err(|e| match e {
        SourceError::Record { message, .. } if message.contains("HTTP 404") => record_error(
            "the DOI resolver",
            format!("the DOI {doi} does not exist ({resolver} does not know it)"),
        ),
        other => other,
    })?;
    document["values"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["type"] == "URL")
        .and_then(|v| v["data"]["value"].as_str())
        .map(str::to_string)
        .ok_or_else(|| record_error("the DOI resolver", format!("the DOI {doi} names no URL")))
}

/// Seconds since the Unix epoch of a provider's modification date, the fraction dropped as
/// repo2docker does: RFC 3339 with its offset (`2019-09-25T16:09:17.006Z`, `...+02:00`), or
/// without one as UTC (Python's `isoformat()`: `2024-02-27T14:15:54.573058`, and no
/// fraction when it is 0).
fn epoch(date: &str) -> Option<i64> {
    let date = date.trim();
    // A four-digit year: chrono would read `24-02-27` as the year 24.
    if date.as_bytes().get(4) != Some(&b'-') {
        return None;
    }
    if let Ok(zoned) = chrono::DateTime::parse_from_rfc3339(date) {
        return Some(zoned.timestamp());
    }
    chrono::NaiveDateTime::parse_from_str(date, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .filter(|_| !date.ends_with('.'))
        .map(|naive| naive.and_utc().timestamp())
}

/// Whether `url` is on the same scheme, host and port as `base`.
fn same_origin(url: &str, base: &str) -> bool {
    match (url::Url::parse(url), url::Url::parse(base)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// A listed file's path and download URL must be safe, and its checksum published.
fn check_file(
    provider: &str,
    record: &str,
    file: &RecordFile,
    allowed: &[String],
) -> Result<(), SourceError> {
    let path = &file.path;
    if !safe_record_path(path) {
        return Err(record_error(
            provider,
            format!("{record} names a file `{path}` that is not a plain relative path"),
        ));
    }
    if file.checksum.is_none() && provider != "CKAN" {
        return Err(record_error(
            provider,
            format!("{record} publishes no checksum (md5, SHA-1, SHA-256 or SHA-512) for {path}"),
        ));
    }
    if !allowed.iter().any(|base| same_origin(&file.url, base)) {
        return Err(record_error(
            provider,
            format!(
                "{record}'s file {path} is at {}, not on {}",
                file.url,
                allowed.join(" or ")
            ),
        ));
    }
    Ok(())
}

/// A record's file path: relative, `/`-separated, no empty, `.` or `..` parts.
fn safe_record_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

/// A digest of the record's listing (its name, layout, paths and checksums; the URL of a
/// file without one): its content's identity.
fn listing_digest(resolved: &Resolved) -> String {
    use sha2::Digest as _;
    let mut lines: Vec<String> = resolved
        .files
        .iter()
        .map(|f| match &f.checksum {
            Some(checksum) => format!("{} {checksum}\n", f.path),
            None => format!("{} url:{} size:{:?}\n", f.path, f.url, f.size),
        })
        .collect();
    lines.sort();
    let mut hasher = sha2::Sha256::new();
    if resolved.layout != Layout::Files {
        hasher.update(format!("{} {:?}\n", resolved.name(), resolved.layout).as_bytes());
    }
    for line in lines {
        hasher.update(line.as_bytes());
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_paths_stay_inside() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a\\b",
            "./a",
        ] {
            assert!(!safe_record_path(bad), "{bad}");
        }
        for good in ["binder/requirements.txt", "code.zip", "a.b/c"] {
            assert!(safe_record_path(good), "{good}");
        }
    }

    #[test]
    fn modification_dates_become_unix_times_as_repo2docker_reads_them() {
        // date -u -d 2019-09-25T16:09:17 +%s
        for date in [
            "2019-09-25T16:09:17.006152Z",
            "2019-09-25T16:09:17Z",
            "2019-09-25T16:09:17",
            "2019-09-25T16:09:17.5+00:00",
            "2019-09-25T18:09:17+02:00",
        ] {
            assert_eq!(epoch(date), Some(1_569_427_757), "{date}");
        }
        // repo2docker's CKAN test: 2024-02-27T14:15:54.573058 is 1709043354.
        assert_eq!(epoch("2024-02-27T14:15:54.573058"), Some(1_709_043_354));
        assert_eq!(epoch("1970-01-01T00:00:00.000001"), Some(0));
        assert_eq!(epoch("2024-02-29T23:59:59.5Z"), Some(1_709_251_199));
        for bad in [
            "",
            "2019-09-25",
            "2019-13-01T00:00:00Z",
            "2023-02-29T00:00:00",
            "2019-09-25T24:00:00Z",
            "2019-09-25T16:09:17.Z",
            "2024-02-27T14:15:54.",
            "2019-09-25T16:09:17 UTC",
            "2019-09-25T16:09:1x",
            "24-02-27T14:15:54",
        ] {
            assert_eq!(epoch(bad), None, "{bad}");
        }
    }

    #[test]
    fn origins_must_match() {
        assert!(same_origin(
            "http://127.0.0.1:5/api/x",
            "http://127.0.0.1:5"
        ));
        assert!(!same_origin(
            "http://127.0.0.1:6/api/x",
            "http://127.0.0.1:5"
        ));
        assert!(!same_origin("https://evil.org/x", "https://zenodo.org"));
    }
}
