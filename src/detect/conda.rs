//! `environment.yml`: channels, dependencies (MatchSpecs), the `pip:` section (with
//! `-r file` references) and `variables`. Malformed files fail with the file and line.

use serde_yaml_ng::Value;

use super::files::{line_of, yaml_error};
use super::{locks, python, Buildpack, CondaSpec, DetectError, EnvSpec, RepoFiles, Used};

/// Parse the env file `name` into `spec`; returns the buildpack it implies.
pub fn read(
    files: &RepoFiles,
    name: &str,
    spec: &mut EnvSpec,
    used: &mut Used,
) -> Result<Buildpack, DetectError> {
    let path = files.display(name);
    let Some(text) = files.read(name)? else {
        return Ok(Buildpack::Default);
    };
    used.add_path(&path);
    // Users often save `conda list --explicit` output as environment.yml (repo2docker #1312).
    if text.lines().any(|l| l.trim() == "@EXPLICIT") {
        spec.warnings.push(format!(
            "{path} is a conda @EXPLICIT file, not an environment file; installing it as an explicit lock"
        ));
        locks::explicit(&path, &text, spec)?;
        return Ok(Buildpack::Explicit);
    }
    let conda = parse(&path, &text, &mut spec.warnings)?;
    spec.python = python_version(&path, &conda.dependencies, &mut spec.warnings);
    // `-r file` in the pip section makes that file part of the environment.
    let base_dir = path
        .rsplit_once('/')
        .map(|(d, _)| format!("{d}/"))
        .unwrap_or_default();
    let mut requirements = Vec::new();
    for entry in &conda.pip {
        if let Some(reference) = python::include_target(entry) {
            let included = format!("{base_dir}{reference}");
            if reference.starts_with('/') || !files.inside(&included) {
                return Err(DetectError::Malformed {
                    file: path.clone(),
                    line: line_of(&text, entry),
                    message: format!(
                        "the pip section includes `{reference}`, which is outside the repository"
                    ),
                });
            }
            if !files.absolute(&included).is_file() {
                return Err(DetectError::Malformed {
                    file: path.clone(),
                    line: line_of(&text, entry),
                    message: format!(
                        "the pip section includes `{reference}`, which does not exist"
                    ),
                });
            }
            let mut pip =
                python::requirements_tree(files, &included, &base_dir, &mut spec.warnings)?;
            spec.parsed.requirements.lines.append(&mut pip.flat.lines);
            spec.parsed
                .requirements
                .constraints
                .append(&mut pip.flat.constraints);
            for file in &pip.files {
                used.add_path(file);
            }
            spec.installs_repo |= pip.installs_repo;
            spec.package_sources.append(&mut pip.source_options);
            requirements.append(&mut pip.files);
        } else {
            python::check_line(files, &path, &text, &base_dir, entry)?;
            spec.parsed
                .requirements
                .lines
                .push(entry.trim().to_string());
            if python::installs_local_path(entry) {
                spec.installs_repo = true;
            } else if super::is_source_option(entry) {
                spec.package_sources.push(format!("{path}: {entry}"));
            }
        }
    }
    for channel in conda.channels.iter().filter(|c| super::is_local_channel(c)) {
        spec.package_sources
            .push(format!("{path}: channel {channel}"));
    }
    if !requirements.is_empty() {
        spec.pip = Some(super::PipSpec {
            requirements,
            hashed: false,
        });
    }
    spec.conda = Some(conda);
    Ok(Buildpack::Conda)
}

