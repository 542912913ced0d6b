//! The EnvKey: sha256 of the canonical JSON of everything that changes the built result
//! (DESIGN §2). Notebooks, data and docs never enter it; the whole tree enters only when
//! the build installs the repository itself.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::detect::{Buildpack, EnvSpec};
use crate::settings::Settings;
use crate::source::{redact, SourceError};
use crate::target::Target;

/// Bumped whenever the meaning of the inputs changes, so old keys are never reused wrongly.
pub const KEY_FORMAT: &str = "1";

/// A computed key and the inputs it was computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvKey {
    /// Hex sha256.
    pub key: String,
    /// Every input by name: literal values, or `sha256:<hex>` digests of file contents.
    pub inputs: BTreeMap<String, String>,
}

impl EnvKey {
    /// Add a file's digest as input `name`, and compute the key again.
    pub fn add_input(&mut self, name: &str, file: &Path) -> std::io::Result<()> {
        self.inputs
            .insert(name.to_string(), format!("sha256:{}", file_digest(file)?));
        let canonical =
            serde_json::to_string(&self.inputs).expect("a map of strings always serialises");
        self.key = hex::encode(Sha256::digest(canonical.as_bytes()));
        Ok(())
    }

    /// The first 16 hex digits: the store directory name (short, for conda's prefix rewriting).
    pub fn short(&self) -> &str {
        &self.key[..16]
    }
}

