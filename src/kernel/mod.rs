//! Kernels: a kernelspec directory per environment (`kernel.json` + `kernel-helper.sh`),
//! and its verification by starting it as Jupyter would and running a cell.
//!
//! `argv[0]` is always an absolute path: jupyter_client replaces a bare `python` with the
//! server's own interpreter, which would silently run the wrong environment.

pub mod verify;

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The helper template for native environments (`buildpacks/kernel-helper.sh`).
const HELPER_TEMPLATE: &str = include_str!("../../buildpacks/kernel-helper.sh");
/// The helper template for images (`buildpacks/container-kernel-helper.sh`).
const CONTAINER_HELPER_TEMPLATE: &str = include_str!("../../buildpacks/container-kernel-helper.sh");

/// What a kernelspec is made from.
#[derive(Debug, Clone)]
pub struct KernelSpec {
    /// Directory name (`[a-z0-9._-]`).
    pub name: String,
    /// Shown in Jupyter.
    pub display_name: String,
    /// The text of `kernel-helper.sh` (argv[0]).
    pub helper: String,
    /// The rest of argv (for native envs: absolute python, `-m ipykernel_launcher -f
    /// {connection_file}`; for images: `{connection_file}`).
    pub command: Vec<String>,
    /// Recorded in `metadata.hpcbinder`.
    pub metadata: serde_json::Value,
    /// The kernel's language (`python`, `R`).
    pub language: String,
}

#[derive(Serialize)]
struct KernelJson<'a> {
    argv: Vec<String>,
    display_name: &'a str,
    language: &'a str,
    interrupt_mode: &'static str,
    metadata: serde_json::Value,
}

/// `module load ...` for the site's modules (a no-op where `module` does not exist).
fn module_line(modules: &[String]) -> String {
    if modules.is_empty() {
        return String::new();
    }
    let names: Vec<String> = modules.iter().map(|m| crate::shell::quote(m)).collect();
    format!(
        "if command -v module >/dev/null 2>&1; then module load {}; fi",
        names.join(" ")
    )
}

/// The helper for a native environment: a check that nobody but `owner` (the uid that
/// built it) owns or can write any file of it, modules, activation (`activation_variable`
/// is `CONDA_PREFIX` or `VIRTUAL_ENV`), activate.d scripts, `start`, exec.
pub fn native_helper(
    prefix: &Path,
    owner: u32,
    activation_variable: &str,
    modules: &[String],
) -> String {
    let prefix = prefix.display().to_string();
    let activate =
        format!("{activation_variable}=\"$hpcbinder_prefix\"\nexport {activation_variable}");
    HELPER_TEMPLATE
        .replace("{{modules}}", &module_line(modules))
        .replace("{{activate}}", &activate)
        .replace("{{prefix_comment}}", &crate::shell::comment(&prefix))
        .replace("{{prefix}}", &crate::shell::quote(&prefix))
        .replace("{{owner}}", &owner.to_string())
}

/// The helper for an image: modules, engine variables, then the engine's exec line.
pub fn container_helper(
    engine: &str,
    image: &str,
    modules: &[String],
    exports: &str,
    exec: &str,
) -> String {
    CONTAINER_HELPER_TEMPLATE
        .replace("{{engine}}", engine)
        .replace("{{image}}", &crate::shell::comment(image))
        .replace("{{modules}}", &module_line(modules))
        .replace("{{exports}}", exports)
        .replace("{{exec}}", exec)
}

impl KernelSpec {
    /// The kernel.json argv for a helper at `helper`.
    pub fn argv(&self, helper: &Path) -> Vec<String> {
        let mut argv = vec![helper.display().to_string()];
        argv.extend(self.command.iter().cloned());
        argv
    }

    /// Write the kernelspec into `kernels_dir/<name>/`, replacing an older one whole.
    ///
    /// The new one is assembled beside it under a name Jupyter never lists (`+` is not a
    /// kernel-name character, so not even a crash leaves a visible half-written kernel),
    /// then, under a per-name lock so concurrent registrations take turns, swapped with
    /// the old one in one step (or, where the filesystem cannot swap, the old one is
    /// renamed away and the new one renamed into place).
    pub fn install(&self, kernels_dir: &Path) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        fs_err::create_dir_all(kernels_dir)?;
        let target = kernels_dir.join(&self.name);
        let hidden = |what: &str| {
            kernels_dir.join(format!(
                ".{}+{what}-{}",
                self.name,
                uuid::Uuid::new_v4().simple()
            ))
        };
        let staging = hidden("new");
        let result = (|| {
            fs_err::create_dir(&staging)?;
            let helper_final = target.join("kernel-helper.sh");
            let helper = staging.join("kernel-helper.sh");
            fs_err::write(&helper, &self.helper)?;
            fs_err::set_permissions(&helper, std::fs::Permissions::from_mode(0o755))?;
            let json = KernelJson {
                argv: self.argv(&helper_final),
                display_name: &self.display_name,
                language: &self.language,
                interrupt_mode: "signal",
                metadata: serde_json::json!({ "hpcbinder": self.metadata }),
            };
            let text = serde_json::to_string_pretty(&json).map_err(std::io::Error::other)?;
            fs_err::write(staging.join("kernel.json"), text + "\n")?;
            // Another maintainer's lock file may not be writable for us: a read-only
            // descriptor locks as well.
            let lock_path = kernels_dir.join(format!(".{}+lock", self.name));
            let lock = fs_err::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .or_else(|_| fs_err::File::open(&lock_path))?;
            lock.file().lock()?;
            if exchange(&staging, &target)? {
                // The old kernelspec now sits under the hidden staging name.
                let _ = fs_err::remove_dir_all(&staging);
            } else {
                let old = hidden("old");
                let moved = match fs_err::rename(&target, &old) {
                    Ok(()) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                    Err(e) => return Err(e),
                };
                fs_err::rename(&staging, &target)?;
                if moved {
                    let _ = fs_err::remove_dir_all(&old);
                }
            }
            remove_stale(kernels_dir, &self.name);
            Ok(target.clone())
        })();
        if result.is_err() {
            let _ = fs_err::remove_dir_all(&staging);
        }
        result
    }
}

