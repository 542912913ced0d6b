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

mod archives;
mod tables;
pub use archives::ArchivesTable;
pub use tables::{Builder, RecordsTable, ServeTable, SlurmTable};

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

/// Edit distance with adjacent transpositions (optimal string alignment), for "did you
/// mean": `stroe` is one step from `store`, two from `serve`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut table = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in table.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in table[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (table[i - 1][j] + 1)
                .min(table[i][j - 1] + 1)
                .min(table[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(table[i - 2][j - 2] + 1);
            }
            table[i][j] = best;
        }
    }
    table[a.len()][b.len()]
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

/// Every config key, once: its `ConfigFile` field and type, its name in config files, and
/// what it sets (the man page's CONFIGURATION and `config show` read this table). Adding a
/// setting is a line here, its field in [`Settings`] or one of its groups, and its line in
/// [`resolve`].
macro_rules! config_keys {
    ($($field:ident : $ty:ty = $key:literal, $doc:literal;)*) => {
        /// The keys a config file may hold, each with what it sets.
        pub const CONFIG_KEYS: &[(&str, &str)] = &[$(($key, $doc)),*];

        /// One config file, as written (all optional).
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        struct ConfigFile {
            $($field: Option<$ty>,)*
        }

        /// Each key's field name, for the test that keeps names and fields in step.
        #[cfg(test)]
        const CONFIG_FIELDS: &[&str] = &[$(stringify!($field)),*];
    };
}

