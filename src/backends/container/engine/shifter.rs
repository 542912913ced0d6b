//! Shifter: the image pushed to the site's registry (skopeo, else podman push), then
//! `shifterimg pull` where it exists; kernels run with `shifter --image=`.

use std::path::Path;
use std::process::Command;

use super::super::super::process::{self, BuildError, Fault};
use super::super::super::Context;
use super::{on_path, podman, tool, Artifact, Engine};
use crate::events::{Phase, ReporterExt};
use crate::settings::Settings;
use crate::shell::quote;
use crate::target::Target;

/// Shifter.
pub struct Shifter;

impl Engine for Shifter {
    fn target(&self) -> Target {
        Target::Shifter
    }

    fn runner(&self) -> &'static str {
        "shifter"
    }

    fn convert(
        &self,
        context: &Context<'_>,
        _: &Path,
        reference: &str,
        artifact: &mut Artifact,
    ) -> anyhow::Result<()> {
        artifact.image = push(context, reference)?;
        Ok(())
    }

    fn kernel(&self, artifact: &Artifact, _: &Settings, launch: &str) -> (String, String) {
        (
            String::new(),
            format!(
                "exec shifter {} {launch} \"$connection_file\"",
                quote(&format!("--image=docker:{}", artifact.image))
            ),
        )
    }
}

/// Push to the site's registry (skopeo, else podman push), then `shifterimg pull` where it exists.
fn push(context: &Context<'_>, reference: &str) -> anyhow::Result<String> {
    let settings = context.request.settings;
    let registry = settings
        .container
        .registry
        .clone()
        .ok_or(BuildError::NoRegistry)?;
    // The registry setting names the namespace (`host:port/project`): add the image name.
    let path = reference.rsplit('/').next().unwrap_or(reference);
    let remote = format!("{}/{path}", registry.trim_end_matches('/'));
    context
        .reporter
        .phase(Phase::Pushing, format!("Pushing {remote}"));
    let tls = format!(
        "--dest-tls-verify={}",
        settings.container.registry_tls_verify
    );
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
                &format!("--tls-verify={}", settings.container.registry_tls_verify),
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
