//! Lock files users already have: `pixi.toml` + `pixi.lock`, `conda-lock.yml`, conda
//! `@EXPLICIT` files, `uv.lock`, `pylock.toml`. A lock wins over the loose spec it locks.

use serde_yaml_ng::Value;

use super::conda::first_major_minor;
use super::files::{line_of, toml_error, yaml_error};
use super::{
    is_local_channel, Buildpack, CondaSpec, DetectError, EnvSpec, LockSpec, LockedPackage,
    RepoFiles, Used,
};

/// Find the lock-file buildpack that applies, if any, and fill `spec`.
pub fn detect(
    files: &RepoFiles,
    spec: &mut EnvSpec,
    used: &mut Used,
) -> Result<Option<Buildpack>, DetectError> {
    if files.exists("pixi.toml") {
        pixi(files, spec, used)?;
        return Ok(Some(Buildpack::Pixi));
    }
    if let Some(name) = ["conda-lock.yml", "conda-lock.yaml"]
        .into_iter()
        .find(|n| files.exists(n))
    {
        conda_lock(files, name, spec, used)?;
        return Ok(Some(Buildpack::CondaLock));
    }
    if explicit_files(files, spec, used)? {
        return Ok(Some(Buildpack::Explicit));
    }
    if files.exists("uv.lock") {
        uv_lock(files, spec, used)?;
        return Ok(Some(Buildpack::UvLock));
    }
    if files.exists("pylock.toml") {
        pylock(files, spec, used)?;
        return Ok(Some(Buildpack::Pylock));
    }
    Ok(None)
}

fn read_yaml(files: &RepoFiles, name: &str) -> Result<Option<(String, Value)>, DetectError> {
    let path = files.display(name);
    let Some(text) = files.read(name)? else {
        return Ok(None);
    };
    let value = serde_yaml_ng::from_str(&text).map_err(|e| yaml_error(&path, &e))?;
    Ok(Some((text, value)))
}

fn read_toml(files: &RepoFiles, relative: &str) -> Result<Option<toml::Table>, DetectError> {
    let Some(text) = files.read_path(relative)? else {
        return Ok(None);
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| toml_error(relative, &text, &e))
}

fn pixi(files: &RepoFiles, spec: &mut EnvSpec, used: &mut Used) -> Result<(), DetectError> {
    let manifest_path = files.display("pixi.toml");
    let manifest = read_toml(files, &manifest_path)?.unwrap_or_default();
    used.add_path(&manifest_path);
    let workspace = manifest
        .get("workspace")
        .or_else(|| manifest.get("project"));
    let platforms: Vec<String> = workspace
        .and_then(|w| w.get("platforms"))
        .and_then(|p| p.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    spec.python = manifest
        .get("dependencies")
        .and_then(|d| d.get("python"))
        .and_then(|v| {
            v.as_str().map(str::to_string).or_else(|| {
                v.get("version")
                    .and_then(|x| x.as_str())
                    .map(str::to_string)
            })
        })
        .filter(|c| !c.trim_start().starts_with('<'))
        .and_then(|c| first_major_minor(&c));
    if !platforms.is_empty() && !platforms.iter().any(|p| p == files.platform()) {
        spec.warnings.push(format!(
            "{manifest_path}: platforms {platforms:?} do not include {}; the build will fail on this machine",
            files.platform()
        ));
    }
    let Some((_, lock)) = read_yaml(files, "pixi.lock")? else {
        spec.warnings.push(format!(
            "{manifest_path} has no pixi.lock beside it; the environment will be solved"
        ));
        let solve = pixi_manifest(&manifest);
        spec.package_sources.extend(
            solve
                .channels
                .iter()
                .filter(|c| is_local_channel(c))
                .map(|c| format!("{manifest_path}: channel {c}")),
        );
        spec.parsed.pixi = Some(solve);
        return Ok(());
    };
    let lock_path = files.display("pixi.lock");
    if lock.get("version").and_then(Value::as_u64).is_none() || lock.get("environments").is_none() {
        return Err(DetectError::Malformed {
            file: lock_path,
            line: Some(1),
            message: "not a pixi lock file (needs `version:` and `environments:`)".into(),
        });
    }
    let packages = lock
        .get("packages")
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if spec.python.is_none() {
        spec.python = packages
            .iter()
            .filter_map(|p| p.get("conda").and_then(Value::as_str))
            .find_map(python_from_conda_url);
    }
    // Where the lock downloads from, for the site's allow-list (crate::sources).
    let channels = lock
        .get("environments")
        .and_then(Value::as_mapping)
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|e| e.get("channels").and_then(Value::as_sequence))
        .flatten()
        .filter_map(|c| c.get("url").and_then(Value::as_str));
    let urls = packages.iter().filter_map(|p| {
        p.get("conda")
            .or_else(|| p.get("pypi"))
            .and_then(Value::as_str)
    });
    spec.parsed.lock_urls = channels.chain(urls).map(str::to_string).collect();
    spec.parsed.lock_urls.sort();
    spec.parsed.lock_urls.dedup();
    spec.lock = Some(LockSpec {
        format: "pixi",
        file: lock_path.clone(),
        platforms,
        packages: packages.len(),
    });
    used.add_path(&lock_path);
    Ok(())
}

