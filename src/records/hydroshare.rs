//! HydroShare: a resource in the version its last modification names, as a BagIt bag.
//!
//! As repo2docker does: the resource's science metadata
//! (`<hydroshare>/hsapi/resource/<id>/scimeta/elements`) gives its `modified` date, whose
//! Unix time is the version (`hydroshare-<id>.v<epoch>`), and its bag
//! (`<hydroshare>/django_s3/download/bags/<id>.zip`) holds the files under
//! `<id>/data/contents/`. HydroShare builds a bag on demand: until it is ready the bag's URL
//! answers `200` with `{"bag_status": "Not ready", "task_id": ...}`, then a redirect to a
//! signed S3 URL of the zip. Every payload file is checked against the bag's manifests
//! (HydroShare writes `manifest-md5.txt` from S3's ETags, which for a file uploaded in
//! parts are not an md5: those files are checked for presence only, with a warning). The
//! tag manifest is not read: HydroShare writes fixed checksums into it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::checksum::Checksum;
use super::{epoch, get_json, record_error, safe_record_path, Layout, RecordFile, Resolved};
use crate::events::{Phase, Reporter, ReporterExt};
use crate::settings::Settings;
use crate::source::archive::{self, Format};
use crate::source::SourceError;

const PROVIDER: &str = "HydroShare";

/// A bag's "not ready" answer is a small JSON document; anything longer is not one.
const STATUS_BYTES: u64 = 64 << 10;

/// The payload manifests BagIt names, by algorithm.
const MANIFESTS: [&str; 4] = ["md5", "sha1", "sha256", "sha512"];

/// Whether `text` is a HydroShare resource id (32 hex digits).
fn is_resource_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The resource id of a HydroShare page (`<hydroshare>/resource/<32 hex>/`), over http or
/// https and with or without `www.` (a DOI `10.4211/hs.<id>` names such a page).
pub(super) fn resource(page: &str, hydroshare: &str) -> Option<String> {
    let (page, base) = (
        url::Url::parse(page).ok()?,
        url::Url::parse(hydroshare).ok()?,
    );
    let host = |u: &url::Url| {
        u.host_str()
            .map(|h| h.trim_start_matches("www.").to_ascii_lowercase())
    };
    let same_site = matches!(page.scheme(), "http" | "https")
        && page.username().is_empty()
        && page.password().is_none()
        && host(&page).is_some()
        && host(&page) == host(&base)
        && page.port() == base.port();
    if !same_site {
        return None;
    }
    let prefix = format!("{}/resource/", base.path().trim_end_matches('/'));
    let id = page.path().strip_prefix(&prefix)?;
    let id = id.strip_suffix('/').unwrap_or(id);
    is_resource_id(id).then(|| id.to_ascii_lowercase())
}

