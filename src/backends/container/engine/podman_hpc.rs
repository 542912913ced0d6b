//! podman-hpc: built with `podman-hpc build`, then `migrate`d into the site's squash
//! directory (group-readable), from which `podman-hpc run` starts kernels on any node.

use std::path::{Path, PathBuf};

use super::super::super::process::{self, BuildError, Fault};
use super::super::super::Context;
use super::{podman, Artifact, Engine};
use crate::events::{Phase, ReporterExt};
use crate::settings::Settings;
use crate::shell::quote;
use crate::target::Target;

/// podman-hpc.
pub struct PodmanHpc;

impl Engine for PodmanHpc {
    fn target(&self) -> Target {
        Target::PodmanHpc
    }

    fn builder(&self) -> &'static str {
        "podman-hpc"
    }

    fn runner(&self) -> &'static str {
        "podman-hpc"
    }

    fn convert(
        &self,
        context: &Context<'_>,
        builder: &Path,
        reference: &str,
        artifact: &mut Artifact,
    ) -> anyhow::Result<()> {
        let settings = context.request.settings;
        context.reporter.phase(
            Phase::Pushing,
            "Migrating the image to squashfs (podman-hpc migrate)",
        );
        let mut migrate = podman(settings, builder);
        migrate.arg("migrate").arg(reference);
        if let Some(squash_dir) = &settings.container.squash_dir {
            migrate.env("SQUASH_DIR", squash_dir);
        }
        process::run(context, "podman-hpc migrate", &mut migrate, Fault::Machine)?;
        let squash_dir = squash_dir(settings);
        // Other members of the group run the kernel from the same squash dir.
        share_with_group(&squash_dir);
        // podman-hpc exits 0 even when mksquashfs fails: the squash file is the proof.
        artifact.squashfs =
            Some(
                migrated_squashfs(&squash_dir, reference).ok_or_else(|| BuildError::Migrate {
                    image: reference.to_string(),
                    dir: squash_dir.clone(),
                    log: process::tail(&context.log(), 8),
                })?,
            );
        Ok(())
    }

    fn kernel(&self, artifact: &Artifact, settings: &Settings, launch: &str) -> (String, String) {
        let mut exports = super::podman::containers_conf(settings);
        if let Some(dir) = &settings.container.squash_dir {
            // `podman-hpc run` finds the migrated image through its squash dir.
            exports.push_str(&format!(
                "SQUASH_DIR={}\nexport SQUASH_DIR\n",
                quote(&dir.display().to_string())
            ));
        }
        (
            exports,
            super::podman::run_line("podman-hpc", artifact, settings, launch),
        )
    }
}

/// podman-hpc's squash dir: the `squash-dir` setting, else podman-hpc's own default
/// (`$SQUASH_DIR`, else `$SCRATCH/storage`, else `/tmp/storage`).
fn squash_dir(settings: &Settings) -> PathBuf {
    settings
        .container
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

/// Make what this user owns in a shared directory group-readable and writable only by
/// its owner; entries of other users are left as they are.
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
        let mut new = (mode & !0o022) | 0o040;
        if mode & 0o100 != 0 {
            new |= 0o010;
        }
        if metadata.is_file() {
            new &= !0o6000;
        }
        if new != mode {
            // Not ours (EPERM) is fine: its owner decides.
            let _ = fs_err::set_permissions(entry.path(), std::fs::Permissions::from_mode(new));
        }
    }
}
