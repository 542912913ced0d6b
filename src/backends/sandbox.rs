//! The sandbox repository code runs in on the host: a native build's `postBuild`, the uv
//! steps that build a local package (its `setup.py` or build backend), and the kernel the
//! build starts to verify the environment (its `start`). An image runs all of these inside
//! its build.
//!
//! bubblewrap (`bwrap`, unprivileged) gives the code a view of the machine where:
//! - the whole filesystem is read-only;
//! - the user's home, the store, `/tmp` and `/run/user` are empty (a fresh tmpfs), so
//!   `~/.ssh`, other environments, caches and agent sockets are out of sight;
//! - writable are only the prefix being built, a private temporary directory, and a copy
//!   of the repository mounted over the original (build backends write `build/` and
//!   `*.egg-info` into the source tree; the checkout itself never changes);
//! - readable again are only the tools the step runs (uv, the base interpreter, local
//!   wheel directories, the CA bundle);
//! - the environment is cleared: only `PATH`, `HOME`, `LANG` and the variables the step
//!   sets itself get through, never a service token or a git credential;
//! - it gets its own PID, IPC and UTS namespaces and dies with hpcbinder.
//!
//! - the network is its own, reaching only the site's package sources through hpcbinder's
//!   proxy ([`super::netproxy`]; `sandbox-network = "packages"`, the default), nothing
//!   (`none`), or the machine's network unfiltered (`host`).
//!
//! `sandbox = "none"` turns all of this off; `auto` (the default) uses bwrap when it works
//! here and warns when it does not.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::Context;
use crate::events::ReporterExt;

/// Errors setting the sandbox up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// `sandbox = "bwrap"` and bwrap cannot run here.
    #[error("a sandbox is required here (sandbox = \"bwrap\", or local-sources = false), but bubblewrap cannot run: {why}")]
    Unavailable {
        /// Why.
        why: String,
    },
}

impl crate::diagnostic::Diagnostic for SandboxError {
    fn blame(&self) -> crate::diagnostic::Blame {
        crate::diagnostic::Blame::Environment
    }

    fn hint(&self) -> Option<String> {
        Some("install bubblewrap (Debian: `apt-get install bubblewrap`) and allow unprivileged user namespaces, or set sandbox = \"none\" to run repository code unconfined".into())
    }
}

/// A configured sandbox for one build.
#[derive(Debug)]
pub struct Jail {
    bwrap: PathBuf,
    home: PathBuf,
    /// Replaced by an empty tmpfs.
    hidden: Vec<PathBuf>,
    /// Mounted read-only at the same path (over hidden parents).
    readable: Vec<PathBuf>,
    /// Mounted read-write at the same path.
    writable: Vec<PathBuf>,
    /// `(source, target)`: a private copy mounted read-write over the original.
    overlays: Vec<(PathBuf, PathBuf)>,
    /// The network: `packages` (through `proxy`), `none` or `host`.
    network: String,
    /// The proxy to the package sources, with `network = "packages"`.
    proxy: Option<super::netproxy::Proxy>,
    /// hpcbinder itself, the relay inside the sandbox.
    relay: PathBuf,
    /// Variables of hpcbinder's environment passed in (environment modules' own).
    passed: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// The private temporary directory (removed with the jail).
    scratch: tempfile::TempDir,
}