config_keys! {
    store: PathBuf = "store", "The store directory: environments, images, package and clone caches.";
    store_maintainers: Vec<String> = "store-maintainers", "The store's maintainers: users (names or ids) and groups (`@name`) whose environments in a shared store you trust, besides yourself, root and the store's owner (anyone else's are rebuilt privately), and who, with root and the owner, may pin, unpin, rm and gc.";
    source_hosts: Vec<String> = "source-hosts", "Hosts that repositories and their git submodules may be fetched from (default: any). Submodules on this machine (file://) are allowed only for a local repository.";
    package_sources: Vec<String> = "package-sources", "Package sources a remote repository may name: conda channel names and URL prefixes of channels, indexes and find-links (default: the public conda and PyPI hosts). The configured channels, mirrors, index and find-links are always allowed.";
    local_sources: bool = "local-sources", "Whether builds may use this machine's paths: a local repository, file:// submodules, channels and indexes, loopback servers (default true; the launch service sets false).";
    shared_kernels: PathBuf = "shared-kernels", "Where pinned (collaboration) kernels are written: a directory named `kernels`, whose parent goes into JUPYTER_PATH (default: <store>/kernels).";
    target: String = "target", "The default target: auto, conda, venv, podman, podman-hpc, apptainer, shifter, charliecloud.";
    python: String = "python", "The Python for venvs and conda environments: X.Y, X.Y.Z or an interpreter's path; beats the repository's, with a warning. Unset: the repository's, else the python3 on PATH.";
    platform: String = "platform", "The conda platform to solve for (default: this machine's, e.g. linux-64).";
    channels: Vec<String> = "channels", "Conda channels used when a spec names none (or only nodefaults).";
    channel_alias: String = "channel-alias", "The URL that bare conda channel names resolve under.";
    mirrors: BTreeMap<String, String> = "mirrors", "A table of channel URL prefixes and the mirror URLs that replace them.";
    base_image: String = "base-image", "The base image of rendered Containerfiles (never hard-coded).";
    container_engine: String = "container-engine", "The container target --target auto picks when a repository needs a container (default podman).";
    uv: PathBuf = "uv", "The uv executable (default: uv on PATH, else the one bootstrapped into the store).";
    uv_bootstrap: bool = "uv-bootstrap", "Install a pinned uv into the store from the Python index when none is configured or on PATH (default true); false falls back to pip.";
    pip_index_url: String = "pip-index-url", "The Python package index for pip requirements.";
    pip_find_links: Vec<String> = "pip-find-links", "Extra wheel locations (URLs or directories) for pip requirements.";
    pip_no_index: bool = "pip-no-index", "Install pip requirements from pip-find-links only.";
    server_packages: Vec<String> = "server-packages", "What `build --with-server` (and the launch service's server mode) adds so a JupyterHub spawner can start the user's server inside the environment, as repo2docker does (pip requirement lines; default jupyterhub and jupyterlab; pin jupyterhub to the hub's major version).";
    sandbox_network: String = "sandbox-network", "What network repository code in the sandbox gets: packages (only the hosts of the site's package sources, through hpcbinder's proxy; the default), none, or host (the machine's network, unfiltered).";
    sandbox: String = "sandbox", "Where repository code (postBuild, setup.py builds) runs: bwrap (a bubblewrap sandbox that sees only the environment being built), none, or auto (bwrap when it works here, else none with a warning; the default).";
    modules: Vec<String> = "modules", "Environment modules the kernel helper loads before starting a kernel.";
    virtual_packages: Vec<String> = "virtual-packages", "Conda virtual packages to solve for (e.g. __glibc=2.28), instead of this machine's.";
    kernel_package: String = "kernel-package", "Where ipykernel comes from when a conda spec lacks it: auto (the channels when they have it, else the Python index; the default), conda or pip.";
    ca_bundle: PathBuf = "ca-bundle", "The CA bundle given to every download, on the host and inside image builds (default: the host's).";
    containers_conf: PathBuf = "containers-conf", "A containers.conf passed to Podman as CONTAINERS_CONF, for builds and kernels.";
    podman_isolation: String = "podman-isolation", "podman build --isolation (chroot where OCI isolation cannot run).";
    podman_run_args: Vec<String> = "podman-run-args", "Extra podman run arguments for kernels.";
    podman_build_args: Vec<String> = "podman-build-args", "Extra podman build arguments.";
    registry: String = "registry", "The registry (host:port/path) images are pushed to for Shifter.";
    registry_tls_verify: bool = "registry-tls-verify", "Verify the registry's TLS certificate (default true).";
    squash_dir: PathBuf = "squash-dir", "podman-hpc's squash directory (SQUASH_DIR) that migrated images go to.";
    cran_mirror: String = "cran-mirror", "The CRAN repository of R images; {date} becomes the runtime.txt snapshot date.";
    builder: String = "builder", "Where builds run: local (this machine; the default) or slurm (each build a Slurm batch job, as `build --submit` does; the launch service's builds too).";
    slurm: SlurmTable = "slurm", "The batch jobs of slurm builds ([slurm]): partition, qos, account, time, cpus, memory, sbatch-args, hpcbinder (the executable jobs run), and per-target overrides in [slurm.target.<target>] (see SLURM).";
    records: RecordsTable = "records", "Where archived records are looked up ([records]): doi-resolver (the DOI handle API's base URL, default https://doi.org) zenodo (default https://zenodo.org), figshare (its pages, default https://figshare.com), figshare-api (default https://api.figshare.com/v2), figshare-downloads (the hosts its files come from, default https://ndownloader.figshare.com), dataverse (the installations DOIs may resolve to), hydroshare (default https://www.hydroshare.org), ckan (the CKAN sites datasets may come from), software-heritage (its API, default https://archive.softwareheritage.org/api/1) and prepare-timeout (seconds to wait for a bag or vault bundle, default 600).";
    archives: ArchivesTable = "archives", "How much a downloaded archive (a record's zip or tarball) may unpack to ([archives]; whole numbers of bytes): max-bytes (file contents written, hard-link copies included; default 4294967296, 4 GiB), max-entries (files, directories and links; default 100000), max-ratio (decompressed bytes per compressed byte; default 100) and ratio-floor-bytes (below which the ratio is not checked; default 67108864, 64 MiB). An archive over a limit is refused.";
    serve: ServeTable = "serve", "The launch service's table ([serve]): max-builds, max-builds-per-user, build-timeout, failed-build-retry, banned-specs, allowed-specs, providers, build-token-expires, shutdown-grace, launch, named-server-limit, content, content-folder (see SERVICE).";
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

/// Fully resolved settings, grouped by what they configure.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// The store root.
    pub store: PathBuf,
    /// Users (names or ids) whose results in a shared store are trusted, besides this
    /// user, root and the store's owner ([`crate::store::trust`]).
    pub store_maintainers: Vec<String>,
    /// Hosts that repositories and their submodules may come from; empty allows any.
    pub source_hosts: Vec<String>,
    /// What a remote repository may download packages from ([`crate::sources`]); empty
    /// means the public conda and PyPI hosts.
    pub package_sources: Vec<String>,
    /// Whether paths and loopback servers on this machine may be used as sources.
    pub local_sources: bool,
    /// The launch service's `[serve]` table (`hpcbinder serve` resolves it).
    pub serve: ServeTable,
    /// Where builds run (`builder`).
    pub builder: Builder,
    /// The `[slurm]` table: the batch jobs of `slurm` builds.
    pub slurm: SlurmTable,
    /// The `[records]` table: DOI resolver and providers' base URLs.
    pub records: RecordsTable,
    /// The `[archives]` table: how much a downloaded archive may unpack to
    /// (`settings.archives.limits()`).
    pub archives: ArchivesTable,
    /// Where pinned kernels go (a directory named `kernels`); `None`: `<store>/kernels`.
    pub shared_kernels: Option<PathBuf>,
    /// The build target (`auto` is resolved per repository by the planner).
    pub target: Target,
    /// The Python to build with, as configured (`X.Y`, `X.Y.Z` or an interpreter path);
    /// `None` lets the repository choose, else the `python3` on PATH ([`crate::python::choose`]).
    pub python: Option<String>,
    /// Environment modules the kernel helper loads (`module load ...`).
    pub modules: Vec<String>,
    /// Where repository code runs: `bwrap`, `none` or `auto`
    /// ([`crate::backends::sandbox`]).
    pub sandbox: String,
    /// The sandbox's network: `packages`, `none` or `host`
    /// ([`crate::backends::netproxy`]).
    pub sandbox_network: String,
    /// CA bundle given to every download, on the host and in image builds (default: the host's).
    pub ca_bundle: Option<PathBuf>,
    /// Conda: platform, channels, mirrors.
    #[serde(flatten)]
    pub conda: CondaSettings,
    /// Python packages: uv and the index.
    #[serde(flatten)]
    pub pip: PipSettings,
    /// Container targets: base image, engines, registry.
    #[serde(flatten)]
    pub container: ContainerSettings,
    /// Where each value came from, by key.
    #[serde(skip)]
    pub origins: BTreeMap<&'static str, Origin>,
    /// The config files that were read.
    #[serde(skip)]
    pub files_read: Vec<PathBuf>,
}

