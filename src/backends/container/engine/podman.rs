//! Podman: the image stays in the user's Podman storage; kernels run with `podman run`.

use std::path::Path;

use super::super::super::Context;
use super::{Artifact, Engine};
use crate::settings::Settings;
use crate::shell::quote;
use crate::target::Target;

/// Podman.
pub struct Podman;

impl Engine for Podman {
    fn target(&self) -> Target {
        Target::Podman
    }

    fn runner(&self) -> &'static str {
        "podman"
    }

    fn convert(&self, _: &Context<'_>, _: &Path, _: &str, _: &mut Artifact) -> anyhow::Result<()> {
        Ok(())
    }

    fn kernel(&self, artifact: &Artifact, settings: &Settings, launch: &str) -> (String, String) {
        (
            containers_conf(settings),
            run_line("podman", artifact, settings, launch),
        )
    }
}

/// `CONTAINERS_CONF` for the kernel, when the site configures one.
pub(super) fn containers_conf(settings: &Settings) -> String {
    settings
        .container
        .containers_conf
        .as_ref()
        .map(|conf| {
            format!(
                "CONTAINERS_CONF={}\nexport CONTAINERS_CONF\n",
                quote(&conf.display().to_string())
            )
        })
        .unwrap_or_default()
}

/// `exec podman run ...` (or podman-hpc). The connection file is the user's (0600 in a
/// 0700 directory), so the kernel runs as the container's root, which rootless Podman
/// maps to the user (and which is root for a rootful engine run by root), not as the
/// image's NB_USER. `--userns=keep-id` would do the same for rootless Podman but has known
/// trouble with podman-hpc's squashed images.
pub(super) fn run_line(
    program: &str,
    artifact: &Artifact,
    settings: &Settings,
    launch: &str,
) -> String {
    let run_args: String = settings
        .container
        .podman_run_args
        .iter()
        .map(|a| format!("{} ", quote(a)))
        .collect();
    // The container ends with the process Jupyter started, however that dies: a watchdog
    // outside Jupyter's process group removes it once this process (then `podman run`) is
    // gone, even after a SIGKILL; `--init` forwards SIGTERM to the kernel, which as PID 1
    // would ignore it.
    format!(
        "name=\"hpcbinder-kernel-$$-$(date +%s%N)\"\n\
         setsid sh -c 'while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; exec \"$2\" rm -f -t 0 \"$3\"' watchdog \"$$\" {program} \"$name\" </dev/null >/dev/null 2>&1 &\n\
         exec {program} run --rm -i --init --name \"$name\" --network host --user 0:0 {run_args}-v \"$runtime_dir:$runtime_dir\" {} {launch} \"$connection_file\"",
        quote(&artifact.image)
    )
}
