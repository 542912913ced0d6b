//! Engine back ends: build with Podman (or podman-hpc), then convert the image into the
//! engine's own form, and the command a kernel helper runs for each.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::super::process::{self, BuildError, Fault};
use super::super::Context;
use super::IMAGE_PYTHON;
use crate::detect::Buildpack;
use crate::events::{Phase, ReporterExt};
use crate::plan::Target;
use crate::settings::Settings;

/// What a container build produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// The engine.
    pub engine: Target,
    /// A Podman image reference, a registry reference (Shifter), or a path in the store
    /// (Charliecloud directory, Apptainer SIF).
    pub image: String,
    /// The squashfs file, for engines that have one.
    pub squashfs: Option<PathBuf>,
    /// The Python that runs the kernel inside the image.
    pub python: String,
    /// The image's `start` script (its entrypoint), for engines that ignore entrypoints.
    pub entrypoint: Option<String>,
    /// The kernel's language when it is not Python (`R`: IRkernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// That language's version, found in the image (R images: `4.2.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

/// A program on PATH.
pub fn on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn tool(name: &str) -> Result<PathBuf, BuildError> {
    on_path(name).ok_or_else(|| BuildError::Tool {
        tool: name.to_string(),
    })
}

fn podman(settings: &Settings, program: &Path) -> Command {
    let mut command = Command::new(program);
    if let Some(conf) = &settings.containers_conf {
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
    let builder = tool(if request.target == Target::PodmanHpc {
        "podman-hpc"
    } else {
        "podman"
    })?;
    let build_root = if spec.buildpack == Buildpack::Docker {
        context.repo().to_path_buf()
    } else {
        dir.to_path_buf()
    };
    if spec.buildpack != Buildpack::Docker {
        let base = settings.base_image.clone().unwrap_or_default();
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
    if let Some(isolation) = &settings.podman_isolation {
        command.arg(format!("--isolation={isolation}"));
    }
    command
        .args(&settings.podman_build_args)
        .arg("--file")
        .arg(containerfile)
        .args(["--tag", reference])
        .args(["--label", &format!("org.hpcbinder.key={}", request.key.key)])
        .arg(&build_root);
    process::run(context, "podman build", &mut command, Fault::Spec)?;

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
    match request.target {
        Target::Podman => {}
        Target::PodmanHpc => {
            context.reporter.phase(
                Phase::Pushing,
                "Migrating the image to squashfs (podman-hpc migrate)",
            );
            let mut migrate = podman(settings, &builder);
            migrate.arg("migrate").arg(reference);
            if let Some(squash_dir) = &settings.squash_dir {
                migrate.env("SQUASH_DIR", squash_dir);
            }
            process::run(context, "podman-hpc migrate", &mut migrate, Fault::Machine)?;
            let squash_dir = squash_dir(settings);
            // Other members of the group run the kernel from the same squash dir.
            share_with_group(&squash_dir);
            // podman-hpc exits 0 even when mksquashfs fails: the squash file is the proof.
            artifact.squashfs =
                Some(migrated_squashfs(&squash_dir, reference).ok_or_else(|| {
                    BuildError::Migrate {
                        image: reference.to_string(),
                        dir: squash_dir.clone(),
                        log: process::tail(&context.log(), 8),
                    }
                })?);
        }
        Target::Charliecloud => {
            let image = export_rootfs(context, &builder, reference)?;
            let squashfs = context.prefix.join("image.sqfs");
            squash(context, &image, &squashfs)?;
            artifact.image = image.display().to_string();
            artifact.squashfs = Some(squashfs);
        }
        Target::Apptainer => {
            let sif = context.prefix.join("image.sif");
            sif_image(context, &builder, reference, &sif)?;
            artifact.image = sif.display().to_string();
        }
        Target::Shifter => {
            artifact.image = push(context, reference)?;
        }
        _ => unreachable!("only container targets reach the engines"),
    }
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
    .args(&settings.podman_run_args)
    .args([reference, "-c", script]);
    run.output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .filter(|l| !l.is_empty())
}

/// podman-hpc's squash dir: the `squash-dir` setting, else podman-hpc's own default
/// (`$SQUASH_DIR`, else `$SCRATCH/storage`, else `/tmp/storage`).
fn squash_dir(settings: &Settings) -> PathBuf {
    settings
        .squash_dir
        .clone()
        .or_else(|| std::env::var_os("SQUASH_DIR").map(PathBuf::from))
        .unwrap_or_else(|| {
            std::env::var_os("SCRATCH")
                .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
                .join("storage")
        })
}

/// The squash file podman-hpc wrote for `reference`: its image record in the squash dir's
/// `overlay-images/images.json` names the top layer, whose `link` names
/// `overlay/l/<link>.squash` (containers/storage's layout, as podman-hpc reads it).
fn migrated_squashfs(squash_dir: &Path, reference: &str) -> Option<PathBuf> {
    let images: Vec<serde_json::Value> =
        serde_json::from_slice(&fs_err::read(squash_dir.join("overlay-images/images.json")).ok()?)
            .ok()?;
    let image = images.iter().find(|image| {
        image["names"]
            .as_array()
            .is_some_and(|names| names.iter().any(|n| n.as_str() == Some(reference)))
    })?;
    let layer = image["layer"].as_str()?;
    let link = fs_err::read_to_string(squash_dir.join("overlay").join(layer).join("link")).ok()?;
    let squashfs = squash_dir
        .join("overlay/l")
        .join(format!("{}.squash", link.trim()));
    squashfs.is_file().then_some(squashfs)
}

/// Make what this user owns in a shared directory group-readable (never world-writable);
/// entries of other users are left as they are.
fn share_with_group(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        if entry.file_type().is_symlink() {
            continue;
        }
        let mode = metadata.permissions().mode() & 0o7777;
        let new = crate::store::shared_mode(mode, metadata.is_file());
        if new != mode {
            // Not ours (EPERM) is fine: its owner decides.
            let _ = fs_err::set_permissions(entry.path(), std::fs::Permissions::from_mode(new));
        }
    }
}

/// `podman create` + `podman export` into `<prefix>/image` (a Charliecloud directory image).
fn export_rootfs(
    context: &Context<'_>,
    podman_bin: &Path,
    reference: &str,
) -> anyhow::Result<PathBuf> {
    let settings = context.request.settings;
    context
        .reporter
        .phase(Phase::Building, "Exporting the image's root filesystem");
    let name = format!(
        "hpcbinder-export-{}-{}",
        context.request.key.short(),
        std::process::id()
    );
    let mut create = podman(settings, podman_bin);
    create.args(["create", "--name", &name, reference, "/bin/true"]);
    process::run(context, "podman create", &mut create, Fault::Machine)?;
    let tar = context.prefix.join("rootfs.tar");
    let mut export = podman(settings, podman_bin);
    export.args(["export", "--output"]).arg(&tar).arg(&name);
    let exported = process::run(context, "podman export", &mut export, Fault::Machine);
    let _ = podman(settings, podman_bin)
        .args(["rm", "--force", &name])
        .output();
    exported?;
    let image = context.prefix.join("image");
    fs_err::create_dir_all(&image)?;
    let mut untar = Command::new("tar");
    untar
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&image)
        .arg("--numeric-owner");
    process::run(
        context,
        "tar -x (root filesystem)",
        &mut untar,
        Fault::Machine,
    )?;
    fs_err::remove_file(&tar)?;
    // Where kernel helpers bind the Jupyter runtime directory (images from Dockerfiles lack it).
    fs_err::create_dir_all(image.join("mnt/hpcbinder"))?;
    write_image_environment(context, podman_bin, reference, &image)?;
    Ok(image)
}

