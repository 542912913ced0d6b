//! Container targets: render a Containerfile (or take the repository's Dockerfile), build
//! it with Podman, and turn the image into each engine's own form: a Podman image,
//! podman-hpc's migrated squashfs, a Charliecloud directory + squashfs, an Apptainer SIF
//! (written with `siftool` when `apptainer` is absent), or a registry image for Shifter.
//!
//! The environment inside the image comes from the same lock a native build of the spec
//! uses, so a native env and an image of one key hold the same packages:
//! - Python family: uv, copied into the build context, makes `/opt/env` in the build and
//!   installs the hashed `requirements.lock` resolved on this machine (with any local
//!   wheel directories copied in).
//! - conda family: hpcbinder resolves the records (solve, `pixi.lock`, `@EXPLICIT`,
//!   conda-lock) and links them with rattler into the build context *for the prefix*
//!   `/opt/env` (rattler's alternative target prefix rewrites prefix placeholders and
//!   shebangs for `/opt/env`, not for the directory written); the Containerfile copies
//!   that prefix in. The pip section's hashed `pip.lock` is installed by uv in the build.
//!   No conda, mamba or network access to conda channels is needed inside the build.

mod engine;
mod render;

use std::path::{Path, PathBuf};

use super::process::BuildError;
use super::{python, spec_has_ipykernel, venv, Context};
use crate::detect::Buildpack;
use crate::events::{Phase, ReporterExt};
use crate::key;
use crate::settings::Settings;
use crate::target::Target;
pub use engine::{kernel_exec, Artifact};
pub use render::supported;

/// Where the environment lives inside images hpcbinder renders.
pub const IMAGE_PREFIX: &str = "/opt/env";

/// Where Python lives inside images hpcbinder renders.
pub const IMAGE_PYTHON: &str = "/opt/env/bin/python";

/// The image reference hpcbinder gives a key: `localhost/hpcbinder/<slug>:<key16>`.
pub fn image_reference(slug: &str, key16: &str) -> String {
    let name = crate::plan::kernel_name(slug);
    format!("localhost/hpcbinder/{}:{key16}", name.trim_matches('.'))
}

/// Build the image for `context`; returns the locks written and the artifact.
pub fn build(context: &Context<'_>) -> anyhow::Result<(Vec<String>, Artifact)> {
    let request = context.request;
    supported(request.spec)?;
    let build_dir = context.prefix.join("context");
    let (containerfile, locks) = assemble(context, &build_dir)?;
    let reference = image_reference(&request.checkout.slug, request.key.short());
    let artifact = engine::build(context, &build_dir, &containerfile, &reference)?;
    // Keep the recipe and the lock for provenance; the copied repository and wheels can go.
    fs_err::copy(&containerfile, context.meta.join("Containerfile"))?;
    let _ = fs_err::remove_dir_all(&build_dir);
    Ok((locks, artifact))
}

/// Write the build context into `dir` (Containerfile, lock, uv, CA bundle, wheels, repo)
/// and return the Containerfile's path. Also used by `--containerfile-only`.
pub fn assemble(context: &Context<'_>, dir: &Path) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let request = context.request;
    let spec = request.spec;
    let settings = request.settings;
    if spec.buildpack == Buildpack::Docker {
        // Built as it is, with the repository as the context (as repo2docker does).
        return Ok((context.repo().join(repository_dockerfile(spec)), Vec::new()));
    }
    // Fail before resolving anything when there is nothing to build from.
    settings
        .container
        .base_image
        .as_ref()
        .ok_or(BuildError::NoBaseImage)?;
    let support = dir.join("hpcbinder");
    let env_dir = support.join("env");
    fs_err::create_dir_all(&env_dir)?;
    fs_err::create_dir_all(&context.meta)?;

    let (env, locks) = if r_alone(spec) {
        // R alone: no Python environment in the image.
        (EnvInside::None, Vec::new())
    } else if is_conda(spec) {
        // Linked here for /opt/env from the lock a native build installs, then copied in.
        let staged =
            super::conda::stage(context, &support.join("prefix"), Path::new(IMAGE_PREFIX))?;
        if let Some(pip_lock) = &staged.pip_lock {
            fs_err::copy(pip_lock, env_dir.join("pip.lock"))?;
            copy_uv(context, &support)?;
        }
        let env = EnvInside::Conda {
            pip: staged.pip_lock.is_some(),
        };
        (env, staged.locks)
    } else {
        venv_lock(context, &env_dir)?;
        copy_uv(context, &support)?;
        (EnvInside::Venv, vec!["hpcbinder/requirements.lock".into()])
    };
    match settings.ca_bundle() {
        Some(bundle) => {
            fs_err::copy(bundle, support.join("ca-bundle.crt"))?;
        }
        None => fs_err::write(support.join("ca-bundle.crt"), "")?,
    }
    let local = spec.parsed.requirements.local_lines();
    if !local.is_empty() && !matches!(env, EnvInside::None) {
        fs_err::write(
            env_dir.join("local-requirements.txt"),
            local.join("\n") + "\n",
        )?;
        copy_uv(context, &support)?;
    }
    super::sandbox::copy_repository(context.repo(), &dir.join("repo"))?;
    let text = containerfile_text(request, env, Some(&env_dir))?;
    let containerfile = dir.join("Containerfile");
    fs_err::write(&containerfile, text)?;
    Ok((containerfile, locks))
}

