//! Dataverse: a dataset of a configured installation, in its newest published version.

use super::Resolved;
use crate::events::Reporter;
use crate::settings::Settings;
use crate::source::SourceError;

/// The installation and persistent id of a Dataverse page a DOI resolves to.
pub(super) fn dataset(_page: &str, _installations: &[String]) -> Option<(String, String)> {
    None
}

/// The dataset `persistent_id` of `site` in its newest version, with its files.
pub(super) fn record(
    _settings: &Settings,
    _site: &str,
    persistent_id: &str,
    _reporter: &dyn Reporter,
) -> Result<Resolved, SourceError> {
    Err(SourceError::Unsupported {
        spec: persistent_id.to_string(),
        provider: "dataverse".into(),
    })
}
