//! The Containerfile for a spec, assembled from the fragments in `buildpacks/container/`:
//! base (user, CA bundle, labels) → apt.txt → the environment from its lock (a venv made
//! by uv in the build, or a conda prefix linked by hpcbinder and copied in) → the
//! repository → postBuild → start. Environment files are copied before the repository so
//! the environment layer survives notebook-only changes.

use crate::build::BuildError;
use crate::detect::{Buildpack, EnvSpec};

const BASE: &str = include_str!("../../../buildpacks/container/base.Containerfile");
const APT: &str = include_str!("../../../buildpacks/container/apt.Containerfile");
const VENV: &str = include_str!("../../../buildpacks/container/venv.Containerfile");
const CONDA: &str = include_str!("../../../buildpacks/container/conda.Containerfile");
const CONDA_PIP: &str = include_str!("../../../buildpacks/container/conda-pip.Containerfile");
const R: &str = include_str!("../../../buildpacks/container/r.Containerfile");
const INSTALL_R: &str = include_str!("../../../buildpacks/container/install-r.Containerfile");
const DESCRIPTION: &str = include_str!("../../../buildpacks/container/description.Containerfile");
const PACKAGE: &str = include_str!("../../../buildpacks/container/package.Containerfile");
const REPO: &str = include_str!("../../../buildpacks/container/repo.Containerfile");
const POST_BUILD: &str = include_str!("../../../buildpacks/container/post-build.Containerfile");
const START: &str = include_str!("../../../buildpacks/container/start.Containerfile");
const LABELS: &str = include_str!("../../../buildpacks/container/labels.Containerfile");

/// What the rendering needs besides the spec.
pub struct RenderInputs<'a> {
    /// `FROM`.
    pub base_image: &'a str,
    /// The EnvKey.
    pub key: &'a str,
    /// Origin and commit, for the label.
    pub source: &'a str,
    /// How the environment gets into the image.
    pub env: EnvLayer<'a>,
    /// The CRAN repository (R images).
    pub cran: &'a str,
    /// uv index flags inside the build (`--find-links /opt/hpcbinder/wheels/0 --no-index`).
    pub index: &'a str,
}

/// How the environment gets into the image.
pub enum EnvLayer<'a> {
    /// No Python environment (an R repository without Python requirements).
    None,
    /// A venv of the image's Python `X.Y`, made by uv in the build from the hashed lock.
    Venv {
        /// `X.Y`.
        python: &'a str,
    },
    /// A conda prefix staged in the build context; `pip` when a pip lock follows it.
    Conda {
        /// A pip section is installed from `pip.lock` in the build.
        pip: bool,
        /// environment.yml `variables:`, set in the image.
        variables: &'a std::collections::BTreeMap<String, String>,
    },
}

/// Whether hpcbinder can render a Containerfile for this spec (a repository Dockerfile is
/// built as it is instead).
pub fn supported(spec: &EnvSpec) -> Result<(), BuildError> {
    let tool = match spec.buildpack {
        Buildpack::Julia => "Julia",
        Buildpack::Nix => "Nix",
        _ => return Ok(()),
    };
    Err(BuildError::Unsupported {
        what: format!("a container for the {} buildpack", spec.buildpack.name()),
        instead: format!(
            "add a Dockerfile (in binder/ or the repository root) that installs {tool} and ipykernel or a kernel: hpcbinder builds it as it is"
        ),
    })
}

/// How the environment enters the image, as far as the recipe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKind {
    /// No Python environment.
    None,
    /// A venv made by uv in the build.
    Venv,
    /// A conda prefix copied in (and maybe a pip step).
    Conda,
}

