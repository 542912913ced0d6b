//! One file per command; each takes resolved settings, a printer and a reporter.

mod build;
pub mod collab;
mod config;
mod detect;
mod doctor;
mod key;
mod submit;

pub use build::build;
pub use config::show as config_show;
pub use detect::detect;
pub use doctor::doctor;
pub use key::key;

use crate::cli::RepoArgs;
use crate::detect::EnvSpec;
use crate::events::Reporter;
use crate::settings::Settings;
use crate::source::Checkout;

/// Fetch the repository and detect its environment: the first half of every command
/// ([`crate::pipeline::checkout_and_detect`]).
fn checkout_and_detect(
    repo: &RepoArgs,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> anyhow::Result<(Checkout, EnvSpec)> {
    let repository = crate::pipeline::Repository {
        spec: repo.repo.clone(),
        reference: repo.reference.clone(),
    };
    crate::pipeline::checkout_and_detect(&repository, settings, reporter)
}
