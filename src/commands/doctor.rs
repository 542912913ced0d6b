//! `hpcbinder doctor`: what a user or centre admin runs first. Checks the store, the
//! Python a build would use, uv, the conda channels and the Python index, the container
//! engines, the kernel directory and git, and says whether the default target can build.
//!
//! It changes nothing: the store and kernel directory are probed with temporary files
//! that are removed again, and a store that does not exist yet is judged by the nearest
//! existing parent.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::ExitStatus;
use crate::printer::{sanitize, Printer};
use crate::settings::Settings;
use crate::target::Target;
use crate::tools::UvStatus;

/// How long a channel or index may take to answer.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);

/// One line of the report.
#[derive(Debug, Serialize)]
struct Check {
    /// What was checked.
    check: String,
    /// `ok`, `warn` or `fail` (`fail`: the default target cannot build).
    status: Status,
    /// What was found.
    detail: String,
    /// What to do, for `warn` and `fail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
    /// How long a network check took.
    #[serde(skip_serializing_if = "Option::is_none")]
    millis: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
}

impl Check {
    fn new(check: impl Into<String>, status: Status, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            status,
            detail: detail.into(),
            hint: None,
            millis: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// `fail` when the default target needs this, else `warn`.
    fn needed(needed: bool) -> Status {
        if needed {
            Status::Fail
        } else {
            Status::Warn
        }
    }
}

#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    target: &'static str,
    config_files: &'a [PathBuf],
    checks: &'a [Check],
}

/// Run every check and print the table (or one JSON object).
pub fn doctor(settings: &Settings, printer: &Printer, json: bool) -> anyhow::Result<ExitStatus> {
    let target = settings.target;
    // What `auto` builds for a repository that names nothing: a venv.
    let native = matches!(target, Target::Auto | Target::Venv);
    let conda = target == Target::Conda;
    let container = target.is_container();
    let mut checks = Vec::new();
    checks.push(config_files(settings));
    checks.extend(store(&settings.store));
    let (mut python_check, python_found) = python(settings);
    let channel_checks = channels(settings, conda);
    // Without a Python here, venvs take one from the conda channels: fatal only when
    // those cannot be reached either.
    if !python_found && native && channel_checks.iter().all(|c| c.status != Status::Ok) {
        python_check.status = Status::Fail;
    }
    checks.push(python_check);
    checks.push(uv(settings));
    checks.extend(channel_checks);
    checks.push(index(settings, native));
    checks.extend(engines(settings, container));
    checks.push(kernel_dir());
    checks.push(git());
    let ok = checks.iter().all(|c| c.status != Status::Fail);
    if json {
        let report = Report {
            ok,
            target: target.name(),
            config_files: &settings.files_read,
            checks: &checks,
        };
        printer.data(&serde_json::to_string_pretty(&report)?);
    } else {
        let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
        for check in &checks {
            let status = match check.status {
                Status::Ok => "ok",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            let millis = check
                .millis
                .map(|ms| format!(" ({ms} ms)"))
                .unwrap_or_default();
            printer.data(&format!(
                "{:width$}  {status:<4}  {}{millis}",
                check.check,
                sanitize(&check.detail)
            ));
            if let Some(hint) = &check.hint {
                printer.data(&format!("{:width$}        hint: {}", "", sanitize(hint)));
            }
        }
        printer.data(&if ok {
            format!("The default target ({}) can build here.", target.name())
        } else {
            format!(
                "The default target ({}) cannot build here: fix the FAIL lines.",
                target.name()
            )
        });
    }
    Ok(if ok {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}

fn config_files(settings: &Settings) -> Check {
    let detail = if settings.files_read.is_empty() {
        "none (built-in defaults; the site config is /etc/hpcbinder/config.toml or $HPCBINDER_SITE_CONFIG)".to_string()
    } else {
        settings
            .files_read
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Check::new("config files", Status::Ok, detail)
}

/// Writable, same filesystem as its caches, group and setgid, working `flock`.
fn store(root: &Path) -> Vec<Check> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let name = format!("store {}", root.display());
    let existing = root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let probe_dir = if root.join("locks").is_dir() {
        root.join("locks")
    } else {
        existing.to_path_buf()
    };
    let probe = tempfile::Builder::new()
        .prefix(".hpcbinder-doctor-")
        .tempfile_in(&probe_dir);
    let mut checks = Vec::new();
    let probe = match probe {
        Ok(probe) => probe,
        Err(error) => {
            let what = if existing == root {
                "is not writable".to_string()
            } else {
                format!("does not exist and {} is not writable", existing.display())
            };
            checks.push(
                Check::new(name, Status::Fail, format!("{what}: {error}"))
                    .hint("pass --store DIR, set HPCBINDER_STORE, or `store` in the config"),
            );
            return checks;
        }
    };
    let metadata = fs_err::metadata(existing).ok();
    let group = metadata
        .as_ref()
        .map(|m| group_name(m.gid()))
        .unwrap_or_default();
    let setgid = metadata
        .as_ref()
        .is_some_and(|m| m.permissions().mode() & 0o2000 != 0);
    let state = if existing == root {
        "writable".to_string()
    } else {
        format!("will be created (in {}, writable)", existing.display())
    };
    checks.push(Check::new(
        name,
        Status::Ok,
        format!(
            "{state}; group {group}{}",
            if setgid { ", setgid" } else { "" }
        ),
    ));
    // Caches must be on the store's filesystem: packages are hardlinked into environments.
    let device = metadata.as_ref().map(MetadataExt::dev);
    let elsewhere: Vec<String> = ["e", "pkgs", "cache", "locks"]
        .iter()
        .map(|dir| root.join(dir))
        .filter(|dir| {
            fs_err::metadata(dir)
                .ok()
                .is_some_and(|m| Some(m.dev()) != device)
        })
        .map(|dir| dir.display().to_string())
        .collect();
    checks.push(if elsewhere.is_empty() {
        Check::new("store caches", Status::Ok, "on the store's filesystem")
    } else {
        Check::new(
            "store caches",
            Status::Warn,
            format!("on another filesystem: {}", elsewhere.join(", ")),
        )
        .hint("keep pkgs/ and cache/ on the store's filesystem, or packages are copied, not hardlinked")
    });
    let locking = probe.as_file().try_lock();
    checks.push(match locking {
        Ok(()) => Check::new("store locks", Status::Ok, "flock works on this filesystem"),
        Err(std::fs::TryLockError::WouldBlock) => {
            Check::new("store locks", Status::Ok, "flock works on this filesystem")
        }
        Err(std::fs::TryLockError::Error(error)) => Check::new(
            "store locks",
            Status::Fail,
            format!("flock fails here: {error}"),
        )
        .hint("put the store on a filesystem with working locks (Lustre needs the flock mount option)"),
    });
    checks
}

fn group_name(gid: u32) -> String {
    fs_err::read_to_string("/etc/group")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.get(2) == Some(&gid.to_string().as_str())).then(|| fields[0].to_string())
            })
        })
        .unwrap_or_else(|| gid.to_string())
}