fn conda_lock(
    files: &RepoFiles,
    name: &str,
    spec: &mut EnvSpec,
    used: &mut Used,
) -> Result<(), DetectError> {
    let path = files.display(name);
    let Some((text, lock)) = read_yaml(files, name)? else {
        return Ok(());
    };
    let Some(packages) = lock.get("package").and_then(Value::as_sequence) else {
        return Err(DetectError::Malformed {
            file: path,
            line: line_of(&text, "package").or(Some(1)),
            message: "not a conda-lock file (needs `version:`, `metadata:` and a `package:` list)"
                .into(),
        });
    };
    let platforms: Vec<String> = lock
        .get("metadata")
        .and_then(|m| m.get("platforms"))
        .and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if !platforms.iter().any(|p| p == files.platform()) {
        spec.warnings.push(format!(
            "{path} does not lock {}: the build will fail on this machine",
            files.platform()
        ));
    }
    spec.python = packages
        .iter()
        .filter(|p| p.get("name").and_then(Value::as_str) == Some("python"))
        .filter(|p| p.get("platform").and_then(Value::as_str) == Some(files.platform()))
        .find_map(|p| {
            p.get("version")
                .and_then(Value::as_str)
                .and_then(first_major_minor)
        });
    let field = |package: &Value, name: &str| {
        package
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    spec.parsed.locked = packages
        .iter()
        .filter(|p| p.get("platform").and_then(Value::as_str) == Some(files.platform()))
        .map(|package| LockedPackage {
            name: field(package, "name"),
            pip: field(package, "manager") == "pip",
            url: field(package, "url"),
            sha256: package
                .get("hash")
                .and_then(|h| h.get("sha256"))
                .and_then(Value::as_str)
                .map(str::to_string),
        })
        .collect();
    spec.lock = Some(LockSpec {
        format: "conda-lock",
        file: path.clone(),
        platforms,
        packages: spec.parsed.locked.len(),
    });
    used.add_path(&path);
    Ok(())
}

/// A `pixi.toml` without its lock, read as an environment to solve: channels and
/// `[dependencies]` (conda), `[pypi-dependencies]` (pip).
fn pixi_manifest(manifest: &toml::Table) -> CondaSpec {
    let workspace = manifest
        .get("workspace")
        .or_else(|| manifest.get("project"));
    let channels = workspace
        .and_then(|w| w.get("channels"))
        .and_then(|c| c.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let spec_of = |name: &str, value: &toml::Value| match value {
        toml::Value::String(s) if s == "*" => name.to_string(),
        toml::Value::String(s) => format!("{name} {s}"),
        toml::Value::Table(t) => match t.get("version").and_then(|v| v.as_str()) {
            Some(v) if v != "*" => format!("{name} {v}"),
            _ => name.to_string(),
        },
        _ => name.to_string(),
    };
    let table = |key: &str| {
        manifest
            .get(key)
            .and_then(|d| d.as_table())
            .cloned()
            .unwrap_or_default()
    };
    CondaSpec {
        channels,
        dependencies: table("dependencies")
            .iter()
            .map(|(n, v)| spec_of(n, v))
            .collect(),
        pip: table("pypi-dependencies")
            .iter()
            .map(|(n, v)| spec_of(n, v).replacen(' ', "", 1))
            .collect(),
        ..CondaSpec::default()
    }
}

/// Look for `@EXPLICIT` files among the config dir's `*.txt` and `*.lock` files; use the
/// one for this platform. Returns whether one was used.
fn explicit_files(
    files: &RepoFiles,
    spec: &mut EnvSpec,
    used: &mut Used,
) -> Result<bool, DetectError> {
    let dir = files.absolute(files.binder_dir().unwrap_or(""));
    let Ok(entries) = fs_err::read_dir(&dir) else {
        return Ok(false);
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            (n.ends_with(".txt") || n.ends_with(".lock"))
                && !matches!(
                    n.as_str(),
                    "uv.lock" | "pixi.lock" | "Pipfile.lock" | "runtime.txt" | "apt.txt"
                )
        })
        .collect();
    names.sort();
    let mut candidates = Vec::new();
    for name in names {
        let path = files.display(&name);
        // Any `.txt` may be an @EXPLICIT file; a data file (large, or not text) is not
        // one, and must not fail detection: only files whose head has the marker are read.
        if !may_be_explicit(&files.absolute(&path)) {
            continue;
        }
        let Some(text) = files.read_path(&path)? else {
            continue;
        };
        if text.lines().any(|l| l.trim() == "@EXPLICIT") {
            let platform = text.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("# platform:")
                    .map(|p| p.trim().to_string())
            });
            candidates.push((path, text, platform));
        }
    }
    let chosen = candidates
        .iter()
        .position(|(_, _, p)| p.as_deref() == Some(files.platform()))
        .or_else(|| candidates.iter().position(|(_, _, p)| p.is_none()));
    for (index, (path, _, platform)) in candidates.iter().enumerate() {
        if Some(index) != chosen {
            spec.warnings.push(format!(
                "{path} is an @EXPLICIT file for {}; not used on {}",
                platform.as_deref().unwrap_or("an unknown platform"),
                files.platform()
            ));
        }
    }
    let Some(index) = chosen else {
        return Ok(false);
    };
    let (path, text, _) = &candidates[index];
    explicit(path, text, spec)?;
    used.add_path(path);
    Ok(true)
}

