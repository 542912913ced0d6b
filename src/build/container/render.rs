//! The Containerfile for a spec, assembled from the fragments in `buildpacks/container/`:
//! base (user, CA bundle, labels) → apt.txt → the environment from its lock → the
//! repository → postBuild → start. Environment files are copied before the repository so
//! the environment layer survives notebook-only changes.

use crate::detect::{Buildpack, EnvSpec};

const BASE: &str = include_str!("../../../buildpacks/container/base.Containerfile");
const APT: &str = include_str!("../../../buildpacks/container/apt.Containerfile");
const VENV: &str = include_str!("../../../buildpacks/container/venv.Containerfile");
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
    /// `X.Y`.
    pub python: &'a str,
    /// uv index flags inside the build (`--find-links /opt/hpcbinder/wheels/0 --no-index`).
    pub index: &'a str,
}

/// Whether hpcbinder can render a Containerfile for this spec (a repository Dockerfile is
/// built as it is instead).
pub fn supported(spec: &EnvSpec) -> Result<(), String> {
    match spec.buildpack {
        Buildpack::Python
        | Buildpack::Default
        | Buildpack::Pipfile
        | Buildpack::UvLock
        | Buildpack::Pylock => Ok(()),
        Buildpack::Docker => Ok(()),
        other => Err(format!("a container for the {} buildpack", other.name())),
    }
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
            .replace("{{python}}", inputs.python)
            .replace("{{index}}", inputs.index)
    };
    let mut out = fill(BASE);
    if !spec.apt.is_empty() {
        out.push('\n');
        out.push_str(&APT.replace("{{packages}}", &spec.apt.join(" ")));
    }
    out.push('\n');
    out.push_str(&fill(VENV));
    out.push('\n');
    out.push_str(REPO);
    if spec
        .files
        .iter()
        .any(|f| f == "setup.py" || f == "pyproject.toml")
        && spec.buildpack != Buildpack::UvLock
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
