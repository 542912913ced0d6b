//! The `conda` target, in-process with the rattler crates: channels (through the site's
//! channel alias and mirrors) → repodata → solve (resolvo) → install into the prefix from
//! the store's package cache (hardlinks) → `pixi.lock` + `@EXPLICIT` locks → the `pip:`
//! section through uv.
//!
//! `--from-lock` (or a repository's `pixi.lock`) installs the locked records without a solve.

mod locks;
mod paths;
mod pip;
mod progress;
mod solve;

use std::fmt::Write as _;
use std::path::Path;

use rattler::install::Installer;
use rattler_cache::package_cache::PackageCache;
use rattler_conda_types::{RepoDataRecord, Subdir};

use super::process::BuildError;
use super::Context;
use crate::detect::{Buildpack, CondaSpec};
use crate::events::{Phase, ReporterExt};

use locks::{explicit_records, locked_records, PipPin};
use pip::{install_pip, pip_lock};
pub use solve::site_channels;
use solve::solve;

/// Build the conda environment; returns the lock files written (relative to the prefix).
pub fn build(context: &Context<'_>) -> anyhow::Result<Vec<String>> {
    crate::blocking::block_on(async {
        let linked = link(context, &context.prefix, None).await?;
        let mut locks = linked.locks.clone();
        let python = context.prefix.join("bin/python");
        if let Some(lock) = pip_lock(context, &linked, &python)? {
            install_pip(context, &python, &lock)?;
            locks.push("hpcbinder/pip.lock".into());
        }
        Ok(locks)
    })?
}

/// A conda environment staged in a build context for an image: linked into `dir` for the
/// prefix `target_prefix` (rattler's alternative target prefix), with its locks in the
/// build's `hpcbinder/` and its pip section resolved to a hashed lock for the image's
/// build to install.
pub struct Staged {
    /// Lock files written (relative to the store entry).
    pub locks: Vec<String>,
    /// The pip section's hashed lock, when there is one.
    pub pip_lock: Option<std::path::PathBuf>,
}

/// Resolve (or read the lock) and link the environment into `dir` as if it lived at
/// `target_prefix`. The same records a native build links, from the same package cache.
pub fn stage(context: &Context<'_>, dir: &Path, target_prefix: &Path) -> anyhow::Result<Staged> {
    crate::blocking::block_on(async {
        let linked = link(context, dir, Some(target_prefix)).await?;
        // The staged interpreter runs here too (conda's Python finds its prefix from its
        // own location), so the pip section resolves against the image's Python.
        let pip_lock = pip_lock(context, &linked, &dir.join("bin/python"))?;
        let mut locks = linked.locks;
        if pip_lock.is_some() {
            locks.push("hpcbinder/pip.lock".into());
        }
        Ok(Staged { locks, pip_lock })
    })?
}

/// What linking left for the pip step.
pub(super) struct Linked {
    locks: Vec<String>,
    /// The pip lines to install after the conda packages (environment.yml `pip:`, pixi
    /// `[pypi-dependencies]`).
    pip_lines: Vec<String>,
    /// Pip packages a lock file fixes by URL and sha256 (conda-lock's `manager: pip`).
    pip_pins: Vec<PipPin>,
}

/// Resolve the conda records (lock, explicit list or solve), link them into `dir`
/// (for `target_prefix` when the environment will live elsewhere), write the locks and
/// the `variables:` activation script.
async fn link(
    context: &Context<'_>,
    dir: &Path,
    target_prefix: Option<&Path>,
) -> anyhow::Result<Linked> {
    let request = context.request;
    let settings = request.settings;
    let spec = request.spec;
    let platform: Subdir =
        settings
            .conda
            .platform
            .parse()
            .map_err(
                |e: <Subdir as std::str::FromStr>::Err| BuildError::Setting {
                    setting: "platform",
                    value: settings.conda.platform.clone(),
                    message: e.to_string(),
                },
            )?;
    let package_cache = PackageCache::new(context.store.package_cache("conda"));
    let repo_lock = spec
        .lock
        .as_ref()
        .filter(|l| l.format == "pixi")
        .map(|l| context.repo().join(&l.file));
    let lock_file = request.from_lock.clone().or(repo_lock);
    let mut pip_pins = Vec::new();
    // environment.yml's pip section, or (for a pip-only spec built as a conda env) its
    // requirement files: as detection validated them, includes inlined.
    let mut pip_lines = if spec.conda.is_some() || spec.pip.is_some() {
        spec.parsed.requirements.lines.clone()
    } else {
        Vec::new()
    };
    let (records, specs, channel_urls) = if let Some(lock_path) = &lock_file {
        context.reporter.phase(
            Phase::Building,
            format!("Installing from {} without solving", lock_path.display()),
        );
        (
            locked_records(lock_path, &platform)?,
            Vec::new(),
            Vec::new(),
        )
    } else if matches!(spec.buildpack, Buildpack::Explicit | Buildpack::CondaLock) {
        let lock = spec
            .lock
            .as_ref()
            .map(|l| context.repo().join(&l.file))
            .unwrap_or_default();
        context.reporter.phase(
            Phase::Building,
            format!("Fetching the packages listed in {}", lock.display()),
        );
        let (records, pins) = explicit_records(&lock, &spec.parsed.locked, &package_cache).await?;
        // conda-lock's pip packages: resolved with the pip section, then held to their hashes.
        pip_lines.extend(pins.iter().map(|pin| format!("{} @ {}", pin.name, pin.url)));
        pip_pins = pins;
        (records, Vec::new(), Vec::new())
    } else {
        let conda = match spec.buildpack {
            Buildpack::Conda | Buildpack::R if spec.conda.is_some() => {
                spec.conda.clone().unwrap_or_default()
            }
            Buildpack::Pixi => {
                let manifest = spec.parsed.pixi.clone().unwrap_or_default();
                let file = spec.files.iter().find(|f| f.ends_with("pixi.toml"));
                context.reporter.phase(
                    Phase::Building,
                    format!(
                        "{} has no pixi.lock: solving it",
                        file.map_or("pixi.toml", String::as_str)
                    ),
                );
                pip_lines = manifest.pip.clone();
                manifest
            }
            // A pip-only spec built as a conda env: Python from conda, packages from pip.
            _ => CondaSpec::default(),
        };
        let solved = solve(context, &conda, &platform, &package_cache).await?;
        if solved.kernel_from_pip {
            pip_lines.push("ipykernel".into());
        }
        (solved.records, solved.specs, solved.channels)
    };

    context.reporter.phase(
        Phase::Fetching,
        format!("Fetching and checking {} conda packages", records.len()),
    );
    paths::check(&records, &package_cache).await?;
    context.reporter.phase(
        Phase::Building,
        format!("Linking {} conda packages", records.len()),
    );
    let mut installer = Installer::new()
        .with_package_cache(package_cache)
        .with_target_platform(platform)
        .with_requested_specs(specs)
        .with_execute_link_scripts(false);
    if let Some(target_prefix) = target_prefix {
        installer.set_alternative_target_prefix(target_prefix);
    }
    let (progress, steps) = progress::Progress::channel();
    let installer = installer.with_reporter(progress);
    // The installer owns the sending end: when it finishes, the forwarding ends too.
    let (installed, ()) = tokio::join!(
        installer.install(dir, records.clone()),
        progress::forward(steps, context.reporter)
    );
    installed.map_err(|e| install_error(dir, e))?;

    let locks = write_locks(context, &records, &platform, &channel_urls)?;
    write_variables(context, dir)?;
    Ok(Linked {
        locks,
        pip_lines,
        pip_pins,
    })
}

