//! The `venv` target: a Python virtual environment made with uv (or `python -m venv` and
//! pip, with a warning, when uv is missing), locked with hashes.
//!
//! Loose requirements are resolved once into `<prefix>/hpcbinder/requirements.lock`
//! (`uv pip compile --generate-hashes`) and the environment is synced from that lock, so
//! the lock is exactly what is installed. Hashed requirements and lock files the
//! repository brings (Pipfile.lock, uv.lock, pylock.toml) are installed as they are.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{self, Fault};
use super::{python, spec_has_ipykernel, Context};
use crate::detect::Buildpack;
use crate::events::{Phase, ReporterExt};
use crate::key;

/// Build the venv; returns the lock files written (relative to the prefix).
pub fn build(context: &Context<'_>) -> anyhow::Result<Vec<String>> {
    let request = context.request;
    let (version, _) = key::python_version(request.spec, request.settings);
    // The plan decided (and keyed) where Python comes from: see key::venv_python_from_conda.
    let interpreter = match python::interpreter(request.spec, request.settings) {
        Ok(interpreter) => interpreter,
        Err(error) => {
            context.reporter.phase(
                Phase::Building,
                format!("{error}; building a conda environment with Python {version} from the site's channels instead"),
            );
            // If conda cannot provide it either, the missing Python is the error to show.
            return super::conda::build(context).map_err(|cause| cause.context(error));
        }
    };
    match context.uv() {
        Some(uv) => with_uv(context, uv, &interpreter.path),
        None => {
            context.reporter.warning(
                "uv not found; falling back to `python -m pip` (slower, lock without hashes)",
            );
            with_pip(context, &interpreter.path)
        }
    }
}

