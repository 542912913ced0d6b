//! One file per command; each takes resolved settings, a printer and a reporter.

mod build;
mod config;
mod detect;
mod doctor;
mod key;

pub use build::build;
pub use config::show as config_show;
pub use detect::detect;
pub use doctor::doctor;
pub use key::key;

use anyhow::Context as _;

use crate::cli::RepoArgs;
use crate::detect::EnvSpec;
use crate::events::{Phase, Reporter, ReporterExt};
use crate::settings::Settings;
use crate::source::{self, Checkout};

/// Fetch the repository and detect its environment: the first half of every command.
fn checkout_and_detect(
    repo: &RepoArgs,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> anyhow::Result<(Checkout, EnvSpec)> {
    let spec = source::spec::parse(&repo.repo, repo.reference.as_deref())?;
    let checkout = source::checkout(&spec, &settings.cache_dir(), reporter)
        .with_context(|| format!("could not get {}", source::redact(&repo.repo)))?;
    reporter.phase(Phase::Building, "Detecting the environment");
    let env =
        crate::detect::detect(&checkout.root, &settings.platform).context("detection failed")?;
    for warning in &env.warnings {
        reporter.warning(warning.clone());
    }
    Ok((checkout, env))
}
