//! Planning: pick the build target for a detected spec and describe the build (the
//! store prefix, the kernel that would be registered) without doing it.

use std::path::PathBuf;

use serde::Serialize;

use crate::detect::{Buildpack, EnvSpec};
use crate::diagnostic::{Blame, Diagnostic};
use crate::key::{self, EnvKey};
use crate::settings::Settings;
use crate::source::Checkout;
pub use crate::target::Target;
use crate::variables;

/// Why a spec cannot be built for a target.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A native target for a spec that needs a container.
    #[error("the {buildpack} repository needs a container ({reason}), which --target {target} cannot give")]
    NeedsContainer {
        /// The buildpack.
        buildpack: &'static str,
        /// What needs it.
        reason: String,
        /// The target asked for.
        target: &'static str,
    },
    /// A kernel name Jupyter would not accept, or one that leaves the kernels directory.
    #[error("invalid kernel name `{name}`: {reason}")]
    BadKernelName {
        /// The name as given.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The kernel name belongs to another environment's kernelspec.
    #[error("a kernel named `{name}` in {dir} belongs to another environment ({other})")]
    KernelTaken {
        /// The name.
        name: String,
        /// The kernels directory.
        dir: PathBuf,
        /// What it runs now.
        other: String,
    },
    /// A remote repository that names package sources the site does not allow.
    #[error("the repository names package sources the site does not allow: {sources}")]
    RepositorySources {
        /// `file: what` of each.
        sources: String,
    },
    /// Sources on this machine, where the site turned them off.
    #[error(
        "this site allows no package sources on this machine (local-sources = false): {sources}"
    )]
    LocalSources {
        /// `file: what` of each.
        sources: String,
    },
    /// `--with-server` for an image it cannot run a server from (yet).
    #[error("--with-server builds native environments, and Charliecloud images of requirements.txt, setup.py, pyproject.toml or Pipfile repositories; not a {buildpack} repository with --target {target}")]
    ServerInImage {
        /// The target.
        target: &'static str,
        /// The buildpack.
        buildpack: &'static str,
    },
    /// `--from-lock` files that do not make one environment.
    #[error("{count} --from-lock files given; one lock, or a conda environment's pixi.lock and its pip requirements lock, are accepted")]
    FromLocks {
        /// How many.
        count: usize,
    },
    /// Nowhere to register a kernel.
    #[error("neither JUPYTER_DATA_DIR nor HOME is set (as an absolute path), so there is no kernel directory")]
    NoKernelDir,
    /// `--containerfile-only` for a native target.
    #[error("--containerfile-only needs a container target, and this build's target is {target}")]
    ContextNeedsContainer {
        /// The target.
        target: &'static str,
    },
    /// A venv for a conda spec.
    #[error(
        "a {buildpack} repository describes a conda environment, which --target venv cannot build"
    )]
    NeedsConda {
        /// The buildpack.
        buildpack: &'static str,
    },
}

impl Diagnostic for PlanError {
    fn blame(&self) -> Blame {
        Blame::User
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            Self::NeedsContainer { .. } => {
                "use --target podman (or another container engine)".into()
            }
            Self::NeedsConda { .. } => "use --target conda, or --target auto".into(),
            Self::ContextNeedsContainer { .. } => {
                "add --target podman (or another container engine)".into()
            }
            Self::RepositorySources { .. } => "remove them (the site's channels and index apply), ask the site to add them to `package-sources`, or build a local clone of the repository, whose sources are yours to choose".into(),
            Self::LocalSources { .. } => "use the site's channels and index, or a server the site's `package-sources` allows".into(),
            Self::ServerInImage { .. } => "build with --target venv or conda (the server runs through the environment's kernel helper), or --target charliecloud (the server runs under ch-run)".into(),
            Self::FromLocks { .. } => "export them with `hpcbinder export KEY --format pixi` and `--format requirements`".into(),
            Self::NoKernelDir => "pass --kernel-dir DIR, set JUPYTER_DATA_DIR, or build with --no-kernel".into(),
            Self::BadKernelName { .. } => "kernel names are letters, digits, `.`, `_` and `-` (Jupyter's rule), e.g. --kernel-name analysis-2024".into(),
            Self::KernelTaken { .. } => "pass --kernel-name NAME for another name, or --replace to point this one at the new environment".into(),
        })
    }
}

/// Choose the concrete target for a spec.
pub fn choose_target(spec: &EnvSpec, settings: &Settings) -> Result<Target, PlanError> {
    let target = choose_any_target(spec, settings)?;
    // An image's server runs under ch-run (no daemon, the host's network and user, the
    // image in the store): Charliecloud images whose Python lock is resolved here.
    let server_image = target == Target::Charliecloud
        && matches!(
            spec.buildpack,
            Buildpack::Python | Buildpack::Default | Buildpack::Pipfile
        );
    if target.is_container() && settings.pip.with_server && !server_image {
        return Err(PlanError::ServerInImage {
            target: target.name(),
            buildpack: spec.buildpack.name(),
        });
    }
    Ok(target)
}

