//! Detection: read a checkout's files (never run them, never touch the network) and say
//! what environment the repository describes, as a typed [`EnvSpec`].
//!
//! Buildpacks are tried in repo2docker's order (`reference/repo2docker.md` §1.1), with
//! hpcbinder's lock-file buildpacks placed before the loose spec they lock:
//! docker, julia, nix, r, pixi, conda-lock, explicit, conda, pipfile, uv-lock, pylock,
//! python, default. All config files are looked up in `binder/` or `.binder/` when one
//! exists (both is an error). Files seen and not used become warnings.

mod conda;
pub mod docker;
mod files;
mod locks;
mod python;
mod runtime;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::diagnostic::{Blame, Diagnostic};
pub use conda::first_major_minor;
pub use files::{line_at, RepoFiles};
pub use python::include_target;

/// Errors that stop detection.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// `binder/` and `.binder/` both exist.
    #[error("the repository has both a `binder/` and a `.binder/` directory")]
    BothBinderDirs,
    /// A spec file is malformed.
    #[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Malformed {
        /// Path relative to the repository root.
        file: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A repository layout repo2docker no longer supports either.
    #[error("{message}")]
    Unsupported {
        /// What and why.
        message: String,
        /// What to do instead.
        hint: String,
    },
    /// A spec file could not be read.
    #[error("could not read {file}")]
    Io {
        /// Path relative to the repository root.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Diagnostic for DetectError {
    fn blame(&self) -> Blame {
        match self {
            Self::Io { .. } => Blame::Environment,
            _ => Blame::User,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            Self::BothBinderDirs => {
                Some("keep one of them; they are exclusive (as in repo2docker)".into())
            }
            Self::Malformed { file, .. } => Some(format!("fix {file} and run again")),
            Self::Unsupported { hint, .. } => Some(hint.clone()),
            Self::Io { .. } => None,
        }
    }
}

/// The primary buildpack: what kind of environment the repository describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Buildpack {
    /// A repository Dockerfile, built as it is.
    Docker,
    /// Julia `Project.toml`.
    Julia,
    /// Nix `default.nix`.
    Nix,
    /// R (`runtime.txt` r-..., `DESCRIPTION`, `install.R`).
    R,
    /// `pixi.toml` (+ `pixi.lock`).
    Pixi,
    /// `conda-lock.yml`.
    CondaLock,
    /// A conda `@EXPLICIT` file.
    Explicit,
    /// `environment.yml`.
    Conda,
    /// `Pipfile` / `Pipfile.lock`.
    Pipfile,
    /// `uv.lock` (+ `pyproject.toml`).
    UvLock,
    /// `pylock.toml` (PEP 751).
    Pylock,
    /// `requirements.txt`, `setup.py`, `pyproject.toml`, `runtime.txt` python-...
    Python,
    /// Nothing found: Python with Jupyter.
    Default,
}

impl Buildpack {
    /// The conda family: environments rattler solves or links (the one place this is said).
    pub fn is_conda_family(self) -> bool {
        matches!(
            self,
            Self::Conda | Self::Pixi | Self::CondaLock | Self::Explicit
        )
    }

    /// The name used in JSON and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Julia => "julia",
            Self::Nix => "nix",
            Self::R => "r",
            Self::Pixi => "pixi",
            Self::CondaLock => "conda-lock",
            Self::Explicit => "explicit",
            Self::Conda => "conda",
            Self::Pipfile => "pipfile",
            Self::UvLock => "uv-lock",
            Self::Pylock => "pylock",
            Self::Python => "python",
            Self::Default => "default",
        }
    }
}

/// The conda part of a spec (`environment.yml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CondaSpec {
    /// The env file's `name:` (informational; the env lives in the store).
    pub name: Option<String>,
    /// Channels in order, as written.
    pub channels: Vec<String>,
    /// Conda MatchSpecs, as written.
    pub dependencies: Vec<String>,
    /// The `pip:` section, as written (may hold `-r file`).
    pub pip: Vec<String>,
    /// `variables:` set in the environment.
    pub variables: BTreeMap<String, String>,
}

/// The pip part of a spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PipSpec {
    /// Requirements files to install, relative to the repository root.
    pub requirements: Vec<String>,
    /// Every requirement line carries `--hash`: install in hash-checking mode.
    pub hashed: bool,
}

/// A lock file that fixes the environment without a solve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockSpec {
    /// `pixi`, `conda-lock`, `explicit`, `uv`, `pylock`, `pipfile`.
    pub format: &'static str,
    /// The lock file, relative to the repository root.
    pub file: String,
    /// Platforms the lock covers, when it says.
    pub platforms: Vec<String>,
    /// Number of packages locked.
    pub packages: usize,
}