fn parse(path: &str, text: &str, warnings: &mut Vec<String>) -> Result<CondaSpec, DetectError> {
    let malformed = |needle: &str, message: String| DetectError::Malformed {
        file: path.to_string(),
        line: line_of(text, needle),
        message,
    };
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(path, &e))?;
    let map = match value {
        Value::Mapping(map) => map,
        Value::Null => return Ok(CondaSpec::default()),
        _ => {
            return Err(DetectError::Malformed {
                file: path.to_string(),
                line: Some(1),
                message: "expected a mapping with `channels:` and `dependencies:`".into(),
            })
        }
    };
    let mut conda = CondaSpec::default();
    for (key, value) in &map {
        let key = key.as_str().unwrap_or_default();
        match key {
            "name" | "prefix" => {
                if key == "name" {
                    conda.name = value.as_str().map(str::to_string);
                } else {
                    warnings.push(format!(
                        "{path}: `prefix:` is ignored; the environment lives in the store"
                    ));
                }
            }
            "channels" => {
                for channel in string_list(value).ok_or_else(|| {
                    malformed(
                        "channels",
                        "`channels` must be a list of channel names or URLs".into(),
                    )
                })? {
                    check_channel(&channel).map_err(|m| malformed(&channel, m))?;
                    conda.channels.push(channel);
                }
            }
            "dependencies" => {
                let Value::Sequence(items) = value else {
                    return Err(malformed(
                        "dependencies",
                        "`dependencies` must be a list".into(),
                    ));
                };
                for item in items {
                    match item {
                        Value::String(s) => {
                            check_matchspec(s).map_err(|m| malformed(s, m))?;
                            conda.dependencies.push(s.trim().to_string());
                        }
                        Value::Number(n) => {
                            return Err(malformed(
                                &n.to_string(),
                                format!("dependency `{n}` is a number; quote it or name a package"),
                            ))
                        }
                        Value::Mapping(m) if m.len() == 1 && m.contains_key("pip") => {
                            let pip = string_list(&m["pip"]).ok_or_else(|| {
                                malformed(
                                    "pip",
                                    "the `pip:` section must be a list of requirement strings"
                                        .into(),
                                )
                            })?;
                            conda.pip.extend(pip);
                        }
                        Value::Mapping(m) => {
                            let key = m
                                .keys()
                                .next()
                                .and_then(Value::as_str)
                                .unwrap_or("dependencies");
                            return Err(malformed(
                                &format!("{key}:"),
                                format!("`{key}:` is not allowed here; each dependency must be a MatchSpec string or a `pip:` list"),
                            ));
                        }
                        _ => {
                            return Err(malformed(
                                "dependencies",
                                "each dependency must be a MatchSpec string or a `pip:` list"
                                    .into(),
                            ))
                        }
                    }
                }
            }
            "variables" => {
                let Value::Mapping(vars) = value else {
                    return Err(malformed(
                        "variables",
                        "`variables` must map names to values".into(),
                    ));
                };
                for (k, v) in vars {
                    let (Some(k), Some(v)) = (k.as_str(), scalar(v)) else {
                        return Err(malformed(
                            "variables",
                            "`variables` must map names to values".into(),
                        ));
                    };
                    // Names become `export NAME=...` lines and Containerfile `ENV` lines:
                    // only shell names, so a name cannot smuggle in another line.
                    let valid = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !valid {
                        return Err(malformed(
                            k.lines().next().unwrap_or("variables"),
                            format!(
                                "`{}` is not a variable name (letters, digits and `_`, not starting with a digit)",
                                k.escape_debug()
                            ),
                        ));
                    }
                    conda.variables.insert(k.to_string(), v);
                }
            }
            other => warnings.push(format!("{path}: unknown key `{other}` is ignored")),
        }
    }
    Ok(conda)
}

fn string_list(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::Sequence(items) => items
            .iter()
            .map(|v| v.as_str().map(|s| s.trim().to_string()))
            .collect(),
        Value::Null => Some(Vec::new()),
        _ => None,
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Channel names (`conda-forge`, `conda-forge/label/dev`, `pkgs/main`), `defaults`,
/// `nodefaults`, or URLs (`https://`, `http://`, `file://`, `s3://`).
fn check_channel(channel: &str) -> Result<(), String> {
    if let Some((scheme, rest)) = channel.split_once("://") {
        if matches!(scheme, "https" | "http" | "file" | "s3" | "gcs" | "oci")
            && !rest.is_empty()
            && !rest.contains(char::is_whitespace)
        {
            return Ok(());
        }
        return Err(format!(
            "channel `{channel}`: unsupported URL; use https://, http://, file:// or s3://"
        ));
    }
    let valid = !channel.is_empty()
        && !channel.starts_with(['-', '/', '.'])
        && channel.split('/').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "channel `{channel}` is not a channel name (e.g. conda-forge, conda-forge/label/dev) or a URL"
        ))
    }
}