/// Whether `path` may be an `@EXPLICIT` file: a symlink (reading it checks where it
/// leads), or a regular file whose first 64 KiB hold the marker on a line of its own.
fn may_be_explicit(path: &std::path::Path) -> bool {
    use std::io::Read as _;
    match path.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => return true,
        Ok(m) if m.is_file() => {}
        _ => return false,
    }
    let mut head = Vec::new();
    let read = fs_err::File::open(path).and_then(|f| f.take(64 << 10).read_to_end(&mut head));
    read.is_ok()
        && head
            .split(|b| *b == b'\n')
            .any(|line| line.trim_ascii() == b"@EXPLICIT")
}

/// Parse an `@EXPLICIT` file: after the marker, every line is a package URL.
pub fn explicit(path: &str, text: &str, spec: &mut EnvSpec) -> Result<(), DetectError> {
    let mut seen_marker = false;
    let mut urls = Vec::new();
    let mut platforms = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(platform) = line.strip_prefix("# platform:") {
            platforms.push(platform.trim().to_string());
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "@EXPLICIT" {
            seen_marker = true;
            continue;
        }
        let url = line.split('#').next().unwrap_or(line);
        if !seen_marker
            || !url.contains("://")
            || !(url.ends_with(".conda") || url.ends_with(".tar.bz2"))
        {
            return Err(DetectError::Malformed {
                file: path.to_string(),
                line: Some(index + 1),
                message: format!("`{line}` is not a package URL (an @EXPLICIT file lists one .conda or .tar.bz2 URL per line)"),
            });
        }
        urls.push(url.to_string());
        spec.parsed.locked.push(LockedPackage {
            name: String::new(),
            pip: false,
            // With its `#md5` / `#sha256:` fragment, checked when it is fetched.
            url: line.to_string(),
            sha256: None,
        });
    }
    spec.python = urls.iter().find_map(|u| python_from_conda_url(u));
    spec.lock = Some(LockSpec {
        format: "explicit",
        file: path.to_string(),
        platforms,
        packages: urls.len(),
    });
    Ok(())
}

