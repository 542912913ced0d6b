//! hpcbinder: Binder for supercomputers.
//!
//! A repository goes through one pipeline (DESIGN.md §1):
//!
//! ```text
//! repo spec ─▶ source ─▶ Checkout ─▶ detect ─▶ EnvSpec ─▶ plan ─▶ target + EnvKey ─▶ (build, store, kernel)
//! ```
//!
//! - [`source`] turns a spec (path, git URL, `gh:`/`gl:`, BinderHub spec or launch URL) into
//!   a checkout with an immutable identity, resolving every ref to a full commit first.
//! - [`detect`] reads spec files only (no network, no code execution) into an [`detect::EnvSpec`].
//! - [`plan`] picks the target; [`key`] computes the EnvKey from env-relevant inputs only.
//! - [`backends`] builds a `conda` env (rattler, in-process) or a `venv` (uv) in the [`store`]
//!   under its key, then [`kernel`] registers a kernelspec and verifies it over the
//!   Jupyter protocol.
//! - [`events`] carries progress with BinderHub's phases to a terminal, JSON lines or SSE.
//! - [`settings`] resolves CLI > environment > user config > site config.
//! - [`pipeline`] is the one entry point for all of it (CLI, pins, the service, a batch
//!   job); the plan it makes drives the build.
//! - [`collab`] keeps collaborations' pins and their shared kernels, and manages the store
//!   (`list`, `show`, `rm`, `gc`, `export`); [`sources`] is the site's allow-list of
//!   package sources.
//! - [`records`] fetches archived records (a DOI; Zenodo, Figshare, Dataverse, HydroShare,
//!   CKAN; a SWHID), one module per provider: the record resolved to one version first,
//!   each file downloaded once into a checksum-keyed cache and verified (HydroShare's bags
//!   by their BagIt manifest, Software Heritage's bundles by the directory's git tree id),
//!   a single archive unpacked one level by [`source::archive`]'s hostile-archive rules.
//!   Departing from repo2docker: only the Dataverse installations and CKAN sites the site
//!   lists are fetched from, and a CKAN activity is its own version.
//! - [`slurm`] is the `slurm` builder: `build --submit` (and `builder = "slurm"`, in the
//!   CLI and the service) runs `hpcbinder build --local --json` as a batch job, relays its
//!   events from the store's jobs folder and cancels it on SIGINT/SIGTERM.
//! - [`python`] chooses the interpreter (configured, the repository's, else the
//!   `python3` on PATH); [`tools`] finds or bootstraps uv into the store.
//!
//! Adding a container engine: a file in `backends/container/engine/` implementing its
//! `Engine` trait, a line in its `ENGINES` table, and the engine's `Target` variant in
//! `plan.rs` (the value users type; a test fails when a container target has no engine).
//!
//! Departures from DESIGN.md, and why:
//! - `detect --json`, `key --json` and `config show --json` print one result object, not
//!   event lines, so scripts can parse stdout as one document; `build --json` prints events
//!   and its last (`ready`) event carries the result.
//! - Lock-file buildpacks (pixi, conda-lock, explicit, uv-lock, pylock) sit just before the
//!   loose spec they lock in the detection order, after R, so R and Julia repositories keep
//!   inheriting the Python layers as in repo2docker.
//! - A configured (`--python`, site or user config) Python version beats the repository's
//!   for venvs, with a warning: a centre may offer one Python only. When nothing names a
//!   version, the `python3` on PATH decides (its `X.Y` enters the key); the built-in 3.12
//!   is left for machines without `python3`.
//! - Network git steps run the `git` command (users' credential helpers, proxies and ssh
//!   config apply); libgit2, built without TLS, only reads local repositories, which
//!   keeps commands on a git work tree as fast as on a plain folder.
//! - DESIGN §6's `build/` module is `backends/`: common `.gitignore` templates ignore any
//!   `build/` folder, and some tools skip it.
//! - The engine table still needs each engine's `Target` variant beside it: the command
//!   line's values are a clap `ValueEnum`, kept as a plain enum for `--help` and config
//!   parsing.
//! - A reused environment is not verified again: `build` of a ready key only registers the
//!   kernel (the verification ran when it was built), which keeps cache hits fast.
//! - Images hold the same packages as a native env of the same spec. Python family: uv
//!   installs, inside the build, the hashed lock resolved on this machine exactly as a
//!   native venv build resolves it (copied into the context with uv and any local wheel
//!   directories). Conda family: hpcbinder links the locked records on the host with
//!   rattler for the prefix `/opt/env` (its alternative target prefix) into the build
//!   context and the Containerfile copies the prefix in; only the pip section's lock is
//!   installed inside the build (by uv). Nothing conda-specific runs inside the build.
//! - Podman and podman-hpc kernels run with `--user 0:0` beside the reference's
//!   `--network host` and runtime-directory bind: the connection file is 0600 in a 0700
//!   directory, so the image's NB_USER cannot read it; rootless Podman maps the
//!   container's root to the user. (`--userns=keep-id` would too, but has known trouble
//!   with podman-hpc's squashed images.)
//! - R images take R and IRkernel from the base image's distribution, not from a
//!   version-specific R repository: runtime.txt's date picks the CRAN snapshot (through
//!   the `cran-mirror` setting); its R version is not enforced, but a build whose image has
//!   another R says so in a warning (the version is read from the image).
//! - Environments are built in place under the key's lock (DESIGN §3, option A of
//!   `reference/reliability.md` §2.2), never renamed: conda and venvs embed their prefix.
//! - The store trusts only results of the user, root, the store's owner and configured
//!   `store-maintainers` ([`store::trust`]); a key whose shared entry belongs to anyone
//!   else is built into the user's own `e/<key16>-u<uid>`, so the prefix is derived from
//!   the key *and* the trust, never read from a marker. Finished environments have
//!   read-only directories, so venv builds compile bytecode at install time.
//! - Repository code of native builds (postBuild, local package builds, `start` at
//!   verification) runs in a bubblewrap sandbox on the host ([`backends::sandbox`]). An
//!   image's local packages (`.`, `-e .`, `./pkg` in its requirements) are installed inside
//!   the image build after the locked environment, so the image's lock (resolved on the
//!   host, shared with native builds) covers the other requirements only; what the local
//!   packages pull in is resolved in the build. The sandbox's network goes through hpcbinder's own proxy to the package sources
//!   ([`backends::netproxy`]) rather than a firewall: unprivileged, and the same on every
//!   site. The build-time verification kernel keeps the machine's network (the Jupyter
//!   protocol runs over loopback TCP), with the filesystem jailed.
//! - [`sources`] is the site's allow-list of package sources; the reference's wording
//!   ("default: public ones for the CLI") is read as: a local repository may use any
//!   source, a remote one only the allowed ones, and `local-sources = false` (for the
//!   service) refuses everything on this machine.
//! - The launch service ([`serve`]) resolves every provider's ref with `git ls-remote`
//!   (BinderHub asks GitHub's and GitLab's REST APIs), so one path serves every git host a
//!   site allows and `source-hosts` applies first; resolutions are cached 3 s. Its build
//!   tokens are an HMAC over (user, spec, origin, expiry) with a secret made at start, not
//!   a JWT with a configured secret: one service process, and a restart only makes open
//!   pages fetch a new token. There is no per-IP rate limit: every build request is an
//!   authenticated Hub user's, limited per user (`max-builds-per-user`). A browser session
//!   is a random id in an HttpOnly cookie; the Hub token stays in the service's memory.
//! - Kernel mode's content: the service pulls with the server's nbgitpuller API itself and
//!   sets the pulled notebooks' kernelspec (contents API), instead of sending the browser
//!   through `git-pull`, so the opened notebook runs on the environment; this needs the
//!   `access:servers` scope (without it, the `git-pull` redirect is the fallback).
//!   nbgitpuller pulls a branch, so content is the branch's head, not always the built
//!   commit. Server mode checks out the built commit itself; it runs native
//!   environments and Charliecloud images (ch-run needs no daemon and keeps the user and
//!   the host's network); the other image engines are refused for now.
//! - The `slurm` builder plans on the submitting node before the job (the fetch lands in
//!   the user's cache in the store, which the job reuses): the job builds the planned
//!   commit, its target picks the `[slurm.target.*]` options, and an environment already
//!   in the store is registered there without a job.