/// A loose check of a MatchSpec's shape; the solver does the real parsing.
fn check_matchspec(spec: &str) -> Result<(), String> {
    let spec = spec.trim();
    let name_part = spec.rsplit("::").next().unwrap_or(spec);
    let name: String = name_part
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*'))
        .collect();
    if spec.is_empty() || name.is_empty() || spec.starts_with('-') {
        return Err(format!(
            "`{spec}` is not a conda package spec (e.g. `numpy>=1.26`, `conda-forge::python=3.12`)"
        ));
    }
    if spec.matches('[').count() != spec.matches(']').count() {
        return Err(format!("`{spec}`: unbalanced brackets"));
    }
    Ok(())
}

/// The Python version a dependency list asks for, as `X.Y`.
///
/// Beyond repo2docker (which only reads `python=X.Y`), `python>=X.Y`, `python X.Y.*` and
/// `python[version='>=X.Y']` set the version; the lower bound is taken.
pub fn python_version(
    path: &str,
    dependencies: &[String],
    warnings: &mut Vec<String>,
) -> Option<String> {
    for dependency in dependencies {
        let spec = dependency.rsplit("::").next().unwrap_or(dependency).trim();
        let Some(rest) = spec.strip_prefix("python") else {
            continue;
        };
        if rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            continue; // python-dateutil, pythonnet, ...
        }
        let constraint: String = rest.chars().filter(|c| !c.is_whitespace()).collect();
        let constraint = constraint
            .trim_start_matches('[')
            .trim_start_matches("version=")
            .trim_matches(|c| c == '\'' || c == '"' || c == ']');
        let version = match first_major_minor(constraint) {
            Some(version) => version,
            // repo2docker's `major_pythons`: `python=2` (or `python 2`) means 2.7.
            None if constraint
                .trim_start_matches('=')
                .trim_end_matches(['.', '*'])
                == "2" =>
            {
                "2.7".to_string()
            }
            None => return None,
        };
        let repo2docker_reads_it =
            rest.trim_start().starts_with('=') && !constraint.starts_with(">");
        if constraint.starts_with('<') {
            warnings.push(format!(
                "{path}: `{dependency}` gives only an upper bound; using the site's default Python"
            ));
            return None;
        }
        if !repo2docker_reads_it {
            warnings.push(format!(
                "{path}: `{dependency}` sets Python {version} (repo2docker would not read it and would start from 3.10)"
            ));
        }
        return Some(version);
    }
    None
}

pub use crate::version::first_major_minor;

#[cfg(test)]
mod tests {
    use super::*;

    fn version(dep: &str) -> Option<String> {
        python_version("environment.yml", &[dep.to_string()], &mut Vec::new())
    }

    #[test]
    fn python_versions() {
        assert_eq!(version("python=3.11").as_deref(), Some("3.11"));
        assert_eq!(version("python==3.11.4").as_deref(), Some("3.11"));
        assert_eq!(version("python>=3.11").as_deref(), Some("3.11"));
        assert_eq!(version("python 3.12.*").as_deref(), Some("3.12"));
        assert_eq!(version("conda-forge::python=3.10").as_deref(), Some("3.10"));
        assert_eq!(
            version("python[version='>=3.9,<3.13']").as_deref(),
            Some("3.9")
        );
        assert_eq!(version("python"), None);
        assert_eq!(version("python=3"), None);
        assert_eq!(version("python=2").as_deref(), Some("2.7"));
        assert_eq!(version("python 2").as_deref(), Some("2.7"));
        assert_eq!(version("python=2.*").as_deref(), Some("2.7"));
        assert_eq!(version("python-dateutil=2.8"), None);
        assert_eq!(version("python<3.13"), None);
    }

    #[test]
    fn channels() {
        for good in [
            "conda-forge",
            "bioconda",
            "conda-forge/label/dev",
            "nodefaults",
            "https://repo.example/c",
            "file:///srv/ch",
        ] {
            assert!(check_channel(good).is_ok(), "{good}");
        }
        for bad in ["conda forge", "", "conda-forge::x", "ftp://x", "-c", "a//b"] {
            assert!(check_channel(bad).is_err(), "{bad}");
        }
    }
}