fn choose_any_target(spec: &EnvSpec, settings: &Settings) -> Result<Target, PlanError> {
    let conda_family = spec.buildpack.is_conda_family();
    let container_reason = || spec.container_reason();
    match settings.target {
        Target::Auto => Ok(if container_reason().is_some() {
            settings.container.engine
        } else if conda_family {
            Target::Conda
        } else {
            Target::Venv
        }),
        native @ (Target::Conda | Target::Venv) => {
            if let Some(reason) = container_reason() {
                return Err(PlanError::NeedsContainer {
                    buildpack: spec.buildpack.name(),
                    reason,
                    target: native.name(),
                });
            }
            if native == Target::Venv && conda_family {
                return Err(PlanError::NeedsConda {
                    buildpack: spec.buildpack.name(),
                });
            }
            Ok(native)
        }
        container => Ok(container),
    }
}

/// The kernel a build would register.
#[derive(Debug, Clone, Serialize)]
pub struct KernelPlan {
    /// Kernelspec directory name.
    #[serde(rename = "kernel")]
    pub name: String,
    /// Shown in Jupyter's launcher.
    #[serde(rename = "kernel_display_name")]
    pub display_name: String,
    /// Where the kernelspec would be written (this kernel's own directory).
    #[serde(rename = "kernel_dir")]
    pub dir: PathBuf,
}

/// What `build` would do.
#[derive(Debug, Clone, Serialize)]
pub struct BuildPlan {
    /// Where the repository came from.
    pub source: crate::source::Identity,
    /// The primary buildpack.
    pub buildpack: Buildpack,
    /// The concrete target.
    pub target: Target,
    /// The EnvKey.
    pub key: String,
    /// The environment's directory in the store.
    pub prefix: PathBuf,
    /// Whether the store already holds a finished environment for this key.
    pub ready: bool,
    /// The Python version to build with (null for Docker and Nix).
    pub python: Option<String>,
    /// Spec files used.
    pub files: Vec<String>,
    /// Warnings from detection.
    pub warnings: Vec<String>,
    /// The kernel that would be registered.
    #[serde(flatten)]
    pub kernel: KernelPlan,
    /// The steps the build would take, in order.
    pub steps: Vec<String>,
}

/// Kernel naming overrides from the command line.
#[derive(Debug, Default, Clone)]
pub struct KernelOptions {
    /// `--kernel-name`.
    pub name: Option<String>,
    /// `--display-name`.
    pub display_name: Option<String>,
    /// `--kernel-dir`.
    pub dir: Option<PathBuf>,
}

/// Describe the build of `spec` from `checkout`.
pub fn plan(
    checkout: &Checkout,
    spec: &EnvSpec,
    target: Target,
    env_key: &EnvKey,
    settings: &Settings,
    kernel: &KernelOptions,
) -> BuildPlan {
    // Ready only if the store itself would reuse it (a valid, trusted marker for this very
    // key), in the slot the build would use.
    let (slot, ready) =
        crate::store::slot_and_ready(&settings.store, &settings.store_maintainers, &env_key.key);
    let prefix = settings.store.join("e").join(&slot.name);
    let python = (!matches!(spec.buildpack, Buildpack::Docker | Buildpack::Nix))
        .then(|| key::python_version(spec, settings).0);
    let identity = &checkout.identity;
    let revision = identity
        .reference
        .clone()
        .filter(|r| r != "HEAD")
        // A full commit id (the launch service resolves every ref) names itself by 7.
        .map(|r| {
            if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) {
                r[..7].to_string()
            } else {
                r
            }
        })
        .or_else(|| identity.commit.as_ref().map(|c| c[..7].to_string()))
        .unwrap_or_else(|| env_key.key[..7].to_string());
    let name = kernel.name.clone().unwrap_or_else(|| {
        let revision = kernel_name(&revision);
        let room = MAX_KERNEL_NAME.saturating_sub(revision.len() + 1).max(1);
        let slug = kernel_name(&checkout.slug);
        kernel_name(&format!("{}-{revision}", &slug[..slug.len().min(room)]))
    });
    let display_name = kernel
        .display_name
        .clone()
        .unwrap_or_else(|| format!("{} @ {revision} ({})", checkout.slug, target.name()));
    let kernels_dir = kernel.dir.clone().unwrap_or_else(default_kernels_dir);
    let steps = steps(spec, target, &prefix, ready);
    BuildPlan {
        source: identity.clone(),
        buildpack: spec.buildpack,
        target,
        key: env_key.key.clone(),
        prefix,
        ready,
        python,
        files: spec.files.clone(),
        warnings: spec.warnings.clone(),
        kernel: KernelPlan {
            dir: kernels_dir.join(&name),
            name,
            display_name,
        },
        steps,
    }
}

