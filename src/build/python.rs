//! Finding a Python interpreter of a given version, and uv with the site's index settings.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{self, BuildError, Fault};
use super::Context;
use crate::settings::Settings;

/// A real interpreter (shims such as pyenv's resolved to the executable behind them).
#[derive(Debug, Clone)]
pub struct Interpreter {
    /// `sys.executable`.
    pub path: PathBuf,
    /// `X.Y`.
    pub version: String,
}

/// Ask a candidate command what it really is.
fn probe(command: &str) -> Option<Interpreter> {
    let output = Command::new(command)
        .args([
            "-c",
            "import sys; print(sys.executable); print('%d.%d' % sys.version_info[:2])",
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let mut lines = text.lines();
    let path = PathBuf::from(lines.next()?.trim());
    let version = lines.next()?.trim().to_string();
    path.is_absolute().then_some(Interpreter { path, version })
}

/// The first interpreter on PATH with version `version` (`pythonX.Y`, then `python3`,
/// `python`). What a PATH entry turned out to be is cached in `cache_dir` (keyed by its
/// path and modification time): resolving a shim such as pyenv's runs a chain of shell
/// scripts that costs more than the rest of a warm build.
pub fn find(version: &str, cache_dir: &Path) -> Result<Interpreter, BuildError> {
    let cache_file = cache_dir.join("interpreters.json");
    let mut cache: std::collections::BTreeMap<String, (String, String)> =
        fs_err::read_to_string(&cache_file)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in [
        format!("python{version}"),
        "python3".into(),
        "python".into(),
    ] {
        let Some(candidate) = std::env::split_paths(&path)
            .map(|d| d.join(&name))
            .find(|p| p.is_file())
        else {
            continue;
        };
        let modified = fs_err::metadata(&candidate)
            .and_then(|m| m.modified())
            .map(|t| format!("{t:?}"))
            .unwrap_or_default();
        let key = format!("{}@{modified}", candidate.display());
        let found = match cache.get(&key) {
            Some((executable, found_version)) if Path::new(executable).is_file() => {
                Some(Interpreter {
                    path: PathBuf::from(executable),
                    version: found_version.clone(),
                })
            }
            _ => {
                let probed = probe(&candidate.display().to_string());
                if let Some(interpreter) = &probed {
                    cache.insert(
                        key,
                        (
                            interpreter.path.display().to_string(),
                            interpreter.version.clone(),
                        ),
                    );
                    if fs_err::create_dir_all(cache_dir).is_ok() {
                        let _ = crate::store::write_atomic(
                            &cache_file,
                            serde_json::to_string(&cache).unwrap_or_default().as_bytes(),
                        );
                    }
                }
                probed
            }
        };
        if let Some(interpreter) = found.filter(|i| i.version == version) {
            return Ok(interpreter);
        }
    }
    Err(BuildError::NoPython {
        version: version.to_string(),
    })
}

/// uv from the config, else on PATH.
pub fn uv(settings: &Settings) -> Option<PathBuf> {
    if let Some(path) = &settings.uv {
        return Some(path.clone());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("uv"))
        .find(|p| p.is_file())
}

/// A uv command with the store's cache and the site's index settings. Repository and user
/// uv configuration is ignored (`--no-config`): the site decides where packages come from.
pub fn uv_command(uv: &Path, settings: &Settings, subcommand: &[&str]) -> Command {
    let mut command = Command::new(uv);
    command
        .args(subcommand)
        .arg("--no-config")
        .arg("--quiet")
        .env("UV_CACHE_DIR", settings.store.join("pkgs").join("uv"))
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
    if let Some(url) = &settings.pip_index_url {
        command.args(["--index-url", url]);
    }
    for link in &settings.pip_find_links {
        command.args(["--find-links", link]);
    }
    if settings.pip_no_index {
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