/// Swap `new` and `current` in one step (`renameat2(RENAME_EXCHANGE)`), so a reader
/// listing the kernels never finds the name missing or half there. `false` when there is
/// nothing to swap with or the filesystem cannot (NFS, older kernels): the caller then
/// renames in two steps.
fn exchange(new: &Path, current: &Path) -> std::io::Result<bool> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, new, CWD, current, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::NOENT => Ok(false),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => Ok(false),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP => Ok(false),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

/// Remove what crashed registrations of `name` left (hidden `.<name>+...` directories an
/// hour old: a live registration's are seconds old).
fn remove_stale(kernels_dir: &Path, name: &str) {
    let prefix = format!(".{name}+");
    let Ok(entries) = fs_err::read_dir(kernels_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600));
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if stale && file_name.starts_with(&prefix) && entry.path().is_dir() {
            let _ = fs_err::remove_dir_all(entry.path());
        }
    }
}

/// Read a kernelspec's argv (for verification exactly as Jupyter would run it).
pub fn read_argv(kernel_dir: &Path) -> std::io::Result<Vec<String>> {
    let text = fs_err::read_to_string(kernel_dir.join("kernel.json"))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(std::io::Error::other)?;
    Ok(value["argv"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_quotes_the_prefix_and_modules() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("ab$c `id` 'q'");
        fs_err::create_dir(&prefix).unwrap();
        let marker = dir.path().join("ab$c `id` 'q'.toml");
        fs_err::write(&marker, "").unwrap();
        let prefix = prefix.to_str().unwrap();
        let helper = native_helper(
            Path::new(prefix),
            crate::store::current_uid(),
            "CONDA_PREFIX",
            &["gcc/12".into(), "x'y".into()],
        );
        assert!(
            helper.contains("module load 'gcc/12' 'x'\\''y'"),
            "{helper}"
        );
        assert!(helper.ends_with("exec \"$@\"\n"));
        // Run it: the environment variable holds the prefix literally.
        let script = dir.path().join("kernel-helper.sh");
        fs_err::write(&script, &helper).unwrap();
        let output = std::process::Command::new("sh")
            .arg(&script)
            .args(["sh", "-c", "printf %s \"$CONDA_PREFIX\""])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(output.stdout).unwrap(), prefix);
        // Something another user could have changed: refused, saying which file.
        use std::os::unix::fs::PermissionsExt;
        for (path, mode) in [(Path::new(prefix), 0o775), (marker.as_path(), 0o666)] {
            let before = fs_err::metadata(path).unwrap().permissions().mode();
            fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
            let output = std::process::Command::new("sh")
                .arg(&script)
                .args(["true"])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.contains("owned or writable by another user"),
                "{stderr}"
            );
            fs_err::set_permissions(path, std::fs::Permissions::from_mode(before)).unwrap();
        }
        fs_err::remove_file(&marker).unwrap();
        let output = std::process::Command::new("sh")
            .arg(&script)
            .args(["true"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "no marker, no kernel");
    }

    /// Re-registering a kernel never leaves its name missing, even for an instant (the
    /// CI run of stop 19 caught a reader between the two renames).
    #[test]
    fn reinstalling_a_kernel_never_leaves_the_name_missing() {
        let dir = tempfile::tempdir().unwrap();
        let spec = KernelSpec {
            name: "swap-test".into(),
            display_name: "Swap test".into(),
            helper: "#!/bin/sh\nexec \"$@\"\n".into(),
            command: vec!["python".into()],
            metadata: serde_json::json!({}),
            language: "python".into(),
        };
        let target = spec.install(dir.path()).unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (done, json) = (done.clone(), target.join("kernel.json"));
            std::thread::spawn(move || {
                let mut missing = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if !json.exists() {
                        missing += 1;
                    }
                }
                missing
            })
        };
        for _ in 0..300 {
            spec.install(dir.path()).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(reader.join().unwrap(), 0, "the kernel went missing");
        let names: Vec<_> = fs_err::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with("+lock"))
            .collect();
        assert_eq!(names, ["swap-test"], "nothing else is left");
    }
}
