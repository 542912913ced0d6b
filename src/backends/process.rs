//! Running build tools: every child's output goes to the environment's build log, and a
//! failure shows the end of that log. Also `postBuild`, run inside the environment.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Context;
use crate::store;

/// Errors while building.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No interpreter of the wanted version.
    #[error("no Python {version} interpreter found")]
    NoPython {
        /// `X.Y`.
        version: String,
    },
    /// A required tool is missing.
    #[error("{tool} is not available")]
    Tool {
        /// The tool.
        tool: String,
    },
    /// A tool failed to install packages (bad names, versions, unreachable index).
    #[error("{step} failed (exit {code}); the log ends with:\n{log}")]
    Install {
        /// What ran.
        step: String,
        /// Its exit code.
        code: String,
        /// The end of the build log.
        log: String,
    },
    /// A tool failed in a way that is not the spec's fault.
    #[error("{step} failed (exit {code}); the log ends with:\n{log}")]
    Step {
        /// What ran.
        step: String,
        /// Its exit code.
        code: String,
        /// The end of the build log.
        log: String,
    },
    /// The conda spec has no solution.
    #[error("the conda environment cannot be solved:\n{message}")]
    Unsolvable {
        /// The solver's explanation.
        message: String,
    },
    /// A conda channel cannot be read.
    #[error("cannot read the conda channel {channel}: {message}")]
    Channel {
        /// The channel(s).
        channel: String,
        /// Why.
        message: String,
    },
    /// A package cannot be fetched, verified or installed.
    #[error("conda packages could not be installed: {message}")]
    Package {
        /// Why.
        message: String,
    },
    /// `postBuild` failed.
    #[error("{script} failed (exit {code}); its output ends with:\n{log}")]
    PostBuild {
        /// The script.
        script: String,
        /// Its exit code.
        code: String,
        /// The end of its output.
        log: String,
    },
    /// No base image configured for a container target.
    #[error("no base image is configured for container builds")]
    NoBaseImage,
    /// The base image cannot be found or pulled.
    #[error("the base image {image} is not available; the log ends with:\n{log}")]
    BaseImage {
        /// The image.
        image: String,
        /// The end of the log.
        log: String,
    },
    /// No registry configured for Shifter.
    #[error("no registry is configured for the shifter target")]
    NoRegistry,
    /// The registry refused the push.
    #[error("pushing to {registry} failed: {log}")]
    Push {
        /// The registry.
        registry: String,
        /// What went wrong.
        log: String,
    },
    /// podman-hpc migrate wrote no squash file (it exits 0 when mksquashfs fails).
    #[error(
        "podman-hpc migrate left no squash file for {image} in {dir}; the log ends with:\n{log}"
    )]
    Migrate {
        /// The image.
        image: String,
        /// The squash dir.
        dir: PathBuf,
        /// The end of the build log.
        log: String,
    },
    /// A lock file (`--from-lock`, or the repository's) that cannot be installed.
    #[error("{file}: {message}")]
    Lock {
        /// The lock file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A site setting that the build cannot use.
    #[error("invalid {setting} `{value}`: {message}")]
    Setting {
        /// The config key.
        setting: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// Not built by this version.
    #[error("{what} is not implemented yet")]
    Unsupported {
        /// What.
        what: String,
        /// What to do instead.
        instead: String,
    },
    /// Writing the kernelspec failed.
    #[error("could not write the kernelspec into {dir}")]
    Kernel {
        /// The kernels directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel did not pass verification.
    #[error("kernel {kernel} failed verification")]
    Verify {
        /// The kernel name.
        kernel: String,
        /// Why.
        #[source]
        source: crate::kernel::verify::VerifyError,
    },
}

/// Whether a failing step is the spec's fault (bad packages) or the machine's.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Installing what the repository asked for.
    Spec,
    /// Our own plumbing.
    Machine,
}

/// Run `command`, appending its output to the build log; fail with the log's tail.
pub fn run(
    context: &Context<'_>,
    step: &str,
    command: &mut Command,
    fault: Fault,
) -> anyhow::Result<()> {
    run_with_lines(context, step, command, fault, None)
}

/// [`run`], also handing each line of the command's stdout to `on_line` as it comes
/// (progress from `podman build`'s `STEP n/m` lines).
pub fn run_with_lines(
    context: &Context<'_>,
    step: &str,
    command: &mut Command,
    fault: Fault,
    on_line: Option<&dyn Fn(&str)>,
) -> anyhow::Result<()> {
    let log_path = context.log();
    let mut log = fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| store::classify(e, &log_path))?;
    let _ = writeln!(log, "$ {step}");
    let err = log.file().try_clone()?;
    let mut wrapped = with_death_signal(command);
    let command = &mut wrapped;
    let could_not_run =
        |e: std::io::Error| anyhow::anyhow!(e).context(format!("could not run {step}"));
    let status = match on_line {
        None => {
            let out = log.file().try_clone()?;
            command
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .status()
                .map_err(could_not_run)?
        }
        Some(on_line) => {
            let mut child = command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(err))
                .spawn()
                .map_err(could_not_run)?;
            if let Some(stdout) = child.stdout.take() {
                use std::io::BufRead as _;
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(log, "{line}");
                    on_line(&line);
                }
            }
            child.wait().map_err(could_not_run)?
        }
    };
    if status.success() {
        return Ok(());
    }
    let code = status
        .code()
        .map(|c| c.to_string())
        .unwrap_or_else(|| "signal".into());
    let tail = tail(&log_path, 20);
    if store::says_full(&tail) {
        return Err(store::classify(std::io::Error::from_raw_os_error(28), &context.prefix).into());
    }
    Err(match fault {
        Fault::Spec => BuildError::Install {
            step: step.to_string(),
            code,
            log: tail,
        },
        Fault::Machine => BuildError::Step {
            step: step.to_string(),
            code,
            log: tail,
        },
    }
    .into())
}

