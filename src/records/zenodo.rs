//! Zenodo (InvenioRDM): a record id from the DOI's page, its files from `links.files`.

use super::checksum::Checksum;
use super::{check_file, get_json, record_error, same_origin, Layout, RecordFile, Resolved};
use crate::events::{Phase, Reporter, ReporterExt};
use crate::settings::Settings;
use crate::source::SourceError;

/// The record id of a Zenodo page URL (`<zenodo>/record/<id>`, `/records/<id>`,
/// `/doi/<...>zenodo.<id>`), as repo2docker reads it.
pub(super) fn record_id(page: &str, zenodo: &str) -> Option<String> {
    let rest = ["/record/", "/records/", "/doi/"]
        .iter()
        .find_map(|p| page.strip_prefix(&format!("{zenodo}{p}")))?;
    let last = rest.trim_end_matches('/').rsplit('/').next()?;
    let id = last.strip_prefix("zenodo.").unwrap_or(last);
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
}

/// A Zenodo record's files (InvenioRDM's API: the record, then `links.files`).
pub(super) fn record(
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
        let file = RecordFile {
            path,
            checksum: entry["checksum"].as_str().and_then(Checksum::parse),
            size: entry["size"].as_u64(),
            url,
        };
        check_file(
            "Zenodo",
            &format!("record {id}"),
            &file,
            &[zenodo.to_string()],
        )?;
        files.push(file);
    }
    if files.is_empty() {
        return Err(record_error("Zenodo", format!("record {id} has no files")));
    }
    Ok(Resolved {
        provider: "zenodo",
        id: id.to_string(),
        page: format!("{zenodo}/records/{id}"),
        files,
        layout: Layout::Files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zenodo_pages_name_their_record() {
        let z = "https://zenodo.org";
        for page in [
            "https://zenodo.org/record/3242074",
            "https://zenodo.org/records/3242074/",
            "https://zenodo.org/doi/10.5281/zenodo.3242074",
        ] {
            assert_eq!(record_id(page, z).as_deref(), Some("3242074"), "{page}");
        }
        assert_eq!(record_id("https://evil.org/records/1", z), None);
        assert_eq!(record_id("https://zenodo.org/records/1/../2x", z), None);
    }
}