/// Resource `id` in its current version (its last modification), with its bag to
/// download. Metadata only: nothing is downloaded.
pub(super) fn record(
    settings: &Settings,
    id: &str,
    reporter: &dyn Reporter,
) -> Result<Resolved, SourceError> {
    let hydroshare = settings.records.hydroshare();
    if !is_resource_id(id) {
        return Err(record_error(
            PROVIDER,
            format!("`{id}` is not a HydroShare resource id (32 hex digits)"),
        ));
    }
    let id = id.to_ascii_lowercase();
    reporter.phase(
        Phase::Fetching,
        format!("Fetching HydroShare resource {id}"),
    );
    let url = format!("{hydroshare}/hsapi/resource/{id}/scimeta/elements");
    let elements = get_json(settings, PROVIDER, &url).map_err(|e| match e {
        SourceError::Record { message, .. } if message.contains("HTTP 404") => record_error(
            PROVIDER,
            format!("HydroShare has no resource {id}: {message}"),
        ),
        SourceError::Record { message, .. }
            if message.contains("HTTP 401") || message.contains("HTTP 403") =>
        {
            record_error(
                PROVIDER,
                format!("resource {id} is private or not shared with everyone ({message})"),
            )
        }
        other => other,
    })?;
    let modified = elements["dates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|date| date["type"] == "modified")
        .and_then(|date| date["start_date"].as_str())
        .ok_or_else(|| {
            record_error(
                PROVIDER,
                format!("resource {id}'s metadata names no modification date"),
            )
        })?;
    let version = epoch(modified).ok_or_else(|| {
        record_error(
            PROVIDER,
            format!("resource {id}'s modification date `{modified}` is not a date"),
        )
    })?;
    Ok(Resolved {
        provider: "hydroshare",
        id: format!("{id}.v{version}"),
        page: format!("{hydroshare}/resource/{id}/"),
        files: vec![RecordFile {
            path: format!("{id}.zip"),
            checksum: None,
            size: None,
            url: format!("{hydroshare}/django_s3/download/bags/{id}.zip"),
        }],
        layout: Layout::Bag { resource: id },
    })
}

/// Download the bag of `resolved` (waiting while HydroShare prepares it) into `temp`, and
/// unpack its payload (`<resource>/data/contents`) into `root`, verified against the
/// bag's manifest.
pub(super) fn fetch_bag(
    resolved: &Resolved,
    resource: &str,
    temp: &Path,
    root: &Path,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> Result<(), SourceError> {
    let bag_file = resolved.files.first().ok_or_else(|| {
        record_error(
            PROVIDER,
            format!("resource {resource} names no bag to download"),
        )
    })?;
    let zip = download_bag(bag_file, resource, temp, settings, reporter)?;
    reporter.phase(
        Phase::Fetching,
        format!("Checking the bag of HydroShare resource {resource} against its manifest"),
    );
    let scratch = temp.join("bag");
    archive::extract(&zip, Format::Zip, &scratch, &super::fetch::limits(settings)).map_err(
        |e| {
            record_error(
                PROVIDER,
                format!("the bag of resource {resource} ({}): {e}", bag_file.path),
            )
        },
    )?;
    let bag = scratch.join(resource);
    if !fs_err::symlink_metadata(&bag).is_ok_and(|m| m.is_dir()) {
        return Err(record_error(
            PROVIDER,
            format!("the bag of resource {resource} has no folder {resource}/"),
        ));
    }
    verify_bag(&bag, resource, reporter)?;
    let contents = bag.join("data").join("contents");
    if !fs_err::symlink_metadata(&contents).is_ok_and(|m| m.is_dir()) {
        return Err(record_error(
            PROVIDER,
            format!("resource {resource} has no files (its bag holds no data/contents)"),
        ));
    }
    for entry in fs_err::read_dir(&contents)? {
        let entry = entry?;
        fs_err::rename(entry.path(), root.join(entry.file_name()))?;
    }
    fs_err::remove_dir_all(&scratch)?;
    fs_err::remove_file(&zip)?;
    Ok(())
}

/// What the bag's URL answered.
enum BagAnswer {
    /// The zip itself.
    Zip,
    /// `{"bag_status": "Not ready", ...}`: HydroShare is building it.
    Preparing,
    /// Something else, its first bytes.
    Other(String),
}

/// Download the bag into `temp`, asking again (1 s, 2 s, 4 s ... at most 10 s apart) while
/// HydroShare prepares it, for at most `[records] prepare-timeout`.
fn download_bag(
    bag_file: &RecordFile,
    resource: &str,
    temp: &Path,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> Result<PathBuf, SourceError> {
    let into = temp.join(format!("{resource}.zip"));
    let mut patience = super::fetch::Patience::new(settings);
    loop {
        super::fetch::download_verified(settings, bag_file, &into, reporter).map_err(
            |e| match e {
                SourceError::Record { message, .. } => record_error(PROVIDER, message),
                other => other,
            },
        )?;
        match bag_answer(&into)? {
            BagAnswer::Zip => return Ok(into),
            BagAnswer::Preparing => fs_err::remove_file(&into)?,
            BagAnswer::Other(head) => {
                return Err(record_error(
                    PROVIDER,
                    format!(
                        "{} answered neither the bag of resource {resource} nor that it is being prepared: {head}",
                        bag_file.url
                    ),
                ))
            }
        }
        patience
            .wait(reporter, |seconds| {
                format!("HydroShare is preparing the bag of resource {resource}; asking again in {seconds} s")
            })
            .map_err(|timeout| {
                record_error(
                    PROVIDER,
                    format!(
                        "the bag of resource {resource} was not ready after {timeout} s ([records] prepare-timeout); HydroShare is still preparing it, try again later"
                    ),
                )
            })?;
    }
}

/// Whether the downloaded answer at `path` is the zip, the "not ready" status, or else.
fn bag_answer(path: &Path) -> Result<BagAnswer, SourceError> {
    let mut head = Vec::new();
    fs_err::File::open(path)?
        .take(STATUS_BYTES + 1)
        .read_to_end(&mut head)?;
    if Format::from_magic(&head) == Some(Format::Zip) {
        return Ok(BagAnswer::Zip);
    }
    if let Ok(status) = serde_json::from_slice::<serde_json::Value>(&head) {
        let state = status["bag_status"].as_str().or(status["status"].as_str());
        if state.is_some_and(|s| s.eq_ignore_ascii_case("not ready")) {
            return Ok(BagAnswer::Preparing);
        }
    }
    let text = String::from_utf8_lossy(&head[..head.len().min(120)]);
    Ok(BagAnswer::Other(
        text.split_whitespace().collect::<Vec<_>>().join(" "),
    ))
}

/// What a manifest line expects of a payload file.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Digest(Checksum),
    /// An S3 ETag of an object uploaded in parts (`<md5 of the parts' md5s>-<parts>`),
    /// which HydroShare writes into `manifest-md5.txt`: not a checksum of the file.
    MultipartEtag(String),
}

/// The entries of a payload manifest (`<checksum> <whitespace> data/<path>` per line,
/// `%0D`, `%0A` and `%25` decoded), or what is wrong with its line.
fn parse_manifest(text: &str, algorithm: &str) -> Result<BTreeMap<String, Expected>, String> {
    let mut entries = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let at = |what: String| format!("line {}: {what}", number + 1);
        let Some((digest, path)) = line.split_once([' ', '\t']) else {
            return Err(at("expected `<checksum>  data/<path>`".into()));
        };
        let path = decode_path(path.trim_start_matches([' ', '\t']));
        if !path.starts_with("data/") || !safe_record_path(&path) {
            return Err(at(format!("`{path}` is not a path under data/")));
        }
        let expected = match Checksum::new(algorithm, digest) {
            Some(checksum) => Expected::Digest(checksum),
            None if algorithm == "md5" && is_multipart_etag(digest) => {
                Expected::MultipartEtag(digest.to_ascii_lowercase())
            }
            None => return Err(at(format!("`{digest}` is not a {algorithm} checksum"))),
        };
        if entries.insert(path.clone(), expected).is_some() {
            return Err(at(format!("{path} is listed twice")));
        }
    }
    Ok(entries)
}

/// `<32 hex>-<parts>`.
fn is_multipart_etag(digest: &str) -> bool {
    digest.split_once('-').is_some_and(|(md5, parts)| {
        md5.len() == 32
            && md5.bytes().all(|b| b.is_ascii_hexdigit())
            && !parts.is_empty()
            && parts.bytes().all(|b| b.is_ascii_digit())
    })
}

/// BagIt's escapes in manifest paths: `%0D`, `%0A`, `%25`.
fn decode_path(path: &str) -> String {
    let mut decoded = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        decoded.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3).map(str::to_ascii_uppercase);
        let byte = match code.as_deref() {
            Some("0D") => Some('\r'),
            Some("0A") => Some('\n'),
            Some("25") => Some('%'),
            _ => None,
        };
        match byte {
            Some(c) => {
                decoded.push(c);
                rest = &rest[at + 3..];
            }
            None => {
                decoded.push('%');
                rest = &rest[at + 1..];
            }
        }
    }
    decoded.push_str(rest);
    decoded
}