/// `.../python-3.11.7-h123_0_cpython.conda` → `3.11`.
fn python_from_conda_url(url: &str) -> Option<String> {
    let file = url.rsplit('/').next()?;
    let version = file.strip_prefix("python-")?;
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| first_major_minor(version))
        .flatten()
}

fn uv_lock(files: &RepoFiles, spec: &mut EnvSpec, used: &mut Used) -> Result<(), DetectError> {
    let path = files.display("uv.lock");
    let lock = read_toml(files, &path)?.unwrap_or_default();
    let packages = lock.get("package").and_then(|p| p.as_array()).map(Vec::len);
    let Some(packages) = packages.filter(|_| lock.contains_key("version")) else {
        return Err(DetectError::Malformed {
            file: path,
            line: Some(1),
            message: "not a uv lock file (needs `version` and `[[package]]` entries)".into(),
        });
    };
    // uv reads the lock itself: a package's `path`, `directory` or `editable` source
    // must stay inside the repository; its registries are package sources.
    let sources: toml::Table = lock
        .get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter_map(|package| package.get("source"))
        .enumerate()
        .map(|(index, source)| (index.to_string(), source.clone()))
        .collect();
    local_paths_inside(files, &path, &sources, &["path", "directory", "editable"])?;
    spec.parsed.lock_urls = sources
        .values()
        .filter_map(|s| s.get("registry").and_then(|r| r.as_str()))
        .map(str::to_string)
        .collect();
    spec.parsed.lock_urls.sort();
    spec.parsed.lock_urls.dedup();
    used.add_path(&path);
    let python_version_file = files.display(".python-version");
    if let Some(text) = files.read_path(&python_version_file)? {
        spec.python = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .and_then(first_major_minor);
        used.add_path(&python_version_file);
    }
    if spec.python.is_none() {
        spec.python = lock
            .get("requires-python")
            .and_then(|v| v.as_str())
            .and_then(first_major_minor);
    }
    let project = if files.binder_dir().is_some() {
        files.display("pyproject.toml")
    } else {
        "pyproject.toml".into()
    };
    if files.absolute(&project).is_file() {
        used.add_path(&project);
        spec.installs_repo = true;
    } else {
        spec.warnings.push(format!(
            "{path} has no pyproject.toml beside it; only the locked packages are installed"
        ));
    }
    spec.lock = Some(LockSpec {
        format: "uv",
        file: path,
        platforms: Vec::new(),
        packages,
    });
    Ok(())
}

