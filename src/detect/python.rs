//! The pip family (requirements files, setup.py / pyproject.toml packages, Pipfile),
//! plus the small line formats of other buildpacks (`apt.txt`, Julia's `[compat]`).

use super::files::{line_of, toml_error};
use super::{conda::first_major_minor, DetectError, EnvSpec, PipSpec, RepoFiles, Used};

/// A requirements file and everything it includes with `-r` / `-c`.
#[derive(Debug, Default)]
pub struct RequirementsTree {
    /// Root-relative paths, the top file first.
    pub files: Vec<String>,
    /// Every requirement line carries `--hash`.
    pub hashed: bool,
    /// A line installs the repository itself (`.`, `-e .`).
    pub installs_repo: bool,
    /// Options naming package sources (`file: line`), see `EnvSpec::package_sources`.
    pub source_options: Vec<String>,
    /// The validated content, includes inlined: what uv is given.
    pub flat: super::Requirements,
}

/// `-r file` / `--requirement file` / `-c file` / `--constraint=file` → the file.
pub fn include_target(line: &str) -> Option<&str> {
    include(line).map(|(target, _)| target)
}

/// `-r file` → (file, false); `-c file` → (file, true).
fn include(line: &str) -> Option<(&str, bool)> {
    let line = line.trim();
    for prefix in ["-r", "--requirement", "-c", "--constraint"] {
        if let Some(rest) = line.strip_prefix(prefix) {
            let rest = rest.strip_prefix('=').unwrap_or(rest);
            if rest.starts_with(char::is_whitespace)
                || line.contains('=') && prefix.starts_with("--")
            {
                let target = rest.trim();
                let constraint = prefix.starts_with("-c") || prefix.starts_with("--c");
                return (!target.is_empty()).then_some((target, constraint));
            }
        }
    }
    None
}

/// Whether a requirement line installs a local directory (`.`, `-e .`, `./pkg`, `file:.`).
pub fn installs_local_path(line: &str) -> bool {
    let target = editable_target(line);
    target == "."
        || target.starts_with("./")
        || target.starts_with("file:.")
        || target.starts_with("../")
}

fn editable_target(line: &str) -> &str {
    let line = line.trim();
    line.strip_prefix("-e")
        .or_else(|| line.strip_prefix("--editable"))
        .map(|r| r.trim_start_matches('=').trim())
        .unwrap_or(line)
}

/// The local path a requirement line names (`./pkg`, `-e ../x`, `name @ file:///abs`,
/// `git+file:///repo`), as written; `None` for a package from an index or a remote URL.
pub fn local_path(line: &str) -> Option<&str> {
    let target = editable_target(line);
    if let Some(index) = target.find("file:") {
        let rest = &target[index + "file:".len()..];
        let rest = rest.split([' ', '\t', ';', '#']).next().unwrap_or(rest);
        // file:///abs and file://localhost/abs are absolute; file:rel is relative.
        return Some(match rest.strip_prefix("//") {
            Some(after) => after.find('/').map_or(after, |slash| &after[slash..]),
            None => rest,
        });
    }
    let target = target.split([' ', '\t', ';']).next().unwrap_or(target);
    (target == "."
        || target == ".."
        || target.starts_with("./")
        || target.starts_with("../")
        || target.starts_with('/'))
    .then_some(target)
}

/// One requirement or option line as uv would read it, checked: uv expands `${VAR}` from
/// the builder's environment, and a local path must stay inside the repository (`base`
/// is the directory uv resolves relative paths from, root-relative).
pub fn check_line(
    files: &RepoFiles,
    file: &str,
    text: &str,
    base: &str,
    line: &str,
) -> Result<(), DetectError> {
    let malformed = |message: String| DetectError::Malformed {
        file: file.to_string(),
        line: line_of(text, line.split_whitespace().next().unwrap_or(line)),
        message,
    };
    if line.contains("${") {
        return Err(malformed(format!(
            "`{}` names an environment variable, which uv would expand from the builder's environment; write the value out",
            crate::printer::sanitize_line(line)
        )));
    }
    if let Some(path) = local_path(line) {
        let relative = normalize(&format!("{base}{path}"));
        if path.starts_with('/') || !files.inside(&relative) {
            return Err(malformed(format!(
                "`{}` installs `{path}`, which is outside the repository",
                crate::printer::sanitize_line(line)
            )));
        }
    }
    Ok(())
}

/// Read a requirements file and its includes (relative to the including file): `-r`
/// includes are inlined, `-c` constraints gathered, every line checked. uv is then given
/// only what hpcbinder writes from this, never a file the repository chose. `base` is the
/// root-relative directory uv runs in (relative paths in lines are resolved from it, not
/// from the file, by pip and uv alike).
pub fn requirements_tree(
    files: &RepoFiles,
    top: &str,
    base: &str,
    warnings: &mut Vec<String>,
) -> Result<RequirementsTree, DetectError> {
    let mut tree = RequirementsTree::default();
    let mut counts = (0usize, 0usize);
    walk(files, top, base, false, &mut tree, &mut counts)?;
    let (requirement_lines, hashed_lines) = counts;
    tree.hashed = requirement_lines > 0 && hashed_lines == requirement_lines;
    if hashed_lines > 0 && !tree.hashed {
        warnings.push(format!(
            "{top}: only some requirements carry --hash; pip and uv refuse such files in hash-checking mode"
        ));
    }
    Ok(tree)
}