/// Whether bwrap can start a process here (user namespaces allowed, binary present).
fn probe(bwrap: &Path) -> Result<(), String> {
    let output = Command::new(bwrap)
        .args([
            "--ro-bind",
            "/",
            "/",
            "--unshare-pid",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "true",
        ])
        .output()
        .map_err(|e| format!("{}: {e}", bwrap.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// The jail for `context`'s build, or `None` when it runs no repository code on this
/// host, or when that code runs unconfined (`sandbox = "none"`, or `auto` without a
/// working bwrap, after a warning event).
///
/// Repository code runs here when a native build installs the repository itself (its
/// build backend runs while the lock is resolved) or runs postBuild. A container target
/// runs none on the host: its local packages and postBuild are built inside the image.
pub fn jail(context: &Context<'_>) -> anyhow::Result<Option<Jail>> {
    let request = context.request;
    let settings = request.settings;
    let runs_repository_code = !request.target.is_container()
        && (request.spec.installs_repo || request.spec.post_build.is_some());
    if !runs_repository_code {
        return Ok(None);
    }
    let Some(bwrap) = find_bwrap(settings, context.reporter)? else {
        return Ok(None);
    };
    let scratch = tempfile::Builder::new()
        .prefix(".sandbox-")
        .tempdir_in(crate::store::package_cache_at(context.store.root(), ""))?;
    let home = home();
    let mut readable: Vec<PathBuf> = Vec::new();
    if let Some(uv) = context.uv() {
        readable.push(fs_err::canonicalize(uv).unwrap_or_else(|_| uv.to_path_buf()));
    }
    if let Ok(interpreter) = super::python::interpreter(context.request.spec, settings) {
        // `<base prefix>/bin/pythonX.Y`: the base prefix holds the standard library.
        let real = fs_err::canonicalize(&interpreter.path).unwrap_or(interpreter.path);
        if let Some(base) = real.parent().and_then(Path::parent) {
            readable.push(base.to_path_buf());
        }
    }
    readable.extend(
        settings
            .pip
            .find_links
            .iter()
            .filter(|link| !link.contains("://") || link.starts_with("file://"))
            .map(|link| PathBuf::from(link.trim_start_matches("file://"))),
    );
    readable.extend(settings.ca_bundle());
    // The repository: a private copy, mounted over the checkout; its git metadata (for
    // setuptools-scm and the like) read-only.
    let copy = scratch.path().join("repository");
    copy_repository(context.repo(), &copy)?;
    let git = context.repo().join(".git");
    if git.is_dir() {
        readable.push(git);
    }
    let network = settings.sandbox_network.clone();
    let relay = std::env::current_exe()
        .and_then(fs_err::canonicalize)
        .unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let proxy = if network == "packages" {
        readable.push(relay.clone());
        let allowed = crate::sources::allowed_hosts(request.spec, settings);
        Some(super::netproxy::Proxy::start(
            &scratch.path().join("proxy.sock"),
            allowed,
        )?)
    } else {
        None
    };
    Ok(Some(Jail {
        network,
        proxy,
        relay,
        passed: Vec::new(),
        bwrap,
        hidden: hidden(&home, context.store.root()),
        home,
        readable,
        writable: vec![context.prefix.clone()],
        overlays: vec![(copy, context.repo().to_path_buf())],
        scratch,
    }))
}

/// bwrap, when the site wants a sandbox and it works here; `None` (after a warning for
/// `auto`) when repository code runs unconfined.
fn find_bwrap(
    settings: &crate::settings::Settings,
    reporter: &dyn crate::events::Reporter,
) -> anyhow::Result<Option<PathBuf>> {
    if settings.sandbox == "none" {
        return Ok(None);
    }
    let found = crate::variables::on_path("bwrap")
        .ok_or_else(|| "bwrap is not on PATH".to_string())
        .and_then(|bwrap| probe(&bwrap).map(|()| bwrap));
    match found {
        Ok(bwrap) => Ok(Some(bwrap)),
        Err(why) if required(settings) => Err(SandboxError::Unavailable { why }.into()),
        Err(why) => {
            reporter.warning(format!(
                "repository code (postBuild, setup.py, start) runs without a sandbox: {why}; install bubblewrap, or set sandbox = \"none\" to silence this"
            ));
            Ok(None)
        }
    }
}

/// The variables environment modules (Lmod, Environment Modules) need for the kernel
/// helper's `module load`: where modules live and the `module` shell function itself.
/// None of them is a secret.
fn module_variables() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    const PREFIXES: &[&str] = &[
        "MODULE",
        "LMOD",
        "BASH_FUNC_module",
        "BASH_FUNC_ml",
        "_LMFILES_",
        "LOADEDMODULES",
    ];
    std::env::vars_os()
        .filter(|(name, _)| {
            name.to_str()
                .is_some_and(|n| PREFIXES.iter().any(|p| n.starts_with(p)))
        })
        .collect()
}

/// Whether a missing sandbox is an error rather than a warning: `sandbox = "bwrap"`, or
/// `auto` where local sources are off (the launch service, which builds anyone's
/// repository: never unconfined by accident).
fn required(settings: &crate::settings::Settings) -> bool {
    settings.sandbox == "bwrap" || (settings.sandbox == "auto" && !settings.local_sources)
}

/// What every jail replaces with an empty tmpfs: temporary directories, the runtime
/// directory (agent sockets), the home and the store.
fn hidden(home: &Path, store_root: &Path) -> Vec<PathBuf> {
    ["/tmp", "/run/user", "/var/tmp"]
        .into_iter()
        .map(PathBuf::from)
        .chain([home.to_path_buf(), store_root.to_path_buf()])
        .collect()
}

fn home() -> PathBuf {
    crate::variables::get("HOME").map_or_else(|| PathBuf::from("/nonexistent"), PathBuf::from)
}

/// The jail a just-built native environment's kernel starts in for its verification: the
/// repository's `start` runs there, and whatever its packages run at startup (`.pth`
/// files). It reads the environment, its base interpreter and the kernelspec, writes only
/// a private directory (its `HOME` is an empty tmpfs), and sees nothing else of the store
/// or the home. Its network is the machine's: the verifier talks to the kernel over
/// loopback TCP, as Jupyter does.
pub fn kernel_jail(
    settings: &crate::settings::Settings,
    store_root: &Path,
    prefix: &Path,
    kernel_dir: &Path,
    reporter: &dyn crate::events::Reporter,
) -> anyhow::Result<Option<Jail>> {
    let Some(bwrap) = find_bwrap(settings, reporter)? else {
        return Ok(None);
    };
    let scratch = tempfile::Builder::new()
        .prefix(".sandbox-")
        .tempdir_in(crate::store::package_cache_at(store_root, ""))?;
    // The whole kernels directory, not the kernel's own: a concurrent registration may
    // replace that directory (a new inode at the same path) while the kernel starts.
    let mut readable = vec![
        prefix.to_path_buf(),
        prefix.with_extension("toml"),
        kernel_dir.parent().unwrap_or(kernel_dir).to_path_buf(),
    ];
    // A venv's interpreter is its base's (`home = <base>/bin` in pyvenv.cfg).
    if let Ok(config) = fs_err::read_to_string(prefix.join("pyvenv.cfg")) {
        let home = config.lines().find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "home").then(|| PathBuf::from(value.trim()))
        });
        if let Some(base) = home.as_deref().and_then(Path::parent) {
            readable.push(fs_err::canonicalize(base).unwrap_or_else(|_| base.to_path_buf()));
        }
    }
    readable.extend(settings.ca_bundle());
    let home = home();
    Ok(Some(Jail {
        bwrap,
        hidden: hidden(&home, store_root),
        home,
        readable,
        writable: Vec::new(),
        overlays: Vec::new(),
        network: "host".into(),
        proxy: None,
        relay: PathBuf::new(),
        passed: module_variables(),
        scratch,
    }))
}