/// Every payload file (under `data/`) of the unpacked bag `bag`, `/`-separated.
fn payload_files(bag: &Path, resource: &str) -> Result<BTreeSet<String>, SourceError> {
    let mut files = BTreeSet::new();
    let data = bag.join("data");
    match fs_err::symlink_metadata(&data) {
        Err(_) => return Ok(files),
        Ok(meta) if !meta.is_dir() => {
            return Err(record_error(
                PROVIDER,
                format!("the bag of resource {resource} has a data/ that is not a folder"),
            ))
        }
        Ok(_) => {}
    }
    for entry in walkdir::WalkDir::new(&data).follow_links(false) {
        let entry = entry.map_err(|e| SourceError::Io(std::io::Error::other(e)))?;
        let relative = entry
            .path()
            .strip_prefix(bag)
            .ok()
            .and_then(Path::to_str)
            .unwrap_or_default()
            .to_string();
        if entry.file_type().is_symlink() {
            return Err(record_error(
                PROVIDER,
                format!("the bag of resource {resource} holds a symbolic link {relative}; a bag's payload is files"),
            ));
        }
        if entry.file_type().is_file() {
            files.insert(relative);
        }
    }
    Ok(files)
}

/// The checksum of the file at `path` under `expected`'s algorithm.
fn digest_of(path: &Path, expected: &Checksum) -> Result<Checksum, SourceError> {
    let mut hasher = expected.hasher();
    let mut file = fs_err::File::open(path)?;
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(expected.found(hasher.finish()));
        }
        hasher.update(&buffer[..read]);
    }
}

