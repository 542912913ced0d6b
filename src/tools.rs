//! Tools hpcbinder needs and can install for itself: uv.
//!
//! When uv is neither configured (`uv`) nor on PATH, a pinned uv ([`UV_VERSION`], the
//! sha256 of each platform's wheel below) is fetched once per store from the site's
//! Python index (`pip-index-url`, else PyPI; a wheel already in a `pip-find-links`
//! directory is used without any download) into `<store>/tools/uv-<version>/uv`, under a
//! store lock, through a temporary directory renamed into place, group-readable. Every
//! later build, native or image, uses it. `uv-bootstrap = false` turns this off; then, or
//! when the index cannot be reached, builds fall back to `python -m pip` with a warning.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::events::{Reporter, ReporterExt};
use crate::settings::Settings;
use crate::store::Store;

/// The uv version hpcbinder bootstraps.
pub const UV_VERSION: &str = "0.13.9";

/// `(os, arch, wheel file name, sha256)` of the pinned uv, per platform (from PyPI).
const UV_WHEELS: &[(&str, &str, &str, &str)] = &[
    (
        "linux",
        "x86_64",
        "uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19",
    ),
    (
        "linux",
        "aarch64",
        "uv-0.13.9-py3-none-manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64.whl",
        "5435c5ce14a56431208ca0996416d310f1598e8c2c8ba707688985a16bb82dbe",
    ),
    (
        "linux",
        "powerpc64",
        "uv-0.13.9-py3-none-manylinux_2_17_ppc64le.manylinux2014_ppc64le.whl",
        "c5dbdb7c8737cd183a9dce95b39cfd1f3d54ec2a27a1bb58f160293f9ba2c805",
    ),
    (
        "macos",
        "x86_64",
        "uv-0.13.9-py3-none-macosx_10_12_x86_64.whl",
        "c16ed11e013557536b3e60065f1b912f6407bd6518e041b961e23ef9e6b4fbf5",
    ),
    (
        "macos",
        "aarch64",
        "uv-0.13.9-py3-none-macosx_11_0_arm64.whl",
        "66c512266d633bef48384a1f53003f41f2a8e7b36fe6e7fbfd3e0fd52d96fa63",
    ),
];

/// PyPI's simple index, when the site names none.
pub const DEFAULT_INDEX: &str = "https://pypi.org/simple";

/// How uv was found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "how", content = "path")]
pub enum UvStatus {
    /// The `uv` setting.
    Configured(PathBuf),
    /// On PATH.
    OnPath(PathBuf),
    /// Bootstrapped into the store earlier.
    Bootstrapped(PathBuf),
    /// Not there yet; the next build bootstraps it.
    Bootstrappable,
    /// Not there, and bootstrapping is off (`uv-bootstrap = false`) or impossible here.
    Missing(String),
}

/// Where uv is, without installing anything.
pub fn uv_status(settings: &Settings) -> UvStatus {
    if let Some(path) = &settings.pip.uv {
        return UvStatus::Configured(path.clone());
    }
    if let Some(path) = crate::variables::on_path("uv") {
        return UvStatus::OnPath(path);
    }
    let installed = bootstrapped_path(&settings.store, &settings.store_maintainers);
    if installed.is_file() {
        return UvStatus::Bootstrapped(installed);
    }
    if !settings.pip.uv_bootstrap {
        return UvStatus::Missing("uv-bootstrap is off".into());
    }
    match wheel() {
        Some(_) => UvStatus::Bootstrappable,
        None => UvStatus::Missing(format!(
            "no pinned uv wheel for {}-{}",
            std::env::consts::OS,
            std::env::consts::ARCH
        )),
    }
}

/// uv for a build: configured, on PATH, bootstrapped earlier, or bootstrapped now. `None`
/// (after a warning event saying why) when there is none and it cannot be installed.
pub fn uv(settings: &Settings, store: &Store, reporter: &dyn Reporter) -> Option<PathBuf> {
    match uv_status(settings) {
        UvStatus::Configured(path) | UvStatus::OnPath(path) | UvStatus::Bootstrapped(path) => {
            Some(path)
        }
        UvStatus::Missing(_) => None,
        UvStatus::Bootstrappable => match bootstrap(settings, store, reporter) {
            Ok(path) => Some(path),
            Err(error) => {
                reporter.warning(format!(
                    "could not install uv {UV_VERSION} into the store: {error:#}"
                ));
                None
            }
        },
    }
}

/// `<store>/tools/uv-<version>/uv`, installed once per store; or this user's own
/// `<store>/pkgs/u<uid>/tools/uv-<version>/uv` when the shared one belongs to someone this
/// user does not trust (its owner could replace it with anything).
pub fn bootstrapped_path(store: &Path, maintainers: &[String]) -> PathBuf {
    let shared = store.join("tools").join(format!("uv-{UV_VERSION}"));
    let trusted = crate::store::trust::Trust::for_store(store, maintainers).is_ok_and(|trust| {
        [shared.as_path(), &shared.join("uv")]
            .iter()
            .all(|path| trust.doubt(path).is_none())
    });
    let dir = if trusted {
        shared
    } else {
        crate::store::package_cache_at(store, "tools").join(format!("uv-{UV_VERSION}"))
    };
    dir.join("uv")
}

fn wheel() -> Option<(&'static str, &'static str)> {
    UV_WHEELS
        .iter()
        .find(|(os, arch, _, _)| *os == std::env::consts::OS && *arch == std::env::consts::ARCH)
        .map(|(_, _, file, sha256)| (*file, *sha256))
}