/// Compute the key of `spec` built for `target` from the checkout at `root`.
///
/// `from_lock` is a lock file to install from instead of resolving (`build --from-lock`):
/// it decides the packages, so its contents enter the key.
pub fn compute(
    root: &Path,
    spec: &EnvSpec,
    target: Target,
    settings: &Settings,
    from_lock: Option<&Path>,
) -> Result<EnvKey, SourceError> {
    let mut inputs = BTreeMap::new();
    inputs.insert("format".to_string(), KEY_FORMAT.to_string());
    inputs.insert("target".to_string(), target.name().to_string());
    inputs.insert("platform".to_string(), settings.conda.platform.clone());
    inputs.insert("buildpack".to_string(), spec.buildpack.name().to_string());
    let uses_python = !matches!(spec.buildpack, Buildpack::Docker | Buildpack::Nix);
    if uses_python {
        let (python, _) = python_version(spec, settings);
        inputs.insert("python".to_string(), python);
    }
    if target == Target::Venv {
        // A venv whose Python is not installed here is built as a conda environment with
        // that Python from the site's channels: another environment, so another key.
        let source = if venv_python_from_conda(spec, settings) {
            "conda"
        } else {
            "interpreter"
        };
        inputs.insert("python-source".to_string(), source.to_string());
    }
    inputs.insert(
        "recipe".to_string(),
        crate::recipe::recipe_digest(spec, target),
    );
    for file in &spec.files {
        inputs.insert(
            format!("file:{}", role(spec, file)),
            format!("sha256:{}", file_digest(&root.join(file))?),
        );
    }
    // `--with-server`: jupyterhub-singleuser and JupyterLab inside (server mode).
    let server = settings.pip.server_additions();
    if !server.is_empty() {
        inputs.insert("server-packages".to_string(), server.join(","));
    }
    let uses_conda = target == Target::Conda || spec.buildpack.is_conda_family();
    if uses_conda {
        inputs.insert(
            "site:channels".to_string(),
            settings.conda.channels.join(","),
        );
        // Site URLs enter the key without their credentials: a token changes who may
        // download, not what is built, and the key's inputs are printed and stored.
        inputs.insert(
            "site:channel-alias".to_string(),
            redact(&settings.conda.channel_alias),
        );
        if !settings.conda.mirrors.is_empty() {
            let mirrors: Vec<String> = settings
                .conda
                .mirrors
                .iter()
                .map(|(k, v)| format!("{}={}", redact(k), redact(v)))
                .collect();
            inputs.insert("site:mirrors".to_string(), mirrors.join(","));
        }
    }
    if uses_conda {
        if !settings.conda.virtual_packages.is_empty() {
            inputs.insert(
                "site:virtual-packages".to_string(),
                settings.conda.virtual_packages.join(","),
            );
        }
        inputs.insert(
            "site:kernel-package".to_string(),
            settings.conda.kernel_package.clone(),
        );
    }
    if uses_python {
        if let Some(url) = &settings.pip.index_url {
            inputs.insert("site:pip-index-url".to_string(), redact(url));
        }
        if !settings.pip.find_links.is_empty() {
            inputs.insert(
                "site:pip-find-links".to_string(),
                settings
                    .pip
                    .find_links
                    .iter()
                    .map(|l| redact(l))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
    }
    if target.is_container() && spec.buildpack == Buildpack::R {
        inputs.insert(
            "site:cran-mirror".to_string(),
            cran_repository(spec, settings),
        );
    }
    if target.is_container() {
        if !settings.container.podman_build_args.is_empty() {
            inputs.insert(
                "site:podman-build-args".to_string(),
                settings.container.podman_build_args.join(" "),
            );
        }
        // The CA bundle is copied into the image.
        if let Some(bundle) = settings.ca_bundle() {
            inputs.insert(
                "site:ca-bundle".to_string(),
                format!("sha256:{}", file_digest(&bundle)?),
            );
        }
        if target == Target::Shifter {
            if let Some(registry) = &settings.container.registry {
                inputs.insert("site:registry".to_string(), registry.clone());
            }
        }
        if target == Target::PodmanHpc {
            if let Some(dir) = &settings.container.squash_dir {
                inputs.insert("site:squash-dir".to_string(), dir.display().to_string());
            }
        }
        inputs.insert(
            "site:base-image".to_string(),
            settings
                .container
                .base_image
                .clone()
                .unwrap_or_else(|| "(none)".to_string()),
        );
    }
    if let Some(lock) = from_lock {
        inputs.insert(
            "from-lock".to_string(),
            format!("sha256:{}", file_digest(lock)?),
        );
    }
    if spec.installs_repo {
        inputs.insert(
            "tree".to_string(),
            format!("sha256:{}", crate::source::tree_digest(root)?),
        );
    }
    let canonical = serde_json::to_string(&inputs).expect("a map of strings always serialises");
    let key = hex::encode(Sha256::digest(canonical.as_bytes()));
    Ok(EnvKey { key, inputs })
}

/// The Python version to build with ([`crate::python::choose`]) and whether it came from
/// the repository.
pub fn python_version(spec: &EnvSpec, settings: &Settings) -> (String, bool) {
    let choice = crate::python::choose(spec, settings);
    let from_repo = choice.source == crate::python::Source::Repository;
    (choice.version, from_repo)
}

/// Whether a venv build takes its Python from the conda channels because no interpreter
/// of the chosen version is installed here (decided once, in the plan; it enters the key).
pub fn venv_python_from_conda(spec: &EnvSpec, settings: &Settings) -> bool {
    crate::python::interpreter_for(spec, settings).is_err()
}

/// The hex sha256 of a file's contents, streamed.
fn file_digest(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut fs_err::File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// A file's role: its path with the binder dir stripped, so moving config into `binder/`
/// does not change the environment's key.
fn role<'a>(spec: &EnvSpec, file: &'a str) -> &'a str {
    spec.binder_dir
        .as_deref()
        .and_then(|dir| {
            file.strip_prefix(dir)
                .and_then(|rest| rest.strip_prefix('/'))
        })
        .unwrap_or(file)
}

/// The CRAN repository an R build installs from: the site's `cran-mirror` with `{date}`
/// replaced by the runtime.txt snapshot date (`latest` when there is none).
pub fn cran_repository(spec: &EnvSpec, settings: &Settings) -> String {
    let date = spec
        .r
        .as_ref()
        .and_then(|r| r.snapshot.clone())
        .unwrap_or_else(|| "latest".to_string());
    settings.container.cran_mirror.replace("{date}", &date)
}