fn with_uv(context: &Context<'_>, uv: &Path, interpreter: &Path) -> anyhow::Result<Vec<String>> {
    let request = context.request;
    let settings = request.settings;
    let spec = request.spec;
    let prefix = context.prefix.display().to_string();
    let python = context.prefix.join("bin/python").display().to_string();
    let uv_run = |step: &str, args: &[&str], cwd: &Path, fault: Fault| {
        let mut command = python::uv_command(uv, settings, args);
        command.current_dir(cwd);
        python::run_package_step(context, step, &mut command, fault)
    };
    let interpreter_arg = interpreter.display().to_string();
    let make_venv = || {
        uv_run(
            "uv venv",
            &[
                "venv",
                "--allow-existing",
                "--no-python-downloads",
                "--python",
                &interpreter_arg,
                &prefix,
            ],
            &context.meta,
            Fault::Machine,
        )
    };
    let needs_ipykernel = !spec_has_ipykernel(spec, context.repo());
    let mut locks = Vec::new();
    let lock_path = context.meta.join("requirements.lock");
    let lock_arg = lock_path.display().to_string();

    // Requirements whose every line carries hashes: a hashed requirements file, or a
    // Pipfile.lock that has hashes for every package.
    let hashed_input = match spec.pip.as_ref().filter(|p| p.hashed) {
        Some(_) => {
            let path = context.meta.join("requirements.hashed.txt");
            fs_err::write(&path, validated_requirements(context, "constraints.txt")?)?;
            Some(path)
        }
        None if spec.buildpack == Buildpack::Pipfile => hashed_pipfile_lock(context)?,
        None => None,
    };
    let pylock = spec.lock.as_ref().filter(|l| l.format == "pylock");
    let loose = request.from_lock.is_none()
        && spec.buildpack != Buildpack::UvLock
        && pylock.is_none()
        && hashed_input.is_none();
    if !loose {
        make_venv()?;
    }
    if let Some(from_lock) = &request.from_lock {
        fs_err::copy(from_lock, &lock_path)?;
        uv_run(
            "uv pip sync (from lock)",
            &["pip", "sync", "--python", &python, &lock_arg],
            context.repo(),
            Fault::Spec,
        )?;
        locks.push("hpcbinder/requirements.lock".into());
    } else if spec.buildpack == Buildpack::UvLock {
        let (lock, project) = uv_project(context);
        let mut command =
            python::uv_command(uv, settings, &["sync", "--frozen", "--python", &python]);
        command
            .current_dir(&project)
            .env("UV_PROJECT_ENVIRONMENT", &context.prefix);
        python::run_package_step(context, "uv sync --frozen", &mut command, Fault::Spec)?;
        fs_err::copy(&lock, context.meta.join("uv.lock"))?;
        locks.push("hpcbinder/uv.lock".into());
    } else if let Some(lock) = pylock {
        let file = context.repo().join(&lock.file).display().to_string();
        uv_run(
            "uv pip sync pylock.toml",
            &["pip", "sync", "--python", &python, &file],
            context.repo(),
            Fault::Spec,
        )?;
        fs_err::copy(
            context.repo().join(&lock.file),
            context.meta.join("pylock.toml"),
        )?;
        locks.push("hpcbinder/pylock.toml".into());
    } else if let Some(hashed) = &hashed_input {
        // The repository's own hashes are checked as they are: no re-resolution.
        let top = hashed.display().to_string();
        uv_run(
            "uv pip install --require-hashes",
            &[
                "pip",
                "install",
                "--require-hashes",
                "--python",
                &python,
                "-r",
                &top,
            ],
            context.repo(),
            Fault::Spec,
        )?;
        fs_err::copy(&top, &lock_path)?;
        locks.push("hpcbinder/requirements.lock".into());
    } else {
        let input = requirements_input(context, needs_ipykernel)?;
        let input_arg = input.display().to_string();
        context.reporter.phase(
            Phase::Building,
            "Resolving the requirements into a hashed lock while installing them",
        );
        // The lock is resolved (for the same interpreter) while the environment is made
        // and filled from the same requirements; the sync below then makes the
        // environment exactly the lock, a no-op when both resolved alike.
        let (venv, compiled) = std::thread::scope(|scope| {
            let compile = scope.spawn(|| {
                python::compile_lock(
                    context,
                    uv,
                    &interpreter_arg,
                    &input,
                    &lock_path,
                    context.repo(),
                )
            });
            let venv = make_venv();
            // Its failure is not fatal: the sync from the lock installs what is missing.
            let installed = venv.is_ok()
                && uv_run(
                    "uv pip install (while resolving)",
                    &["pip", "install", "--python", &python, "-r", &input_arg],
                    context.repo(),
                    Fault::Spec,
                )
                .is_ok();
            let compiled = compile
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the resolver thread panicked")));
            (venv, compiled.map(|()| installed))
        });
        venv?;
        let installed = compiled?;
        // The environment must be exactly the lock: when the install put in precisely the
        // locked names and versions (the usual case), there is nothing to sync.
        if !(installed && matches_lock(&context.prefix, &lock_path)) {
            context
                .reporter
                .phase(Phase::Building, "Installing from the lock");
            uv_run(
                "uv pip sync",
                &["pip", "sync", "--python", &python, &lock_arg],
                context.repo(),
                Fault::Spec,
            )?;
        }
        locks.push("hpcbinder/requirements.lock".into());
    }
    let lock_covers_ipykernel = request.from_lock.is_none()
        && hashed_input.is_none()
        && (spec.lock.is_none() || spec.buildpack == Buildpack::Pipfile);
    if needs_ipykernel && !lock_covers_ipykernel {
        context.reporter.phase(
            Phase::Building,
            "Adding ipykernel: the repository does not list it",
        );
        uv_run(
            "uv pip install ipykernel",
            &["pip", "install", "--python", &python, "ipykernel"],
            context.repo(),
            Fault::Spec,
        )?;
    }
    let server = if lock_covers_ipykernel {
        &[]
    } else {
        context.server_packages()
    };
    if !server.is_empty() {
        let mut args = vec!["pip", "install", "--python", &python];
        args.extend(server.iter().map(String::as_str));
        uv_run(
            "uv pip install <server packages>",
            &args,
            context.repo(),
            Fault::Spec,
        )?;
    }
    if installs_package(context) {
        context
            .reporter
            .phase(Phase::Building, "Installing the repository itself");
        let root = context.repo().display().to_string();
        uv_run(
            "uv pip install <repository>",
            &["pip", "install", "--python", &python, &root],
            context.repo(),
            Fault::Spec,
        )?;
    }
    Ok(locks)
}