/// Everything detection found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvSpec {
    /// The primary buildpack.
    pub buildpack: Buildpack,
    /// The Python version asked for (`X.Y`), or null when the repository does not say.
    pub python: Option<String>,
    /// Spec files used, relative to the repository root, sorted.
    pub files: Vec<String>,
    /// Things the user should know: files ignored, misdetections corrected.
    pub warnings: Vec<String>,
    /// `binder` or `.binder` when config lives there.
    pub binder_dir: Option<String>,
    /// R version and CRAN snapshot date, for R repositories.
    pub r: Option<RSpec>,
    /// Julia compat bound, for Julia repositories.
    pub julia: Option<String>,
    /// The conda environment, when there is one.
    pub conda: Option<CondaSpec>,
    /// pip requirements, when there are any.
    pub pip: Option<PipSpec>,
    /// The lock file in use, when there is one.
    pub lock: Option<LockSpec>,
    /// Debian packages from `apt.txt`.
    pub apt: Vec<String>,
    /// `postBuild`, relative to the root.
    pub post_build: Option<String>,
    /// `start`, relative to the root.
    pub start: Option<String>,
    /// The build installs the repository itself (setup.py/pyproject package, `-e .`,
    /// a Dockerfile that copies the context): the whole tree enters the key.
    pub installs_repo: bool,
    /// Package sources the repository names itself (`file: line`): index and find-links
    /// options in requirement files and the `pip:` section, and local or loopback conda
    /// channels. The site decides where packages come from: a remote repository with any
    /// of these is refused by the pipeline.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub package_sources: Vec<String>,
    /// Documents detection parsed that the build reads again, kept so that no spec file
    /// is parsed twice (not part of the reported detection).
    #[serde(skip)]
    pub parsed: Parsed,
}

/// Spec documents as detection parsed them, for the build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The Pipfile.lock (sections `default`, `develop`) or, without a lock, the Pipfile
    /// (`packages`, `dev-packages`, converted from TOML), with its path.
    pub pipfile: Option<(String, serde_json::Value)>,
    /// The packages of a `conda-lock.yml` (for the configured platform) or of an
    /// `@EXPLICIT` file, in order.
    pub locked: Vec<LockedPackage>,
    /// A `pixi.toml` without its lock, as the conda environment to solve.
    pub pixi: Option<CondaSpec>,
    /// The pip requirements (requirements.txt, or environment.yml's `pip:` section) with
    /// their includes inlined and every line checked: what uv is given.
    pub requirements: Requirements,
    /// The URLs a lock file downloads from (pixi.lock's channels and packages, uv.lock's
    /// registries, pylock.toml's indexes and files).
    pub lock_urls: Vec<String>,
    /// The images a repository Dockerfile builds from (`FROM`, `COPY --from`), stage
    /// names left out and `ARG` defaults put in.
    pub images: Vec<String>,
}

/// Requirement lines and constraint lines, validated by detection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// Requirement and option lines, `-r` includes inlined.
    pub lines: Vec<String>,
    /// The lines of `-c` constraint files.
    pub constraints: Vec<String>,
}

impl Requirements {
    /// Whether a line installs a local path (`.`, `-e .`, `./pkg`, `file:...`): the
    /// repository's own code, whose metadata only its build backend can tell.
    pub fn is_local(line: &str) -> bool {
        python::local_path(line).is_some()
    }

    /// The lines installing local paths.
    pub fn local_lines(&self) -> Vec<&str> {
        self.lines
            .iter()
            .map(String::as_str)
            .filter(|l| Self::is_local(l))
            .collect()
    }

    /// Whether any line installs a local path.
    pub fn has_local(&self) -> bool {
        self.lines.iter().any(|l| Self::is_local(l))
    }
}

/// One package of a `conda-lock.yml` or an `@EXPLICIT` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedPackage {
    /// Its name (empty in an `@EXPLICIT` file).
    pub name: String,
    /// `pip` for a pip package, else conda.
    pub pip: bool,
    /// Where it is downloaded from.
    pub url: String,
    /// Its sha256, when the lock has one.
    pub sha256: Option<String>,
}

/// Whether a requirements line is an option that names where packages come from.
pub fn is_source_option(line: &str) -> bool {
    let line = line.trim();
    [
        "-i",
        "--index-url",
        "--extra-index-url",
        "-f",
        "--find-links",
        "--trusted-host",
    ]
    .iter()
    .any(|option| {
        line.strip_prefix(option)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '=', '\t']))
    })
}

