//! The one pipeline every caller goes through (the CLI's commands, pins, the launch
//! service, a batch job): a repository spec → checkout → detect → target → key → plan,
//! then, as asked, nothing more (a dry run), a build context (`--containerfile-only`),
//! or the build, kernel registration and verification. Every step and warning is an
//! [`Event`] through the caller's [`Reporter`]; nothing here prints.
//!
//! The plan drives the build: the kernel the build registers is the one the plan names,
//! and a dry run's Containerfile is rendered from the same request the build would use.
//! The pipeline is blocking; a server calls it from a blocking thread (or runs
//! `hpcbinder build --json` as a child, as the service does).

use std::path::PathBuf;

use anyhow::Context as _;

use crate::backends::{self, BuildRequest};
use crate::detect::{Buildpack, EnvSpec};
use crate::events::{Event, Phase, Reporter, ReporterExt};
use crate::key::{self, EnvKey};
use crate::plan::{self, BuildPlan, KernelOptions};
use crate::python::Source;
use crate::settings::Settings;
use crate::source::{self, Checkout};
use crate::target::Target;

/// Which repository, as the user or a launch URL named it.
#[derive(Debug, Clone)]
pub struct Repository {
    /// A directory, git URL, `gh:`/`gl:` spec, BinderHub spec or launch URL.
    pub spec: String,
    /// `--ref`.
    pub reference: Option<String>,
}

/// What to do once the plan exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop at the plan (`--dry-run`).
    Plan,
    /// Write the container build context into the directory and stop.
    Context(PathBuf),
    /// Build (or reuse), then register and verify the kernel as the options say.
    Build,
}

/// How to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// Kernel naming and location.
    pub kernel: KernelOptions,
    /// Register a kernelspec (`--no-kernel` turns it off).
    pub register_kernel: bool,
    /// Run a cell in the new kernel (`--no-verify` turns it off).
    pub verify: bool,
    /// Install from these locks instead of resolving: one (a pixi.lock for conda, a
    /// requirements lock for a venv), or a conda environment's pixi.lock and its pip part's
    /// requirements lock.
    pub from_lock: Vec<PathBuf>,
    /// Replace a kernelspec of the same name that belongs to another environment.
    pub replace_kernel: bool,
    /// What to do.
    pub action: Action,
}

/// A repository taken as far as its plan.
pub struct Prepared {
    /// The checkout (holding its clone lock while alive).
    pub checkout: Checkout,
    /// What it describes.
    pub spec: EnvSpec,
    /// The concrete target.
    pub target: Target,
    /// The key.
    pub key: EnvKey,
    /// The plan.
    pub plan: BuildPlan,
    /// `--from-lock`, absolute.
    pub from_lock: Option<PathBuf>,
    /// A second `--from-lock`: the pip part of a conda environment.
    pub from_pip_lock: Option<PathBuf>,
}

/// What the pipeline produced.
pub enum Outcome {
    /// A dry run: the plan, and the Containerfile for container targets.
    Planned {
        /// The plan.
        plan: Box<BuildPlan>,
        /// The Containerfile a container build would use.
        containerfile: Option<String>,
    },
    /// A build context was written.
    Context {
        /// The plan.
        plan: Box<BuildPlan>,
        /// The Containerfile inside the context.
        containerfile: PathBuf,
    },
    /// Built (or reused), registered, verified.
    Built {
        /// The plan.
        plan: Box<BuildPlan>,
        /// The result.
        outcome: Box<backends::Outcome>,
    },
}

