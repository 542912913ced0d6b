//! The build's Python interpreter, and uv with the site's index settings.

use std::path::Path;
use std::process::Command;

use super::process::{self, BuildError, Fault};
use super::Context;
use crate::settings::Settings;

/// The interpreter a build uses: the one chosen ([`crate::python::choose`]), else the
/// first on PATH of the chosen version.
pub fn interpreter(
    spec: &crate::detect::EnvSpec,
    settings: &Settings,
) -> Result<crate::python::Interpreter, BuildError> {
    crate::python::interpreter_for(spec, settings)
        .map_err(|e| BuildError::NoPython { version: e.wanted })
}

/// A uv command with the store's cache and the site's index settings. Repository and user
/// uv configuration is ignored (`--no-config`): the site decides where packages come from.
pub fn uv_command(uv: &Path, settings: &Settings, subcommand: &[&str]) -> Command {
    let mut command = Command::new(uv);
    command
        .args(subcommand)
        .arg("--no-config")
        .arg("--quiet")
        .env(
            "UV_CACHE_DIR",
            crate::store::package_cache_at(&settings.store, "uv"),
        )
        .env("UV_PYTHON_DOWNLOADS", "never")
        .env_remove("VIRTUAL_ENV")
        .env_remove("CONDA_PREFIX");
    // Sites behind TLS-intercepting proxies: trust the site's bundle, not only uv's own roots.
    if let Some(bundle) = settings.ca_bundle() {
        command
            .env("SSL_CERT_FILE", bundle)
            .env("UV_NATIVE_TLS", "1");
    }
    index_args(&mut command, settings);
    command
}

/// `--index-url`, `--find-links`, `--no-index` (shared by uv and pip).
pub fn index_args(command: &mut Command, settings: &Settings) {
    if let Some(url) = &settings.pip.index_url {
        command.args(["--index-url", url]);
    }
    for link in &settings.pip.find_links {
        command.args(["--find-links", link]);
    }
    if settings.pip.no_index {
        command.arg("--no-index");
    }
}

/// Resolve the requirements in `input` for `python` into a lock with hashes at `lock`
/// (`uv pip compile --generate-hashes`), from `cwd` so relative paths resolve as written.
pub fn compile_lock(
    context: &Context<'_>,
    uv: &Path,
    python: &str,
    input: &Path,
    lock: &Path,
    cwd: &Path,
) -> anyhow::Result<()> {
    let (input, lock) = (input.display().to_string(), lock.display().to_string());
    let args = [
        "pip",
        "compile",
        "--generate-hashes",
        "--python",
        python,
        "-o",
        &lock,
        &input,
    ];
    let mut command = uv_command(uv, context.request.settings, &args);
    command.current_dir(cwd);
    process::run(context, "uv pip compile", &mut command, Fault::Spec)
}