fn pylock(files: &RepoFiles, spec: &mut EnvSpec, used: &mut Used) -> Result<(), DetectError> {
    let path = files.display("pylock.toml");
    let lock = read_toml(files, &path)?.unwrap_or_default();
    let Some(packages) = lock
        .get("packages")
        .and_then(|p| p.as_array())
        .filter(|_| lock.contains_key("lock-version"))
    else {
        return Err(DetectError::Malformed {
            file: path,
            line: Some(1),
            message: "not a PEP 751 lock (needs `lock-version` and `[[packages]]`)".into(),
        });
    };
    // uv reads the lock itself: every local path in it (a directory, an archive, a
    // wheel, an sdist) must stay inside the repository.
    local_paths_inside(files, &path, &lock, &["path"])?;
    // Its indexes and URLs are package sources.
    let mut urls = Vec::new();
    for package in packages {
        collect_paths(package, &["url", "index"], &mut urls);
    }
    spec.parsed.lock_urls = urls.into_iter().map(str::to_string).collect();
    spec.parsed.lock_urls.sort();
    spec.parsed.lock_urls.dedup();
    spec.python = lock
        .get("requires-python")
        .and_then(|v| v.as_str())
        .and_then(first_major_minor);
    spec.lock = Some(LockSpec {
        format: "pylock",
        file: path.clone(),
        platforms: Vec::new(),
        packages: packages.len(),
    });
    used.add_path(&path);
    Ok(())
}

/// Every local path a lock names under `keys` (at any depth) must be relative and stay
/// inside the repository, resolved from the lock's directory.
fn local_paths_inside(
    files: &RepoFiles,
    path: &str,
    lock: &toml::Table,
    keys: &[&str],
) -> Result<(), DetectError> {
    let mut local = Vec::new();
    for value in lock.values() {
        collect_paths(value, keys, &mut local);
    }
    let base = path
        .rsplit_once('/')
        .map(|(d, _)| format!("{d}/"))
        .unwrap_or_default();
    for value in local {
        let relative = super::python::normalize(&format!("{base}{value}"));
        if value.starts_with('/') || value.contains("${") || !files.inside(&relative) {
            let text = files.read_path(path)?.unwrap_or_default();
            return Err(DetectError::Malformed {
                file: path.to_string(),
                line: line_of(&text, value),
                message: format!("a package's path `{value}` is outside the repository"),
            });
        }
    }
    Ok(())
}

fn collect_paths<'a>(value: &'a toml::Value, keys: &[&str], out: &mut Vec<&'a str>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                match value {
                    toml::Value::String(path) if keys.contains(&key.as_str()) => out.push(path),
                    _ => collect_paths(value, keys, out),
                }
            }
        }
        toml::Value::Array(items) => items.iter().for_each(|v| collect_paths(v, keys, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn large_or_binary_text_files_beside_the_spec_do_not_fail_detection() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("requirements.txt"), "six==1.16.0\n").unwrap();
        std::fs::write(dir.path().join("results.txt"), "x".repeat(2 << 20)).unwrap();
        std::fs::write(dir.path().join("raw.txt"), [0xff, 0xfe, 0, 1, 2]).unwrap();
        let spec = crate::detect::detect(dir.path(), "linux-64").unwrap();
        assert!(spec.warnings.is_empty(), "{:?}", spec.warnings);
        // An @EXPLICIT file is still found, and one too large still says so.
        std::fs::write(
            dir.path().join("conda-linux-64.txt"),
            "# platform: linux-64\n@EXPLICIT\nhttps://conda.anaconda.org/conda-forge/linux-64/python-3.12.0-h0.conda\n",
        )
        .unwrap();
        let spec = crate::detect::detect(dir.path(), "linux-64").unwrap();
        assert_eq!(
            spec.buildpack,
            crate::detect::Buildpack::Explicit,
            "{spec:?}"
        );
        let mut huge = b"@EXPLICIT\n".to_vec();
        huge.extend(std::iter::repeat_n(b'#', 2 << 20));
        std::fs::write(dir.path().join("spec.txt"), huge).unwrap();
        let error = crate::detect::detect(dir.path(), "linux-64").unwrap_err();
        assert!(error.to_string().contains("spec.txt"), "{error}");
    }
}
