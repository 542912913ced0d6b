//! Settings: one `resolve()` merges CLI > environment variables > user config > site
//! config > defaults into a plain [`Settings`], remembering where each value came from.
//!
//! Config found inside a repository is never read here: a repository may describe its
//! environment, never where or how we build it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diagnostic::{Blame, Diagnostic};
use crate::target::Target;
use crate::variables;

/// Errors in configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file does not parse or has unknown keys.
    #[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Malformed {
        /// The config file.
        file: PathBuf,
        /// 1-based line.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A value is not allowed.
    #[error("invalid {name} `{value}` (from {origin})")]
    BadValue {
        /// The setting.
        name: &'static str,
        /// The value.
        value: String,
        /// Where it came from.
        origin: Origin,
        /// What is allowed.
        allowed: String,
    },
    /// No home directory to put defaults in.
    #[error("neither {0} nor HOME is set, so there is no default store location")]
    NoHome(&'static str),
    /// A config file exists but cannot be read.
    #[error("could not read config file")]
    Io(#[from] std::io::Error),
}

impl Diagnostic for ConfigError {
    fn blame(&self) -> Blame {
        match self {
            Self::Io(_) => Blame::Environment,
            _ => Blame::User,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            // An unknown key (the message lists the known ones): the nearest, if close.
            Self::Malformed { message, .. } if message.starts_with("unknown field") => {
                let unknown = message.split('`').nth(1).unwrap_or_default();
                let nearest = CONFIG_KEYS
                    .iter()
                    .map(|(key, _)| (edit_distance(unknown, key), *key))
                    .min()
                    .filter(|(distance, _)| *distance <= 2);
                Some(match nearest {
                    Some((_, key)) => format!("did you mean `{key}`?"),
                    None => "see `man hpcbinder`, CONFIGURATION".into(),
                })
            }
            // Bad TOML, a duplicate key, a wrong type: the message says what is wrong.
            Self::Malformed { .. } => {
                Some("config files are TOML; see `man hpcbinder`, CONFIGURATION".into())
            }
            Self::BadValue { allowed, .. } => Some(format!("use one of: {allowed}")),
            Self::NoHome(_) => Some("pass --store DIR or set HPCBINDER_STORE".into()),
            Self::Io(_) => None,
        }
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "kebab-case")]
pub enum Origin {
    /// Built in.
    Default,
    /// The site config file.
    SiteConfig(PathBuf),
    /// The user config file.
    UserConfig(PathBuf),
    /// An environment variable.
    Environment(&'static str),
    /// A command-line flag.
    Cli(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => write!(f, "default"),
            Self::SiteConfig(p) => write!(f, "site config {}", p.display()),
            Self::UserConfig(p) => write!(f, "user config {}", p.display()),
            Self::Environment(v) => write!(f, "environment variable {v}"),
            Self::Cli(flag) => write!(f, "command line {flag}"),
        }
    }
}

/// CRAN for R images when the site names no mirror.
pub const DEFAULT_CRAN_MIRROR: &str = "https://cloud.r-project.org";

/// The keys a config file may hold, each with what it sets (the man page's CONFIGURATION).
pub const CONFIG_KEYS: &[(&str, &str)] = &[
    ("store", "The store directory: environments, images, package and clone caches."),
    ("target", "The default target: auto, conda, venv, podman, podman-hpc, apptainer, shifter, charliecloud."),
    ("python", "The Python for venvs and conda environments: X.Y, X.Y.Z or an interpreter's path; beats the repository's, with a warning. Unset: the repository's, else the python3 on PATH."),
    ("platform", "The conda platform to solve for (default: this machine's, e.g. linux-64)."),
    ("channels", "Conda channels used when a spec names none (or only nodefaults)."),
    ("channel-alias", "The URL that bare conda channel names resolve under."),
    ("mirrors", "A table of channel URL prefixes and the mirror URLs that replace them."),
    ("base-image", "The base image of rendered Containerfiles (never hard-coded)."),
    ("container-engine", "The container target --target auto picks when a repository needs a container (default podman)."),
    ("uv", "The uv executable (default: uv on PATH, else the one bootstrapped into the store)."),
    ("uv-bootstrap", "Install a pinned uv into the store from the Python index when none is configured or on PATH (default true); false falls back to pip."),
    ("pip-index-url", "The Python package index for pip requirements."),
    ("pip-find-links", "Extra wheel locations (URLs or directories) for pip requirements."),
    ("pip-no-index", "Install pip requirements from pip-find-links only."),
    ("modules", "Environment modules the kernel helper loads before starting a kernel."),
    ("virtual-packages", "Conda virtual packages to solve for (e.g. __glibc=2.28), instead of this machine's."),
    ("kernel-package", "Where ipykernel comes from when a conda spec lacks it: auto (the channels when they have it, else the Python index; the default), conda or pip."),
    ("ca-bundle", "The CA bundle given to every download, on the host and inside image builds (default: the host's)."),
    ("containers-conf", "A containers.conf passed to Podman as CONTAINERS_CONF, for builds and kernels."),
    ("podman-isolation", "podman build --isolation (chroot where OCI isolation cannot run)."),
    ("podman-run-args", "Extra podman run arguments for kernels."),
    ("podman-build-args", "Extra podman build arguments."),
    ("registry", "The registry (host:port/path) images are pushed to for Shifter."),
    ("registry-tls-verify", "Verify the registry's TLS certificate (default true)."),
    ("squash-dir", "podman-hpc's squash directory (SQUASH_DIR) that migrated images go to."),
    ("cran-mirror", "The CRAN repository of R images; {date} becomes the runtime.txt snapshot date."),
];

/// One config file, as written (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    store: Option<PathBuf>,
    target: Option<String>,
    python: Option<String>,
    platform: Option<String>,
    channels: Option<Vec<String>>,
    channel_alias: Option<String>,
    mirrors: Option<BTreeMap<String, String>>,
    base_image: Option<String>,
    container_engine: Option<String>,
    uv: Option<PathBuf>,
    uv_bootstrap: Option<bool>,
    pip_index_url: Option<String>,
    pip_find_links: Option<Vec<String>>,
    pip_no_index: Option<bool>,
    modules: Option<Vec<String>>,
    virtual_packages: Option<Vec<String>>,
    kernel_package: Option<String>,
    ca_bundle: Option<PathBuf>,
    containers_conf: Option<PathBuf>,
    podman_isolation: Option<String>,
    podman_run_args: Option<Vec<String>>,
    podman_build_args: Option<Vec<String>>,
    registry: Option<String>,
    registry_tls_verify: Option<bool>,
    squash_dir: Option<PathBuf>,
    cran_mirror: Option<String>,
}