/// More included files than this are refused (a cycle is skipped, as pip does).
const MAX_INCLUDED_FILES: usize = 64;

fn walk(
    files: &RepoFiles,
    path: &str,
    base: &str,
    constraint: bool,
    tree: &mut RequirementsTree,
    counts: &mut (usize, usize),
) -> Result<(), DetectError> {
    if tree.files.iter().any(|f| f == path) {
        return Ok(());
    }
    let Some(text) = files.read_path(path)? else {
        return Ok(());
    };
    tree.files.push(path.to_string());
    if tree.files.len() > MAX_INCLUDED_FILES {
        return Err(DetectError::Malformed {
            file: path.to_string(),
            line: None,
            message: format!("more than {MAX_INCLUDED_FILES} requirement files are included"),
        });
    }
    let dir = path
        .rsplit_once('/')
        .map(|(d, _)| format!("{d}/"))
        .unwrap_or_default();
    // Continuation lines (`\` at the end) belong to the requirement above.
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    for line in joined.lines() {
        let line = line.split(" #").next().unwrap_or(line).trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((target, constrains)) = include(line) {
            let included = normalize(&format!("{dir}{target}"));
            // An include that leaves the repository (absolute, `..`, or through a
            // symlinked directory) is refused here, not only skipped.
            if target.starts_with('/') || !files.inside(&included) {
                return Err(DetectError::Malformed {
                    file: path.to_string(),
                    line: line_of(&text, target),
                    message: format!("includes `{target}`, which is outside the repository"),
                });
            }
            if !files.absolute(&included).is_file() {
                return Err(DetectError::Malformed {
                    file: path.to_string(),
                    line: line_of(&text, target),
                    message: format!("includes `{target}`, which does not exist"),
                });
            }
            walk(
                files,
                &included,
                base,
                constraint || constrains,
                tree,
                counts,
            )?;
            continue;
        }
        check_line(files, path, &text, base, line)?;
        let out = if constraint {
            &mut tree.flat.constraints
        } else {
            &mut tree.flat.lines
        };
        out.push(line.to_string());
        if line.starts_with('-') && !line.starts_with("-e") && !line.starts_with("--editable") {
            if super::is_source_option(line) {
                tree.source_options.push(format!("{path}: {line}"));
            }
            continue; // --index-url, --find-links, ...: options, not requirements.
        }
        if constraint {
            continue;
        }
        counts.0 += 1;
        if line.contains("--hash") {
            counts.1 += 1;
        }
        tree.installs_repo |= installs_local_path(line);
    }
    Ok(())
}

pub(super) fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "." | "" => {}
            // `..` above the start stays: `../../x` is not `x`.
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// requirements.txt plus a root Python package (setup.py, or pyproject.toml with
/// `[project]` and `[build-system]`, root only, no binder dir). Returns whether any was found.
/// `with_requirements` is false when a lock already pins the packages.
pub fn packages_and_requirements(
    files: &RepoFiles,
    spec: &mut EnvSpec,
    used: &mut Used,
    with_requirements: bool,
) -> Result<bool, DetectError> {
    let mut found = false;
    if with_requirements && files.exists("requirements.txt") {
        let tree = requirements_tree(
            files,
            &files.display("requirements.txt"),
            "",
            &mut spec.warnings,
        )?;
        if !tree.files.is_empty() {
            for file in &tree.files {
                used.add_path(file);
            }
            spec.installs_repo |= tree.installs_repo;
            spec.package_sources.extend(tree.source_options);
            spec.pip = Some(PipSpec {
                requirements: tree.files,
                hashed: tree.hashed,
            });
            spec.parsed.requirements = tree.flat;
            found = true;
        }
    }
    if files.binder_dir().is_none() {
        if files.exists_root("setup.py") {
            used.add_path("setup.py");
            spec.installs_repo = true;
            found = true;
        }
        if let Some(text) = files.read_root("pyproject.toml")? {
            let document: toml::Table =
                toml::from_str(&text).map_err(|e| toml_error("pyproject.toml", &text, &e))?;
            let project = document.get("project").and_then(|p| p.as_table());
            if let Some(requires) = project
                .and_then(|p| p.get("requires-python"))
                .and_then(|v| v.as_str())
            {
                if spec.python.is_none() && !requires.trim_start().starts_with('<') {
                    spec.python = first_major_minor(requires);
                }
            }
            if project.is_some() && document.contains_key("build-system") {
                used.add_path("pyproject.toml");
                spec.installs_repo = true;
                found = true;
            }
        }
    }
    Ok(found)
}