fn steps(spec: &EnvSpec, target: Target, prefix: &std::path::Path, ready: bool) -> Vec<String> {
    if ready {
        return vec![
            format!("reuse the ready environment {}", prefix.display()),
            "register the kernel".into(),
        ];
    }
    let mut steps = Vec::new();
    if target.is_container() {
        steps.push(match spec.buildpack {
            Buildpack::Docker => "build the repository's Dockerfile".to_string(),
            _ => "render a Containerfile from the spec".to_string(),
        });
        if !spec.apt.is_empty() {
            steps.push(format!("install {} apt packages", spec.apt.len()));
        }
        steps.push(format!("build the {} image", target.name()));
    } else {
        if let Some(lock) = &spec.lock {
            steps.push(format!(
                "install {} locked packages from {} into {}",
                lock.packages,
                lock.file,
                prefix.display()
            ));
        } else if let Some(conda) = &spec.conda {
            steps.push(format!(
                "solve and install {} conda dependencies into {}",
                conda.dependencies.len(),
                prefix.display()
            ));
        } else {
            steps.push(format!(
                "create a {} environment at {}",
                target.name(),
                prefix.display()
            ));
        }
        if let Some(pip) = &spec.pip {
            steps.push(format!(
                "install {}{}",
                pip.requirements.join(", "),
                if pip.hashed { " with hashes" } else { "" }
            ));
        }
        if spec.installs_repo {
            steps.push("install the repository itself".into());
        }
    }
    if let Some(post_build) = &spec.post_build {
        steps.push(format!("run {post_build}"));
    }
    steps.push("write the lock and the ready marker".into());
    steps.push("register and verify the kernel".into());
    steps
}

/// The longest kernel name: a directory name on every filesystem, with room to spare.
pub const MAX_KERNEL_NAME: usize = 100;

/// Jupyter's rule for kernel names (`^[a-z0-9._-]+$`, any case), and no more than
/// [`MAX_KERNEL_NAME`] bytes: a name is one directory inside the kernels directory.
pub fn check_kernel_name(name: &str) -> Result<(), PlanError> {
    let bad = |reason| {
        Err(PlanError::BadKernelName {
            name: name.escape_debug().to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_KERNEL_NAME {
        return bad("it must be 1 to 100 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, `.`, `_` and `-` are allowed");
    }
    if name.bytes().all(|b| b == b'.') {
        return bad("it must not be made of dots only");
    }
    Ok(())
}

/// Whose the kernelspec `name` in `kernels_dir` is: `None` when there is none;
/// `Some(None)` when hpcbinder did not write it; else its environment key and the
/// repository (origin) it was built from.
pub fn kernel_owner(kernels_dir: &std::path::Path, name: &str) -> Option<Option<(String, String)>> {
    let dir = kernels_dir.join(name);
    if dir.symlink_metadata().is_err() {
        return None;
    }
    let owner = fs_err::read_to_string(dir.join("kernel.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|json| {
            let ours = &json["metadata"]["hpcbinder"];
            let key = ours["key"].as_str()?.to_string();
            // Older kernelspecs record only `origin@commit`.
            let origin = ours["origin"].as_str().map(str::to_string).or_else(|| {
                ours["source"].as_str().map(|s| {
                    s.rsplit_once('@')
                        .map_or(s, |(origin, _)| origin)
                        .to_string()
                })
            })?;
            Some((key, origin))
        });
    Some(owner)
}

/// The plan's kernel name is free, or already this repository's: a kernel follows its
/// repository to a new environment (a branch moved, a work tree changed), but never
/// replaces another repository's kernel, or one hpcbinder did not write, unless asked.
pub fn check_kernel_free(plan: &BuildPlan) -> Result<(), PlanError> {
    let dir = plan.kernel.dir.parent().unwrap_or(&plan.kernel.dir);
    match kernel_owner(dir, &plan.kernel.name) {
        None => Ok(()),
        Some(Some((key, origin))) if key == plan.key || origin == plan.source.origin => Ok(()),
        Some(other) => Err(PlanError::KernelTaken {
            name: plan.kernel.name.clone(),
            dir: dir.to_path_buf(),
            other: other.map_or_else(
                || "not written by hpcbinder".to_string(),
                |(_, origin)| crate::printer::sanitize(&origin),
            ),
        }),
    }
}

/// A name safe for kernelspecs and image references: lowercase letters, digits, `.`,
/// `_`, `-`, at most [`MAX_KERNEL_NAME`] bytes.
pub fn kernel_name(text: &str) -> String {
    let name: String = text
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-');
    name[..name.len().min(MAX_KERNEL_NAME)].to_string()
}

/// Whether [`default_kernels_dir`] has somewhere real to point.
pub fn has_default_kernels_dir() -> bool {
    variables::get(variables::JUPYTER_DATA_DIR).is_some()
        || variables::get(variables::HOME).is_some_and(|h| h.starts_with('/'))
}

/// `$JUPYTER_DATA_DIR/kernels`, else `~/.local/share/jupyter/kernels`.
pub fn default_kernels_dir() -> PathBuf {
    if let Some(dir) = variables::get(variables::JUPYTER_DATA_DIR) {
        return PathBuf::from(dir).join("kernels");
    }
    // Without HOME, `/` rather than the working directory: kernel.json's argv[0] must be
    // absolute, and registering then fails clearly instead of writing into the cwd.
    let home = variables::get(variables::HOME)
        .filter(|h| h.starts_with('/'))
        .unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/share/jupyter/kernels")
}
