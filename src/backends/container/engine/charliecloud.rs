//! Charliecloud: the image as a directory in the store and as a squashfs beside it;
//! kernels run with `ch-run`.

use std::path::Path;

use super::super::super::Context;
use super::{rootfs, Artifact, Engine};
use crate::settings::Settings;
use crate::shell::quote;
use crate::target::Target;

/// Charliecloud.
pub struct Charliecloud;

impl Engine for Charliecloud {
    fn target(&self) -> Target {
        Target::Charliecloud
    }

    fn runner(&self) -> &'static str {
        "ch-run"
    }

    fn convert(
        &self,
        context: &Context<'_>,
        builder: &Path,
        reference: &str,
        artifact: &mut Artifact,
    ) -> anyhow::Result<()> {
        let image = rootfs::export_rootfs(context, builder, reference)?;
        let squashfs = context.prefix.join("image.sqfs");
        rootfs::squash(context, &image, &squashfs)?;
        artifact.image = image.display().to_string();
        artifact.squashfs = Some(squashfs);
        Ok(())
    }

    fn kernel(&self, artifact: &Artifact, _: &Settings, launch: &str) -> (String, String) {
        let entrypoint = artifact
            .entrypoint
            .as_ref()
            .map(|e| format!("{} ", quote(e)))
            .unwrap_or_default();
        (
            String::new(),
            format!(
                "exec ch-run --set-env --env-no-expand -b \"$runtime_dir:/mnt/hpcbinder\" {} -- {entrypoint}{launch} \"/mnt/hpcbinder/$(basename \"$connection_file\")\"",
                quote(&artifact.image)
            ),
        )
    }
}
