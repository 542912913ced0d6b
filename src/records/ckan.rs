//! CKAN: a dataset of a configured site, in the version its last modification names.

use super::Resolved;
use crate::events::Reporter;
use crate::settings::Settings;
use crate::source::SourceError;

/// A CKAN dataset a spec names.
#[derive(Debug, Clone)]
pub(super) struct Dataset {
    /// The dataset URL as given.
    pub(super) url: String,
}

/// The dataset the URL `url` names, on a configured CKAN site.
pub(super) fn locate(url: &str, _settings: &Settings) -> Result<Dataset, SourceError> {
    Err(SourceError::Unsupported {
        spec: url.to_string(),
        provider: "ckan".into(),
    })
}

/// `dataset` in its current version, with its resources.
pub(super) fn record(
    _settings: &Settings,
    dataset: &Dataset,
    _reporter: &dyn Reporter,
) -> Result<Resolved, SourceError> {
    Err(SourceError::Unsupported {
        spec: dataset.url.clone(),
        provider: "ckan".into(),
    })
}