/// The unpacked bag `bag` is a BagIt bag whose every payload file is listed in each of its
/// payload manifests, with the checksum it has.
fn verify_bag(bag: &Path, resource: &str, reporter: &dyn Reporter) -> Result<(), SourceError> {
    let wrong =
        |what: String| record_error(PROVIDER, format!("the bag of resource {resource} {what}"));
    if !fs_err::symlink_metadata(bag.join("bagit.txt")).is_ok_and(|m| m.is_file()) {
        return Err(wrong(format!(
            "is not a BagIt bag (it has no {resource}/bagit.txt)"
        )));
    }
    let manifests: Vec<(&str, String)> = MANIFESTS
        .iter()
        .map(|algorithm| (*algorithm, format!("manifest-{algorithm}.txt")))
        .filter(|(_, name)| fs_err::symlink_metadata(bag.join(name)).is_ok_and(|m| m.is_file()))
        .collect();
    if manifests.is_empty() {
        return Err(wrong(
            "has no payload manifest (manifest-md5.txt or manifest-sha256.txt): its files cannot be checked".into(),
        ));
    }
    let payload = payload_files(bag, resource)?;
    for (algorithm, name) in manifests {
        let text = String::from_utf8(fs_err::read(bag.join(&name))?)
            .map_err(|_| wrong(format!("has a {name} that is not UTF-8")))?;
        let entries = parse_manifest(&text, algorithm)
            .map_err(|e| wrong(format!("has a bad {name}: {e}")))?;
        for (path, expected) in &entries {
            if !payload.contains(path) {
                return Err(wrong(format!("lacks {path}, which its {name} lists")));
            }
            match expected {
                Expected::Digest(checksum) => {
                    let found = digest_of(&bag.join(path), checksum)?;
                    if &found != checksum {
                        return Err(SourceError::Checksum {
                            file: path.clone(),
                            expected: checksum.to_string(),
                            found: found.to_string(),
                        });
                    }
                }
                Expected::MultipartEtag(etag) => reporter.warning(format!(
                    "HydroShare: {path} of resource {resource} is only checked to be there: its {name} gives an S3 multipart ETag ({etag}), not its md5"
                )),
            }
        }
        if let Some(unlisted) = payload.iter().find(|path| !entries.contains_key(*path)) {
            return Err(wrong(format!(
                "holds {unlisted}, which its {name} does not list"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "b8f6eae9d89241cf8b5904033460af61";

    #[test]
    fn hydroshare_pages_name_their_resource() {
        let base = "https://www.hydroshare.org";
        for page in [
            format!("https://www.hydroshare.org/resource/{ID}"),
            format!("http://www.hydroshare.org/resource/{ID}/"),
            format!("https://hydroshare.org/resource/{}/", ID.to_uppercase()),
        ] {
            assert_eq!(resource(&page, base).as_deref(), Some(ID), "{page}");
        }
        assert_eq!(
            resource(
                &format!("http://127.0.0.1:8/hs/resource/{ID}/"),
                "http://127.0.0.1:8/hs/"
            ),
            Some(ID.to_string())
        );
        for page in [
            format!("https://evil.example/resource/{ID}/"),
            format!("https://www.hydroshare.org:8443/resource/{ID}/"),
            format!("https://www.hydroshare.org/resource/{ID}/data/contents"),
            "https://www.hydroshare.org/resource/1234/".to_string(),
            format!("https://www.hydroshare.org/hsapi/resource/{ID}/"),
            format!("ftp://www.hydroshare.org/resource/{ID}/"),
        ] {
            assert_eq!(resource(&page, base), None, "{page}");
        }
    }

    #[test]
    fn manifests_are_read_as_hydroshare_writes_them() {
        let md5 = "900150983cd24fb0d6963f7d28e17f72";
        let text = format!(
            "{md5}    data/contents/requirements.txt\r\n{}  data/contents/a%25b%0Ac.txt\n\n{md5}-3 data/contents/big.nc\n",
            md5.to_uppercase()
        );
        let entries = parse_manifest(&text, "md5").unwrap();
        let digest = Expected::Digest(Checksum::new("md5", md5).unwrap());
        assert_eq!(entries["data/contents/requirements.txt"], digest);
        assert_eq!(entries["data/contents/a%b\nc.txt"], digest);
        assert_eq!(
            entries["data/contents/big.nc"],
            Expected::MultipartEtag(format!("{md5}-3"))
        );
        assert_eq!(entries.len(), 3);
        for (bad, says) in [
            (
                format!("{md5}  ../etc/passwd"),
                "line 1: `../etc/passwd` is not a path under data/",
            ),
            (format!("{md5}  bagit.txt"), "not a path under data/"),
            (format!("{md5}  data/a/../../x"), "not a path under data/"),
            ("abc  data/x".to_string(), "`abc` is not a md5 checksum"),
            (md5.to_string(), "expected `<checksum>  data/<path>`"),
            (
                format!("{md5}  data/x\n{md5}  data/x"),
                "line 2: data/x is listed twice",
            ),
        ] {
            let error = parse_manifest(&bad, "md5").unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
        // A multipart ETag is only HydroShare's md5 manifest's.
        assert!(parse_manifest(&format!("{md5}-3  data/x"), "sha256").is_err());
        assert_eq!(decode_path("100%25%0d%zz%"), "100%\r%zz%");
    }
}