/// Whether a conda channel is on this machine (a path, `file://`) or a loopback server.
pub fn is_local_channel(channel: &str) -> bool {
    let channel = channel.trim().to_ascii_lowercase();
    channel.starts_with("file:")
        || channel.starts_with('/')
        || channel.starts_with('.')
        || channel.starts_with('~')
        || ["://localhost", "://127.", "://[::1]", "://0.0.0.0"]
            .iter()
            .any(|host| channel.contains(host))
}

/// R settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RSpec {
    /// `X.Y[.Z]`, or null for the site default.
    pub version: Option<String>,
    /// CRAN snapshot date `YYYY-MM-DD`, or null for the site default.
    pub snapshot: Option<String>,
}

impl EnvSpec {
    fn new(binder_dir: Option<String>) -> Self {
        Self {
            buildpack: Buildpack::Default,
            python: None,
            files: Vec::new(),
            warnings: Vec::new(),
            binder_dir,
            r: None,
            julia: None,
            conda: None,
            pip: None,
            lock: None,
            apt: Vec::new(),
            post_build: None,
            start: None,
            installs_repo: false,
            package_sources: Vec::new(),
            parsed: Parsed::default(),
        }
    }

    /// An empty spec of `buildpack`, for unit tests elsewhere in the crate.
    #[cfg(test)]
    pub(crate) fn for_tests(buildpack: Buildpack) -> Self {
        Self {
            buildpack,
            ..Self::new(None)
        }
    }

    /// Why only a container can give this environment (system packages, a Dockerfile,
    /// Nix, or a language runtime we do not install natively); `None` when a native
    /// environment can (the one place this is said).
    pub fn container_reason(&self) -> Option<String> {
        match self.buildpack {
            Buildpack::Docker => Some("it has a Dockerfile".into()),
            Buildpack::Nix => Some("it uses Nix".into()),
            Buildpack::R => Some("it needs R from the R buildpack".into()),
            Buildpack::Julia => Some("it needs Julia".into()),
            _ if !self.apt.is_empty() => Some("apt.txt installs system packages".into()),
            _ => None,
        }
    }

    /// Whether only a container can give this environment ([`EnvSpec::container_reason`]).
    pub fn needs_container(&self) -> bool {
        self.container_reason().is_some()
    }
}

/// Files that mean something to some buildpack; a present one that no buildpack used is
/// reported. Each pairs a name with why it would be ignored.
const KNOWN_FILES: &[&str] = &[
    "Dockerfile",
    "Project.toml",
    "JuliaProject.toml",
    "REQUIRE",
    "default.nix",
    "runtime.txt",
    "install.R",
    "environment.yml",
    "environment.yaml",
    "pixi.toml",
    "pixi.lock",
    "conda-lock.yml",
    "conda-lock.yaml",
    "Pipfile",
    "Pipfile.lock",
    "uv.lock",
    "pylock.toml",
    "requirements.txt",
    "apt.txt",
    "postBuild",
    "start",
];

/// Root-only files (ignored when a binder dir exists).
const ROOT_ONLY: &[&str] = &["setup.py", "pyproject.toml", "DESCRIPTION"];

