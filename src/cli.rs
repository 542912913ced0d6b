//! The command line as the user typed it (clap derive). Nothing here has defaults that
//! depend on the machine: those are resolved in `settings`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::printer::ColorChoice;
use crate::target::Target;

/// Turn a repository into a Jupyter kernel on an HPC system: a conda or Python
/// environment on a shared filesystem, or a Podman, podman-hpc, Apptainer, Shifter or
/// Charliecloud image.
#[derive(Debug, Parser)]
#[command(name = "hpcbinder", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more detail.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// When to colour output.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
    /// Machine-readable output on stdout: one result object (detect, key, config show) or
    /// one JSON event per line (build).
    #[arg(long, global = true)]
    pub json: bool,
    /// The store: where environments, images and caches live [env: HPCBINDER_STORE].
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what environment a repository describes.
    Detect(RepoArgs),
    /// Print the environment key (EnvKey) a repository's environment is built and reused under.
    Key(KeyArgs),
    /// Build a repository's environment and register it as a Jupyter kernel.
    Build(BuildArgs),
    /// Check this machine and configuration: the store, Python, uv, channels, the Python
    /// index, container engines, the kernel directory. Exit 0 when the default target can
    /// build, 1 otherwise (each failing line has a hint).
    Doctor,
    /// Inspect the resolved configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Point a collaboration's name at an environment (built or reused from a repository,
    /// or one already in the store); its kernel, shared in the store, follows the name.
    Pin(PinArgs),
    /// Remove a pin and its shared kernel (the environments stay, for gc).
    Unpin {
        /// The pin.
        name: String,
    },
    /// List the store's pins: name, key, source, when and by whom.
    Pins,
    /// List every environment in the store: key, source, target, size, built, last used,
    /// pins and kernels.
    List,
    /// Show one environment (a pin's name, or its key): source, locks, packages, size,
    /// who built it when, pins, kernels.
    Show {
        /// A pin's name, or a key (8 characters or more) or store entry.
        what: String,
    },
    /// Remove an environment (refused when pinned or used by a running kernel).
    Rm {
        /// Its key (8 characters or more) or store entry.
        key: String,
        /// Remove it even when pinned or in use.
        #[arg(long)]
        force: bool,
    },
    /// Remove what nobody needs: environments unpinned and unused for DAYS (with
    /// --older-than), unfinished builds, temp files, kernelspecs of removed environments,
    /// and package-cache entries no environment uses.
    Gc {
        /// Also remove unpinned environments no kernel used for this many days.
        #[arg(long, value_name = "DAYS")]
        older_than: Option<u64>,
        /// Print what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write an environment's lock, for `build --from-lock` or `pin --from-lock` elsewhere.
    Export {
        /// A pin's name, or a key.
        what: String,
        /// The lock's format (default: pixi for conda environments, requirements for venvs).
        #[arg(long, value_parser = ["pixi", "explicit", "requirements"])]
        format: Option<String>,
        /// Write it here (default: stdout).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print the JUPYTER_PATH setting that shows the store's shared (pinned) kernels.
    JupyterPath,
    /// Kernels in your own kernel directory.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Run the launch service: BinderHub's build API and launch pages, as a JupyterHub
    /// service (settings in the site config's [serve] table).
    Serve {
        /// The address to listen on (default: JUPYTERHUB_SERVICE_URL's host, else 127.0.0.1).
        #[arg(long)]
        ip: Option<String>,
        /// The port (default: JUPYTERHUB_SERVICE_URL's port, else 8585).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Which repository.
#[derive(Debug, Args)]
pub struct RepoArgs {
    /// A directory, a git URL, gh:org/repo[@ref], gl:group/repo[@ref], a BinderHub spec
    /// (gh/org/repo/ref, gl/<escaped>/ref, git/<escaped url>/ref, gist/user/id[/ref]) or
    /// launch URL, or an archived record: zenodo/<doi>, figshare/<doi>, dataverse/<doi>,
    /// hydroshare/<id or url>, ckan/<escaped dataset url>, doi:<doi>,
    /// https://doi.org/<doi>, swh:1:dir:<hash> or swh:1:rev:<hash>.
    pub repo: String,
    /// Branch, tag or commit to use (default: the remote's HEAD, or a local work tree as it is).
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<String>,
}

/// `key` arguments.
#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Show every input of the key and its digest.
    #[arg(long)]
    pub explain: bool,
}

/// Target selection.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// What to build [env: HPCBINDER_TARGET] [default: auto].
    #[arg(long, value_enum)]
    pub target: Option<Target>,
    /// The Python to build with: X.Y, X.Y.Z or an interpreter's path (beats the
    /// repository's; default: the repository's, else the python3 on PATH).
    #[arg(long, value_name = "VERSION|PATH")]
    pub python: Option<String>,
    /// Base image for container targets.
    #[arg(long, value_name = "IMAGE")]
    pub base_image: Option<String>,
}

/// `build` arguments.
#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Show the plan (source, buildpack, target, key, prefix, kernel) without building.
    #[arg(long)]
    pub dry_run: bool,
    /// Kernelspec name (default: from the repository and ref): letters, digits, `.`, `_`
    /// and `-`, as Jupyter requires.
    #[arg(long, value_name = "NAME")]
    pub kernel_name: Option<String>,
    /// Replace a kernelspec of the same name that belongs to another environment (by
    /// default that is refused).
    #[arg(long)]
    pub replace: bool,
    /// Kernel display name (default: from the repository, ref and target).
    #[arg(long, value_name = "TEXT")]
    pub display_name: Option<String>,
    /// Directory to write the kernelspec into (default: $JUPYTER_DATA_DIR/kernels).
    #[arg(long, value_name = "DIR")]
    pub kernel_dir: Option<PathBuf>,
    /// Build the environment only; register no kernel.
    #[arg(long)]
    pub no_kernel: bool,
    /// Register the kernel without starting it to run a test cell.
    #[arg(long)]
    pub no_verify: bool,
    /// Also install jupyterhub-singleuser and JupyterLab (`server-packages`), as
    /// repo2docker does, so a JupyterHub spawner can start the user's server inside the
    /// environment (the launch service's server mode). Enters the key. Native targets,
    /// and Charliecloud images of requirements.txt, setup.py, pyproject.toml or Pipfile
    /// repositories.
    #[arg(long)]
    pub with_server: bool,
    /// Container targets: write the build context (Containerfile, lock, repository) into
    /// DIR and stop, so a centre can build it its own way.
    #[arg(long, value_name = "DIR")]
    pub containerfile_only: Option<PathBuf>,
    /// Install from this lock file instead of resolving (a pixi.lock for conda, a
    /// requirements lock for venv), e.g. one written by `hpcbinder export`. Give it twice
    /// for a conda environment with a pip part: its pixi.lock and its requirements lock.
    #[arg(long, value_name = "FILE")]
    pub from_lock: Vec<PathBuf>,
    /// Build as a Slurm batch job (the `[slurm]` table's sbatch options) and follow it:
    /// its events as they come, `waiting` with Slurm's reason while it is pending; Ctrl-C
    /// cancels it (the default with `builder = "slurm"`).
    #[arg(long, conflicts_with_all = ["dry_run", "containerfile_only", "local"])]
    pub submit: bool,
    /// With --submit: print the job's id and return without following it.
    #[arg(long)]
    pub no_wait: bool,
    /// Build on this machine even with `builder = "slurm"`.
    #[arg(long)]
    pub local: bool,
}

