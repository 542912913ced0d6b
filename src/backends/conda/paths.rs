//! Every path a conda package would write must stay inside the prefix: checked for all
//! packages of an environment before any is linked. A package whose `paths.json` names
//! an absolute path, a `..` component, or a file under a directory that one of the
//! environment's packages makes a symlink would otherwise have the installer replace (and
//! first delete) files anywhere the user can write.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rattler_cache::package_cache::{CacheKey, PackageCache};
use rattler_conda_types::package::{PathType, PathsJson};
use rattler_conda_types::RepoDataRecord;

use crate::backends::process::BuildError;

use super::solve::error_chain;

/// Fetch every package of `records` into the cache (as the installer would, which then
/// finds them there) and refuse the environment when any package path leaves the prefix.
pub(super) async fn check(
    records: &[RepoDataRecord],
    package_cache: &PackageCache,
) -> anyhow::Result<()> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(8));
    let mut fetches = tokio::task::JoinSet::new();
    for record in records {
        let (cache, url, semaphore) =
            (package_cache.clone(), record.url.clone(), semaphore.clone());
        let key = CacheKey::from(&record.package_record);
        let name = record.package_record.name.as_normalized().to_string();
        fetches.spawn(async move {
            let metadata = cache
                .get_or_fetch_from_url(
                    key,
                    url.clone(),
                    rattler_networking::LazyClient::default(),
                    None,
                    Some(semaphore),
                )
                .await
                .map_err(|e| BuildError::Package {
                    message: format!("{url}: {}", error_chain(&e)),
                })?;
            let paths = PathsJson::from_package_directory_with_deprecated_fallback(metadata.path())
                .map_err(|e| BuildError::Package {
                    message: format!("{name}: unreadable paths.json: {e}"),
                })?;
            Ok::<_, BuildError>((name, paths))
        });
    }
    let mut packages = Vec::new();
    while let Some(joined) = fetches.join_next().await {
        packages.push(joined??);
    }
    let links: BTreeSet<PathBuf> = packages
        .iter()
        .flat_map(|(_, paths)| &paths.paths)
        .filter(|entry| entry.path_type == PathType::SoftLink)
        .map(|entry| entry.relative_path.clone())
        .collect();
    for (name, paths) in &packages {
        for entry in &paths.paths {
            if let Some(why) = escape(&entry.relative_path, &links) {
                return Err(BuildError::Package {
                    message: format!(
                        "the package {name} would write `{}`, {why}; refusing to install it",
                        entry.relative_path.display()
                    ),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// Why `path` (relative to the prefix) leads out of it, or `None` when it stays inside.
fn escape(path: &Path, links: &BTreeSet<PathBuf>) -> Option<&'static str> {
    if path.as_os_str().is_empty() {
        return Some("an empty path");
    }
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Some("which leaves the environment through `..`"),
            Component::RootDir | Component::Prefix(_) => {
                return Some("an absolute path outside the environment")
            }
        }
    }
    path.ancestors()
        .skip(1)
        .any(|ancestor| links.contains(ancestor))
        .then_some("which goes through a symlink another path of the environment makes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_the_prefix_are_named() {
        let links = BTreeSet::from([PathBuf::from("lib/evil")]);
        for bad in [
            "../../tmp/victim.txt",
            "/etc/passwd",
            "share/../../x",
            "lib/evil/owned.txt",
            "",
        ] {
            assert!(escape(Path::new(bad), &links).is_some(), "{bad}");
        }
        for good in ["lib/evil", "lib/python3.12/site-packages/x.py", "./bin/x"] {
            assert_eq!(escape(Path::new(good), &links), None, "{good}");
        }
    }
}