/// Whether the venv at `prefix` holds exactly the `name==version` pins of `lock` (by its
/// `.dist-info` directories). Any other kind of lock line (a URL, a path) says no.
fn matches_lock(prefix: &Path, lock: &Path) -> bool {
    let normalize = |name: &str| name.to_ascii_lowercase().replace(['_', '.'], "-");
    let Ok(text) = fs_err::read_to_string(lock) else {
        return false;
    };
    let mut wanted = std::collections::BTreeSet::new();
    for line in text.lines() {
        if line.starts_with([' ', '#', '\t']) || line.trim().is_empty() {
            continue;
        }
        let requirement = line.trim_end_matches('\\').trim();
        let requirement = requirement.split(';').next().unwrap_or(requirement).trim();
        let Some((name, version)) = requirement.split_once("==") else {
            return false;
        };
        wanted.insert((normalize(name.trim()), version.trim().to_string()));
    }
    let Ok(lib) = fs_err::read_dir(prefix.join("lib")) else {
        return false;
    };
    let mut found = std::collections::BTreeSet::new();
    for python in lib.flatten() {
        let Ok(packages) = fs_err::read_dir(python.path().join("site-packages")) else {
            continue;
        };
        for entry in packages.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".dist-info") {
                if let Some((name, version)) = stem.split_once('-') {
                    found.insert((normalize(name), version.to_string()));
                }
            }
        }
    }
    !wanted.is_empty() && wanted == found
}

/// A repository's uv.lock (absolute) and the project directory it belongs to.
pub fn uv_project(context: &Context<'_>) -> (PathBuf, PathBuf) {
    let spec = context.request.spec;
    let lock = spec
        .lock
        .as_ref()
        .map(|l| l.file.as_str())
        .unwrap_or("uv.lock");
    let lock = context.repo().join(lock);
    let project = lock.parent().map(Path::to_path_buf).unwrap_or_default();
    (lock, project)
}

/// A setup.py / pyproject.toml package at the root (installed as repo2docker does: not editable).
fn installs_package(context: &Context<'_>) -> bool {
    let spec = context.request.spec;
    spec.buildpack != Buildpack::UvLock
        && spec.buildpack != Buildpack::Pipfile
        && spec
            .files
            .iter()
            .any(|f| f == "setup.py" || f == "pyproject.toml")
}

/// Whether a path can be written into a requirements file uv reads as it is: uv expands
/// `${VAR}`, and a line break would start a new requirement (or option).
fn uv_safe_path(path: &Path) -> bool {
    let text = path.display().to_string();
    !text.contains(['$', '\n', '\r'])
}

/// `<prefix>/hpcbinder/requirements.in`: the repository's requirements as detection
/// validated them (includes inlined; constraints in `constraints.txt` beside it), or its
/// Pipfile, rendered; plus ipykernel when missing. uv never reads a repository file.
pub fn requirements_input(context: &Context<'_>, needs_ipykernel: bool) -> anyhow::Result<PathBuf> {
    let spec = context.request.spec;
    let mut text = String::from("# Written by hpcbinder: what the environment is resolved from.\n");
    if spec.buildpack == Buildpack::Pipfile {
        text.push_str(&pipfile_requirements(context)?);
    } else if spec.pip.is_some() {
        text.push_str(&validated_requirements(context, "constraints.txt")?);
    }
    if needs_ipykernel {
        context.reporter.phase(
            Phase::Building,
            "Adding ipykernel: the repository does not list it",
        );
        text.push_str("ipykernel\n");
    }
    for line in context.server_packages() {
        text.push_str(line);
        text.push('\n');
    }
    let path = context.meta.join("requirements.in");
    fs_err::write(&path, text)?;
    Ok(path)
}