/// A root filesystem loses the image's `ENV` (PATH, CONDA_PREFIX, `variables:`): write it
/// where each engine reads it back, `/ch/environment` (`ch-run --set-env`) and
/// `/.singularity.d/env/90-environment.sh` (sourced by Apptainer).
fn write_image_environment(
    context: &Context<'_>,
    podman_bin: &Path,
    reference: &str,
    image: &Path,
) -> anyhow::Result<()> {
    let mut inspect = podman(context.request.settings, podman_bin);
    inspect.args([
        "image",
        "inspect",
        "--format",
        "{{json .Config.Env}}",
        reference,
    ]);
    let output = inspect.output()?;
    if !output.status.success() {
        return Err(BuildError::Step {
            step: "podman image inspect".into(),
            code: output
                .status
                .code()
                .map_or("signal".into(), |c| c.to_string()),
            log: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        }
        .into());
    }
    let variables: Vec<String> = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let mut ch = String::new();
    let mut apptainer = String::from("#!/bin/sh\n# The image's ENV, written by hpcbinder.\n");
    for variable in &variables {
        let Some((name, value)) = variable.split_once('=') else {
            continue;
        };
        ch.push_str(&format!("{name}={value}\n"));
        apptainer.push_str(&format!("export {name}={}\n", quote(value)));
    }
    fs_err::create_dir_all(image.join("ch"))?;
    fs_err::write(image.join("ch/environment"), ch)?;
    let env_dir = image.join(".singularity.d/env");
    fs_err::create_dir_all(&env_dir)?;
    fs_err::write(env_dir.join("90-environment.sh"), apptainer)?;
    Ok(())
}

