//! Building: turn a planned spec into a ready environment in the store, register its
//! kernel and prove the kernel works.
//!
//! The order (DESIGN §3): look up the marker → take the key's lock → look again (someone
//! may have finished meanwhile) → clear what a crashed build left → build in place →
//! `postBuild` → harden permissions → write the marker. A failed build removes its prefix
//! (still under the lock); a killed one leaves a prefix without a marker, which nobody
//! trusts and the next builder clears.

mod conda;
pub mod container;
pub mod netproxy;
mod process;
mod python;
pub mod register;
pub mod sandbox;
mod venv;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::detect::{Buildpack, EnvSpec};
use crate::diagnostic::{Blame, Diagnostic};
use crate::events::{Event, Phase, Reporter, ReporterExt};
use crate::key::{self, EnvKey};
use crate::settings::Settings;
use crate::source::Checkout;
use crate::store::{self, Ready, Store};
use crate::target::Target;
pub use conda::site_channels;
pub use container::Artifact;
pub use process::BuildError;
pub use python::lock_blocks;

/// Everything a build needs.
pub struct BuildRequest<'a> {
    /// The repository.
    pub checkout: &'a Checkout,
    /// What it describes.
    pub spec: &'a EnvSpec,
    /// The concrete target.
    pub target: Target,
    /// The key.
    pub key: &'a EnvKey,
    /// Settings.
    pub settings: &'a Settings,
    /// The plan this build carries out (the kernel it registers, among others).
    pub plan: &'a crate::plan::BuildPlan,
    /// `--no-kernel`.
    pub register_kernel: bool,
    /// `--replace`: a kernelspec of the same name for another environment may go.
    pub replace_kernel: bool,
    /// `--no-verify`.
    pub verify: bool,
    /// `--from-lock FILE`.
    pub from_lock: Option<PathBuf>,
    /// The pip part's hashed lock of a conda environment, installed as it is.
    pub from_pip_lock: Option<PathBuf>,
}

/// What `build` produced.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The EnvKey.
    pub key: String,
    /// The environment.
    pub prefix: PathBuf,
    /// `conda` or `venv`.
    pub target: Target,
    /// The store already had it.
    pub reused: bool,
    /// Kernelspec name, when registered.
    pub kernel: Option<String>,
    /// Kernelspec directory, when registered.
    pub kernel_dir: Option<PathBuf>,
    /// What the verification cell printed, when verified.
    pub verified: Option<String>,
    /// Lock files inside the prefix.
    pub locks: Vec<String>,
    /// The image (container targets): a Podman reference, a registry reference, or a path.
    pub image: Option<String>,
    /// The image's squashfs (Charliecloud, podman-hpc's migrated image), when it has one.
    pub squashfs: Option<PathBuf>,
    /// The kernel language's version found in the image (R images).
    pub runtime: Option<String>,
    /// Why the kernel was not verified, when it was not.
    pub verification: Option<String>,
}

/// The environment being built, handed to the target's builder.
pub struct Context<'a> {
    /// The request.
    pub request: &'a BuildRequest<'a>,
    /// Where the environment goes (its final path).
    pub prefix: PathBuf,
    /// `<prefix>/hpcbinder`: logs, locks, the copied `start`.
    pub meta: PathBuf,
    /// The store.
    pub store: &'a Store,
    /// Progress.
    pub reporter: &'a dyn Reporter,
    /// uv, found or bootstrapped on first use ([`Context::uv`]).
    pub uv: std::sync::OnceLock<Option<PathBuf>>,
    /// The sandbox repository code runs in, for builds that run any ([`sandbox`]).
    pub jail: Option<sandbox::Jail>,
}

impl Context<'_> {
    /// uv for this build: configured, on PATH, or installed into the store once
    /// ([`crate::tools::uv`]); `None` when there is none (the caller falls back or fails).
    pub fn uv(&self) -> Option<&Path> {
        self.uv
            .get_or_init(|| crate::tools::uv(self.request.settings, self.store, self.reporter))
            .as_deref()
    }

    /// The build log (appended to by every step).
    pub fn log(&self) -> PathBuf {
        self.meta.join("build.log")
    }

    /// The repository root.
    pub fn repo(&self) -> &Path {
        &self.request.checkout.root
    }

    /// `--with-server`'s packages (none without it), announced when there are some.
    pub fn server_packages(&self) -> &[String] {
        let server = self.request.settings.pip.server_additions();
        if !server.is_empty() {
            self.reporter.phase(
                Phase::Building,
                format!(
                    "Adding {} for a single-user server (--with-server)",
                    server.join(", ")
                ),
            );
        }
        server
    }
}