/// What the command line contributes (the flags common to commands).
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    /// `--store`.
    pub store: Option<PathBuf>,
    /// `--target`.
    pub target: Option<Target>,
    /// `--python`.
    pub python: Option<String>,
    /// `--base-image`.
    pub base_image: Option<String>,
}

/// Fully resolved settings.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// The store root.
    pub store: PathBuf,
    /// The build target (`auto` is resolved per repository by the planner).
    pub target: Target,
    /// The Python to build with, as configured (`X.Y`, `X.Y.Z` or an interpreter path);
    /// `None` lets the repository choose, else the `python3` on PATH ([`crate::python::choose`]).
    pub python: Option<String>,
    /// The conda platform environments are built for (the compute nodes').
    pub platform: String,
    /// Default conda channels, used when an environment file names none.
    pub channels: Vec<String>,
    /// Where bare channel names point (`<alias>/<name>`).
    pub channel_alias: String,
    /// Channel URL prefix → mirror URL prefix.
    pub mirrors: BTreeMap<String, String>,
    /// Base image for container targets.
    pub base_image: Option<String>,
    /// The engine `--target auto` uses when a repository needs a container.
    pub container_engine: Target,
    /// The uv executable (else `uv` on PATH, else bootstrapped into the store).
    pub uv: Option<PathBuf>,
    /// Install a pinned uv into the store when there is none ([`crate::tools`]).
    pub uv_bootstrap: bool,
    /// The Python package index (a site mirror).
    pub pip_index_url: Option<String>,
    /// Extra wheel directories or pages.
    pub pip_find_links: Vec<String>,
    /// Use only `pip-find-links` (air-gapped sites).
    pub pip_no_index: bool,
    /// Environment modules the kernel helper loads (`module load ...`).
    pub modules: Vec<String>,
    /// Conda virtual packages of the compute nodes (`__glibc=2.28`); detected when empty.
    pub virtual_packages: Vec<String>,
    /// Where ipykernel comes from when a conda spec lacks it: `auto`, `conda` or `pip`.
    pub kernel_package: String,
    /// CA bundle given to container builds (default: the host's).
    pub ca_bundle: Option<PathBuf>,
    /// A containers.conf for Podman (passed as `CONTAINERS_CONF`), e.g. `runtime = "runc"`.
    pub containers_conf: Option<PathBuf>,
    /// `podman build --isolation` (`chroot` where OCI isolation cannot run).
    pub podman_isolation: Option<String>,
    /// Extra `podman run` arguments for kernels (e.g. `--device=nvidia.com/gpu=all`).
    pub podman_run_args: Vec<String>,
    /// Extra `podman build` arguments (e.g. `--squash`, `--build-arg=...`).
    pub podman_build_args: Vec<String>,
    /// Registry for the shifter target (`host:port/path`).
    pub registry: Option<String>,
    /// Verify the registry's TLS certificate.
    pub registry_tls_verify: bool,
    /// podman-hpc's squash directory (`SQUASH_DIR`).
    pub squash_dir: Option<PathBuf>,
    /// The CRAN repository R images install from; `{date}` becomes the repository's
    /// runtime.txt snapshot date (`latest` without one), e.g.
    /// `https://packagemanager.posit.co/cran/{date}`.
    pub cran_mirror: String,
    /// Where each value came from, by key.
    #[serde(skip)]
    pub origins: BTreeMap<&'static str, Origin>,
    /// The config files that were read.
    #[serde(skip)]
    pub files_read: Vec<PathBuf>,
}