/// Where conda packages come from, and for which machine.
#[derive(Debug, Clone, Serialize)]
pub struct CondaSettings {
    /// The conda platform environments are built for (the compute nodes').
    pub platform: String,
    /// Default conda channels, used when an environment file names none.
    pub channels: Vec<String>,
    /// Where bare channel names point (`<alias>/<name>`).
    pub channel_alias: String,
    /// Channel URL prefix → mirror URL prefix.
    pub mirrors: BTreeMap<String, String>,
    /// Conda virtual packages of the compute nodes (`__glibc=2.28`); detected when empty.
    pub virtual_packages: Vec<String>,
    /// Where ipykernel comes from when a conda spec lacks it: `auto`, `conda` or `pip`.
    pub kernel_package: String,
}

/// Where Python packages come from, and the uv that installs them.
#[derive(Debug, Clone, Serialize)]
pub struct PipSettings {
    /// The uv executable (else `uv` on PATH, else bootstrapped into the store).
    pub uv: Option<PathBuf>,
    /// Install a pinned uv into the store when there is none ([`crate::tools`]).
    pub uv_bootstrap: bool,
    /// The Python package index (a site mirror).
    #[serde(rename = "pip_index_url")]
    pub index_url: Option<String>,
    /// Extra wheel directories or pages.
    #[serde(rename = "pip_find_links")]
    pub find_links: Vec<String>,
    /// Use only `find_links` (air-gapped sites).
    #[serde(rename = "pip_no_index")]
    pub no_index: bool,
    /// What `--with-server` adds (`jupyterhub`, `jupyterlab` unless configured).
    pub server_packages: Vec<String>,
    /// `--with-server`: this build adds `server_packages` (they enter the key).
    pub with_server: bool,
}

impl PipSettings {
    /// The packages this build adds for a single-user server: none without
    /// `--with-server`.
    pub fn server_additions(&self) -> &[String] {
        if self.with_server {
            &self.server_packages
        } else {
            &[]
        }
    }
}

/// How container targets build and run images.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerSettings {
    /// Base image for container targets.
    pub base_image: Option<String>,
    /// The engine `--target auto` uses when a repository needs a container.
    #[serde(rename = "container_engine")]
    pub engine: Target,
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
}

