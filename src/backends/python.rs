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
        // Installs write their bytecode at build time: a finished environment is read-only,
        // so a kernel could not (and must not) write `__pycache__` into it later.
        .env("UV_COMPILE_BYTECODE", "1")
        .env_remove("VIRTUAL_ENV")
        .env_remove("CONDA_PREFIX");
    // Sites behind TLS-intercepting proxies: trust the site's bundle, not only uv's own roots.
    if let Some(bundle) = settings.ca_bundle() {
        command
            .env("SSL_CERT_FILE", bundle)
            .env("UV_NATIVE_TLS", "1");
    }
    index_args(&mut command, settings, true);
    command
}

/// The site's index, find-links and no-index, for uv (`uv: true`) or pip. URLs go in
/// environment variables: an index URL may carry a token, and a process's arguments are
/// visible to every user of a login node (`ps`), its environment only to its owner. uv
/// has no variable for `--no-index`, which is no secret.
pub fn index_args(command: &mut Command, settings: &Settings, uv: bool) {
    let (index, links) = if uv {
        ("UV_INDEX_URL", "UV_FIND_LINKS")
    } else {
        ("PIP_INDEX_URL", "PIP_FIND_LINKS")
    };
    if let Some(url) = &settings.pip.index_url {
        command.env(index, url);
    }
    if !settings.pip.find_links.is_empty() {
        // uv splits on commas, pip on whitespace.
        let separator = if uv { "," } else { " " };
        command.env(links, settings.pip.find_links.join(separator));
    }
    if settings.pip.no_index {
        command.arg("--no-index");
    }
}

/// Run a package step of a build (uv, or pip): inside the build's sandbox when the build
/// installs the repository itself (the installer then runs its build backend), with a
/// private uv cache there so that the repository's code cannot change the user's own.
pub fn run_package_step(
    context: &Context<'_>,
    step: &str,
    command: &mut Command,
    fault: Fault,
) -> anyhow::Result<()> {
    match jail_for_packages(context) {
        Some(jail) => {
            command.env("UV_CACHE_DIR", jail.scratch().join("uv-cache"));
            let result = process::run(context, step, &mut jail.wrap(command), fault);
            jail.report_refused(step, context.reporter);
            result
        }
        None => process::run(context, step, command, fault),
    }
}

/// The build's sandbox, when its package steps run repository code.
pub fn jail_for_packages<'a>(context: &'a Context<'_>) -> Option<&'a super::sandbox::Jail> {
    context
        .jail
        .as_ref()
        .filter(|_| context.request.spec.installs_repo)
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
    run_package_step(context, "uv pip compile", &mut command, Fault::Spec)
}

/// The requirements of a hashed lock (as `uv pip compile --generate-hashes` writes it),
/// each with the sha256 hashes it allows, whether given on its line or on the indented
/// lines after it. Option lines (`--index-url ...`) are not requirements.
pub fn lock_blocks(text: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim().trim_end_matches('\\').trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !line.starts_with(char::is_whitespace) && !trimmed.starts_with("--") {
            let requirement = trimmed.split(" --hash=").next().unwrap_or(trimmed);
            blocks.push((requirement.trim().to_string(), Vec::new()));
        }
        let hashes = trimmed
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("--hash=sha256:"));
        if let Some(block) = blocks.last_mut() {
            block.1.extend(hashes.map(str::to_string));
        }
    }
    blocks
}