/// Detection's validated requirement lines, one a line, with `-c <meta>/<constraints>`
/// when there are constraint lines (written there).
pub fn validated_requirements(context: &Context<'_>, constraints: &str) -> anyhow::Result<String> {
    let requirements = &context.request.spec.parsed.requirements;
    // An image builds its local packages inside the build (`local-requirements.txt`),
    // never here: their metadata comes from running their build backend.
    let container = context.request.target.is_container();
    let mut text = String::new();
    for line in &requirements.lines {
        if container && crate::detect::Requirements::is_local(line) {
            continue;
        }
        text.push_str(line);
        text.push('\n');
    }
    if !requirements.constraints.is_empty() {
        let path = context.meta.join(constraints);
        fs_err::write(&path, requirements.constraints.join("\n") + "\n")?;
        let _ = writeln!(text, "-c {}", path.display());
    }
    Ok(text)
}

/// A Pipfile.lock with hashes for every package, written as a hashed requirements file
/// (`<prefix>/hpcbinder/Pipfile.lock.txt`); `None` when any package lacks hashes.
fn hashed_pipfile_lock(context: &Context<'_>) -> anyhow::Result<Option<PathBuf>> {
    let spec = context.request.spec;
    let Some((_, value)) = spec
        .parsed
        .pipfile
        .as_ref()
        .filter(|(file, _)| file.ends_with("Pipfile.lock"))
    else {
        return Ok(None);
    };
    let mut out = String::new();
    for section in ["default", "develop"] {
        for (name, entry) in value[section].as_object().into_iter().flatten() {
            let (Some(version), Some(hashes)) =
                (entry["version"].as_str(), entry["hashes"].as_array())
            else {
                return Ok(None);
            };
            if hashes.is_empty() {
                return Ok(None);
            }
            let _ = write!(out, "{name}{version}");
            if let Some(markers) = entry["markers"].as_str() {
                let _ = write!(out, " ; {markers}");
            }
            for hash in hashes.iter().filter_map(|h| h.as_str()) {
                let _ = write!(out, " --hash={hash}");
            }
            out.push('\n');
        }
    }
    let path = context.meta.join("Pipfile.lock.txt");
    fs_err::write(&path, out)?;
    Ok(Some(path))
}

