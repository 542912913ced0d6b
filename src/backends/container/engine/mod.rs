//! Container engines: every image is built with Podman (podman-hpc for that target), then
//! converted into the engine's own form; each engine also says how its kernels start and
//! whether they can run on this machine.
//!
//! One type per engine behind [`Engine`], listed once in [`ENGINES`]. Adding an engine:
//! a new file here implementing [`Engine`], a line in [`ENGINES`], and its [`Target`]
//! variant (the command line's value, in `plan.rs`: the enum, `ALL`, `CONTAINERS`,
//! `name`). A container target missing from the table fails the `every_container_target_has_an_engine` test.

mod apptainer;
mod charliecloud;
mod podman;
mod podman_hpc;
mod rootfs;
mod shifter;

use std::path::{Path, PathBuf};
use std::process::Command;

use super::super::process::{self, BuildError, Fault};
use super::super::Context;
use super::IMAGE_PYTHON;
use crate::detect::Buildpack;
use crate::events::{Phase, ReporterExt};
use crate::settings::Settings;
use crate::shell::quote;
use crate::target::Target;

/// A container engine.
pub trait Engine: Sync {
    /// The target it serves.
    fn target(&self) -> Target;
    /// The program that builds images for it.
    fn builder(&self) -> &'static str {
        "podman"
    }
    /// The program its kernels run with; they can run here only where it is on PATH.
    fn runner(&self) -> &'static str;
    /// Turn the image `reference` (built with `builder`) into this engine's form.
    fn convert(
        &self,
        context: &Context<'_>,
        builder: &Path,
        reference: &str,
        artifact: &mut Artifact,
    ) -> anyhow::Result<()>;
    /// The kernel helper's exported variables and its exec line, which starts `launch`
    /// (the kernel's command, ending where the connection file goes) in the image.
    fn kernel(&self, artifact: &Artifact, settings: &Settings, launch: &str) -> (String, String);
}

/// Every engine.
pub const ENGINES: &[&dyn Engine] = &[
    &podman::Podman,
    &podman_hpc::PodmanHpc,
    &charliecloud::Charliecloud,
    &apptainer::Apptainer,
    &shifter::Shifter,
];

/// The engine of a container target.
pub fn engine(target: Target) -> &'static dyn Engine {
    ENGINES
        .iter()
        .copied()
        .find(|e| e.target() == target)
        .unwrap_or_else(|| panic!("{} is not a container target", target.name()))
}

pub use crate::store::Artifact;

pub use crate::variables::on_path;

pub(super) fn tool(name: &str) -> Result<PathBuf, BuildError> {
    on_path(name).ok_or_else(|| BuildError::Tool {
        tool: name.to_string(),
    })
}

pub(super) fn podman(settings: &Settings, program: &Path) -> Command {
    let mut command = Command::new(program);
    if let Some(conf) = &settings.container.containers_conf {
        command.env("CONTAINERS_CONF", conf);
    }
    command
}