impl Settings {
    /// The store's cache directory (clones, package caches).
    pub fn cache_dir(&self) -> PathBuf {
        self.store.join("cache")
    }

    /// The CA bundle for every network step of a build: the configured one, else the host's.
    pub fn ca_bundle(&self) -> Option<PathBuf> {
        self.ca_bundle.clone().or_else(|| {
            Some(PathBuf::from("/etc/ssl/certs/ca-certificates.crt")).filter(|p| p.is_file())
        })
    }

    /// Where a value came from.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }
}

pub use crate::version::host_platform;

/// The default site config path.
const SITE_CONFIG: &str = "/etc/hpcbinder/config.toml";

/// Resolve settings from the CLI, the environment and the config files.
pub fn resolve(cli: &CliOverrides) -> Result<Settings, ConfigError> {
    let site_path = variables::get(variables::HPCBINDER_SITE_CONFIG)
        .map_or_else(|| PathBuf::from(SITE_CONFIG), PathBuf::from);
    let user_path = match variables::get(variables::HPCBINDER_CONFIG) {
        Some(path) => Some(PathBuf::from(path)),
        None => config_home().map(|h| h.join("hpcbinder").join("config.toml")),
    };
    let mut files_read = Vec::new();
    let site = read_config(&site_path, &mut files_read)?;
    let user = match &user_path {
        Some(path) => read_config(path, &mut files_read)?,
        None => None,
    };
    let layers: Vec<(Origin, ConfigFile)> = [
        site.map(|c| (Origin::SiteConfig(site_path.clone()), c)),
        user.map(|c| (Origin::UserConfig(user_path.clone().unwrap_or_default()), c)),
    ]
    .into_iter()
    .flatten()
    .collect();

    let mut origins = BTreeMap::new();
    let env_of = |name: &'static str| variables::get(name).map(|v| (name, v));
    let store = pick_value(
        "store",
        &layers,
        &|f| f.store.as_ref().map(|p| p.display().to_string()),
        env_of(variables::HPCBINDER_STORE),
        cli.store
            .as_ref()
            .map(|s| ("--store", s.display().to_string())),
        &mut origins,
    );
    let store = match store {
        Some(store) => absolute(PathBuf::from(store)),
        None => default_store()?,
    };
    let target_text = pick_value(
        "target",
        &layers,
        &|f| f.target.clone(),
        env_of(variables::HPCBINDER_TARGET),
        cli.target.map(|t| ("--target", t.name().to_string())),
        &mut origins,
    );
    let target = match target_text {
        Some(text) => parse_target(
            "target",
            &text,
            origins.get("target").cloned().unwrap_or(Origin::Default),
        )?,
        None => Target::Auto,
    };
    let python = pick_value(
        "python",
        &layers,
        &|f| f.python.clone(),
        None,
        cli.python.clone().map(|p| ("--python", p)),
        &mut origins,
    );
    if let Some(text) = python
        .as_deref()
        .filter(|t| crate::version::PythonRequest::parse(t).is_none())
    {
        return Err(ConfigError::BadValue {
            name: "python",
            value: text.to_string(),
            origin: origins.get("python").cloned().unwrap_or(Origin::Default),
            allowed: "X.Y (3.12), X.Y.Z (3.12.4), an interpreter's path (/usr/bin/python3.11)"
                .into(),
        });
    }
    let platform = pick_value(
        "platform",
        &layers,
        &|f| f.platform.clone(),
        None,
        None,
        &mut origins,
    )
    .unwrap_or_else(|| host_platform().into());
    let channels = pick_value(
        "channels",
        &layers,
        &|f| f.channels.as_ref().map(|c| c.join("\n")),
        None,
        None,
        &mut origins,
    )
    .map(|c| c.lines().map(str::to_string).collect())
    .unwrap_or_else(|| vec!["conda-forge".into()]);
    let channel_alias = pick_value(
        "channel-alias",
        &layers,
        &|f| f.channel_alias.clone(),
        None,
        None,
        &mut origins,
    )
    .unwrap_or_else(|| "https://conda.anaconda.org".into());
    // Mirrors merge across layers (a user may add one to the site's), later layers winning.
    let mut mirrors = BTreeMap::new();
    for (origin, file) in &layers {
        if let Some(layer) = &file.mirrors {
            mirrors.extend(layer.clone());
            origins.insert("mirrors", origin.clone());
        }
    }
    let base_image = pick_value(
        "base-image",
        &layers,
        &|f| f.base_image.clone(),
        None,
        cli.base_image.clone().map(|b| ("--base-image", b)),
        &mut origins,
    );
    let engine_text = pick_value(
        "container-engine",
        &layers,
        &|f| f.container_engine.clone(),
        None,
        None,
        &mut origins,
    );
    let container_engine = match engine_text {
        Some(text) => {
            let origin = origins
                .get("container-engine")
                .cloned()
                .unwrap_or(Origin::Default);
            let engine = parse_target("container-engine", &text, origin.clone())?;
            if !engine.is_container() {
                return Err(ConfigError::BadValue {
                    name: "container-engine",
                    value: text,
                    origin,
                    allowed: Target::CONTAINERS
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            engine
        }
        None => Target::Podman,
    };
    let uv = pick_value("uv", &layers, &|f| f.uv.clone(), None, None, &mut origins);
    let uv_bootstrap = pick_value(
        "uv-bootstrap",
        &layers,
        &|f| f.uv_bootstrap,
        None,
        None,
        &mut origins,
    )
    .unwrap_or(true);
    let pip_index_url = pick_value(
        "pip-index-url",
        &layers,
        &|f| f.pip_index_url.clone(),
        None,
        None,
        &mut origins,
    );
    let pip_find_links = pick_value(
        "pip-find-links",
        &layers,
        &|f| f.pip_find_links.clone(),
        None,
        None,
        &mut origins,
    )
    .unwrap_or_default();
    let pip_no_index = pick_value(
        "pip-no-index",
        &layers,
        &|f| f.pip_no_index,
        None,
        None,
        &mut origins,
    )
    .unwrap_or(false);
    let modules = pick_value(
        "modules",
        &layers,
        &|f| f.modules.clone(),
        None,
        None,
        &mut origins,
    )
    .unwrap_or_default();
    let virtual_packages = pick_value(
        "virtual-packages",
        &layers,
        &|f| f.virtual_packages.clone(),
        None,
        None,
        &mut origins,
    )
    .unwrap_or_default();
    let kernel_package = pick_value(
        "kernel-package",
        &layers,
        &|f| f.kernel_package.clone(),
        None,
        None,
        &mut origins,
    )
    .unwrap_or_else(|| "auto".into());
    if !["auto", "conda", "pip"].contains(&kernel_package.as_str()) {
        return Err(ConfigError::BadValue {
            name: "kernel-package",
            value: kernel_package,
            origin: origins
                .get("kernel-package")
                .cloned()
                .unwrap_or(Origin::Default),
            allowed: "auto, conda, pip".into(),
        });
    }
    let ca_bundle = pick_value(
        "ca-bundle",
        &layers,
        &|f| f.ca_bundle.clone(),
        None,
        None,
        &mut origins,
    );
    let containers_conf = pick_value(
        "containers-conf",
        &layers,
        &|f| f.containers_conf.clone(),
        None,
        None,
        &mut origins,
    );
    let podman_isolation = pick_value(
        "podman-isolation",
        &layers,
        &|f| f.podman_isolation.clone(),
        None,
        None,
        &mut origins,
    );
    let podman_run_args = pick_value(
        "podman-run-args",
        &layers,
        &|f| f.podman_run_args.clone(),
        None,
        None,
        &mut origins,
    )
    .unwrap_or_default();
    let podman_build_args = pick_value(
        "podman-build-args",
        &layers,
        &|f| f.podman_build_args.clone(),
        None,
        None,
        &mut origins,
    )
    .unwrap_or_default();
    let registry = pick_value(
        "registry",
        &layers,
        &|f| f.registry.clone(),
        None,
        None,
        &mut origins,
    );
    let registry_tls_verify = pick_value(
        "registry-tls-verify",
        &layers,
        &|f| f.registry_tls_verify,
        None,
        None,
        &mut origins,
    )
    .unwrap_or(true);
    let squash_dir = pick_value(
        "squash-dir",
        &layers,
        &|f| f.squash_dir.clone(),
        None,
        None,
        &mut origins,
    );
    let cran_mirror = pick_value(
        "cran-mirror",
        &layers,
        &|f| f.cran_mirror.clone(),
        None,
        None,
        &mut origins,
    )
    .unwrap_or_else(|| DEFAULT_CRAN_MIRROR.to_string());
    Ok(Settings {
        cran_mirror,
        ca_bundle,
        containers_conf,
        podman_isolation,
        podman_run_args,
        podman_build_args,
        registry,
        registry_tls_verify,
        squash_dir,
        uv,
        uv_bootstrap,
        pip_index_url,
        pip_find_links,
        pip_no_index,
        modules,
        virtual_packages,
        kernel_package,
        store,
        target,
        python,
        platform,
        channels,
        channel_alias,
        mirrors,
        base_image,
        container_engine,
        origins,
        files_read,
    })
}

/// The value of one setting: site, then user config, then the environment, then the CLI.
fn pick_value<T: Clone>(
    key: &'static str,
    layers: &[(Origin, ConfigFile)],
    get: &dyn Fn(&ConfigFile) -> Option<T>,
    env: Option<(&'static str, T)>,
    cli: Option<(&'static str, T)>,
    origins: &mut BTreeMap<&'static str, Origin>,
) -> Option<T> {
    let mut value = None;
    for (origin, file) in layers {
        if let Some(v) = get(file) {
            value = Some(v);
            origins.insert(key, origin.clone());
        }
    }
    if let Some((name, v)) = env {
        value = Some(v);
        origins.insert(key, Origin::Environment(name));
    }
    if let Some((flag, v)) = cli {
        value = Some(v);
        origins.insert(key, Origin::Cli(flag));
    }
    value
}

fn parse_target(name: &'static str, text: &str, origin: Origin) -> Result<Target, ConfigError> {
    Target::from_name(text).ok_or_else(|| ConfigError::BadValue {
        name,
        value: text.to_string(),
        origin,
        allowed: Target::ALL
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn read_config(
    path: &Path,
    files_read: &mut Vec<PathBuf>,
) -> Result<Option<ConfigFile>, ConfigError> {
    let text = match fs_err::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    files_read.push(path.to_path_buf());
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| ConfigError::Malformed {
            file: path.to_path_buf(),
            line: e.span().map(|s| crate::detect::line_at(&text, s.start)),
            message: e.message().to_string(),
        })
}

fn home() -> Option<PathBuf> {
    variables::get(variables::HOME).map(PathBuf::from)
}

fn config_home() -> Option<PathBuf> {
    variables::get(variables::XDG_CONFIG_HOME)
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".config")))
}

fn default_store() -> Result<PathBuf, ConfigError> {
    variables::get(variables::XDG_DATA_HOME)
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".local").join("share")))
        .map(|d| d.join("hpcbinder"))
        .ok_or(ConfigError::NoHome(variables::XDG_DATA_HOME))
}

fn absolute(path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map(|d| d.join(&path))
            .unwrap_or(path)
    }
}