/// The fragments [`containerfile`] renders for `spec`, in order. A conda environment
/// counts its pip fragment too: whether a pip step follows is known only after the solve.
pub fn fragments(spec: &EnvSpec, env: EnvKind) -> Vec<&'static str> {
    let r_file = |name: &str| {
        spec.files
            .iter()
            .any(|f| f.rsplit('/').next() == Some(name))
    };
    let mut used = vec![BASE];
    if !spec.apt.is_empty() {
        used.push(APT);
    }
    if spec.buildpack == Buildpack::R {
        used.push(R);
    }
    match env {
        EnvKind::None => {}
        EnvKind::Venv => used.push(VENV),
        EnvKind::Conda => used.extend([CONDA, CONDA_PIP]),
    }
    if r_file("install.R") {
        used.push(INSTALL_R);
    }
    used.push(REPO);
    if spec.buildpack == Buildpack::R && r_file("DESCRIPTION") {
        used.push(DESCRIPTION);
    }
    if env == EnvKind::Venv
        && spec.buildpack != Buildpack::UvLock
        && spec
            .files
            .iter()
            .any(|f| f == "setup.py" || f == "pyproject.toml")
    {
        used.push(PACKAGE);
    }
    if spec.post_build.is_some() {
        used.push(POST_BUILD);
    }
    if spec.start.is_some() {
        used.push(START);
    }
    used.push(LABELS);
    used
}

/// The Containerfile text.
pub fn containerfile(spec: &EnvSpec, inputs: &RenderInputs<'_>) -> String {
    let fill = |template: &str| {
        template
            .replace("{{version}}", env!("CARGO_PKG_VERSION"))
            .replace("{{key}}", inputs.key)
            .replace("{{source}}", &inputs.source.replace('"', "'"))
            .replace("{{buildpack}}", spec.buildpack.name())
            .replace("{{base_image}}", inputs.base_image)
            .replace("{{index}}", inputs.index)
    };
    let mut out = fill(BASE);
    if !spec.apt.is_empty() {
        out.push('\n');
        out.push_str(&APT.replace("{{packages}}", &spec.apt.join(" ")));
    }
    let r_file = |name: &str| {
        spec.files
            .iter()
            .find(|f| f.rsplit('/').next() == Some(name))
    };
    if spec.buildpack == Buildpack::R {
        let mut packages = vec!["r-base-core", "r-cran-irkernel"];
        if r_file("DESCRIPTION").is_some() {
            packages.push("r-cran-remotes");
        }
        out.push('\n');
        out.push_str(
            &R.replace("{{packages}}", &packages.join(" "))
                .replace("{{cran}}", &inputs.cran.replace(['"', '\''], "")),
        );
    }
    let installs_package = match &inputs.env {
        EnvLayer::None => false,
        EnvLayer::Venv { python } => {
            out.push('\n');
            out.push_str(&fill(VENV).replace("{{python}}", python));
            spec.buildpack != Buildpack::UvLock
        }
        EnvLayer::Conda { pip, variables } => {
            out.push('\n');
            out.push_str(CONDA);
            for (name, value) in variables.iter() {
                let value = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('$', "\\$");
                out.push_str(&format!("ENV {name}=\"{value}\"\n"));
            }
            if *pip {
                out.push_str(&fill(CONDA_PIP));
            }
            // As repo2docker: only the Python buildpacks install the repository itself.
            false
        }
    };
    if let Some(install_r) = r_file("install.R") {
        out.push('\n');
        out.push_str(&INSTALL_R.replace("{{install_r}}", install_r));
    }
    out.push('\n');
    out.push_str(REPO);
    if spec.buildpack == Buildpack::R && r_file("DESCRIPTION").is_some() {
        out.push_str(DESCRIPTION);
    }
    if installs_package
        && spec
            .files
            .iter()
            .any(|f| f == "setup.py" || f == "pyproject.toml")
    {
        out.push_str(&fill(PACKAGE));
    }
    if let Some(post_build) = &spec.post_build {
        out.push_str(&POST_BUILD.replace("{{post_build}}", post_build));
    }
    if let Some(start) = &spec.start {
        out.push_str(&START.replace("{{start}}", start));
    }
    out.push_str(&fill(LABELS));
    out
}