/// Detect the environment described by the tree at `root`, for the conda `platform` the
/// build targets (lock files are read for that platform).
pub fn detect(root: &std::path::Path, platform: &str) -> Result<EnvSpec, DetectError> {
    let files = RepoFiles::open(root, platform)?;
    let mut spec = EnvSpec::new(files.binder_dir().map(str::to_string));
    let mut used = Used::default();

    // 1-2: Dockerfile (legacy first: it only errors).
    if files.binder_dir().is_none() {
        if let Some(text) = files.read_root("Dockerfile")? {
            if text.lines().any(|l| {
                let l = l.trim_start().to_ascii_lowercase();
                l.starts_with("from") && l.contains("andrewosh/binder-base")
            }) {
                return Err(DetectError::Unsupported {
                    message: "Dockerfile: the legacy `andrewosh/binder-base` image is no longer supported".into(),
                    hint: "base the Dockerfile on a current image, or replace it with environment.yml or requirements.txt"
                        .into(),
                });
            }
        }
    }
    if let Some(text) = files.read("Dockerfile")? {
        spec.buildpack = Buildpack::Docker;
        used.add(&files, "Dockerfile");
        spec.installs_repo = dockerfile_copies_context(&text);
        spec.parsed.images = docker::dockerfile_images(&text);
        return Ok(finish(spec, &files, used));
    }

    let runtime = runtime::read(&files)?;

    // 3-4: Julia.
    if let Some(name) = ["Project.toml", "JuliaProject.toml"]
        .into_iter()
        .find(|n| files.exists(n))
    {
        spec.buildpack = Buildpack::Julia;
        spec.julia = python::julia_compat(&files, name)?;
        used.add(&files, name);
        if files.exists("Manifest.toml") {
            used.add(&files, "Manifest.toml");
        }
        python_layers(&files, &mut spec, &mut used, runtime.as_ref())?;
    } else if files.exists("REQUIRE") {
        return Err(DetectError::Unsupported {
            message: "Julia REQUIRE files are no longer supported".into(),
            hint: "replace REQUIRE with a Project.toml (`julia --project=. -e 'using Pkg; Pkg.add(...)'`)".into(),
        });
    // 5: Nix.
    } else if files.exists("default.nix") {
        spec.buildpack = Buildpack::Nix;
        used.add(&files, "default.nix");
    // 6: R.
    } else if let Some(r) = r_spec(&files, runtime.as_ref(), &mut spec.warnings) {
        spec.buildpack = Buildpack::R;
        spec.r = Some(r);
        if let Some(rt) = &runtime {
            used.add_path(&rt.path);
        }
        if files.exists("install.R") {
            used.add(&files, "install.R");
        }
        if files.binder_dir().is_none() && files.exists("DESCRIPTION") {
            used.add_path("DESCRIPTION");
        }
        python_layers(&files, &mut spec, &mut used, runtime.as_ref())?;
    } else {
        python_layers(&files, &mut spec, &mut used, runtime.as_ref())?;
    }

    // BaseImage files: every buildpack but Docker.
    if let Some(text) = files.read("apt.txt")? {
        spec.apt = python::apt_packages(&files.display("apt.txt"), &text)?;
        used.add(&files, "apt.txt");
    }
    for (name, slot) in [
        ("postBuild", &mut spec.post_build),
        ("start", &mut spec.start),
    ] {
        if files.exists(name) {
            // `start -> /proc/self/environ` would copy the builder's environment into the
            // environment; `postBuild -> /outside/script` would run a file of this machine.
            if !files.inside(&files.display(name)) {
                return Err(DetectError::Unsupported {
                    message: format!(
                        "{} is a symlink that leaves the repository (or is broken)",
                        files.display(name)
                    ),
                    hint: "hpcbinder runs only files inside the repository: put the script itself there".into(),
                });
            }
            if files.is_regular_file(name) {
                *slot = Some(files.display(name));
                used.add(&files, name);
            } else {
                return Err(DetectError::Malformed {
                    file: files.display(name),
                    line: None,
                    message: "must be a regular file (an executable script)".into(),
                });
            }
        }
    }
    Ok(finish(spec, &files, used))
}

/// The Python/conda layers (shared by the python family, R and Julia, which inherit them).
fn python_layers(
    files: &RepoFiles,
    spec: &mut EnvSpec,
    used: &mut Used,
    runtime: Option<&runtime::Runtime>,
) -> Result<(), DetectError> {
    // R and Julia inherit the Python and conda layers (repo2docker's class hierarchy):
    // there environment.yml *and* requirements.txt both apply, and Pipfile does not.
    let primary_is_python_family = spec.buildpack == Buildpack::Default;
    // Lock files first: a lock wins over the loose spec it locks.
    if let Some(found) = locks::detect(files, spec, used)? {
        if primary_is_python_family {
            spec.buildpack = found;
        }
        if matches!(found, Buildpack::UvLock | Buildpack::Pylock) {
            python::packages_and_requirements(files, spec, used, false)?;
        }
        return Ok(());
    }
    if let Some(name) = ["environment.yml", "environment.yaml"]
        .into_iter()
        .find(|n| files.exists(n))
    {
        let found = conda::read(files, name, spec, used)?;
        if primary_is_python_family {
            spec.buildpack = found;
        } else {
            let conda_pip = spec.pip.take();
            python::packages_and_requirements(files, spec, used, true)?;
            spec.pip = match (conda_pip, spec.pip.take()) {
                (Some(mut from_env), Some(from_requirements)) => {
                    from_env.requirements.extend(from_requirements.requirements);
                    Some(from_env)
                }
                (from_env, from_requirements) => from_env.or(from_requirements),
            };
        }
        return Ok(());
    }
    let runtime_is_python = runtime.map(|r| r.name == "python");
    let pipfile_present = files.exists("Pipfile") || files.exists("Pipfile.lock");
    if primary_is_python_family && runtime_is_python != Some(false) && pipfile_present {
        spec.buildpack = Buildpack::Pipfile;
        python::pipfile(files, spec, used)?;
        return Ok(());
    }
    let is_python = python::packages_and_requirements(files, spec, used, true)?;
    if let Some(rt) = runtime.filter(|r| r.name == "python") {
        if spec.python.is_none() || rt.version.is_some() {
            spec.python = rt.version.clone();
        }
        used.add_path(&rt.path);
        if primary_is_python_family {
            spec.buildpack = Buildpack::Python;
        }
    }
    if is_python && primary_is_python_family {
        spec.buildpack = Buildpack::Python;
    }
    Ok(())
}

