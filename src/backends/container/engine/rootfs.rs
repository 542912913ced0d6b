//! Root-filesystem images (Charliecloud, a SIF without apptainer): the image exported
//! from Podman into a directory, its `ENV` written where the engines read it, squashfs.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::super::super::process::{self, BuildError, Fault};
use super::super::super::Context;
use super::{podman, tool};
use crate::events::{Phase, ReporterExt};
use crate::shell::quote;

/// `podman create` + `podman export` into `<prefix>/image` (a Charliecloud directory image).
pub(super) fn export_rootfs(
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

pub(super) fn squash(context: &Context<'_>, dir: &Path, output: &Path) -> anyhow::Result<()> {
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
