//! The pip part of a conda environment: resolved with uv to a hashed lock for the
//! environment's Python, held to any hashes a lock file recorded, installed with uv.

use std::path::Path;

use crate::backends::process::{BuildError, Fault};
use crate::backends::{python, spec_has_ipykernel, Context};
use crate::events::{Phase, ReporterExt};

use super::locks::PipPin;
use super::Linked;

/// The `pip:` section (and ipykernel from pip when so configured), resolved with uv to a
/// hashed lock (`hpcbinder/pip.lock`) for the environment's Python; `None` when empty.
pub(super) fn pip_lock(
    context: &Context<'_>,
    linked: &Linked,
    python: &Path,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    let pip_lines = &linked.pip_lines;
    let request = context.request;
    // An exported pip lock is installed as it is: no resolution.
    if let Some(exported) = &request.from_pip_lock {
        let lock = context.meta.join("pip.lock");
        fs_err::copy(exported, &lock)?;
        return Ok(Some(lock));
    }
    let spec = request.spec;
    let base = pip_base(context);
    // An image builds its local packages inside the build, never here.
    let container = request.target.is_container();
    let mut lines: Vec<String> = pip_lines
        .iter()
        .filter(|l| !(container && crate::detect::Requirements::is_local(l)))
        .cloned()
        .collect();
    let constraints = &spec.parsed.requirements.constraints;
    if !constraints.is_empty() && request.from_lock.is_none() {
        let path = context.meta.join("pip-constraints.txt");
        fs_err::write(&path, constraints.join("\n") + "\n")?;
        lines.push(format!("-c {}", path.display()));
    }
    if request.from_lock.is_none()
        && request.settings.conda.kernel_package == "pip"
        && !spec_has_ipykernel(spec, context.repo())
    {
        context.reporter.phase(
            Phase::Building,
            "Adding ipykernel (from pip): the environment does not list it",
        );
        lines.push("ipykernel".into());
    }
    if request.from_lock.is_none() {
        lines.extend(context.server_packages().iter().cloned());
    }
    if lines.is_empty() {
        return Ok(None);
    }
    let uv = pip_uv(context)?;
    let input = context.meta.join("pip-requirements.in");
    fs_err::write(&input, lines.join("\n") + "\n")?;
    let lock = context.meta.join("pip.lock");
    context
        .reporter
        .phase(Phase::Building, "Resolving the pip section with uv");
    python::compile_lock(
        context,
        &uv,
        &python.display().to_string(),
        &input,
        &lock,
        &base,
    )?;
    check_pins(&lock, &linked.pip_pins)?;
    Ok(Some(lock))
}

/// Every pinned pip package must be in the resolved lock with its recorded sha256 (uv
/// hashes what it fetched, so a different file at the URL is caught here).
fn check_pins(lock: &Path, pins: &[PipPin]) -> anyhow::Result<()> {
    if pins.is_empty() {
        return Ok(());
    }
    let text = fs_err::read_to_string(lock)?;
    let blocks = python::lock_blocks(&text);
    for pin in pins {
        let Some(expected) = &pin.sha256 else {
            continue;
        };
        let found = blocks.iter().find(|(requirement, _)| {
            requirement.ends_with(&pin.url)
                || requirement.contains(&format!("{} @ {}", pin.name, pin.url))
        });
        match found {
            Some((_, hashes)) if hashes.iter().any(|h| h.eq_ignore_ascii_case(expected)) => {}
            Some((_, hashes)) => {
                return Err(BuildError::Package {
                    message: format!(
                        "the pip package {} at {} has sha256 {}, but the lock file says {expected}",
                        pin.name,
                        pin.url,
                        hashes.join(", ")
                    ),
                }
                .into())
            }
            None => {
                return Err(BuildError::Package {
                    message: format!(
                        "the pip package {} ({}) from the lock file is missing from the resolved pip lock",
                        pin.name, pin.url
                    ),
                }
                .into())
            }
        }
    }
    Ok(())
}

/// Install the pip section's lock into the environment's Python.
pub(super) fn install_pip(context: &Context<'_>, python: &Path, lock: &Path) -> anyhow::Result<()> {
    let settings = context.request.settings;
    let uv = pip_uv(context)?;
    let (python, lock) = (python.display().to_string(), lock.display().to_string());
    context
        .reporter
        .phase(Phase::Building, "Installing the pip section with uv");
    // `install`, not `sync`: sync would remove the conda packages pip does not know about.
    let mut install = python::uv_command(
        &uv,
        settings,
        &["pip", "install", "--python", &python, "-r", &lock],
    );
    install.current_dir(pip_base(context));
    python::run_package_step(
        context,
        "uv pip install (pip section)",
        &mut install,
        Fault::Spec,
    )
}

fn pip_uv(context: &Context<'_>) -> Result<std::path::PathBuf, BuildError> {
    context
        .uv()
        .map(Path::to_path_buf)
        .ok_or_else(|| BuildError::Tool {
            tool: "uv (for the pip: section)".into(),
        })
}

/// The directory the pip section's relative paths are relative to (environment.yml's).
fn pip_base(context: &Context<'_>) -> std::path::PathBuf {
    context
        .request
        .spec
        .files
        .iter()
        .find(|f| f.ends_with("environment.yml") || f.ends_with("environment.yaml"))
        .and_then(|f| context.repo().join(f).parent().map(Path::to_path_buf))
        .unwrap_or_else(|| context.repo().to_path_buf())
}