pub mod backends;
mod blocking;
pub mod cli;
pub mod collab;
mod commands;
pub mod detect;
pub mod diagnostic;
pub mod error;
pub mod events;
mod http;
pub mod kernel;
pub mod key;
pub mod pipeline;
pub mod plan;
pub mod printer;
pub mod python;
mod recipe;
pub mod records;
pub mod serve;
pub mod settings;
mod shell;
pub mod slurm;
pub mod source;
pub mod sources;
pub mod store;
pub mod target;
pub mod tools;
pub mod variables;
pub mod version;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, ConfigCommand, KernelCommand};
use crate::error::ExitStatus;
use crate::events::{JsonReporter, Reporter, TerminalReporter};
use crate::printer::{Printer, Verbosity};
use crate::settings::CliOverrides;

/// Run hpcbinder with the process's arguments; the binary's `main` calls this.
pub fn run() -> ExitCode {
    // Inside a build's sandbox: the network relay ([`backends::netproxy`]).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == backends::netproxy::RELAY_ARG)
    {
        return backends::netproxy::relay_main(&args[2..]);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return match error.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    ExitStatus::Success
                }
                _ => ExitStatus::Failure,
            }
            .into();
        }
    };
    let verbosity = if cli.global.quiet {
        Verbosity::Quiet
    } else if cli.global.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    let printer = Printer::new(verbosity, cli.global.color);
    let status = match dispatch(&cli, &printer) {
        Ok(status) => status,
        Err(error) => error::report(&printer, &error),
    };
    status.into()
}