/// R is meant by `runtime.txt` r-... (with or without a date), `DESCRIPTION` at the root
/// with no binder dir, or `install.R` alone.
fn r_spec(
    files: &RepoFiles,
    runtime: Option<&runtime::Runtime>,
    warnings: &mut Vec<String>,
) -> Option<RSpec> {
    if let Some(rt) = runtime.filter(|r| r.name == "r") {
        if rt.date.is_none() {
            warnings.push(format!(
                "{}: `r-{}` has no snapshot date; treating it as R {} with the site's default CRAN snapshot \
                 (repo2docker would ignore it and build Python only)",
                rt.path,
                rt.version.as_deref().unwrap_or(""),
                rt.version.as_deref().unwrap_or("")
            ));
        }
        return Some(RSpec {
            version: rt.version.clone(),
            snapshot: rt.date.clone(),
        });
    }
    if runtime.is_some() {
        return None;
    }
    if files.binder_dir().is_none() && files.exists_root("DESCRIPTION") {
        return Some(RSpec {
            version: None,
            snapshot: None,
        });
    }
    if files.exists("install.R") {
        warnings.push(format!(
            "{} without runtime.txt: treating the repository as R with the site's default version and \
             snapshot (repo2docker would ignore it; add runtime.txt `r-X.Y-YYYY-MM-DD` to pin)",
            files.display("install.R")
        ));
        return Some(RSpec {
            version: None,
            snapshot: None,
        });
    }
    None
}

/// Whether a Dockerfile copies the build context into the image (COPY/ADD of a local path).
fn dockerfile_copies_context(text: &str) -> bool {
    text.lines().any(|line| {
        let mut words = line.split_whitespace();
        let instruction = words.next().unwrap_or("").to_ascii_uppercase();
        (instruction == "COPY" || instruction == "ADD") && !words.any(|w| w.starts_with("--from"))
    })
}

/// The set of files used, as root-relative paths.
#[derive(Debug, Default)]
struct Used(BTreeSet<String>);

impl Used {
    fn add(&mut self, files: &RepoFiles, name: &str) {
        self.0.insert(files.display(name));
    }
    fn add_path(&mut self, path: &str) {
        self.0.insert(path.to_string());
    }
    fn contains(&self, path: &str) -> bool {
        self.0.contains(path)
    }
}

/// Warn about spec files present but unused, and root files hidden by a binder dir.
fn finish(mut spec: EnvSpec, files: &RepoFiles, used: Used) -> EnvSpec {
    let by = match spec.buildpack {
        Buildpack::Docker => {
            "the Dockerfile is built as it is and nothing else is applied".to_string()
        }
        other => format!("the {} buildpack does not use it", other.name()),
    };
    for name in KNOWN_FILES {
        let path = files.display(name);
        if files.exists(name) && !used.contains(&path) && !files.was_refused(&path) {
            let extra = match (*name, spec.buildpack) {
                ("requirements.txt", Buildpack::Conda) => {
                    "; add `- -r requirements.txt` under `pip:` in environment.yml to install it"
                }
                ("requirements.txt", Buildpack::Pipfile) => {
                    "; list the packages in the Pipfile instead"
                }
                ("runtime.txt", Buildpack::Conda) => {
                    "; set the Python version in environment.yml (e.g. `- python=3.12`)"
                }
                _ => "",
            };
            spec.warnings
                .push(format!("{path} is ignored: {by}{extra}"));
        }
    }
    if let Some(dir) = files.binder_dir() {
        for name in KNOWN_FILES.iter().chain(ROOT_ONLY) {
            if files.exists_root(name) {
                spec.warnings
                    .push(format!("{name} at the repository root is ignored because {dir}/ holds the configuration"));
            }
        }
    }
    spec.files = used.0.into_iter().collect();
    spec.warnings.sort();
    spec.warnings.dedup();
    spec
}