/// Build (or reuse), register and verify.
pub fn build(request: &BuildRequest<'_>, reporter: &dyn Reporter) -> anyhow::Result<Outcome> {
    if request.target.is_container() {
        // Before any lock or store entry: nothing to clean up after a refusal.
        container::supported(request.spec)?;
    }
    let store = Store::open(&request.settings.store, &request.settings.store_maintainers)?;
    let key = &request.key.key;
    let key16 = request.key.short();
    let slot = store.slot(key16)?;
    if let Some(why) = &slot.passed_over {
        reporter.warning(format!(
            "{why}; using your own copy {}",
            store.prefix(&slot).display()
        ));
    }
    let (ready, reused) = match store.lookup(&slot, key) {
        Some(ready) => (ready, true),
        None => {
            let mut lock = store.lock(&slot.name, reporter)?;
            match store.lookup(&slot, key) {
                Some(ready) => {
                    reporter.phase(
                        Phase::Built,
                        format!("Another process finished {key16} meanwhile; reusing it"),
                    );
                    (ready, true)
                }
                None => {
                    if lock.clear_partial(&store, &slot)? {
                        reporter.phase(
                            Phase::Building,
                            format!("Removed an unfinished build of {key16}"),
                        );
                    }
                    let prefix = store.prefix(&slot);
                    let mut context = Context {
                        request,
                        meta: prefix.join("hpcbinder"),
                        prefix,
                        store: &store,
                        reporter,
                        uv: std::sync::OnceLock::new(),
                        jail: None,
                    };
                    let built = lock
                        .mark_builder(&context.prefix)
                        .map_err(|e| store::classify(e, &context.prefix).into())
                        .and_then(|()| build_new(&mut context));
                    match built {
                        Ok((locks, artifact)) => {
                            let ready = ready_record(&context, locks, artifact);
                            lock.verify()?;
                            lock.publish(&store, &slot, &ready)?;
                            reporter
                                .phase(Phase::Built, format!("Built {}", context.prefix.display()));
                            (ready, false)
                        }
                        Err(error) => {
                            // Leave nothing behind that a later run could mistake for a result.
                            let _ = lock.clear_partial(&store, &slot);
                            return Err(error);
                        }
                    }
                }
            }
        }
    };
    if reused {
        reporter.phase(
            Phase::Built,
            format!("Found {} ready; reusing it", ready.prefix.display()),
        );
    }
    let mut outcome = Outcome {
        key: key.clone(),
        prefix: ready.prefix.clone(),
        target: request.target,
        reused,
        kernel: None,
        kernel_dir: None,
        verified: None,
        locks: ready.locks.clone(),
        image: ready.artifact.as_ref().map(|a| a.image.clone()),
        squashfs: ready.artifact.as_ref().and_then(|a| a.squashfs.clone()),
        runtime: ready.artifact.as_ref().and_then(|a| a.runtime.clone()),
        verification: None,
    };
    if request.register_kernel {
        // A reused environment verified once (`e/<slot>.verified`) is only registered,
        // which keeps the cache-hit path fast; one whose verification never finished (it
        // was killed mid-cell, or built with --no-verify) is verified now.
        let verify = request.verify && !(reused && store.is_verified(&slot));
        register_kernel(request, &ready, verify, &mut outcome, reporter)?;
        if outcome.verified.is_some() {
            if let Err(error) = store.mark_verified(&slot) {
                // Not fatal: the next build verifies again.
                reporter.warning(format!("could not record the verification: {error}"));
            }
        }
    }
    Ok(outcome)
}

fn build_new(context: &mut Context<'_>) -> anyhow::Result<(Vec<String>, Option<Artifact>)> {
    let request = context.request;
    fs_err::create_dir_all(&context.meta).map_err(|e| store::classify(e, &context.meta))?;
    context.jail = sandbox::jail(context)?;
    let context = &*context;
    // The key rides along so that a relaying service can file the build's log under it.
    let mut building = Event::new(
        Phase::Building,
        format!(
            "Building a {} environment in {}",
            request.target.name(),
            context.prefix.display()
        ),
    );
    building
        .fields
        .insert("key".into(), request.key.key.clone().into());
    context.reporter.report(building);
    if request.target.is_container() {
        // postBuild and start run inside the image (see the Containerfile).
        let (locks, artifact) = container::build(context)?;
        store::harden_permissions(&context.prefix, context.store.sharing())
            .map_err(|e| store::classify(e, &context.prefix))?;
        return Ok((locks, Some(artifact)));
    }
    let locks = match request.target {
        Target::Venv => venv::build(context)?,
        _ => conda::build(context)?,
    };
    if let Some(start) = &request.spec.start {
        // The kernel helper runs the env's own copy: the checkout may move on later.
        let target = context.meta.join("start");
        fs_err::copy(context.repo().join(start), &target)
            .map_err(|e| store::classify(e, &target))?;
        make_executable(&target)?;
    }
    if let Some(post_build) = &request.spec.post_build {
        context
            .reporter
            .phase(Phase::Building, format!("Running {post_build}"));
        process::post_build(context, post_build)?;
    }
    // Every level: directories become read-only, so that nothing run from the
    // environment later can add entries there (see `Sharing::result_mode`).
    let sharing = context.store.sharing();
    store::harden_permissions(&context.prefix, sharing)
        .map_err(|e| store::classify(e, &context.prefix))?;
    Ok((locks, None))
}

fn make_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs_err::metadata(path)?.permissions().mode();
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o755))
}

