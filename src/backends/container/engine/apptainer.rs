//! Apptainer: a SIF in the store (`apptainer build`, or without apptainer the root
//! filesystem as a squashfs partition written with siftool); kernels run with
//! `apptainer exec`.

use std::path::Path;
use std::process::Command;

use super::super::super::process::{self, Fault};
use super::super::super::Context;
use super::{on_path, podman, rootfs, tool, Artifact, Engine};
use crate::events::{Phase, ReporterExt};
use crate::settings::Settings;
use crate::shell::quote;
use crate::target::Target;

/// Apptainer.
pub struct Apptainer;

impl Engine for Apptainer {
    fn target(&self) -> Target {
        Target::Apptainer
    }

    fn runner(&self) -> &'static str {
        "apptainer"
    }

    fn convert(
        &self,
        context: &Context<'_>,
        builder: &Path,
        reference: &str,
        artifact: &mut Artifact,
    ) -> anyhow::Result<()> {
        let sif = context.prefix.join("image.sif");
        sif_image(context, builder, reference, &sif)?;
        artifact.image = sif.display().to_string();
        Ok(())
    }

    fn kernel(&self, artifact: &Artifact, _: &Settings, launch: &str) -> (String, String) {
        (
            String::new(),
            format!(
                "exec apptainer exec --bind \"$runtime_dir\" {} {launch} \"$connection_file\"",
                quote(&artifact.image)
            ),
        )
    }
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
    let rootfs = rootfs::export_rootfs(context, podman_bin, reference)?;
    let squashfs = context.prefix.join("rootfs.sqfs");
    rootfs::squash(context, &rootfs, &squashfs)?;
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
