//! The recipe: the Containerfile fragments in `buildpacks/container/` (embedded), which of
//! them a spec renders, and the digest of those that enters the key (a changed fragment
//! must never reuse an old image). Native builds name their recipe's version instead.

use crate::detect::{Buildpack, EnvSpec};
use crate::target::Target;

pub(crate) const BASE: &str = include_str!("../buildpacks/container/base.Containerfile");
pub(crate) const APT: &str = include_str!("../buildpacks/container/apt.Containerfile");
pub(crate) const VENV: &str = include_str!("../buildpacks/container/venv.Containerfile");
pub(crate) const CONDA: &str = include_str!("../buildpacks/container/conda.Containerfile");
pub(crate) const CONDA_PIP: &str = include_str!("../buildpacks/container/conda-pip.Containerfile");
pub(crate) const R: &str = include_str!("../buildpacks/container/r.Containerfile");
pub(crate) const INSTALL_R: &str = include_str!("../buildpacks/container/install-r.Containerfile");
pub(crate) const DESCRIPTION: &str =
    include_str!("../buildpacks/container/description.Containerfile");
pub(crate) const PACKAGE: &str = include_str!("../buildpacks/container/package.Containerfile");
pub(crate) const LOCAL: &str = include_str!("../buildpacks/container/local.Containerfile");
pub(crate) const REPO: &str = include_str!("../buildpacks/container/repo.Containerfile");
pub(crate) const POST_BUILD: &str =
    include_str!("../buildpacks/container/post-build.Containerfile");
pub(crate) const START: &str = include_str!("../buildpacks/container/start.Containerfile");
pub(crate) const LABELS: &str = include_str!("../buildpacks/container/labels.Containerfile");

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
    if env != EnvKind::None && spec.parsed.requirements.has_local() {
        used.push(LOCAL);
    }
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

/// What the key calls the recipe: for images, a digest of the Containerfile fragments
/// this spec renders (a changed fragment must not reuse old images); for native targets,
/// the native recipe's version, bumped when the build steps change what they produce.
/// Kernel helpers are not part of it: they are rewritten at every registration, reuse
/// included.
pub fn recipe_digest(spec: &EnvSpec, target: Target) -> String {
    if !target.is_container() {
        return NATIVE_RECIPE.to_string();
    }
    let env = if spec.buildpack == Buildpack::Docker
        || (spec.buildpack == Buildpack::R && spec.conda.is_none() && spec.pip.is_none())
    {
        EnvKind::None
    } else if spec.buildpack.is_conda_family()
        || (spec.buildpack == Buildpack::R && spec.conda.is_some())
    {
        EnvKind::Conda
    } else {
        EnvKind::Venv
    };
    if spec.buildpack == Buildpack::Docker {
        return fragments_digest(&[]);
    }
    fragments_digest(&fragments(spec, env))
}

fn fragments_digest(fragments: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for fragment in fragments {
        hasher.update(fragment.as_bytes());
        hasher.update([0]);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// The native build recipe's version (see [`recipe_digest`]).
const NATIVE_RECIPE: &str = "native-1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipe_digest_follows_every_fragment_used() {
        let mut spec = EnvSpec::for_tests(Buildpack::Python);
        spec.files.push("requirements.txt".into());
        let podman = Target::Podman;
        let plain = recipe_digest(&spec, podman);
        // A changed fragment (here: one more byte in one of them) changes the digest.
        let used = fragments(&spec, EnvKind::Venv);
        let mut changed: Vec<String> = used.iter().map(|f| f.to_string()).collect();
        changed[1].push(' ');
        let changed: Vec<&str> = changed.iter().map(String::as_str).collect();
        assert_eq!(plain, fragments_digest(&used));
        assert_ne!(plain, fragments_digest(&changed));
        // apt.txt and postBuild bring their fragments in.
        spec.apt.push("jq".into());
        let with_apt = recipe_digest(&spec, podman);
        assert_ne!(plain, with_apt);
        spec.post_build = Some("postBuild".into());
        assert_ne!(with_apt, recipe_digest(&spec, podman));
        // Native targets name their recipe version.
        assert_eq!(recipe_digest(&spec, Target::Venv), NATIVE_RECIPE);
    }
}
