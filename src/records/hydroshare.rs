//! HydroShare: a resource in the version its last modification names, as a BagIt bag.

use std::path::Path;

use super::Resolved;
use crate::events::Reporter;
use crate::settings::Settings;
use crate::source::SourceError;

/// The resource id of a HydroShare page (`<hydroshare>/resource/<32 hex>/`).
pub(super) fn resource(_page: &str, _hydroshare: &str) -> Option<String> {
    None
}

/// Resource `id` in its current version, with its bag to download.
pub(super) fn record(
    _settings: &Settings,
    id: &str,
    _reporter: &dyn Reporter,
) -> Result<Resolved, SourceError> {
    Err(SourceError::Unsupported {
        spec: id.to_string(),
        provider: "hydroshare".into(),
    })
}

/// Download the bag of `resolved` (waiting while HydroShare prepares it) into `temp`, and
/// unpack its payload (`<resource>/data/contents`) into `root`, verified against the
/// bag's manifest.
pub(super) fn fetch_bag(
    _resolved: &Resolved,
    resource: &str,
    _temp: &Path,
    _root: &Path,
    _settings: &Settings,
    _reporter: &dyn Reporter,
) -> Result<(), SourceError> {
    // Downloads go through super::fetch::download_verified; limits from
    // super::fetch::limits(settings).
    Err(SourceError::Unsupported {
        spec: resource.to_string(),
        provider: "hydroshare".into(),
    })
}