fn squash(context: &Context<'_>, dir: &Path, output: &Path) -> anyhow::Result<()> {
    context
        .reporter
        .phase(Phase::Building, format!("Writing {}", output.display()));
    let mut command = Command::new(tool("mksquashfs")?);
    command
        .arg(dir)
        .arg(output)
        .args(["-noappend", "-quiet", "-no-progress"]);
    process::run(context, "mksquashfs", &mut command, Fault::Machine)
}

/// A SIF: `apptainer build` where apptainer exists; otherwise the root filesystem as a
/// squashfs primary system partition in a SIF container written with siftool.
fn sif_image(
    context: &Context<'_>,
    podman_bin: &Path,
    reference: &str,
    sif: &Path,
) -> anyhow::Result<()> {
    let settings = context.request.settings;
    if let Some(apptainer) = on_path("apptainer") {
        let archive = context.prefix.join("oci.tar");
        let mut save = podman(settings, podman_bin);
        save.args(["save", "--format", "oci-archive", "--output"])
            .arg(&archive)
            .arg(reference);
        process::run(context, "podman save", &mut save, Fault::Machine)?;
        let mut build = Command::new(apptainer);
        build
            .arg("build")
            .arg(sif)
            .arg(format!("oci-archive:{}", archive.display()));
        process::run(context, "apptainer build", &mut build, Fault::Machine)?;
        fs_err::remove_file(&archive)?;
        return Ok(());
    }
    context.reporter.phase(
        Phase::Building,
        "apptainer is not installed: writing the SIF with siftool",
    );
    let rootfs = export_rootfs(context, podman_bin, reference)?;
    let squashfs = context.prefix.join("rootfs.sqfs");
    squash(context, &rootfs, &squashfs)?;
    fs_err::remove_dir_all(&rootfs)?;
    let siftool = tool("siftool")?;
    let mut new = Command::new(&siftool);
    new.arg("new").arg(sif);
    process::run(context, "siftool new", &mut new, Fault::Machine)?;
    let arch = match std::env::consts::ARCH {
        "aarch64" => "4",
        "powerpc64" => "6",
        _ => "2",
    };
    let mut add = Command::new(&siftool);
    add.arg("add")
        .args([
            "--datatype",
            "4",
            "--parttype",
            "2",
            "--partfs",
            "1",
            "--partarch",
            arch,
        ])
        .arg(sif)
        .arg(&squashfs);
    process::run(context, "siftool add", &mut add, Fault::Machine)?;
    fs_err::remove_file(&squashfs)?;
    Ok(())
}