/// Fetch the repository and detect its environment; detection warnings become events.
pub fn checkout_and_detect(
    repository: &Repository,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> anyhow::Result<(Checkout, EnvSpec)> {
    let spec = source::spec::parse(&repository.spec, repository.reference.as_deref())?;
    // The command line may use local repositories and their local submodules, unless
    // the site turns local sources off (the launch service does).
    let policy = source::Policy {
        hosts: settings.source_hosts.clone(),
        allow_local: settings.local_sources,
    };
    let checkout = match &spec {
        source::RepoSpec::Record {
            provider,
            id,
            reference,
        } => crate::records::checkout(*provider, id, reference.as_deref(), settings, reporter),
        _ => source::checkout(&spec, &settings.cache_dir(), &policy, reporter),
    }
    .with_context(|| format!("could not get {}", source::redact(&repository.spec)))?;
    reporter.phase(Phase::Building, "Detecting the environment");
    let env = crate::detect::detect(&checkout.root, &settings.conda.platform)
        .context("detection failed")?;
    for warning in &env.warnings {
        reporter.warning(warning.clone());
    }
    Ok((checkout, env))
}

/// Checkout, detection, target, key and plan.
pub fn prepare(
    repository: &Repository,
    settings: &Settings,
    options: &Options,
    reporter: &dyn Reporter,
) -> anyhow::Result<Prepared> {
    let (checkout, spec) = checkout_and_detect(repository, settings, reporter)?;
    // Someone else's repository must not point builds at other indexes or channels
    // (request forgery, another tenant's files); a local one is the user's own choice.
    let remote = checkout.identity.kind == "record"
        || (checkout.identity.kind == "git" && !checkout.identity.origin.starts_with("file://"));
    crate::sources::check(&spec, settings, !remote)?;
    let target = plan::choose_target(&spec, settings)?;
    if !matches!(spec.buildpack, Buildpack::Docker | Buildpack::Nix) {
        let choice = crate::python::choose(&spec, settings);
        reporter.phase(Phase::Building, format!("Using {}", choice.describe()));
        if let (Some(asked), Source::Configured(origin)) = (&spec.python, &choice.source) {
            if *asked != choice.version {
                let file = spec
                    .files
                    .iter()
                    .find(|f| f.ends_with("runtime.txt"))
                    .map(String::as_str)
                    .unwrap_or("the repository");
                reporter.warning(format!(
                    "{file} asks for Python {asked}; building with Python {} from {origin}",
                    choice.version
                ));
            }
        }
    }
    let (from_lock, from_pip_lock) = classify_locks(&options.from_lock)?;
    let mut key = key::compute(
        &checkout.root,
        &spec,
        target,
        settings,
        from_lock.as_deref(),
    )?;
    if let Some(pip) = &from_pip_lock {
        key.add_input("from-pip-lock", pip)?;
    }
    if let Some(name) = &options.kernel.name {
        plan::check_kernel_name(name)?;
    }
    let registers = options.register_kernel && options.action == Action::Build;
    if registers && options.kernel.dir.is_none() && !plan::has_default_kernels_dir() {
        return Err(plan::PlanError::NoKernelDir.into());
    }
    let plan = plan::plan(&checkout, &spec, target, &key, settings, &options.kernel);
    if registers && !options.replace_kernel {
        // Before anything is built: a name another environment's kernel has is refused.
        plan::check_kernel_free(&plan)?;
    }
    Ok(Prepared {
        checkout,
        spec,
        target,
        key,
        plan,
        from_lock,
        from_pip_lock,
    })
}

/// `--from-lock` files: one lock, or a conda environment's pixi.lock (YAML with a
/// `version:`) and its pip part's requirements lock, in either order.
fn classify_locks(locks: &[PathBuf]) -> anyhow::Result<(Option<PathBuf>, Option<PathBuf>)> {
    let mut paths = Vec::new();
    for lock in locks {
        paths.push(fs_err::canonicalize(lock)?);
    }
    let is_pixi = |path: &PathBuf| {
        fs_err::read_to_string(path).is_ok_and(|text| {
            text.lines()
                .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .is_some_and(|l| l.starts_with("version:"))
        })
    };
    match paths.as_slice() {
        [] => Ok((None, None)),
        [one] => Ok((Some(one.clone()), None)),
        [a, b] if is_pixi(a) && !is_pixi(b) => Ok((Some(a.clone()), Some(b.clone()))),
        [a, b] if is_pixi(b) && !is_pixi(a) => Ok((Some(b.clone()), Some(a.clone()))),
        _ => Err(plan::PlanError::FromLocks { count: paths.len() }.into()),
    }
}

/// Run the whole pipeline for `repository`.
pub fn run(
    repository: &Repository,
    settings: &Settings,
    options: &Options,
    reporter: &dyn Reporter,
) -> anyhow::Result<Outcome> {
    let prepared = prepare(repository, settings, options, reporter)?;
    let request = BuildRequest {
        checkout: &prepared.checkout,
        spec: &prepared.spec,
        target: prepared.target,
        key: &prepared.key,
        settings,
        plan: &prepared.plan,
        register_kernel: options.register_kernel,
        replace_kernel: options.replace_kernel,
        verify: options.verify,
        from_lock: prepared.from_lock.clone(),
        from_pip_lock: prepared.from_pip_lock.clone(),
    };
    match &options.action {
        Action::Plan => {
            let containerfile = if prepared.target.is_container() {
                Some(backends::container::preview(&request)?)
            } else {
                None
            };
            #[derive(serde::Serialize)]
            struct Preview<'a> {
                #[serde(skip_serializing_if = "Option::is_none")]
                containerfile: Option<&'a str>,
            }
            reporter.report(
                Event::new(Phase::Ready, "Plan ready (dry run); nothing was built")
                    .with_fields(&prepared.plan)
                    .with_fields(&Preview {
                        containerfile: containerfile.as_deref(),
                    }),
            );
            Ok(Outcome::Planned {
                plan: Box::new(prepared.plan.clone()),
                containerfile,
            })
        }
        Action::Context(dir) => {
            if !prepared.target.is_container() {
                return Err(plan::PlanError::ContextNeedsContainer {
                    target: prepared.target.name(),
                }
                .into());
            }
            let containerfile = backends::container::write_context(&request, dir, reporter)?;
            Ok(Outcome::Context {
                plan: Box::new(prepared.plan.clone()),
                containerfile,
            })
        }
        Action::Build => {
            let outcome = backends::build(&request, reporter)?;
            let asked_r = prepared.spec.r.as_ref().and_then(|r| r.version.as_deref());
            if let (Some(asked), Some(found)) = (asked_r, &outcome.runtime) {
                // The image's R comes from the base image's distribution (see lib.rs).
                if found != asked && !found.starts_with(&format!("{asked}.")) {
                    reporter.warning(format!(
                        "runtime.txt asks for R {asked}; the image has R {found}, from its base image's distribution"
                    ));
                }
            }
            reporter.report(Event::new(Phase::Ready, "Environment ready").with_fields(&outcome));
            Ok(Outcome::Built {
                plan: Box::new(prepared.plan.clone()),
                outcome: Box::new(outcome),
            })
        }
    }
}