/// Install the pinned uv into the store (once: under a lock, re-checked after taking it).
fn bootstrap(
    settings: &Settings,
    store: &Store,
    reporter: &dyn Reporter,
) -> anyhow::Result<PathBuf> {
    let (file, sha256) =
        wheel().ok_or_else(|| anyhow::anyhow!("no pinned uv wheel for this platform"))?;
    let installed = bootstrapped_path(store.root(), &settings.store_maintainers);
    let _lock = store.lock(&format!("tool-uv-{UV_VERSION}"), reporter)?;
    if installed.is_file() {
        return Ok(installed);
    }
    let bytes = match find_links_wheel(settings, file) {
        Some(path) => {
            reporter.phase(
                crate::events::Phase::Building,
                format!(
                    "Installing uv {UV_VERSION} into the store from {}",
                    path.display()
                ),
            );
            fs_err::read(&path)?
        }
        None if settings.pip.no_index => {
            anyhow::bail!("pip-no-index is set and no pip-find-links directory holds {file}")
        }
        None => {
            let index = settings.pip.index_url.as_deref().unwrap_or(DEFAULT_INDEX);
            reporter.phase(
                crate::events::Phase::Fetching,
                format!(
                    "uv is not on PATH; installing uv {UV_VERSION} into the store from {} (once per store)",
                    crate::source::redact(index)
                ),
            );
            download_wheel(settings, index, file)?
        }
    };
    let found = hex::encode(Sha256::digest(&bytes));
    if found != sha256 {
        anyhow::bail!("{file} has sha256 {found}, not the pinned {sha256}");
    }
    let target = installed.parent().expect("has a parent");
    let tools = target.parent().expect("has a parent");
    fs_err::create_dir_all(tools)?;
    let staging = tempfile::Builder::new().prefix(".uv-").tempdir_in(tools)?;
    let binary = staging.path().join("uv");
    extract_uv(&bytes, &binary)?;
    use std::os::unix::fs::PermissionsExt;
    fs_err::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))?;
    fs_err::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))?;
    let staged = staging.keep();
    if let Err(error) = fs_err::rename(&staged, target) {
        let _ = fs_err::remove_dir_all(&staged);
        return Err(error.into());
    }
    reporter.phase(
        crate::events::Phase::Building,
        format!("Installed uv {UV_VERSION} at {}", installed.display()),
    );
    Ok(installed)
}

/// The wheel in a local `pip-find-links` directory, if one holds it.
fn find_links_wheel(settings: &Settings, file: &str) -> Option<PathBuf> {
    settings
        .pip
        .find_links
        .iter()
        .filter(|link| !link.contains("://") || link.starts_with("file://"))
        .map(|link| Path::new(link.trim_start_matches("file://")).join(file))
        .find(|path| path.is_file())
}

/// Find `file` on the index's project page for uv (PEP 691 JSON or PEP 503 HTML) and
/// download it.
fn download_wheel(settings: &Settings, index: &str, file: &str) -> anyhow::Result<Vec<u8>> {
    let page_url = format!("{}/uv/", index.trim_end_matches('/'));
    let page = crate::http::get(
        settings,
        &page_url,
        Some("application/vnd.pypi.simple.v1+json, text/html;q=0.1"),
        Duration::from_secs(60),
    )?;
    let href = if page
        .content_type
        .as_deref()
        .is_some_and(|t| t.contains("json"))
    {
        let value: serde_json::Value = serde_json::from_slice(&page.body)?;
        value["files"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["filename"] == file)
            .and_then(|f| f["url"].as_str())
            .map(str::to_string)
    } else {
        html_link(&String::from_utf8_lossy(&page.body), file)
    };
    let href = href.ok_or_else(|| {
        anyhow::anyhow!("{} does not list {file}", crate::source::redact(&page_url))
    })?;
    let url = page.url.join(&href)?;
    let wheel = crate::http::get(settings, url.as_str(), None, Duration::from_secs(600))?;
    Ok(wheel.body)
}

/// The `href` of the `<a>` whose text is `file` in a PEP 503 page.
fn html_link(html: &str, file: &str) -> Option<String> {
    html.split("<a ").skip(1).find_map(|anchor| {
        let (attributes, rest) = anchor.split_once('>')?;
        let text = rest.split("</a>").next()?.trim();
        if text != file {
            return None;
        }
        let href = attributes.split("href=\"").nth(1)?.split('"').next()?;
        Some(href.replace("&amp;", "&"))
    })
}

/// Copy the wheel's `uv-<version>.data/scripts/uv` to `to`.
fn extract_uv(wheel: &[u8], to: &Path) -> anyhow::Result<()> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(wheel))?;
    let name = format!("uv-{UV_VERSION}.data/scripts/uv");
    let mut entry = archive
        .by_name(&name)
        .map_err(|e| anyhow::anyhow!("the uv wheel has no {name}: {e}"))?;
    let mut bytes = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
    entry.read_to_end(&mut bytes)?;
    fs_err::write(to, bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pep503_links_are_found_by_file_name() {
        let html = r#"<html><body>
<a href="../../files/uv-0.13.8-py3-none-any.whl#sha256=00">uv-0.13.8-py3-none-any.whl</a><br>
<a href="https://files.example/uv-0.13.9-x.whl#sha256=ab&amp;x=1" data-requires-python="&gt;=3.8">uv-0.13.9-x.whl</a>
</body></html>"#;
        assert_eq!(
            html_link(html, "uv-0.13.9-x.whl").as_deref(),
            Some("https://files.example/uv-0.13.9-x.whl#sha256=ab&x=1")
        );
        assert_eq!(html_link(html, "uv-0.14.0-x.whl"), None);
    }

    #[test]
    fn every_pinned_wheel_is_this_version() {
        for (_, _, file, sha256) in UV_WHEELS {
            assert!(file.starts_with(&format!("uv-{UV_VERSION}-")), "{file}");
            assert_eq!(sha256.len(), 64);
        }
    }
}