/// `pin` arguments.
#[derive(Debug, Args)]
pub struct PinArgs {
    /// The pin's name, which is also its kernel's name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// The repository to build (or reuse) the environment from.
    #[arg(conflicts_with_all = ["key", "history", "rollback"])]
    pub repo: Option<String>,
    /// Branch, tag or commit of the repository.
    #[arg(long = "ref", value_name = "REF", requires = "repo")]
    pub reference: Option<String>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Kernel display name (default: `NAME (origin @ commit)`).
    #[arg(long, value_name = "TEXT")]
    pub display_name: Option<String>,
    /// Point the pin at an environment already in the store.
    #[arg(long, value_name = "KEY", conflicts_with_all = ["history", "rollback"])]
    pub key: Option<String>,
    /// Build from this exported lock instead of resolving: with the repository (twice for
    /// a conda environment with a pip part), or alone (an `explicit` or `requirements`
    /// export, which is then the whole spec).
    #[arg(long, value_name = "FILE")]
    pub from_lock: Vec<PathBuf>,
    /// Show where the pin pointed before.
    #[arg(long, conflicts_with = "rollback")]
    pub history: bool,
    /// Point the pin back at its N-th previous target (default 1).
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "1")]
    pub rollback: Option<usize>,
    /// Register the kernel without starting it to run a test cell.
    #[arg(long)]
    pub no_verify: bool,
}

/// `kernel` subcommands.
#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Copy a pinned kernel into your own kernel directory; it still follows the pin.
    Add {
        /// The pin.
        name: String,
        /// The kernels directory (default: $JUPYTER_DATA_DIR/kernels).
        #[arg(long, value_name = "DIR")]
        kernel_dir: Option<PathBuf>,
    },
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every setting, its value, and where it came from.
    Show,
}