impl Settings {
    /// The store's cache directory (clones, package caches).
    ///
    /// Per user (`cache/u<uid>`): a member who could write another's cached clone (its
    /// config, its files) or repodata would change what that user builds.
    pub fn cache_dir(&self) -> PathBuf {
        crate::store::user_cache_at(&self.store)
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
    let mut layers = Layers {
        files: [
            site.map(|c| (Origin::SiteConfig(site_path.clone()), c)),
            user.map(|c| (Origin::UserConfig(user_path.clone().unwrap_or_default()), c)),
        ]
        .into_iter()
        .flatten()
        .collect(),
        origins: BTreeMap::new(),
    };
    let env = |name: &'static str| variables::get(name).map(|v| (name, v));

    let store = layers.pick_over(
        "store",
        |f| f.store.as_ref().map(|p| p.display().to_string()),
        env(variables::HPCBINDER_STORE),
        cli.store
            .as_ref()
            .map(|s| ("--store", s.display().to_string())),
    );
    let store = match store {
        Some(store) => absolute(PathBuf::from(store)),
        None => default_store()?,
    };
    let target = match layers.pick_over(
        "target",
        |f| f.target.clone(),
        env(variables::HPCBINDER_TARGET),
        cli.target.map(|t| ("--target", t.name().to_string())),
    ) {
        Some(text) => parse_target("target", &text, layers.origin("target"))?,
        None => Target::Auto,
    };
    let python = layers.pick_over(
        "python",
        |f| f.python.clone(),
        None,
        cli.python.clone().map(|p| ("--python", p)),
    );
    if let Some(text) = python
        .as_deref()
        .filter(|t| crate::version::PythonRequest::parse(t).is_none())
    {
        return Err(ConfigError::BadValue {
            name: "python",
            value: text.to_string(),
            origin: layers.origin("python"),
            allowed: "X.Y (3.12), X.Y.Z (3.12.4), an interpreter's path (/usr/bin/python3.11)"
                .into(),
        });
    }
    // Mirrors merge across layers (a user may add one to the site's), later layers winning.
    let mut mirrors = BTreeMap::new();
    for (origin, file) in &layers.files {
        if let Some(layer) = &file.mirrors {
            mirrors.extend(layer.clone());
            layers.origins.insert("mirrors", origin.clone());
        }
    }
    let container_engine = match layers.pick("container-engine", |f| f.container_engine.clone()) {
        Some(text) => {
            let origin = layers.origin("container-engine");
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
    let kernel_package = layers.choice(
        "kernel-package",
        |f| f.kernel_package.clone(),
        &["auto", "conda", "pip"],
    )?;
    let sandbox = layers.choice("sandbox", |f| f.sandbox.clone(), &["auto", "bwrap", "none"])?;
    let sandbox_network = layers.choice(
        "sandbox-network",
        |f| f.sandbox_network.clone(),
        &["packages", "none", "host"],
    )?;
    let builder = match layers
        .choice("builder", |f| f.builder.clone(), &["local", "slurm"])?
        .as_str()
    {
        "slurm" => Builder::Slurm,
        _ => Builder::Local,
    };
    let slurm = layers
        .pick("slurm", |f| f.slurm.clone())
        .unwrap_or_default();
    if let Some(problem) = slurm.problem() {
        return Err(ConfigError::BadValue {
            name: "slurm",
            value: problem.0,
            origin: layers.origin("slurm"),
            allowed: problem.1,
        });
    }
    let archives = layers
        .pick("archives", |f| f.archives.clone())
        .unwrap_or_default();
    archives.validate(&layers.origin("archives"))?;
    let shared_kernels = layers.pick("shared-kernels", |f| f.shared_kernels.clone());
    if let Some(dir) = &shared_kernels {
        if !dir.is_absolute() || dir.file_name().is_none_or(|n| n != "kernels") {
            return Err(ConfigError::BadValue {
                name: "shared-kernels",
                value: dir.display().to_string(),
                origin: layers.origin("shared-kernels"),
                allowed: "an absolute path ending in /kernels (Jupyter looks for kernels/ in each JUPYTER_PATH entry)".into(),
            });
        }
    }
    Ok(Settings {
        store,
        shared_kernels,
        sandbox,
        sandbox_network,
        source_hosts: layers
            .pick("source-hosts", |f| f.source_hosts.clone())
            .unwrap_or_default(),
        package_sources: layers
            .pick("package-sources", |f| f.package_sources.clone())
            .unwrap_or_default(),
        local_sources: layers
            .pick("local-sources", |f| f.local_sources)
            .unwrap_or(true),
        serve: layers
            .pick("serve", |f| f.serve.clone())
            .unwrap_or_default(),
        builder,
        slurm,
        records: layers
            .pick("records", |f| f.records.clone())
            .unwrap_or_default(),
        archives,
        store_maintainers: layers
            .pick("store-maintainers", |f| f.store_maintainers.clone())
            .unwrap_or_default(),
        target,
        python,
        modules: layers
            .pick("modules", |f| f.modules.clone())
            .unwrap_or_default(),
        ca_bundle: layers.pick("ca-bundle", |f| f.ca_bundle.clone()),
        conda: CondaSettings {
            platform: layers
                .pick("platform", |f| f.platform.clone())
                .unwrap_or_else(|| host_platform().into()),
            channels: layers
                .pick("channels", |f| f.channels.clone())
                .unwrap_or_else(|| vec!["conda-forge".into()]),
            channel_alias: layers
                .pick("channel-alias", |f| f.channel_alias.clone())
                .unwrap_or_else(|| "https://conda.anaconda.org".into()),
            mirrors,
            virtual_packages: layers
                .pick("virtual-packages", |f| f.virtual_packages.clone())
                .unwrap_or_default(),
            kernel_package,
        },
        pip: PipSettings {
            uv: layers.pick("uv", |f| f.uv.clone()),
            uv_bootstrap: layers
                .pick("uv-bootstrap", |f| f.uv_bootstrap)
                .unwrap_or(true),
            index_url: layers.pick("pip-index-url", |f| f.pip_index_url.clone()),
            find_links: layers
                .pick("pip-find-links", |f| f.pip_find_links.clone())
                .unwrap_or_default(),
            no_index: layers
                .pick("pip-no-index", |f| f.pip_no_index)
                .unwrap_or(false),
            server_packages: layers
                .pick("server-packages", |f| f.server_packages.clone())
                .unwrap_or_else(|| vec!["jupyterhub".into(), "jupyterlab".into()]),
            with_server: false,
        },
        container: ContainerSettings {
            base_image: layers.pick_over(
                "base-image",
                |f| f.base_image.clone(),
                None,
                cli.base_image.clone().map(|b| ("--base-image", b)),
            ),
            engine: container_engine,
            containers_conf: layers.pick("containers-conf", |f| f.containers_conf.clone()),
            podman_isolation: layers.pick("podman-isolation", |f| f.podman_isolation.clone()),
            podman_run_args: layers
                .pick("podman-run-args", |f| f.podman_run_args.clone())
                .unwrap_or_default(),
            podman_build_args: layers
                .pick("podman-build-args", |f| f.podman_build_args.clone())
                .unwrap_or_default(),
            registry: layers.pick("registry", |f| f.registry.clone()),
            registry_tls_verify: layers
                .pick("registry-tls-verify", |f| f.registry_tls_verify)
                .unwrap_or(true),
            squash_dir: layers.pick("squash-dir", |f| f.squash_dir.clone()),
            cran_mirror: layers
                .pick("cran-mirror", |f| f.cran_mirror.clone())
                .unwrap_or_else(|| DEFAULT_CRAN_MIRROR.to_string()),
        },
        origins: layers.origins,
        files_read,
    })
}

/// The config files in order (site, then user), and where each picked value came from.
struct Layers {
    files: Vec<(Origin, ConfigFile)>,
    origins: BTreeMap<&'static str, Origin>,
}

impl Layers {
    /// A setting only config files set: the last file that sets it wins.
    fn pick<T>(&mut self, key: &'static str, get: impl Fn(&ConfigFile) -> Option<T>) -> Option<T> {
        self.pick_over(key, get, None, None)
    }

    /// A setting that an environment variable and a flag may also set: site, then user
    /// config, then the environment, then the command line.
    fn pick_over<T>(
        &mut self,
        key: &'static str,
        get: impl Fn(&ConfigFile) -> Option<T>,
        env: Option<(&'static str, T)>,
        cli: Option<(&'static str, T)>,
    ) -> Option<T> {
        let mut value = None;
        for (origin, file) in &self.files {
            if let Some(v) = get(file) {
                value = Some(v);
                self.origins.insert(key, origin.clone());
            }
        }
        if let Some((name, v)) = env {
            value = Some(v);
            self.origins.insert(key, Origin::Environment(name));
        }
        if let Some((flag, v)) = cli {
            value = Some(v);
            self.origins.insert(key, Origin::Cli(flag));
        }
        value
    }

    fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// A key that takes one of `allowed` (the first is the default).
    fn choice(
        &mut self,
        key: &'static str,
        get: impl Fn(&ConfigFile) -> Option<String>,
        allowed: &[&str],
    ) -> Result<String, ConfigError> {
        let value = self
            .pick(key, get)
            .unwrap_or_else(|| allowed[0].to_string());
        if allowed.contains(&value.as_str()) {
            return Ok(value);
        }
        Err(ConfigError::BadValue {
            name: key,
            value,
            origin: self.origin(key),
            allowed: allowed.join(", "),
        })
    }
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

#[cfg(test)]
mod table_tests {
    #[test]
    fn every_config_key_names_its_field() {
        for ((key, _), field) in super::CONFIG_KEYS.iter().zip(super::CONFIG_FIELDS) {
            assert_eq!(key.replace('-', "_"), *field);
        }
        assert_eq!(super::CONFIG_KEYS.len(), super::CONFIG_FIELDS.len());
    }
}