/// An R repository without Python or conda requirements: no Python environment.
fn r_alone(spec: &crate::detect::EnvSpec) -> bool {
    spec.buildpack == Buildpack::R && spec.conda.is_none() && spec.pip.is_none()
}

/// The conda family (and R with an environment.yml): environments linked by rattler.
fn is_conda(spec: &crate::detect::EnvSpec) -> bool {
    spec.buildpack.is_conda_family() || (spec.buildpack == Buildpack::R && spec.conda.is_some())
}

/// How the environment enters the image (see `render::EnvLayer`).
#[derive(Clone, Copy)]
enum EnvInside {
    None,
    Venv,
    Conda { pip: bool },
}

fn copy_uv(context: &Context<'_>, support: &Path) -> anyhow::Result<()> {
    let uv = context
        .uv()
        .ok_or_else(|| BuildError::Tool { tool: "uv".into() })?;
    fs_err::copy(uv, support.join("uv"))?;
    Ok(())
}

/// The venv's hashed lock, resolved here, on this machine, exactly as a native venv build
/// resolves it (or copied from `--from-lock`), into `env_dir/requirements.lock`.
fn venv_lock(context: &Context<'_>, env_dir: &Path) -> anyhow::Result<()> {
    let request = context.request;
    let spec = request.spec;
    let settings = request.settings;
    let uv = context
        .uv()
        .map(Path::to_path_buf)
        .ok_or_else(|| BuildError::Tool { tool: "uv".into() })?;
    let lock = context.meta.join("requirements.lock");
    match &request.from_lock {
        Some(from) => {
            fs_err::copy(from, &lock)?;
        }
        None => {
            let interpreter = python::interpreter(spec, settings)?;
            let needs_ipykernel = !spec_has_ipykernel(spec, context.repo());
            let input = if spec.buildpack == Buildpack::UvLock {
                uv_export(context, &uv, needs_ipykernel)?
            } else {
                venv::requirements_input(context, needs_ipykernel)?
            };
            context.reporter.phase(
                Phase::Building,
                "Resolving the requirements into a hashed lock",
            );
            python::compile_lock(
                context,
                &uv,
                &interpreter.path.display().to_string(),
                &input,
                &lock,
                context.repo(),
            )?;
        }
    }
    fs_err::copy(&lock, env_dir.join("requirements.lock"))?;
    Ok(())
}

/// The repository's Dockerfile (in `binder/` or `.binder/` when config lives there).
fn repository_dockerfile(spec: &crate::detect::EnvSpec) -> String {
    spec.files
        .iter()
        .find(|f| f.ends_with("Dockerfile"))
        .cloned()
        .unwrap_or_else(|| "Dockerfile".into())
}

/// The Containerfile a build would use (the repository's own Dockerfile for the docker
/// buildpack), for `build --dry-run`.
pub fn preview(request: &super::BuildRequest<'_>) -> anyhow::Result<String> {
    let spec = request.spec;
    supported(spec)?;
    if spec.buildpack == Buildpack::Docker {
        return Ok(fs_err::read_to_string(
            request.checkout.root.join(repository_dockerfile(spec)),
        )?);
    }
    let env = if r_alone(spec) {
        EnvInside::None
    } else if is_conda(spec) {
        // As the build decides: a pip step when the spec has pip lines or needs ipykernel.
        let locked_pip = spec.parsed.locked.iter().any(|p| p.pip);
        let has_pip = locked_pip || spec.conda.as_ref().is_some_and(|c| !c.pip.is_empty());
        let adds_ipykernel = request.settings.conda.kernel_package == "pip"
            && request.from_lock.is_none()
            && !spec_has_ipykernel(spec, &request.checkout.root);
        EnvInside::Conda {
            pip: has_pip || adds_ipykernel,
        }
    } else {
        EnvInside::Venv
    };
    containerfile_text(request, env, None)
}