/// Pipfile / Pipfile.lock (the lock wins); Python from the lock's `_meta`, else `[requires]`.
pub fn pipfile(files: &RepoFiles, spec: &mut EnvSpec, used: &mut Used) -> Result<(), DetectError> {
    if let Some(text) = files.read("Pipfile.lock")? {
        let path = files.display("Pipfile.lock");
        let lock: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| DetectError::Malformed {
                file: path.clone(),
                line: Some(e.line()),
                message: format!("invalid JSON: {e}"),
            })?;
        let requires = &lock["_meta"]["requires"];
        spec.python = requires["python_full_version"]
            .as_str()
            .or_else(|| requires["python_version"].as_str())
            .and_then(first_major_minor);
        let packages = ["default", "develop"]
            .iter()
            .filter_map(|section| lock[section].as_object().map(|o| o.len()))
            .sum();
        spec.installs_repo |= ["default", "develop"]
            .iter()
            .any(|section| pipfile_installs_local(&lock[section]));
        spec.lock = Some(super::LockSpec {
            format: "pipfile",
            file: path.clone(),
            platforms: Vec::new(),
            packages,
        });
        used.add_path(&path);
        spec.parsed.pipfile = Some((path, lock));
    }
    if let Some(text) = files.read("Pipfile")? {
        let path = files.display("Pipfile");
        let document: toml::Table =
            toml::from_str(&text).map_err(|e| toml_error(&path, &text, &e))?;
        if spec.python.is_none() {
            spec.python = document
                .get("requires")
                .and_then(|r| {
                    r.get("python_full_version")
                        .or_else(|| r.get("python_version"))
                })
                .and_then(|v| v.as_str())
                .and_then(first_major_minor);
        }
        let document = serde_json::to_value(&document).unwrap_or_default();
        spec.installs_repo |= ["packages", "dev-packages"]
            .iter()
            .any(|section| pipfile_installs_local(&document[section]));
        used.add_path(&path);
        if spec.parsed.pipfile.is_none() {
            spec.parsed.pipfile = Some((path, document));
        }
    }
    if files.binder_dir().is_none() && files.exists_root("setup.py") && !spec.installs_repo {
        spec.warnings.push(
            "setup.py is not installed automatically with a Pipfile; reference it there (`pkg = {path = \".\"}`)".into(),
        );
    }
    Ok(())
}

/// Whether a Pipfile section installs a local path (`{path = "."}`, a local `file`): then
/// the repository's tree is part of the environment, and of its key.
fn pipfile_installs_local(section: &serde_json::Value) -> bool {
    section.as_object().into_iter().flatten().any(|(_, entry)| {
        entry.get("path").is_some()
            || entry
                .get("file")
                .and_then(|f| f.as_str())
                .is_some_and(|f| !f.contains("://"))
    })
}

/// `apt.txt`: one Debian package per line, `#` comments.
pub fn apt_packages(path: &str, text: &str) -> Result<Vec<String>, DetectError> {
    let mut packages = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let valid = line.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && line.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '+' | '-')
            });
        if !valid {
            return Err(DetectError::Malformed {
                file: path.to_string(),
                line: Some(index + 1),
                message: format!("`{line}` is not a Debian package name (one name per line, no versions or options)"),
            });
        }
        packages.push(line.to_string());
    }
    packages.sort();
    packages.dedup();
    Ok(packages)
}

/// Julia's `[compat] julia = "..."` from Project.toml.
pub fn julia_compat(files: &RepoFiles, name: &str) -> Result<Option<String>, DetectError> {
    let path = files.display(name);
    let Some(text) = files.read(name)? else {
        return Ok(None);
    };
    let document: toml::Table = toml::from_str(&text).map_err(|e| toml_error(&path, &text, &e))?;
    Ok(document
        .get("compat")
        .and_then(|c| c.get("julia"))
        .and_then(|v| v.as_str())
        .map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_and_local_paths() {
        assert_eq!(include_target("-r other.txt"), Some("other.txt"));
        assert_eq!(include_target("--requirement=base.txt"), Some("base.txt"));
        assert_eq!(
            include_target("-c constraints.txt"),
            Some("constraints.txt")
        );
        assert_eq!(include_target("requests"), None);
        assert!(installs_local_path("-e ."));
        assert!(installs_local_path("."));
        assert!(!installs_local_path("numpy"));
        assert_eq!(normalize("binder/../reqs/a.txt"), "reqs/a.txt");
        assert_eq!(normalize("../../x"), "../../x");
        assert_eq!(normalize("a/../../x"), "../x");
    }

    #[test]
    fn apt_names() {
        assert_eq!(
            apt_packages("apt.txt", "curl\n# c\nlibxml2-dev # x\ncurl\n").unwrap(),
            ["curl", "libxml2-dev"]
        );
        assert!(apt_packages("apt.txt", "curl=7.0\n").is_err());
        assert!(apt_packages("apt.txt", "-o Foo\n").is_err());
    }
}
