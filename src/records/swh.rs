//! Software Heritage: a directory (or a revision's directory) from the vault.

use std::path::Path;

use super::Resolved;
use crate::events::Reporter;
use crate::settings::Settings;
use crate::source::SourceError;

/// The directory `swhid` names, with its vault bundle to download.
pub(super) fn record(
    _settings: &Settings,
    swhid: &str,
    _reporter: &dyn Reporter,
) -> Result<Resolved, SourceError> {
    Err(SourceError::Unsupported {
        spec: swhid.to_string(),
        provider: "swh".into(),
    })
}

/// Have the vault cook directory `hash` (waiting while it does), download its bundle into
/// `temp`, and unpack it into `root`, verified against the directory's hash.
pub(super) fn fetch_bundle(
    _resolved: &Resolved,
    hash: &str,
    _temp: &Path,
    _root: &Path,
    _settings: &Settings,
    _reporter: &dyn Reporter,
) -> Result<(), SourceError> {
    // Downloads go through super::fetch::download_verified; limits from
    // super::fetch::limits(settings).
    Err(SourceError::Unsupported {
        spec: hash.to_string(),
        provider: "swh".into(),
    })
}