fn dispatch(cli: &Cli, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let json = cli.global.json;
    if let Command::Completions { shell } = &cli.command {
        let mut out = Vec::new();
        clap_complete::generate(*shell, &mut cli::command(), "hpcbinder", &mut out);
        printer.data(String::from_utf8_lossy(&out).trim_end());
        return Ok(ExitStatus::Success);
    }
    let target_args = match &cli.command {
        Command::Key(args) => Some(&args.target),
        Command::Build(args) => Some(&args.target),
        Command::Pin(args) => Some(&args.target),
        _ => None,
    };
    let overrides = CliOverrides {
        store: cli.global.store.clone(),
        target: target_args.and_then(|t| t.target),
        python: target_args.and_then(|t| t.python.clone()),
        base_image: target_args.and_then(|t| t.base_image.clone()),
    };
    let settings = settings::resolve(&overrides)?;
    // `build --json` streams events on stdout; other commands keep stdout for their result.
    let streams_events = json && matches!(cli.command, Command::Build(_));
    let reporter: Box<dyn Reporter> = if streams_events {
        Box::new(JsonReporter::new(printer.clone()))
    } else {
        Box::new(TerminalReporter::new(
            printer.clone(),
            matches!(cli.command, Command::Build(_)),
        ))
    };
    let result = match &cli.command {
        Command::Detect(args) => {
            commands::detect(args, &settings, printer, reporter.as_ref(), json)
        }
        Command::Key(args) => commands::key(args, &settings, printer, reporter.as_ref(), json),
        Command::Build(args) => commands::build(args, &settings, printer, reporter.as_ref(), json),
        Command::Config(ConfigCommand::Show) => commands::config_show(&settings, printer, json),
        Command::Doctor => commands::doctor(&settings, printer, json),
        Command::Pin(args) => {
            commands::collab::pin(args, &settings, printer, reporter.as_ref(), json)
        }
        Command::Unpin { name } => commands::collab::unpin(name, &settings, printer),
        Command::Pins => commands::collab::pins(&settings, printer, json),
        Command::List => commands::collab::list(&settings, printer, json),
        Command::Show { what } => commands::collab::show(what, &settings, printer, json),
        Command::Rm { key, force } => {
            commands::collab::rm(key, *force, &settings, printer, reporter.as_ref())
        }
        Command::Gc {
            older_than,
            dry_run,
        } => commands::collab::gc(
            *older_than,
            *dry_run,
            &settings,
            printer,
            reporter.as_ref(),
            json,
        ),
        Command::Export {
            what,
            format,
            output,
        } => commands::collab::export(
            what,
            format.as_deref(),
            output.as_deref(),
            &settings,
            printer,
        ),
        Command::JupyterPath => commands::collab::jupyter_path(&settings, printer),
        Command::Serve { ip, port } => {
            serve::run(&settings, ip.as_deref(), *port, reporter.as_ref())
                .map(|()| ExitStatus::Success)
        }
        Command::Kernel(KernelCommand::Add { name, kernel_dir }) => {
            commands::collab::kernel_add(name, kernel_dir.as_deref(), &settings, printer)
        }
        Command::Completions { .. } => unreachable!("handled above"),
    };
    if let (Err(error), true) = (&result, streams_events) {
        reporter.report(events::Event::new(
            events::Phase::Failed,
            error::one_line(error),
        ));
    }
    result
}