/// Build with Podman (podman-hpc for that target), then convert.
pub fn build(
    context: &Context<'_>,
    dir: &Path,
    containerfile: &Path,
    reference: &str,
) -> anyhow::Result<Artifact> {
    let request = context.request;
    let settings = request.settings;
    let spec = request.spec;
    let engine = engine(request.target);
    let builder = tool(engine.builder())?;
    let build_root = if spec.buildpack == Buildpack::Docker {
        context.repo().to_path_buf()
    } else {
        dir.to_path_buf()
    };
    if spec.buildpack != Buildpack::Docker {
        let base = settings.container.base_image.clone().unwrap_or_default();
        let exists = podman(settings, &builder)
            .args(["image", "exists", &base])
            .status()?
            .success();
        if !exists {
            context
                .reporter
                .phase(Phase::Fetching, format!("Pulling the base image {base}"));
            let mut pull = podman(settings, &builder);
            pull.args(["pull", &base]);
            if process::run(context, "podman pull", &mut pull, Fault::Machine).is_err() {
                return Err(BuildError::BaseImage {
                    image: base,
                    log: process::tail(&context.log(), 5),
                }
                .into());
            }
        }
    }
    context
        .reporter
        .phase(Phase::Building, format!("Building the image {reference}"));
    let mut command = podman(settings, &builder);
    command.arg("build");
    if let Some(isolation) = &settings.container.podman_isolation {
        command.arg(format!("--isolation={isolation}"));
    }
    // An index URL with a credential: a build secret read from this process's
    // environment (never a file, a build argument or a Containerfile line).
    if let (Some(url), true) = (
        &settings.pip.index_url,
        super::index_has_credential(settings),
    ) {
        command
            .env("HPCBINDER_INDEX_SECRET", url)
            .arg("--secret")
            .arg(format!(
                "id={},env=HPCBINDER_INDEX_SECRET",
                super::render::INDEX_SECRET
            ));
    }
    // Without local sources (the launch service), a repository Dockerfile's images come
    // from their registries, never from this machine's storage, where another tenant's
    // build may have left an image of the same name.
    if !settings.local_sources && request.spec.buildpack == crate::detect::Buildpack::Docker {
        command.arg("--pull=always");
    }
    command
        .args(&settings.container.podman_build_args)
        .arg("--file")
        .arg(containerfile)
        .args(["--tag", reference])
        .args(["--label", &format!("org.hpcbinder.key={}", request.key.key)])
        .arg(&build_root);
    // `STEP 3/12: ...` lines: the image's layers, as progress.
    let on_line = |line: &str| {
        if let Some((done, total)) = build_step(line) {
            let mut event = crate::events::Event::new(Phase::Building, line.to_string());
            event.progress = Some(done as f64 / total as f64);
            context.reporter.report(event);
        }
    };
    process::run_with_lines(
        context,
        "podman build",
        &mut command,
        Fault::Spec,
        Some(&on_line),
    )?;

    let python = if spec.buildpack == Buildpack::Docker {
        dockerfile_python(context, &builder, reference)
    } else {
        IMAGE_PYTHON.to_string()
    };
    let entrypoint = spec.start.as_ref().map(|s| format!("/home/jovyan/{s}"));
    let mut artifact = Artifact {
        engine: request.target,
        image: reference.to_string(),
        squashfs: None,
        python,
        entrypoint,
        language: (spec.buildpack == Buildpack::R).then(|| "R".to_string()),
        runtime: None,
    };
    if spec.buildpack == Buildpack::R {
        // "R version 4.2.2 (2022-10-31) -- ..." → 4.2.2
        artifact.runtime = ask_image(context, &builder, reference, "R --version")
            .and_then(|text| text.split_whitespace().nth(2).map(str::to_string));
    }
    engine.convert(context, &builder, reference, &mut artifact)?;
    Ok(artifact)
}

/// The absolute path of the Python a repository's Dockerfile left on the image's PATH
/// (kernel.json names it), asked of the image itself; `python3` when it cannot be run here.
fn dockerfile_python(context: &Context<'_>, builder: &Path, reference: &str) -> String {
    match ask_image(
        context,
        builder,
        reference,
        "command -v python3 || command -v python",
    )
    .filter(|path| path.starts_with('/'))
    {
        Some(python) => python,
        None => {
            context.reporter.phase(
                Phase::Building,
                "Could not run the image to find its Python: the kernel runs `python3` from the image's PATH",
            );
            "python3".to_string()
        }
    }
}

/// Run `sh -c script` in the image (no network) and return its first line of output;
/// `None` when the image cannot be run here.
fn ask_image(
    context: &Context<'_>,
    builder: &Path,
    reference: &str,
    script: &str,
) -> Option<String> {
    let settings = context.request.settings;
    let mut run = podman(settings, builder);
    run.args([
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
    ])
    .args(&settings.container.podman_run_args)
    .args([reference, "-c", script]);
    run.output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .filter(|l| !l.is_empty())
}

/// `(n, m)` of a `podman build` line `STEP n/m: ...`.
fn build_step(line: &str) -> Option<(usize, usize)> {
    let rest = line.strip_prefix("STEP ")?;
    let (fraction, _) = rest.split_once(':')?;
    let (done, total) = fraction.split_once('/')?;
    let (done, total) = (done.parse().ok()?, total.parse::<usize>().ok()?);
    (total > 0 && done <= total).then_some((done, total))
}

/// The helper's exported variables and exec line for a kernel in `artifact`.
pub fn kernel_exec(artifact: &Artifact, settings: &Settings) -> (String, String) {
    let launch = match artifact.language.as_deref() {
        // IRkernel, as its own kernelspec starts it.
        Some("R") => "R --slave -e 'IRkernel::main()' --args".to_string(),
        _ => format!("{} -m ipykernel_launcher -f", quote(&artifact.python)),
    };
    engine(artifact.engine).kernel(artifact, settings, &launch)
}

#[cfg(test)]
mod tests {
    #[test]
    fn podman_build_steps_are_progress() {
        assert_eq!(super::build_step("STEP 3/12: RUN true"), Some((3, 12)));
        assert_eq!(super::build_step("STEP 1/1: FROM x"), Some((1, 1)));
        assert_eq!(super::build_step("--> 3f2a"), None);
        assert_eq!(super::build_step("STEP 4/3: odd"), None);
    }

    #[test]
    fn every_container_target_has_an_engine() {
        for target in crate::target::Target::CONTAINERS {
            assert_eq!(super::engine(*target).target(), *target);
        }
        assert_eq!(
            super::ENGINES.len(),
            crate::target::Target::CONTAINERS.len()
        );
    }
}