fn install_error(dir: &Path, error: rattler::install::InstallerError) -> anyhow::Error {
    let text = format!("{error:?}");
    if crate::store::says_full(&text) {
        return crate::store::classify(std::io::Error::from_raw_os_error(28), dir).into();
    }
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let _ = write!(message, ": {cause}");
        source = cause.source();
    }
    BuildError::Package { message }.into()
}

/// `pixi.lock` (the canonical record) and `conda-<platform>.lock` (`@EXPLICIT`, for plain conda).
fn write_locks(
    context: &Context<'_>,
    records: &[RepoDataRecord],
    platform: &Subdir,
    channels: &[String],
) -> anyhow::Result<Vec<String>> {
    let name = rattler_lock::PlatformName::try_from(platform.as_str())?;
    let mut builder =
        rattler_lock::LockFile::builder().with_platforms(vec![rattler_lock::PlatformData {
            name: name.clone(),
            subdir: *platform,
            virtual_packages: Vec::new(),
        }])?;
    builder.set_channels(
        rattler_lock::DEFAULT_ENVIRONMENT_NAME,
        channels
            .iter()
            .map(|url| rattler_lock::Channel::from(url.as_str())),
    );
    let mut sorted = records.to_vec();
    sorted.sort_by(|a, b| {
        a.package_record
            .name
            .as_normalized()
            .cmp(b.package_record.name.as_normalized())
    });
    for record in &sorted {
        builder.add_conda_package(
            rattler_lock::DEFAULT_ENVIRONMENT_NAME,
            name.as_str(),
            record.clone().into(),
        )?;
    }
    builder.finish().to_path(&context.meta.join("pixi.lock"))?;

    let mut explicit = format!("# platform: {}\n@EXPLICIT\n", platform.as_str());
    for record in &sorted {
        match &record.package_record.sha256 {
            Some(sha) => {
                let _ = writeln!(
                    explicit,
                    "{}#sha256:{}",
                    record.url,
                    hex::encode(sha.as_slice())
                );
            }
            None => {
                let _ = writeln!(explicit, "{}", record.url);
            }
        }
    }
    let explicit_name = format!("conda-{}.lock", platform.as_str());
    fs_err::write(context.meta.join(&explicit_name), explicit)?;
    Ok(vec![
        "hpcbinder/pixi.lock".into(),
        format!("hpcbinder/{explicit_name}"),
    ])
}

/// `variables:` from environment.yml, exported by an activate.d script (the kernel helper
/// and `conda activate` both source it).
fn write_variables(context: &Context<'_>, prefix: &Path) -> anyhow::Result<()> {
    let Some(conda) = &context.request.spec.conda else {
        return Ok(());
    };
    if conda.variables.is_empty() {
        return Ok(());
    }
    let dir = prefix.join("etc/conda/activate.d");
    fs_err::create_dir_all(&dir)?;
    let mut script = String::from("# Written by hpcbinder from environment.yml `variables:`\n");
    for (name, value) in &conda.variables {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(BuildError::Package {
                message: format!("environment variable name `{name}` is not valid in a shell"),
            }
            .into());
        }
        let _ = writeln!(script, "export {name}={}", crate::shell::quote(value));
    }
    fs_err::write(dir.join("hpcbinder-variables.sh"), script)?;
    Ok(())
}
