//! Lock files installed without a solve: `@EXPLICIT` lists, `conda-lock.yml` (conda and
//! pip packages) and `pixi.lock`.

use std::path::Path;

use rattler_cache::package_cache::PackageCache;
use rattler_conda_types::{RepoDataRecord, Subdir};

use crate::backends::process::BuildError;
use crate::detect::LockedPackage;

use super::solve::error_chain;

/// A pip package fixed by a lock file: the resolved pip lock must hold exactly this file.
pub(super) struct PipPin {
    pub(super) name: String,
    pub(super) url: String,
    pub(super) sha256: Option<String>,
}

/// Records for an `@EXPLICIT` file (no solve): each package is fetched into the package
/// cache, its `#sha256:` fragment checked, and its record read from its own
/// `info/index.json`.
pub(super) async fn explicit_records(
    path: &Path,
    locked: &[LockedPackage],
    package_cache: &PackageCache,
) -> anyhow::Result<(Vec<RepoDataRecord>, Vec<PipPin>)> {
    use rattler_conda_types::package::{CondaArchiveIdentifier, IndexJson, PackageFile};
    use rattler_conda_types::{PackageArchiveHash, PackageRecord};
    let package_error = |message: String| BuildError::Package { message };
    let (entries, pins) = lock_entries(path, locked)?;
    let mut records = Vec::new();
    for entry in entries {
        let hash = entry
            .package_archive_hash()
            .map_err(|e| package_error(format!("{}: {e}", entry.url)))?;
        let mut url = entry.url.clone();
        url.set_fragment(None);
        let archive = CondaArchiveIdentifier::try_from_url(&url)
            .ok_or_else(|| package_error(format!("{url} is not a conda package URL")))?;
        let mut key = rattler_cache::package_cache::CacheKey::from(archive.clone());
        if let Some(PackageArchiveHash::Sha256(sha256)) = &hash {
            key = key.with_sha256(*sha256);
        }
        let metadata = package_cache
            .get_or_fetch_from_url(
                key,
                url.clone(),
                rattler_networking::LazyClient::default(),
                None,
                None,
            )
            .await
            .map_err(|e| package_error(format!("{url}: {}", error_chain(&e))))?;
        let index = match metadata.index_json() {
            Some(index) => index.clone(),
            None => IndexJson::from_package_directory(metadata.path())?,
        };
        let (sha256, md5) = match hash {
            Some(PackageArchiveHash::Sha256(sha256)) => (Some(sha256), None),
            Some(PackageArchiveHash::Md5(md5)) => (None, Some(md5)),
            None => (None, None),
        };
        let package_record = PackageRecord::from_index_json(index, None, sha256, md5)
            .map_err(|e| package_error(format!("{url}: {e}")))?;
        records.push(RepoDataRecord {
            package_record,
            identifier: archive.into(),
            url,
            channel: None,
        });
    }
    Ok((records, pins))
}

/// The packages of a `conda-lock.yml` or `@EXPLICIT` file (as detection read them): conda
/// ones as `@EXPLICIT` entries (URL with a hash fragment), pip ones as pins.
fn lock_entries(
    path: &Path,
    packages: &[LockedPackage],
) -> anyhow::Result<(
    Vec<rattler_conda_types::ExplicitEnvironmentEntry>,
    Vec<PipPin>,
)> {
    let mut entries = Vec::new();
    let mut pins = Vec::new();
    for package in packages {
        let mut url = url::Url::parse(&package.url).map_err(|e| BuildError::Lock {
            file: path.to_path_buf(),
            message: format!("bad url `{}`: {e}", package.url),
        })?;
        if package.pip {
            pins.push(PipPin {
                name: package.name.clone(),
                url: url.to_string(),
                sha256: package.sha256.clone(),
            });
            continue;
        }
        if let Some(sha256) = &package.sha256 {
            url.set_fragment(Some(&format!("sha256:{sha256}")));
        }
        entries.push(url.into());
    }
    Ok((entries, pins))
}

/// Records of `platform` from a pixi.lock's default environment.
pub(super) fn locked_records(
    path: &Path,
    platform: &Subdir,
) -> anyhow::Result<Vec<RepoDataRecord>> {
    let lock_error = |message: String| BuildError::Lock {
        file: path.to_path_buf(),
        message,
    };
    let lock = rattler_lock::LockFile::from_path(path)
        .map_err(|e| lock_error(format!("not a readable pixi.lock: {e}")))?;
    let environment = lock
        .default_environment()
        .ok_or_else(|| lock_error("has no default environment".into()))?;
    let handle = lock
        .platform(platform.as_str())
        .ok_or_else(|| lock_error(format!("does not lock {}", platform.as_str())))?;
    Ok(environment
        .conda_repodata_records(handle)?
        .unwrap_or_default())
}