fn python(settings: &Settings) -> (Check, bool) {
    let choice = crate::python::choose_for(None, settings);
    let interpreter = choice
        .interpreter
        .clone()
        .ok_or(())
        .or_else(|()| crate::python::find(&choice.version).map_err(|_| ()));
    match interpreter {
        Ok(found) => {
            let detail = if choice.interpreter.is_some() {
                choice.describe()
            } else {
                format!(
                    "{} {}: {}",
                    found.path.display(),
                    found.version,
                    choice.describe()
                )
            };
            (Check::new("python", Status::Ok, detail), true)
        }
        Err(()) => (
            Check::new(
                "python",
                Status::Warn,
                format!(
                    "no Python {} here; venvs get one from the conda channels",
                    choice.version
                ),
            )
            .hint("`module load` a Python, or set `python` to an interpreter's path"),
            false,
        ),
    }
}

fn uv(settings: &Settings) -> Check {
    match crate::tools::uv_status(settings) {
        UvStatus::Configured(path) => {
            Check::new("uv", Status::Ok, format!("{} (configured)", path.display()))
        }
        UvStatus::OnPath(path) => Check::new("uv", Status::Ok, format!("{} (on PATH)", path.display())),
        UvStatus::Bootstrapped(path) => Check::new(
            "uv",
            Status::Ok,
            format!("{} (bootstrapped into the store)", path.display()),
        ),
        UvStatus::Bootstrappable => Check::new(
            "uv",
            Status::Ok,
            format!(
                "not installed; the first build installs uv {} into the store from the Python index",
                crate::tools::UV_VERSION
            ),
        ),
        UvStatus::Missing(why) => Check::new(
            "uv",
            Status::Warn,
            format!("missing ({why}): builds fall back to pip, slower and without hashes"),
        )
        .hint("set `uv = \"/path/to/uv\"`, put uv on PATH, or set `uv-bootstrap = true`"),
    }
}

/// Each configured channel answers (its `noarch/repodata.json`).
fn channels(settings: &Settings, needed: bool) -> Vec<Check> {
    crate::backends::site_channels(settings)
        .into_iter()
        .map(|(name, url)| {
            let label = format!("channel {name}");
            let url = match url {
                Ok(url) => url,
                Err(message) => {
                    return Check::new(label, Check::needed(needed), message)
                        .hint("check `channels`, `channel-alias` and `mirrors`")
                }
            };
            let repodata = format!(
                "{}/noarch/repodata.json",
                url.as_str().trim_end_matches('/')
            );
            let started = Instant::now();
            let result = if url.scheme() == "file" {
                let path = url
                    .to_file_path()
                    .unwrap_or_default()
                    .join("noarch/repodata.json");
                if path.is_file() {
                    Ok(())
                } else {
                    Err(format!("{} does not exist", path.display()))
                }
            } else {
                crate::http::head(settings, &repodata, NETWORK_TIMEOUT).map_err(|e| e.to_string())
            };
            let mut check = match result {
                Ok(()) => Check::new(
                    label,
                    Status::Ok,
                    format!("{} reachable", crate::source::redact(url.as_str())),
                ),
                Err(message) => Check::new(label, Check::needed(needed), message).hint(
                    "check the channel name, `channel-alias`, `mirrors`, and the proxy variables",
                ),
            };
            check.millis = Some(millis(started));
            check
        })
        .collect()
}