/// The clap command, for the man page and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Render the man page (`man/hpcbinder.1`).
pub fn man_page() -> Vec<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(command())
        .date("2026-11-26")
        .render(&mut out)
        .expect("rendering into a Vec cannot fail");
    // One section per command with its own synopsis and options, so `man hpcbinder`
    // documents every flag.
    for sub in command().get_subcommands() {
        let full = format!("hpcbinder {}", sub.get_name());
        out.extend_from_slice(format!(".SH \"{}\"\n", full.to_uppercase()).as_bytes());
        let man = clap_mangen::Man::new(sub.clone().bin_name(full));
        let _ = man.render_description_section(&mut out);
        let _ = man.render_synopsis_section(&mut out);
        let _ = man.render_options_section(&mut out);
    }
    let escape = |text: &str| text.replace('\\', "\\\\").replace('-', "\\-");
    out.extend_from_slice(
        b".SH CONFIGURATION\nSettings come from the command line, then environment variables, then the user config file, then the site config file (TOML, written by the centre). Config found inside a repository is never read. Keys:\n",
    );
    for (key, what) in crate::settings::CONFIG_KEYS {
        out.extend_from_slice(
            format!(".TP\n\\fB{}\\fR\n{}\n", escape(key), escape(what)).as_bytes(),
        );
    }
    out.extend_from_slice(COLLABORATIONS.as_bytes());
    out.extend_from_slice(SLURM.as_bytes());
    out.extend_from_slice(b".SH SERVICE\nhpcbinder serve runs BinderHub's build API as a JupyterHub service (register it in the Hub's services with command [\"hpcbinder\", \"serve\"]). Keys of the site config's [serve] table:\n");
    for (key, what) in crate::serve::KEYS {
        out.extend_from_slice(
            format!(".TP\n\\fB{}\\fR\n{}\n", escape(key), escape(what)).as_bytes(),
        );
    }
    out.extend_from_slice(b".SH ENVIRONMENT\n");
    for (name, what) in crate::variables::DOCUMENTED {
        out.extend_from_slice(
            format!(".TP\n\\fB{}\\fR\n{}\n", escape(name), escape(what)).as_bytes(),
        );
    }
    out.extend_from_slice(
        b".SH FILES\n.TP\n/etc/hpcbinder/config.toml\nThe site config.\n.TP\n$XDG_CONFIG_HOME/hpcbinder/config.toml\nThe user config.\n",
    );
    out
}

/// The man page's section on builds as Slurm jobs (the README's "Building on Slurm").
const SLURM: &str = r#".SH SLURM
build \-\-submit (or any build with builder = "slurm", unless \-\-local) plans on this node, then runs the build as a Slurm batch job and relays its events: waiting (with Slurm's pending reason) while it is queued, then the job's own. Ctrl\-C cancels the job (scancel); \-\-no\-wait prints the job id and returns. The job's events, error output and exit status are in <store>/jobs/u<uid>/<job>/. A job killed by scancel, its time limit or a node failure exits 2 with the reason; nothing half\-built is kept. Keys of the [slurm] table, each also allowed in a [slurm.target.<target>] table that overrides it for that target:
.TP
\fBpartition\fR, \fBqos\fR, \fBaccount\fR, \fBtime\fR, \fBcpus\fR, \fBmemory\fR
sbatch's \-\-partition, \-\-qos, \-\-account, \-\-time, \-\-cpus\-per\-task and \-\-mem.
.TP
\fBsbatch\-args\fR
Other sbatch arguments, one per element (not \-\-output, \-\-error, \-\-parsable, \-\-wait or \-\-wrap, which hpcbinder sets).
.TP
\fBhpcbinder\fR
The hpcbinder executable the job runs (default: the one submitting; it must be at that path on the compute nodes).
"#;

/// The man page's worked example of a collaboration (the README's, shorter).
const COLLABORATIONS: &str = r#".SH COLLABORATIONS
A collaboration's maintainer pins a name; every member's kernel follows it.
.PP
.nf
export HPCBINDER_STORE=/global/common/software/desi/hpcbinder
hpcbinder pin desi\-main gh:desihub/desi\-env \-\-ref v24.1
hpcbinder jupyter\-path        # JUPYTER_PATH=... for the hub or members' shells
hpcbinder kernel add desi\-main # a member's own copy, still following the pin
hpcbinder pin desi\-main gh:desihub/desi\-env \-\-ref v24.2   # same kernel name
hpcbinder pin desi\-main \-\-history
hpcbinder pin desi\-main \-\-rollback
hpcbinder list; hpcbinder show desi\-main
hpcbinder export desi\-main \-o desi.lock
hpcbinder gc \-\-older\-than 90 \-\-dry\-run
.fi
.PP
Only maintainers (root, the store's owner, store\-maintainers) pin, unpin, rm and gc.
A kernel in use holds a shared lock on its environment's marker; rm and gc never remove
an environment in use or one a pin points at (now or in its history).
"#;
