//! The `conda` target, in-process with the rattler crates: channels (through the site's
//! channel alias and mirrors) → repodata → solve (resolvo) → install into the prefix from
//! the store's package cache (hardlinks) → `pixi.lock` + `@EXPLICIT` locks → the `pip:`
//! section through uv.
//!
//! `--from-lock` (or a repository's `pixi.lock`) installs the locked records without a solve.

use std::fmt::Write as _;
use std::path::Path;

use rattler::install::Installer;
use rattler_cache::package_cache::PackageCache;
use rattler_conda_types::{
    Channel, ChannelConfig, GenericVirtualPackage, MatchSpec, ParseStrictness, RepoDataRecord,
    Subdir,
};
use rattler_repodata_gateway::Gateway;
use rattler_solve::{resolvo, SolverImpl, SolverTask};

use super::process::{self, BuildError, Fault};
use super::{python, spec_has_ipykernel, Context};
use crate::detect::{Buildpack, CondaSpec};
use crate::events::{Phase, ReporterExt};
use crate::key;

/// Build the conda environment; returns the lock files written (relative to the prefix).
pub fn build(context: &Context<'_>) -> anyhow::Result<Vec<String>> {
    runtime()?.block_on(async {
        let linked = link(context, &context.prefix, None).await?;
        let mut locks = linked.locks.clone();
        let python = context.prefix.join("bin/python");
        if let Some(lock) = pip_lock(context, &linked, &python)? {
            install_pip(context, &python, &lock)?;
            locks.push("hpcbinder/pip.lock".into());
        }
        Ok(locks)
    })
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
    runtime()?.block_on(async {
        let linked = link(context, dir, Some(target_prefix)).await?;
        // The staged interpreter runs here too (conda's Python finds its prefix from its
        // own location), so the pip section resolves against the image's Python.
        let pip_lock = pip_lock(context, &linked, &dir.join("bin/python"))?;
        let mut locks = linked.locks;
        if pip_lock.is_some() {
            locks.push("hpcbinder/pip.lock".into());
        }
        Ok(Staged { locks, pip_lock })
    })
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// What linking left for the pip step.
struct Linked {
    locks: Vec<String>,
    /// The pip lines to install after the conda packages (environment.yml `pip:`, pixi
    /// `[pypi-dependencies]`).
    pip_lines: Vec<String>,
    /// Pip packages a lock file fixes by URL and sha256 (conda-lock's `manager: pip`).
    pip_pins: Vec<PipPin>,
}

/// A pip package fixed by a lock file: the resolved pip lock must hold exactly this file.
struct PipPin {
    name: String,
    url: String,
    sha256: Option<String>,
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
    let platform: Subdir = settings
        .platform
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid platform `{}`: {e}", settings.platform))?;
    let package_cache = PackageCache::new(context.store.package_cache("conda"));
    let repo_lock = spec
        .lock
        .as_ref()
        .filter(|l| l.format == "pixi")
        .map(|l| context.repo().join(&l.file));
    let lock_file = request.from_lock.clone().or(repo_lock);
    let mut pip_pins = Vec::new();
    let mut pip_lines = spec
        .conda
        .as_ref()
        .map(|c| c.pip.clone())
        .unwrap_or_default();
    if spec.conda.is_none() {
        // A pip-only spec built as a conda env (`--target conda`, or a venv whose Python
        // is only available from conda): its requirement files go through the pip step.
        if let Some(pip) = &spec.pip {
            pip_lines.extend(
                pip.requirements
                    .first()
                    .map(|f| format!("-r {}", context.repo().join(f).display())),
            );
        }
    }
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
        let (records, pins) = explicit_records(&lock, &package_cache).await?;
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
                let manifest = spec
                    .files
                    .iter()
                    .find(|f| f.ends_with("pixi.toml"))
                    .cloned()
                    .unwrap_or_default();
                context.reporter.phase(
                    Phase::Building,
                    format!("{manifest} has no pixi.lock: solving it"),
                );
                let manifest = pixi_manifest(&context.repo().join(manifest))?;
                pip_lines = manifest.pip.clone();
                manifest
            }
            // A pip-only spec built as a conda env: Python from conda, packages from pip.
            _ => CondaSpec::default(),
        };
        solve(context, &conda, &platform, &package_cache).await?
    };

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
    installer
        .install(dir, records.clone())
        .await
        .map_err(|e| install_error(dir, e))?;

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
    if text.contains("No space left") || text.contains("StorageFull") {
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

/// Records for an `@EXPLICIT` file (no solve): each package is fetched into the package
/// cache, its `#sha256:` fragment checked, and its record read from its own
/// `info/index.json`.
async fn explicit_records(
    path: &Path,
    package_cache: &PackageCache,
) -> anyhow::Result<(Vec<RepoDataRecord>, Vec<PipPin>)> {
    use rattler_conda_types::package::{CondaArchiveIdentifier, IndexJson, PackageFile};
    use rattler_conda_types::{ExplicitEnvironmentSpec, PackageArchiveHash, PackageRecord};
    let package_error = |message: String| BuildError::Package { message };
    let (entries, pins) = if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
        conda_lock_entries(path)?
    } else {
        let explicit = ExplicitEnvironmentSpec::from_path(path)
            .map_err(|e| package_error(format!("{}: {e}", path.display())))?;
        (explicit.packages, Vec::new())
    };
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

/// The packages of a `conda-lock.yml` for this platform: conda ones as `@EXPLICIT`
/// entries (URL with a `#sha256:` fragment), pip ones as pins (name, URL, sha256).
fn conda_lock_entries(
    path: &Path,
) -> anyhow::Result<(
    Vec<rattler_conda_types::ExplicitEnvironmentEntry>,
    Vec<PipPin>,
)> {
    let text = fs_err::read_to_string(path)?;
    let lock: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)?;
    let platform = crate::settings::host_platform();
    let mut entries = Vec::new();
    let mut pins = Vec::new();
    for package in lock
        .get("package")
        .and_then(|p| p.as_sequence())
        .into_iter()
        .flatten()
    {
        let field = |name: &str| {
            package
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
        };
        if field("platform") != platform {
            continue;
        }
        let sha256 = package
            .get("hash")
            .and_then(|h| h.get("sha256"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let mut url = url::Url::parse(field("url"))
            .map_err(|e| anyhow::anyhow!("{}: bad url `{}`: {e}", path.display(), field("url")))?;
        if field("manager") == "pip" {
            pins.push(PipPin {
                name: field("name").to_string(),
                url: url.to_string(),
                sha256,
            });
            continue;
        }
        if let Some(sha256) = &sha256 {
            url.set_fragment(Some(&format!("sha256:{sha256}")));
        }
        entries.push(url.into());
    }
    Ok((entries, pins))
}

/// A `pixi.toml` without its lock, read as an environment to solve: channels and
/// `[dependencies]` (conda), `[pypi-dependencies]` (pip).
fn pixi_manifest(path: &Path) -> anyhow::Result<CondaSpec> {
    let manifest: toml::Table = toml::from_str(&fs_err::read_to_string(path)?)?;
    let workspace = manifest
        .get("workspace")
        .or_else(|| manifest.get("project"));
    let channels = workspace
        .and_then(|w| w.get("channels"))
        .and_then(|c| c.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let spec_of = |name: &str, value: &toml::Value| match value {
        toml::Value::String(s) if s == "*" => name.to_string(),
        toml::Value::String(s) => format!("{name} {s}"),
        toml::Value::Table(t) => match t.get("version").and_then(|v| v.as_str()) {
            Some(v) if v != "*" => format!("{name} {v}"),
            _ => name.to_string(),
        },
        _ => name.to_string(),
    };
    let table = |key: &str| {
        manifest
            .get(key)
            .and_then(|d| d.as_table())
            .cloned()
            .unwrap_or_default()
    };
    Ok(CondaSpec {
        channels,
        dependencies: table("dependencies")
            .iter()
            .map(|(n, v)| spec_of(n, v))
            .collect(),
        pip: table("pypi-dependencies")
            .iter()
            .map(|(n, v)| spec_of(n, v).replacen(' ', "", 1))
            .collect(),
        ..CondaSpec::default()
    })
}

/// Records of `platform` from a pixi.lock's default environment.
fn locked_records(path: &Path, platform: &Subdir) -> anyhow::Result<Vec<RepoDataRecord>> {
    let lock = rattler_lock::LockFile::from_path(path)
        .map_err(|e| anyhow::anyhow!("{}: not a readable pixi.lock: {e}", path.display()))?;
    let environment = lock
        .default_environment()
        .ok_or_else(|| anyhow::anyhow!("{}: has no default environment", path.display()))?;
    let handle = lock.platform(platform.as_str()).ok_or_else(|| {
        anyhow::anyhow!("{}: does not lock {}", path.display(), platform.as_str())
    })?;
    Ok(environment
        .conda_repodata_records(handle)?
        .unwrap_or_default())
}

/// Channels, repodata, virtual packages, resolvo.
async fn solve(
    context: &Context<'_>,
    conda: &CondaSpec,
    platform: &Subdir,
    package_cache: &PackageCache,
) -> anyhow::Result<(Vec<RepoDataRecord>, Vec<MatchSpec>, Vec<String>)> {
    let request = context.request;
    let settings = request.settings;
    let config = ChannelConfig {
        // URL joining drops a last path segment without a trailing slash
        // (`https://mirror/conda` + `conda-forge` would become `https://mirror/conda-forge`).
        channel_alias: url::Url::parse(&format!(
            "{}/",
            settings.channel_alias.trim_end_matches('/')
        ))
        .map_err(|e| anyhow::anyhow!("invalid channel-alias `{}`: {e}", settings.channel_alias))?,
        root_dir: context.repo().to_path_buf(),
    };
    let names: Vec<&String> = if conda.channels.iter().any(|c| c != "nodefaults") {
        conda
            .channels
            .iter()
            .filter(|c| *c != "nodefaults")
            .collect()
    } else {
        settings.channels.iter().collect()
    };
    let mut channels = Vec::new();
    for name in names {
        let channel = Channel::from_str(name, &config).map_err(|e| BuildError::Channel {
            channel: name.clone(),
            message: e.to_string(),
        })?;
        channels.push(mirrored(channel, &settings.mirrors));
    }
    let mut specs = Vec::new();
    for dependency in &conda.dependencies {
        specs.push(
            MatchSpec::from_str(dependency, ParseStrictness::Lenient).map_err(|e| {
                BuildError::Package {
                    message: format!("`{dependency}` is not a valid conda spec: {e}"),
                }
            })?,
        );
    }
    let names_python = |s: &MatchSpec| {
        s.name
            .as_exact()
            .is_some_and(|n| n.as_normalized() == "python")
    };
    if !specs.iter().any(names_python) {
        let (version, _) = key::python_version(request.spec, settings);
        specs.push(MatchSpec::from_str(
            &format!("python {version}.*"),
            ParseStrictness::Lenient,
        )?);
    }
    if settings.kernel_package == "conda" && !spec_has_ipykernel(request.spec, context.repo()) {
        context.reporter.phase(
            Phase::Building,
            "Adding ipykernel: the environment does not list it",
        );
        specs.push(MatchSpec::from_str("ipykernel", ParseStrictness::Lenient)?);
    }
    context.reporter.phase(
        Phase::Building,
        format!(
            "Reading repodata from {}",
            channels
                .iter()
                .map(|c| c.base_url.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let gateway = Gateway::builder()
        .with_cache_dir(context.store.root().join("cache").join("repodata"))
        .with_package_cache(package_cache.clone())
        .finish();
    let repodata = gateway
        .query(channels.clone(), [*platform, Subdir::NoArch], specs.clone())
        .recursive(true)
        .await
        .map_err(|e| BuildError::Channel {
            channel: channels
                .iter()
                .map(|c| c.base_url.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            message: error_chain(&e),
        })?;
    let virtual_packages = virtual_packages(&settings.virtual_packages)?;
    context
        .reporter
        .phase(Phase::Building, format!("Solving {} specs", specs.len()));
    let task = SolverTask {
        specs: specs.clone(),
        virtual_packages,
        ..SolverTask::from_iter(repodata.iter())
    };
    let solution = resolvo::Solver.solve(task).map_err(|e| match e {
        rattler_solve::SolveError::Unsolvable(reasons) => BuildError::Unsolvable {
            message: reasons.join("\n"),
        },
        other => BuildError::Unsolvable {
            message: other.to_string(),
        },
    })?;
    let urls = channels.iter().map(|c| c.base_url.to_string()).collect();
    Ok((solution.records, specs, urls))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(message, ": {cause}");
        source = cause.source();
    }
    message
}

/// Point a channel at the site's mirror when one is configured for its URL prefix.
fn mirrored(channel: Channel, mirrors: &std::collections::BTreeMap<String, String>) -> Channel {
    let base = channel.base_url.to_string();
    for (from, to) in mirrors {
        if let Some(rest) = base.strip_prefix(from.trim_end_matches('/')) {
            let url = format!("{}{rest}", to.trim_end_matches('/'));
            if let Ok(url) = url::Url::parse(&url) {
                return Channel::from_url(url);
            }
        }
    }
    channel
}

/// Configured virtual packages (`__glibc=2.28`), else those of this machine.
fn virtual_packages(configured: &[String]) -> anyhow::Result<Vec<GenericVirtualPackage>> {
    if configured.is_empty() {
        let detected = rattler_virtual_packages::VirtualPackages::detect(
            &rattler_virtual_packages::VirtualPackageOverrides::from_env(),
            None,
        )?;
        return Ok(detected.into_generic_virtual_packages().collect());
    }
    configured
        .iter()
        .map(|text| {
            serde_json::from_value(serde_json::Value::String(text.clone()))
                .map_err(|e| anyhow::anyhow!("invalid virtual package `{text}`: {e}"))
        })
        .collect()
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
        let _ = writeln!(script, "export {name}='{}'", value.replace('\'', "'\\''"));
    }
    fs_err::write(dir.join("hpcbinder-variables.sh"), script)?;
    Ok(())
}

/// The `pip:` section (and ipykernel from pip when so configured), resolved with uv to a
/// hashed lock (`hpcbinder/pip.lock`) for the environment's Python; `None` when empty.
fn pip_lock(
    context: &Context<'_>,
    linked: &Linked,
    python: &Path,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    let pip_lines = &linked.pip_lines;
    let request = context.request;
    let spec = request.spec;
    let base = pip_base(context);
    let mut lines = Vec::new();
    for line in pip_lines {
        match crate::detect::include_target(line) {
            Some(file) => lines.push(format!("-r {}", base.join(file).display())),
            None => lines.push(line.clone()),
        }
    }
    if request.from_lock.is_none()
        && request.settings.kernel_package == "pip"
        && !spec_has_ipykernel(spec, context.repo())
    {
        context.reporter.phase(
            Phase::Building,
            "Adding ipykernel (from pip): the environment does not list it",
        );
        lines.push("ipykernel".into());
    }
    if lines.is_empty() {
        return Ok(None);
    }
    let uv = pip_uv(request.settings)?;
    let input = context.meta.join("pip-requirements.in");
    fs_err::write(&input, lines.join("\n") + "\n")?;
    let lock = context.meta.join("pip.lock");
    context
        .reporter
        .phase(Phase::Building, "Resolving the pip section with uv");
    python::compile_lock(
        context,
        &uv,
        &python.display().to_string(),
        &input,
        &lock,
        &base,
    )?;
    check_pins(&lock, &linked.pip_pins)?;
    Ok(Some(lock))
}

/// Every pinned pip package must be in the resolved lock with its recorded sha256 (uv
/// hashes what it fetched, so a different file at the URL is caught here).
fn check_pins(lock: &Path, pins: &[PipPin]) -> anyhow::Result<()> {
    if pins.is_empty() {
        return Ok(());
    }
    let text = fs_err::read_to_string(lock)?;
    // Requirement blocks: a requirement line, then its indented `--hash=` lines.
    let mut blocks: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            blocks.push((
                trimmed.trim_end_matches('\\').trim().to_string(),
                Vec::new(),
            ));
        } else if let (Some(hash), Some(block)) = (
            trimmed
                .trim_end_matches('\\')
                .trim()
                .strip_prefix("--hash=sha256:"),
            blocks.last_mut(),
        ) {
            block.1.push(hash.to_string());
        }
    }
    for pin in pins {
        let Some(expected) = &pin.sha256 else {
            continue;
        };
        let found = blocks.iter().find(|(requirement, _)| {
            requirement.ends_with(&pin.url)
                || requirement.contains(&format!("{} @ {}", pin.name, pin.url))
        });
        match found {
            Some((_, hashes)) if hashes.iter().any(|h| h.eq_ignore_ascii_case(expected)) => {}
            Some((_, hashes)) => {
                return Err(BuildError::Package {
                    message: format!(
                        "the pip package {} at {} has sha256 {}, but the lock file says {expected}",
                        pin.name,
                        pin.url,
                        hashes.join(", ")
                    ),
                }
                .into())
            }
            None => {
                return Err(BuildError::Package {
                    message: format!(
                        "the pip package {} ({}) from the lock file is missing from the resolved pip lock",
                        pin.name, pin.url
                    ),
                }
                .into())
            }
        }
    }
    Ok(())
}

/// Install the pip section's lock into the environment's Python.
fn install_pip(context: &Context<'_>, python: &Path, lock: &Path) -> anyhow::Result<()> {
    let settings = context.request.settings;
    let uv = pip_uv(settings)?;
    let (python, lock) = (python.display().to_string(), lock.display().to_string());
    context
        .reporter
        .phase(Phase::Building, "Installing the pip section with uv");
    // `install`, not `sync`: sync would remove the conda packages pip does not know about.
    let mut install = python::uv_command(
        &uv,
        settings,
        &["pip", "install", "--python", &python, "-r", &lock],
    );
    install.current_dir(pip_base(context));
    process::run(
        context,
        "uv pip install (pip section)",
        &mut install,
        Fault::Spec,
    )
}

fn pip_uv(settings: &crate::settings::Settings) -> Result<std::path::PathBuf, BuildError> {
    python::uv(settings).ok_or_else(|| BuildError::Tool {
        tool: "uv (for the pip: section)".into(),
    })
}

/// The directory the pip section's relative paths are relative to (environment.yml's).
fn pip_base(context: &Context<'_>) -> std::path::PathBuf {
    context
        .request
        .spec
        .files
        .iter()
        .find(|f| f.ends_with("environment.yml") || f.ends_with("environment.yaml"))
        .and_then(|f| context.repo().join(f).parent().map(Path::to_path_buf))
        .unwrap_or_else(|| context.repo().to_path_buf())
}
