//! Dataverse: a dataset of a configured installation, in its newest published version
//! (`/api/datasets/:persistentId`), its files from the access API in their original
//! format, as repo2docker fetches them.

use super::checksum::Checksum;
use super::{check_file, get_json, record_error, same_origin, Layout, RecordFile, Resolved};
use crate::events::{Phase, Reporter, ReporterExt};
use crate::settings::Settings;
use crate::source::SourceError;

/// The installation and persistent id of a Dataverse page a DOI resolves to
/// (`<site>/dataset.xhtml?persistentId=doi:...` or `<site>/citation?persistentId=...`),
/// when the page is on one of `installations`.
pub(super) fn dataset(page: &str, installations: &[String]) -> Option<(String, String)> {
    let url = url::Url::parse(page).ok()?;
    let site = installations
        .iter()
        .find(|site| same_origin(page, site))?
        .clone();
    if !matches!(url.path(), "/dataset.xhtml" | "/citation") {
        return None;
    }
    let persistent_id = url
        .query_pairs()
        .find(|(key, _)| key == "persistentId")
        .map(|(_, value)| value.into_owned())?;
    usable_persistent_id(&persistent_id).then_some((site, persistent_id))
}

/// A persistent id (`doi:10.x/y`, `hdl:1902.1/x`) that can be put in a query as it is.
fn usable_persistent_id(id: &str) -> bool {
    (id.starts_with("doi:10.") || id.starts_with("hdl:"))
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'&' | b'?' | b'#' | b'%' | b'\\' | b'+'))
}

/// The dataset `persistent_id` of `site` in its newest published version, with its files.
pub(super) fn record(
    settings: &Settings,
    site: &str,
    persistent_id: &str,
    reporter: &dyn Reporter,
) -> Result<Resolved, SourceError> {
    reporter.phase(
        Phase::Fetching,
        format!("Fetching Dataverse dataset {persistent_id} from {site}"),
    );
    let document = get_json(
        settings,
        "Dataverse",
        &format!("{site}/api/datasets/:persistentId?persistentId={persistent_id}"),
    )?;
    let data = &document["data"];
    let version = &data["latestVersion"];
    let (Some(id), Some(major), Some(minor)) = (
        data["id"].as_u64(),
        version["versionNumber"].as_u64(),
        version["versionMinorNumber"].as_u64(),
    ) else {
        return Err(record_error(
            "Dataverse",
            format!("{persistent_id} on {site} has no published version"),
        ));
    };
    let mut files = Vec::new();
    for entry in version["files"].as_array().into_iter().flatten() {
        let file = &entry["dataFile"];
        let original = file["originalFileName"].as_str().filter(|n| !n.is_empty());
        let name = original
            .or_else(|| entry["label"].as_str())
            .or_else(|| file["filename"].as_str())
            .unwrap_or_default();
        let path = match entry["directoryLabel"].as_str().filter(|d| !d.is_empty()) {
            Some(directory) => format!("{}/{name}", directory.trim_end_matches('/')),
            None => name.to_string(),
        };
        if entry["restricted"].as_bool().unwrap_or(false) {
            reporter.warning(format!(
                "Dataverse: {path} of {persistent_id} is restricted and was left out"
            ));
            continue;
        }
        let Some(file_id) = file["id"].as_u64() else {
            return Err(record_error(
                "Dataverse",
                format!("{persistent_id} lists {path} without a file id"),
            ));
        };
        // Without format=original an ingested table comes as tab-separated text.
        let checksum = Checksum::new(
            file["checksum"]["type"].as_str().unwrap_or_default(),
            file["checksum"]["value"].as_str().unwrap_or_default(),
        )
        .or_else(|| Checksum::new("md5", file["md5"].as_str().unwrap_or_default()));
        let size = match original {
            Some(_) => file["originalFileSize"].as_u64(),
            None => file["filesize"].as_u64(),
        };
        let file = RecordFile {
            path,
            checksum,
            size,
            url: format!("{site}/api/access/datafile/{file_id}?format=original"),
        };
        check_file(
            "Dataverse",
            &format!("dataset {persistent_id}"),
            &file,
            &[site.to_string()],
        )?;
        files.push(file);
    }
    if files.is_empty() {
        return Err(record_error(
            "Dataverse",
            format!("dataset {persistent_id} has no files to download"),
        ));
    }
    Ok(Resolved {
        provider: "dataverse",
        id: format!("{id}.v{major}.{minor}"),
        page: format!("{site}/dataset.xhtml?persistentId={persistent_id}&version={major}.{minor}"),
        files,
        layout: Layout::Files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataverse_pages_name_their_dataset_on_known_installations() {
        let sites = vec!["https://dataverse.harvard.edu".to_string()];
        assert_eq!(
            dataset(
                "https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/TJCLKP",
                &sites
            ),
            Some((sites[0].clone(), "doi:10.7910/DVN/TJCLKP".into()))
        );
        assert_eq!(
            dataset(
                "https://dataverse.harvard.edu/citation?persistentId=doi%3A10.7910%2FDVN%2FTJCLKP",
                &sites
            ),
            Some((sites[0].clone(), "doi:10.7910/DVN/TJCLKP".into()))
        );
        for page in [
            "https://evil.example/dataset.xhtml?persistentId=doi:10.7910/DVN/TJCLKP",
            "https://dataverse.harvard.edu/dataverse/harvard",
            "https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/x%26y",
            "https://dataverse.harvard.edu/dataset.xhtml?persistentId=file:/etc/passwd",
        ] {
            assert_eq!(dataset(page, &sites), None, "{page}");
        }
    }
}