/// Pipfile.lock (its pins) or Pipfile, as requirement lines; dev packages included, as
/// repo2docker's `pipenv install --dev` does.
fn pipfile_requirements(context: &Context<'_>) -> anyhow::Result<String> {
    let spec = context.request.spec;
    let Some((file, document)) = &spec.parsed.pipfile else {
        return Ok(String::new());
    };
    let sections = if file.ends_with("Pipfile.lock") {
        ["default", "develop"]
    } else {
        ["packages", "dev-packages"]
    };
    // Paths in a Pipfile are relative to the Pipfile (`{path = ".."}` in `binder/`).
    let base = context
        .repo()
        .join(file)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| context.repo().to_path_buf());
    let mut out = String::new();
    for section in sections {
        for (name, entry) in document[section].as_object().into_iter().flatten() {
            let line = pipfile_line(name, entry, &base, context.repo()).map_err(|message| {
                crate::detect::DetectError::Malformed {
                    file: file.clone(),
                    line: None,
                    message: format!("[{section}] {name}: {message}"),
                }
            })?;
            if let Some(line) = line {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    Ok(out)
}

/// One Pipfile or Pipfile.lock entry as a requirement line, as pipenv installs it: a
/// version (`"*"`, `"==1.0"`, `{version = ...}`), a local path (`{path = "."}`, relative
/// to the Pipfile and inside the repository), a file or URL (`{file = ...}`), or a VCS
/// checkout (`{git = ..., ref = ...}`). `editable = true` installs a regular copy: the
/// environment must not follow a checkout that moves on. `None` for a lock entry that
/// names nothing installable.
fn pipfile_line(
    name: &str,
    entry: &serde_json::Value,
    base: &Path,
    repo: &Path,
) -> Result<Option<String>, String> {
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid_name {
        return Err("not a package name".into());
    }
    let text = |key: &str| -> Result<Option<&str>, String> {
        match entry.get(key).and_then(|v| v.as_str()) {
            Some(value) if value.contains(['\n', '\r']) => {
                Err(format!("`{key}` holds a line break"))
            }
            other => Ok(other),
        }
    };
    let version_of = |version: &str| {
        if version == "*" {
            String::new()
        } else {
            version.to_string()
        }
    };
    if let Some(version) = entry.as_str() {
        if version.contains(['\n', '\r']) {
            return Err("the version holds a line break".into());
        }
        return Ok(Some(format!("{name}{}", version_of(version))));
    }
    let extras = entry
        .get("extras")
        .and_then(|e| e.as_array())
        .map(|a| {
            let names: Vec<&str> = a.iter().filter_map(|x| x.as_str()).collect();
            format!("[{}]", names.join(","))
        })
        .filter(|e| e != "[]" && !e.contains(['\n', '\r']))
        .unwrap_or_default();
    let markers = text("markers")?
        .map(|m| format!(" ; {m}"))
        .unwrap_or_default();
    let local = |path: &str| -> Result<String, String> {
        let resolved = fs_err::canonicalize(base.join(path)).map_err(|e| e.to_string())?;
        let root = fs_err::canonicalize(repo).map_err(|e| e.to_string())?;
        if !resolved.starts_with(&root) {
            return Err(format!("`{path}` is outside the repository"));
        }
        // uv expands `${VAR}` in requirement lines: a directory named `${HOME}` would
        // point it elsewhere.
        if !uv_safe_path(&resolved) {
            return Err(format!("`{path}` holds `$` or a line break"));
        }
        Ok(format!(
            "{name}{extras} @ file://{}{markers}",
            resolved.display()
        ))
    };
    if let Some(path) = text("path")? {
        return local(path).map(Some);
    }
    if let Some(file) = text("file")? {
        if !file.contains("://") {
            return local(file).map(Some);
        }
        return Ok(Some(format!("{name}{extras} @ {file}{markers}")));
    }
    if let Some(git) = text("git")? {
        let url = if git.starts_with("git+") {
            git.to_string()
        } else {
            format!("git+{git}")
        };
        let reference = text("ref")?.map(|r| format!("@{r}")).unwrap_or_default();
        let subdirectory = text("subdirectory")?
            .map(|d| format!("#subdirectory={d}"))
            .unwrap_or_default();
        return Ok(Some(format!(
            "{name}{extras} @ {url}{reference}{subdirectory}{markers}"
        )));
    }
    Ok(text("version")?.map(|version| format!("{name}{extras}{}{markers}", version_of(version))))
}

fn with_pip(context: &Context<'_>, interpreter: &Path) -> anyhow::Result<Vec<String>> {
    let request = context.request;
    let python = context.prefix.join("bin/python");
    let mut venv = Command::new(interpreter);
    venv.args(["-m", "venv"]).arg(&context.prefix);
    process::run(context, "python -m venv", &mut venv, Fault::Machine)?;
    let needs_ipykernel = !spec_has_ipykernel(request.spec, context.repo());
    let input = match &request.from_lock {
        Some(lock) => lock.clone(),
        None => requirements_input(context, needs_ipykernel)?,
    };
    let mut install = Command::new(&python);
    install
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
        .arg(&input)
        .current_dir(context.repo());
    python::index_args(&mut install, request.settings, false);
    python::run_package_step(context, "pip install", &mut install, Fault::Spec)?;
    if installs_package(context) {
        let mut package = Command::new(&python);
        package
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .arg(context.repo());
        python::index_args(&mut package, request.settings, false);
        python::run_package_step(
            context,
            "pip install <repository>",
            &mut package,
            Fault::Spec,
        )?;
    }
    let freeze = Command::new(&python)
        .args(["-m", "pip", "freeze", "--disable-pip-version-check"])
        .output()?;
    fs_err::write(context.meta.join("requirements.lock"), freeze.stdout)?;
    Ok(vec!["hpcbinder/requirements.lock".into()])
}
