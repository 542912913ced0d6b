//! The Containerfile for a spec, assembled from the fragments in `buildpacks/container/`:
//! base (user, CA bundle, labels) → apt.txt → the environment from its lock (a venv made
//! by uv in the build, or a conda prefix linked by hpcbinder and copied in) → the
//! repository → postBuild → start. Environment files are copied before the repository so
//! the environment layer survives notebook-only changes.

use crate::backends::BuildError;
use crate::detect::{Buildpack, EnvSpec};

use crate::recipe::{
    APT, BASE, CONDA, CONDA_PIP, DESCRIPTION, INSTALL_R, LABELS, LOCAL, PACKAGE, POST_BUILD, R,
    REPO, START, VENV,
};

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
    /// The index URL carries a credential: it comes from the build secret `pip-index`
    /// ([`INDEX_SECRET`]), never from the Containerfile or the image's history.
    pub index_secret: bool,
}

/// The build secret that holds an index URL with a credential.
pub const INDEX_SECRET: &str = "pip-index";

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

/// The Containerfile text.
pub fn containerfile(spec: &EnvSpec, inputs: &RenderInputs<'_>) -> String {
    let fill = |template: &str| {
        template
            .replace("{{version}}", env!("CARGO_PKG_VERSION"))
            .replace("{{key}}", inputs.key)
            // One line, no quote: it lands in a comment and in a LABEL value.
            .replace(
                "{{source}}",
                &inputs
                    .source
                    .replace('"', "'")
                    .replace(['\n', '\r', '\\'], " "),
            )
            .replace("{{buildpack}}", spec.buildpack.name())
            .replace("{{base_image}}", inputs.base_image)
            .replace("{{index}}", inputs.index)
            .replace(
                "{{index_secret}}",
                if inputs.index_secret {
                    "--mount=type=secret,id=pip-index export UV_INDEX_URL=\"$(cat /run/secrets/pip-index)\" \\\n && "
                } else {
                    ""
                },
            )
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
    if !matches!(inputs.env, EnvLayer::None) && spec.parsed.requirements.has_local() {
        out.push_str(&fill(LOCAL));
    }
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
