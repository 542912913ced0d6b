//! Archived records as sources: a DOI (`doi:10.x/y`, `https://doi.org/10.x/y`) or a
//! provider's record (`zenodo/<doi>`), downloaded over HTTP into the user's cache.
//!
//! A record resolves to an immutable identity before anything is downloaded, as
//! BinderHub's `get_resolved_ref` does: the DOI through the resolver's handle API
//! (`<doi-resolver>/api/handles/<doi>`) to the provider's page, and that to the record's
//! id (a Zenodo record id names one version; a concept DOI resolves to the newest). Every
//! file is downloaded once into a cache keyed by the checksum the provider publishes
//! (`cache/u<uid>/downloads/md5-<hex>`), and verified: a mismatch is an error naming the
//! file. The record's tree is then assembled from the cache; a record that is a single
//! archive is unpacked one level, as repo2docker does, with [`crate::source::archive`]'s
//! rules for hostile archives.
//!
//! Requests go through [`crate::http`] (rustls, the site's CA bundle, the proxy
//! variables, timeouts), with retries and backoff on 5xx, 429 and no answer. The URLs a
//! provider's answers name must be on the provider's own host.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::Digest as _;
use serde_json::Value;

use crate::events::{Phase, Reporter, ReporterExt};
use crate::http::{self, HttpError};
use crate::settings::Settings;
use crate::source::spec::RecordProvider;
use crate::source::{Checkout, Identity, SourceError};

const METADATA_TIMEOUT: Duration = Duration::from_secs(60);
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A file of a record, as its provider lists it.
#[derive(Debug, Clone)]
struct RecordFile {
    /// Its path in the record (checked: relative, no `..`).
    path: String,
    /// The md5 the provider publishes, in hex.
    md5: String,
    /// Its size in bytes, when published.
    size: Option<u64>,
    /// Where to download it.
    url: String,
}

/// A resolved record: who it is and what it holds.
struct Resolved {
    provider: &'static str,
    id: String,
    page: String,
    files: Vec<RecordFile>,
}

/// Which record a provider's page is.
enum Found {
    /// A Zenodo record id.
    Zenodo { id: String },
    /// A Figshare article, in a version when the page names one.
    Figshare { id: String, version: Option<u64> },
}

/// The record `page` (what `doi` resolves to) is, if `provider` can serve it.
fn locate(
    provider: RecordProvider,
    doi: &str,
    page: &str,
    settings: &Settings,
) -> Result<Found, SourceError> {
    let records = &settings.records;
    let found = zenodo_record_id(page, records.zenodo())
        .map(|id| Found::Zenodo { id })
        .or_else(|| {
            figshare_article(page, records.figshare())
                .map(|(id, version)| Found::Figshare { id, version })
        });
    match (provider, found) {
        (RecordProvider::Doi, Some(found))
        | (RecordProvider::Zenodo, Some(found @ Found::Zenodo { .. }))
        | (RecordProvider::Figshare, Some(found @ Found::Figshare { .. })) => Ok(found),
        (RecordProvider::Doi, None) => Err(SourceError::Unsupported {
            spec: format!("doi:{doi} (resolves to {page})"),
            provider: host_of(page),
        }),
        (provider, _) => Err(record_error(
            provider.display(),
            format!(
                "the DOI {doi} resolves to {page}, which is not a {} record",
                provider.display()
            ),
        )),
    }
}