/// The Python index answers (uv's project page), or the find-links directories exist.
fn index(settings: &Settings, needed: bool) -> Check {
    if settings.pip.no_index {
        let missing: Vec<&String> = settings
            .pip
            .find_links
            .iter()
            .filter(|l| !l.contains("://") && !Path::new(l).is_dir())
            .collect();
        return if settings.pip.find_links.is_empty() || !missing.is_empty() {
            Check::new(
                "python index",
                Check::needed(needed),
                format!(
                    "pip-no-index is set and these pip-find-links are missing: {}",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .hint("set `pip-find-links` to existing wheel directories, or unset `pip-no-index`")
        } else {
            Check::new(
                "python index",
                Status::Ok,
                format!(
                    "none (pip-no-index); wheels from {}",
                    settings.pip.find_links.join(", ")
                ),
            )
        };
    }
    let base = settings
        .pip
        .index_url
        .as_deref()
        .unwrap_or(crate::tools::DEFAULT_INDEX);
    let page = format!("{}/uv/", base.trim_end_matches('/'));
    let started = Instant::now();
    let mut check = match crate::http::head(settings, &page, NETWORK_TIMEOUT) {
        Ok(()) => Check::new(
            "python index",
            Status::Ok,
            format!("{} reachable", crate::source::redact(base)),
        ),
        Err(error) => Check::new("python index", Check::needed(needed), error.to_string())
            .hint("set `pip-index-url` to the site's mirror, or the proxy variables (HTTPS_PROXY)"),
    };
    check.millis = Some(millis(started));
    check
}

/// Each container engine on PATH, with its version; the configured one must be there
/// when the default target is a container.
fn engines(settings: &Settings, needed: bool) -> Vec<Check> {
    let wanted = if settings.target.is_container() {
        settings.target
    } else {
        settings.container.engine
    };
    let mut checks = Vec::new();
    for (tool, target) in [
        ("podman", Some(Target::Podman)),
        ("podman-hpc", Some(Target::PodmanHpc)),
        ("apptainer", Some(Target::Apptainer)),
        ("shifterimg", Some(Target::Shifter)),
        ("ch-run", Some(Target::Charliecloud)),
        ("ch-image", None),
        ("mksquashfs", None),
    ] {
        let is_wanted = target == Some(wanted);
        match version_of(tool) {
            Some(version) => checks.push(Check::new(format!("engine {tool}"), Status::Ok, version)),
            None if is_wanted => checks.push(
                Check::new(
                    format!("engine {tool}"),
                    Check::needed(needed),
                    format!("not on PATH; `{}` is the container engine", wanted.name()),
                )
                .hint("install or `module load` it, or set `container-engine`"),
            ),
            None => {}
        }
    }
    if needed && settings.container.base_image.is_none() {
        checks.push(
            Check::new("base image", Status::Fail, "no base-image is configured")
                .hint("set `base-image` in the site config"),
        );
    }
    checks
}

fn version_of(tool: &str) -> Option<String> {
    let found = crate::variables::on_path(tool)?;
    let flag = if tool == "mksquashfs" {
        "-version"
    } else {
        "--version"
    };
    let output = std::process::Command::new(&found).arg(flag).output().ok()?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The first line with a version number that is not an error (ch-run complains about
    // an unset $USER before anything else).
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| {
            !l.contains("error")
                && l.as_bytes()
                    .windows(3)
                    .any(|w| w[0].is_ascii_digit() && w[1] == b'.' && w[2].is_ascii_digit())
        })
        .unwrap_or("version unknown")
        .to_string();
    Some(format!("{} ({line})", found.display()))
}

fn kernel_dir() -> Check {
    let dir = crate::plan::default_kernels_dir();
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let writable = tempfile::Builder::new()
        .prefix(".hpcbinder-doctor-")
        .tempfile_in(existing)
        .is_ok();
    if writable {
        Check::new(
            "kernel dir",
            Status::Ok,
            format!("{} (writable)", dir.display()),
        )
    } else {
        Check::new(
            "kernel dir",
            Status::Fail,
            format!("{} is not writable", dir.display()),
        )
        .hint("set JUPYTER_DATA_DIR, or pass --kernel-dir DIR to build")
    }
}

fn git() -> Check {
    match version_of("git") {
        Some(version) => Check::new("git", Status::Ok, version),
        None => Check::new(
            "git",
            Status::Warn,
            "not on PATH: remote repositories cannot be fetched (local folders still build)",
        )
        .hint("install or `module load` git"),
    }
}

fn millis(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
