//! Figshare: an article (and version) from the DOI's page, its files from the API.

use super::checksum::Checksum;
use super::{check_file, get_json, record_error, Layout, RecordFile, Resolved};
use crate::events::{Phase, Reporter, ReporterExt};
use crate::settings::Settings;
use crate::source::SourceError;

/// A Figshare page's article id and version (`<figshare>/articles/[code/|dataset/|
/// software/]<slug>/<id>[/<version>]`), as repo2docker reads it.
pub(super) fn article(page: &str, figshare: &str) -> Option<(String, Option<u64>)> {
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
pub(super) fn latest(settings: &Settings, id: &str) -> Result<u64, SourceError> {
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
pub(super) fn record(
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
            .unwrap_or_default();
        let file = RecordFile {
            path,
            checksum: Checksum::new("md5", md5),
            size: file["size"].as_u64(),
            url,
        };
        check_file("Figshare", &format!("article {id}"), &file, &allowed)?;
        files.push(file);
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
        layout: Layout::Files,
    })
}