impl Jail {
    /// A private directory the step may write (its uv cache, its temp files).
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// Report the hosts the sandbox's network refused since the last call.
    pub fn report_refused(&self, step: &str, reporter: &dyn crate::events::Reporter) {
        let refused = self
            .proxy
            .as_ref()
            .map(super::netproxy::Proxy::take_refused)
            .unwrap_or_default();
        if !refused.is_empty() {
            reporter.warning(format!(
                "{step} tried to reach {}, which the sandbox refused: not a package source of this site (see `package-sources`)",
                refused.join(", ")
            ));
        }
    }

    /// `command`, to run inside the jail: same program, arguments, working directory and
    /// the variables it sets, nothing else from hpcbinder's environment.
    pub fn wrap(&self, command: &Command) -> Command {
        self.wrap_reading(command, &[])
    }

    /// [`Jail::wrap`], with `extra` readable too (a kernel's connection file's directory).
    pub fn wrap_reading(&self, command: &Command, extra: &[&Path]) -> Command {
        let mut jailed = Command::new(&self.bwrap);
        jailed.args([
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]);
        if self.network != "host" {
            jailed.arg("--unshare-net");
        }
        jailed.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]);
        let depth = |path: &Path| path.components().count();
        let mut hidden: Vec<&PathBuf> = self.hidden.iter().filter(|p| p.exists()).collect();
        hidden.sort_by_key(|p| depth(p));
        for path in hidden {
            jailed.arg("--tmpfs").arg(path);
        }
        let mut mounts: Vec<(&str, &Path, &Path)> = Vec::new();
        mounts.extend(
            self.readable
                .iter()
                .map(PathBuf::as_path)
                .chain(extra.iter().copied())
                .filter(|p| p.exists())
                .map(|p| ("--ro-bind", p, p)),
        );
        mounts.extend(
            self.writable
                .iter()
                .map(PathBuf::as_path)
                .chain([self.scratch.path()])
                .filter(|p| p.exists())
                .map(|p| ("--bind", p, p)),
        );
        mounts.extend(
            self.overlays
                .iter()
                .map(|(from, to)| ("--bind", from.as_path(), to.as_path())),
        );
        // Parents before children, so a nested mount is not covered by its parent's.
        mounts.sort_by_key(|(_, _, target)| depth(target));
        for (kind, source, target) in mounts {
            jailed.arg(kind).arg(source).arg(target);
        }
        if let Some(dir) = command.get_current_dir() {
            jailed.arg("--chdir").arg(dir);
        }
        jailed.arg("--clearenv");
        let mut set = |name: &std::ffi::OsStr, value: &std::ffi::OsStr| {
            jailed.arg("--setenv").arg(name).arg(value);
        };
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        set("PATH".as_ref(), &path);
        set("HOME".as_ref(), self.home.as_os_str());
        set("LANG".as_ref(), "C.UTF-8".as_ref());
        set("TMPDIR".as_ref(), "/tmp".as_ref());
        for (name, value) in &self.passed {
            set(name, value);
        }
        for (name, value) in command.get_envs() {
            if let Some(value) = value {
                set(name, value);
            }
        }
        jailed.arg("--");
        if let Some(proxy) = &self.proxy {
            jailed
                .arg(&self.relay)
                .arg(super::netproxy::RELAY_ARG)
                .arg(proxy.socket())
                .arg("--");
        }
        jailed.arg(command.get_program()).args(command.get_args());
        jailed
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        // What ran inside may have left read-only directories.
        crate::store::make_removable(self.scratch.path());
    }
}

/// Copy a repository (files, directories, symlinks as symlinks), without `.git`: the
/// sandbox's writable copy, and a container build's context.
pub fn copy_repository(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in walkdir::WalkDir::new(from)
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || e.file_name() != ".git")
    {
        let entry = entry.map_err(std::io::Error::other)?;
        let relative = entry
            .path()
            .strip_prefix(from)
            .map_err(std::io::Error::other)?;
        let target = to.join(relative);
        let kind = entry.file_type();
        if kind.is_dir() {
            fs_err::create_dir_all(&target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs_err::read_link(entry.path())?, &target)?;
        } else {
            fs_err::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_setting_makes_the_sandbox_required() {
        let mut settings = crate::settings::resolve(&Default::default()).unwrap();
        for (sandbox, local_sources, expected) in [
            ("auto", true, false),
            ("auto", false, true),
            ("bwrap", true, true),
            ("none", false, false),
        ] {
            settings.sandbox = sandbox.into();
            settings.local_sources = local_sources;
            assert_eq!(required(&settings), expected, "{sandbox} {local_sources}");
        }
    }
}