/// `command`, run so that it dies with the builder: a build killed with SIGKILL (a node
/// going down, a batch system, a user's kill) must not leave uv, podman or a postBuild
/// running on, writing into a prefix the next builder clears. `setpriv --pdeathsig KILL`
/// (util-linux) sets the child's parent-death signal before it runs the program; where
/// setpriv is missing the command runs as it is.
pub fn with_death_signal(command: &Command) -> Command {
    static SETPRIV: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let setpriv = SETPRIV.get_or_init(|| {
        ["/usr/bin/setpriv", "/bin/setpriv"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.is_file())
    });
    let mut wrapped = match setpriv {
        Some(setpriv) => {
            let mut wrapped = Command::new(setpriv);
            wrapped
                .args(["--pdeathsig", "KILL", "--"])
                .arg(command.get_program());
            wrapped
        }
        None => Command::new(command.get_program()),
    };
    wrapped.args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(name, value),
            None => wrapped.env_remove(name),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs_err::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The environment variables that put a command inside the environment.
pub fn activation(context: &Context<'_>) -> Vec<(String, String)> {
    let prefix = context.prefix.display().to_string();
    let path = format!("{prefix}/bin:{}", std::env::var("PATH").unwrap_or_default());
    let variable = if context.request.target == crate::target::Target::Conda {
        "CONDA_PREFIX"
    } else {
        "VIRTUAL_ENV"
    };
    let mut vars = vec![("PATH".to_string(), path), (variable.to_string(), prefix)];
    if let Some(conda) = &context.request.spec.conda {
        vars.extend(conda.variables.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    vars
}

/// Run `postBuild` from the repository root, inside the environment, as the user, in the
/// build's sandbox when it has one ([`super::sandbox`]).
pub fn post_build(context: &Context<'_>, script: &str) -> anyhow::Result<()> {
    let path = context.repo().join(script);
    let log_path = context.meta.join("postBuild.log");
    let log = fs_err::File::create(&log_path).map_err(|e| store::classify(e, &log_path))?;
    let err = log.file().try_clone()?;
    // repo2docker runs it as an executable; a checkout may have lost the mode bit, so run
    // it through its shebang's interpreter when it is not executable.
    let mut command = if is_executable(&path) {
        Command::new(&path)
    } else {
        let mut c = Command::new("/bin/sh");
        c.arg(&path);
        c
    };
    command
        .current_dir(context.repo())
        .envs(activation(context));
    if let Some(jail) = &context.jail {
        command = jail.wrap(&command);
    }
    let status = with_death_signal(&command)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.into_file()))
        .stderr(Stdio::from(err))
        .status()
        .map_err(|e| anyhow::anyhow!(e).context(format!("could not run {script}")))?;
    if let Some(jail) = &context.jail {
        jail.report_refused(script, context.reporter);
    }
    if status.success() {
        return Ok(());
    }
    Err(BuildError::PostBuild {
        script: script.to_string(),
        code: status
            .code()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "signal".into()),
        log: tail(&log_path, 20),
    }
    .into())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs_err::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}