/// Push to the site's registry (skopeo, else podman push), then `shifterimg pull` where it exists.
fn push(context: &Context<'_>, reference: &str) -> anyhow::Result<String> {
    let settings = context.request.settings;
    let registry = settings.registry.clone().ok_or(BuildError::NoRegistry)?;
    // The registry setting names the namespace (`host:port/project`): add the image name.
    let path = reference.rsplit('/').next().unwrap_or(reference);
    let remote = format!("{}/{path}", registry.trim_end_matches('/'));
    context
        .reporter
        .phase(Phase::Pushing, format!("Pushing {remote}"));
    let tls = format!("--dest-tls-verify={}", settings.registry_tls_verify);
    let mut command = match on_path("skopeo") {
        Some(skopeo) => {
            let mut c = Command::new(skopeo);
            c.args([
                "copy",
                &tls,
                &format!("containers-storage:{reference}"),
                &format!("docker://{remote}"),
            ]);
            c
        }
        None => {
            let mut c = podman(settings, &tool("podman")?);
            c.args([
                "push",
                &format!("--tls-verify={}", settings.registry_tls_verify),
                reference,
                &format!("docker://{remote}"),
            ]);
            c
        }
    };
    process::run(
        context,
        "push to the registry",
        &mut command,
        Fault::Machine,
    )
    .map_err(|e| {
        anyhow::anyhow!(BuildError::Push {
            registry: registry.clone(),
            log: e.to_string()
        })
    })?;
    match on_path("shifterimg") {
        Some(shifterimg) => {
            context.reporter.phase(Phase::Pushing, format!("shifterimg pull docker:{remote}"));
            let mut pull = Command::new(shifterimg);
            pull.arg("pull").arg(format!("docker:{remote}"));
            process::run(context, "shifterimg pull", &mut pull, Fault::Machine)?;
        }
        None => context.reporter.phase(
            Phase::Pushing,
            format!("shifterimg is not installed here: run `shifterimg pull docker:{remote}` on a login node"),
        ),
    }
    Ok(remote)
}

/// The helper's exported variables and exec line for a kernel in `artifact`.
pub fn kernel_exec(artifact: &Artifact, settings: &Settings) -> (String, String) {
    let python = &artifact.python;
    let launch = match artifact.language.as_deref() {
        // IRkernel, as its own kernelspec starts it.
        Some("R") => "R --slave -e 'IRkernel::main()' --args".to_string(),
        _ => format!("{python} -m ipykernel_launcher -f"),
    };
    let mut exports = String::new();
    if let (Some(conf), Target::Podman | Target::PodmanHpc) =
        (&settings.containers_conf, artifact.engine)
    {
        exports = format!(
            "CONTAINERS_CONF={}\nexport CONTAINERS_CONF\n",
            quote(&conf.display().to_string())
        );
    }
    if let (Some(dir), Target::PodmanHpc) = (&settings.squash_dir, artifact.engine) {
        // `podman-hpc run` finds the migrated image through its squash dir.
        exports.push_str(&format!(
            "SQUASH_DIR={}\nexport SQUASH_DIR\n",
            quote(&dir.display().to_string())
        ));
    }
    let run_args: Vec<String> = settings.podman_run_args.iter().map(|a| quote(a)).collect();
    let image = quote(&artifact.image);
    // The connection file is the user's (0600 in a 0700 directory), so the kernel runs as
    // the container's root, which rootless Podman maps to the user (and which is root for a
    // rootful engine run by root), not as the image's NB_USER. `--userns=keep-id` would do
    // the same for rootless Podman but has known trouble with podman-hpc's squashed images.
    let exec = match artifact.engine {
        Target::Podman | Target::PodmanHpc => format!(
            "exec {} run --rm -i --network host --user 0:0 {}-v \"$runtime_dir:$runtime_dir\" {image} {launch} \"$connection_file\"",
            if artifact.engine == Target::Podman { "podman" } else { "podman-hpc" },
            run_args.iter().map(|a| format!("{a} ")).collect::<String>()
        ),
        Target::Charliecloud => format!(
            "exec ch-run --set-env --env-no-expand -b \"$runtime_dir:/mnt/hpcbinder\" {image} -- {}{launch} \"/mnt/hpcbinder/$(basename \"$connection_file\")\"",
            artifact.entrypoint.as_ref().map(|e| format!("{e} ")).unwrap_or_default()
        ),
        Target::Apptainer => format!("exec apptainer exec --bind \"$runtime_dir\" {image} {launch} \"$connection_file\""),
        Target::Shifter => format!("exec shifter --image=docker:{} {launch} \"$connection_file\"", artifact.image),
        _ => String::new(),
    };
    (exports, exec)
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}