/// What the record `doi` of `provider` is now: `zenodo-<record id>` or
/// `figshare-<article id>.v<version>` (the launch service's "commit"), or `None` when
/// the DOI does not exist.
pub fn resolve(
    provider: RecordProvider,
    doi: &str,
    settings: &Settings,
) -> Result<Option<String>, SourceError> {
    let page = match resolve_doi(settings, doi) {
        Ok(page) => page,
        Err(SourceError::Record { message, .. }) if message.contains("does not exist") => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    Ok(Some(match locate(provider, doi, &page, settings)? {
        Found::Zenodo { id } => format!("zenodo-{id}"),
        Found::Figshare { id, version } => {
            let version = match version {
                Some(version) => version,
                None => figshare_latest(settings, &id)?,
            };
            format!("figshare-{id}.v{version}")
        }
    }))
}

/// Get a checkout of the record `doi` from `provider`; with `expected`, the record must
/// still be that one ([`resolve`]'s answer).
pub fn checkout(
    provider: RecordProvider,
    doi: &str,
    expected: Option<&str>,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> Result<Checkout, SourceError> {
    reporter.phase(Phase::Fetching, format!("Resolving the DOI {doi}"));
    let page = resolve_doi(settings, doi)?;
    let resolved = match locate(provider, doi, &page, settings)? {
        Found::Zenodo { id } => zenodo_record(settings, &id, reporter)?,
        Found::Figshare { id, version } => {
            let version = match version {
                Some(version) => version,
                None => figshare_latest(settings, &id)?,
            };
            figshare_record(settings, &id, version, reporter)?
        }
    };
    let now = format!("{}-{}", resolved.provider, resolved.id);
    if let Some(expected) = expected.filter(|e| *e != now) {
        return Err(record_error(
            provider.display(),
            format!(
                "the DOI {doi} now resolves to {now}, not {expected} (a new version was published)"
            ),
        ));
    }
    let cache = crate::store::user_cache_at(&settings.store);
    let tree = assemble(&resolved, &cache, settings, reporter)?;
    let digest = listing_digest(&resolved.files);
    Ok(Checkout::new(
        tree,
        Identity {
            kind: "record",
            origin: resolved.page.clone(),
            reference: None,
            commit: None,
            content_digest: Some(digest),
            dirty: false,
        },
        format!("{}-{}", resolved.provider, resolved.id),
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

/// The record id of a Zenodo page URL (`<zenodo>/record/<id>`, `/records/<id>`,
/// `/doi/<...>zenodo.<id>`), as repo2docker reads it.
fn zenodo_record_id(page: &str, zenodo: &str) -> Option<String> {
    let rest = ["/record/", "/records/", "/doi/"]
        .iter()
        .find_map(|p| page.strip_prefix(&format!("{zenodo}{p}")))?;
    let last = rest.trim_end_matches('/').rsplit('/').next()?;
    let id = last.strip_prefix("zenodo.").unwrap_or(last);
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
}

/// Whether `url` is on the same scheme, host and port as `base`.
fn same_origin(url: &str, base: &str) -> bool {
    match (url::Url::parse(url), url::Url::parse(base)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// A Zenodo record's files (InvenioRDM's API: the record, then `links.files`).
fn zenodo_record(
    settings: &Settings,
    id: &str,
    reporter: &dyn Reporter,
) -> Result<Resolved, SourceError> {
    let zenodo = settings.records.zenodo();
    reporter.phase(Phase::Fetching, format!("Fetching Zenodo record {id}"));
    let record = get_json(settings, "Zenodo", &format!("{zenodo}/api/records/{id}"))?;
    let files_url = record["links"]["files"]
        .as_str()
        .ok_or_else(|| record_error("Zenodo", format!("record {id} lists no files link")))?;
    if !same_origin(files_url, zenodo) {
        return Err(record_error(
            "Zenodo",
            format!("record {id}'s files are at {files_url}, not on {zenodo}"),
        ));
    }
    let listing = get_json(settings, "Zenodo", files_url)?;
    let entries = listing["entries"]
        .as_array()
        .ok_or_else(|| record_error("Zenodo", format!("record {id}'s file list has no entries")))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry["key"].as_str().unwrap_or_default().to_string();
        let url = entry["links"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let md5 = entry["checksum"]
            .as_str()
            .and_then(|c| c.strip_prefix("md5:"))
            .unwrap_or_default()
            .to_ascii_lowercase();
        check_file(
            "Zenodo",
            &format!("record {id}"),
            &path,
            &md5,
            &url,
            &[zenodo.to_string()],
        )?;
        files.push(RecordFile {
            path,
            md5,
            size: entry["size"].as_u64(),
            url,
        });
    }
    if files.is_empty() {
        return Err(record_error("Zenodo", format!("record {id} has no files")));
    }
    Ok(Resolved {
        provider: "zenodo",
        id: id.to_string(),
        page: format!("{zenodo}/records/{id}"),
        files,
    })
}

/// A Figshare page's article id and version (`<figshare>/articles/[code/|dataset/|
/// software/]<slug>/<id>[/<version>]`), as repo2docker reads it.
fn figshare_article(page: &str, figshare: &str) -> Option<(String, Option<u64>)> {
    let rest = page.strip_prefix(&format!("{figshare}/articles/"))?;
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let parts = match parts.first() {
        Some(&("code" | "dataset" | "software")) => &parts[1..],
        _ => &parts[..],
    };
    let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    match parts {
        [_slug, id] if numeric(id) => Some((id.to_string(), None)),
        [_slug, id, version] if numeric(id) && numeric(version) => {
            Some((id.to_string(), version.parse().ok()))
        }
        _ => None,
    }
}

/// The newest version of Figshare article `id` (`/articles/<id>/versions`).
fn figshare_latest(settings: &Settings, id: &str) -> Result<u64, SourceError> {
    let api = settings.records.figshare_api();
    let versions = get_json(
        settings,
        "Figshare",
        &format!("{api}/articles/{id}/versions"),
    )?;
    versions
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["version"].as_u64())
        .max()
        .ok_or_else(|| record_error("Figshare", format!("article {id} lists no versions")))
}

/// A Figshare article's files in `version` (`/articles/<id>/versions/<version>`),
/// without link-only entries, as repo2docker fetches them.
fn figshare_record(
    settings: &Settings,
    id: &str,
    version: u64,
    reporter: &dyn Reporter,
) -> Result<Resolved, SourceError> {
    let records = &settings.records;
    let api = records.figshare_api();
    reporter.phase(
        Phase::Fetching,
        format!("Fetching Figshare article {id} in version {version}"),
    );
    let article = get_json(
        settings,
        "Figshare",
        &format!("{api}/articles/{id}/versions/{version}"),
    )?;
    let mut allowed = records.figshare_downloads();
    allowed.push(api.to_string());
    let mut files = Vec::new();
    for file in article["files"].as_array().into_iter().flatten() {
        if file["is_link_only"].as_bool().unwrap_or(false) {
            continue;
        }
        let path = file["name"].as_str().unwrap_or_default().to_string();
        let url = file["download_url"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let md5 = file["computed_md5"]
            .as_str()
            .filter(|m| !m.is_empty())
            .or_else(|| file["supplied_md5"].as_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        check_file(
            "Figshare",
            &format!("article {id}"),
            &path,
            &md5,
            &url,
            &allowed,
        )?;
        files.push(RecordFile {
            path,
            md5,
            size: file["size"].as_u64(),
            url,
        });
    }
    if files.is_empty() {
        return Err(record_error(
            "Figshare",
            format!("article {id} has no files"),
        ));
    }
    Ok(Resolved {
        provider: "figshare",
        id: format!("{id}.v{version}"),
        page: format!("{}/articles/{id}/{version}", records.figshare()),
        files,
    })
}

/// A listed file's path, checksum and download URL must be usable and safe.
fn check_file(
    provider: &str,
    record: &str,
    path: &str,
    md5: &str,
    url: &str,
    allowed: &[String],
) -> Result<(), SourceError> {
    if !safe_record_path(path) {
        return Err(record_error(
            provider,
            format!("{record} names a file `{path}` that is not a plain relative path"),
        ));
    }
    if md5.len() != 32 || !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(record_error(
            provider,
            format!("{record} publishes no md5 checksum for {path}"),
        ));
    }
    if !allowed.iter().any(|base| same_origin(url, base)) {
        return Err(record_error(
            provider,
            format!(
                "{record}'s file {path} is at {url}, not on {}",
                allowed.join(" or ")
            ),
        ));
    }
    Ok(())
}

/// `Downloading <path>: 12.3 of 45.6 MB`, with the fraction done when the size is known
/// (the terminal's bar shows the line; JSON clients get `progress`).
fn progress_event(path: &str, received: u64, size: Option<u64>) -> crate::events::Event {
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let mut event = crate::events::Event::new(
        Phase::Fetching,
        match size {
            Some(size) => format!(
                "Downloading {path}: {:.1} of {:.1} MB",
                mb(received),
                mb(size)
            ),
            None => format!("Downloading {path}: {:.1} MB", mb(received)),
        },
    );
    event.progress = size
        .filter(|s| *s > 0)
        .map(|s| (received as f64 / s as f64).min(1.0));
    event
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

/// A digest of the record's listing (paths and checksums): its content's identity.
fn listing_digest(files: &[RecordFile]) -> String {
    use sha2::Digest as _;
    let mut lines: Vec<String> = files
        .iter()
        .map(|f| format!("{} md5:{}\n", f.path, f.md5))
        .collect();
    lines.sort();
    let mut hasher = sha2::Sha256::new();
    for line in lines {
        hasher.update(line.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Download what the cache lacks, then build the record's tree from the cache.
fn assemble(
    resolved: &Resolved,
    cache: &Path,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> Result<PathBuf, SourceError> {
    let downloads = cache.join("downloads");
    fs_err::create_dir_all(&downloads)?;
    for file in &resolved.files {
        let cached = downloads.join(format!("md5-{}", file.md5));
        if cached.is_file() {
            continue;
        }
        let size = file
            .size
            .map(|s| format!(" ({:.1} MB)", s as f64 / 1e6))
            .unwrap_or_default();
        reporter.phase(Phase::Fetching, format!("Downloading {}{size}", file.path));
        download_verified(settings, file, &cached, reporter)?;
    }
    let trees = cache.join("records");
    fs_err::create_dir_all(&trees)?;
    let digest = listing_digest(&resolved.files);
    let tree = trees.join(format!(
        "{}-{}-{}",
        resolved.provider,
        resolved.id,
        &digest[..16]
    ));
    if tree.join(".hpcbinder-complete").is_file() {
        return Ok(tree.join("tree"));
    }
    // Assembled beside its final name, then renamed: never half there.
    let temp = trees.join(crate::store::temp_name(&format!(
        "{}-{}",
        resolved.provider, resolved.id
    )));
    let root = temp.join("tree");
    fs_err::create_dir_all(&root)?;
    for file in &resolved.files {
        let target = root.join(&file.path);
        if let Some(parent) = target.parent() {
            fs_err::create_dir_all(parent)?;
        }
        fs_err::copy(downloads.join(format!("md5-{}", file.md5)), &target)?;
    }
    if resolved.files.len() == 1 {
        let unpacked = crate::source::archive::unpack_single_archive(
            &root,
            &crate::source::archive::Limits::default(),
        );
        if let Err(e) = unpacked {
            let _ = fs_err::remove_dir_all(&temp);
            return Err(record_error(
                resolved.provider,
                format!("{}: {e}", resolved.files[0].path),
            ));
        }
    }
    fs_err::write(temp.join(".hpcbinder-complete"), b"")?;
    if let Err(e) = fs_err::rename(&temp, &tree) {
        let _ = fs_err::remove_dir_all(&temp);
        // Another process assembled it meanwhile.
        if !tree.join(".hpcbinder-complete").is_file() {
            return Err(e.into());
        }
    }
    reporter.phase(
        Phase::Fetching,
        format!(
            "Record {}-{} ready in {}",
            resolved.provider,
            resolved.id,
            tree.display()
        ),
    );
    Ok(tree.join("tree"))
}

/// Download `file` into `cached`, verifying its md5; nothing is left on a mismatch.
/// Progress of a download is reported at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

fn download_verified(
    settings: &Settings,
    file: &RecordFile,
    cached: &Path,
    reporter: &dyn Reporter,
) -> Result<(), SourceError> {
    let dir = cached.parent().unwrap_or(cached);
    let attempt = || -> Result<(tempfile::NamedTempFile, String), HttpError> {
        let mut temp =
            tempfile::NamedTempFile::new_in(dir).map_err(|e| HttpError::Unreachable {
                url: file.url.clone(),
                message: format!("cannot write the download: {e}"),
            })?;
        let mut hasher = md5::Md5::new();
        let handle = temp.as_file_mut();
        let (mut received, mut shown) = (0u64, std::time::Instant::now());
        let mut sink = |chunk: &[u8]| -> std::io::Result<()> {
            hasher.update(chunk);
            received += chunk.len() as u64;
            if shown.elapsed() >= PROGRESS_EVERY {
                shown = std::time::Instant::now();
                reporter.report(progress_event(&file.path, received, file.size));
            }
            handle.write_all(chunk)
        };
        http::download(settings, &file.url, READ_TIMEOUT, &mut sink)?;
        Ok((temp, hex::encode(hasher.finalize())))
    };
    let (temp, found) = http::retry(attempt, HttpError::is_transient).map_err(|e| {
        record_error(
            "the record's host",
            format!("could not download {}: {e}", file.path),
        )
    })?;
    if found != file.md5 {
        return Err(SourceError::Checksum {
            file: file.path.clone(),
            expected: format!("md5:{}", file.md5),
            found: format!("md5:{found}"),
        });
    }
    temp.persist(cached).map_err(|e| SourceError::Io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zenodo_pages_name_their_record() {
        let z = "https://zenodo.org";
        assert_eq!(
            zenodo_record_id("https://zenodo.org/record/3242074", z).as_deref(),
            Some("3242074")
        );
        assert_eq!(
            zenodo_record_id("https://zenodo.org/records/3242074/", z).as_deref(),
            Some("3242074")
        );
        assert_eq!(
            zenodo_record_id("https://zenodo.org/doi/10.5281/zenodo.3242074", z).as_deref(),
            Some("3242074")
        );
        assert_eq!(zenodo_record_id("https://evil.org/records/1", z), None);
        assert_eq!(
            zenodo_record_id("https://zenodo.org/records/1/../2x", z),
            None
        );
    }

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
    fn download_progress_says_how_far() {
        let event = progress_event("data.zip", 2_500_000, Some(10_000_000));
        assert_eq!(event.message, "Downloading data.zip: 2.5 of 10.0 MB\n");
        assert_eq!(event.progress, Some(0.25));
        assert_eq!(progress_event("x", 1, None).progress, None);
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