fn ready_record(context: &Context<'_>, locks: Vec<String>, artifact: Option<Artifact>) -> Ready {
    let request = context.request;
    let identity = &request.checkout.identity;
    Ready {
        format: 1,
        key: request.key.key.clone(),
        target: request.target.name().to_string(),
        buildpack: request.spec.buildpack.name().to_string(),
        prefix: context.prefix.clone(),
        python: Some(key::python_version(request.spec, request.settings).0),
        created: store::now(),
        hpcbinder: env!("CARGO_PKG_VERSION").to_string(),
        locks,
        source: identity.describe(),
        artifact,
        inputs: request.key.inputs.clone(),
    }
}

fn register_kernel(
    request: &BuildRequest<'_>,
    ready: &Ready,
    verify: bool,
    outcome: &mut Outcome,
    reporter: &dyn Reporter,
) -> anyhow::Result<()> {
    let plan = request.plan;
    if !request.replace_kernel {
        // Again after the build: another process may have taken the name meanwhile.
        crate::plan::check_kernel_free(plan)?;
    }
    let kernels_dir = plan
        .kernel
        .dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let registered = register::register(
        request.settings,
        ready,
        &register::Registration {
            name: &plan.kernel.name,
            display_name: &plan.kernel.display_name,
            kernels_dir: &kernels_dir,
            origin: &request.checkout.identity.origin,
            follow: false,
        },
        verify,
        reporter,
    )?;
    outcome.kernel = Some(plan.kernel.name.clone());
    outcome.kernel_dir = Some(registered.dir);
    outcome.verified = registered.verified;
    outcome.verification = registered.skipped;
    Ok(())
}

/// Whether a spec already asks for ipykernel (conda dependencies, pip lines, requirements).
pub fn spec_has_ipykernel(spec: &EnvSpec, repo: &Path) -> bool {
    let mentions = |line: &str| {
        let name: String = line
            .trim()
            .rsplit("::")
            .next()
            .unwrap_or("")
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        name.eq_ignore_ascii_case("ipykernel")
    };
    if let Some(conda) = &spec.conda {
        if conda
            .dependencies
            .iter()
            .chain(&conda.pip)
            .any(|d| mentions(d))
        {
            return true;
        }
    }
    spec.pip.as_ref().is_some_and(|pip| {
        pip.requirements.iter().any(|file| {
            fs_err::read_to_string(repo.join(file)).is_ok_and(|text| text.lines().any(mentions))
        })
    }) || matches!(spec.buildpack, Buildpack::Docker)
}

impl Diagnostic for BuildError {
    fn blame(&self) -> Blame {
        match self {
            Self::Unsolvable { .. }
            | Self::PostBuild { .. }
            | Self::NoPython { .. }
            | Self::Install { .. }
            | Self::Channel { .. }
            | Self::Package { .. }
            | Self::NoBaseImage
            | Self::NoRegistry
            | Self::Lock { .. }
            | Self::Setting { .. }
            | Self::Unsupported { .. } => Blame::User,
            _ => Blame::Environment,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            Self::NoPython { version } => Some(format!(
                "install or `module load` Python {version}, pass --python with a version or an interpreter path you have, or use --target conda"
            )),
            Self::Unsupported { instead, .. } => Some(instead.clone()),
            Self::Lock { .. } => Some("give a lock written by an earlier build (`<prefix>/hpcbinder/pixi.lock`) for this platform".into()),
            Self::Setting { setting, .. } => Some(format!("fix `{setting}` in the config (`hpcbinder config show` says where it is set)")),
            Self::PostBuild { .. } => Some("fix postBuild (it runs from the repository root inside the environment)".into()),
            Self::Unsolvable { .. } => Some("relax the versions in the environment file or check the channels".into()),
            Self::Verify { .. } => Some("the environment is kept; rerun with --no-verify to register the kernel anyway".into()),
            Self::Install { .. } => Some("check the package names and versions, and the index (pip-index-url, pip-find-links)".into()),
            Self::Channel { .. } => Some("check the channel name or URL, and the site's channel-alias and mirrors".into()),
            Self::Package { .. } => Some("a package is missing, corrupt (sha256 mismatch) or does not fit this platform".into()),
            Self::NoBaseImage => Some("set `base-image` in the site config, or pass --base-image IMAGE".into()),
            Self::BaseImage { .. } => Some("check the base-image name, or load it with `podman load` / `podman import`".into()),
            Self::NoRegistry => Some("set `registry = \"host:port/path\"` in the site config".into()),
            Self::Migrate { .. } => Some("podman-hpc needs a static mksquashfs (>= 4.6, its `mksquashfs_bin`) and a writable squash dir (`squash-dir`)".into()),
            Self::Push { .. } => Some("check that the registry is up and accepts pushes (and `registry-tls-verify`)".into()),
            Self::Tool { .. } => Some("set `uv = \"/path/to/uv\"` in the config, put uv on PATH, or let hpcbinder install it (`uv-bootstrap = true` and a reachable pip-index-url); `hpcbinder doctor` shows which".into()),
            _ => None,
        }
    }
}