/// Render the Containerfile for `request`; local wheel directories are copied into
/// `wheels_into` when given (a build context), else only referenced (a preview).
fn containerfile_text(
    request: &super::BuildRequest<'_>,
    env: EnvInside,
    wheels_into: Option<&Path>,
) -> anyhow::Result<String> {
    let settings = request.settings;
    let base_image = settings
        .container
        .base_image
        .clone()
        .ok_or(BuildError::NoBaseImage)?;
    let (version, _) = key::python_version(request.spec, settings);
    let no_variables = std::collections::BTreeMap::new();
    let variables = request
        .spec
        .conda
        .as_ref()
        .map_or(&no_variables, |c| &c.variables);
    if let Some((name, _)) = variables.iter().find(|(_, v)| v.contains('\n')) {
        return Err(BuildError::Unsupported {
            what: format!("a multi-line value for the image variable `{name}`"),
            instead: "put the value on one line in environment.yml `variables:`".into(),
        }
        .into());
    }
    let env = match env {
        EnvInside::None => render::EnvLayer::None,
        EnvInside::Venv => render::EnvLayer::Venv { python: &version },
        EnvInside::Conda { pip } => render::EnvLayer::Conda { pip, variables },
    };
    Ok(render::containerfile(
        request.spec,
        &render::RenderInputs {
            base_image: &base_image,
            key: &request.key.key,
            source: &request.checkout.identity.describe(),
            env,
            cran: &key::cran_repository(request.spec, settings),
            index: &index_inside(settings, wheels_into)?,
            index_secret: index_has_credential(settings),
        },
    ))
}

/// Write the build context for `request` into `dir` and stop (`--containerfile-only`).
pub fn write_context(
    request: &super::BuildRequest<'_>,
    dir: &Path,
    reporter: &dyn crate::events::Reporter,
) -> anyhow::Result<PathBuf> {
    let store =
        crate::store::Store::open(&request.settings.store, &request.settings.store_maintainers)?;
    fs_err::create_dir_all(dir)?;
    let dir = fs_err::canonicalize(dir)?;
    let context = Context {
        request,
        meta: dir.join("hpcbinder"),
        prefix: dir.clone(),
        store: &store,
        reporter,
        uv: std::sync::OnceLock::new(),
        jail: None,
    };
    // No repository code runs here: local packages are built inside the image build.
    let (containerfile, _) = assemble(&context, &dir)?;
    Ok(containerfile)
}

/// `uv export` of a repository's uv.lock (hashes included), plus ipykernel when missing.
fn uv_export(context: &Context<'_>, uv: &Path, needs_ipykernel: bool) -> anyhow::Result<PathBuf> {
    let (_, project) = venv::uv_project(context);
    let exported = context.meta.join("uv-export.txt");
    let exported_arg = exported.display().to_string();
    let mut command = python::uv_command(
        uv,
        context.request.settings,
        &[
            "export",
            "--frozen",
            "--format",
            "requirements-txt",
            "--no-emit-project",
            "-o",
            &exported_arg,
        ],
    );
    command.current_dir(&project);
    super::process::run(
        context,
        "uv export",
        &mut command,
        super::process::Fault::Spec,
    )?;
    let input = context.meta.join("requirements.in");
    let mut text = format!("-r {}\n", exported.display());
    if needs_ipykernel {
        text.push_str("ipykernel\n");
    }
    fs_err::write(&input, text)?;
    Ok(input)
}

/// uv index flags for inside the build; local `pip-find-links` directories are copied into
/// `env_dir` (when given: `None` only renders the flags).
/// Whether the site's index URL carries a credential (user info, a token parameter).
pub fn index_has_credential(settings: &Settings) -> bool {
    settings
        .pip
        .index_url
        .as_ref()
        .is_some_and(|url| crate::source::redact(url) != *url)
}

fn index_inside(settings: &Settings, env_dir: Option<&Path>) -> anyhow::Result<String> {
    let mut flags = Vec::new();
    if let Some(url) = &settings.pip.index_url {
        // One with a credential comes from the build secret instead.
        if !index_has_credential(settings) {
            flags.push(format!("--index-url {}", crate::shell::quote(url)));
        }
    }
    for (n, link) in settings.pip.find_links.iter().enumerate() {
        let local = link.strip_prefix("file://").unwrap_or(link);
        if Path::new(local).is_dir() {
            if let Some(env_dir) = env_dir {
                let target = env_dir.join("wheels").join(n.to_string());
                fs_err::create_dir_all(&target)?;
                for entry in fs_err::read_dir(local)? {
                    let entry = entry?;
                    if entry.file_type()?.is_file() {
                        fs_err::copy(entry.path(), target.join(entry.file_name()))?;
                    }
                }
            }
            flags.push(format!("--find-links /opt/hpcbinder/wheels/{n}"));
        } else {
            flags.push(format!("--find-links {link}"));
        }
    }
    if settings.pip.no_index {
        flags.push("--no-index".into());
    }
    Ok(flags.join(" "))
}

/// Whether a target's engine can run a kernel on this machine, and if not, why.
pub fn runnable(target: Target) -> Result<(), String> {
    if !target.is_container() {
        return Ok(());
    }
    let tool = engine::engine(target).runner();
    engine::on_path(tool)
        .map(|_| ())
        .ok_or_else(|| format!("`{tool}` is not installed on this machine"))
}
