//! A kernelspec for a ready environment or image: written (atomically, see
//! [`KernelSpec::install`]) into a kernels directory, then proved by starting it and
//! running a cell. Used by builds, and by pins, which point a shared kernel at an
//! environment that already exists.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{container, sandbox, BuildError};
use crate::events::{Event, Phase, Reporter};
use crate::kernel::{self, KernelSpec};
use crate::settings::Settings;
use crate::store::Ready;
use crate::target::Target;

/// What a kernelspec is called and where it goes.
pub struct Registration<'a> {
    /// The kernel's name (its directory).
    pub name: &'a str,
    /// Shown in Jupyter.
    pub display_name: &'a str,
    /// The kernels directory (`<data dir>/kernels`).
    pub kernels_dir: &'a Path,
    /// Where the environment came from, recorded in the kernelspec's metadata.
    pub origin: &'a str,
    /// The kernel follows whatever environment its helper points at (a pin's shared
    /// kernel): the command names `python` on the helper's PATH, not one prefix's.
    pub follow: bool,
}

/// A registered kernel.
#[derive(Debug, Clone)]
pub struct Registered {
    /// Its directory.
    pub dir: PathBuf,
    /// What the verification cell printed, when it ran.
    pub verified: Option<String>,
    /// Why the verification was skipped, when it was (the engine cannot run here).
    pub skipped: Option<String>,
}

/// Write the kernelspec for `ready` and, when `verify`, start it and run a cell; a
/// kernelspec whose kernel does not answer is removed again.
pub fn register(
    settings: &Settings,
    ready: &Ready,
    registration: &Registration<'_>,
    verify: bool,
    reporter: &dyn Reporter,
) -> anyhow::Result<Registered> {
    let (spec, check) = kernel_spec(settings, ready, registration)?;
    let kernels_dir = registration.kernels_dir;
    let dir = spec.install(kernels_dir).map_err(|e| BuildError::Kernel {
        dir: kernels_dir.to_path_buf(),
        source: e,
    })?;
    reporter.report(Event::new(
        Phase::Launching,
        format!("Registered kernel {} in {}", spec.name, dir.display()),
    ));
    let mut registered = Registered {
        dir: dir.clone(),
        verified: None,
        skipped: None,
    };
    if !verify {
        return Ok(registered);
    }
    let target = Target::from_name(&ready.target).unwrap_or(Target::Venv);
    if let Err(reason) = container::runnable(target) {
        // Never reported as passed: the engine cannot run here.
        reporter.report(Event::new(
            Phase::Launching,
            format!("Kernel verification skipped: {reason}"),
        ));
        registered.skipped = Some(format!("skipped: {reason}"));
        return Ok(registered);
    }
    reporter.report(Event::new(
        Phase::Launching,
        format!("Starting kernel {} to run a test cell", spec.name),
    ));
    let (code, expected) = check;
    // A native environment's kernel runs the repository's `start` (and its packages'
    // startup code): in the sandbox, as the build's repository code did.
    let jail = match &ready.artifact {
        None => sandbox::kernel_jail(settings, &settings.store, &ready.prefix, &dir, reporter)?,
        Some(_) => None,
    };
    let wrap = |command: &std::process::Command, connection: &Path| {
        jail.as_ref().map_or_else(
            || clone_command(command),
            |j| j.wrap_reading(command, &[connection]),
        )
    };
    match kernel::verify::verify_in(
        &dir,
        &code,
        &expected,
        Duration::from_secs(180),
        Some(&wrap),
    ) {
        Ok(verified) => {
            reporter.report(Event::new(
                Phase::Launching,
                format!(
                    "Kernel answered in {:.1} s: {}",
                    verified.elapsed.as_secs_f64(),
                    verified.output
                ),
            ));
            registered.verified = Some(verified.output);
            Ok(registered)
        }
        Err(error) => {
            // The environment stays built; a kernelspec that does not start is removed,
            // renamed out of Jupyter's sight first (never listed half-deleted).
            let gone = kernels_dir.join(format!(
                ".{}+failed-{}",
                spec.name,
                uuid::Uuid::new_v4().simple()
            ));
            if fs_err::rename(&dir, &gone).is_ok() {
                let _ = fs_err::remove_dir_all(&gone);
            }
            Err(BuildError::Verify {
                kernel: spec.name,
                source: error,
            }
            .into())
        }
    }
}

/// The kernelspec for a ready environment or image, and the cell that proves it works
/// (code, expected output).
fn kernel_spec(
    settings: &Settings,
    ready: &Ready,
    registration: &Registration<'_>,
) -> anyhow::Result<(KernelSpec, (String, String))> {
    let modules = &settings.modules;
    let metadata = serde_json::json!({
        "key": ready.key,
        "prefix": ready.prefix,
        "origin": registration.origin,
        "source": ready.source,
        "image": ready.artifact.as_ref().map(|a| &a.image),
    });
    let prefix_check = |expected: String| {
        (
            "import os, sys; print(os.path.realpath(sys.prefix))".to_string(),
            expected,
        )
    };
    let (helper, command, check) = match &ready.artifact {
        Some(artifact) => {
            let (exports, exec) = container::kernel_exec(artifact, settings);
            let helper = kernel::container_helper(
                artifact.engine.name(),
                &artifact.image,
                modules,
                &exports,
                &exec,
            );
            let check = if artifact.language.as_deref() == Some("R") {
                (
                    "cat('hpcbinder', 'ok', sep = '-')".to_string(),
                    "hpcbinder-ok".to_string(),
                )
            } else if ready.buildpack == "docker" {
                (
                    "print('hpcbinder-ok')".to_string(),
                    "hpcbinder-ok".to_string(),
                )
            } else {
                prefix_check("/opt/env".to_string())
            };
            (helper, vec!["{connection_file}".to_string()], check)
        }
        None => {
            let python = if registration.follow {
                "python".to_string()
            } else {
                ready.prefix.join("bin/python").display().to_string()
            };
            let variable = if ready.target == Target::Conda.name() {
                "CONDA_PREFIX"
            } else {
                "VIRTUAL_ENV"
            };
            let owner = {
                use std::os::unix::fs::MetadataExt;
                fs_err::metadata(&ready.prefix)?.uid()
            };
            let helper = kernel::native_helper(&ready.prefix, owner, variable, modules);
            let command = ["-m", "ipykernel_launcher", "-f", "{connection_file}"].map(String::from);
            let mut argv = vec![python];
            argv.extend(command);
            let expected = fs_err::canonicalize(&ready.prefix)?.display().to_string();
            (helper, argv, prefix_check(expected))
        }
    };
    let language = ready
        .artifact
        .as_ref()
        .and_then(|a| a.language.clone())
        .unwrap_or_else(|| "python".to_string());
    let spec = KernelSpec {
        language,
        name: registration.name.to_string(),
        display_name: registration.display_name.to_string(),
        helper,
        command,
        metadata,
    };
    Ok((spec, check))
}

/// A copy of `command` (program, arguments, variables, directory).
fn clone_command(command: &std::process::Command) -> std::process::Command {
    let mut copy = std::process::Command::new(command.get_program());
    copy.args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => copy.env(name, value),
            None => copy.env_remove(name),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        copy.current_dir(dir);
    }
    copy
}
